//! Bundle validation at load: every way a bundle can be broken gives an error that names the
//! file at fault, never a panic.

use std::fs;
use std::path::{Path, PathBuf};

use gstavaepurify::bundle::{Bundle, GraphKind, MANIFEST_FILE};

fn tiny_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny")
}

/// A private copy of the tiny bundle that a test may break.
fn copy_bundle(name: &str) -> PathBuf {
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bundle-{name}"));
    let _ = fs::remove_dir_all(&dst);
    fs::create_dir_all(&dst).unwrap();
    for entry in fs::read_dir(tiny_bundle()).expect("tests/data/bundle-tiny exists") {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    dst
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    Bundle::load(dir)
        .expect_err("bundle must be rejected")
        .to_string()
}

#[test]
fn the_tiny_bundle_is_valid() {
    let b = Bundle::load(tiny_bundle()).unwrap();
    assert_eq!(b.manifest.format_version, 1);
    assert!(b.graph_path(GraphKind::Encoder).unwrap().is_file());
    assert!(b.graph_path(GraphKind::Decoder).unwrap().is_file());
}

#[test]
fn missing_folder() {
    let err = load_err(Path::new("/nonexistent/avae-bundle"));
    assert!(
        err.contains("/nonexistent/avae-bundle") && err.contains("no such folder"),
        "{err}"
    );
}

#[test]
fn missing_manifest() {
    let dir = copy_bundle("no-manifest");
    fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("manifest.json") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn manifest_not_json() {
    let dir = copy_bundle("bad-json");
    fs::write(dir.join(MANIFEST_FILE), "{ not json").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("manifest.json") && err.contains("not valid JSON"),
        "{err}"
    );
}

#[test]
fn unsupported_version() {
    let dir = copy_bundle("version");
    edit_manifest(&dir, |v| v["format_version"] = 99.into());
    let err = load_err(&dir);
    assert!(err.contains("unsupported format_version 99"), "{err}");
}

#[test]
fn missing_graph() {
    let dir = copy_bundle("no-decoder");
    fs::remove_file(dir.join("decoder.onnx")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("decoder.onnx") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn checksum_mismatch() {
    let dir = copy_bundle("checksum");
    let path = dir.join("encoder.onnx");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("encoder.onnx") && err.contains("checksum mismatch"),
        "{err}"
    );
}

#[test]
fn corrupt_graph_with_matching_checksum() {
    let dir = copy_bundle("corrupt");
    let path = dir.join("decoder.onnx");
    fs::write(&path, b"\xff\xff\xff this is not protobuf").unwrap();
    let sha = gstavaepurify::bundle::sha256_file(&path).unwrap();
    edit_manifest(&dir, |v| v["graphs"]["decoder"]["sha256"] = sha.into());
    let err = load_err(&dir);
    assert!(
        err.contains("decoder.onnx") && err.contains("not a valid ONNX model"),
        "{err}"
    );
}

#[test]
fn wrong_input_names() {
    // The decoder graph handed in as the encoder: its inputs are z and skip, not face.
    let dir = copy_bundle("names");
    edit_manifest(&dir, |v| {
        v["graphs"]["encoder"] = v["graphs"]["decoder"].clone()
    });
    let err = load_err(&dir);
    assert!(
        err.contains("decoder.onnx") && err.contains("inputs are") && err.contains("face"),
        "{err}"
    );
}

#[test]
fn wrong_shapes() {
    let dir = copy_bundle("shapes");
    edit_manifest(&dir, |v| {
        let d = v["latent_dim"].as_u64().unwrap();
        v["latent_dim"] = (d + 1).into();
    });
    let err = load_err(&dir);
    assert!(
        err.contains("encoder.onnx") && err.contains("`mu` has shape"),
        "{err}"
    );
}

#[test]
fn landmark_template_out_of_range() {
    let dir = copy_bundle("template");
    edit_manifest(&dir, |v| {
        v["landmark_template"] =
            serde_json::json!([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [1.5, 0.8]])
    });
    let err = load_err(&dir);
    assert!(
        err.contains("manifest.json") && err.contains("landmark_template"),
        "{err}"
    );
}

//! `gst-inspect-1.0 avaepurify` finds the built plugin and documents every property.

mod common;

use std::path::PathBuf;
use std::process::Command;

use gst::prelude::*;

/// The properties `avaepurify` declares (not inherited ones such as `name` or `qos`).
const PROPERTIES: [&str; 29] = [
    "suspect-blur",
    "max-latency-ms",
    "model-instance-id",
    "precision",
    "refresh-interval",
    "refresh-ratio",
    "shared-batch-size",
    "shared-timeout-ms",
    "align",
    "feather",
    "context",
    "passes",
    "model",
    "backend",
    "device",
    "server",
    "server-timeout-ms",
    "samples",
    "batch",
    "tau",
    "seed",
    "roi-type",
    "margin",
    "full-frame",
    "max-faces",
    "on-failure",
    "alarm",
    "alarm-threshold",
    "stats",
];

/// A folder holding only this build's plugin. `cargo test` writes the cdylib next to the test
/// executable (`target/<profile>/deps`) and copies it to `target/<profile>` only on `cargo build`,
/// so the one beside the executable is the fresh one; a symbolic link to it keeps the plugin
/// scanner away from the other libraries of `deps`.
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let built = exe
        .parent()
        .map(|deps| deps.join("libgstavaepurify.so"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| panic!("libgstavaepurify.so not found beside {}", exe.display()));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("inspect-plugin");
    std::fs::create_dir_all(&dir).expect("plugin folder");
    let link = dir.join("libgstavaepurify.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&built, &link).expect("link to the built plugin");
    dir
}

#[test]
fn gst_inspect_documents_every_property() {
    common::init();
    let element = gst::ElementFactory::make("avaepurify").build().unwrap();
    let own: Vec<_> = element
        .list_properties()
        .iter()
        .filter(|p| p.owner_type() == element.type_())
        .map(|p| {
            (
                p.name().to_owned(),
                p.blurb().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut names: Vec<_> = own.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected = PROPERTIES.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);

    let registry = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("inspect-registry.bin");
    let output = Command::new("gst-inspect-1.0")
        .arg("avaepurify")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", registry)
        .output()
        .expect("gst-inspect-1.0 runs (install gstreamer1.0-tools)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "gst-inspect-1.0 avaepurify failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (name, blurb) in &own {
        assert!(
            blurb.len() > 20,
            "property {name} has no real blurb: {blurb:?}"
        );
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("property {name} missing from gst-inspect:\n{stdout}"));
        assert!(
            line.contains(blurb.as_str()),
            "gst-inspect line of {name} lacks its blurb {blurb:?}: {line}"
        );
    }
    for text in [
        "Default:",
        "Range:",
        "Enum \"GstAvaePurifyBackend\"",
        "(3): cpu",
    ] {
        assert!(
            stdout.contains(text),
            "gst-inspect output lacks {text:?}:\n{stdout}"
        );
    }
}

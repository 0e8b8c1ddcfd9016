//! The decoder precision on the shipped bundle `models/avae-cpu`: its int8 decoder is current
//! and validated, purifies LFW faces close to fp32 on both engines, `auto` picks what this CPU
//! and engine call for, and the element runs every `precision` value without losing a frame
//! (an explicit precision that cannot be honoured warns on the bus and runs fp32).

mod common;

use std::path::{Path, PathBuf};

use common::{LFW_SIDE, frame_buffer, lfw_images, load_rgb};
use gst::prelude::*;
use gst_check::Harness;
use gstavaepurify::bundle::{Bundle, GraphKind};
use gstavaepurify::engine::precision::{self, CpuFeatures, Precision};
use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::purifier::{Purifier, PurifyParams};
use ndarray::Array4;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn shipped() -> PathBuf {
    let dir = common::workspace().join("models/avae-cpu");
    assert!(
        dir.join("manifest.json").is_file(),
        "shipped bundle missing at {}",
        dir.display()
    );
    dir
}

/// `count` LFW faces as the trainer crops them (centre 0.5, 0.52, side 0.48 of the photo),
/// resized to the bundle's S, RGB in [-1, 1].
fn lfw_faces(count: usize, s: usize) -> Array4<f32> {
    let side = (0.48 * LFW_SIDE as f32).round() as u32;
    let (x0, y0) = (
        LFW_SIDE / 2 - side / 2,
        (0.52 * LFW_SIDE as f32) as u32 - side / 2,
    );
    let mut faces = Array4::<f32>::zeros((count, 3, s, s));
    for (i, path) in lfw_images(count, 61).iter().enumerate() {
        let crop = image::imageops::crop_imm(&load_rgb(path), x0, y0, side, side).to_image();
        let face = image::imageops::resize(
            &crop,
            s as u32,
            s as u32,
            image::imageops::FilterType::Triangle,
        );
        for (x, y, px) in face.enumerate_pixels() {
            for c in 0..3 {
                faces[[i, c, y as usize, x as usize]] = f32::from(px[c]) / 127.5 - 1.0;
            }
        }
    }
    faces
}

/// PSNR in dB of `a` against `b` (values in [-1, 1], peak-to-peak 2), per face, averaged.
fn psnr(a: &Array4<f32>, b: &Array4<f32>) -> f64 {
    let per_face: Vec<f64> = a
        .outer_iter()
        .zip(b.outer_iter())
        .map(|(a, b)| {
            let mse = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
                / a.len() as f64;
            10.0 * (4.0 / mse.max(1e-12)).log10()
        })
        .collect();
    per_face.iter().sum::<f64>() / per_face.len() as f64
}

/// The faces purified with `precision` on `backend`, seed 7, M = 8.
fn purified(faces: &Array4<f32>, backend: Backend, requested: Precision) -> (Array4<f32>, String) {
    let mut purifier = Purifier::load(&shipped(), backend, Device::Cpu).expect("bundle loads");
    let choice = purifier
        .set_precision(requested, backend, Device::Cpu)
        .expect("decoder opens");
    assert_eq!(purifier.precision(), choice.precision);
    let params = PurifyParams {
        samples: 8,
        batch: 8,
        tau: purifier.default_tau(),
    };
    let mut out = faces.clone();
    purifier
        .purify(out.view_mut(), &params, &mut StdRng::seed_from_u64(7))
        .expect("purifies");
    (out, choice.note)
}

#[test]
fn the_shipped_bundle_has_a_current_int8_decoder() {
    let bundle = Bundle::load(shipped()).expect("shipped bundle validates");
    let path = precision::int8_decoder(&bundle).expect("a current int8 decoder");
    assert!(path.ends_with("decoder-int8.onnx"), "{}", path.display());
    assert_eq!(bundle.graph_path(GraphKind::DecoderInt8), Some(path));
    let provenance = &bundle.manifest.provenance["decoder_int8"];
    let psnr = provenance["candidates_psnr_vs_fp32_db"]
        .as_f64()
        .expect("the quantizer's PSNR figure");
    assert!(psnr >= 30.0, "int8 candidates at {psnr} dB of fp32");
}

#[test]
fn int8_purifies_lfw_faces_close_to_fp32_on_both_engines() {
    common::ensure_ort_library();
    let faces = lfw_faces(6, 64);
    for backend in [Backend::Ort, Backend::Tract] {
        let (fp32, _) = purified(&faces, backend, Precision::Fp32);
        let (int8, note) = purified(&faces, backend, Precision::Int8);
        assert!(note.contains("(int8)"), "{note}");
        let (apart, q32, q8) = (psnr(&int8, &fp32), psnr(&fp32, &faces), psnr(&int8, &faces));
        eprintln!(
            "{backend}: int8 output {apart:.2} dB from fp32; against the input fp32 {q32:.2} \
             dB, int8 {q8:.2} dB"
        );
        // Same latents, same choice rule: the int8 faces are the fp32 faces up to quantisation
        // noise (a different nearest candidate now and then), and as close to the input.
        assert!(apart > 30.0, "{backend}: int8 {apart:.2} dB from fp32");
        assert!(
            q8 > q32 - 1.0,
            "{backend}: int8 {q8:.2} dB vs fp32 {q32:.2} dB"
        );
    }
}

#[test]
fn auto_follows_the_engine_and_the_cpu() {
    common::ensure_ort_library();
    let vnni = CpuFeatures::detect().vnni;
    let mut on_ort = Purifier::load(&shipped(), Backend::Ort, Device::Cpu).unwrap();
    let choice = on_ort
        .set_precision(Precision::Auto, Backend::Ort, Device::Cpu)
        .unwrap();
    let expected = if vnni {
        Precision::Int8
    } else {
        Precision::Fp32
    };
    assert_eq!(
        (choice.precision, on_ort.precision()),
        (expected, expected),
        "{}",
        choice.note
    );
    let mut on_tract = Purifier::load(&shipped(), Backend::Tract, Device::Cpu).unwrap();
    let choice = on_tract
        .set_precision(Precision::Auto, Backend::Tract, Device::Cpu)
        .unwrap();
    assert_eq!(on_tract.precision(), Precision::Fp32, "{}", choice.note);
    // Back to fp32 from int8 reopens the plain decoder.
    if vnni {
        on_ort
            .set_precision(Precision::Fp32, Backend::Ort, Device::Cpu)
            .unwrap();
        assert_eq!(on_ort.precision(), Precision::Fp32);
    }
}

/// A copy of the shipped bundle in a fresh temporary folder.
fn copy_of_shipped(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("avae-precision-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(shipped()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

#[test]
fn a_corrupt_int8_decoder_fails_validation_and_a_stale_one_is_not_used() {
    let dir = copy_of_shipped("corrupt");
    let graph = dir.join("decoder-int8.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&graph, &bytes).unwrap();
    let err = Bundle::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("decoder-int8.onnx") && err.contains("checksum"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = copy_of_shipped("stale");
    edit_manifest(&dir, |m| {
        m["provenance"]["decoder_int8"]["decoder_sha256"] = "ab".repeat(32).into();
    });
    let mut purifier = Purifier::load(&dir, Backend::Tract, Device::Cpu).unwrap();
    let choice = purifier
        .set_precision(Precision::Int8, Backend::Tract, Device::Cpu)
        .unwrap();
    assert_eq!(purifier.precision(), Precision::Fp32);
    let why = choice.fallback.expect("a reason");
    assert!(
        why.contains("stale") && why.contains("quantize.py"),
        "{why}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs 3 LFW frames (full-frame) through `avaepurify precision=<value>` on `backend`; returns
/// the frames out, the faces purified and the bus's warning texts.
fn run_element(backend: &str, value: &str) -> (usize, u64, Vec<String>) {
    common::init();
    let element = gst::ElementFactory::make("avaepurify")
        .property("model", shipped().to_string_lossy().as_ref())
        .property_from_str("backend", backend)
        .property_from_str("device", "cpu")
        .property_from_str("precision", value)
        .property("full-frame", true)
        .property("samples", 4u32)
        .property("seed", 3u64)
        .build()
        .expect("avaepurify is registered");
    assert_eq!(
        element
            .property_value("precision")
            .get::<gstavaepurify::avaepurify::PrecisionChoice>()
            .map(|p| format!("{p:?}").to_lowercase())
            .unwrap(),
        value,
    );
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, LFW_SIDE, LFW_SIDE)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .unwrap();
    h.set_src_caps(info.to_caps().unwrap());
    let images = lfw_images(3, 97);
    for (i, path) in images.iter().enumerate() {
        h.push(frame_buffer(&load_rgb(path), &info, 40 * i as u64))
            .expect("frame accepted");
    }
    let mut out = 0;
    while h.try_pull().is_some() {
        out += 1;
    }
    let stats = element.property::<gst::Structure>("stats");
    let purified = stats.get::<u64>("faces-purified").unwrap();
    let warnings = std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Warning]))
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect();
    (out, purified, warnings)
}

#[test]
fn the_element_runs_every_precision_without_losing_a_frame() {
    common::ensure_ort_library();
    for (backend, value) in [
        ("ort", "int8"),
        ("tract", "int8"),
        ("ort", "auto"),
        ("ort", "fp32"),
    ] {
        let (out, purified, warnings) = run_element(backend, value);
        assert_eq!((out, purified), (3, 3), "{backend} precision={value}");
        assert!(warnings.is_empty(), "{backend} {value}: {warnings:?}");
    }
    let (out, purified, warnings) = run_element("ort", "bf16");
    assert_eq!((out, purified), (3, 3), "precision=bf16");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("precision=bf16") && w.contains("fp32")),
        "{warnings:?}"
    );
}

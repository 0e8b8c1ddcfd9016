//! Smoke test of `trainer quality` and `trainer report`: a synthetic LFW-layout dataset, two
//! training steps of the tiny preset for a run folder, and the untrained test bundle.

mod common;

use common::trainer;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Test people (fold 1): two with two images, two with one.
const TEST_PEOPLE: [(&str, u32); 4] = [("Ann_A", 2), ("Bob_B", 2), ("Cid_C", 1), ("Dee_D", 1)];
/// Training people.
const TRAIN_PEOPLE: [(&str, u32); 2] = [("Eve_E", 2), ("Fay_F", 2)];

/// Synthetic 250x250 "faces": a coloured disc on a gradient, different for every image.
fn build_dataset(root: &Path) {
    let images = root.join("lfw-deepfunneled");
    for (p, (person, count)) in TEST_PEOPLE.iter().chain(&TRAIN_PEOPLE).enumerate() {
        let dir = images.join(person);
        fs::create_dir_all(&dir).unwrap();
        for n in 1..=*count {
            let (cx, cy, r) = (100.0 + 10.0 * p as f32, 130.0 - 5.0 * n as f32, 40.0);
            let img = image::RgbImage::from_fn(250, 250, |x, y| {
                let inside = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < r * r;
                if inside {
                    image::Rgb([200 - 30 * p as u8, 150, 60 + 50 * n as u8])
                } else {
                    image::Rgb([x as u8, (y / 2) as u8, (40 * p) as u8])
                }
            });
            img.save_with_format(
                dir.join(format!("{person}_{n:04}.jpg")),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        }
    }
    fs::write(
        root.join("pairs.txt"),
        "1\t2\nAnn_A\t1\t2\nBob_B\t1\t2\nAnn_A\t1\tCid_C\t1\nBob_B\t2\tDee_D\t1\n",
    )
    .unwrap();
}

/// Every number in `v` (recursively) is finite.
fn all_finite(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
        Value::Array(a) => a.iter().all(all_finite),
        Value::Object(o) => o.values().all(all_finite),
        _ => true,
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// The six rows with their scores, and the checks, as the quality JSON must hold them.
fn check_quality_json(q: &Value, faces: u64, samples: u64) {
    assert_eq!(q["faces"], faces);
    assert_eq!(q["samples"], samples);
    let rows = q["rows"].as_array().unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        [
            "nearest",
            "mean_latent",
            "one_sample",
            "candidate_mean",
            "bicubic",
            "noisy_input"
        ]
    );
    for r in &rows[..5] {
        for key in ["clean", "noisy_vs_clean", "noisy_vs_input"] {
            let ssim = r[key]["ssim"].as_f64().unwrap();
            let psnr = r[key]["psnr_db"].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&ssim) && psnr > 0.0, "{r}");
        }
    }
    // Random-sign noise of 8/255 costs about 30 dB; bicubic of the 32x32 input of a smooth
    // synthetic image is far better than the untrained model.
    let noisy = rows[5]["noisy_vs_clean"]["psnr_db"].as_f64().unwrap();
    assert!((29.0..32.0).contains(&noisy), "noisy input PSNR {noisy}");
    let bicubic = rows[4]["clean"]["psnr_db"].as_f64().unwrap();
    assert!(bicubic > 20.0, "bicubic PSNR {bicubic}");
    assert!(all_finite(q), "non-finite figure in {q}");
    assert!(q["checks"]["nearest_within_margin_of_bicubic"].is_boolean());
}

#[test]
fn quality_and_report_on_the_tiny_bundle() {
    let tmp: PathBuf = std::env::temp_dir().join(format!("avae-quality-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    build_dataset(&tmp.join("lfw"));
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/bundle-tiny");
    let bundle = bundle.to_str().unwrap();

    let out = trainer(
        &["prepare", "--data", "lfw", "--size", "64", "--out", "data"],
        &tmp,
    );
    assert!(out.contains("test: 4 identities, 6 images"), "{out}");

    let out = trainer(
        &[
            "quality",
            "--bundle",
            bundle,
            "--faces",
            "3",
            "--samples",
            "4",
            "--json",
            "q.json",
        ],
        &tmp,
    );
    assert!(
        out.contains("nearest candidate within 6 dB of bicubic (clean): "),
        "{out}"
    );
    assert!(
        out.contains("different inputs give different faces: "),
        "{out}"
    );
    check_quality_json(&read_json(&tmp.join("q.json")), 3, 4);

    trainer(
        &[
            "train",
            "--preset",
            "tiny",
            "--objective",
            "bc",
            "--batch",
            "2",
            "--steps",
            "2",
            "--out",
            "run",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
        &tmp,
    );
    let out = trainer(
        &[
            "report",
            "--run",
            "run",
            "--bundle",
            bundle,
            "--out",
            "report/REPORT.md",
            "--faces",
            "4",
        ],
        &tmp,
    );
    assert!(out.contains("wrote report/REPORT.md"), "{out}");
    let dir = tmp.join("report");
    check_quality_json(&read_json(&dir.join("quality.json")), 4, 16);
    let samples = image::open(dir.join("samples.png")).unwrap();
    let before_after = image::open(dir.join("before-after.png")).unwrap();
    // Four test faces: four grid rows of 64 px; four columns of 128 px faces in four rows.
    assert!(samples.height() > 4 * 64 && samples.height() < 5 * 64 + 40);
    assert!(samples.width() > 11 * 64);
    assert!(before_after.width() > 4 * 128 && before_after.height() > 4 * 128);
    assert!(dir.join("loss-curves.png").is_file());
    let md = fs::read_to_string(dir.join("REPORT.md")).unwrap();
    for needle in [
        "| steps reached | 2 |",
        "| preset | `tiny` |",
        "![before and after](before-after.png)",
        "![samples](samples.png)",
        "![loss curves](loss-curves.png)",
        "nearest candidate within 6 dB of bicubic",
        "trainer train --preset tiny --objective bc --steps 2 --batch 2",
        "trainer report --run run",
        // The untrained bundle was not exported from this run, and the report says so.
        "the bundle's provenance says 0 steps",
    ] {
        assert!(md.contains(needle), "REPORT.md lacks '{needle}':\n{md}");
    }
    fs::remove_dir_all(&tmp).unwrap();
}

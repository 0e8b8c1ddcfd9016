//! Smoke test of `trainer eval`: a small LFW-layout dataset made of real LFW images and a
//! 10-fold `pairs.txt` cut from the real one, `trainer prepare` on it, then the whole evaluation
//! on a handful of pairs with the untrained test bundle and tiny settings. Checks that FGSM and
//! PGD lower the undefended accuracy and that every report file is written.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Pairs kept per kind and fold of the cut-down `pairs.txt`.
const PER_KIND: usize = 3;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The trainer binary run from the workspace root.
fn trainer(args: &[&str]) -> String {
    common::trainer(args, &workspace())
}

/// Copies the images of the first `PER_KIND` pairs of each kind of every fold of the shared
/// LFW copy into `root` and writes the matching `pairs.txt`.
fn build_dataset(root: &Path) {
    let lfw = workspace().join("../shared/datasets/lfw");
    let text = fs::read_to_string(lfw.join("pairs.txt")).unwrap_or_else(|e| {
        panic!(
            "the eval smoke test needs the shared LFW copy at {} ({e})",
            lfw.display()
        )
    });
    let mut lines = text.lines();
    let header: Vec<usize> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let (folds, per_kind) = (header[0], header[1]);
    let lines: Vec<&str> = lines.collect();
    let mut kept = vec![format!("{folds}\t{PER_KIND}")];
    let mut files = BTreeSet::new();
    for fold in 0..folds {
        for kind in 0..2 {
            let start = fold * 2 * per_kind + kind * per_kind;
            for line in &lines[start..start + PER_KIND] {
                let t: Vec<&str> = line.split_whitespace().collect();
                let refs: Vec<(String, usize)> = if t.len() == 3 {
                    vec![
                        (t[0].into(), t[1].parse().unwrap()),
                        (t[0].into(), t[2].parse().unwrap()),
                    ]
                } else {
                    vec![
                        (t[0].into(), t[1].parse().unwrap()),
                        (t[2].into(), t[3].parse().unwrap()),
                    ]
                };
                files.extend(refs.into_iter().map(|(n, k)| format!("{n}/{n}_{k:04}.jpg")));
                kept.push(line.to_string());
            }
        }
    }
    for file in &files {
        let dst = root.join("lfw-deepfunneled").join(file);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(lfw.join("lfw-deepfunneled").join(file), &dst).unwrap();
    }
    fs::write(root.join("pairs.txt"), kept.join("\n") + "\n").unwrap();
}

#[test]
fn eval_runs_and_attacks_lower_the_undefended_accuracy() {
    let recognizer = avae_trainer::recognizer::default_model_path();
    if let Err(e) = avae_trainer::recognizer::check_model(&recognizer) {
        panic!("{e:#}");
    }
    let root = std::env::temp_dir().join(format!("avae-eval-smoke-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    build_dataset(&root);
    let (lfw, data, report) = (root.clone(), root.join("data"), root.join("report"));
    trainer(&[
        "prepare",
        "--data",
        lfw.to_str().unwrap(),
        "--size",
        "64",
        "--out",
        data.to_str().unwrap(),
    ]);
    let pairs_file = lfw.join("pairs.txt");
    let eval_args = [
        "eval",
        "--bundle",
        "tests/data/bundle-tiny",
        "--report",
        report.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--pairs-file",
        pairs_file.to_str().unwrap(),
        "--pairs",
        "6",
        "--fast",
        "--samples",
        "2",
        "--eot",
        "2",
        "--calib-pairs",
        "27",
        "--pgd-steps",
        "5",
        "--whitebox-pgd-steps",
        "3",
        "--cw-steps",
        "10",
        "--grid-rows",
        "4",
        "--chunk",
        "6",
        "--backend",
        "tract",
        "--threads",
        "1",
    ];
    let out = trainer(&eval_args);
    assert!(out.contains("M = 2") && out.contains("K = 2"), "{out}");

    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(report.join("summary.json")).unwrap()).unwrap();
    let grey = &summary["tables"][0];
    assert_eq!(grey["key"], "grey");
    let none = &grey["rows"][0];
    assert_eq!(none["key"], "none");
    let avg = |cond: &str| none["cells"][cond]["average"].as_f64().unwrap();
    let clean = avg("clean");
    assert!(
        clean >= 0.5,
        "clean accuracy {clean} of real faces is too low"
    );
    for attack in ["fgsm8", "pgd8"] {
        assert!(
            avg(attack) < clean,
            "{attack} did not lower the undefended accuracy ({} vs clean {clean})",
            avg(attack)
        );
    }
    let rows: Vec<&str> = summary["tables"][1]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(
        rows.contains(&"avae-bpda") && rows.contains(&"avae-eot"),
        "{rows:?}"
    );
    let manifold = &summary["tables"][2]["rows"][0]["cells"];
    for cond in ["manifold", "manifold_unit", "recon"] {
        assert!(
            manifold[cond]["average"].is_f64(),
            "{cond} missing: {manifold}"
        );
    }
    for file in [
        "README.md",
        "summary.json",
        "roc-grey.png",
        "roc-white.png",
        "roc-manifold.png",
        "grid-fgsm8.png",
        "grid-pgd8.png",
        "grid-cw.png",
        "grid-manifold.png",
        "grid-manifold_unit.png",
        "grid-whitebox-pgd8.png",
    ] {
        assert!(
            report.join(file).is_file(),
            "{file} missing from the report"
        );
    }
    let readme = fs::read_to_string(report.join("README.md")).unwrap();
    assert!(
        readme.contains("Table 1") && readme.contains("paper: A-VAE"),
        "{readme}"
    );
    // The attack alarm's evaluation: every headline figure a rate, every attack and weight.
    let alarm = &summary["alarm"];
    for key in [
        "auc_fgsm8",
        "auc_pgd8",
        "auc_cw",
        "auc_adaptive",
        "combined_pgd8",
        "combined_adaptive",
    ] {
        let v = alarm[key].as_f64();
        assert!(
            v.is_some_and(|v| (0.0..=1.0).contains(&v)),
            "alarm {key} is not in [0, 1]: {alarm}"
        );
    }
    assert_eq!(
        alarm["attacks"].as_array().map(Vec::len),
        Some(6),
        "{alarm}"
    );
    assert_eq!(
        alarm["adaptive"].as_array().map(Vec::len),
        Some(5),
        "{alarm}"
    );
    assert!(report.join("alarm-crop.png").is_file(), "alarm ROC missing");
    assert!(readme.contains("## Attack alarm"), "{readme}");

    // The image threat model: no defense, A-VAE and the five baselines, every grey-box attack,
    // the white-box attack on the A-VAE row (kept chunk by chunk for a resumed run) and the
    // transfer of its probes to every row; the headline comes from those rows.
    let image = summary["image"].as_array().unwrap();
    assert_eq!(image.len(), 7, "{image:?}");
    for row in image {
        for cond in ["clean", "fgsm4", "fgsm8", "pgd8", "cw", "transfer_pgd8"] {
            let v = row["accuracy"][cond].as_f64();
            assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{cond}: {row}");
        }
    }
    assert!(image[1]["accuracy"]["bpda_pgd8"].is_f64(), "{}", image[1]);
    assert_eq!(image[1]["whitebox_pairs"], 6);
    let headline = &summary["headline"];
    for key in [
        "clean_none",
        "clean_avae",
        "fgsm8",
        "pgd8",
        "cw",
        "whitebox_pgd8",
        "best_baseline_pgd8",
        "crop_pgd8",
        "samples",
        "tau",
    ] {
        assert!(headline[key].is_number(), "{key} missing: {headline}");
    }
    assert_eq!(headline["clean_none"], image[0]["accuracy"]["clean"]);
    let kept: Vec<String> = fs::read_dir(report.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for stem in [
        "whitebox-image-",
        "greybox-crop-",
        "whitebox-crop-avae-",
        "whitebox-crop-jpeg75-",
        "adaptive-alarm-",
    ] {
        assert!(
            kept.iter().any(|f| f.starts_with(stem)),
            "no {stem} chunk kept in report/cache: {kept:?}"
        );
    }
    assert!(readme.contains("**Headline**"), "{readme}");

    // A second run on the same report folder (a resumed one) picks up every kept attack chunk
    // and gives the same tables, image rows and alarm figures.
    let again = trainer(&eval_args);
    assert!(again.contains("M = 2"), "{again}");
    let resumed: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(report.join("summary.json")).unwrap()).unwrap();
    for key in ["tables", "headline"] {
        assert_eq!(
            resumed[key], summary[key],
            "{key} differs after a resumed run"
        );
    }
    for (a, b) in resumed["image"].as_array().unwrap().iter().zip(image) {
        assert_eq!(
            a["accuracy"], b["accuracy"],
            "image row differs after a resumed run"
        );
    }
    assert_eq!(resumed["alarm"]["adaptive"], summary["alarm"]["adaptive"]);

    // The robustness lab on the same data: two bundles side by side, one row each.
    let lab = root.join("lab");
    let out = trainer(&[
        "eval",
        "--lab",
        "--bundle",
        "tests/data/bundle-tiny",
        "--bundle",
        "tests/data/bundle-tiny",
        "--report",
        lab.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--pairs-file",
        pairs_file.to_str().unwrap(),
        "--pairs",
        "6",
        "--samples",
        "2",
        "--calib-pairs",
        "27",
        "--pgd-steps",
        "3",
        "--whitebox-pgd-steps",
        "2",
        "--chunk",
        "6",
        "--backend",
        "tract",
        "--threads",
        "1",
    ]);
    assert!(out.contains("| defense |"), "{out}");
    let lab_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(lab.join("lab.json")).unwrap()).unwrap();
    let rows = lab_json["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        8,
        "none, down-up and two bundles, under the image and the crop threat model: {lab_json}"
    );
    for (model, model_rows) in [("image", &rows[..4]), ("crop", &rows[4..])] {
        let none_lab = &model_rows[0]["accuracy"];
        assert!(
            model_rows.iter().all(|r| r["threat_model"] == model),
            "{model}: {lab_json}"
        );
        assert!(
            none_lab["pgd8"].as_f64().unwrap() < none_lab["clean"].as_f64().unwrap(),
            "PGD did not lower the undefended accuracy in the lab ({model}): {none_lab}"
        );
        for row in &model_rows[2..] {
            let acc = &row["accuracy"];
            assert!(acc["bpda_pgd8"].is_f64(), "{row}");
            // Any-iterate can only break more pairs than the final iterate alone.
            assert!(
                acc["bpda_pgd8"].as_f64().unwrap() <= acc["bpda_pgd8_final"].as_f64().unwrap(),
                "{row}"
            );
            assert!(row["ms_per_face"].as_f64().unwrap() > 0.0, "{row}");
            let auc = row["alarm"]["detail-ratio"]["fgsm8"]["auc"].as_f64();
            assert!(
                auc.is_some_and(|a| (0.0..=1.0).contains(&a)),
                "alarm figures missing ({model}): {row}"
            );
            // FGSM's sign noise fills the photo's finest band, which the element reads from the
            // frame before its warp: the native score stands out from every clean photo.
            if model == "image" {
                let auc = row["alarm"]["native"]["fgsm8"]["auc"].as_f64().unwrap();
                assert!(auc >= 0.9, "FGSM 8 AUC {auc} of the native score: {row}");
                // The reuse path: the clean probe decoded from its own latents is the full
                // purification again (within one level, so within one pair of six).
                for key in ["reuse_clean", "reuse_fgsm8", "reuse_pgd8"] {
                    let v = acc[key].as_f64().unwrap_or(-1.0);
                    assert!((0.0..=1.0).contains(&v), "{key}: {row}");
                }
                let (full, reused) = (
                    acc["clean"].as_f64().unwrap(),
                    acc["reuse_clean"].as_f64().unwrap(),
                );
                assert!((full - reused).abs() <= 1.0 / 6.0 + 1e-9, "{row}");
            } else {
                assert!(acc.get("reuse_clean").is_none(), "{row}");
            }
        }
    }
    let md = fs::read_to_string(lab.join("lab.md")).unwrap();
    assert!(
        md.contains("image threat model")
            && md.contains("Attack alarm, crop")
            && md.contains("AUC fgsm8 native")
            && md.contains("reuse path (latents chosen on the clean probe"),
        "{md}"
    );
    assert!(lab.join("lab.md").is_file());

    // The alarm, fitted on clean training faces: on the cache's crops for a bundle without a
    // landmark template, cut out of the photos as the element does for one with a template.
    for (name, template) in [
        ("crops", None),
        (
            "aligned",
            Some([
                [0.33, 0.37],
                [0.68, 0.35],
                [0.5, 0.57],
                [0.36, 0.74],
                [0.66, 0.72],
            ]),
        ),
    ] {
        let bundle = root.join(format!("bundle-{name}"));
        fs::create_dir_all(&bundle).unwrap();
        for f in [
            "encoder.onnx",
            "decoder.onnx",
            "purifier.onnx",
            "manifest.json",
        ] {
            fs::copy(
                workspace().join("tests/data/bundle-tiny").join(f),
                bundle.join(f),
            )
            .unwrap();
        }
        if let Some(t) = template {
            let path = bundle.join("manifest.json");
            let mut m: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            m["landmark_template"] = serde_json::json!(t);
            fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        }
        let out = trainer(&[
            "alarm",
            "--bundle",
            bundle.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--alarm-faces",
            "8",
            "--alarm-samples",
            "2",
        ]);
        assert!(out.contains("thresholds"), "{out}");
        let m: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(bundle.join("manifest.json")).unwrap())
                .unwrap();
        let alarm = &m["alarm"];
        let (t1, t5) = (
            alarm["threshold_1"].as_f64().unwrap(),
            alarm["threshold_5"].as_f64().unwrap(),
        );
        assert!(t5 <= t1, "{alarm}");
        let how = alarm["calibration"].as_str().unwrap();
        let expected = if template.is_some() {
            "photos"
        } else {
            "crops"
        };
        assert!(
            how.contains("8 clean training faces") && how.contains(expected),
            "{how}"
        );
    }
    fs::remove_dir_all(&root).unwrap();
}

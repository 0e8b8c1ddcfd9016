//! End-to-end smoke test of the `trainer` binary: `prepare` on a handful of identities, three
//! training steps of the tiny preset, then a resume for two more.

mod common;

use common::trainer;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Identities of the temporary dataset: fold-1 people first (they form the test split).
const FOLD1_PEOPLE: [&str; 2] = ["Abel_Pacheco", "Akhmed_Zakayev"];
const TRAIN_PEOPLE: [&str; 3] = ["Aaron_Peirsol", "Aaron_Sorkin", "Abdullah_Gul"];

/// A small LFW-layout dataset: real LFW images when the shared copy exists, else synthetic PNGs,
/// plus a `pairs.txt` whose fold 1 names the test people, and one corrupt file to be skipped.
fn build_dataset(root: &Path) {
    let lfw =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/lfw/lfw-deepfunneled");
    let images = root.join("lfw-deepfunneled");
    for (p, person) in FOLD1_PEOPLE.iter().chain(&TRAIN_PEOPLE).enumerate() {
        let dir = images.join(person);
        fs::create_dir_all(&dir).unwrap();
        for n in 1..=2 {
            let file = format!("{person}_{n:04}.jpg");
            let src = lfw.join(person).join(&file);
            if src.is_file() {
                fs::copy(&src, dir.join(&file)).unwrap();
            } else {
                let img = image::RgbImage::from_fn(250, 250, |x, y| {
                    image::Rgb([(x + 40 * p as u32) as u8, y as u8, (40 * n) as u8])
                });
                img.save_with_format(dir.join(&file), image::ImageFormat::Jpeg)
                    .unwrap();
            }
        }
    }
    fs::write(
        images.join(TRAIN_PEOPLE[0]).join("broken_0001.jpg"),
        b"not a jpeg",
    )
    .unwrap();
    fs::write(
        root.join("pairs.txt"),
        format!(
            "1\t1\n{a}\t1\t2\n{a}\t1\t{b}\t2\n",
            a = FOLD1_PEOPLE[0],
            b = FOLD1_PEOPLE[1]
        ),
    )
    .unwrap();
}

fn log_steps(run: &Path) -> Vec<u64> {
    fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn prepare_train_and_resume() {
    let tmp: PathBuf = std::env::temp_dir().join(format!("avae-smoke-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let dataset = tmp.join("lfw");
    build_dataset(&dataset);

    let out = trainer(
        &["prepare", "--data", "lfw", "--size", "64", "--out", "data"],
        &tmp,
    );
    assert!(
        out.contains("train: 3 identities, 6 images; test: 2 identities, 4 images; 2 fold-1 pairs; 1 unreadable"),
        "{out}"
    );
    assert!(
        out.contains("broken_0001.jpg"),
        "the corrupt file is named:\n{out}"
    );
    assert_eq!(
        fs::metadata(tmp.join("data/lfw-64.bin")).unwrap().len(),
        10 * 3 * 64 * 64
    );
    assert!(tmp.join("data/lfw-64-preview.png").is_file());

    let common = [
        "train",
        "--preset",
        "tiny",
        "--objective",
        "bc",
        "--batch",
        "4",
        "--out",
        "run",
        "--ckpt-every",
        "2",
        "--sample-every",
        "2",
        "--threads",
        "2",
        "--device",
        "cpu",
    ];
    let first: Vec<&str> = common.iter().copied().chain(["--steps", "3"]).collect();
    trainer(&first, &tmp);
    let run = tmp.join("run");
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(meta["step"], 3);
    for f in ["generator", "ema", "critic"] {
        assert!(run.join(format!("ckpt-00000003/{f}.safetensors")).is_file());
    }
    assert!(run.join("samples/step-00000002.png").is_file());
    assert!(run.join("samples/step-00000003.png").is_file());
    assert!(run.join("loss-curves.png").is_file());
    assert_eq!(log_steps(&run), [1, 2, 3]);

    // Without --resume an existing run is refused rather than overwritten.
    let refused = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&first)
        .current_dir(&tmp)
        .output()
        .unwrap();
    assert!(!refused.status.success());

    let resumed: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--steps", "5", "--resume"])
        .collect();
    let out = trainer(&resumed, &tmp);
    assert!(out.contains("trained steps 4..5"), "{out}");
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(meta["step"], 5);
    assert_eq!(log_steps(&run), [1, 2, 3, 4, 5]);
    assert!(run.join("samples/step-00000005.png").is_file());
    // Only the newest two checkpoint folders are kept.
    assert!(!run.join("ckpt-00000002").exists());
    assert!(run.join("ckpt-00000004").is_dir() && run.join("ckpt-00000005").is_dir());
    assert!(
        meta.get("init").is_none(),
        "a run from scratch has no init: {meta}"
    );

    // A fine-tuning run records the bundle it started from, and keeps it across a resume.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/bundle-tiny");
    let tiny = tiny.to_str().unwrap();
    let mut finetune: Vec<&str> = common.to_vec();
    let out_arg = finetune.iter().position(|a| *a == "run").unwrap();
    finetune[out_arg] = "run-ft";
    let first_ft: Vec<&str> = finetune
        .iter()
        .copied()
        .chain(["--steps", "2", "--init-bundle", tiny])
        .collect();
    trainer(&first_ft, &tmp);
    let resumed_ft: Vec<&str> = finetune
        .iter()
        .copied()
        .chain(["--steps", "3", "--resume"])
        .collect();
    trainer(&resumed_ft, &tmp);
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.join("run-ft/checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(meta["step"], 3);
    let init = meta["init"].as_str().unwrap_or_default();
    assert!(init.contains("bundle-tiny"), "init: {meta}");

    // Recognizer-guided training: every perturbed step is the recognizer attack and the
    // identity loss is logged (the recognizer is the real one, fetched by the set-up).
    let mut guided: Vec<&str> = common.to_vec();
    guided[out_arg] = "run-guided";
    guided.extend([
        "--steps",
        "2",
        "--denoise",
        "1",
        "--denoise-recognizer",
        "1",
        "--denoise-recognizer-steps",
        "2",
        "--id-weight",
        "1",
    ]);
    trainer(&guided, &tmp);
    let log = fs::read_to_string(tmp.join("run-guided/log.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .collect();
    assert_eq!(steps.len(), 2, "{log}");
    for v in &steps {
        assert_eq!(v["denoise"], 5, "the recognizer family: {v}");
        let id = v["identity"].as_f64().unwrap();
        assert!(id > 0.0 && id < 2.0, "identity loss 1 - cos in (0, 2): {v}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.join("run-guided/checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(meta["hyper"]["guide"]["id_weight"], 1.0, "{meta}");
    fs::remove_dir_all(&tmp).unwrap();
}

/// The recognizer attack of guided training stays in its L-inf ball and lowers the cosine of
/// real LFW crops to their clean embeddings; a face's identity loss to itself is zero.
#[test]
fn recognizer_attack_stays_in_budget_and_dodges() {
    use avae_trainer::data::{self, FaceSet, Split};
    use avae_trainer::guide::Guidance;
    let tmp: PathBuf = std::env::temp_dir().join(format!("avae-guide-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    build_dataset(&tmp.join("lfw"));
    trainer(
        &["prepare", "--data", "lfw", "--size", "64", "--out", "data"],
        &tmp,
    );
    let set = FaceSet::load(&tmp.join("data"), "lfw", 64).unwrap();
    let x = data::to_unit_range(&set.select(&set.indices(Split::Train)));
    let guidance = Guidance::load(
        &avae_trainer::recognizer::default_model_path(),
        &set.index.crop,
        64,
        tch::Device::Cpu,
        &avae_trainer::guide::Guide::default(),
    )
    .unwrap();
    let target = tch::no_grad(|| guidance.embed(&x)).unwrap();
    let own = f64::try_from(tch::no_grad(|| guidance.identity_loss(&x, &target)).unwrap()).unwrap();
    assert!(own.abs() < 1e-4, "identity loss of a face to itself: {own}");
    let eps = 2.0 * 8.0 / 255.0;
    let adv = guidance.attack(&x, &target, eps).unwrap();
    let linf = f64::try_from((&adv - &x).abs().max()).unwrap();
    assert!(linf <= eps + 1.0 / 255.0 + 1e-5, "L-inf {linf} over {eps}");
    let after =
        f64::try_from(tch::no_grad(|| guidance.identity_loss(&adv, &target)).unwrap()).unwrap();
    assert!(
        after > 0.3,
        "3 PGD steps at 8/255 should move the embeddings: 1 - cos = {after}"
    );
    fs::remove_dir_all(&tmp).unwrap();
}

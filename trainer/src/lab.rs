//! `trainer eval --lab`: the robustness lab, a quick side-by-side comparison of bundles.
//!
//! One row per bundle (plus no defense and the 32x32 down-up baseline), on the first `--pairs`
//! (200) fold-1 pairs under the *crop* threat model of `eval.rs` (the attacker perturbs the
//! `S x S` crop the purifier sees): clean accuracy, grey-box FGSM 8 and PGD 8 (gradient of the
//! undefended recognizer, computed once and shared by every row), white-box BPDA PGD 8 against
//! each bundle (identity backward pass through the purifier, K = 1, random start, a pair counts
//! as broken if the final iterate breaks it), PSNR of the purified clean probes against the
//! clean probes, and milliseconds per face at the lab's M. Thresholds are set per row at 1% FAR
//! on clean impostor pairs of folds 2-10, as in the full evaluation.
//!
//! The figure that decides between bundles is grey-box PGD 8 at clean accuracy >= 0.95.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use gstavaepurify::bundle::Bundle;
use gstavaepurify::purifier::PurifyParams;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::attack::{self, Bpda, GreyBox, LossGradient, Target, fgsm, pgd};
use crate::data::{progress_bar, write_atomic};
use crate::defense::{AVaeDefense, Defense, quantize};
use crate::eval::{
    EvalOptions, PairSets, TARGET_FAR, defended_embeddings, mix, scores_of, stream,
    threshold_at_far, verify,
};

/// Fold-1 pairs of a lab run.
pub const PAIRS: usize = 200;
/// Calibration impostor pairs of a lab run.
pub const CALIB_PAIRS: usize = 300;
/// A-VAE samples M of a lab run (the element's default).
pub const SAMPLES: usize = 16;

/// One row of the lab table.
#[derive(Debug, Clone, Serialize)]
pub struct LabRow {
    /// What the row is (`none`, `down-up 32`, or the bundle folder).
    pub defense: String,
    /// Training provenance of the bundle (steps, objective), if any.
    pub provenance: String,
    /// Threshold at 1% FAR.
    pub threshold: f64,
    /// Average accuracy by condition (`clean`, `fgsm8`, `pgd8`, `bpda_pgd8`).
    pub accuracy: BTreeMap<String, f64>,
    /// PSNR (dB) of the defended clean probes against the clean probes.
    pub psnr_db: Option<f64>,
    /// Wall milliseconds per face of the defense on the clean probes.
    pub ms_per_face: Option<f64>,
}

/// Mean PSNR in dB of `a` against `b` (both in [-1, 1]).
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = ((a - b) / 2.0)
        .square()
        .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
        .clamp_min(1e-10);
    (mse.log10() * -10.0).mean(Kind::Float).double_value(&[])
}

/// Runs the lab and writes `lab.md` and `lab.json` into the report folder.
pub fn run(opts: &EvalOptions) -> Result<()> {
    let start = Instant::now();
    let first = Bundle::load(&opts.bundle)
        .with_context(|| format!("cannot load the bundle '{}'", opts.bundle.display()))?;
    let size = first.manifest.image_size;
    let PairSets {
        recognizer,
        same,
        gallery,
        probe,
        align_gallery: align_g,
        align_probe: align_p,
        calib_a: ca,
        calib_b: cb,
        align_calib_a: align_ca,
        align_calib_b: align_cb,
        calib_len,
    } = PairSets::load(opts, size)?;
    let n = same.len();
    let chunk = opts.chunk;
    println!(
        "lab: {n} fold-1 pairs, {} calibration pairs, M = {}, {} bundle(s), crop threat model",
        calib_len,
        opts.purify.samples,
        opts.lab_bundles.len()
    );

    // Grey-box probes, shared by every row.
    let t = Instant::now();
    let clean_gallery = recognizer.embed_all(&gallery, &align_g, chunk as i64)?;
    let mut rng = StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK]));
    let mut parts: BTreeMap<&str, Vec<Tensor>> = BTreeMap::new();
    let bar = progress_bar(n as u64, "grey-box attacks");
    for first_pair in (0..n).step_by(chunk) {
        let len = chunk.min(n - first_pair);
        let rows = |t: &Tensor| t.narrow(0, first_pair as i64, len as i64);
        let x = rows(&probe);
        let target = Target::new(
            &rows(&clean_gallery),
            &same[first_pair..first_pair + len],
            &rows(&align_p),
        );
        let mut grey = GreyBox {
            recognizer: &recognizer,
            target: &target,
        };
        let (_, grad) = grey.loss_and_grad(&x)?;
        let pgd8 = pgd(&x, &opts.pgd, &mut grey, &mut rng)?;
        parts
            .entry("fgsm8")
            .or_default()
            .push(quantize(&fgsm(&x, &grad, attack::unit_eps(8.0))));
        parts.entry("pgd8").or_default().push(quantize(&pgd8));
        bar.inc(len as u64);
    }
    bar.finish();
    let mut probes: BTreeMap<&str, Tensor> = parts
        .into_iter()
        .map(|(k, v)| (k, Tensor::cat(&v, 0)))
        .collect();
    probes.insert("clean", probe.shallow_clone());
    println!("grey-box attacks: {:.0} s", t.elapsed().as_secs_f64());

    let mut defenses: Vec<(String, String, Defense)> = vec![
        ("none".into(), String::new(), Defense::None),
        (
            "down-up 32".into(),
            String::new(),
            Defense::DownUp { size: 32 },
        ),
    ];
    for dir in &opts.lab_bundles {
        let bundle = Bundle::load(dir)
            .with_context(|| format!("cannot load the bundle '{}'", dir.display()))?;
        let params = PurifyParams {
            tau: opts.tau_given.unwrap_or(bundle.manifest.tau),
            ..opts.purify
        };
        let prov = &bundle.manifest.provenance;
        let provenance = ["steps", "objective"]
            .iter()
            .filter_map(|k| {
                prov.get(*k)
                    .map(|v| format!("{k} {}", v.as_str().map_or(v.to_string(), str::to_owned)))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let avae = AVaeDefense::load(dir, opts.backend, params)?;
        defenses.push((
            format!("{} (tau {:.3})", dir.display(), params.tau),
            provenance,
            Defense::AVae(Box::new(avae)),
        ));
    }

    let seeds = |s: u64, c: u64, count: usize| -> Vec<u64> {
        (0..count as u64)
            .map(|k| mix(opts.seed, &[s, c, k]))
            .collect()
    };
    let mut rows = Vec::new();
    for (d, (name, provenance, defense)) in defenses.iter_mut().enumerate() {
        let t = Instant::now();
        let ea = defended_embeddings(
            &recognizer,
            defense,
            &ca,
            &align_ca,
            &seeds(stream::CALIB, 0, ca.size()[0] as usize),
            chunk,
        )?;
        let eb = defended_embeddings(
            &recognizer,
            defense,
            &cb,
            &align_cb,
            &seeds(stream::CALIB, 1, cb.size()[0] as usize),
            chunk,
        )?;
        let threshold = threshold_at_far(&scores_of(&ea, &eb)?, TARGET_FAR);
        let g = defended_embeddings(
            &recognizer,
            defense,
            &gallery,
            &align_g,
            &seeds(stream::GALLERY, 0, n),
            chunk,
        )?;
        let mut accuracy = BTreeMap::new();
        for (c, cond) in ["clean", "fgsm8", "pgd8"].iter().enumerate() {
            let e = defended_embeddings(
                &recognizer,
                defense,
                &probes[cond],
                &align_p,
                &seeds(stream::PROBE, c as u64, n),
                chunk,
            )?;
            accuracy.insert(
                cond.to_string(),
                verify(&scores_of(&e, &g)?, &same, threshold).average,
            );
        }
        let (psnr_db, ms_per_face) = if matches!(defense, Defense::None) {
            (None, None)
        } else {
            let t = Instant::now();
            let out = defense.apply(&probe, &seeds(stream::PROBE, 50, n))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
            (Some(psnr(&out, &probe)), Some(ms))
        };
        if defense.is_random() && opts.whitebox_pgd.steps > 0 {
            let mut adv = Vec::new();
            let mut attack_rng =
                StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK, 1000 + d as u64]));
            let bar = progress_bar(n as u64, "white-box BPDA PGD 8");
            for first_pair in (0..n).step_by(chunk) {
                let len = chunk.min(n - first_pair);
                let rows = |t: &Tensor| t.narrow(0, first_pair as i64, len as i64);
                let target = Target::new(
                    &rows(&g),
                    &same[first_pair..first_pair + len],
                    &rows(&align_p),
                );
                let mut bpda = Bpda {
                    recognizer: &recognizer,
                    target: &target,
                    defense: &mut *defense,
                    samples: 1,
                    rng: StdRng::seed_from_u64(mix(
                        opts.seed,
                        &[stream::ATTACK, first_pair as u64],
                    )),
                };
                adv.push(quantize(&pgd(
                    &rows(&probe),
                    &opts.whitebox_pgd,
                    &mut bpda,
                    &mut attack_rng,
                )?));
                bar.inc(len as u64);
            }
            bar.finish();
            let adv = Tensor::cat(&adv, 0);
            let e = defended_embeddings(
                &recognizer,
                defense,
                &adv,
                &align_p,
                &seeds(stream::PROBE, 60, n),
                chunk,
            )?;
            accuracy.insert(
                "bpda_pgd8".into(),
                verify(&scores_of(&e, &g)?, &same, threshold).average,
            );
        }
        println!("{name}: {:.0} s", t.elapsed().as_secs_f64());
        rows.push(LabRow {
            defense: name.clone(),
            provenance: provenance.clone(),
            threshold,
            accuracy,
            psnr_db,
            ms_per_face,
        });
    }

    let table = render(&rows, opts);
    println!("{table}");
    fs::create_dir_all(&opts.report)
        .with_context(|| format!("cannot create '{}'", opts.report.display()))?;
    let md: PathBuf = opts.report.join("lab.md");
    write_atomic(&md, table.as_bytes())?;
    let json = serde_json::json!({
        "command": opts.command,
        "pairs": n,
        "calibration_pairs": calib_len,
        "samples": opts.purify.samples,
        "pgd": opts.pgd,
        "whitebox_pgd": opts.whitebox_pgd,
        "threat_model": "crop",
        "rows": rows,
        "wall_seconds": start.elapsed().as_secs_f64(),
    });
    write_atomic(
        &opts.report.join("lab.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!(
        "wrote {} and lab.json in {:.0} s",
        md.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The lab table as Markdown.
fn render(rows: &[LabRow], opts: &EvalOptions) -> String {
    let mut out = format!(
        "Robustness lab (crop threat model): {} fold-1 pairs, M = {}, grey-box PGD {} steps, \
         BPDA PGD {} steps (K = 1)\n\n| defense | provenance | clean | FGSM 8 | PGD 8 | BPDA PGD 8 | \
         PSNR dB | ms/face |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
        opts.pairs, opts.purify.samples, opts.pgd.steps, opts.whitebox_pgd.steps
    );
    let f = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for r in rows {
        let a = |k: &str| f(r.accuracy.get(k).copied(), 3);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.defense,
            r.provenance,
            a("clean"),
            a("fgsm8"),
            a("pgd8"),
            a("bpda_pgd8"),
            f(r.psnr_db, 2),
            f(r.ms_per_face, 1)
        ));
    }
    out
}

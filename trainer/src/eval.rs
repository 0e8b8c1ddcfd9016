//! `trainer eval`: the paper's evaluation (section 4) on LFW with a real recognizer, the
//! paper's attacks and the baselines, written to a report folder by [`crate::report`].
//!
//! Protocol:
//! - Test pairs: fold 1 of `pairs.txt` (people the A-VAE never saw), `--pairs` of them, half
//!   same-identity and half different-identity, spread evenly over the fold.
//! - Every image is the cached `S x S` crop (`trainer prepare`), in [-1, 1]: the domain the
//!   purifier acts on and the one attacked. The gallery (first image of a pair) stays clean; the
//!   probe (second image) is attacked. Every defense is applied to both images.
//! - Score: cosine similarity of the recognizer's embeddings. Per defense, the threshold is set
//!   at 1% FAR on clean different-identity pairs of folds 2 to 10, defended the same way (never
//!   on the test fold). A pair is verified correctly when a same-identity pair scores above the
//!   threshold or a different-identity pair does not.
//! - Adversarial images are rounded to 8 bits before any defense sees them, and every defense's
//!   output too (frames are 8-bit).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use gstavaepurify::bundle::Bundle;
use gstavaepurify::engine::Backend;
use gstavaepurify::purifier::PurifyParams;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::attack::{
    self, Bpda, CwParams, GreyBox, LossGradient, PgdParams, Target, carlini_wagner, fgsm, pgd,
};
use crate::data::{FaceSet, progress_bar, to_unit_range};
use crate::defense::{AVaeDefense, Defense, quantize};
use crate::recognizer::{Alignment, Recognizer, cosine};
use crate::report;

/// False-accept rate at which every threshold is set.
pub const TARGET_FAR: f64 = 0.01;

/// Everything `trainer eval` needs.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOptions {
    /// The A-VAE bundle to evaluate (what ships).
    pub bundle: PathBuf,
    /// Report folder to (re)write.
    pub report: PathBuf,
    /// Folder of the crop cache.
    pub data: PathBuf,
    /// Name prefix of the crop cache.
    pub data_name: String,
    /// LFW `pairs.txt` (for the calibration folds 2 to 10).
    pub pairs_file: PathBuf,
    /// The recognizer ONNX file.
    pub recognizer: PathBuf,
    /// How crops are mapped to the recognizer input.
    pub alignment: Alignment,
    /// Fold-1 pairs to evaluate (at most 600).
    pub pairs: usize,
    /// Different-identity pairs of folds 2 to 10 for the 1% FAR thresholds.
    pub calib_pairs: usize,
    /// A-VAE purification: M (`samples`), decoder batch and tau (in the summary's `purifier`).
    #[serde(skip)]
    pub purify: PurifyParams,
    /// Inference backend of the purifier.
    #[serde(skip)]
    pub backend: Backend,
    /// K: draws of the purifier's randomness per white-box gradient (EOT).
    pub eot: usize,
    /// Grey-box PGD.
    pub pgd: PgdParams,
    /// White-box (BPDA) PGD.
    pub whitebox_pgd: PgdParams,
    /// Grey-box C&W L2.
    pub cw: CwParams,
    /// On-manifold attack: steps n.
    pub manifold_steps: usize,
    /// On-manifold attack: latent step size epsilon.
    pub manifold_eps: f64,
    /// Pairs per attack batch.
    pub chunk: usize,
    /// Rows of each image grid.
    pub grid_rows: usize,
    /// Seed of every random choice (attack starts, defense draws).
    pub seed: u64,
}

/// Settings of a full run and of `--fast`: `(full, fast)`.
mod defaults {
    pub const PAIRS: usize = 600;
    pub const CALIB_PAIRS: (usize, usize) = (900, 300);
    pub const SAMPLES: (usize, usize) = (64, 16);
    pub const EOT: (usize, usize) = (4, 2);
    pub const PGD_STEPS: (usize, usize) = (20, 10);
    pub const WHITEBOX_PGD_STEPS: (usize, usize) = (10, 5);
    pub const CW_STEPS: (usize, usize) = (50, 20);
}

/// Arguments of `trainer eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A-VAE bundle folder to evaluate
    #[arg(long, default_value = "models/avae-cpu")]
    bundle: PathBuf,
    /// Report folder to (re)write
    #[arg(long, default_value = "reports")]
    report: PathBuf,
    /// Folder of the crop cache written by `trainer prepare`
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Name prefix of the crop cache
    #[arg(long, default_value = "lfw")]
    data_name: String,
    /// LFW pairs.txt (folds 2-10 give the thresholds) [default: pairs.txt of ../shared/datasets/lfw]
    #[arg(long)]
    pairs_file: Option<PathBuf>,
    /// Recognizer ONNX [default: models/recognizer/fr_feature.onnx, see scripts/fetch-recognizer.sh]
    #[arg(long)]
    recognizer: Option<PathBuf>,
    /// How face crops are mapped to the recognizer's 112x112 input
    #[arg(long, value_enum, default_value_t = Alignment::Template)]
    alignment: Alignment,
    /// Fold-1 pairs to evaluate (half same, half different; at most 600)
    #[arg(long, default_value_t = defaults::PAIRS)]
    pairs: usize,
    /// Different-identity pairs of folds 2-10 for the 1% FAR thresholds [default: 900, --fast 300]
    #[arg(long)]
    calib_pairs: Option<usize>,
    /// M: A-VAE candidates per face [default: 64, --fast 16]
    #[arg(long)]
    samples: Option<usize>,
    /// KL clip tau [default: the bundle's]
    #[arg(long)]
    tau: Option<f32>,
    /// Latents per decoder call
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// K: purifier draws per white-box EOT gradient [default: 4, --fast 2]
    #[arg(long)]
    eot: Option<usize>,
    /// Grey-box PGD steps [default: 20, --fast 10]
    #[arg(long)]
    pgd_steps: Option<usize>,
    /// Grey-box PGD step size in 1/255
    #[arg(long, default_value_t = 1.0)]
    pgd_step: f64,
    /// Grey-box PGD restarts
    #[arg(long, default_value_t = 1)]
    pgd_restarts: usize,
    /// White-box (BPDA) PGD steps [default: 10, --fast 5]
    #[arg(long)]
    whitebox_pgd_steps: Option<usize>,
    /// White-box PGD step size in 1/255
    #[arg(long, default_value_t = 2.0)]
    whitebox_pgd_step: f64,
    /// C&W optimisation steps [default: 50, --fast 20]
    #[arg(long)]
    cw_steps: Option<usize>,
    /// C&W L2 bound in [0, 1] pixel units over the whole crop
    #[arg(long, default_value_t = 2.0)]
    cw_bound: f64,
    /// C&W weight c of the verification loss
    #[arg(long, default_value_t = 10.0)]
    cw_c: f64,
    /// C&W Adam learning rate in [0, 1] pixel units
    #[arg(long, default_value_t = 0.01)]
    cw_lr: f64,
    /// C&W margin on the cosine similarity
    #[arg(long, default_value_t = 0.05)]
    cw_kappa: f64,
    /// On-manifold attack steps n (paper: 5)
    #[arg(long, default_value_t = 5)]
    manifold_steps: usize,
    /// On-manifold latent step epsilon (paper: 20)
    #[arg(long, default_value_t = 20.0)]
    manifold_eps: f64,
    /// Purifier backend on the CPU (auto, ort, tract)
    #[arg(long, default_value = "auto")]
    backend: String,
    /// CPU threads for libtorch [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Pairs per attack batch
    #[arg(long, default_value_t = 20)]
    chunk: usize,
    /// Rows of each image grid
    #[arg(long, default_value_t = 8)]
    grid_rows: usize,
    /// Seed of every random choice
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Quick settings (fewer steps, samples and calibration pairs) for smoke runs
    #[arg(long)]
    fast: bool,
}

impl EvalArgs {
    /// Resolves defaults (the bundle's tau, `--fast`) into [`EvalOptions`].
    pub fn into_options(self) -> Result<EvalOptions> {
        let pick =
            |v: Option<usize>, d: (usize, usize)| v.unwrap_or(if self.fast { d.1 } else { d.0 });
        let bundle = Bundle::load(&self.bundle)
            .with_context(|| format!("cannot load the bundle '{}'", self.bundle.display()))?;
        let pairs_file = match self.pairs_file.clone() {
            Some(p) => p,
            None => crate::data::default_dataset_dir()
                .map(|d| d.join("pairs.txt"))
                .context("no --pairs-file given and ../shared/datasets/lfw/pairs.txt not found")?,
        };
        ensure!(self.chunk > 0, "--chunk must be at least 1");
        Ok(EvalOptions {
            bundle: self.bundle.clone(),
            report: self.report.clone(),
            data: self.data.clone(),
            data_name: self.data_name.clone(),
            pairs_file,
            recognizer: self
                .recognizer
                .clone()
                .unwrap_or_else(crate::recognizer::default_model_path),
            alignment: self.alignment,
            pairs: self.pairs,
            calib_pairs: pick(self.calib_pairs, defaults::CALIB_PAIRS),
            purify: PurifyParams {
                samples: pick(self.samples, defaults::SAMPLES),
                batch: self.batch,
                tau: self.tau.unwrap_or(bundle.manifest.tau),
            },
            backend: self
                .backend
                .parse()
                .with_context(|| format!("--backend '{}'", self.backend))?,
            eot: pick(self.eot, defaults::EOT),
            pgd: PgdParams {
                eps: 8.0,
                step: self.pgd_step,
                steps: pick(self.pgd_steps, defaults::PGD_STEPS),
                random_start: true,
                restarts: self.pgd_restarts,
            },
            whitebox_pgd: PgdParams {
                eps: 8.0,
                step: self.whitebox_pgd_step,
                steps: pick(self.whitebox_pgd_steps, defaults::WHITEBOX_PGD_STEPS),
                random_start: true,
                restarts: 1,
            },
            cw: CwParams {
                bound: self.cw_bound,
                c: self.cw_c,
                lr: self.cw_lr,
                steps: pick(self.cw_steps, defaults::CW_STEPS),
                kappa: self.cw_kappa,
            },
            manifold_steps: self.manifold_steps,
            manifold_eps: self.manifold_eps,
            chunk: self.chunk,
            grid_rows: self.grid_rows,
            seed: self.seed,
        })
    }
}

/// `trainer eval`: runs the evaluation, writes the report and prints the wall time and settings.
pub fn main(args: EvalArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
    }
    let opts = args.into_options()?;
    let summary = run(&opts)?;
    let avae = summary
        .tables
        .first()
        .and_then(|t| t.rows.iter().find(|r| r.key == "avae"))
        .and_then(|r| r.cells.get("clean"));
    println!(
        "wrote {} in {:.0} s (M = {}, tau = {}, K = {}); A-VAE clean accuracy {}",
        opts.report.display(),
        summary.wall_seconds,
        opts.purify.samples,
        opts.purify.tau,
        opts.eot,
        avae.map_or("-".to_owned(), |c| format!("{:.3}", c.average))
    );
    Ok(())
}

/// Accuracy of one defense under one condition.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Same-identity pairs verified correctly (accepted).
    pub same: f64,
    /// Different-identity pairs verified correctly (rejected).
    pub different: f64,
    /// All pairs verified correctly.
    pub average: f64,
    /// Cosine similarity of every pair, in pair order.
    pub scores: Vec<f32>,
}

/// One table row: a defense (or a defense under one white-box variant) across conditions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Identifier (`none`, `avae`, `avae-eot`, ...).
    pub key: String,
    /// Label shown in the report.
    pub label: String,
    /// The defense's threshold (1% FAR on calibration pairs).
    pub threshold: f64,
    /// Results by condition key.
    pub cells: BTreeMap<String, Cell>,
}

/// A table of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Identifier (`grey`, `white`, `manifold`).
    pub key: String,
    /// Caption.
    pub title: String,
    /// Condition keys and their column labels, in order.
    pub columns: Vec<(String, String)>,
    /// Rows, in order.
    pub rows: Vec<Row>,
}

/// Faces shown in the image grids of one attack.
pub struct Grid {
    /// Identifier of the attack (file name).
    pub key: String,
    /// Caption.
    pub title: String,
    /// Columns (gallery, clean probe, adversarial, purified), each `[R, 3, S, S]`.
    pub columns: Vec<Tensor>,
    /// Column labels.
    pub labels: Vec<String>,
}

/// What the evaluation measured and how.
#[derive(Debug, Serialize)]
pub struct EvalSummary {
    /// The options used.
    pub options: EvalOptions,
    /// The purifier's backend, bundle provenance and decoder FLOPs.
    pub purifier: BTreeMap<String, serde_json::Value>,
    /// The recognizer: file, op counts, alignment.
    pub recognizer: BTreeMap<String, serde_json::Value>,
    /// Side S of the evaluated crops.
    pub image_size: usize,
    /// Pair kinds in evaluation order (`true` = same identity).
    pub same: Vec<bool>,
    /// Calibration impostor pairs actually used.
    pub calibration_pairs: usize,
    /// Table 1 (grey-box), table 2 (white-box) and table 3 (on-manifold).
    pub tables: Vec<Table>,
    /// Mean L2 norm (in [0, 1] pixel units) of each grey-box perturbation.
    pub perturbation_l2: BTreeMap<String, f64>,
    /// Seconds spent in each stage.
    pub seconds: BTreeMap<String, f64>,
    /// Total wall time in seconds.
    pub wall_seconds: f64,
}

/// A 64-bit mix of a seed and a few integers (splitmix64 steps), for per-face seeds that do not
/// depend on batching.
fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut x = seed;
    for &p in parts {
        x ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// Different-identity pairs of folds 2 to 10 of `pairs.txt`, as `(name, number)` references.
fn impostor_pairs_after_fold1(path: &Path) -> Result<Vec<Vec<[(String, usize); 2]>>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<usize> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let [folds, per_kind] = header[..] else {
        bail!(
            "'{}' line 1 is not '<folds> <pairs per kind>'",
            path.display()
        );
    };
    let lines: Vec<&str> = lines.collect();
    ensure!(
        lines.len() >= folds * 2 * per_kind,
        "'{}' has {} pair lines, expected {}",
        path.display(),
        lines.len(),
        folds * 2 * per_kind
    );
    let mut out = Vec::new();
    for fold in 1..folds {
        let start = fold * 2 * per_kind + per_kind;
        let mut pairs = Vec::with_capacity(per_kind);
        for (k, line) in lines[start..start + per_kind].iter().enumerate() {
            let t: Vec<&str> = line.split_whitespace().collect();
            let [a, na, b, nb] = t[..] else {
                bail!(
                    "'{}' line {}: expected 'name1 n1 name2 n2'",
                    path.display(),
                    start + k + 2
                );
            };
            let num = |s: &str| {
                s.parse::<usize>().with_context(|| {
                    format!(
                        "'{}' line {}: bad image number '{s}'",
                        path.display(),
                        start + k + 2
                    )
                })
            };
            pairs.push([(a.to_owned(), num(na)?), (b.to_owned(), num(nb)?)]);
        }
        out.push(pairs);
    }
    Ok(out)
}

/// `count` indices spread evenly over `0..len`.
fn spread(len: usize, count: usize) -> Vec<usize> {
    let count = count.min(len);
    (0..count).map(|k| k * len / count).collect()
}

/// The evaluation pairs: `(gallery index, probe index, same)`.
fn test_pairs(set: &FaceSet, count: usize) -> Result<Vec<(i64, i64, bool)>> {
    let all = &set.index.pairs;
    ensure!(
        !all.is_empty(),
        "the crop cache has no fold-1 pairs (prepare it from an LFW folder with pairs.txt)"
    );
    let same: Vec<_> = all.iter().filter(|p| p.same).collect();
    let diff: Vec<_> = all.iter().filter(|p| !p.same).collect();
    let n_same = count.div_ceil(2).min(same.len());
    let n_diff = (count - count.div_ceil(2)).min(diff.len());
    let mut out: Vec<(i64, i64, bool)> = spread(same.len(), n_same)
        .into_iter()
        .map(|k| (same[k].a as i64, same[k].b as i64, true))
        .collect();
    out.extend(
        spread(diff.len(), n_diff)
            .into_iter()
            .map(|k| (diff[k].a as i64, diff[k].b as i64, false)),
    );
    Ok(out)
}

/// Calibration impostor pairs `(a, b)` as cache indices, spread over folds 2 to 10.
fn calibration_pairs(set: &FaceSet, pairs_file: &Path, count: usize) -> Result<Vec<(i64, i64)>> {
    let by_file: BTreeMap<&str, i64> = set
        .index
        .images
        .iter()
        .enumerate()
        .map(|(k, e)| (e.file.as_str(), k as i64))
        .collect();
    let lookup = |(name, n): &(String, usize)| {
        by_file
            .get(format!("{name}/{name}_{n:04}.jpg").as_str())
            .copied()
    };
    let folds = impostor_pairs_after_fold1(pairs_file)?;
    let per_fold = count.div_ceil(folds.len().max(1));
    let mut out = Vec::new();
    for fold in &folds {
        for k in spread(fold.len(), per_fold) {
            if let (Some(a), Some(b)) = (lookup(&fold[k][0]), lookup(&fold[k][1])) {
                out.push((a, b));
            }
        }
    }
    out.truncate(count);
    ensure!(
        !out.is_empty(),
        "no calibration pair of folds 2-10 of '{}' is in the crop cache",
        pairs_file.display()
    );
    Ok(out)
}

/// Threshold at [`TARGET_FAR`]: accepting scores strictly above it accepts at most 1% of
/// `impostors`.
pub fn threshold_at_far(impostors: &[f32], far: f64) -> f64 {
    let mut sorted: Vec<f32> = impostors.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = (far * sorted.len() as f64).floor() as usize;
    sorted.get(k).map_or(1.0, |&v| f64::from(v))
}

/// Accuracy of `scores` against `same` at `threshold`.
pub fn verify(scores: &[f32], same: &[bool], threshold: f64) -> Cell {
    let (mut ok_same, mut n_same, mut ok_diff, mut n_diff) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &is_same) in scores.iter().zip(same) {
        let accepted = f64::from(s) > threshold;
        if is_same {
            n_same += 1;
            ok_same += usize::from(accepted);
        } else {
            n_diff += 1;
            ok_diff += usize::from(!accepted);
        }
    }
    let frac = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    Cell {
        same: frac(ok_same, n_same),
        different: frac(ok_diff, n_diff),
        average: frac(ok_same + ok_diff, n_same + n_diff),
        scores: scores.to_vec(),
    }
}

/// Seed streams of the evaluation (mixed with the pair index).
mod stream {
    pub const GALLERY: u64 = 1;
    pub const PROBE: u64 = 2;
    pub const CALIB: u64 = 3;
    pub const ATTACK: u64 = 4;
}

/// Defended unit embeddings of `faces`, a chunk at a time; `seeds[i]` seeds face i.
fn defended_embeddings(
    recognizer: &Recognizer,
    defense: &mut Defense,
    faces: &Tensor,
    seeds: &[u64],
    chunk: usize,
) -> Result<Tensor> {
    let n = faces.size()[0] as usize;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let defended = defense.apply(
            &faces.narrow(0, start as i64, len as i64),
            &seeds[start..start + len],
        )?;
        parts.push(recognizer.embed_all(&defended, len as i64)?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Per-pair cosine similarities as a vector.
fn scores_of(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&cosine(a, b).to_kind(Kind::Float))?)
}

/// Grey-box adversarial probes of every condition, `[N, 3, S, S]` each, by condition key.
type Probes = BTreeMap<&'static str, Tensor>;

/// The grey-box (and on-manifold) conditions: key, column label, table.
const GREY_COLUMNS: [(&str, &str); 5] = [
    ("clean", "clean"),
    ("fgsm4", "FGSM eps=4"),
    ("fgsm8", "FGSM eps=8"),
    ("pgd8", "PGD eps=8"),
    ("cw", "C&W L2"),
];

/// The on-manifold table's columns.
const MANIFOLD_COLUMNS: [(&str, &str); 2] = [
    ("manifold", "On-manifold attack"),
    ("recon", "Dec(E(x)), no attack"),
];

/// The white-box table's columns.
const WHITE_COLUMNS: [(&str, &str); 4] = [
    ("clean", "clean"),
    ("fgsm4", "FGSM eps=4"),
    ("fgsm8", "FGSM eps=8"),
    ("pgd8", "PGD eps=8"),
];

/// Runs the whole evaluation and writes the report.
pub fn run(opts: &EvalOptions) -> Result<EvalSummary> {
    let start = Instant::now();
    let mut seconds = BTreeMap::new();
    let bundle = Bundle::load(&opts.bundle)
        .with_context(|| format!("cannot load the bundle '{}'", opts.bundle.display()))?;
    let size = bundle.manifest.image_size;
    let set = FaceSet::load(&opts.data, &opts.data_name, size)?;
    let recognizer = Recognizer::load(
        &opts.recognizer,
        opts.alignment,
        &set.index.crop,
        size as i64,
    )?;
    let (_vs, generator) = attack::generator_from_bundle(&bundle)?;
    let avae = AVaeDefense::load(&opts.bundle, opts.backend, opts.purify)?;
    let mut purifier_info = BTreeMap::new();
    purifier_info.insert("backend".into(), avae.purifier().backend_name().into());
    purifier_info.insert("bundle".into(), opts.bundle.display().to_string().into());
    purifier_info.insert("samples".into(), opts.purify.samples.into());
    purifier_info.insert("batch".into(), opts.purify.batch.into());
    purifier_info.insert("tau".into(), f64::from(opts.purify.tau).into());
    purifier_info.insert("decoder_flops".into(), bundle.manifest.decoder_flops.into());
    purifier_info.insert(
        "provenance".into(),
        serde_json::to_value(&bundle.manifest.provenance)?,
    );
    let mut defenses: Vec<Defense> = vec![Defense::None, Defense::AVae(Box::new(avae))];
    defenses.extend(Defense::baselines());

    let pairs = test_pairs(&set, opts.pairs)?;
    let same: Vec<bool> = pairs.iter().map(|p| p.2).collect();
    let n = pairs.len();
    let gallery_idx: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    let probe_idx: Vec<i64> = pairs.iter().map(|p| p.1).collect();
    let gallery = to_unit_range(&set.select(&gallery_idx));
    let probe = to_unit_range(&set.select(&probe_idx));
    let calib = calibration_pairs(&set, &opts.pairs_file, opts.calib_pairs)?;
    println!(
        "evaluating {} fold-1 pairs ({} same, {} different), thresholds from {} impostor pairs of \
         folds 2-10; A-VAE M = {}, tau = {}, EOT K = {}; purifier {}",
        n,
        same.iter().filter(|&&s| s).count(),
        same.iter().filter(|&&s| !s).count(),
        calib.len(),
        opts.purify.samples,
        opts.purify.tau,
        opts.eot,
        match &defenses[1] {
            Defense::AVae(a) => a.purifier().backend_name(),
            _ => String::new(),
        }
    );

    // Thresholds: 1% FAR on clean impostor pairs of folds 2-10, each defense in the loop.
    let t = Instant::now();
    let calib_a: Vec<i64> = calib.iter().map(|p| p.0).collect();
    let calib_b: Vec<i64> = calib.iter().map(|p| p.1).collect();
    let (ca, cb) = (
        to_unit_range(&set.select(&calib_a)),
        to_unit_range(&set.select(&calib_b)),
    );
    let calib_seeds = |side: u64| -> Vec<u64> {
        (0..calib.len() as u64)
            .map(|k| mix(opts.seed, &[stream::CALIB, side, k]))
            .collect()
    };
    let bar = progress_bar((defenses.len() * calib.len()) as u64, "thresholds");
    let mut thresholds = Vec::with_capacity(defenses.len());
    for d in &mut defenses {
        let ea = defended_embeddings(&recognizer, d, &ca, &calib_seeds(0), opts.chunk)?;
        let eb = defended_embeddings(&recognizer, d, &cb, &calib_seeds(1), opts.chunk)?;
        thresholds.push(threshold_at_far(&scores_of(&ea, &eb)?, TARGET_FAR));
        bar.inc(calib.len() as u64);
    }
    bar.finish();
    seconds.insert("thresholds".to_owned(), t.elapsed().as_secs_f64());

    // Grey-box attacks on the undefended recognizer, and the on-manifold attack.
    let t = Instant::now();
    let clean_gallery = recognizer.embed_all(&gallery, opts.chunk as i64)?;
    let mut probes: Probes = BTreeMap::new();
    let keys = ["fgsm4", "fgsm8", "pgd8", "cw", "manifold", "recon"];
    let mut parts: BTreeMap<&str, Vec<Tensor>> = keys.iter().map(|k| (*k, Vec::new())).collect();
    let mut rng = StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK]));
    let bar = progress_bar(n as u64, "grey-box attacks");
    for first in (0..n).step_by(opts.chunk) {
        let len = opts.chunk.min(n - first);
        let x = probe.narrow(0, first as i64, len as i64);
        let target = Target::new(
            &clean_gallery.narrow(0, first as i64, len as i64),
            &same[first..first + len],
        );
        let mut grey = GreyBox {
            recognizer: &recognizer,
            target: &target,
        };
        let (_, grad) = grey.loss_and_grad(&x)?;
        let push = |parts: &mut BTreeMap<&str, Vec<Tensor>>, k: &str, v: Tensor| {
            if let Some(p) = parts.get_mut(k) {
                p.push(quantize(&v));
            }
        };
        push(&mut parts, "fgsm4", fgsm(&x, &grad, attack::unit_eps(4.0)));
        push(&mut parts, "fgsm8", fgsm(&x, &grad, attack::unit_eps(8.0)));
        push(&mut parts, "pgd8", pgd(&x, &opts.pgd, &mut grey, &mut rng)?);
        push(
            &mut parts,
            "cw",
            carlini_wagner(&x, &target.sign, thresholds[0], &opts.cw, &mut grey)?,
        );
        let (adv, recon) = attack::on_manifold(
            &generator,
            &recognizer,
            &target,
            &x,
            opts.manifold_steps,
            opts.manifold_eps,
        )?;
        push(&mut parts, "manifold", adv);
        push(&mut parts, "recon", recon);
        bar.inc(len as u64);
    }
    bar.finish();
    for (k, v) in parts {
        probes.insert(k, Tensor::cat(&v, 0));
    }
    probes.insert("clean", probe.shallow_clone());
    seconds.insert("grey-box attacks".to_owned(), t.elapsed().as_secs_f64());
    let mut perturbation_l2 = BTreeMap::new();
    for k in ["fgsm4", "fgsm8", "pgd8", "cw"] {
        let l2 = attack::l2_norm(&probes[k], &probe)
            .mean(Kind::Float)
            .double_value(&[]);
        perturbation_l2.insert(k.to_owned(), l2);
    }

    // Every defense on every grey-box and on-manifold condition.
    let t = Instant::now();
    let pair_seeds = |stream: u64, cond: u64| -> Vec<u64> {
        (0..n as u64)
            .map(|k| mix(opts.seed, &[stream, cond, k]))
            .collect()
    };
    let grid_rows: Vec<i64> = spread(n, opts.grid_rows)
        .into_iter()
        .map(|k| k as i64)
        .collect();
    let grid_index = Tensor::from_slice(&grid_rows);
    let pick =
        |seeds: &[u64]| -> Vec<u64> { grid_rows.iter().map(|&k| seeds[k as usize]).collect() };
    let mut defended_gallery = Vec::with_capacity(defenses.len());
    let mut grey_rows = Vec::new();
    let mut manifold_rows = Vec::new();
    let mut purified: BTreeMap<&str, Tensor> = BTreeMap::new();
    let conditions: Vec<&str> = GREY_COLUMNS
        .iter()
        .chain(MANIFOLD_COLUMNS.iter())
        .map(|c| c.0)
        .collect();
    let bar = progress_bar(
        (defenses.len() * (conditions.len() + 1) * n) as u64,
        "defenses",
    );
    for (d, defense) in defenses.iter_mut().enumerate() {
        let g = defended_embeddings(
            &recognizer,
            defense,
            &gallery,
            &pair_seeds(stream::GALLERY, 0),
            opts.chunk,
        )?;
        bar.inc(n as u64);
        let mut cells = BTreeMap::new();
        for (c, cond) in conditions.iter().enumerate() {
            let seeds = pair_seeds(stream::PROBE, c as u64);
            let faces = &probes[cond];
            if defense.is_random() {
                let shown = faces.index_select(0, &grid_index);
                purified.insert(cond, defense.apply(&shown, &pick(&seeds))?);
            }
            let e = defended_embeddings(&recognizer, defense, faces, &seeds, opts.chunk)?;
            cells.insert(
                cond.to_string(),
                verify(&scores_of(&e, &g)?, &same, thresholds[d]),
            );
            bar.inc(n as u64);
        }
        let row = |cols: &[(&str, &str)]| Row {
            key: defense.key(),
            label: defense.label(),
            threshold: thresholds[d],
            cells: cols
                .iter()
                .filter_map(|(k, _)| Some((k.to_string(), cells.get(*k)?.clone())))
                .collect(),
        };
        grey_rows.push(row(&GREY_COLUMNS));
        manifold_rows.push(row(&MANIFOLD_COLUMNS));
        defended_gallery.push(g);
    }
    bar.finish();
    seconds.insert("defenses".to_owned(), t.elapsed().as_secs_f64());

    // White-box: BPDA against each defense (EOT over A-VAE's randomness).
    let t = Instant::now();
    let mut white_rows = Vec::new();
    let mut white_grid: Option<(Tensor, Tensor)> = None;
    for (d, defense) in defenses.iter_mut().enumerate() {
        if matches!(defense, Defense::None) {
            white_rows.push(Row {
                key: "none".into(),
                label: "No Defense (= grey-box)".into(),
                threshold: thresholds[d],
                cells: grey_rows[d]
                    .cells
                    .iter()
                    .filter(|(k, _)| WHITE_COLUMNS.iter().any(|c| c.0 == k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
            continue;
        }
        let variants: Vec<(usize, String, String)> = if defense.is_random() {
            vec![
                (
                    1,
                    format!("{}-bpda", defense.key()),
                    format!("{}, BPDA (K = 1)", defense.label()),
                ),
                (
                    opts.eot.max(1),
                    format!("{}-eot", defense.key()),
                    format!("{}, BPDA + EOT (K = {})", defense.label(), opts.eot.max(1)),
                ),
            ]
        } else {
            vec![(
                1,
                format!("{}-bpda", defense.key()),
                format!("{}, BPDA", defense.label()),
            )]
        };
        let eot = variants.iter().map(|v| v.0).max().unwrap_or(1);
        let mut adv: Vec<BTreeMap<&str, Vec<Tensor>>> =
            (0..variants.len()).map(|_| BTreeMap::new()).collect();
        let bar = progress_bar(n as u64, &format!("white-box {}", defense.key()));
        let mut attack_rng = StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK, d as u64]));
        for first in (0..n).step_by(opts.chunk) {
            let len = opts.chunk.min(n - first);
            let x = probe.narrow(0, first as i64, len as i64);
            let gallery_seeds: Vec<u64> = (0..len as u64)
                .map(|k| mix(opts.seed, &[stream::ATTACK, d as u64, first as u64 + k]))
                .collect();
            // The white-box attacker aims at the gallery as the defended system sees it.
            let g = defense.apply(&gallery.narrow(0, first as i64, len as i64), &gallery_seeds)?;
            let target = Target::new(
                &recognizer.embed_all(&g, len as i64)?,
                &same[first..first + len],
            );
            let draws = {
                let mut bpda = Bpda {
                    recognizer: &recognizer,
                    target: &target,
                    defense: &mut *defense,
                    samples: eot,
                    rng: StdRng::seed_from_u64(mix(
                        opts.seed,
                        &[stream::ATTACK, d as u64, first as u64, 1],
                    )),
                };
                bpda.draws(&x)?
            };
            for (v, (k, _, _)) in variants.iter().enumerate() {
                let grad = draws[..*k]
                    .iter()
                    .fold(x.zeros_like(), |acc, (_, g)| acc + g);
                let entry = &mut adv[v];
                entry.entry("fgsm4").or_default().push(quantize(&fgsm(
                    &x,
                    &grad,
                    attack::unit_eps(4.0),
                )));
                entry.entry("fgsm8").or_default().push(quantize(&fgsm(
                    &x,
                    &grad,
                    attack::unit_eps(8.0),
                )));
                let mut bpda = Bpda {
                    recognizer: &recognizer,
                    target: &target,
                    defense: &mut *defense,
                    samples: *k,
                    rng: StdRng::seed_from_u64(mix(
                        opts.seed,
                        &[stream::ATTACK, d as u64, first as u64, 2 + v as u64],
                    )),
                };
                let p = pgd(&x, &opts.whitebox_pgd, &mut bpda, &mut attack_rng)?;
                entry.entry("pgd8").or_default().push(quantize(&p));
            }
            bar.inc(len as u64);
        }
        bar.finish();
        for (v, (_, key, label)) in variants.iter().enumerate() {
            let mut cells = BTreeMap::new();
            cells.insert("clean".to_owned(), grey_rows[d].cells["clean"].clone());
            for (c, cond) in ["fgsm4", "fgsm8", "pgd8"].iter().enumerate() {
                let faces = Tensor::cat(&adv[v][cond], 0);
                let seeds = pair_seeds(stream::PROBE, 100 + (v * 10 + c) as u64);
                let e = defended_embeddings(&recognizer, defense, &faces, &seeds, opts.chunk)?;
                cells.insert(
                    cond.to_string(),
                    verify(&scores_of(&e, &defended_gallery[d])?, &same, thresholds[d]),
                );
                if defense.is_random() && *cond == "pgd8" && v + 1 == variants.len() {
                    let shown = faces.index_select(0, &grid_index);
                    let defended = defense.apply(&shown, &pick(&seeds))?;
                    white_grid = Some((shown, defended));
                }
            }
            white_rows.push(Row {
                key: key.clone(),
                label: label.clone(),
                threshold: thresholds[d],
                cells,
            });
        }
    }
    seconds.insert("white-box".to_owned(), t.elapsed().as_secs_f64());

    let columns = |cols: &[(&str, &str)]| -> Vec<(String, String)> {
        cols.iter()
            .map(|(k, l)| (k.to_string(), l.to_string()))
            .collect()
    };
    let tables = vec![
        Table {
            key: "grey".into(),
            title: "Table 1: grey-box attacks (gradient of the undefended recognizer)".into(),
            columns: columns(&GREY_COLUMNS),
            rows: grey_rows,
        },
        Table {
            key: "white".into(),
            title: "Table 2: white-box adaptive attacks (BPDA, with and without EOT)".into(),
            columns: columns(&WHITE_COLUMNS),
            rows: white_rows,
        },
        Table {
            key: "manifold".into(),
            title: "Table 3: on-manifold attack (paper eq. 8)".into(),
            columns: columns(&MANIFOLD_COLUMNS),
            rows: manifold_rows,
        },
    ];

    // Image grids: gallery | clean probe | adversarial | A-VAE purified.
    let shown_gallery = gallery.index_select(0, &grid_index);
    let shown_probe = probe.index_select(0, &grid_index);
    let mut grids = Vec::new();
    for (key, title) in [
        ("fgsm8", "grey-box FGSM eps=8"),
        ("pgd8", "grey-box PGD eps=8"),
        ("cw", "grey-box C&W L2"),
        ("manifold", "on-manifold attack"),
    ] {
        if let Some(p) = purified.get(key) {
            grids.push(Grid {
                key: key.to_owned(),
                title: title.to_owned(),
                columns: vec![
                    shown_gallery.shallow_clone(),
                    shown_probe.shallow_clone(),
                    probes[key].index_select(0, &grid_index),
                    p.shallow_clone(),
                ],
                labels: vec![
                    "gallery".into(),
                    "probe".into(),
                    "adversarial".into(),
                    "A-VAE".into(),
                ],
            });
        }
    }
    if let Some((adv, defended)) = white_grid {
        grids.push(Grid {
            key: "whitebox-pgd8".into(),
            title: format!("white-box PGD eps=8, BPDA + EOT (K = {})", opts.eot),
            columns: vec![shown_gallery, shown_probe, adv, defended],
            labels: vec![
                "gallery".into(),
                "probe".into(),
                "adversarial".into(),
                "A-VAE".into(),
            ],
        });
    }

    let mut recognizer_info = BTreeMap::new();
    recognizer_info.insert("file".into(), opts.recognizer.display().to_string().into());
    recognizer_info.insert("alignment".into(), opts.alignment.label().into());
    recognizer_info.insert(
        "ops".into(),
        serde_json::to_value(recognizer.graph().op_counts())?,
    );
    recognizer_info.insert("weights".into(), recognizer.graph().num_weights().into());
    let summary = EvalSummary {
        options: opts.clone(),
        purifier: purifier_info,
        recognizer: recognizer_info,
        image_size: size,
        same,
        calibration_pairs: calib.len(),
        tables,
        perturbation_l2,
        seconds,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    report::write(&opts.report, &summary, &grids)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_accepts_at_most_one_percent() {
        let impostors: Vec<f32> = (0..200).map(|k| k as f32 / 200.0).collect();
        let t = threshold_at_far(&impostors, 0.01);
        let accepted = impostors.iter().filter(|&&s| f64::from(s) > t).count();
        assert_eq!(accepted, 2);
        // Fewer than 100 impostors: nothing may be accepted.
        let t = threshold_at_far(&impostors[..50], 0.01);
        assert!(impostors[..50].iter().all(|&s| f64::from(s) <= t));
    }

    #[test]
    fn verify_counts_both_kinds() {
        let cell = verify(&[0.9, 0.1, 0.8, 0.2], &[true, true, false, false], 0.5);
        assert_eq!((cell.same, cell.different, cell.average), (0.5, 0.5, 0.5));
        let cell = verify(&[0.9, 0.6, 0.1, 0.2], &[true, true, false, false], 0.5);
        assert_eq!(cell.average, 1.0);
    }

    #[test]
    fn spread_is_even_and_bounded() {
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
    }

    #[test]
    fn seeds_differ_by_stream_and_pair() {
        assert_ne!(mix(0, &[1, 0]), mix(0, &[1, 1]));
        assert_ne!(mix(0, &[1, 0]), mix(0, &[2, 0]));
        assert_eq!(mix(5, &[3, 4]), mix(5, &[3, 4]));
    }
}

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
    self, Bpda, BreakMonitor, CwParams, GreyBox, LatentStep, LossGradient, PgdParams, Target,
    carlini_wagner, fgsm, pgd,
};
use crate::data::{FaceSet, progress_bar, to_unit_range, write_atomic};
use crate::defense::{AVaeDefense, Defense, quantize};
use crate::lab;
use crate::model::AVae;
use crate::recognizer::{Alignment, Landmarks, Recognizer, cosine, detect_landmarks};
use crate::report;

/// False-accept rate at which every threshold is set.
pub const TARGET_FAR: f64 = 0.01;

/// Everything `trainer eval` needs.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOptions {
    /// The command line that asked for this evaluation (for the report).
    pub command: String,
    /// The A-VAE bundle to evaluate (what ships).
    pub bundle: PathBuf,
    /// With `--lab`: every bundle of the side-by-side table (else empty).
    pub lab_bundles: Vec<PathBuf>,
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
    /// `--tau` as given (the lab uses each bundle's own tau without it).
    pub tau_given: Option<f32>,
    /// K: draws of the purifier's randomness per white-box gradient (EOT).
    pub eot: usize,
    /// The element's `feather` in the image threat model.
    pub feather: f32,
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
    /// Stronger on-manifold variant: latent L2 length of each (normalised) step.
    pub manifold_unit_step: f64,
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
    pub const SAMPLES: (usize, usize) = (32, 16);
    pub const EOT: (usize, usize) = (4, 2);
    pub const PGD_STEPS: (usize, usize) = (20, 10);
    pub const WHITEBOX_PGD_STEPS: (usize, usize) = (10, 5);
    pub const CW_STEPS: (usize, usize) = (30, 20);
}

/// Arguments of `trainer eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A-VAE bundle folder to evaluate (with --lab: repeat it, one table row per bundle)
    #[arg(long, default_value = "models/avae-cpu")]
    bundle: Vec<PathBuf>,
    /// The robustness lab: a quick side-by-side table of the given bundles (200 pairs; clean,
    /// FGSM 8, PGD 8, BPDA PGD 8, PSNR, ms/face) instead of the full report
    #[arg(long)]
    lab: bool,
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
    #[arg(long, value_enum, default_value_t = Alignment::Landmarks)]
    alignment: Alignment,
    /// Fold-1 pairs to evaluate (half same, half different; at most 600) [default: 600, --lab 200]
    #[arg(long)]
    pairs: Option<usize>,
    /// Different-identity pairs of folds 2-10 for the 1% FAR thresholds [default: 900, --fast 300]
    #[arg(long)]
    calib_pairs: Option<usize>,
    /// M: A-VAE candidates per face [default: 32, --fast 16]
    #[arg(long)]
    samples: Option<usize>,
    /// KL clip tau [default: the bundle's]
    #[arg(long)]
    tau: Option<f32>,
    /// Latents per decoder call
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// The element's feather (paste-back mask) in the image threat model
    #[arg(long, default_value_t = 0.15)]
    feather: f32,
    /// K: purifier draws per white-box EOT gradient [default: 4, --fast 2, --lab 1]
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
    /// C&W optimisation steps [default: 30, --fast 20]
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
    /// Latent L2 length of each step of the normalised on-manifold variant
    #[arg(long, default_value_t = 4.0)]
    manifold_unit_step: f64,
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
        let first = self
            .bundle
            .first()
            .cloned()
            .context("--bundle: at least one bundle folder is needed")?;
        ensure!(
            self.lab || self.bundle.len() == 1,
            "--bundle was given {} times: only --lab compares several bundles",
            self.bundle.len()
        );
        let bundle = Bundle::load(&first)
            .with_context(|| format!("cannot load the bundle '{}'", first.display()))?;
        let lab_pairs = if self.lab {
            lab::PAIRS
        } else {
            defaults::PAIRS
        };
        let pairs_file = match self.pairs_file.clone() {
            Some(p) => p,
            None => crate::data::default_dataset_dir()
                .map(|d| d.join("pairs.txt"))
                .context("no --pairs-file given and ../shared/datasets/lfw/pairs.txt not found")?,
        };
        ensure!(self.chunk > 0, "--chunk must be at least 1");
        let args: Vec<String> = std::env::args().skip(1).collect();
        Ok(EvalOptions {
            command: format!("trainer {}", args.join(" ")),
            bundle: first,
            lab_bundles: if self.lab {
                self.bundle.clone()
            } else {
                Vec::new()
            },
            report: self.report.clone(),
            data: self.data.clone(),
            data_name: self.data_name.clone(),
            pairs_file,
            recognizer: self
                .recognizer
                .clone()
                .unwrap_or_else(crate::recognizer::default_model_path),
            alignment: self.alignment,
            pairs: self.pairs.unwrap_or(lab_pairs),
            calib_pairs: pick(
                self.calib_pairs,
                if self.lab {
                    (lab::CALIB_PAIRS, lab::CALIB_PAIRS)
                } else {
                    defaults::CALIB_PAIRS
                },
            ),
            purify: PurifyParams {
                samples: self.samples.unwrap_or(if self.lab {
                    lab::SAMPLES
                } else if self.fast {
                    defaults::SAMPLES.1
                } else {
                    defaults::SAMPLES.0
                }),
                batch: self.batch,
                tau: self.tau.unwrap_or(bundle.manifest.tau),
            },
            backend: self
                .backend
                .parse()
                .with_context(|| format!("--backend '{}'", self.backend))?,
            tau_given: self.tau,
            eot: if self.lab {
                self.eot.unwrap_or(1)
            } else {
                pick(self.eot, defaults::EOT)
            },
            feather: self.feather,
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
            manifold_unit_step: self.manifold_unit_step,
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
    if !opts.lab_bundles.is_empty() {
        return lab::run(&opts);
    }
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
pub(crate) fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut x = seed;
    for &p in parts {
        x ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// An image of `pairs.txt`: person name and image number.
type ImageRef = (String, usize);

/// Different-identity pairs of folds 2 to 10 of `pairs.txt`, one list per fold.
fn impostor_pairs_after_fold1(path: &Path) -> Result<Vec<Vec<[ImageRef; 2]>>> {
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
pub(crate) fn test_pairs(set: &FaceSet, count: usize) -> Result<Vec<(i64, i64, bool)>> {
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
pub(crate) fn calibration_pairs(
    set: &FaceSet,
    pairs_file: &Path,
    count: usize,
) -> Result<Vec<(i64, i64)>> {
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

/// Moves the score of every pair broken by some attack iterate to the wrong side of any
/// threshold (cosines lie in [-1, 1]), so that [`verify`] counts it as broken.
pub(crate) fn mark_broken(scores: &mut [f32], same: &[bool], broken: &[bool]) {
    for ((s, &same), &b) in scores.iter_mut().zip(same).zip(broken) {
        if b {
            *s = if same { -2.0 } else { 2.0 };
        }
    }
}

/// Seed streams of the evaluation (mixed with the pair index).
pub(crate) mod stream {
    pub const GALLERY: u64 = 1;
    pub const PROBE: u64 = 2;
    pub const CALIB: u64 = 3;
    pub const ATTACK: u64 = 4;
}

/// Defended unit embeddings of `faces`, a chunk at a time; `seeds[i]` seeds face i.
pub(crate) fn defended_embeddings(
    recognizer: &Recognizer,
    defense: &mut Defense,
    faces: &Tensor,
    align: &Tensor,
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
        let warp = align.narrow(0, start as i64, len as i64);
        parts.push(recognizer.embed_all(&defended, &warp, len as i64)?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Per-pair cosine similarities as a vector.
pub(crate) fn scores_of(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&cosine(a, b).to_kind(Kind::Float))?)
}

/// Probes of every condition (clean and adversarial), `[N, 3, S, S]` each, by condition key.
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
const MANIFOLD_COLUMNS: [(&str, &str); 3] = [
    ("manifold", "On-manifold attack"),
    ("manifold_unit", "On-manifold, unit steps"),
    ("recon", "Dec(E(x)), no attack"),
];

/// The white-box table's columns.
const WHITE_COLUMNS: [(&str, &str); 4] = [
    ("clean", "clean"),
    ("fgsm4", "FGSM eps=4"),
    ("fgsm8", "FGSM eps=8"),
    ("pgd8", "PGD eps=8"),
];

/// Landmarks (in image pixels) of the cached images `indices`, for [`Alignment::Landmarks`]:
/// read from `<data>/<name>-landmarks.json`, detected (and added to that file) where missing.
/// Every entry is `None` for the other alignments.
fn image_landmarks(
    set: &FaceSet,
    opts: &EvalOptions,
    indices: &[i64],
) -> Result<Vec<Option<Landmarks>>> {
    if opts.alignment != Alignment::Landmarks {
        return Ok(vec![None; indices.len()]);
    }
    let path = opts.data.join(format!("{}-landmarks.json", opts.data_name));
    let mut known: BTreeMap<String, Option<Landmarks>> = match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("'{}' is not a landmark cache (delete it)", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let file_of = |k: i64| -> Result<&str> {
        usize::try_from(k)
            .ok()
            .and_then(|k| set.index.images.get(k))
            .map(|e| e.file.as_str())
            .with_context(|| format!("image index {k} is not in the crop cache"))
    };
    let mut missing: Vec<String> = Vec::new();
    for &k in indices {
        let file = file_of(k)?;
        if !known.contains_key(file) && !missing.iter().any(|m| m == file) {
            missing.push(file.to_owned());
        }
    }
    if !missing.is_empty() {
        let root = Path::new(&set.index.source);
        let paths: Vec<PathBuf> = missing.iter().map(|f| root.join(f)).collect();
        let found = detect_landmarks(&paths)?;
        let lost = found.iter().filter(|l| l.is_none()).count();
        if lost > 0 {
            println!(
                "no face found in {lost} of {} images: they use the mean landmarks",
                paths.len()
            );
        }
        known.extend(missing.into_iter().zip(found));
        write_atomic(&path, serde_json::to_string(&known)?.as_bytes())?;
    }
    indices
        .iter()
        .map(|&k| Ok(known.get(file_of(k)?).copied().flatten()))
        .collect()
}

/// The faces and settings every stage of one evaluation shares.
struct Evaluation<'a> {
    opts: &'a EvalOptions,
    recognizer: Recognizer,
    /// Pair kinds, in pair order.
    same: Vec<bool>,
    /// Clean gallery and probe crops `[N, 3, S, S]`, and their recognizer warps `[N, 2, 3]`.
    gallery: Tensor,
    probe: Tensor,
    align_gallery: Tensor,
    align_probe: Tensor,
    /// Pairs shown in the image grids.
    grid_rows: Vec<i64>,
}

/// Grid rows of one attack: the adversarial probes and what the defense made of them.
type GridPair = (Tensor, Tensor);

/// What evaluating every defense on the grey-box and on-manifold probes produced.
struct DefenseResults {
    grey_rows: Vec<Row>,
    manifold_rows: Vec<Row>,
    /// Each defense's embeddings of the gallery as the evaluation saw it.
    defended_gallery: Vec<Tensor>,
    /// A-VAE outputs of the grid rows, by condition.
    purified: BTreeMap<&'static str, Tensor>,
}

impl Evaluation<'_> {
    fn n(&self) -> usize {
        self.same.len()
    }

    /// Seeds of the evaluation's defense draws for every pair, for one stream and condition.
    fn pair_seeds(&self, stream: u64, cond: u64) -> Vec<u64> {
        (0..self.n() as u64)
            .map(|k| mix(self.opts.seed, &[stream, cond, k]))
            .collect()
    }

    /// The entries of `seeds` of the grid rows.
    fn grid_seeds(&self, seeds: &[u64]) -> Vec<u64> {
        self.grid_rows.iter().map(|&k| seeds[k as usize]).collect()
    }

    fn grid_index(&self) -> Tensor {
        Tensor::from_slice(&self.grid_rows)
    }

    /// Pairs `first..first + len` of a per-pair tensor.
    fn rows(t: &Tensor, first: usize, len: usize) -> Tensor {
        t.narrow(0, first as i64, len as i64)
    }

    /// Each defense's threshold at 1% FAR on the calibration impostor pairs `(a, b)` (crops and
    /// warps), the defense applied to both images.
    fn thresholds(
        &self,
        defenses: &mut [Defense],
        a: (&Tensor, &Tensor),
        b: (&Tensor, &Tensor),
    ) -> Result<Vec<f64>> {
        let count = a.0.size()[0] as usize;
        let seeds = |side: u64| -> Vec<u64> {
            (0..count as u64)
                .map(|k| mix(self.opts.seed, &[stream::CALIB, side, k]))
                .collect()
        };
        let bar = progress_bar((defenses.len() * count) as u64, "thresholds");
        let mut thresholds = Vec::with_capacity(defenses.len());
        for d in defenses.iter_mut() {
            let chunk = self.opts.chunk;
            let ea = defended_embeddings(&self.recognizer, d, a.0, a.1, &seeds(0), chunk)?;
            let eb = defended_embeddings(&self.recognizer, d, b.0, b.1, &seeds(1), chunk)?;
            thresholds.push(threshold_at_far(&scores_of(&ea, &eb)?, TARGET_FAR));
            bar.inc(count as u64);
        }
        bar.finish();
        Ok(thresholds)
    }

    /// The grey-box adversarial probes (gradient of the undefended recognizer, C&W aiming at the
    /// undefended `threshold`) and the on-manifold ones, all rounded to 8 bits, by condition.
    fn grey_box_attacks(&self, generator: &AVae, threshold: f64) -> Result<Probes> {
        let (n, opts) = (self.n(), self.opts);
        let clean_gallery =
            self.recognizer
                .embed_all(&self.gallery, &self.align_gallery, opts.chunk as i64)?;
        let mut parts: BTreeMap<&'static str, Vec<Tensor>> = BTreeMap::new();
        let mut rng = StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK]));
        let bar = progress_bar(n as u64, "grey-box attacks");
        for first in (0..n).step_by(opts.chunk) {
            let len = opts.chunk.min(n - first);
            let x = Self::rows(&self.probe, first, len);
            let target = Target::new(
                &Self::rows(&clean_gallery, first, len),
                &self.same[first..first + len],
                &Self::rows(&self.align_probe, first, len),
            );
            let mut grey = GreyBox {
                recognizer: &self.recognizer,
                target: &target,
            };
            let (_, grad) = grey.loss_and_grad(&x)?;
            let cw = carlini_wagner(&x, &target.sign, threshold, &opts.cw, &mut grey)?;
            let pgd8 = pgd(&x, &opts.pgd, &mut grey, &mut rng)?;
            let (latent_attacks, recon) = attack::on_manifold(
                generator,
                &self.recognizer,
                &target,
                &x,
                opts.manifold_steps,
                &[
                    LatentStep::Gradient(opts.manifold_eps),
                    LatentStep::Unit(opts.manifold_unit_step),
                ],
            )?;
            let [manifold, manifold_unit]: [Tensor; 2] = latent_attacks
                .try_into()
                .map_err(|_| anyhow::anyhow!("internal error: two on-manifold attacks expected"))?;
            for (key, adv) in [
                ("fgsm4", fgsm(&x, &grad, attack::unit_eps(4.0))),
                ("fgsm8", fgsm(&x, &grad, attack::unit_eps(8.0))),
                ("pgd8", pgd8),
                ("cw", cw),
                ("manifold", manifold),
                ("manifold_unit", manifold_unit),
                ("recon", recon),
            ] {
                parts.entry(key).or_default().push(quantize(&adv));
            }
            bar.inc(len as u64);
        }
        bar.finish();
        let mut probes: Probes = parts
            .into_iter()
            .map(|(k, v)| (k, Tensor::cat(&v, 0)))
            .collect();
        probes.insert("clean", self.probe.shallow_clone());
        Ok(probes)
    }

    /// Every defense on every grey-box and on-manifold condition.
    fn evaluate_defenses(
        &self,
        defenses: &mut [Defense],
        probes: &Probes,
        thresholds: &[f64],
    ) -> Result<DefenseResults> {
        let n = self.n();
        let grid_index = self.grid_index();
        let conditions: Vec<&'static str> = GREY_COLUMNS
            .iter()
            .chain(MANIFOLD_COLUMNS.iter())
            .map(|c| c.0)
            .collect();
        let mut out = DefenseResults {
            grey_rows: Vec::new(),
            manifold_rows: Vec::new(),
            defended_gallery: Vec::new(),
            purified: BTreeMap::new(),
        };
        let bar = progress_bar(
            (defenses.len() * (conditions.len() + 1) * n) as u64,
            "defenses",
        );
        for (d, defense) in defenses.iter_mut().enumerate() {
            let g = defended_embeddings(
                &self.recognizer,
                defense,
                &self.gallery,
                &self.align_gallery,
                &self.pair_seeds(stream::GALLERY, 0),
                self.opts.chunk,
            )?;
            bar.inc(n as u64);
            let mut cells = BTreeMap::new();
            for (c, cond) in conditions.iter().enumerate() {
                let seeds = self.pair_seeds(stream::PROBE, c as u64);
                let faces = &probes[cond];
                if defense.is_random() {
                    let shown = faces.index_select(0, &grid_index);
                    out.purified
                        .insert(cond, defense.apply(&shown, &self.grid_seeds(&seeds))?);
                }
                let e = defended_embeddings(
                    &self.recognizer,
                    defense,
                    faces,
                    &self.align_probe,
                    &seeds,
                    self.opts.chunk,
                )?;
                cells.insert(
                    cond.to_string(),
                    verify(&scores_of(&e, &g)?, &self.same, thresholds[d]),
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
            out.grey_rows.push(row(&GREY_COLUMNS));
            out.manifold_rows.push(row(&MANIFOLD_COLUMNS));
            out.defended_gallery.push(g);
        }
        bar.finish();
        Ok(out)
    }

    /// White-box rows of defense number `d` (BPDA, plus BPDA + EOT for a random defense); also
    /// returns the grid rows of the strongest PGD variant (adversarial, defended) when the
    /// defense is random.
    fn white_box(
        &self,
        d: usize,
        defense: &mut Defense,
        threshold: f64,
        clean: &Cell,
        defended_gallery: &Tensor,
    ) -> Result<(Vec<Row>, Option<GridPair>)> {
        let (n, opts) = (self.n(), self.opts);
        let eot = if defense.is_random() {
            opts.eot.max(1)
        } else {
            1
        };
        // (K, key, label) per variant: without EOT, then with EOT for a random defense.
        let without_eot = if defense.is_random() {
            "BPDA (K = 1)"
        } else {
            "BPDA"
        };
        let mut variants = vec![(
            1,
            format!("{}-bpda", defense.key()),
            format!("{}, {without_eot}", defense.label()),
        )];
        if defense.is_random() {
            variants.push((
                eot,
                format!("{}-eot", defense.key()),
                format!("{}, BPDA + EOT (K = {eot})", defense.label()),
            ));
        }
        let mut adv: Vec<BTreeMap<&str, Vec<Tensor>>> =
            (0..variants.len()).map(|_| BTreeMap::new()).collect();
        // Per variant and pair: whether any PGD iterate broke the decision (the attack monitors
        // the defended system with the first of its K draws; the target is the defended gallery).
        let mut broken: Vec<Vec<bool>> = vec![Vec::with_capacity(n); variants.len()];
        let bar = progress_bar(n as u64, &format!("white-box {}", defense.key()));
        let mut attack_rng = StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK, d as u64]));
        for first in (0..n).step_by(opts.chunk) {
            let len = opts.chunk.min(n - first);
            let x = Self::rows(&self.probe, first, len);
            let attacker_seed =
                |extra: u64| mix(opts.seed, &[stream::ATTACK, d as u64, first as u64, extra]);
            let gallery_seeds: Vec<u64> = (0..len as u64)
                .map(|k| mix(opts.seed, &[stream::ATTACK, d as u64, first as u64 + k]))
                .collect();
            // The white-box attacker aims at the gallery as the defended system sees it.
            let g = defense.apply(&Self::rows(&self.gallery, first, len), &gallery_seeds)?;
            let target = Target::new(
                &self.recognizer.embed_all(
                    &g,
                    &Self::rows(&self.align_gallery, first, len),
                    len as i64,
                )?,
                &self.same[first..first + len],
                &Self::rows(&self.align_probe, first, len),
            );
            // FGSM: K defense draws at the clean probe; the variant without EOT uses the first.
            let draws = Bpda {
                recognizer: &self.recognizer,
                target: &target,
                defense: &mut *defense,
                samples: eot,
                rng: StdRng::seed_from_u64(attacker_seed(1)),
                monitor: None,
            }
            .draws(&x)?;
            for (v, (k, _, _)) in variants.iter().enumerate() {
                let grad = draws[..*k]
                    .iter()
                    .fold(x.zeros_like(), |acc, (_, g)| acc + g);
                let mut bpda = Bpda {
                    recognizer: &self.recognizer,
                    target: &target,
                    defense: &mut *defense,
                    samples: *k,
                    rng: StdRng::seed_from_u64(attacker_seed(2 + v as u64)),
                    monitor: Some(BreakMonitor::new(threshold, len)),
                };
                let pgd8 = pgd(&x, &opts.whitebox_pgd, &mut bpda, &mut attack_rng)?;
                broken[v].extend(bpda.monitor.map(|m| m.broken).unwrap_or_default());
                for (key, a) in [
                    ("fgsm4", fgsm(&x, &grad, attack::unit_eps(4.0))),
                    ("fgsm8", fgsm(&x, &grad, attack::unit_eps(8.0))),
                    ("pgd8", pgd8),
                ] {
                    adv[v].entry(key).or_default().push(quantize(&a));
                }
            }
            bar.inc(len as u64);
        }
        bar.finish();
        let mut rows = Vec::new();
        let mut grid = None;
        for (v, (_, key, label)) in variants.iter().enumerate() {
            let mut cells = BTreeMap::new();
            cells.insert("clean".to_owned(), clean.clone());
            for (c, cond) in ["fgsm4", "fgsm8", "pgd8"].iter().enumerate() {
                let faces = Tensor::cat(&adv[v][cond], 0);
                let seeds = self.pair_seeds(stream::PROBE, 100 + (v * 10 + c) as u64);
                let e = defended_embeddings(
                    &self.recognizer,
                    defense,
                    &faces,
                    &self.align_probe,
                    &seeds,
                    opts.chunk,
                )?;
                let mut scores = scores_of(&e, defended_gallery)?;
                if *cond == "pgd8" {
                    mark_broken(&mut scores, &self.same, &broken[v]);
                }
                cells.insert(cond.to_string(), verify(&scores, &self.same, threshold));
                if defense.is_random() && *cond == "pgd8" && v + 1 == variants.len() {
                    let shown = faces.index_select(0, &self.grid_index());
                    let defended = defense.apply(&shown, &self.grid_seeds(&seeds))?;
                    grid = Some((shown, defended));
                }
            }
            rows.push(Row {
                key: key.clone(),
                label: label.clone(),
                threshold,
                cells,
            });
        }
        Ok((rows, grid))
    }

    /// The image grids: gallery | clean probe | adversarial | A-VAE output, per attack.
    fn grids(
        &self,
        probes: &Probes,
        purified: &BTreeMap<&str, Tensor>,
        white: Option<GridPair>,
    ) -> Vec<Grid> {
        let index = self.grid_index();
        let (gallery, probe) = (
            self.gallery.index_select(0, &index),
            self.probe.index_select(0, &index),
        );
        let labels = || -> Vec<String> {
            ["gallery", "probe", "adversarial", "A-VAE"]
                .map(String::from)
                .to_vec()
        };
        let mut grids = Vec::new();
        for (key, title) in [
            ("fgsm8", "grey-box FGSM eps=8"),
            ("pgd8", "grey-box PGD eps=8"),
            ("cw", "grey-box C&W L2"),
            ("manifold", "on-manifold attack"),
            ("manifold_unit", "on-manifold attack, unit steps"),
        ] {
            if let Some(p) = purified.get(key) {
                grids.push(Grid {
                    key: key.to_owned(),
                    title: title.to_owned(),
                    columns: vec![
                        gallery.shallow_clone(),
                        probe.shallow_clone(),
                        probes[key].index_select(0, &index),
                        p.shallow_clone(),
                    ],
                    labels: labels(),
                });
            }
        }
        if let Some((adv, defended)) = white {
            grids.push(Grid {
                key: "whitebox-pgd8".into(),
                title: format!("white-box PGD eps=8, BPDA + EOT (K = {})", self.opts.eot),
                columns: vec![gallery, probe, adv, defended],
                labels: labels(),
            });
        }
        grids
    }
}

/// Records and prints how long a stage took (progress bars are hidden when the output is not a
/// terminal, so long runs still log their progress).
pub(crate) fn stage_done(seconds: &mut BTreeMap<String, f64>, stage: &str, since: Instant) {
    let s = since.elapsed().as_secs_f64();
    println!("{stage}: {s:.0} s");
    seconds.insert(stage.to_owned(), s);
}

/// The fold-1 test pairs and the calibration impostor pairs of folds 2-10 as crops in [-1, 1]
/// with their recognizer warps, and the recognizer: what the full evaluation and the lab share.
pub(crate) struct PairSets {
    pub recognizer: Recognizer,
    /// Pair kinds, in pair order.
    pub same: Vec<bool>,
    pub gallery: Tensor,
    pub probe: Tensor,
    pub align_gallery: Tensor,
    pub align_probe: Tensor,
    pub calib_a: Tensor,
    pub calib_b: Tensor,
    pub align_calib_a: Tensor,
    pub align_calib_b: Tensor,
    /// Calibration pairs actually found in the crop cache.
    pub calib_len: usize,
    /// Cache indices of the gallery, probe, calibration a and b images, in that order.
    pub indices: [Vec<i64>; 4],
    /// Their landmarks (all `None` unless the alignment is `landmarks`), in the same order.
    pub landmarks: [Vec<Option<Landmarks>>; 4],
    /// The crop cache (for the photos behind the crops).
    pub set: FaceSet,
}

impl PairSets {
    /// Loads the crop cache of side `size`, the recognizer, the pairs and their warps.
    pub(crate) fn load(opts: &EvalOptions, size: usize) -> Result<Self> {
        let set = FaceSet::load(&opts.data, &opts.data_name, size)?;
        let recognizer = Recognizer::load(
            &opts.recognizer,
            opts.alignment,
            &set.index.crop,
            size as i64,
        )?;
        let pairs = test_pairs(&set, opts.pairs)?;
        let calib = calibration_pairs(&set, &opts.pairs_file, opts.calib_pairs)?;
        let indices: [Vec<i64>; 4] = [
            pairs.iter().map(|p| p.0).collect(),
            pairs.iter().map(|p| p.1).collect(),
            calib.iter().map(|p| p.0).collect(),
            calib.iter().map(|p| p.1).collect(),
        ];
        let landmarks = indices
            .each_ref()
            .map(|idx| image_landmarks(&set, opts, idx));
        let [lg, lp, la, lb] = landmarks;
        let landmarks = [lg?, lp?, la?, lb?];
        let aligns = landmarks.each_ref().map(|l| recognizer.align_for(l));
        let [align_gallery, align_probe, align_calib_a, align_calib_b] = aligns;
        let crops = |idx: &[i64]| to_unit_range(&set.select(idx));
        Ok(Self {
            same: pairs.iter().map(|p| p.2).collect(),
            gallery: crops(&indices[0]),
            probe: crops(&indices[1]),
            calib_a: crops(&indices[2]),
            calib_b: crops(&indices[3]),
            align_gallery: align_gallery?,
            align_probe: align_probe?,
            align_calib_a: align_calib_a?,
            align_calib_b: align_calib_b?,
            calib_len: calib.len(),
            recognizer,
            indices,
            landmarks,
            set,
        })
    }
}

/// Runs the whole evaluation and writes the report.
pub fn run(opts: &EvalOptions) -> Result<EvalSummary> {
    let start = Instant::now();
    let mut seconds = BTreeMap::new();
    let bundle = Bundle::load(&opts.bundle)
        .with_context(|| format!("cannot load the bundle '{}'", opts.bundle.display()))?;
    let size = bundle.manifest.image_size;
    let t = Instant::now();
    let sets = PairSets::load(opts, size)?;
    stage_done(&mut seconds, "alignment", t);
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

    println!(
        "evaluating {} fold-1 pairs ({} same, {} different), thresholds from {} impostor pairs of \
         folds 2-10; A-VAE M = {}, tau = {}, EOT K = {}; purifier {}",
        sets.same.len(),
        sets.same.iter().filter(|&&s| s).count(),
        sets.same.iter().filter(|&&s| !s).count(),
        sets.calib_len,
        opts.purify.samples,
        opts.purify.tau,
        opts.eot,
        purifier_info["backend"].as_str().unwrap_or_default()
    );
    let ev = Evaluation {
        opts,
        grid_rows: spread(sets.same.len(), opts.grid_rows)
            .into_iter()
            .map(|k| k as i64)
            .collect(),
        recognizer: sets.recognizer,
        same: sets.same,
        gallery: sets.gallery,
        probe: sets.probe,
        align_gallery: sets.align_gallery,
        align_probe: sets.align_probe,
    };

    let t = Instant::now();
    let thresholds = ev.thresholds(
        &mut defenses,
        (&sets.calib_a, &sets.align_calib_a),
        (&sets.calib_b, &sets.align_calib_b),
    )?;
    stage_done(&mut seconds, "thresholds", t);

    let t = Instant::now();
    let probes = ev.grey_box_attacks(&generator, thresholds[0])?;
    stage_done(&mut seconds, "grey-box attacks", t);
    let perturbation_l2 = [
        "fgsm4",
        "fgsm8",
        "pgd8",
        "cw",
        "manifold",
        "manifold_unit",
        "recon",
    ]
    .iter()
    .map(|k| {
        let l2 = attack::l2_norm(&probes[k], &ev.probe).mean(Kind::Float);
        (k.to_string(), l2.double_value(&[]))
    })
    .collect();

    let t = Instant::now();
    let results = ev.evaluate_defenses(&mut defenses, &probes, &thresholds)?;
    stage_done(&mut seconds, "defenses", t);

    let t = Instant::now();
    let mut white_rows = Vec::new();
    let mut white_grid = None;
    for (d, defense) in defenses.iter_mut().enumerate() {
        let grey = &results.grey_rows[d];
        if matches!(defense, Defense::None) {
            // Without a defense, white-box and grey-box attacks are the same attack.
            white_rows.push(Row {
                label: "No Defense (= grey-box)".into(),
                cells: grey
                    .cells
                    .iter()
                    .filter(|(k, _)| WHITE_COLUMNS.iter().any(|c| c.0 == k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..grey.clone()
            });
            continue;
        }
        let (rows, grid) = ev.white_box(
            d,
            defense,
            thresholds[d],
            &grey.cells["clean"],
            &results.defended_gallery[d],
        )?;
        white_rows.extend(rows);
        white_grid = white_grid.or(grid);
    }
    stage_done(&mut seconds, "white-box", t);

    let grids = ev.grids(&probes, &results.purified, white_grid);
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
            rows: results.grey_rows,
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
            rows: results.manifold_rows,
        },
    ];
    let mut recognizer_info = BTreeMap::new();
    recognizer_info.insert("file".into(), opts.recognizer.display().to_string().into());
    recognizer_info.insert("alignment".into(), opts.alignment.label().into());
    recognizer_info.insert(
        "ops".into(),
        serde_json::to_value(ev.recognizer.graph().op_counts())?,
    );
    recognizer_info.insert("weights".into(), ev.recognizer.graph().num_weights().into());
    let summary = EvalSummary {
        options: opts.clone(),
        purifier: purifier_info,
        recognizer: recognizer_info,
        image_size: size,
        same: ev.same.clone(),
        calibration_pairs: sets.calib_len,
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

//! `trainer eval`: the paper's evaluation (section 4) on LFW with a real recognizer, the
//! paper's attacks and the baselines, written to a report folder by [`crate::report`].
//!
//! The stages live in submodules: `image` (the image threat model, run first), `protocol`
//! (pairs, thresholds, verification, seeds), `attacks` (grey-box), `defenses`, `whitebox`,
//! `alarm` and `summary` (what the report is written from). Every long attack keeps its
//! finished chunks under `<report>/cache/` ([`crate::chunk`]), so a stopped run resumes there.
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

mod alarm;
mod attacks;
mod condition;
mod defenses;
mod image;
mod protocol;
mod summary;
mod whitebox;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use gstavaepurify::bundle::Bundle;
use gstavaepurify::engine::Backend;
use gstavaepurify::purifier::PurifyParams;
use serde::Serialize;

pub use alarm::{AlarmSummary, AttackAlarm};
pub(crate) use alarm::{markdown as alarm_markdown, write_figure as write_alarm_figure};
pub use condition::Condition;
pub(crate) use image::markdown as image_markdown;
pub use image::{Headline, ImageOptions};
pub(crate) use protocol::{PairSets, mark_broken, mix, scores_of, stream};
pub use protocol::{TARGET_FAR, threshold_at_far, verify};
pub use summary::{Cell, EvalSummary, Grid, Row, Table};

use crate::attack::{self, CwParams, PgdParams};
use crate::defense::{AVaeDefense, Defense};
use crate::lab;
use crate::recognizer::Alignment;
use crate::threat::ThreatModel;
use protocol::{Evaluation, spread};

/// Everything `trainer eval` needs.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOptions {
    /// The command line that asked for this evaluation (for the report).
    pub command: String,
    /// The A-VAE bundle to evaluate (what ships).
    pub bundle: PathBuf,
    /// With `--lab`: every bundle of the side-by-side table (else empty).
    pub lab_bundles: Vec<PathBuf>,
    /// With `--lab`: the threat models it runs (both unless `--threat-model` says otherwise).
    pub lab_threat_models: Vec<ThreatModel>,
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
    /// The element's `context` values in the image threat model: the full evaluation uses the
    /// first, the lab makes one row per bundle (and down-up baseline) and value.
    pub context: Vec<f32>,
    /// Samples per face side of the context's low-pass (`None`: the bundle's encoder input
    /// size, as the element does); the lab makes rows for each value and each `context`.
    pub context_detail: Vec<Option<usize>>,
    /// The element's `passes`, in both threat models.
    pub passes: usize,
    /// The element's `suspect-blur` (crop pixels; 0: off), in the image threat model.
    pub suspect_blur: f32,
    /// Block side at which A-VAE chooses the nearest candidate (1: pixels).
    pub select_block: usize,
    /// Grey-box PGD.
    pub pgd: PgdParams,
    /// White-box (BPDA) PGD.
    pub whitebox_pgd: PgdParams,
    /// The image threat model's stronger white-box attack (the full evaluation's image stage).
    pub image: ImageOptions,
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
    pub const IMAGE_WHITEBOX_PAIRS: (usize, usize) = (200, 600);
    pub const IMAGE_EOT: (usize, usize) = (8, 2);
    pub const IMAGE_WHITEBOX_STEPS: (usize, usize) = (50, 3);
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
    /// With --lab: run only this threat model (repeatable) [default: image and crop]
    #[arg(long, value_enum)]
    threat_model: Vec<ThreatModel>,
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
    /// The element's context (margin low-passed around each face) in the image threat model;
    /// repeat it in the lab for one row per value [default: the element's]
    #[arg(long)]
    context: Vec<f32>,
    /// Samples per face side of the context's low-pass, 0 for the bundle's encoder input size;
    /// repeat it in the lab for rows of each value [default: 0]
    #[arg(long)]
    context_detail: Vec<usize>,
    /// The element's passes, A-VAE passes over each face, each purifying the last one's
    /// output, in both threat models [default: the element's]
    #[arg(long)]
    passes: Option<usize>,
    /// The element's suspect-blur in the image threat model: faces the alarm flags before
    /// purification are blurred by this many crop pixels first, 0 never [default: the
    /// element's]
    #[arg(long)]
    suspect_blur: Option<f32>,
    /// Block side at which A-VAE chooses the nearest candidate: 1 is pixel L2 (the paper's
    /// rule); k > 1 compares k x k block means, so detail finer than the blocks cannot steer
    /// the choice
    #[arg(long, default_value_t = 1)]
    select_block: usize,
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
    /// Image threat model: pairs of the white-box BPDA + EOT attack, spread over the test pairs
    /// [default: 200, --fast all]
    #[arg(long)]
    image_whitebox_pairs: Option<usize>,
    /// Image threat model: K, purifier draws per white-box EOT gradient [default: 8, --fast 2]
    #[arg(long)]
    image_eot: Option<usize>,
    /// Image threat model: white-box PGD steps [default: 50, --fast 3]
    #[arg(long)]
    image_whitebox_steps: Option<usize>,
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
    /// `v`, or the full run's or `--fast`'s default `d = (full, fast)`.
    fn pick(&self, v: Option<usize>, d: (usize, usize)) -> usize {
        v.unwrap_or(if self.fast { d.1 } else { d.0 })
    }

    /// Resolves defaults (the bundle's tau, `--fast`) into [`EvalOptions`].
    pub fn into_options(self) -> Result<EvalOptions> {
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
        let pairs_file = match self.pairs_file.clone() {
            Some(p) => p,
            None => crate::data::default_dataset_dir()
                .map(|d| d.join("pairs.txt"))
                .context("no --pairs-file given and ../shared/datasets/lfw/pairs.txt not found")?,
        };
        ensure!(self.chunk > 0, "--chunk must be at least 1");
        if let Some(bad) = self
            .context
            .iter()
            .find(|c| !c.is_finite() || !(0.0..=1.0).contains(*c))
        {
            anyhow::bail!(
                "--context {bad}: expected a margin from 0 to 1 (a fraction of the face)"
            );
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        let (pgd, whitebox_pgd) = self.pgd_params();
        Ok(EvalOptions {
            command: format!("trainer {}", args.join(" ")),
            bundle: first,
            lab_threat_models: if self.threat_model.is_empty() {
                vec![ThreatModel::Image, ThreatModel::Crop]
            } else {
                self.threat_model.clone()
            },
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
            pairs: self.pairs.unwrap_or(if self.lab {
                lab::PAIRS
            } else {
                defaults::PAIRS
            }),
            calib_pairs: self.pick(
                self.calib_pairs,
                if self.lab {
                    (lab::CALIB_PAIRS, lab::CALIB_PAIRS)
                } else {
                    defaults::CALIB_PAIRS
                },
            ),
            purify: self.purify_params(bundle.manifest.tau),
            backend: self
                .backend
                .parse()
                .with_context(|| format!("--backend '{}'", self.backend))?,
            tau_given: self.tau,
            eot: if self.lab {
                self.eot.unwrap_or(1)
            } else {
                self.pick(self.eot, defaults::EOT)
            },
            feather: self.feather,
            passes: self
                .passes
                .unwrap_or(gstavaepurify::frame::DEFAULT_PASSES)
                .max(1),
            suspect_blur: self
                .suspect_blur
                .unwrap_or(gstavaepurify::frame::DEFAULT_SUSPECT_BLUR),
            select_block: self.select_block,
            context_detail: if self.context_detail.is_empty() {
                vec![None]
            } else {
                self.context_detail
                    .iter()
                    .map(|&d| (d > 0).then_some(d))
                    .collect()
            },
            context: if self.context.is_empty() {
                vec![gstavaepurify::frame::DEFAULT_CONTEXT]
            } else {
                self.context.clone()
            },
            pgd,
            whitebox_pgd,
            image: ImageOptions {
                whitebox_pairs: self
                    .pick(self.image_whitebox_pairs, defaults::IMAGE_WHITEBOX_PAIRS),
                eot: self.pick(self.image_eot, defaults::IMAGE_EOT).max(1),
                whitebox_pgd: PgdParams {
                    steps: self.pick(self.image_whitebox_steps, defaults::IMAGE_WHITEBOX_STEPS),
                    ..whitebox_pgd
                },
            },
            cw: self.cw_params(),
            manifold_steps: self.manifold_steps,
            manifold_eps: self.manifold_eps,
            manifold_unit_step: self.manifold_unit_step,
            chunk: self.chunk,
            grid_rows: self.grid_rows,
            seed: self.seed,
        })
    }

    /// M, decoder batch and tau (`bundle_tau` unless `--tau`).
    fn purify_params(&self, bundle_tau: f32) -> PurifyParams {
        PurifyParams {
            samples: self.samples.unwrap_or(if self.lab {
                lab::SAMPLES
            } else if self.fast {
                defaults::SAMPLES.1
            } else {
                defaults::SAMPLES.0
            }),
            batch: self.batch,
            tau: self.tau.unwrap_or(bundle_tau),
        }
    }

    /// The grey-box and the white-box PGD, both at eps = 8/255.
    fn pgd_params(&self) -> (PgdParams, PgdParams) {
        let grey = PgdParams {
            eps: 8.0,
            step: self.pgd_step,
            steps: self.pick(self.pgd_steps, defaults::PGD_STEPS),
            random_start: true,
            restarts: self.pgd_restarts,
        };
        let white = PgdParams {
            eps: 8.0,
            step: self.whitebox_pgd_step,
            steps: self.pick(self.whitebox_pgd_steps, defaults::WHITEBOX_PGD_STEPS),
            random_start: true,
            restarts: 1,
        };
        (grey, white)
    }

    /// The grey-box C&W L2.
    fn cw_params(&self) -> CwParams {
        CwParams {
            bound: self.cw_bound,
            c: self.cw_c,
            lr: self.cw_lr,
            steps: self.pick(self.cw_steps, defaults::CW_STEPS),
            kappa: self.cw_kappa,
        }
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
        .and_then(|r| r.cells.get(&Condition::Clean));
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
/// Records and prints how long a stage took (progress bars are hidden when the output is not a
/// terminal, so long runs still log their progress).
pub(crate) fn stage_done(seconds: &mut BTreeMap<String, f64>, stage: &str, since: Instant) {
    let s = since.elapsed().as_secs_f64();
    println!("{stage}: {s:.0} s");
    seconds.insert(stage.to_owned(), s);
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
    // First: its white-box chunks are kept under `<report>/cache/`, so a run stopped during the
    // longest stage resumes there, and the crop stages after it run in one go.
    let t = Instant::now();
    let image_rows = image::rows(opts)?;
    stage_done(&mut seconds, "image threat model", t);
    let (_vs, generator) = attack::generator_from_bundle(&bundle)?;
    let avae = AVaeDefense::load(&opts.bundle, opts.backend, opts.purify, opts.passes)?
        .with_selection_block(opts.select_block)?;
    let purifier = summary::purifier_info(opts, &bundle, &avae)?;
    let mut defenses: Vec<Defense> = vec![Defense::None, Defense::AVae(Box::new(avae))];
    defenses.extend(Defense::baselines());
    print_plan(
        opts,
        &sets,
        purifier["backend"].as_str().unwrap_or_default(),
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
    let perturbation_l2 = attacks::perturbation_l2(&probes, &ev.probe);

    let t = Instant::now();
    let results = ev.evaluate_defenses(&mut defenses, &probes, &thresholds)?;
    stage_done(&mut seconds, "defenses", t);

    let t = Instant::now();
    let (white_rows, white_grid) = ev.white_box_rows(&mut defenses, &thresholds, &results)?;
    stage_done(&mut seconds, "white-box", t);

    let t = Instant::now();
    let alarm = match defenses.iter().position(Defense::is_random) {
        Some(d) => Some(ev.alarm(
            &mut defenses[d],
            d,
            thresholds[d],
            &generator,
            &sets.set,
            &probes,
            &results,
        )?),
        None => None,
    };
    stage_done(&mut seconds, "alarm", t);

    let grids = ev.grids(&probes, &results.purified, white_grid);
    let mut summary = EvalSummary {
        options: opts.clone(),
        purifier,
        recognizer: summary::recognizer_info(opts, &ev.recognizer)?,
        image_size: size,
        same: ev.same.clone(),
        calibration_pairs: sets.calib_len,
        tables: summary::tables(results.grey_rows, white_rows, results.manifold_rows),
        perturbation_l2,
        alarm,
        image: image_rows,
        headline: None,
        seconds,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    summary.headline = image::headline(&summary.image, &summary);
    crate::report::write(&opts.report, &summary, &grids)?;
    Ok(summary)
}

/// Prints what is about to be evaluated.
fn print_plan(opts: &EvalOptions, sets: &PairSets, backend: &str) {
    println!(
        "evaluating {} fold-1 pairs ({} same, {} different), thresholds from {} impostor pairs of \
         folds 2-10; A-VAE M = {}, tau = {}, {} pass(es), EOT K = {}; purifier {}",
        sets.same.len(),
        sets.same.iter().filter(|&&s| s).count(),
        sets.same.iter().filter(|&&s| !s).count(),
        sets.calib_len,
        opts.purify.samples,
        opts.purify.tau,
        opts.passes,
        opts.eot,
        backend
    );
}

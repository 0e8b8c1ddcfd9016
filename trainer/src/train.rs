//! `trainer train`: the A-VAE training loop (paper eq. 7 with a WGAN-GP critic), its checkpoints,
//! resume, sample grids, loss curves and JSON-lines log.
//!
//! A run folder holds `checkpoint.json` (the latest complete checkpoint, [`CheckpointMeta`]),
//! `ckpt-<step>/{generator,ema,critic}.safetensors`, `log.jsonl`, `loss-curves.png` and
//! `samples/step-<step>.png`. A checkpoint folder is written in full under a temporary name and
//! renamed before `checkpoint.json` is replaced, so a run killed at any point resumes from the last
//! complete one. Adam moments are not saved: a resumed run restarts them (with beta1 = 0 only the
//! second moment is lost, and it rebuilds within ~100 steps at beta2 = 0.99).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::config::Config;
use crate::data::{self, BatchLoader, FaceSet, Split, write_atomic};
use crate::denoise::{Denoise, Family};
use crate::guide::{Guidance, Guide};
use crate::model::{AVae, Discriminator, MAPPING_GROUP};
use crate::plot::{self, Series};

/// Version of `checkpoint.json`.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// Name of the file pointing at the latest complete checkpoint of a run.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// JSON-lines log of a run.
pub const LOG_FILE: &str = "log.jsonl";
/// Loss-curve figure of a run.
pub const CURVES_FILE: &str = "loss-curves.png";
/// Generator weights inside a checkpoint folder.
pub const GENERATOR_FILE: &str = "generator.safetensors";
/// EMA generator weights inside a checkpoint folder (used for samples and export).
pub const EMA_FILE: &str = "ema.safetensors";
/// Critic weights inside a checkpoint folder.
pub const CRITIC_FILE: &str = "critic.safetensors";
/// Test faces (grid rows) and candidates per face of the sample grids and the PSNR metric.
const SAMPLE_FACES: usize = 8;
/// Candidates decoded per test face for the sample grids and the nearest-of-K PSNR.
const SAMPLE_CANDIDATES: usize = 8;

/// Training objective (see the project README for the reasoning behind each variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The paper's objective as is: mean KL + WGAN-GP adversarial loss, unconditional critic.
    A,
    /// A critic conditioned on the 32x32 encoder input, judging (output, input) pairs.
    B,
    /// (a) plus a low-resolution consistency loss between downsample(G(x)) and downsample(x).
    C,
    /// Both (b) and (c).
    Bc,
}

impl Objective {
    /// Whether the critic sees the 32x32 input too.
    pub fn conditional(self) -> bool {
        matches!(self, Objective::B | Objective::Bc)
    }

    /// Whether the consistency loss is on.
    pub fn consistency(self) -> bool {
        matches!(self, Objective::C | Objective::Bc)
    }

    /// Short name as written in bundle manifests ("a", "b", "c", "b+c").
    pub fn label(self) -> &'static str {
        match self {
            Objective::A => "a",
            Objective::B => "b",
            Objective::C => "c",
            Objective::Bc => "b+c",
        }
    }
}

/// Where the tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when available, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device (an error when there is none).
    Cuda,
}

impl DeviceChoice {
    /// The tch device, or an error when CUDA was asked for and is missing.
    pub fn resolve(self) -> Result<Device> {
        Ok(match self {
            DeviceChoice::Auto => Device::cuda_if_available(),
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda => {
                ensure!(
                    tch::Cuda::is_available(),
                    "--device cuda: libtorch sees no CUDA device (this build links the CPU-only \
                     libtorch, or no GPU is present)"
                );
                Device::Cuda(0)
            }
        })
    }
}

/// Hyper-parameters of the loss and optimiser, stored in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Batch size.
    pub batch: usize,
    /// Adam learning rate (the mapping network gets `lr * mapping_lr_mul`).
    pub lr: f64,
    /// Weight of the mean KL term (the paper's lambda, 1).
    pub kl_weight: f64,
    /// Weight of the consistency loss (objectives c and bc).
    pub lambda_c: f64,
    /// Weight of the WGAN-GP gradient penalty.
    pub gp_weight: f64,
    /// Weight of the critic drift term `D(real)^2`.
    pub drift_weight: f64,
    /// Decay of the generator's exponential moving average.
    pub ema_decay: f64,
    /// Seed of every random draw (batches, flips, latents, initial weights).
    pub seed: u64,
    /// Denoising training: what the encoder sees (see `denoise.rs`; off by default).
    #[serde(default)]
    pub denoise: Denoise,
    /// Standard deviation of the Gaussian noise added to the skip feature in training, relative
    /// to the batch's skip standard deviation (0 = off).
    #[serde(default)]
    pub skip_noise: f64,
    /// Recognizer-guided training (see `guide.rs`; off by default).
    #[serde(default)]
    pub guide: Guide,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            batch: 16,
            lr: 1e-3,
            kl_weight: 1.0,
            lambda_c: 10.0,
            gp_weight: 10.0,
            drift_weight: 1e-3,
            ema_decay: 0.999,
            seed: 0,
            denoise: Denoise::default(),
            skip_noise: 0.0,
            guide: Guide::default(),
        }
    }
}

/// What `trainer train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Model preset name (`Config::preset`).
    pub preset: String,
    /// Objective variant.
    pub objective: Objective,
    /// Step count to reach (a resumed run continues up to it).
    pub steps: u64,
    /// Run folder.
    pub out: PathBuf,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Steps between checkpoints (a final one is always written).
    pub ckpt_every: u64,
    /// Steps between sample grids and loss-curve updates (also done at the last step).
    pub sample_every: u64,
    /// Checkpoint folders to keep (older ones are deleted).
    pub keep_checkpoints: usize,
    /// CPU threads for libtorch (`None`: all cores).
    pub threads: Option<usize>,
    /// Device.
    pub device: DeviceChoice,
    /// Folder of the prepared crop cache.
    pub data: PathBuf,
    /// Name prefix of the crop cache.
    pub data_name: String,
    /// Loss and optimiser settings.
    pub hyper: Hyper,
    /// Start a new run from the generator weights of this bundle (fine-tuning; the critic
    /// starts fresh).
    pub init_bundle: Option<PathBuf>,
    /// The face recognizer of recognizer-guided training (read only when `hyper.guide` is on).
    pub recognizer: PathBuf,
    /// Side of the downsample the encoder's information comes from, over the preset's 32
    /// ([`Config::input_size`]; a resumed run keeps its own).
    pub input_size: Option<i64>,
    /// Side of the skip connection's detail, over the preset's 16 ([`Config::skip_detail`]; a
    /// resumed run keeps its own).
    pub skip_detail: Option<i64>,
}

/// Contents of `checkpoint.json`: the latest complete checkpoint of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`CHECKPOINT_FORMAT_VERSION`].
    pub format_version: u32,
    /// Training steps done.
    pub step: u64,
    /// Checkpoint folder, relative to the run folder (`ckpt-00000250`).
    pub dir: String,
    /// Model configuration.
    pub config: Config,
    /// Objective variant.
    pub objective: Objective,
    /// Loss and optimiser settings of the run.
    pub hyper: Hyper,
    /// Dataset the run trains on (image root and split rule).
    pub dataset: String,
    /// Seconds since the Unix epoch when the checkpoint was written.
    pub created_unix: u64,
    /// Git commit of the trainer source that ran the training ("unknown" outside a git checkout).
    #[serde(default = "unknown")]
    pub commit: String,
    /// The bundle whose generator the run started from (`--init-bundle`), described with its own
    /// provenance; `None` for a run trained from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

fn unknown() -> String {
    "unknown".to_owned()
}

/// The git commit of the trainer's source tree, or "unknown".
fn source_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(unknown)
}

/// `unix` seconds as an RFC 3339 UTC timestamp (`2026-11-25T16:00:00Z`).
pub fn utc_timestamp(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl CheckpointMeta {
    /// Reads `<run>/checkpoint.json`.
    pub fn read(run: &Path) -> Result<Self> {
        let path = run.join(CHECKPOINT_FILE);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read '{}' (no checkpoint in this run)",
                path.display()
            )
        })?;
        let meta: Self = serde_json::from_str(&text)
            .with_context(|| format!("'{}' is not a checkpoint description", path.display()))?;
        ensure!(
            meta.format_version == CHECKPOINT_FORMAT_VERSION,
            "'{}' has format version {}, this trainer reads {CHECKPOINT_FORMAT_VERSION}",
            path.display(),
            meta.format_version
        );
        Ok(meta)
    }

    /// Path of one weight file (`GENERATOR_FILE`, `EMA_FILE`, `CRITIC_FILE`) of this checkpoint.
    pub fn file(&self, run: &Path, name: &str) -> PathBuf {
        run.join(&self.dir).join(name)
    }
}

/// Loads the EMA generator of the latest checkpoint of `run` (what samples show and export ships).
pub fn load_ema_generator(
    run: &Path,
    device: Device,
) -> Result<(nn::VarStore, AVae, CheckpointMeta)> {
    let meta = CheckpointMeta::read(run)?;
    let mut vs = nn::VarStore::new(device);
    let model = AVae::new(&vs.root(), &meta.config);
    let path = meta.file(run, EMA_FILE);
    vs.load(&path)
        .with_context(|| format!("cannot load '{}'", path.display()))?;
    Ok((vs, model, meta))
}

/// One step's losses, as logged.
#[derive(Debug, Clone, Copy, Default)]
struct Losses {
    d_loss: f64,
    d_wgan: f64,
    gp: f64,
    drift: f64,
    g_adv: f64,
    kl: f64,
    consistency: f64,
    /// Identity loss `1 - cos` (0 when recognizer guidance is off).
    identity: f64,
    g_loss: f64,
}

/// Mean KL divergence of `N(mu, exp(logvar))` from `N(0, I)`, averaged over batch and latent
/// dimensions (the KL term of paper eq. 7, per dimension).
pub fn mean_kl(mu: &Tensor, logvar: &Tensor) -> Tensor {
    ((mu.square() + logvar.exp() - 1.0 - logvar) * 0.5).mean(Kind::Float)
}

/// WGAN-GP penalty: mean over the batch of `(|grad_x D(x_hat)|_2 - 1)^2` at random interpolates
/// `x_hat` between `real` and `fake` (both without autograd history).
pub fn gradient_penalty(
    critic: &Discriminator,
    real: &Tensor,
    fake: &Tensor,
    cond32: Option<&Tensor>,
) -> Tensor {
    let n = real.size()[0];
    let alpha = Tensor::rand([n, 1, 1, 1], (Kind::Float, real.device()));
    let mixed = (real * &alpha + fake * (-&alpha + 1.0))
        .detach()
        .set_requires_grad(true);
    let score = critic.forward(&mixed, cond32);
    let grad = Tensor::run_backward(&[score.sum(Kind::Float)], &[&mixed], true, true);
    let norm = (grad[0]
        .flatten(1, -1)
        .square()
        .sum_dim_intlist(1, false, Kind::Float)
        + 1e-12)
        .sqrt();
    (norm - 1.0).square().mean(Kind::Float)
}

/// Draws `z = mu + exp(logvar / 2) * eps` (the reparameterised posterior sample).
fn sample_z(mu: &Tensor, logvar: &Tensor, eps: &Tensor) -> Tensor {
    mu + (logvar * 0.5).exp() * eps
}

/// Generator, its EMA copy and the critic with their optimisers.
struct Models {
    gen_vs: nn::VarStore,
    generator: AVae,
    ema_vs: nn::VarStore,
    ema: AVae,
    critic_vs: nn::VarStore,
    critic: Discriminator,
    /// `(ema variable, generator variable)` pairs sharing storage with the var stores.
    ema_pairs: Vec<(Tensor, Tensor)>,
}

impl Models {
    fn new(cfg: &Config, objective: Objective, device: Device) -> Result<Self> {
        let gen_vs = nn::VarStore::new(device);
        let generator = AVae::new(&gen_vs.root(), cfg);
        let mut ema_vs = nn::VarStore::new(device);
        let ema = AVae::new(&ema_vs.root(), cfg);
        ema_vs.copy(&gen_vs)?;
        ema_vs.freeze();
        let critic_vs = nn::VarStore::new(device);
        let critic = Discriminator::new(&critic_vs.root(), cfg, objective.conditional());
        let gen_vars = gen_vs.variables();
        let ema_pairs = ema_vs
            .variables()
            .into_iter()
            .map(|(name, e)| {
                let g = gen_vars
                    .get(&name)
                    .with_context(|| format!("EMA variable '{name}' missing from the generator"))?
                    .shallow_clone();
                Ok((e, g))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            gen_vs,
            generator,
            ema_vs,
            ema,
            critic_vs,
            critic,
            ema_pairs,
        })
    }

    /// `ema <- ema + (1 - decay) * (generator - ema)`, with the decay warmed up as
    /// `min(decay, (1 + step) / (10 + step))` so early samples already follow the generator.
    fn update_ema(&mut self, decay: f64, step: u64) {
        let d = decay.min((1.0 + step as f64) / (10.0 + step as f64));
        tch::no_grad(|| {
            for (e, g) in &mut self.ema_pairs {
                let _ = e.lerp_(g, 1.0 - d);
            }
        });
    }

    /// Copies the generator weights of a bundle into the generator and its EMA copy.
    fn init_from_bundle(&mut self, dir: &Path, cfg: &Config) -> Result<()> {
        let bundle = gstavaepurify::bundle::Bundle::load(dir)
            .with_context(|| format!("--init-bundle '{}'", dir.display()))?;
        ensure!(
            bundle.manifest.preset == cfg.name,
            "--init-bundle '{}' holds a '{}' model, not '{}'",
            dir.display(),
            bundle.manifest.preset,
            cfg.name
        );
        let (src_vs, _) = crate::attack::generator_from_bundle(&bundle)?;
        self.gen_vs.copy(&src_vs)?;
        self.ema_vs.copy(&src_vs)?;
        Ok(())
    }

    fn load(&mut self, run: &Path, meta: &CheckpointMeta) -> Result<()> {
        for (vs, file) in [
            (&mut self.gen_vs, GENERATOR_FILE),
            (&mut self.ema_vs, EMA_FILE),
            (&mut self.critic_vs, CRITIC_FILE),
        ] {
            let path = meta.file(run, file);
            vs.load(&path)
                .with_context(|| format!("cannot load '{}'", path.display()))?;
        }
        Ok(())
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes a complete checkpoint folder for `meta.step`, points `checkpoint.json` at it and removes
/// all but the newest `keep` checkpoint folders.
fn save_checkpoint(run: &Path, models: &Models, meta: &CheckpointMeta, keep: usize) -> Result<()> {
    let final_dir = run.join(&meta.dir);
    let tmp_dir = run.join(format!("{}.tmp", meta.dir));
    for dir in [&tmp_dir, &final_dir] {
        if dir.exists() {
            fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove '{}'", dir.display()))?;
        }
    }
    fs::create_dir_all(&tmp_dir)
        .with_context(|| format!("cannot create '{}'", tmp_dir.display()))?;
    for (vs, file) in [
        (&models.gen_vs, GENERATOR_FILE),
        (&models.ema_vs, EMA_FILE),
        (&models.critic_vs, CRITIC_FILE),
    ] {
        let path = tmp_dir.join(file);
        vs.save(&path)
            .with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    fs::rename(&tmp_dir, &final_dir).with_context(|| {
        format!(
            "cannot rename '{}' to '{}'",
            tmp_dir.display(),
            final_dir.display()
        )
    })?;
    write_atomic(
        &run.join(CHECKPOINT_FILE),
        serde_json::to_string_pretty(meta)?.as_bytes(),
    )?;
    let mut old: Vec<PathBuf> = fs::read_dir(run)
        .with_context(|| format!("cannot list '{}'", run.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ckpt-") && !n.ends_with(".tmp"))
        })
        .collect();
    old.sort();
    let excess = old.len().saturating_sub(keep.max(1));
    for dir in old.into_iter().take(excess) {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove '{}'", dir.display()))?;
    }
    Ok(())
}

/// The run's history as read back from `log.jsonl`, for the loss curves.
#[derive(Default)]
struct History {
    d_loss: Vec<(f64, f64)>,
    g_adv: Vec<(f64, f64)>,
    kl: Vec<(f64, f64)>,
    consistency: Vec<(f64, f64)>,
    psnr: Vec<(f64, f64)>,
}

impl History {
    fn record(&mut self, entry: &serde_json::Value) {
        let step = entry["step"].as_f64().unwrap_or(f64::NAN);
        let get = |k: &str| entry[k].as_f64().unwrap_or(f64::NAN);
        match entry["kind"].as_str() {
            Some("train") => {
                self.d_loss.push((step, get("d_loss")));
                self.g_adv.push((step, get("g_adv")));
                self.kl.push((step, get("kl")));
                self.consistency.push((step, get("consistency")));
            }
            Some("sample") => self.psnr.push((step, get("psnr_nearest"))),
            _ => {}
        }
    }

    fn panels(&self, consistency: bool) -> Vec<Series> {
        let series = |title: &str, points: &[(f64, f64)], smooth| Series {
            title: title.to_owned(),
            points: points.to_vec(),
            smooth,
        };
        let mut panels = vec![
            series("critic loss (WGAN + GP + drift)", &self.d_loss, true),
            series("generator adversarial loss", &self.g_adv, true),
            series("mean KL per latent dimension", &self.kl, true),
        ];
        if consistency {
            panels.push(series(
                "consistency MSE at 32x32 (unweighted)",
                &self.consistency,
                true,
            ));
        }
        panels.push(series(
            "nearest-of-8 PSNR on fixed test faces (dB, EMA)",
            &self.psnr,
            false,
        ));
        panels
    }
}

/// JSON-lines log that, on resume, drops the entries after the resumed step.
struct RunLog {
    file: fs::File,
    path: PathBuf,
}

impl RunLog {
    fn open(run: &Path, keep_until: Option<u64>, history: &mut History) -> Result<Self> {
        let path = run.join(LOG_FILE);
        if let Some(last) = keep_until {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let mut kept = String::new();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["step"].as_u64().is_some_and(|s| s <= last) {
                    history.record(&v);
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            write_atomic(&path, kept.as_bytes())?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open '{}'", path.display()))?;
        Ok(Self { file, path })
    }

    fn write(&mut self, entry: &serde_json::Value, history: &mut History) -> Result<()> {
        history.record(entry);
        writeln!(self.file, "{entry}")
            .with_context(|| format!("cannot write '{}'", self.path.display()))
    }
}

/// Fixed test faces and latent noise for the sample grids, identical across steps and resumes.
struct Probe {
    faces: Tensor,
    eps: Option<Tensor>,
    seed: u64,
}

impl Probe {
    /// Writes the sample grid of `step` and returns the mean nearest-of-K PSNR (dB) of the EMA
    /// model on the probe faces (PSNR with peak-to-peak 2 for the [-1, 1] range).
    fn sample(&mut self, models: &Models, path: &Path) -> Result<f64> {
        tch::no_grad(|| {
            let x = &self.faces;
            let [n, _, s, _] = x.size()[..] else {
                bail!("probe faces have shape {:?}", x.size());
            };
            let k = SAMPLE_CANDIDATES as i64;
            let (mu, logvar, skip) = models.ema.encode(x);
            let d = mu.size()[1];
            let eps = self.eps.get_or_insert_with(|| {
                let mut rng = StdRng::seed_from_u64(self.seed);
                let values: Vec<f32> = (0..n * k * d)
                    .map(|_| StandardNormal.sample(&mut rng))
                    .collect();
                Tensor::from_slice(&values)
                    .view([n * k, d])
                    .to_device(x.device())
            });
            let z = sample_z(
                &mu.repeat_interleave_self_int(k, 0, None),
                &logvar.repeat_interleave_self_int(k, 0, None),
                eps,
            );
            let candidates = models
                .ema
                .decode(&z, &skip.repeat_interleave_self_int(k, 0, None))
                .view([n, k, 3, s, s]);
            let sq = (&candidates - x.unsqueeze(1))
                .square()
                .flatten(2, -1)
                .mean_dim(2, false, Kind::Float);
            let (best_mse, best) = sq.min_dim(1, false);
            let nearest = candidates
                .gather(
                    1,
                    &best.view([n, 1, 1, 1, 1]).expand([n, 1, 3, s, s], false),
                    false,
                )
                .squeeze_dim(1);
            let psnr = (best_mse.clamp_min(1e-10).reciprocal() * 4.0).log10() * 10.0;
            let low = models
                .ema
                .downsample(x)
                .upsample_nearest2d([s, s], None, None);
            let mut columns = vec![x.shallow_clone(), low];
            columns.extend((0..k).map(|j| candidates.select(1, j)));
            columns.push(nearest);
            let last = columns.len() - 1;
            plot::face_grid(
                path,
                &columns,
                &[
                    (0, "input"),
                    (1, "32x32"),
                    (2, "EMA samples z ~ q(z|x)"),
                    (last, "nearest"),
                ],
                &[1, last - 1],
            )?;
            Ok(psnr.mean(Kind::Float).double_value(&[]))
        })
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// What one training step learns from.
struct StepBatch<'a> {
    /// The clean faces.
    x: &'a Tensor,
    /// What the encoder sees (`x`, or `x` perturbed under denoising training).
    x_in: &'a Tensor,
    /// Recognizer guidance: the recognizer and the clean faces' unit embeddings.
    identity: Option<(&'a Guidance, &'a Tensor)>,
}

/// One generator and critic update on a batch; returns the losses.
fn train_step(
    models: &mut Models,
    opt_g: &mut nn::Optimizer,
    opt_d: &mut nn::Optimizer,
    batch: StepBatch<'_>,
    objective: Objective,
    h: &Hyper,
) -> Result<Losses> {
    // The critic and the consistency target always see the clean face `x`; the encoder sees
    // `x_in` (the same face, perturbed under denoising training).
    let StepBatch { x, x_in, identity } = batch;
    let x32 = models.generator.downsample(x);
    let cond = objective.conditional().then_some(&x32);
    let (mu, logvar, skip) = models.generator.encode(x_in);
    let skip = if h.skip_noise > 0.0 {
        let scale = skip.std(true).detach() * h.skip_noise;
        &skip + skip.randn_like() * scale
    } else {
        skip
    };
    let z = sample_z(&mu, &logvar, &mu.randn_like());
    let fake = models.generator.decode(&z, &skip);

    models.critic_vs.unfreeze();
    let fake_d = fake.detach();
    let d_real = models.critic.forward(x, cond);
    let d_fake = models.critic.forward(&fake_d, cond);
    let d_wgan = d_fake.mean(Kind::Float) - d_real.mean(Kind::Float);
    let gp = gradient_penalty(&models.critic, x, &fake_d, cond);
    let drift = d_real.square().mean(Kind::Float);
    let d_loss = &d_wgan + &gp * h.gp_weight + &drift * h.drift_weight;
    opt_d.zero_grad();
    d_loss.backward();
    opt_d.step();

    models.critic_vs.freeze();
    let g_adv = -models.critic.forward(&fake, cond).mean(Kind::Float);
    let kl = mean_kl(&mu, &logvar);
    let consistency = if objective.consistency() {
        (models.generator.downsample(&fake) - &x32)
            .square()
            .mean(Kind::Float)
    } else {
        Tensor::zeros([], (Kind::Float, x.device()))
    };
    let identity = match identity {
        Some((guidance, target)) if h.guide.id_weight > 0.0 => {
            guidance.identity_loss(&fake, target)?
        }
        _ => Tensor::zeros([], (Kind::Float, x.device())),
    };
    let g_loss =
        &g_adv + &kl * h.kl_weight + &consistency * h.lambda_c + &identity * h.guide.id_weight;
    opt_g.zero_grad();
    g_loss.backward();
    opt_g.step();

    Ok(Losses {
        d_loss: scalar(&d_loss),
        d_wgan: scalar(&d_wgan),
        gp: scalar(&gp),
        drift: scalar(&drift),
        g_adv: scalar(&g_adv),
        kl: scalar(&kl),
        consistency: scalar(&consistency),
        identity: scalar(&identity),
        g_loss: scalar(&g_loss),
    })
}

fn adam(vs: &nn::VarStore, lr: f64) -> Result<nn::Optimizer> {
    Ok(nn::Adam {
        beta1: 0.0,
        beta2: 0.99,
        wd: 0.0,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(vs, lr)?)
}

/// What a finished [`train`] call did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Step the run started from (0, or the resumed checkpoint's step).
    pub start_step: u64,
    /// Step reached.
    pub end_step: u64,
    /// Mean seconds per training step of this call (sampling and checkpoints excluded).
    pub seconds_per_step: f64,
    /// Device used.
    pub device: String,
}

/// Runs `trainer train`.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    let h = &opts.hyper;
    ensure!(
        h.batch >= 2,
        "--batch {} must be at least 2 (the critic's minibatch statistics need two faces)",
        h.batch
    );
    ensure!(
        opts.ckpt_every > 0 && opts.sample_every > 0,
        "--ckpt-every and --sample-every must be positive"
    );
    let device = opts.device.resolve()?;
    if device == Device::Cpu {
        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
    }
    let mut cfg = Config::preset(&opts.preset)?;
    if let Some(side) = opts.input_size {
        cfg.input_size = side;
    }
    if let Some(side) = opts.skip_detail {
        cfg.skip_detail = side;
    }
    cfg.validate()?;
    fs::create_dir_all(opts.out.join("samples"))
        .with_context(|| format!("cannot create '{}'", opts.out.display()))?;
    let resumed = resumed_run(opts, &cfg)?;
    if let Some(meta) = &resumed {
        // A resumed run keeps its own geometry; a flag asking for another one is an error.
        let keep = |flag: &str, asked: Option<i64>, trained: i64| -> Result<i64> {
            ensure!(
                asked.is_none_or(|s| s == trained),
                "'{}' was trained with {flag} {trained}, not {}",
                opts.out.display(),
                asked.unwrap_or_default()
            );
            Ok(trained)
        };
        cfg.input_size = keep("--input-size", opts.input_size, meta.config.input_size)?;
        cfg.skip_detail = keep("--skip-detail", opts.skip_detail, meta.config.skip_detail)?;
    }
    let start = resumed.as_ref().map_or(0, |m| m.step);
    ensure!(
        start < opts.steps,
        "the run is already at step {start}; ask for more --steps (the total to reach)"
    );
    let mut session = Session::new(opts, cfg, device, resumed.as_ref())?;

    let bar = data::progress_bar(opts.steps, "train");
    bar.set_position(start);
    bar.reset_eta();
    let started = Instant::now();
    let mut train_seconds = 0.0;
    for step in start + 1..=opts.steps {
        let (losses, dt) = session.step(step, started)?;
        train_seconds += dt;
        bar.set_message(format!(
            "D {:.3} G {:.3} KL {:.4} C {:.4} | {:.2} s/step",
            losses.d_loss, losses.g_adv, losses.kl, losses.consistency, dt
        ));
        bar.inc(1);
        let last = step == opts.steps;
        if step % opts.sample_every == 0 || last {
            let psnr = session.sample(step)?;
            bar.suspend(|| {
                eprintln!(
                    "step {step}: D {:.3} G {:.3} KL {:.4} C {:.4}, nearest-of-{SAMPLE_CANDIDATES} \
                     PSNR {psnr:.2} dB, {:.2} s/step",
                    losses.d_loss,
                    losses.g_adv,
                    losses.kl,
                    losses.consistency,
                    train_seconds / (step - start) as f64
                )
            });
        }
        if step % opts.ckpt_every == 0 || last {
            session.checkpoint(step)?;
        }
    }
    bar.finish();
    let steps = (opts.steps - start) as f64;
    Ok(TrainSummary {
        start_step: start,
        end_step: opts.steps,
        seconds_per_step: train_seconds / steps,
        device: format!("{device:?}"),
    })
}

/// The checkpoint metadata of the run in `--out` with `--resume` (checked against the preset
/// and objective asked for); without it, `None`, and an error if `--out` already holds a run.
fn resumed_run(opts: &TrainOptions, cfg: &Config) -> Result<Option<CheckpointMeta>> {
    if opts.resume {
        let meta = CheckpointMeta::read(&opts.out)?;
        ensure!(
            meta.config.name == cfg.name && meta.objective == opts.objective,
            "'{}' was trained with --preset {} --objective {}, not --preset {} --objective {}",
            opts.out.display(),
            meta.config.name,
            meta.objective.label(),
            cfg.name,
            opts.objective.label()
        );
        return Ok(Some(meta));
    }
    if let Ok(meta) = CheckpointMeta::read(&opts.out) {
        bail!(
            "'{}' already holds a run at step {}: pass --resume to continue it, or choose \
             another --out",
            opts.out.display(),
            meta.step
        );
    }
    Ok(None)
}

/// Everything one `trainer train` call steps, samples and checkpoints.
struct Session<'a> {
    opts: &'a TrainOptions,
    cfg: Config,
    models: Models,
    opt_g: nn::Optimizer,
    opt_d: nn::Optimizer,
    loader: BatchLoader,
    probe: Probe,
    denoise_rng: StdRng,
    /// The frozen recognizer of recognizer-guided training (`None`: off).
    guidance: Option<Guidance>,
    history: History,
    log: RunLog,
    /// The crop cache's description and the source commit, for checkpoints.
    dataset: String,
    commit: String,
    /// The bundle the run started from, for checkpoints ([`CheckpointMeta::init`]).
    init: Option<String>,
}

impl<'a> Session<'a> {
    /// Loads the data, builds (or resumes, or initialises from a bundle) the models and
    /// optimisers, and logs the session's start.
    fn new(
        opts: &'a TrainOptions,
        cfg: Config,
        device: Device,
        resumed: Option<&CheckpointMeta>,
    ) -> Result<Self> {
        let h = &opts.hyper;
        let start = resumed.map_or(0, |m| m.step);
        let faces = FaceSet::load(
            &opts.data,
            &opts.data_name,
            usize::try_from(cfg.image_size)?,
        )?;
        let train_idx = faces.indices(Split::Train);
        let probe_idx = faces.fixed_test_faces(SAMPLE_FACES);
        ensure!(
            !probe_idx.is_empty(),
            "the dataset has no test-split faces for the sample grids"
        );
        let dataset = faces.index.describe();
        let guidance = if h.guide.enabled() {
            Some(
                Guidance::load(
                    &opts.recognizer,
                    &faces.index.crop,
                    cfg.image_size,
                    device,
                    &h.guide,
                )
                .context("recognizer-guided training needs the recognizer")?,
            )
        } else {
            None
        };

        tch::manual_seed((h.seed ^ start.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64);
        let mut models = Models::new(&cfg, opts.objective, device)?;
        if let Some(meta) = resumed {
            models.load(&opts.out, meta)?;
        } else if let Some(dir) = &opts.init_bundle {
            models.init_from_bundle(dir, &cfg)?;
        }
        // A run resumed from a checkpoint older than the `init` field keeps what --init-bundle says.
        let init = match (resumed.and_then(|m| m.init.clone()), &opts.init_bundle) {
            (Some(init), _) => Some(init),
            (None, Some(dir)) => Some(describe_bundle(dir)?),
            (None, None) => None,
        };
        let denoise_rng = StdRng::seed_from_u64(h.seed ^ 0xD3_0153 ^ start);
        let mut opt_g = adam(&models.gen_vs, h.lr)?;
        opt_g.set_lr_group(MAPPING_GROUP, h.lr * cfg.mapping_lr_mul);
        let opt_d = adam(&models.critic_vs, h.lr)?;

        let loader = BatchLoader::new(
            &faces.select(&train_idx),
            device,
            h.seed.wrapping_add(start),
        )?;
        let probe = Probe {
            faces: data::to_unit_range(&faces.select(&probe_idx)).to_device(device),
            eps: None,
            seed: h.seed,
        };
        drop(faces);
        let mut history = History::default();
        let mut log = RunLog::open(&opts.out, resumed.map(|m| m.step), &mut history)?;
        log.write(
            &json!({
                "kind": "start", "step": start, "preset": cfg.name, "objective": opts.objective.label(),
                "device": format!("{device:?}"), "threads": tch::get_num_threads(),
                "generator_params": models.generator.num_params(), "hyper": h, "dataset": dataset,
                "unix": now_unix(),
            }),
            &mut history,
        )?;
        Ok(Self {
            opts,
            cfg,
            models,
            opt_g,
            opt_d,
            loader,
            probe,
            denoise_rng,
            guidance,
            history,
            log,
            dataset,
            commit: source_commit(),
            init,
        })
    }

    /// One training step (batch, denoising perturbation, update, EMA), logged; returns its
    /// losses and seconds.
    fn step(&mut self, step: u64, started: Instant) -> Result<(Losses, f64)> {
        let h = &self.opts.hyper;
        let t0 = Instant::now();
        let x = self.loader.next_batch(h.batch);
        let family = h.denoise.draw(&h.guide, &mut self.denoise_rng);
        // The clean faces' embeddings: the identity loss's target and the recognizer attack's.
        let needs_target = h.guide.id_weight > 0.0 || family == Family::Recognizer;
        let target = match &self.guidance {
            Some(g) if needs_target => Some(tch::no_grad(|| g.embed(&x))?),
            _ => None,
        };
        let guided = self.guidance.as_ref().zip(target.as_ref());
        let x_in = h.denoise.perturb(
            family,
            &x,
            &self.models.generator,
            guided,
            &mut self.denoise_rng,
        )?;
        let losses = train_step(
            &mut self.models,
            &mut self.opt_g,
            &mut self.opt_d,
            StepBatch {
                x: &x,
                x_in: &x_in,
                identity: guided,
            },
            self.opts.objective,
            h,
        )?;
        self.models.update_ema(h.ema_decay, step);
        let dt = t0.elapsed().as_secs_f64();
        ensure!(
            losses.d_loss.is_finite() && losses.g_loss.is_finite(),
            "losses diverged at step {step} (critic {}, generator {}); resume from the last \
             checkpoint with a lower --lr",
            losses.d_loss,
            losses.g_loss
        );
        self.log.write(
            &json!({
                "kind": "train", "step": step, "d_loss": losses.d_loss, "d_wgan": losses.d_wgan,
                "gp": losses.gp, "drift": losses.drift, "g_adv": losses.g_adv, "kl": losses.kl,
                "consistency": losses.consistency, "identity": losses.identity,
                "g_loss": losses.g_loss, "s_per_step": dt,
                "denoise": family.index(),
                "elapsed_s": started.elapsed().as_secs_f64(),
            }),
            &mut self.history,
        )?;
        Ok((losses, dt))
    }

    /// Writes the sample grid of `step` and the loss curves; returns the probe PSNR.
    fn sample(&mut self, step: u64) -> Result<f64> {
        let out = &self.opts.out;
        let t = Instant::now();
        let grid = out.join("samples").join(format!("step-{step:08}.png"));
        let psnr = self.probe.sample(&self.models, &grid)?;
        self.log.write(
            &json!({"kind": "sample", "step": step, "psnr_nearest": psnr,
                    "file": grid.strip_prefix(out).unwrap_or(&grid), "s": t.elapsed().as_secs_f64()}),
            &mut self.history,
        )?;
        let tmp = out.join("loss-curves.tmp.png");
        plot::loss_curves(
            &tmp,
            &self.history.panels(self.opts.objective.consistency()),
        )?;
        fs::rename(&tmp, out.join(CURVES_FILE))
            .with_context(|| format!("cannot replace '{}'", out.join(CURVES_FILE).display()))?;
        Ok(psnr)
    }

    /// Saves the checkpoint of `step` (keeping the newest `--keep-checkpoints`).
    fn checkpoint(&mut self, step: u64) -> Result<()> {
        let t = Instant::now();
        let meta = CheckpointMeta {
            format_version: CHECKPOINT_FORMAT_VERSION,
            step,
            dir: format!("ckpt-{step:08}"),
            config: self.cfg.clone(),
            objective: self.opts.objective,
            hyper: self.opts.hyper.clone(),
            dataset: self.dataset.clone(),
            created_unix: now_unix(),
            commit: self.commit.clone(),
            init: self.init.clone(),
        };
        save_checkpoint(
            &self.opts.out,
            &self.models,
            &meta,
            self.opts.keep_checkpoints,
        )?;
        self.log.write(
            &json!({"kind": "checkpoint", "step": step, "dir": meta.dir, "s": t.elapsed().as_secs_f64()}),
            &mut self.history,
        )
    }
}

/// Provenance entries of a bundle exported from `meta` (docs/CONTRACT.md).
pub fn provenance(meta: &CheckpointMeta) -> BTreeMap<String, serde_json::Value> {
    let mut provenance = BTreeMap::from([
        ("dataset".to_owned(), json!(meta.dataset)),
        ("steps".to_owned(), json!(meta.step)),
        ("objective".to_owned(), json!(meta.objective.label())),
        ("commit".to_owned(), json!(meta.commit)),
        ("created".to_owned(), json!(utc_timestamp(now_unix()))),
        (
            "trainer".to_owned(),
            json!(concat!("avae-trainer ", env!("CARGO_PKG_VERSION"))),
        ),
    ]);
    if let Some(init) = &meta.init {
        provenance.insert("init".to_owned(), json!(init));
    }
    if meta.config.skip_detail != crate::config::SKIP_SIZE {
        // The graphs' interface is the same either way; the generator rebuilt from a bundle
        // (attack::generator_from_bundle) reads it here.
        provenance.insert("skip_detail".to_owned(), json!(meta.config.skip_detail));
    }
    provenance
}

/// `--init-bundle DIR` as the run's `init`: the folder and what its own provenance says.
fn describe_bundle(dir: &Path) -> Result<String> {
    let bundle = gstavaepurify::bundle::Bundle::load(dir)
        .with_context(|| format!("--init-bundle '{}'", dir.display()))?;
    let field = |key: &str| {
        bundle.manifest.provenance.get(key).map_or_else(
            || "?".to_owned(),
            |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned),
        )
    };
    Ok(format!(
        "the generator of the bundle '{}' ({} steps of objective {}, trainer commit {})",
        dir.display(),
        field("steps"),
        field("objective"),
        field("commit")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_622_948), "2026-11-25T16:09:08Z");
    }

    #[test]
    fn mean_kl_matches_hand_values() {
        let mu = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
        let lv = Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]);
        // dims: 0 and 0.5*(1 + 1 - 1 - 0) = 0.5 -> mean 0.25
        assert!((scalar(&mean_kl(&mu, &lv)) - 0.25).abs() < 1e-6);
        let lv2 = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]);
        let expected =
            (0.5 * (std::f64::consts::E - 2.0) + 0.5 * (1.0 + std::f64::consts::E - 2.0)) / 2.0;
        assert!((scalar(&mean_kl(&mu, &lv2)) - expected).abs() < 1e-5);
    }

    #[test]
    fn gradient_penalty_is_positive_and_reaches_the_critic() {
        let cfg = Config::tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let critic = Discriminator::new(&vs.root(), &cfg, false);
        let real = Tensor::rand([4, 3, 64, 64], (Kind::Float, Device::Cpu));
        let fake = Tensor::rand([4, 3, 64, 64], (Kind::Float, Device::Cpu));
        let gp = gradient_penalty(&critic, &real, &fake, None);
        assert!(scalar(&gp) > 0.0);
        gp.backward();
        let grads: f64 = vs
            .trainable_variables()
            .iter()
            .map(|v| v.grad())
            .filter(Tensor::defined)
            .map(|g| scalar(&g.abs().sum(Kind::Float)))
            .sum();
        assert!(grads > 0.0, "the penalty must reach the critic's weights");
    }

    #[test]
    fn ema_follows_the_generator() {
        let cfg = Config::tiny();
        let mut models = Models::new(&cfg, Objective::A, Device::Cpu).unwrap();
        let (e, g) = (
            models.ema_pairs[0].0.shallow_clone(),
            models.ema_pairs[0].1.shallow_clone(),
        );
        tch::no_grad(|| {
            let _ = g.shallow_clone().fill_(1.0);
            let _ = e.shallow_clone().fill_(0.0);
        });
        models.update_ema(0.5, 1000);
        assert!((scalar(&e.mean(Kind::Float)) - 0.5).abs() < 1e-6);
    }
}

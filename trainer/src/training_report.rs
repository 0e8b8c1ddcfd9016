//! `trainer report`: the training report written beside a shipped bundle (`REPORT.md` and its
//! figures): configuration, objective, steps, wall time, machine, final losses, loss curves, a
//! sample grid and a before/after grid of test faces, the quality figures of [`crate::quality`],
//! and the commands that produced all of it.
//!
//! The grids and the quality figures go through the plugin's [`Purifier`] on the bundle, so they
//! show what the element outputs, on test-split faces (people of LFW fold 1, never trained on).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::ValueEnum;
use gstavaepurify::core::image::area_downsample;
use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::purifier::{Purifier, PurifyParams};
use ndarray::{Array3, ArrayView3, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use tch::{Tensor, nn};

use crate::config::Config;
use crate::data::{self, CropSpec, FaceSet};
use crate::model::{AVae, Discriminator};
use crate::plot;
use crate::quality::{self, DECODE_BATCH, DEFAULT_SAMPLES, NOISE_EPS, QualityReport};
use crate::train::{self, CURVES_FILE, CheckpointMeta, LOG_FILE, Objective};

/// Logged training steps averaged for the "final losses".
pub const FINAL_WINDOW: usize = 100;
/// Test faces (rows) of the sample grid and faces (columns) of the before/after grid.
pub const GRID_FACES: usize = 8;
/// Candidates shown per face in the sample grid.
pub const GRID_CANDIDATES: usize = 8;
/// File names written beside the report.
pub const SAMPLES_FILE: &str = "samples.png";
/// Before/after grid for the README.
pub const BEFORE_AFTER_FILE: &str = "before-after.png";
/// Quality figures as JSON.
pub const QUALITY_FILE: &str = "quality.json";
/// Limit on the bundle folder (bundle plus report) from the trainer issue.
pub const FOLDER_LIMIT_BYTES: u64 = 50 * 1024 * 1024;
/// Per-step values of `log.jsonl` averaged in the final losses, with what they are.
const LOSS_KEYS: [(&str, &str); 9] = [
    (
        "d_loss",
        "critic loss: WGAN term + 10 x gradient penalty + 0.001 x drift",
    ),
    ("d_wgan", "WGAN term D(fake) - D(real)"),
    ("gp", "gradient penalty (unweighted)"),
    ("drift", "drift D(real)^2 (unweighted)"),
    ("g_adv", "generator adversarial loss -D(fake)"),
    ("kl", "mean KL per latent dimension"),
    ("consistency", "32x32 consistency MSE (unweighted)"),
    (
        "identity",
        "identity loss 1 - cos(R(output), R(clean face)) of the recognizer (unweighted)",
    ),
    ("g_loss", "generator total loss"),
];

/// What `trainer report` was asked to do.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Run folder written by `trainer train`.
    pub run: PathBuf,
    /// Bundle folder written by `trainer export` from that run.
    pub bundle: PathBuf,
    /// Markdown file to write; the figures go to the same folder.
    pub out: PathBuf,
    /// Folder of the crop cache.
    pub data: PathBuf,
    /// Name prefix of the crop cache.
    pub data_name: String,
    /// Test faces for the quality figures.
    pub faces: usize,
    /// Seed of the noise and latent draws.
    pub seed: u64,
    /// Inference backend (on the CPU).
    pub backend: Backend,
    /// The command line that asked for the report, quoted into it.
    pub command_line: String,
}

/// One `trainer train` invocation as recorded in `log.jsonl` (a run resumed n times has n + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Step the session started from.
    pub start_step: u64,
    /// Last step it logged.
    pub end_step: u64,
    /// Its wall-clock seconds from the first step to its last logged step (sampling and
    /// checkpoints included).
    pub wall_seconds: f64,
    /// Seconds spent in training steps only.
    pub step_seconds: f64,
    /// libtorch device.
    pub device: String,
    /// libtorch CPU threads.
    pub threads: i64,
    /// Unix time the session started.
    pub start_unix: u64,
}

/// What `log.jsonl` says about a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunHistory {
    /// Training sessions in order.
    pub sessions: Vec<Session>,
    /// Mean of each of the loss keys over the last logged steps (key, value).
    pub final_losses: Vec<(String, f64)>,
    /// First and last step of the final-loss window.
    pub final_window: (u64, u64),
    /// The last sample-grid PSNR: (step, nearest-of-8 PSNR in dB on the fixed test faces).
    pub last_probe_psnr: Option<(u64, f64)>,
}

impl RunHistory {
    /// Total wall-clock seconds over all sessions.
    pub fn wall_seconds(&self) -> f64 {
        self.sessions.iter().map(|s| s.wall_seconds).sum()
    }

    /// Total seconds spent in training steps.
    pub fn step_seconds(&self) -> f64 {
        self.sessions.iter().map(|s| s.step_seconds).sum()
    }

    /// Training steps logged over all sessions.
    pub fn steps(&self) -> u64 {
        self.sessions
            .iter()
            .map(|s| s.end_step - s.start_step)
            .sum()
    }
}

/// Reads `<run>/log.jsonl` up to step `last_step` (the checkpoint's: a running or killed run logs
/// steps past its last checkpoint, which a resume drops); lines that are not JSON are skipped.
pub fn read_history(run: &Path, last_step: u64) -> Result<RunHistory> {
    let path = run.join(LOG_FILE);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut history = RunHistory::default();
    let mut steps: Vec<Value> = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let step = v["step"].as_u64().unwrap_or(0);
        if step > last_step {
            continue;
        }
        match v["kind"].as_str() {
            Some("start") => history.sessions.push(Session {
                start_step: step,
                end_step: step,
                wall_seconds: 0.0,
                step_seconds: 0.0,
                device: v["device"].as_str().unwrap_or("?").to_owned(),
                threads: v["threads"].as_i64().unwrap_or(0),
                start_unix: v["unix"].as_u64().unwrap_or(0),
            }),
            Some("train") => {
                if let Some(session) = history.sessions.last_mut() {
                    session.end_step = step;
                    session.wall_seconds = session
                        .wall_seconds
                        .max(v["elapsed_s"].as_f64().unwrap_or(0.0));
                    session.step_seconds += v["s_per_step"].as_f64().unwrap_or(0.0);
                }
                steps.push(v);
            }
            Some("sample") => {
                if let Some(p) = v["psnr_nearest"].as_f64() {
                    history.last_probe_psnr = Some((step, p));
                }
            }
            _ => {}
        }
    }
    ensure!(
        !steps.is_empty(),
        "'{}' has no training steps logged",
        path.display()
    );
    let window = &steps[steps.len().saturating_sub(FINAL_WINDOW)..];
    history.final_window = (
        window[0]["step"].as_u64().unwrap_or(0),
        window[window.len() - 1]["step"].as_u64().unwrap_or(0),
    );
    history.final_losses = LOSS_KEYS
        .iter()
        .map(|(k, _)| {
            let values: Vec<f64> = window.iter().filter_map(|v| v[*k].as_f64()).collect();
            let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
            ((*k).to_owned(), mean)
        })
        .collect();
    Ok(history)
}

/// The machine the report is written on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Logical CPUs available to the process (`nproc`).
    pub cpus: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Total memory in GiB from `/proc/meminfo`.
    pub memory_gib: f64,
}

/// Describes this machine from `/proc` (fields read as "unknown"/0 where `/proc` is missing).
pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_gib: kib / (1024.0 * 1024.0),
    }
}

/// Generator (encoder + mapping + decoder) and critic parameter counts of `cfg`.
fn param_counts(cfg: &Config, objective: Objective) -> (i64, i64) {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let generator = AVae::new(&vs.root(), cfg).num_params();
    let critic_vs = nn::VarStore::new(tch::Device::Cpu);
    let _critic = Discriminator::new(&critic_vs.root(), cfg, objective.conditional());
    let critic = critic_vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64;
    (generator, critic)
}

/// Faces `[3, S, S]` stacked into a grid column `[R, 3, S, S]`.
fn column(faces: &[ArrayView3<'_, f32>]) -> Result<Tensor> {
    let first = faces.first().context("a grid column needs faces")?;
    let (c, h, w) = first.dim();
    let values: Vec<f32> = faces.iter().flat_map(|f| f.iter().copied()).collect();
    ensure!(
        values.len() == faces.len() * c * h * w,
        "grid faces differ in size"
    );
    Ok(Tensor::from_slice(&values).view([faces.len() as i64, c as i64, h as i64, w as i64]))
}

/// Views of owned faces, for [`column`].
fn views(faces: &[Array3<f32>]) -> Vec<ArrayView3<'_, f32>> {
    faces.iter().map(|f| f.view()).collect()
}

/// The encoder's 32x32 view of a face, shown at the face's size (nearest neighbour).
fn low_res_view(face: ArrayView3<'_, f32>, factor: usize) -> Array3<f32> {
    let low = area_downsample(face, factor);
    Array3::from_shape_fn(face.raw_dim(), |(c, y, x)| low[[c, y / factor, x / factor]])
}

/// Total size of the regular files directly inside `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What `trainer report` wrote.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    /// The markdown file.
    pub path: PathBuf,
    /// The figures and JSON written beside it.
    pub files: Vec<PathBuf>,
    /// The quality figures included.
    pub quality: QualityReport,
    /// Size of the report's folder after writing, in bytes.
    pub folder_bytes: u64,
}

/// Writes the two grids of the report (module docs) for `faces` and returns their paths.
fn write_grids(
    purifier: &mut Purifier,
    faces: &ndarray::Array4<f32>,
    params: &PurifyParams,
    seed: u64,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let s = purifier.image_size();
    let factor = (s / purifier.bundle().manifest.encoder_input_size.max(1)).max(1);
    let shown = GRID_CANDIDATES.min(params.samples);
    let mut noise_rng = StdRng::seed_from_u64(seed);
    let (mut lows, mut candidates, mut nearest, mut noisy, mut noisy_nearest) =
        (vec![], vec![vec![]; shown], vec![], vec![], vec![]);
    for (i, face) in faces.outer_iter().enumerate() {
        let out = quality::purify_face(
            purifier,
            face,
            params,
            &mut quality::face_rng(seed, i, false),
        )?;
        lows.push(low_res_view(face, factor));
        for (k, col) in candidates.iter_mut().enumerate() {
            col.push(out.candidates.index_axis(Axis(0), k).to_owned());
        }
        nearest.push(out.nearest);
        let n = quality::random_sign_noise(face, NOISE_EPS, &mut noise_rng);
        let out = quality::purify_face(
            purifier,
            n.view(),
            params,
            &mut quality::face_rng(seed, i, true),
        )?;
        noisy.push(n);
        noisy_nearest.push(out.nearest);
    }
    let inputs: Vec<ArrayView3<'_, f32>> = faces.outer_iter().collect();
    let mut columns = vec![column(&inputs)?, column(&views(&lows))?];
    for col in &candidates {
        columns.push(column(&views(col))?);
    }
    columns.push(column(&views(&nearest))?);
    let last = columns.len() - 1;
    let samples = dir.join(SAMPLES_FILE);
    plot::face_grid(
        &samples,
        &columns,
        &[
            (0, "input"),
            (1, "32x32"),
            (2, &format!("{shown} of the {} candidates", params.samples)),
            (last, "nearest"),
        ],
        &[1, last - 1],
    )?;

    // Before/after: one column per face, rows input / purified / noisy / purified noisy, at 2x.
    let before_after = dir.join(BEFORE_AFTER_FILE);
    let mut face_columns = Vec::with_capacity(faces.dim().0);
    for (i, face) in faces.outer_iter().enumerate() {
        let rows = [
            face,
            nearest[i].view(),
            noisy[i].view(),
            noisy_nearest[i].view(),
        ];
        let side = 2 * s as i64;
        face_columns.push(column(&rows)?.upsample_nearest2d([side, side], None, None));
    }
    plot::face_grid(
        &before_after,
        &face_columns,
        &[(
            0,
            &format!(
                "rows: test face | purified (nearest of {m}) | + 8/255 random-sign noise | purified",
                m = params.samples
            ),
        )],
        &[],
    )?;
    Ok((samples, before_after))
}

/// The `trainer prepare` command that makes a cache like `set`'s.
fn prepare_command(set: &FaceSet, data: &Path, name: &str) -> String {
    let source = Path::new(&set.index.source);
    let dataset = if source.ends_with("lfw-deepfunneled") {
        source.parent().unwrap_or(source)
    } else {
        source
    };
    let mut cmd = format!(
        "trainer prepare --data {} --size {} --out {} --name {name}",
        dataset.display(),
        set.index.size,
        data.display()
    );
    let crop = set.index.crop;
    if crop != CropSpec::default() {
        let _ = write!(
            cmd,
            " --crop-center-x {} --crop-center-y {} --crop-side {}",
            crop.center_x, crop.center_y, crop.side
        );
    }
    cmd
}

/// Writes the report (module docs).
pub fn write_report(opts: &ReportOptions) -> Result<ReportSummary> {
    ensure!(opts.faces > 0, "--faces must be at least 1");
    let meta = CheckpointMeta::read(&opts.run)?;
    let history = read_history(&opts.run, meta.step)?;
    let mut purifier = Purifier::load(&opts.bundle, opts.backend, Device::Cpu)
        .with_context(|| format!("cannot load the bundle '{}'", opts.bundle.display()))?;
    let size = purifier.image_size();
    ensure!(
        i64::try_from(size).ok() == Some(meta.config.image_size),
        "the bundle '{}' has S = {size} but the run '{}' trains S = {}",
        opts.bundle.display(),
        opts.run.display(),
        meta.config.image_size
    );
    let dir = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let mut files = Vec::new();

    let curves_src = opts.run.join(CURVES_FILE);
    let curves = dir.join(CURVES_FILE);
    let have_curves = curves_src.is_file();
    if have_curves {
        fs::copy(&curves_src, &curves).with_context(|| {
            format!(
                "cannot copy '{}' to '{}'",
                curves_src.display(),
                curves.display()
            )
        })?;
        files.push(curves.clone());
    }

    let set = FaceSet::load(&opts.data, &opts.data_name, size)?;
    let grid_faces = quality::test_faces(&set, GRID_FACES)?;
    let quality_faces = quality::test_faces(&set, opts.faces)?;
    let prepare_cmd = prepare_command(&set, &opts.data, &opts.data_name);
    let test_counts = (
        set.index.counts.test_identities,
        set.index.counts.test_images,
    );
    drop(set);

    let params = PurifyParams {
        samples: DEFAULT_SAMPLES,
        batch: DECODE_BATCH,
        tau: purifier.default_tau(),
    };
    let (samples, before_after) =
        write_grids(&mut purifier, &grid_faces, &params, opts.seed, &dir)?;
    files.push(samples);
    files.push(before_after);

    let q = quality::measure_faces(
        &mut purifier,
        &opts.bundle,
        quality_faces.view(),
        &params,
        opts.seed,
    )?;
    let quality_json = dir.join(QUALITY_FILE);
    q.write_json(&quality_json)?;
    files.push(quality_json);

    let markdown = render(&RenderInput {
        opts,
        meta: &meta,
        history: &history,
        purifier: &purifier,
        quality: &q,
        have_curves,
        prepare_cmd: &prepare_cmd,
        test_counts,
        machine: &machine(),
    })?;
    data::write_atomic(&opts.out, markdown.as_bytes())?;
    let bytes = folder_bytes(&dir);
    if bytes > FOLDER_LIMIT_BYTES {
        eprintln!(
            "warning: '{}' holds {:.1} MB, over the {} MB limit for a shipped bundle",
            dir.display(),
            bytes as f64 / 1e6,
            FOLDER_LIMIT_BYTES / (1024 * 1024)
        );
    }
    Ok(ReportSummary {
        path: opts.out.clone(),
        files,
        quality: q,
        folder_bytes: bytes,
    })
}

/// Everything the markdown is made from.
struct RenderInput<'a> {
    opts: &'a ReportOptions,
    meta: &'a CheckpointMeta,
    history: &'a RunHistory,
    purifier: &'a Purifier,
    quality: &'a QualityReport,
    have_curves: bool,
    prepare_cmd: &'a str,
    test_counts: (usize, usize),
    machine: &'a Machine,
}

/// `seconds` as `1 h 02 min`, `21 min` or `42.0 s`.
fn duration(seconds: f64) -> String {
    let minutes = (seconds / 60.0).round() as u64;
    if minutes >= 60 {
        format!("{} h {:02} min", minutes / 60, minutes % 60)
    } else if seconds >= 60.0 {
        format!("{minutes} min")
    } else {
        format!("{seconds:.1} s")
    }
}

/// Writes a two-column markdown table without a header row, and a blank line after it.
fn key_value_table(w: &mut String, rows: &[(&str, String)]) {
    let _ = writeln!(w, "| | |\n|---|---|");
    for (key, value) in rows {
        let _ = writeln!(w, "| {key} | {value} |");
    }
    let _ = writeln!(w);
}

/// `bytes` as `12.3 MB` or `4.5 kB`.
fn file_size(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} kB", bytes as f64 / 1e3)
    }
}

/// What each objective variant trains, for the report.
fn objective_text(objective: Objective) -> &'static str {
    match objective {
        Objective::A => {
            "(a) the paper's objective as is: mean KL + WGAN-GP adversarial loss with an \
             unconditional critic, no pixel loss"
        }
        Objective::B => {
            "(b) mean KL + WGAN-GP with a conditional critic that judges the output together with \
             the 32x32 input"
        }
        Objective::C => {
            "(c) the paper's objective plus a consistency loss between the 32x32 downsample of \
             the output and the 32x32 input"
        }
        Objective::Bc => {
            "(b) + (c): a conditional critic that judges the output together with the 32x32 \
             input, plus a consistency loss between the 32x32 downsample of the output and the \
             32x32 input; still no full-resolution pixel loss"
        }
    }
}

fn render(r: &RenderInput<'_>) -> Result<String> {
    let sizes = bundle_file_sizes(&r.opts.bundle)?;
    let mut md = String::new();
    render_intro(&mut md, r);
    render_model(&mut md, r, &sizes)?;
    render_objective(&mut md, r);
    render_training(&mut md, r);
    render_final_losses(&mut md, r);
    render_quality(&mut md, r);
    render_commands(&mut md, r);
    Ok(md)
}

/// The `.onnx` files and the manifest of the bundle folder `dir`, with their sizes, by name.
fn bundle_file_sizes(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<(String, u64)> = fs::read_dir(dir)
        .with_context(|| format!("cannot list '{}'", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| {
            let len = e.metadata().map_or(0, |m| m.len());
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .filter(|(name, _)| name.ends_with(".onnx") || name == "manifest.json")
        .collect();
    files.sort();
    let sizes: Vec<String> = files
        .iter()
        .map(|(name, len)| format!("`{name}` {}", file_size(*len)))
        .collect();
    Ok(sizes)
}

/// Title, provenance and the warning when the bundle is not from the run's latest checkpoint.
fn render_intro(w: &mut String, r: &RenderInput<'_>) {
    let (opts, meta) = (r.opts, r.meta);
    let bundle_steps = r
        .purifier
        .bundle()
        .manifest
        .provenance
        .get("steps")
        .and_then(Value::as_u64);
    let _ = writeln!(w, "# Training report: `{}`\n", opts.bundle.display());
    let _ = writeln!(
        w,
        "Written by `trainer report` on {} from the run `{}` (checkpoint step {}) and the bundle \
         exported from it. Every figure below was produced through the plugin's own purifier \
         (`Purifier`, {}) on the bundle, on test faces: people of LFW fold 1 ({} identities, {} \
         images), never trained on. The commands are at the end.\n",
        train::utc_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
        opts.run.display(),
        meta.step,
        r.quality.backend,
        r.test_counts.0,
        r.test_counts.1
    );
    if bundle_steps != Some(meta.step) {
        let _ = writeln!(
            w,
            "**Warning:** the bundle's provenance says {} steps, the run's latest checkpoint is \
             step {}: the bundle was not exported from this checkpoint.\n",
            bundle_steps.map_or_else(|| "no".to_owned(), |s| s.to_string()),
            meta.step
        );
    }
    let init = r.purifier.bundle().manifest.provenance.get("init");
    if let Some(init) = init.and_then(Value::as_str) {
        let _ = writeln!(w, "**Fine-tuned:** the run started from {init}.\n");
    }
}

/// The model's sizes, in rows of the Model table.
fn model_rows(r: &RenderInput<'_>, sizes: &[String]) -> Vec<(&'static str, String)> {
    let cfg = &r.meta.config;
    let manifest = &r.purifier.bundle().manifest;
    let (gen_params, critic_params) = param_counts(cfg, r.meta.objective);
    vec![
        ("preset", format!("`{}`", cfg.name)),
        ("face size S", format!("{0} x {0}", cfg.image_size)),
        (
            "latent",
            format!(
                "{} x 4 x 4 = {} values",
                cfg.latent_channels,
                cfg.latent_dim()
            ),
        ),
        (
            "encoder widths (32, 16, 8, 4 px)",
            format!("{:?}", cfg.enc_channels),
        ),
        (
            "mapping network",
            format!(
                "{} layers, w = {}, learning rate x {}",
                cfg.mapping_layers, cfg.w_dim, cfg.mapping_lr_mul
            ),
        ),
        (
            "decoder widths (4 px to S)",
            format!("{:?}", cfg.dec_channels),
        ),
        (
            "critic widths (S to 4 px)",
            format!(
                "{:?}, minibatch stddev {}",
                cfg.disc_channels, cfg.minibatch_stddev
            ),
        ),
        (
            "parameters",
            format!(
                "generator (encoder + mapping + decoder, what ships) {gen_params}; critic \
                 {critic_params}"
            ),
        ),
        (
            "decoding one candidate",
            format!("{:.3} GFLOP", manifest.decoder_flops as f64 / 1e9),
        ),
        ("default KL clip tau", manifest.tau.to_string()),
        ("bundle files", sizes.join(", ")),
    ]
}

/// The Model section: sizes and the checkpoint's config.
fn render_model(w: &mut String, r: &RenderInput<'_>, sizes: &[String]) -> Result<()> {
    let cfg = &r.meta.config;
    let _ = writeln!(w, "## Model\n");
    key_value_table(w, &model_rows(r, sizes));
    let _ = writeln!(
        w,
        "<details><summary>Config as stored in the checkpoint</summary>\n\n```json\n{}\n```\n\n</details>\n",
        serde_json::to_string_pretty(cfg)?
    );
    Ok(())
}

/// The Objective and hyper-parameters section.
fn render_objective(w: &mut String, r: &RenderInput<'_>) {
    let (meta, cfg) = (r.meta, &r.meta.config);
    let hy = &meta.hyper;
    let _ = writeln!(w, "## Objective and hyper-parameters\n");
    let _ = writeln!(
        w,
        "Objective `{}`: {}.\n",
        meta.objective.label(),
        objective_text(meta.objective)
    );
    let mut rows = vec![
        ("batch", hy.batch.to_string()),
        (
            "Adam",
            format!(
                "lr {}, betas (0, 0.99); mapping network lr x {}",
                hy.lr, cfg.mapping_lr_mul
            ),
        ),
        ("KL weight", hy.kl_weight.to_string()),
    ];
    if meta.objective.consistency() {
        rows.push(("consistency weight", hy.lambda_c.to_string()));
    }
    rows.extend([
        (
            "WGAN-GP",
            format!(
                "gradient penalty {}, drift {}",
                hy.gp_weight, hy.drift_weight
            ),
        ),
        (
            "EMA decay of the shipped generator",
            hy.ema_decay.to_string(),
        ),
        ("seed", hy.seed.to_string()),
    ]);
    if hy.denoise.enabled() {
        rows.push((
            "denoising training",
            format!(
                "p = {} of the steps perturb the encoder's input (L-inf up to {}/255); families \
                 sign noise, blur, JPEG, encoder attack{}",
                hy.denoise.p,
                hy.denoise.eps_255,
                if hy.guide.attack_share > 0.0 {
                    format!(
                        ", and on {:.0}% of the perturbed steps a {}-step PGD against the \
                         recognizer",
                        100.0 * hy.guide.attack_share,
                        hy.guide.attack_steps
                    )
                } else {
                    String::new()
                }
            ),
        ));
    }
    if hy.skip_noise > 0.0 {
        rows.push((
            "skip noise",
            format!("{} x the skip feature's standard deviation", hy.skip_noise),
        ));
    }
    if hy.guide.id_weight > 0.0 {
        rows.push((
            "identity weight (recognizer guidance)",
            hy.guide.id_weight.to_string(),
        ));
    }
    key_value_table(w, &rows);
}

/// The Training section: steps, data, time, sessions and machine.
fn render_training(w: &mut String, r: &RenderInput<'_>) {
    let (meta, h) = (r.meta, r.history);
    let _ = writeln!(w, "## Training\n");
    let m = r.machine;
    let mut rows = vec![
        ("steps reached", meta.step.to_string()),
        ("dataset", meta.dataset.clone()),
        (
            "wall time",
            format!(
                "{} over {} session(s) (from `log.jsonl`: first to last step of each session, \
                 sample grids and checkpoints included)",
                duration(h.wall_seconds()),
                h.sessions.len()
            ),
        ),
        (
            "time in training steps",
            format!(
                "{} ({:.2} s per step over {} steps)",
                duration(h.step_seconds()),
                h.step_seconds() / h.steps().max(1) as f64,
                h.steps()
            ),
        ),
    ];
    let sessions: Vec<String> = h
        .sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "#{}: steps {}..{} from {}, {} with {} thread(s), {}",
                i + 1,
                s.start_step + 1,
                s.end_step,
                train::utc_timestamp(s.start_unix),
                s.device,
                s.threads,
                duration(s.wall_seconds)
            )
        })
        .collect();
    rows.push(("sessions", sessions.join("<br>")));
    rows.extend([
        (
            "machine (where this report was written)",
            format!(
                "{} CPUs ({}), {:.1} GiB memory",
                m.cpus, m.cpu_model, m.memory_gib
            ),
        ),
        ("source commit", format!("`{}`", meta.commit)),
    ]);
    key_value_table(w, &rows);
}

/// Final losses, the last probe PSNR and the loss curves.
fn render_final_losses(w: &mut String, r: &RenderInput<'_>) {
    let (meta, h) = (r.meta, r.history);
    let _ = writeln!(
        w,
        "### Final losses (mean of the last {} logged steps, {}..{})\n",
        FINAL_WINDOW.min(h.steps().max(1) as usize),
        h.final_window.0,
        h.final_window.1
    );
    let _ = writeln!(w, "| value | mean | what |\n|---|---:|---|");
    for ((key, value), (_, what)) in h.final_losses.iter().zip(LOSS_KEYS) {
        if key == "consistency" && !meta.objective.consistency() {
            continue;
        }
        if key == "identity" && meta.hyper.guide.id_weight <= 0.0 {
            continue;
        }
        let _ = writeln!(w, "| `{key}` | {value:.4} | {what} |");
    }
    if let Some((step, psnr)) = h.last_probe_psnr {
        let _ = writeln!(
            w,
            "\nAt step {step} the training probe (nearest of 8 candidates on 8 fixed test faces, \
             EMA model in tch, the same PSNR as below) measured {psnr:.2} dB."
        );
    }
    let _ = writeln!(w);
    if r.have_curves {
        let _ = writeln!(w, "### Loss curves\n\n![loss curves]({CURVES_FILE})\n");
    }
}

/// The before/after and sample grids and the quality table.
fn render_quality(w: &mut String, r: &RenderInput<'_>) {
    let q = r.quality;
    let _ = writeln!(w, "## Test faces before and after purification\n");
    let _ = writeln!(
        w,
        "![before and after]({BEFORE_AFTER_FILE})\n\n{GRID_FACES} test faces (columns, shown at \
         2x). Rows: the face as cropped for the model; the element's output (nearest of {} \
         candidates, tau {}); the face with 8/255 random-sign noise; the output for that noisy \
         face.\n",
        q.samples, q.tau
    );
    let _ = writeln!(
        w,
        "![samples]({SAMPLES_FILE})\n\nThe same faces, one per row: input | the 32x32 \
         downsample the encoder sees (shown at S) | the first {GRID_CANDIDATES} of the {} \
         candidates | the nearest of all {}, which is what the element outputs.\n",
        q.samples, q.samples
    );

    let _ = writeln!(w, "## Quality\n");
    let _ = writeln!(
        w,
        "Measured by the same code as `trainer quality` (also in [`{QUALITY_FILE}`]({QUALITY_FILE})), \
         at the element's defaults (M = {}, tau = the bundle's {}), on {} test faces of \
         distinct people, in {:.0} s.\n",
        q.samples, q.tau, q.faces, q.seconds
    );
    let _ = writeln!(w, "```text\n{}```\n", q.table());
    let _ = writeln!(
        w,
        "Does sampling make a difference? {}\n",
        q.sampling_verdict()
    );
}

/// The commands that reproduce the run, the bundle and this report.
fn render_commands(w: &mut String, r: &RenderInput<'_>) {
    let (opts, meta, q) = (r.opts, r.meta, r.quality);
    let (cfg, hy) = (&meta.config, &meta.hyper);
    let _ = writeln!(w, "## Commands\n");
    let _ = writeln!(
        w,
        "The training command is reconstructed from the checkpoint (a resumed session adds \
         `--resume`); `trainer` is `cargo run --release -p avae-trainer --`.\n"
    );
    let hyper_flags = format!(
        "--batch {} --lr {} --kl-weight {} --lambda-c {} --ema-decay {} --seed {}",
        hy.batch, hy.lr, hy.kl_weight, hy.lambda_c, hy.ema_decay, hy.seed
    );
    let objective_flag = meta.objective.to_possible_value().map_or_else(
        || meta.objective.label().to_owned(),
        |v| v.get_name().to_owned(),
    );
    let _ = writeln!(w, "```sh\n{}", r.prepare_cmd);
    let _ = writeln!(
        w,
        "trainer train --preset {} --objective {objective_flag} --steps {} {hyper_flags} \
         --out {} --data {} --data-name {}",
        cfg.name,
        meta.step,
        opts.run.display(),
        opts.data.display(),
        opts.data_name
    );
    let _ = writeln!(
        w,
        "trainer export --run {} --out {} --data {} --data-name {}",
        opts.run.display(),
        opts.bundle.display(),
        opts.data.display(),
        opts.data_name
    );
    let _ = writeln!(
        w,
        "trainer quality --bundle {} --data {} --data-name {} --faces {} --samples {} --seed {}",
        opts.bundle.display(),
        opts.data.display(),
        opts.data_name,
        opts.faces,
        q.samples,
        opts.seed
    );
    let _ = writeln!(w, "{}\n```", opts.command_line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_sums_sessions_and_averages_the_last_steps() {
        let dir = std::env::temp_dir().join(format!("avae-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut log = String::new();
        log.push_str(r#"{"kind":"start","step":0,"device":"Cpu","threads":2,"unix":10}"#);
        log.push('\n');
        for step in 1..=150u64 {
            let line = serde_json::json!({"kind": "train", "step": step, "d_loss": step as f64,
                "kl": 1.0, "elapsed_s": step as f64 * 2.0, "s_per_step": 1.5});
            log.push_str(&format!("{line}\n"));
        }
        log.push_str("not json\n");
        log.push_str(r#"{"kind":"sample","step":150,"psnr_nearest":21.5}"#);
        log.push('\n');
        log.push_str(r#"{"kind":"start","step":150,"device":"Cpu","threads":1,"unix":99}"#);
        log.push('\n');
        for step in 151..=160u64 {
            let line = serde_json::json!({"kind": "train", "step": step, "d_loss": 0.0,
                "kl": 1.0, "elapsed_s": (step - 150) as f64, "s_per_step": 1.0});
            log.push_str(&format!("{line}\n"));
        }
        fs::write(dir.join(LOG_FILE), log).unwrap();
        let h = read_history(&dir, 160).unwrap();
        assert_eq!(h.sessions.len(), 2);
        assert_eq!(
            (h.sessions[1].start_step, h.sessions[1].end_step),
            (150, 160)
        );
        assert!((h.wall_seconds() - (300.0 + 10.0)).abs() < 1e-9);
        assert!((h.step_seconds() - (150.0 * 1.5 + 10.0)).abs() < 1e-9);
        assert_eq!(h.steps(), 160);
        assert_eq!(h.final_window, (61, 160));
        // d_loss: steps 61..=150 (mean 105.5, 90 values) and ten zeros.
        let d = h
            .final_losses
            .iter()
            .find(|(k, _)| k == "d_loss")
            .unwrap()
            .1;
        assert!((d - 105.5 * 90.0 / 100.0).abs() < 1e-9, "{d}");
        assert_eq!(h.last_probe_psnr, Some((150, 21.5)));
        // Steps past the checkpoint are left out.
        let h = read_history(&dir, 155).unwrap();
        assert_eq!(h.sessions[1].end_step, 155);
        assert_eq!(h.final_window, (56, 155));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(42.04), "42.0 s");
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(duration(1290.0), "22 min");
        assert_eq!(file_size(14_230_528), "14.2 MB");
        assert_eq!(file_size(1_234), "1.2 kB");
    }

    #[test]
    fn low_res_view_repeats_blocks() {
        let face = Array3::from_shape_fn((1, 4, 4), |(_, y, x)| (y * 4 + x) as f32);
        let v = low_res_view(face.view(), 2);
        assert_eq!(v[[0, 0, 0]], 2.5);
        assert_eq!(v[[0, 1, 1]], 2.5);
        assert_eq!(v[[0, 3, 2]], 12.5);
    }

    #[test]
    fn machine_reports_cpus() {
        assert!(machine().cpus >= 1);
    }
}

//! `trainer`: prepares face data for, trains and exports the A-VAE purifier.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use avae_trainer::data::{self, CropSpec, FaceSet, PrepareOptions};
use avae_trainer::denoise::Denoise;
use avae_trainer::guide::Guide;
use avae_trainer::quality::{self, QualityOptions};
use avae_trainer::template;
use avae_trainer::train::{self, DeviceChoice, Hyper, Objective, TrainOptions};
use avae_trainer::training_report::{self, ReportOptions};
use avae_trainer::{calibrate, export};
use clap::{Parser, Subcommand};
use gstavaepurify::engine::Backend;

/// A-VAE trainer: data preparation, training, export.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Crop a face dataset (LFW or one folder per identity) into a training cache with an
    /// identity-disjoint train/test split.
    Prepare(PrepareArgs),
    /// Train (or resume) an A-VAE on a prepared crop cache.
    Train(TrainArgs),
    /// Write a model bundle from the EMA generator of a run's latest checkpoint and check every
    /// graph against tch through tract and ONNX Runtime.
    Export(ExportArgs),
    /// Measure a bundle's image quality (PSNR, SSIM, sampling diversity, conditioning) on
    /// test-split faces, clean and with 8/255 noise, through the plugin's purifier.
    Quality(QualityArgs),
    /// Write the training report (REPORT.md, figures, quality figures) beside a bundle.
    Report(ReportArgs),
    /// Evaluate a bundle against the paper's attacks on LFW fold 1 and regenerate the report
    /// folder (tables, ROC curves, image grids, summary.json).
    Eval(Box<avae_trainer::eval::EvalArgs>),
    /// Fit a bundle's attack alarm on clean training faces (through the plugin's purifier) and
    /// store it in its manifest (`trainer export` does this too).
    Alarm(AlarmArgs),
    /// Measure where CenterFace puts the 5 landmarks in the training crops (the bundle's
    /// landmark template for `trainer export --landmark-template`).
    Template(TemplateArgs),
}

#[derive(clap::Args)]
struct AlarmArgs {
    /// Bundle folder whose manifest gets the alarm
    #[arg(long)]
    bundle: PathBuf,
    /// Folder of the crop cache (its training split is the calibration set)
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Name prefix of the crop cache
    #[arg(long, default_value = "lfw")]
    data_name: String,
    #[command(flatten)]
    fit: AlarmFitArgs,
}

#[derive(clap::Args)]
struct AlarmFitArgs {
    /// Score: one of the combinations of `alarm::COMBINATIONS` (native, detail-ratio, native+detail-ratio, all, ...; an unknown name lists them)
    #[arg(long = "alarm-score", default_value = avae_trainer::alarm::DEFAULT_COMBINATION)]
    score: String,
    /// Clean training faces to calibrate on
    #[arg(long = "alarm-faces", default_value_t = avae_trainer::alarm::CALIBRATION_FACES)]
    faces: usize,
    /// M: candidates per face (the element's default)
    #[arg(long = "alarm-samples", default_value_t = 16)]
    samples: usize,
}

fn run_alarm(args: AlarmArgs) -> Result<()> {
    let bundle = gstavaepurify::bundle::Bundle::load(&args.bundle)
        .with_context(|| format!("cannot load the bundle '{}'", args.bundle.display()))?;
    let set = FaceSet::load(&args.data, &args.data_name, bundle.manifest.image_size)?;
    fit_alarm(&args.bundle, &set, &args.fit)
}

/// Fits the alarm of the bundle in `dir` and prints it.
fn fit_alarm(dir: &std::path::Path, set: &FaceSet, fit: &AlarmFitArgs) -> Result<()> {
    let alarm =
        avae_trainer::alarm::calibrate_bundle(dir, set, fit.faces, fit.samples, &fit.score, 0)?;
    println!(
        "alarm: {} (thresholds {:.3} at 1%, {:.3} at 5% clean false alarms)",
        alarm.calibration, alarm.threshold_1, alarm.threshold_5
    );
    Ok(())
}

#[derive(clap::Args)]
struct TemplateArgs {
    /// Dataset folder the crop cache was prepared from (LFW with lfw-deepfunneled/, or the
    /// image root itself)
    #[arg(long, default_value = "../shared/datasets/lfw")]
    data: PathBuf,
    /// Crop cache index (`<name>-<S>.json` from `trainer prepare`): its crop box and training
    /// split are used
    #[arg(long, default_value = "data/lfw-64.json")]
    index: PathBuf,
    /// JSON file to write, `[[x, y], ...]` (5 points, fractions of the crop)
    #[arg(long, default_value = "data/template.json")]
    out: PathBuf,
    /// Most training images to run the detector on
    #[arg(long, default_value_t = 500)]
    images: usize,
    /// CenterFace ONNX file [default: the plugin's models/centerface/centerface.onnx]
    #[arg(long)]
    model: Option<PathBuf>,
    /// Detector backend: auto, ort or tract
    #[arg(long, default_value = "tract", value_parser = Backend::from_str)]
    backend: Backend,
}

#[derive(clap::Args)]
struct QualityArgs {
    /// Bundle folder written by `trainer export`
    #[arg(long)]
    bundle: PathBuf,
    #[command(flatten)]
    faces: TestFaceArgs,
    /// M: candidates per face (the default is the element's)
    #[arg(long, default_value_t = quality::DEFAULT_SAMPLES)]
    samples: usize,
    /// KL clip tau [default: the bundle's]
    #[arg(long)]
    tau: Option<f32>,
    /// Also write the figures as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Which test faces the quality figures use and how they are purified.
#[derive(clap::Args)]
struct TestFaceArgs {
    /// Folder of the crop cache written by `trainer prepare`
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Name prefix of the crop cache
    #[arg(long, alias = "name", default_value = "lfw")]
    data_name: String,
    /// Test-split faces to measure (distinct people of LFW fold 1)
    #[arg(long, default_value_t = quality::DEFAULT_FACES)]
    faces: usize,
    /// Seed of the noise and the latent draws
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inference backend on the CPU (tract, ort or auto)
    #[arg(long, default_value = "tract", value_parser = Backend::from_str)]
    backend: Backend,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Run folder written by `trainer train`
    #[arg(long)]
    run: PathBuf,
    /// Bundle folder exported from the run
    #[arg(long)]
    bundle: PathBuf,
    /// Markdown file to write (figures go beside it) [default: <bundle>/REPORT.md]
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    faces: TestFaceArgs,
}

#[derive(clap::Args)]
struct PrepareArgs {
    /// Dataset folder: LFW (lfw-deepfunneled/ and pairs.txt) or one sub-folder of images per
    /// identity [default: ../shared/datasets/lfw from the workspace root]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Side of the square crops in pixels (a multiple of 32)
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Output folder for the cache (<name>-<size>.bin/.json and a preview PNG)
    #[arg(long, default_value = "data")]
    out: PathBuf,
    /// Cache name prefix
    #[arg(long, default_value = "lfw")]
    name: String,
    /// Horizontal centre of the fixed crop box, as a fraction of the image width
    #[arg(long, default_value_t = CropSpec::default().center_x)]
    crop_center_x: f32,
    /// Vertical centre of the fixed crop box, as a fraction of the image height
    #[arg(long, default_value_t = CropSpec::default().center_y)]
    crop_center_y: f32,
    /// Side of the fixed crop box, as a fraction of the smaller image side
    #[arg(long, default_value_t = CropSpec::default().side)]
    crop_side: f32,
    /// Keep at most this many identities per split (quick experiments and tests)
    #[arg(long)]
    limit_identities: Option<usize>,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Model preset (tiny, cpu, paper)
    #[arg(long, default_value = "cpu")]
    preset: String,
    /// Training objective variant
    #[arg(long, value_enum, default_value_t = Objective::A)]
    objective: Objective,
    /// Total number of steps to reach (a resumed run continues up to it)
    #[arg(long)]
    steps: u64,
    /// Batch size
    #[arg(long, default_value_t = Hyper::default().batch)]
    batch: usize,
    /// Run folder (checkpoints, samples, loss curves, log)
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint
    #[arg(long)]
    resume: bool,
    /// Steps between checkpoints (a final one is always written)
    #[arg(long, default_value_t = 250)]
    ckpt_every: u64,
    /// Steps between sample grids and loss-curve updates
    #[arg(long, default_value_t = 250)]
    sample_every: u64,
    /// Checkpoint folders to keep
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Adam learning rate (the mapping network uses lr x the preset's mapping_lr_mul)
    #[arg(long, default_value_t = Hyper::default().lr)]
    lr: f64,
    /// Weight of the consistency loss (objectives c and bc)
    #[arg(long, default_value_t = Hyper::default().lambda_c)]
    lambda_c: f64,
    /// Weight of the mean KL term
    #[arg(long, default_value_t = Hyper::default().kl_weight)]
    kl_weight: f64,
    /// Decay of the generator's exponential moving average
    #[arg(long, default_value_t = Hyper::default().ema_decay)]
    ema_decay: f64,
    /// Random seed
    #[arg(long, default_value_t = Hyper::default().seed)]
    seed: u64,
    /// CPU threads for libtorch [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Device
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Folder of the crop cache written by `trainer prepare`
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Name prefix of the crop cache
    #[arg(long, default_value = "lfw")]
    data_name: String,
    /// Denoising training: probability that a step's encoder input is perturbed (sign noise,
    /// blur, JPEG or a signed-gradient step against the encoder); 0 = off
    #[arg(long, default_value_t = 0.0)]
    denoise: f64,
    /// Largest L-inf size of the denoising perturbations, in 1/255
    #[arg(long, default_value_t = 8.0)]
    denoise_eps: f64,
    /// Gaussian noise on the skip feature in training, relative to its standard deviation
    #[arg(long, default_value_t = 0.0)]
    skip_noise: f64,
    /// Start a new run from this bundle's generator weights (fine-tuning; fresh critic)
    #[arg(long)]
    init_bundle: Option<PathBuf>,
    /// Recognizer-guided training: weight of the identity loss 1 - cos(R(G(x_in)), R(x)) of the
    /// face recognizer (`--recognizer`); 0 = off
    #[arg(long, default_value_t = 0.0)]
    id_weight: f64,
    /// Recognizer-guided training: share of the perturbed steps (`--denoise`) whose encoder
    /// input is a PGD against the recognizer (`--denoise-eps`) instead of another family
    #[arg(long, default_value_t = 0.0)]
    denoise_recognizer: f64,
    /// PGD steps of the recognizer attack of `--denoise-recognizer`
    #[arg(long, default_value_t = 3)]
    denoise_recognizer_steps: usize,
    /// The face recognizer ONNX of recognizer-guided training
    #[arg(long, default_value_os_t = avae_trainer::recognizer::default_model_path())]
    recognizer: PathBuf,
    /// Side of the downsample the encoder's information comes from: 32 (the preset's) or 16
    /// (S = 64 at the paper's 4x ratio; upsampled back to 32x32 inside the encoder graph)
    #[arg(long)]
    input_size: Option<i64>,
    /// Side of the detail the skip connection carries: 16 (the preset's) or 8 (the 16x16
    /// activation average-pooled to 8x8 inside the encoder graph; same bundle interface)
    #[arg(long)]
    skip_detail: Option<i64>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Run folder written by `trainer train`
    #[arg(long)]
    run: PathBuf,
    /// Bundle folder to write
    #[arg(long)]
    out: PathBuf,
    /// Folder of the crop cache; when it holds the run's size, test faces join the parity check
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Name prefix of the crop cache
    #[arg(long, default_value = "lfw")]
    data_name: String,
    /// Landmark template JSON written by `trainer template`, stored in the manifest so that
    /// the element aligns faces to the training crops' geometry
    #[arg(long)]
    landmark_template: Option<PathBuf>,
    /// Default KL clip stored in the bundle; without it, calibrated on 512 training faces
    /// (median KL at the posterior mean, see `calibrate.rs`)
    #[arg(long)]
    tau: Option<f32>,
    #[command(flatten)]
    alarm: AlarmFitArgs,
}

fn run_train(args: TrainArgs) -> Result<()> {
    let opts = TrainOptions {
        preset: args.preset,
        objective: args.objective,
        steps: args.steps,
        out: args.out,
        resume: args.resume,
        ckpt_every: args.ckpt_every,
        sample_every: args.sample_every,
        keep_checkpoints: args.keep_checkpoints,
        threads: args.threads,
        device: args.device,
        data: args.data,
        data_name: args.data_name,
        hyper: Hyper {
            batch: args.batch,
            lr: args.lr,
            kl_weight: args.kl_weight,
            lambda_c: args.lambda_c,
            ema_decay: args.ema_decay,
            seed: args.seed,
            denoise: Denoise {
                p: args.denoise,
                eps_255: args.denoise_eps,
            },
            skip_noise: args.skip_noise,
            guide: Guide {
                id_weight: args.id_weight,
                attack_share: args.denoise_recognizer,
                attack_steps: args.denoise_recognizer_steps,
            },
            ..Hyper::default()
        },
        init_bundle: args.init_bundle,
        recognizer: args.recognizer,
        input_size: args.input_size,
        skip_detail: args.skip_detail,
    };
    let summary = train::train(&opts)?;
    println!(
        "trained steps {}..{} on {}: {:.3} s/step (batch {}); run folder {}",
        summary.start_step + 1,
        summary.end_step,
        summary.device,
        summary.seconds_per_step,
        opts.hyper.batch,
        opts.out.display()
    );
    Ok(())
}

/// Training faces the bundle's default tau is calibrated on.
const CALIBRATION_FACES: usize = 512;

fn run_export(args: ExportArgs) -> Result<()> {
    let landmark_template = args
        .landmark_template
        .as_deref()
        .map(template::read_template)
        .transpose()?;
    let (_vs, model, meta) = train::load_ema_generator(&args.run, tch::Device::Cpu)?;
    let size = usize::try_from(meta.config.image_size)?;
    let set = FaceSet::load(&args.data, &args.data_name, size).ok();
    let faces = set
        .as_ref()
        .map(|set| data::to_unit_range(&set.select(&set.fixed_test_faces(4))));
    let tau = match (args.tau, &set) {
        (Some(tau), _) => Some(tau),
        (None, Some(set)) => Some(calibrate_tau(&model, set)?),
        (None, None) => {
            println!(
                "no crop cache in '{}': tau left at the preset's {}",
                args.data.display(),
                meta.config.tau as f32
            );
            None
        }
    };
    let extras = export::ManifestExtras {
        tau,
        landmark_template,
    };
    let report = export::export_bundle(&model, &args.out, train::provenance(&meta), extras)
        .with_context(|| format!("cannot export '{}'", args.run.display()))?;
    if let Some(template) = landmark_template {
        println!("landmark template {template:?}");
    }
    let parity = export::check_parity(&model, &args.out, faces.as_ref())?;
    // The alarm is fitted on the written bundle's graphs: the one change to the manifest after
    // export.
    match &set {
        Some(set) => fit_alarm(&args.out, set, &args.alarm)?,
        None => println!("no crop cache: the bundle gets no alarm (run `trainer alarm` later)"),
    }
    println!(
        "wrote {} ({} parameters, step {}, objective {}); parity: max error {:.2e} over {} outputs{}",
        report.dir.display(),
        report.num_params,
        meta.step,
        meta.objective.label(),
        parity.max_error(),
        parity.entries.len(),
        if faces.is_some() {
            " (with test faces)"
        } else {
            " (random inputs only)"
        }
    );
    Ok(())
}

/// The bundle's default tau: the median posterior KL of `model` on up to
/// [`CALIBRATION_FACES`] training faces of `set`.
fn calibrate_tau(model: &avae_trainer::model::AVae, set: &FaceSet) -> Result<f32> {
    let train_idx = set.indices(data::Split::Train);
    let step = (train_idx.len() / CALIBRATION_FACES).max(1);
    let chosen: Vec<i64> = train_idx
        .iter()
        .step_by(step)
        .take(CALIBRATION_FACES)
        .copied()
        .collect();
    let tau = calibrate::median_posterior_kl(model, &data::to_unit_range(&set.select(&chosen)))?;
    println!(
        "tau calibrated on {} training faces: {tau:.4}",
        chosen.len()
    );
    Ok(tau)
}

fn run_quality(args: QualityArgs) -> Result<()> {
    let opts = QualityOptions {
        bundle: args.bundle,
        data: args.faces.data,
        data_name: args.faces.data_name,
        faces: args.faces.faces,
        samples: args.samples,
        tau: args.tau,
        seed: args.faces.seed,
        backend: args.faces.backend,
    };
    let report = quality::measure(&opts)?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_report(args: ReportArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(|| args.bundle.join("REPORT.md"));
    let opts = ReportOptions {
        run: args.run,
        bundle: args.bundle,
        out,
        data: args.faces.data,
        data_name: args.faces.data_name,
        faces: args.faces.faces,
        seed: args.faces.seed,
        backend: args.faces.backend,
        command_line: std::iter::once("trainer".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let summary = training_report::write_report(&opts)?;
    print!("{}", summary.quality.table());
    for file in &summary.files {
        println!("wrote {}", file.display());
    }
    println!(
        "wrote {} ({:.1} MB in its folder)",
        summary.path.display(),
        summary.folder_bytes as f64 / 1e6
    );
    Ok(())
}

fn prepare(args: PrepareArgs) -> Result<()> {
    let data = match args.data {
        Some(d) => d,
        None => match data::default_dataset_dir() {
            Some(d) => d,
            None => bail!(
                "no --data given and the default dataset folder ../shared/datasets/lfw (from the \
                 workspace root {}) does not exist",
                concat!(env!("CARGO_MANIFEST_DIR"), "/..")
            ),
        },
    };
    let opts = PrepareOptions {
        data,
        out: args.out,
        name: args.name,
        size: args.size,
        crop: CropSpec {
            center_x: args.crop_center_x,
            center_y: args.crop_center_y,
            side: args.crop_side,
        },
        limit_identities: args.limit_identities,
    };
    let index = data::prepare(&opts)?;
    let c = &index.counts;
    println!(
        "train: {} identities, {} images; test: {} identities, {} images; {} fold-1 pairs; \
         {} unreadable images skipped",
        c.train_identities,
        c.train_images,
        c.test_identities,
        c.test_images,
        index.pairs.len(),
        c.skipped
    );
    let (bin, json) = data::cache_paths(&opts.out, &opts.name, opts.size);
    println!("wrote {} and {}", bin.display(), json.display());
    Ok(())
}

fn run_template(args: TemplateArgs) -> Result<()> {
    let lfw = args.data.join("lfw-deepfunneled");
    let opts = template::TemplateOptions {
        images: if lfw.is_dir() { lfw } else { args.data },
        index: args.index,
        limit: args.images,
        model: args
            .model
            .unwrap_or_else(gstavaepurify::avaefacedetect::default_model_path),
        backend: args.backend,
    };
    let report = template::measure(&opts)?;
    template::write_template(&args.out, &report.template)?;
    let fmt = |t: &template::LandmarkTemplate| {
        t.iter()
            .map(|[x, y]| format!("[{x:.4}, {y:.4}]"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "landmark template from {} of {} training images: [{}] (std [{}]); wrote {}",
        report.used,
        report.examined,
        fmt(&report.template),
        fmt(&report.spread),
        args.out.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Prepare(args) => prepare(args),
        Command::Train(args) => run_train(args),
        Command::Export(args) => run_export(args),
        Command::Quality(args) => run_quality(args),
        Command::Report(args) => run_report(args),
        Command::Eval(args) => avae_trainer::eval::main(*args),
        Command::Template(args) => run_template(args),
        Command::Alarm(args) => run_alarm(args),
    }
}

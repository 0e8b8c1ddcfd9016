//! `trainer quality`: image-quality figures of a shipped bundle on test-split faces (people of
//! LFW fold 1, never trained on), measured through the plugin's own [`Purifier`] so that they
//! describe exactly what the element outputs.
//!
//! For every face, clean and with epsilon 8/255 random-sign noise, it compares against the input:
//! the chosen (nearest) candidate of M, the mean-latent output `decode(mu, skip)`, one sample
//! without selection, the mean of the M candidates, and the bicubic upsample of the 32x32
//! area-downsampled input the encoder sees. It also measures how different the M candidates of a
//! face are (sampling diversity) and whether different inputs give different outputs.
//!
//! Units: images are compared on the `[0, 1]` scale (the model's `[-1, 1]` values mapped by
//! `(x + 1) / 2` and clamped). PSNR is `10 log10(1 / MSE)` over all RGB values, capped at
//! [`PSNR_CAP_DB`]; SSIM is the standard 11x11 Gaussian-window (sigma 1.5) SSIM of Wang et al.
//! (2004) with K1 = 0.01, K2 = 0.03 and L = 1 over the "valid" windows, computed per RGB channel
//! and averaged over the three channels.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use gstavaepurify::core::image::area_downsample;
use gstavaepurify::core::latent::{SampleStats, mean_kl};
use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::purifier::{Observed, Purifier, PurifyParams};
use ndarray::{Array2, Array3, Array4, ArrayView3, ArrayView4, Axis, Zip};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::{self, FaceSet};

/// Test faces measured by default.
pub const DEFAULT_FACES: usize = 200;
/// Candidates per face by default: the element's default `samples` property.
pub const DEFAULT_SAMPLES: usize = 16;
/// Latents decoded per decoder call: the element's default `batch` property.
pub const DECODE_BATCH: usize = 16;
/// Noise amplitude on the `[0, 1]` scale: 8/255, i.e. 8 grey levels.
pub const NOISE_EPS: f32 = 8.0 / 255.0;
/// PSNR reported for identical images (an MSE of 1e-10).
pub const PSNR_CAP_DB: f64 = 100.0;
/// The acceptance margin: the nearest candidate must be within this many dB of bicubic.
pub const BICUBIC_MARGIN_DB: f64 = 6.0;
/// Mean pairwise PSNR between candidates above which they count as near-identical (dB).
pub const IDENTICAL_CANDIDATES_DB: f64 = 40.0;
/// Gain of the nearest candidate over the mean latent below which selection counts as making no
/// difference (dB).
pub const NEGLIGIBLE_GAIN_DB: f64 = 0.5;
/// Share of outputs whose most similar input (of all measured inputs) must be their own input
/// for "different inputs give different faces".
pub const RETRIEVAL_THRESHOLD: f64 = 0.9;
/// Side of the SSIM window.
const SSIM_WINDOW: usize = 11;
/// Standard deviation of the SSIM window's Gaussian.
const SSIM_SIGMA: f64 = 1.5;
/// SSIM stabilisers `(K1 L)^2` and `(K2 L)^2` for L = 1.
const SSIM_C1: f64 = 0.01 * 0.01;
const SSIM_C2: f64 = 0.03 * 0.03;
/// Coefficient `a` of the cubic convolution kernel (Keys; the Catmull-Rom spline).
const BICUBIC_A: f64 = -0.5;

/// A `[-1, 1]` value on the `[0, 1]` scale, clamped.
fn unit(v: f32) -> f64 {
    ((f64::from(v) + 1.0) * 0.5).clamp(0.0, 1.0)
}

/// PSNR in dB between two `[3, H, W]` images given in `[-1, 1]`, measured on the `[0, 1]` scale
/// (peak 1) over all values, capped at [`PSNR_CAP_DB`].
pub fn psnr(a: ArrayView3<'_, f32>, b: ArrayView3<'_, f32>) -> f64 {
    let mut sum = 0.0;
    Zip::from(&a).and(&b).for_each(|&x, &y| {
        let d = unit(x) - unit(y);
        sum += d * d;
    });
    let mse = sum / a.len().max(1) as f64;
    (10.0 * (1.0 / mse.max(1e-10)).log10()).min(PSNR_CAP_DB)
}

/// The normalised 1-D Gaussian of the SSIM window.
fn ssim_kernel() -> [f64; SSIM_WINDOW] {
    let half = (SSIM_WINDOW / 2) as f64;
    let mut k = [0.0; SSIM_WINDOW];
    for (i, v) in k.iter_mut().enumerate() {
        let d = i as f64 - half;
        *v = (-d * d / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let total: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= total);
    k
}

/// Separable Gaussian filter over the "valid" windows: `[H, W]` to `[H - 10, W - 10]`.
fn gaussian_valid(plane: &Array2<f64>, k: &[f64; SSIM_WINDOW]) -> Array2<f64> {
    let (h, w) = plane.dim();
    let (oh, ow) = (h + 1 - SSIM_WINDOW, w + 1 - SSIM_WINDOW);
    let mut rows = Array2::<f64>::zeros((h, ow));
    for y in 0..h {
        for x in 0..ow {
            rows[[y, x]] = (0..SSIM_WINDOW).map(|i| k[i] * plane[[y, x + i]]).sum();
        }
    }
    let mut out = Array2::<f64>::zeros((oh, ow));
    for y in 0..oh {
        for x in 0..ow {
            out[[y, x]] = (0..SSIM_WINDOW).map(|i| k[i] * rows[[y + i, x]]).sum();
        }
    }
    out
}

/// SSIM of two `[C, H, W]` images given in `[-1, 1]` (module docs: 11x11 Gaussian window,
/// sigma 1.5, `[0, 1]` scale, valid windows), averaged over channels. `H` and `W` must be at
/// least 11; smaller images give NaN.
pub fn ssim(a: ArrayView3<'_, f32>, b: ArrayView3<'_, f32>) -> f64 {
    let (c, h, w) = a.dim();
    if h < SSIM_WINDOW || w < SSIM_WINDOW || c == 0 || a.dim() != b.dim() {
        return f64::NAN;
    }
    let k = ssim_kernel();
    let mut total = 0.0;
    for ch in 0..c {
        let x = a.index_axis(Axis(0), ch).mapv(unit);
        let y = b.index_axis(Axis(0), ch).mapv(unit);
        let mx = gaussian_valid(&x, &k);
        let my = gaussian_valid(&y, &k);
        let xx = gaussian_valid(&(&x * &x), &k);
        let yy = gaussian_valid(&(&y * &y), &k);
        let xy = gaussian_valid(&(&x * &y), &k);
        let mut sum = 0.0;
        Zip::from(&mx)
            .and(&my)
            .and(&xx)
            .and(&yy)
            .and(&xy)
            .for_each(|&mx, &my, &xx, &yy, &xy| {
                let (vx, vy, cxy) = (xx - mx * mx, yy - my * my, xy - mx * my);
                sum += ((2.0 * mx * my + SSIM_C1) * (2.0 * cxy + SSIM_C2))
                    / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2));
            });
        total += sum / mx.len() as f64;
    }
    total / c as f64
}

/// The cubic convolution kernel with `a = -0.5`.
fn cubic(x: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        (BICUBIC_A + 2.0) * x * x * x - (BICUBIC_A + 3.0) * x * x + 1.0
    } else if x < 2.0 {
        BICUBIC_A * (x * x * x - 5.0 * x * x + 8.0 * x - 4.0)
    } else {
        0.0
    }
}

/// The four source taps (clamped to the edge) and their weights of every output position when
/// resampling `src` samples to `dst` with half-pixel centres.
fn cubic_taps(src: usize, dst: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = src as f64 / dst as f64;
    let last = src.saturating_sub(1) as i64;
    (0..dst)
        .map(|o| {
            let pos = (o as f64 + 0.5) * scale - 0.5;
            let base = pos.floor();
            let t = pos - base;
            let mut idx = [0usize; 4];
            let mut w = [0.0; 4];
            for k in 0..4 {
                idx[k] = (base as i64 + k as i64 - 1).clamp(0, last) as usize;
                w[k] = cubic(t - (k as f64 - 1.0));
            }
            (idx, w)
        })
        .collect()
}

/// Bicubic resampling of a `[C, H, W]` image to `[C, out_h, out_w]`: separable cubic convolution
/// with `a = -0.5`, half-pixel centres (`src = (dst + 0.5) * H / out_h - 0.5`) and edge samples
/// repeated beyond the border; the result is clamped to `[-1, 1]`. No anti-aliasing, so meant for
/// upsampling.
pub fn bicubic_resize(src: ArrayView3<'_, f32>, out_h: usize, out_w: usize) -> Array3<f32> {
    let (c, h, w) = src.dim();
    let tx = cubic_taps(w, out_w);
    let ty = cubic_taps(h, out_h);
    let mut rows = Array3::<f64>::zeros((c, h, out_w));
    for ((ch, y, x), v) in rows.indexed_iter_mut() {
        let (idx, wt) = &tx[x];
        *v = (0..4)
            .map(|k| wt[k] * f64::from(src[[ch, y, idx[k]]]))
            .sum();
    }
    let mut out = Array3::<f32>::zeros((c, out_h, out_w));
    for ((ch, y, x), v) in out.indexed_iter_mut() {
        let (idx, wt) = &ty[y];
        let value: f64 = (0..4).map(|k| wt[k] * rows[[ch, idx[k], x]]).sum();
        *v = value.clamp(-1.0, 1.0) as f32;
    }
    out
}

/// The bicubic upsample of a face's `factor x factor` area downsample (the encoder's input), back
/// to the face's size: what a plain upscaler makes of the information the model conditions on.
pub fn bicubic_baseline(face: ArrayView3<'_, f32>, factor: usize) -> Array3<f32> {
    let (_, h, w) = face.dim();
    bicubic_resize(area_downsample(face, factor).view(), h, w)
}

/// `face` (`[-1, 1]`) plus random-sign noise of `eps` on the `[0, 1]` scale: every value moves by
/// `+-2 eps` in `[-1, 1]` units, then is clamped to `[-1, 1]`.
pub fn random_sign_noise<R: Rng + ?Sized>(
    face: ArrayView3<'_, f32>,
    eps: f32,
    rng: &mut R,
) -> Array3<f32> {
    face.mapv(|v| {
        let step = if rng.random_bool(0.5) { 2.0 } else { -2.0 } * eps;
        (v + step).clamp(-1.0, 1.0)
    })
}

/// Everything the purifier makes of one face.
#[derive(Debug, Clone)]
pub struct FaceOutputs {
    /// What the element outputs: the candidate nearest to the input, from [`Purifier::purify`].
    pub nearest: Array3<f32>,
    /// Index of `nearest` among `candidates`.
    pub chosen: usize,
    /// All M candidates `[M, 3, S, S]`, from the same latents `purify` drew.
    pub candidates: Array4<f32>,
    /// The decoder's output at the posterior mean, `decode(mu, skip)`.
    pub mean_latent: Array3<f32>,
    /// What the KL clip did to the M latents.
    pub stats: SampleStats,
    /// Mean KL per dimension at `z = 0`: the least any latent of this face can have, so the KL
    /// ball is empty when tau is below it.
    pub least_kl: f32,
    /// Mean KL per dimension at the posterior mean `z = mu`.
    pub kl_at_mu: f32,
}

/// Purifies one face (`[3, S, S]`, `[-1, 1]`) with `purifier` and also returns all its
/// candidates, handed out by [`Purifier::purify_observed`] as it decodes them; the chosen one
/// is checked to be `purify`'s output.
pub fn purify_face(
    purifier: &mut Purifier,
    face: ArrayView3<'_, f32>,
    params: &PurifyParams,
    rng: &mut StdRng,
) -> Result<FaceOutputs> {
    let input = face.insert_axis(Axis(0));
    let enc = purifier.encode(input)?;
    let mean_latent = purifier
        .decode(enc.mu.view(), enc.skip.view())?
        .index_axis_move(Axis(0), 0);
    let m = params.samples;
    let (_, _, h, w) = input.dim();
    let mut candidates = Array4::<f32>::zeros((m, 3, h, w));
    let mut stats = SampleStats {
        scaled: 0,
        unreachable: false,
    };
    let mut observe = |seen: Observed<'_>| match seen {
        Observed::Latents { stats: s, .. } => {
            stats.scaled += s.scaled;
            stats.unreachable |= s.unreachable;
        }
        Observed::Candidate { sample, image, .. } => {
            if sample < m {
                candidates.index_axis_mut(Axis(0), sample).assign(&image);
            }
        }
    };
    let mut purified = input.to_owned();
    let chosen = purifier.purify_observed(purified.view_mut(), params, rng, Some(&mut observe))?;
    let chosen = chosen.first().context("purify returned no result")?;
    let logvar = enc.logvar.row(0);
    let least_kl = mean_kl(ndarray::Array1::zeros(logvar.len()).view(), logvar);
    let kl_at_mu = mean_kl(enc.mu.row(0), logvar);
    let nearest = purified.index_axis_move(Axis(0), 0);
    let handed = candidates
        .index_axis(Axis(0), chosen.candidate.min(m - 1))
        .to_owned();
    let gap = (&handed - &nearest)
        .iter()
        .fold(0.0f32, |g, v| g.max(v.abs()));
    ensure!(
        chosen.candidate < m && gap <= 1e-6,
        "internal error: the chosen candidate {} differs from purify's output by {gap:e}",
        chosen.candidate
    );
    Ok(FaceOutputs {
        nearest,
        chosen: chosen.candidate,
        candidates,
        mean_latent,
        stats,
        least_kl,
        kl_at_mu,
    })
}

/// `count` test-split faces of distinct people (see [`FaceSet::fixed_test_faces`]) as
/// `[N, 3, S, S]` in `[-1, 1]`.
pub fn test_faces(set: &FaceSet, count: usize) -> Result<Array4<f32>> {
    let picked = set.fixed_test_faces(count);
    ensure!(
        !picked.is_empty(),
        "the dataset has no test-split faces (people of LFW fold 1)"
    );
    let s = set.index.size;
    let bytes = Vec::<u8>::try_from(&set.select(&picked).contiguous().view([-1]))
        .context("cannot copy the test faces")?;
    let values: Vec<f32> = bytes.iter().map(|&b| f32::from(b) / 127.5 - 1.0).collect();
    Ok(Array4::from_shape_vec((picked.len(), 3, s, s), values)?)
}

/// A running mean.
#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }

    fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Mean PSNR and SSIM of one output against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Mean PSNR in dB.
    pub psnr_db: f64,
    /// Mean SSIM.
    pub ssim: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ScoreMean {
    psnr: Mean,
    ssim: Mean,
}

impl ScoreMean {
    fn add(&mut self, out: ArrayView3<'_, f32>, reference: ArrayView3<'_, f32>) {
        self.psnr.add(psnr(out, reference));
        self.ssim.add(ssim(out, reference));
    }

    fn get(&self) -> Option<Score> {
        Some(Score {
            psnr_db: self.psnr.get()?,
            ssim: self.ssim.get()?,
        })
    }
}

/// One output kind measured against its references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityRow {
    /// Short key (`nearest`, `mean_latent`, `one_sample`, `candidate_mean`, `bicubic`,
    /// `noisy_input`).
    pub method: String,
    /// What the row is, for people.
    pub label: String,
    /// From clean faces, against the clean face.
    pub clean: Option<Score>,
    /// From noisy faces, against the clean face (what the defense recovers).
    pub noisy_vs_clean: Option<Score>,
    /// From noisy faces, against the noisy input the element saw.
    pub noisy_vs_input: Option<Score>,
}

/// How different the M candidates of a face are, and what choosing among them buys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diversity {
    /// Mean over faces of the mean PSNR between pairs of candidates of the face (dB; high means
    /// near-identical candidates), for clean and noisy inputs.
    pub pairwise_psnr_db: [f64; 2],
    /// Mean of PSNR(nearest, input) - PSNR(mean latent, input) in dB, clean and noisy.
    pub nearest_minus_mean_latent_db: [f64; 2],
    /// Mean of PSNR(nearest, input) - PSNR(one sample, input) in dB, clean and noisy.
    pub nearest_minus_one_sample_db: [f64; 2],
    /// Mean of the best minus the worst candidate's PSNR against the input, dB, clean and noisy.
    pub best_minus_worst_db: [f64; 2],
    /// Share of latents the KL clip scaled onto its ball, clean and noisy.
    pub clipped_latents: [f64; 2],
    /// Faces whose KL ball was empty (every latent set to the posterior mean), clean and noisy.
    pub empty_ball_faces: [usize; 2],
    /// Mean over faces of the least attainable mean KL (at `z = 0`), clean and noisy: tau below
    /// it leaves the KL ball empty.
    pub least_kl: [f64; 2],
    /// Mean over faces of the mean KL at the posterior mean, clean and noisy.
    pub kl_at_mu: [f64; 2],
}

/// Whether different inputs give different outputs (on clean faces, nearest candidates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conditioning {
    /// Mean PSNR between the outputs of two different faces (dB, all pairs).
    pub between_outputs_psnr_db: f64,
    /// Mean PSNR between the inputs of two different faces (dB, all pairs): the reference.
    pub between_inputs_psnr_db: f64,
    /// Share of outputs whose most similar input (by PSNR, among all measured faces) is their
    /// own input.
    pub own_input_retrieval: f64,
}

/// The acceptance checks of the trainer issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    /// Clean-face PSNR of the nearest candidate is at most [`BICUBIC_MARGIN_DB`] below bicubic.
    pub nearest_within_margin_of_bicubic: bool,
    /// [`Conditioning::own_input_retrieval`] is at least [`RETRIEVAL_THRESHOLD`].
    pub different_inputs_give_different_faces: bool,
}

/// Everything `trainer quality` measures, as written to its JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Bundle folder.
    pub bundle: String,
    /// Bundle preset and provenance summary.
    pub model: String,
    /// Engine used, e.g. `tract (CPU)`.
    pub backend: String,
    /// Test faces measured.
    pub faces: usize,
    /// M: candidates per face.
    pub samples: usize,
    /// KL clip tau.
    pub tau: f32,
    /// Seed of the noise and of the latent draws.
    pub seed: u64,
    /// Noise amplitude on the `[0, 1]` scale.
    pub noise_eps: f32,
    /// How PSNR and SSIM are computed.
    pub metric_notes: String,
    /// One row per output kind.
    pub rows: Vec<QualityRow>,
    /// Sampling diversity.
    pub diversity: Diversity,
    /// Dependence of the outputs on the input.
    pub conditioning: Conditioning,
    /// Acceptance checks.
    pub checks: Checks,
    /// Wall-clock seconds of the measurement.
    pub seconds: f64,
}

/// What `trainer quality` was asked to do.
#[derive(Debug, Clone)]
pub struct QualityOptions {
    /// Bundle folder.
    pub bundle: PathBuf,
    /// Folder of the crop cache.
    pub data: PathBuf,
    /// Name prefix of the crop cache.
    pub data_name: String,
    /// Test faces to measure.
    pub faces: usize,
    /// M: candidates per face.
    pub samples: usize,
    /// KL clip (`None`: the bundle's).
    pub tau: Option<f32>,
    /// Seed of the noise and the latent draws.
    pub seed: u64,
    /// Inference backend (on the CPU).
    pub backend: Backend,
}

/// Output kinds, in table order.
const METHODS: [(&str, &str); 5] = [
    ("nearest", "nearest of M (the output)"),
    ("mean_latent", "mean latent, decode(mu)"),
    ("one_sample", "one sample, no selection"),
    ("candidate_mean", "mean of the M candidates"),
    ("bicubic", "bicubic of the 32x32 input"),
];

/// A deterministic generator per face index and input kind (clean or noisy), so results do not
/// depend on the order or number of faces measured before.
pub fn face_rng(seed: u64, face: usize, noisy: bool) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (2 * face as u64 + u64::from(noisy) + 1),
    )
}

/// Loads the bundle and the test faces and measures them (see [`measure_faces`]).
pub fn measure(opts: &QualityOptions) -> Result<QualityReport> {
    ensure!(opts.faces > 0, "--faces must be at least 1");
    let mut purifier = Purifier::load(&opts.bundle, opts.backend, Device::Cpu)
        .with_context(|| format!("cannot load the bundle '{}'", opts.bundle.display()))?;
    let size = purifier.image_size();
    let set = FaceSet::load(&opts.data, &opts.data_name, size)?;
    let faces = test_faces(&set, opts.faces)?;
    drop(set);
    let params = PurifyParams {
        samples: opts.samples,
        batch: DECODE_BATCH,
        tau: opts.tau.unwrap_or_else(|| purifier.default_tau()),
    };
    measure_faces(
        &mut purifier,
        &opts.bundle,
        faces.view(),
        &params,
        opts.seed,
    )
}

/// A one-line description of a bundle: preset, steps and objective from its provenance.
pub fn describe_bundle(purifier: &Purifier) -> String {
    let m = &purifier.bundle().manifest;
    let get = |k: &str| {
        m.provenance
            .get(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_else(|| "?".to_owned())
    };
    format!(
        "preset {}, S = {}, D = {}, {} steps, objective {}",
        m.preset,
        m.image_size,
        m.latent_dim,
        get("steps"),
        get("objective")
    )
}

/// Measures `faces` (`[N, 3, S, S]`, `[-1, 1]`, test split) through `purifier` (module docs).
pub fn measure_faces(
    purifier: &mut Purifier,
    bundle: &Path,
    faces: ArrayView4<'_, f32>,
    params: &PurifyParams,
    seed: u64,
) -> Result<QualityReport> {
    gstavaepurify::purifier::check_params(params)?;
    let started = Instant::now();
    let (n, _, s, _) = faces.dim();
    ensure!(n > 0, "no faces to measure");
    let enc_size = purifier.bundle().manifest.encoder_input_size.max(1);
    let factor = (s / enc_size).max(1);
    let m = params.samples;

    let mut rows = [[ScoreMean::default(); 3]; METHODS.len()];
    let mut noisy_input = ScoreMean::default();
    let mut pairwise = [Mean::default(); 2];
    let mut vs_mean_latent = [Mean::default(); 2];
    let mut vs_one_sample = [Mean::default(); 2];
    let mut best_worst = [Mean::default(); 2];
    let mut clipped = [Mean::default(); 2];
    let mut empty_ball = [0usize; 2];
    let mut least_kl = [Mean::default(); 2];
    let mut kl_at_mu = [Mean::default(); 2];
    let mut outputs = Array4::<f32>::zeros(faces.raw_dim());
    let mut noise_rng = StdRng::seed_from_u64(seed);

    let bar = data::progress_bar(n as u64, "quality");
    for (i, clean) in faces.outer_iter().enumerate() {
        let noisy = random_sign_noise(clean, NOISE_EPS, &mut noise_rng);
        noisy_input.add(noisy.view(), clean);
        for (k, input) in [clean, noisy.view()].into_iter().enumerate() {
            let out = purify_face(purifier, input, params, &mut face_rng(seed, i, k == 1))?;
            let one = out.candidates.index_axis(Axis(0), 0);
            let mean = out.candidates.mean_axis(Axis(0)).context("no candidates")?;
            let bicubic = bicubic_baseline(input, factor);
            let images = [
                out.nearest.view(),
                out.mean_latent.view(),
                one,
                mean.view(),
                bicubic.view(),
            ];
            for (row, image) in rows.iter_mut().zip(images) {
                if k == 0 {
                    row[0].add(image, clean);
                } else {
                    row[1].add(image, clean);
                    row[2].add(image, input);
                }
            }
            let to_input: Vec<f64> = out
                .candidates
                .outer_iter()
                .map(|c| psnr(c, input))
                .collect();
            let best = to_input.iter().copied().fold(f64::MIN, f64::max);
            let worst = to_input.iter().copied().fold(f64::MAX, f64::min);
            best_worst[k].add(best - worst);
            let nearest = psnr(out.nearest.view(), input);
            vs_mean_latent[k].add(nearest - psnr(out.mean_latent.view(), input));
            vs_one_sample[k].add(nearest - to_input[0]);
            let mut pairs = Mean::default();
            for a in 0..m {
                for b in a + 1..m {
                    pairs.add(psnr(
                        out.candidates.index_axis(Axis(0), a),
                        out.candidates.index_axis(Axis(0), b),
                    ));
                }
            }
            if let Some(p) = pairs.get() {
                pairwise[k].add(p);
            }
            clipped[k].add(out.stats.scaled as f64 / m as f64);
            empty_ball[k] += usize::from(out.stats.unreachable);
            least_kl[k].add(f64::from(out.least_kl));
            kl_at_mu[k].add(f64::from(out.kl_at_mu));
            if k == 0 {
                outputs.index_axis_mut(Axis(0), i).assign(&out.nearest);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let conditioning = conditioning(outputs.view(), faces);
    let nan = f64::NAN;
    let pair = |v: &[Mean; 2]| [v[0].get().unwrap_or(nan), v[1].get().unwrap_or(nan)];
    let diversity = Diversity {
        pairwise_psnr_db: pair(&pairwise),
        nearest_minus_mean_latent_db: pair(&vs_mean_latent),
        nearest_minus_one_sample_db: pair(&vs_one_sample),
        best_minus_worst_db: pair(&best_worst),
        clipped_latents: pair(&clipped),
        empty_ball_faces: empty_ball,
        least_kl: pair(&least_kl),
        kl_at_mu: pair(&kl_at_mu),
    };
    let mut table: Vec<QualityRow> = METHODS
        .iter()
        .zip(&rows)
        .map(|(&(method, label), r)| QualityRow {
            method: method.to_owned(),
            label: label.to_owned(),
            clean: r[0].get(),
            noisy_vs_clean: r[1].get(),
            noisy_vs_input: r[2].get(),
        })
        .collect();
    table.push(QualityRow {
        method: "noisy_input".to_owned(),
        label: "the noisy input itself".to_owned(),
        clean: None,
        noisy_vs_clean: noisy_input.get(),
        noisy_vs_input: None,
    });
    let clean_psnr = |method: &str| {
        table
            .iter()
            .find(|r| r.method == method)
            .and_then(|r| r.clean)
            .map_or(nan, |sc| sc.psnr_db)
    };
    let checks = Checks {
        nearest_within_margin_of_bicubic: clean_psnr("nearest")
            >= clean_psnr("bicubic") - BICUBIC_MARGIN_DB,
        different_inputs_give_different_faces: conditioning.own_input_retrieval
            >= RETRIEVAL_THRESHOLD,
    };
    Ok(QualityReport {
        bundle: bundle.display().to_string(),
        model: describe_bundle(purifier),
        backend: purifier.backend_name(),
        faces: n,
        samples: m,
        tau: params.tau,
        seed,
        noise_eps: NOISE_EPS,
        metric_notes: "PSNR: dB on RGB in [0, 1] (peak 1), capped at 100 dB. SSIM: 11x11 Gaussian \
                       window (sigma 1.5), K1 0.01, K2 0.03, valid windows, per RGB channel and \
                       averaged over channels. Noise: x + 8/255 * sign(u) per value on the [0, 1] \
                       scale (+-16/255 in the model's [-1, 1] units), clamped."
            .to_owned(),
        rows: table,
        diversity,
        conditioning,
        checks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Between-output and between-input PSNR over all pairs, and own-input retrieval.
fn conditioning(outputs: ArrayView4<'_, f32>, inputs: ArrayView4<'_, f32>) -> Conditioning {
    let n = inputs.dim().0;
    let mut between_out = Mean::default();
    let mut between_in = Mean::default();
    let mut own = 0usize;
    for i in 0..n {
        let out = outputs.index_axis(Axis(0), i);
        let to_inputs: Vec<f64> = inputs.outer_iter().map(|x| psnr(out, x)).collect();
        let mine = to_inputs[i];
        if to_inputs
            .iter()
            .enumerate()
            .all(|(j, &v)| j == i || v < mine)
        {
            own += 1;
        }
        for j in i + 1..n {
            between_out.add(psnr(out, outputs.index_axis(Axis(0), j)));
            between_in.add(psnr(
                inputs.index_axis(Axis(0), i),
                inputs.index_axis(Axis(0), j),
            ));
        }
    }
    Conditioning {
        between_outputs_psnr_db: between_out.get().unwrap_or(f64::NAN),
        between_inputs_psnr_db: between_in.get().unwrap_or(f64::NAN),
        own_input_retrieval: own as f64 / n.max(1) as f64,
    }
}

fn yes_no(v: bool) -> &'static str {
    if v { "yes" } else { "no" }
}

impl QualityReport {
    /// The figures as a plain-text table with the diversity, conditioning and check lines.
    pub fn table(&self) -> String {
        let cell = |sc: Option<Score>| match sc {
            Some(sc) => format!("{:>6.2} {:>6.4}", sc.psnr_db, sc.ssim),
            None => format!("{:>6} {:>6}", "-", "-"),
        };
        let mut t = String::new();
        let _ = writeln!(t, "bundle {} ({})", self.bundle, self.model);
        let _ = writeln!(
            t,
            "{} test faces (LFW fold-1 people, never trained on), M = {} candidates, tau = {}, \
             seed {}, {}",
            self.faces, self.samples, self.tau, self.seed, self.backend
        );
        let _ = writeln!(t, "{}", self.metric_notes);
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<30} | {:^13} | {:^13} | {:^13}",
            "", "clean faces", "noisy faces", "noisy faces"
        );
        let _ = writeln!(
            t,
            "{:<30} | {:^13} | {:^13} | {:^13}",
            "", "vs input", "vs clean", "vs noisy input"
        );
        let _ = writeln!(
            t,
            "{:<30} | {:>6} {:>6} | {:>6} {:>6} | {:>6} {:>6}",
            "output", "PSNR", "SSIM", "PSNR", "SSIM", "PSNR", "SSIM"
        );
        let _ = writeln!(t, "{}", "-".repeat(30 + 3 * 16));
        for r in &self.rows {
            let _ = writeln!(
                t,
                "{:<30} | {} | {} | {}",
                r.label,
                cell(r.clean),
                cell(r.noisy_vs_clean),
                cell(r.noisy_vs_input)
            );
        }
        let d = &self.diversity;
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "diversity: mean pairwise PSNR between the {} candidates of a face: {:.2} dB clean, \
             {:.2} dB noisy (above {IDENTICAL_CANDIDATES_DB} dB they are near-identical)",
            self.samples, d.pairwise_psnr_db[0], d.pairwise_psnr_db[1]
        );
        let _ = writeln!(
            t,
            "sampling: nearest - mean latent {:+.2} dB clean, {:+.2} dB noisy; nearest - one \
             sample {:+.2} / {:+.2} dB; best - worst candidate {:.2} / {:.2} dB",
            d.nearest_minus_mean_latent_db[0],
            d.nearest_minus_mean_latent_db[1],
            d.nearest_minus_one_sample_db[0],
            d.nearest_minus_one_sample_db[1],
            d.best_minus_worst_db[0],
            d.best_minus_worst_db[1]
        );
        let _ = writeln!(
            t,
            "KL clip: {:.1}% of latents scaled clean, {:.1}% noisy; empty KL ball (every latent \
             set to mu) for {} clean and {} noisy of the {} faces",
            100.0 * d.clipped_latents[0],
            100.0 * d.clipped_latents[1],
            d.empty_ball_faces[0],
            d.empty_ball_faces[1],
            self.faces
        );
        let _ = writeln!(
            t,
            "KL per dimension: least attainable (z = 0) {:.4} clean, {:.4} noisy; at z = mu {:.4} \
             / {:.4}; tau = {}",
            d.least_kl[0], d.least_kl[1], d.kl_at_mu[0], d.kl_at_mu[1], self.tau
        );
        let c = &self.conditioning;
        let _ = writeln!(
            t,
            "conditioning: PSNR between outputs of different faces {:.2} dB (between the inputs \
             {:.2} dB); {:.1}% of outputs are closest to their own input among the {} inputs",
            c.between_outputs_psnr_db,
            c.between_inputs_psnr_db,
            100.0 * c.own_input_retrieval,
            self.faces
        );
        let _ = writeln!(
            t,
            "sampling makes a difference: {}",
            self.sampling_verdict()
        );
        let nearest = self.clean_psnr("nearest");
        let bicubic = self.clean_psnr("bicubic");
        let _ = writeln!(
            t,
            "check: nearest candidate within {BICUBIC_MARGIN_DB} dB of bicubic (clean): {} \
             ({nearest:.2} vs {bicubic:.2} dB)",
            yes_no(self.checks.nearest_within_margin_of_bicubic)
        );
        let _ = writeln!(
            t,
            "check: different inputs give different faces: {} (own-input retrieval {:.1}%, \
             threshold {:.0}%)",
            yes_no(self.checks.different_inputs_give_different_faces),
            100.0 * c.own_input_retrieval,
            100.0 * RETRIEVAL_THRESHOLD
        );
        t
    }

    /// A plain answer to "does sampling make a difference in this model?" (clean faces).
    pub fn sampling_verdict(&self) -> String {
        let d = &self.diversity;
        let (empty, pairwise) = (d.empty_ball_faces[0], d.pairwise_psnr_db[0]);
        let (vs_mean, vs_one) = (
            d.nearest_minus_mean_latent_db[0],
            d.nearest_minus_one_sample_db[0],
        );
        if 2 * empty > self.faces {
            format!(
                "No. At tau = {} the KL ball is empty for {empty} of {} clean faces (the least \
                 attainable mean KL per dimension, at z = 0, averages {:.4}), so every latent is \
                 set to the posterior mean and every candidate is decode(mu, skip): the {} \
                 candidates are identical (pairwise {pairwise:.1} dB) and the output is \
                 {vs_mean:+.2} dB from the mean-latent output.",
                self.tau, self.faces, d.least_kl[0], self.samples
            )
        } else if pairwise > IDENTICAL_CANDIDATES_DB || vs_mean.abs() < NEGLIGIBLE_GAIN_DB {
            format!(
                "Hardly. The {} candidates of a face are {pairwise:.1} dB apart (pairwise PSNR) \
                 and the nearest is {vs_mean:+.2} dB from the mean-latent output and {vs_one:+.2} \
                 dB from a single unselected sample.",
                self.samples
            )
        } else {
            format!(
                "Yes. The {} candidates of a face differ (pairwise PSNR {pairwise:.1} dB, best \
                 minus worst {:.2} dB against the input), and choosing the nearest gains \
                 {vs_mean:+.2} dB over the mean-latent output and {vs_one:+.2} dB over a single \
                 unselected sample.",
                self.samples, d.best_minus_worst_db[0]
            )
        }
    }

    /// Clean-face PSNR of the row `method`, NaN when absent.
    pub fn clean_psnr(&self, method: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.method == method)
            .and_then(|r| r.clean)
            .map_or(f64::NAN, |sc| sc.psnr_db)
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        data::write_atomic(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn constant(v: f32) -> Array3<f32> {
        Array3::from_elem((3, 16, 16), v)
    }

    #[test]
    fn psnr_by_hand() {
        // [-1, 1] values 0 and 0.2 are 0.5 and 0.6 on the [0, 1] scale: MSE 0.01, 20 dB.
        assert!((psnr(constant(0.0).view(), constant(0.2).view()) - 20.0).abs() < 1e-6);
        assert_eq!(
            psnr(constant(0.3).view(), constant(0.3).view()),
            PSNR_CAP_DB
        );
        // Values beyond the range are clamped: 1.5 counts as 1.
        assert!((psnr(constant(1.5).view(), constant(0.8).view()) - 20.0).abs() < 1e-6);
    }

    #[test]
    fn ssim_of_constants_is_the_luminance_term() {
        // Flat images: sigma = 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), here a = 0.5, b = 0.6.
        let expected = (2.0 * 0.5 * 0.6 + SSIM_C1) / (0.25 + 0.36 + SSIM_C1);
        let got = ssim(constant(0.0).view(), constant(0.2).view());
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        assert!((ssim(constant(0.0).view(), constant(0.0).view()) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ssim_of_a_pattern_and_its_negative_by_hand() {
        // One 11x11 window. x = 0.5 + 0.25 s with s = +1 left of the middle column, -1 right of
        // it, 0 on it; y = 1 - x. The window is symmetric, so both means are 0.5; the variance is
        // v = 0.0625 (1 - g5) with g5 the middle column's weight, and cov(x, y) = -v.
        let g5 = 1.0
            / (-5i32..=5)
                .map(|k| (-f64::from(k * k) / (2.0 * 1.5 * 1.5)).exp())
                .sum::<f64>();
        let v = 0.0625 * (1.0 - g5);
        let expected = (-2.0 * v + SSIM_C2) / (2.0 * v + SSIM_C2);
        let x = Array3::from_shape_fn((1, 11, 11), |(_, _, c)| match c.cmp(&5) {
            std::cmp::Ordering::Less => 0.5,
            std::cmp::Ordering::Equal => 0.0,
            std::cmp::Ordering::Greater => -0.5,
        });
        let y = x.mapv(|v| -v);
        let got = ssim(x.view(), y.view());
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        assert!(got < -0.9);
    }

    #[test]
    fn cubic_kernel_by_hand() {
        for (x, w) in [
            (0.0, 1.0),
            (0.25, 0.8671875),
            (0.75, 0.2265625),
            (1.25, -0.0703125),
            (1.75, -0.0234375),
            (2.0, 0.0),
        ] {
            assert!((cubic(x) - w).abs() < 1e-12, "W({x}) = {}", cubic(x));
        }
    }

    #[test]
    fn bicubic_upsample_of_an_impulse_by_hand() {
        // 4x4 with 0.5 at (2, 2), upsampled 2x: output position o samples (o + 0.5) / 2 - 0.5,
        // so each axis carries the kernel weights of source 2 (edges clamped), and the 2-D
        // result is their outer product.
        let mut src = Array3::<f32>::zeros((1, 4, 4));
        src[[0, 2, 2]] = 0.5;
        let out = bicubic_resize(src.view(), 8, 8);
        let w = [
            0.0, -0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125,
        ];
        for y in 0..8 {
            for x in 0..8 {
                let expected = (0.5 * w[y] * w[x]) as f32;
                assert!(
                    (out[[0, y, x]] - expected).abs() < 1e-6,
                    "({y}, {x}): {} vs {expected}",
                    out[[0, y, x]]
                );
            }
        }
    }

    #[test]
    fn bicubic_keeps_constants_and_ramps() {
        let flat = Array3::<f32>::from_elem((3, 32, 32), 0.25);
        let up = bicubic_resize(flat.view(), 64, 64);
        assert!(up.iter().all(|v| (v - 0.25).abs() < 1e-6));
        // A linear ramp is reproduced away from the clamped edges.
        let ramp = Array3::from_shape_fn((1, 1, 16), |(_, _, x)| x as f32 * 0.05 - 0.4);
        let up = bicubic_resize(ramp.view(), 1, 32);
        for o in 4..28 {
            let src = (o as f32 + 0.5) / 2.0 - 0.5;
            assert!((up[[0, 0, o]] - (src * 0.05 - 0.4)).abs() < 1e-6);
        }
    }

    #[test]
    fn noise_moves_every_value_by_eps_within_range() {
        let face = Array3::from_shape_fn((3, 8, 8), |(c, y, x)| {
            (c as f32 - 1.0) * 0.9 + (y + x) as f32 * 0.001
        });
        let mut rng = StdRng::seed_from_u64(1);
        let noisy = random_sign_noise(face.view(), NOISE_EPS, &mut rng);
        let step = 2.0 * NOISE_EPS;
        let mut up = 0;
        for (a, b) in face.iter().zip(noisy.iter()) {
            let moved = (b - a).abs();
            let clamped = (b.abs() - 1.0).abs() < 1e-7;
            assert!((moved - step).abs() < 1e-6 || clamped, "{a} -> {b}");
            up += usize::from(b > a);
        }
        assert!(up > 50 && up < 142, "both signs occur: {up} of 192 up");
        // 8/255 everywhere gives PSNR 20 log10(255 / 8) = 30.07 dB when nothing is clamped.
        let mid = Array3::<f32>::zeros((3, 8, 8));
        let n = random_sign_noise(mid.view(), NOISE_EPS, &mut rng);
        assert!((psnr(mid.view(), n.view()) - 20.0 * (255.0f64 / 8.0).log10()).abs() < 1e-4);
    }

    #[test]
    fn retrieval_counts_outputs_closest_to_their_input() {
        let inputs = Array4::from_shape_fn((3, 3, 12, 12), |(i, _, _, _)| i as f32 * 0.5 - 0.5);
        let good = inputs.mapv(|v| v + 0.01);
        let c = conditioning(good.view(), inputs.view());
        assert_eq!(c.own_input_retrieval, 1.0);
        let collapsed = Array4::<f32>::zeros((3, 3, 12, 12));
        let c = conditioning(collapsed.view(), inputs.view());
        assert!((c.own_input_retrieval - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.between_outputs_psnr_db, PSNR_CAP_DB);
    }
}

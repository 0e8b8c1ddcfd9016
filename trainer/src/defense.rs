//! The defenses compared side by side: none, A-VAE through the plugin's own [`Purifier`] on a
//! shipped bundle, and five input transformations (down-and-up sampling, JPEG, median filter,
//! bit-depth reduction, Gaussian blur).
//!
//! Every defense maps face crops `[N, 3, S, S]` in [-1, 1] to crops of the same shape, and its
//! output is rounded to 8 bits, as the element writes purified faces back into 8-bit frames.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::purifier::{Purified, Purifier, PurifyParams, purify_passes};
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageFormat};
use ndarray::Array4;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tch::{Kind, Tensor};

/// Rounds crops in [-1, 1] to the nearest of the 256 values an 8-bit pixel can hold.
pub fn quantize(x: &Tensor) -> Tensor {
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0
}

/// A-VAE purification through the plugin's [`Purifier`]: what ships is what is measured.
pub struct AVaeDefense {
    purifier: Purifier,
    params: PurifyParams,
    /// The element's `passes`: each further pass purifies the last one's output.
    passes: usize,
    /// The element's `suspect-blur`: in a frame, faces the alarm flags before purification are
    /// blurred by this many crop pixels first ([`gstavaepurify::frame::Prefilter`]).
    suspect_blur: f32,
    /// What purification chose for every face since the last [`AVaeDefense::take_log`].
    log: Vec<Purified>,
}

impl AVaeDefense {
    /// Loads the bundle in `dir` with `backend` on the CPU; crops are purified over `passes`
    /// passes as the element does ([`purify_passes`]).
    pub fn load(dir: &Path, backend: Backend, params: PurifyParams, passes: usize) -> Result<Self> {
        ensure!(passes >= 1, "passes must be at least 1, got {passes}");
        let purifier = Purifier::load(dir, backend, Device::Cpu)
            .with_context(|| format!("cannot load the bundle '{}'", dir.display()))?;
        Ok(Self {
            purifier,
            params,
            passes,
            suspect_blur: gstavaepurify::frame::DEFAULT_SUSPECT_BLUR,
            log: Vec::new(),
        })
    }

    /// Blurs the faces the alarm flags before purification by `sigma` crop pixels, as the
    /// element's `suspect-blur` does (0: never).
    pub fn with_suspect_blur(mut self, sigma: f32) -> Result<Self> {
        ensure!(
            sigma.is_finite() && sigma >= 0.0,
            "--suspect-blur must be a finite number of crop pixels >= 0, got {sigma}"
        );
        self.suspect_blur = sigma;
        Ok(self)
    }

    /// What the element does to flagged faces before purifying them in a frame: blur them by
    /// the defense's `suspect_blur` where the bundle's alarm score reaches its 1% threshold.
    pub fn prefilter(&self) -> gstavaepurify::frame::Prefilter {
        gstavaepurify::frame::Prefilter::for_alarm(
            self.purifier.bundle().manifest.alarm.as_ref(),
            None,
            self.suspect_blur,
        )
    }

    /// The label's note of the suspect blur (empty when off).
    pub fn suspect_note(&self) -> String {
        if self.suspect_blur > 0.0 {
            format!(", suspects blurred {}", self.suspect_blur)
        } else {
            String::new()
        }
    }

    /// Chooses the nearest candidate at `block x block` block means (1: pixels; see
    /// [`Purifier::set_selection_block`]).
    pub fn with_selection_block(mut self, block: usize) -> Result<Self> {
        self.purifier
            .set_selection_block(block)
            .with_context(|| format!("--select-block {block}"))?;
        Ok(self)
    }

    /// The purification parameters (M, batch, tau).
    pub fn params(&self) -> &PurifyParams {
        &self.params
    }

    /// The purifier (bundle, engine).
    pub fn purifier(&self) -> &Purifier {
        &self.purifier
    }

    /// Notes what purification chose for faces purified outside [`Defense::apply`].
    pub fn record(&mut self, results: &[Purified]) {
        self.log.extend_from_slice(results);
    }

    /// What purification chose for every face since the last call, in order (the alarm's
    /// signals).
    pub fn take_log(&mut self) -> Vec<Purified> {
        std::mem::take(&mut self.log)
    }

    /// The purifier, to run it on whole frames ([`gstavaepurify::frame::purify_faces`]).
    pub fn purifier_mut(&mut self) -> &mut Purifier {
        &mut self.purifier
    }

    /// Purifies each face (over the defense's passes) with its own generator seeded by
    /// `seeds[i]`, so a face's result does not depend on the batch it came in. The log keeps
    /// the first pass's results, which saw the face as given.
    fn purify(&mut self, faces: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let size = faces.size();
        let n = usize::try_from(size[0])?;
        ensure!(seeds.len() == n, "{n} faces but {} seeds", seeds.len());
        let s = usize::try_from(size[2])?;
        let values = Vec::<f32>::try_from(
            &faces
                .detach()
                .to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view([-1]),
        )?;
        let mut array = Array4::from_shape_vec((n, 3, s, s), values)?;
        for (mut face, &seed) in array.outer_iter_mut().zip(seeds) {
            let mut rng = StdRng::seed_from_u64(seed);
            let batch = face.view_mut().insert_axis(ndarray::Axis(0));
            let enc = self
                .purifier
                .encode(batch.view())
                .context("A-VAE purification failed")?;
            let done = purify_passes(
                &mut self.purifier,
                batch,
                &enc,
                &self.params,
                self.passes,
                &mut rng,
            )
            .context("A-VAE purification failed")?;
            self.log.extend(done.results);
        }
        let flat: Vec<f32> = array.into_iter().collect();
        Ok(Tensor::from_slice(&flat)
            .view([size[0], 3, size[2], size[3]])
            .to_device(faces.device()))
    }
}

/// One defense of the comparison.
pub enum Defense {
    /// The recognizer sees the crop as it is.
    None,
    /// A-VAE purification (paper section 3.4).
    AVae(Box<AVaeDefense>),
    /// Area downsampling to `size` (what the A-VAE encoder sees), then bicubic upsampling back:
    /// the baseline that shows what the generator adds.
    DownUp {
        /// Side of the intermediate image.
        size: i64,
    },
    /// JPEG compression at `quality` (the `image` crate's encoder and decoder).
    Jpeg {
        /// Quality, 1 to 100.
        quality: u8,
    },
    /// Median filter over `size x size` windows, replicated borders.
    Median {
        /// Window side (odd).
        size: i64,
    },
    /// Each channel rounded to `bits` bits.
    BitDepth {
        /// Bits per channel.
        bits: u32,
    },
    /// Gaussian blur with standard deviation `sigma` pixels, kernel radius `ceil(3 sigma)`,
    /// replicated borders.
    Blur {
        /// Standard deviation in pixels.
        sigma: f64,
    },
}

impl Defense {
    /// The baselines of issue 6, in table order, after `None` and A-VAE.
    pub fn baselines() -> Vec<Defense> {
        vec![
            Defense::DownUp { size: 32 },
            Defense::Jpeg { quality: 75 },
            Defense::Median { size: 3 },
            Defense::BitDepth { bits: 4 },
            Defense::Blur { sigma: 1.0 },
        ]
    }

    /// A stable identifier for file names and JSON keys.
    pub fn key(&self) -> String {
        match self {
            Defense::None => "none".into(),
            Defense::AVae(_) => "avae".into(),
            Defense::DownUp { size } => format!("downup{size}"),
            Defense::Jpeg { quality } => format!("jpeg{quality}"),
            Defense::Median { size } => format!("median{size}"),
            Defense::BitDepth { bits } => format!("bits{bits}"),
            Defense::Blur { sigma } => format!("blur{sigma}"),
        }
    }

    /// The row label of the report tables.
    pub fn label(&self) -> String {
        match self {
            Defense::None => "No Defense".into(),
            Defense::AVae(a) => match a.purifier.selection_block() {
                1 => format!(
                    "A-VAE (M = {}, tau = {}{})",
                    a.params.samples,
                    a.params.tau,
                    a.suspect_note()
                ),
                k => format!(
                    "A-VAE (M = {}, tau = {}, chosen at {k}x{k} blocks{})",
                    a.params.samples,
                    a.params.tau,
                    a.suspect_note()
                ),
            },
            Defense::DownUp { size } => format!("Down-up {size}x{size} (area, bicubic)"),
            Defense::Jpeg { quality } => format!("JPEG q{quality}"),
            Defense::Median { size } => format!("Median {size}x{size}"),
            Defense::BitDepth { bits } => format!("Bit depth {bits}"),
            Defense::Blur { sigma } => format!("Gaussian blur sigma {sigma}"),
        }
    }

    /// Whether the output depends on the seed (only A-VAE samples).
    pub fn is_random(&self) -> bool {
        matches!(self, Defense::AVae(_))
    }

    /// Applies the defense to crops `[N, 3, S, S]` in [-1, 1], without autograd. `seeds[i]`
    /// seeds face i where the defense is random.
    pub fn apply(&mut self, faces: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let x = faces.detach().to_kind(Kind::Float);
        let out = match self {
            Defense::None => x,
            Defense::AVae(a) => a.purify(&x, seeds)?,
            Defense::DownUp { size } => {
                let s = x.size()[2];
                ensure!(
                    s % *size == 0,
                    "down-up through {size} needs crops whose side is a multiple of it, got {s}"
                );
                let k = s / *size;
                x.avg_pool2d([k, k], [k, k], [0, 0], false, true, None::<i64>)
                    .upsample_bicubic2d([s, s], false, None::<f64>, None::<f64>)
            }
            Defense::Jpeg { quality } => jpeg(&x, *quality)?,
            Defense::Median { size } => median(&x, *size),
            Defense::BitDepth { bits } => {
                let levels = f64::from((1u32 << *bits) - 1);
                ((&x + 1.0) / 2.0 * levels).round() / levels * 2.0 - 1.0
            }
            Defense::Blur { sigma } => gaussian_blur(&x, *sigma),
        };
        Ok(quantize(&out))
    }
}

/// JPEG round trip of every crop at `quality`.
pub fn jpeg(x: &Tensor, quality: u8) -> Result<Tensor> {
    let size = x.size();
    let (n, s) = (size[0], size[2]);
    let side = u32::try_from(s)?;
    let bytes = Vec::<u8>::try_from(
        &((x.clamp(-1.0, 1.0) + 1.0) * 127.5)
            .round()
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous()
            .view([-1]),
    )?;
    let plane = (3 * s * s) as usize;
    let mut decoded = Vec::with_capacity(bytes.len());
    for face in bytes.chunks_exact(plane) {
        let mut buf = Vec::new();
        JpegEncoder::new_with_quality(&mut buf, quality)
            .encode(face, side, side, ExtendedColorType::Rgb8)
            .context("JPEG encoding failed")?;
        let img = image::load(Cursor::new(buf), ImageFormat::Jpeg)
            .context("JPEG decoding failed")?
            .into_rgb8();
        decoded.extend_from_slice(img.as_raw());
    }
    Ok(Tensor::from_slice(&decoded)
        .view([n, s, s, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        .to_device(x.device())
        / 127.5
        - 1.0)
}

/// Median over `size x size` windows with replicated borders.
fn median(x: &Tensor, size: i64) -> Tensor {
    let r = size / 2;
    let size_of = x.size();
    x.replication_pad2d([r, r, r, r])
        .unfold(2, size, 1)
        .unfold(3, size, 1)
        .reshape([size_of[0], size_of[1], size_of[2], size_of[3], size * size])
        .median_dim(4, false)
        .0
}

/// Separable Gaussian blur with radius `ceil(3 sigma)` and replicated borders; differentiable.
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    // The element's taps (`suspect-blur`), so the baseline and the prefilter blur alike.
    let taps = gstavaepurify::core::image::gaussian_taps(sigma as f32);
    let r = (taps.len() / 2) as i64;
    let c = x.size()[1];
    let k = Tensor::from_slice(&taps)
        .to_device(x.device())
        .to_kind(x.kind());
    let kx = k
        .view([1, 1, 1, 2 * r + 1])
        .expand([c, 1, 1, 2 * r + 1], false);
    let ky = k
        .view([1, 1, 2 * r + 1, 1])
        .expand([c, 1, 2 * r + 1, 1], false);
    x.replication_pad2d([r, r, r, r])
        .conv2d(&kx, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
        .conv2d(&ky, None::<Tensor>, [1, 1], [0, 0], [1, 1], c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two smooth 64 x 64 test crops (a diagonal gradient per channel).
    fn ramp() -> Tensor {
        let coords = Tensor::arange(64, (Kind::Float, Device::Cpu)) / 63.0;
        let diagonal = coords.view([1, 1, 64, 1]) + coords.view([1, 1, 1, 64]);
        let channels = Tensor::from_slice(&[0.2f32, 0.5, 0.8]).view([1, 3, 1, 1]);
        let x = (diagonal * channels - 0.8).expand([2, 3, 64, 64], false);
        x.contiguous()
    }

    #[test]
    fn quantize_lands_on_8_bit_values() {
        let q = quantize(&Tensor::from_slice(&[-2.0f32, 0.001, 0.5, 1.0]));
        let v = Vec::<f32>::try_from(&((q + 1.0) * 127.5)).unwrap();
        for x in v {
            assert!((x - x.round()).abs() < 1e-3, "{x}");
        }
    }

    #[test]
    fn median_removes_an_isolated_spike_and_keeps_flat_areas() {
        let x = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(1).get(4).get(4).fill_(1.0);
        let y = median(&x, 3);
        assert_eq!(y.size(), [1, 3, 8, 8]);
        assert_eq!(y.abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn blur_preserves_constants_and_spreads_a_spike() {
        let c = Tensor::full([1, 3, 8, 8], 0.25, (Kind::Float, Device::Cpu));
        assert!(gaussian_blur(&c, 1.0).allclose(&c, 1e-6, 1e-6, false));
        let x = Tensor::zeros([1, 1, 9, 9], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(0).get(4).get(4).fill_(1.0);
        let y = gaussian_blur(&x, 1.0);
        let centre = y.double_value(&[0, 0, 4, 4]);
        // 1-D Gaussian weight at 0 with sigma 1 (radius 3) is 0.39905, squared for 2-D.
        assert!((centre - 0.39905f64.powi(2)).abs() < 1e-4, "{centre}");
        assert!((y.sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn baselines_keep_shape_and_range_and_change_the_image() {
        let x = ramp();
        for mut d in Defense::baselines() {
            let y = d.apply(&x, &[0, 1]).unwrap();
            assert_eq!(y.size(), x.size(), "{}", d.key());
            assert!(y.abs().max().double_value(&[]) <= 1.0 + 1e-6, "{}", d.key());
            let diff = (&y - &x).abs().mean(Kind::Float).double_value(&[]);
            assert!(diff < 0.2, "{} changed the image by {diff}", d.key());
        }
        let mut bits = Defense::BitDepth { bits: 4 };
        let y = bits.apply(&x, &[0, 0]).unwrap();
        let scaled = (y + 1.0) / 2.0 * 15.0;
        let off_grid = (&scaled - scaled.round()).abs().max().double_value(&[]);
        assert!(
            off_grid < 1e-4,
            "bit depth 4 left values {off_grid} off its 16 levels"
        );
        let mut jpeg = Defense::Jpeg { quality: 75 };
        let y = jpeg.apply(&x, &[0, 0]).unwrap();
        assert!((&y - &x).abs().max().double_value(&[]) > 0.0);
    }
}

//! The two threat models of the evaluation, and the image threat model's pipeline.
//!
//! - *crop*: the attacker perturbs the `S x S` crop the purifier sees (the worst case).
//! - *image* (the headline): the attacker perturbs the photo itself (the whole 250 x 250 LFW
//!   image, as a camera frame or an uploaded photo would be), within the same budgets in 1/255
//!   of that image. The undefended system is the recognizer's own alignment of the photo (a
//!   differentiable warp onto the ArcFace template, so gradients flow through it). The defended
//!   system is what ships in a pipeline: the element's alignment of the photo to `S`
//!   ([`gstavaepurify::frame`], landmarks onto the bundle's template), the defense, the paste
//!   back under the feathered mask, then the recognizer's alignment of the pasted photo.
//!
//! Landmarks come from the project's CenterFace detector on the clean photo (the landmark cache
//! of [`crate::eval`]); the attacker is not given the power to move the detector.

use anyhow::{Context, Result, bail, ensure};
use gstavaepurify::core::align::Similarity;
use gstavaepurify::core::image::{FrameMut, PixelLayout, Region};
use gstavaepurify::frame::{self, Placement};
use ndarray::{Array3, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use crate::attack::{BreakMonitor, LossGradient, Target};
use crate::data::{CropSpec, FaceSet, crop_box};
use crate::defense::{Defense, quantize};
use crate::recognizer::{
    Alignment, LFW_IMAGE_SIDE, LFW_MEAN_LANDMARKS, Landmarks, Recognizer, sampling_theta,
};

/// Which input the attacker perturbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreatModel {
    /// The whole photo, seen through the element's alignment and paste-back.
    Image,
    /// The `S x S` crop the purifier sees.
    Crop,
}

impl ThreatModel {
    /// A short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            ThreatModel::Image => "image threat model (the attacker perturbs the photo)",
            ThreatModel::Crop => "crop threat model (the attacker perturbs the purifier's crop)",
        }
    }

    /// The key in JSON files.
    pub fn key(self) -> &'static str {
        match self {
            ThreatModel::Image => "image",
            ThreatModel::Crop => "crop",
        }
    }
}

/// The crop spec that makes the whole square photo the recognizer's "crop".
pub const WHOLE_PHOTO: CropSpec = CropSpec {
    center_x: 0.5,
    center_y: 0.5,
    side: 1.0,
};

/// Side of the photos in pixels.
pub const PHOTO_SIDE: i64 = LFW_IMAGE_SIDE as i64;

/// Loads the photos of cache images `indices` as float RGB `[N, 3, 250, 250]` in [-1, 1]; the
/// error names a file that cannot be read or is not 250 x 250.
pub fn load_photos(set: &FaceSet, indices: &[i64]) -> Result<Tensor> {
    let root = std::path::Path::new(&set.index.source);
    let side = PHOTO_SIDE as u32;
    let mut pixels = Vec::with_capacity(indices.len() * 3 * (side * side) as usize);
    for &k in indices {
        let entry = usize::try_from(k)
            .ok()
            .and_then(|k| set.index.images.get(k))
            .with_context(|| format!("image index {k} is not in the crop cache"))?;
        let path = root.join(&entry.file);
        let rgb = image::open(&path)
            .with_context(|| format!("cannot read the photo '{}'", path.display()))?
            .to_rgb8();
        ensure!(
            rgb.dimensions() == (side, side),
            "the photo '{}' is {}x{}, the image threat model expects LFW's {side}x{side}",
            path.display(),
            rgb.width(),
            rgb.height()
        );
        // HWC -> CHW planes.
        for c in 0..3 {
            pixels.extend(rgb.pixels().map(|p| p.0[c]));
        }
    }
    let n = indices.len() as i64;
    Ok(Tensor::from_slice(&pixels)
        .view([n, 3, PHOTO_SIDE, PHOTO_SIDE])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0)
}

/// Photos `x` (`[N, 3, H, W]` in [-1, 1]) as 8-bit interleaved RGB, one frame after the other,
/// rounded as a camera's frame would be.
pub fn rgb_bytes(x: &Tensor) -> Result<Vec<u8>> {
    Ok(Vec::<u8>::try_from(
        &((x + 1.0) * 127.5)
            .round()
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous()
            .view([-1]),
    )?)
}

/// Where the element cuts the face out of each photo: the landmarks (the image's own, or the
/// mean LFW landmarks where it has none or with template alignment) onto the bundle's
/// `template`, or, for a bundle without a template, the cache's fixed square crop box.
pub fn placements(
    landmarks: &[Option<Landmarks>],
    template: Option<&[[f32; 2]; 5]>,
    crop: &CropSpec,
    side: usize,
) -> Result<Vec<Placement>> {
    let (x0, y0, box_side) = crop_box(crop, PHOTO_SIDE as u32, PHOTO_SIDE as u32);
    let square = Region {
        x: usize::try_from(x0).context("the crop box starts left of the photo")?,
        y: usize::try_from(y0).context("the crop box starts above the photo")?,
        width: box_side as usize,
        height: box_side as usize,
    };
    landmarks
        .iter()
        .map(|l| match template {
            Some(t) => Placement::aligned(l.as_ref().unwrap_or(&LFW_MEAN_LANDMARKS), t, side)
                .context("degenerate landmarks: cannot align the face"),
            None => Ok(Placement::Box(square)),
        })
        .collect()
}

/// A recognizer of whole photos: its "crop" is the photo, aligned by the same landmarks.
pub fn photo_recognizer(path: &std::path::Path, alignment: Alignment) -> Result<Recognizer> {
    if alignment == Alignment::Resize {
        bail!(
            "the image threat model needs --alignment landmarks or template (a resized whole \
             photo is not what a recognizer sees)"
        );
    }
    Recognizer::load(path, alignment, &WHOLE_PHOTO, PHOTO_SIDE)
}

/// The element's path through a photo: cut the face out, defend it, paste it back.
#[derive(Debug, Clone, Copy)]
pub struct PastePipeline {
    /// Side S of the face crop.
    pub side: usize,
    /// The element's `feather`.
    pub feather: f32,
    /// The element's `context` (margin low-passed around the face; 0: none).
    pub context: f32,
    /// Samples per face side of the context's low-pass (the bundle's encoder input size).
    pub context_detail: usize,
    /// The element's `passes`: A-VAE passes over each face, each purifying the last one's
    /// output.
    pub passes: usize,
}

impl PastePipeline {
    /// The element's pipeline for faces of side `side` of `bundle`: `feather` and `context`
    /// as given, the context low-passed to the bundle's encoder input size.
    pub fn new(side: usize, feather: f32, context: f32, encoder_input_size: usize) -> Self {
        Self {
            side,
            feather,
            context,
            context_detail: encoder_input_size,
            passes: frame::DEFAULT_PASSES,
        }
    }

    /// How the element pastes a face back.
    pub fn paste(&self) -> frame::Paste {
        frame::Paste {
            feather: self.feather,
            context: self.context,
            context_detail: self.context_detail,
        }
    }

    /// Defends the photos `x` (`[N, 3, 250, 250]` in [-1, 1]) as a pipeline does, each with the
    /// face at `placements[i]` and seeded by `seeds[i]`; without autograd, rounded to 8 bits.
    /// A-VAE runs through [`frame::purify_faces`], exactly as `avaepurify` runs it; the other
    /// defenses run on the crop [`frame::read`] makes and are pasted back by [`frame::paste`].
    pub fn apply(
        &self,
        defense: &mut Defense,
        x: &Tensor,
        placements: &[Placement],
        seeds: &[u64],
    ) -> Result<Tensor> {
        self.apply_with(defense, x, placements, seeds, frame::Latents::Choose)
    }

    /// [`PastePipeline::apply`] with A-VAE's latents chosen, chosen and kept (one list per
    /// photo), or given ([`frame::Latents`], one list per photo): what a tracked face gets
    /// at a full purification and between refreshes. Other defenses ignore `latents`.
    pub fn apply_with(
        &self,
        defense: &mut Defense,
        x: &Tensor,
        placements: &[Placement],
        seeds: &[u64],
        mut latents: frame::Latents<'_>,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let x = quantize(&x.detach().to_kind(Kind::Float));
        if matches!(defense, Defense::None) {
            return Ok(x);
        }
        let size = x.size();
        let n = usize::try_from(size[0])?;
        ensure!(
            placements.len() == n && seeds.len() == n,
            "{n} photos, {} placements, {} seeds",
            placements.len(),
            seeds.len()
        );
        if let Some(lists) = latents.lists() {
            ensure!(lists == n, "{n} photos, {lists} lists of latents");
        }
        let (h, w) = (usize::try_from(size[2])?, usize::try_from(size[3])?);
        let mut bytes = rgb_bytes(&x)?;
        let s = self.side;
        let how = self.paste();
        let mut storage = Vec::new();
        for (i, data) in bytes.chunks_mut(3 * h * w).enumerate() {
            let mut dest = FrameMut::new(data, w, h, 3 * w, PixelLayout::Rgb)?;
            let placement = &placements[i];
            match &mut *defense {
                Defense::AVae(avae) => {
                    let params = *avae.params();
                    let prefilter = avae.prefilter();
                    let mut rng = StdRng::seed_from_u64(seeds[i]);
                    let results = frame::purify_faces_with(
                        avae.purifier_mut(),
                        &mut dest,
                        std::slice::from_ref(placement),
                        (&params, self.passes),
                        &how,
                        &prefilter,
                        latents.rows(i..i + 1),
                        &mut rng,
                        &mut storage,
                    )
                    .map_err(|err| anyhow::anyhow!("photo {i}: purification failed: {err}"))?;
                    avae.record(&results);
                }
                other => {
                    let mut crop = Array3::<f32>::zeros((3, s, s));
                    frame::read(&dest.as_frame_ref(), placement, crop.view_mut())?;
                    let t = Tensor::from_slice(crop.as_slice().context("crop layout")?)
                        .view([1, 3, s as i64, s as i64]);
                    let out = other.apply(&t, &seeds[i..=i])?;
                    let values = Vec::<f32>::try_from(&out.contiguous().view([-1]))?;
                    let face = Array4::from_shape_vec((1, 3, s, s), values)?;
                    frame::paste_all(
                        &mut dest,
                        &[(placement, face.index_axis(ndarray::Axis(0), 0))],
                        &how,
                    )?;
                }
            }
        }
        Ok(Tensor::from_slice(&bytes)
            .view([size[0], size[2], size[3], 3])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float)
            / 127.5
            - 1.0)
    }

    /// The pipeline with the defense replaced by the identity, differentiable in `x`: the
    /// element's crop (bilinear, supersampled as it supersamples), then the paste back under
    /// the feathered mask. The backward pass of BPDA through the defended photo.
    pub fn surrogate(&self, x: &Tensor, placements: &[Placement]) -> Result<Tensor> {
        let size = x.size();
        let n = size[0];
        ensure!(
            placements.len() == n as usize && size[2] == size[3],
            "{n} square photos expected with as many placements, got {size:?} and {}",
            placements.len()
        );
        let photo = size[2];
        let s = self.side as i64;
        let to_face: Vec<(Similarity, f32)> = placements
            .iter()
            .map(|p| match *p {
                Placement::Aligned(t) => (t, self.feather),
                Placement::Box(r) => (Similarity::from_region(r, self.side), self.feather),
                Placement::Frame(r) => (Similarity::from_region(r, self.side), 0.0),
            })
            .collect();
        // The element supersamples k x k per face pixel where the face is shrunk.
        let k = to_face
            .iter()
            .map(|(t, _)| (1.0 / t.scale()).ceil().clamp(1.0, 4.0) as i64)
            .max()
            .unwrap_or(1);
        let mut crop_thetas = Vec::new();
        let mut paste_thetas = Vec::new();
        for (t, _) in &to_face {
            let inv = t.inverse().context("degenerate face placement")?;
            // Output pixel j of the k S grid is face position j / k.
            let fine = Similarity {
                a: inv.a / k as f32,
                b: inv.b / k as f32,
                tx: inv.tx,
                ty: inv.ty,
            };
            crop_thetas.push(sampling_theta(&fine, photo, s * k));
            paste_thetas.push(sampling_theta(t, s, photo));
        }
        let crop_theta = Tensor::cat(&crop_thetas, 0).to_device(x.device());
        let grid = Tensor::affine_grid_generator(&crop_theta, [n, 3, s * k, s * k], false);
        let crop = x.grid_sampler(&grid, 0, 1, false);
        let crop = if k > 1 {
            crop.avg_pool2d([k, k], [k, k], [0, 0], false, true, None::<i64>)
        } else {
            crop
        };
        let paste_theta = Tensor::cat(&paste_thetas, 0).to_device(x.device());
        let grid = Tensor::affine_grid_generator(&paste_theta, [n, 3, photo, photo], false);
        let face = crop.grid_sampler(&grid, 0, 1, false);
        // The feathered mask, from the face coordinates of every photo pixel.
        let uv = (&grid + 1.0) * (s as f64 / 2.0);
        let (u, v) = (uv.select(3, 0), uv.select(3, 1));
        let sf = s as f64;
        let edge = u.minimum(&v).minimum(&(-&u + sf)).minimum(&(-&v + sf));
        let feathers: Vec<f32> = to_face.iter().map(|(_, f)| *f).collect();
        let ramp = Tensor::from_slice(&feathers)
            .to_device(x.device())
            .view([n, 1, 1])
            * sf;
        let t = (&edge / ramp.clamp_min(1e-6)).clamp(0.0, 1.0);
        let inside = edge.gt(0.0).to_kind(Kind::Float);
        let alpha = (&t * &t * (-&t * 2.0 + 3.0) * inside).unsqueeze(1);
        Ok(&alpha * face + (-&alpha + 1.0) * x)
    }
}

/// White-box BPDA on photos: the defended photo runs forward exactly
/// ([`PastePipeline::apply`]); its backward pass is the [`PastePipeline::surrogate`], so the
/// gradient flows through the element's crop, the paste and the recognizer's alignment, and
/// through the defense as the identity. With `samples` (K) > 1 the gradient is averaged over
/// K draws of the defense's randomness (EOT).
pub struct PhotoBpda<'a> {
    /// The photo recognizer.
    pub recognizer: &'a Recognizer,
    /// The attacked pairs (their `align` are photo warps).
    pub target: &'a Target,
    /// The defense being attacked.
    pub defense: &'a mut Defense,
    /// The element's path.
    pub pipeline: PastePipeline,
    /// Where the faces of the attacked photos are.
    pub placements: &'a [Placement],
    /// K: defense draws per gradient.
    pub samples: usize,
    /// Source of the attacker's seeds for the defense.
    pub rng: StdRng,
    /// Where the first draw of every gradient is checked for a broken decision.
    pub monitor: Option<BreakMonitor>,
}

impl LossGradient for PhotoBpda<'_> {
    /// With a monitor, only the pairs no iterate has broken yet are attacked: a broken pair
    /// gets a zero gradient from then on, so PGD keeps it at the iterate that broke it (the
    /// white-box figure counts a pair broken if any iterate broke it, so attacking it further
    /// cannot change that figure; a pair that breaks early costs only the steps until then).
    /// The losses of broken pairs read 0. PGD runs this with one restart (a restart would start
    /// a broken pair anew).
    fn loss_and_grad(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = usize::try_from(x.size()[0])?;
        let active: Vec<usize> = match &self.monitor {
            Some(m) => (0..n).filter(|&i| !m.broken[i]).collect(),
            None => (0..n).collect(),
        };
        let (mut loss, mut grad) = (
            Tensor::zeros([x.size()[0]], (Kind::Float, x.device())),
            x.zeros_like(),
        );
        if active.is_empty() {
            return Ok((loss, grad));
        }
        let all = active.len() == n;
        let rows: Vec<i64> = active.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&rows).to_device(x.device());
        let pick = |t: &Tensor| {
            if all {
                t.shallow_clone()
            } else {
                t.index_select(0, &idx)
            }
        };
        let xa = pick(x);
        let target = Target {
            gallery: pick(&self.target.gallery),
            sign: pick(&self.target.sign),
            align: pick(&self.target.align),
        };
        let placements: Vec<Placement> = active.iter().map(|&i| self.placements[i]).collect();
        let k = self.samples.max(1);
        let (mut la, mut ga) = (
            Tensor::zeros([active.len() as i64], (Kind::Float, x.device())),
            xa.zeros_like(),
        );
        // Per active pair, whether it still takes steps (the first draw at this iterate decides).
        let mut keep = None;
        for draw in 0..k {
            let seeds: Vec<u64> = (0..active.len()).map(|_| self.rng.random()).collect();
            let exact = self
                .pipeline
                .apply(self.defense, &xa, &placements, &seeds)?;
            let xr = xa.detach().set_requires_grad(true);
            let sur = self.pipeline.surrogate(&xr, &placements)?;
            let y = &sur + (exact - &sur).detach();
            let l = target.loss(&self.recognizer.embed(&y, &target.align)?);
            let g = Tensor::run_backward(&[l.sum(Kind::Float)], &[&xr], false, false)
                .pop()
                .context("no gradient reached the photo")?;
            if draw == 0
                && let Some(m) = self.monitor.as_mut()
            {
                let still: Vec<f32> = m
                    .observe_rows(&target, &l.detach(), &active)?
                    .into_iter()
                    .map(|now| if now { 0.0 } else { 1.0 })
                    .collect();
                keep = Some(Tensor::from_slice(&still).to_device(x.device()));
            }
            la += l.detach();
            ga += g;
        }
        la /= k as f64;
        ga /= k as f64;
        if let Some(keep) = keep {
            ga *= keep.view([-1, 1, 1, 1]);
        }
        let _ = loss.index_copy_(0, &idx, &la);
        let _ = grad.index_copy_(0, &idx, &ga);
        Ok((loss, grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth 250 x 250 test photo in [-1, 1].
    fn photo() -> Tensor {
        let r = Tensor::arange(PHOTO_SIDE, (Kind::Float, tch::Device::Cpu)) / PHOTO_SIDE as f64;
        let xs = r.view([1, -1]).expand([PHOTO_SIDE, PHOTO_SIDE], false);
        let ys = r.view([-1, 1]).expand([PHOTO_SIDE, PHOTO_SIDE], false);
        let planes = [
            (&xs * 6.0).sin() * 0.8,
            (&ys * 4.0).cos() * 0.7,
            ((&xs + &ys) * 3.0).sin() * 0.6,
        ];
        Tensor::stack(&planes, 0).unsqueeze(0)
    }

    fn aligned() -> Placement {
        let template = [
            [0.34, 0.45],
            [0.66, 0.45],
            [0.5, 0.6],
            [0.37, 0.77],
            [0.63, 0.77],
        ];
        Placement::aligned(&LFW_MEAN_LANDMARKS, &template, 64).unwrap()
    }

    #[test]
    fn the_surrogate_follows_the_elements_crop_and_paste() {
        let pipeline = PastePipeline::new(64, 0.15, 0.0, 32);
        let x = quantize(&photo());
        let places = [aligned()];
        // 8-bit depth is the identity on 8-bit photos: what remains is the element's own crop
        // and paste, which the surrogate must reproduce.
        let exact = pipeline
            .apply(&mut Defense::BitDepth { bits: 8 }, &x, &places, &[0])
            .unwrap();
        let sur = pipeline.surrogate(&x, &places).unwrap();
        let err = (&exact - &sur).abs();
        let mean = err.mean(Kind::Float).double_value(&[]);
        let max = err.max().double_value(&[]);
        assert!(mean < 0.004 && max < 0.08, "mean {mean}, max {max}");
        // And the paste changed the face region only: the corners are the photo's.
        let corner = |t: &Tensor| t.narrow(2, 0, 20).narrow(3, 0, 20);
        assert!(corner(&exact).allclose(&corner(&x), 1e-6, 1e-6, false));
    }

    #[test]
    fn gradients_reach_the_photo_through_the_surrogate() {
        let pipeline = PastePipeline::new(64, 0.15, 0.0, 32);
        let x = photo().set_requires_grad(true);
        let y = pipeline.surrogate(&x, &[aligned()]).unwrap();
        let g = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x], false, false)
            .pop()
            .unwrap();
        // d(sum y)/dx sums to the number of output values (the paste is a convex blend of
        // resamplings that each preserve mass up to the border).
        let total = g.sum(Kind::Float).double_value(&[]);
        let count = (3 * PHOTO_SIDE * PHOTO_SIDE) as f64;
        assert!((total / count - 1.0).abs() < 0.02, "{total} vs {count}");
    }

    #[test]
    fn resize_alignment_is_refused_for_photos() {
        let err = photo_recognizer(std::path::Path::new("/nonexistent.onnx"), Alignment::Resize)
            .unwrap_err();
        assert!(err.to_string().contains("--alignment"), "{err}");
    }
}

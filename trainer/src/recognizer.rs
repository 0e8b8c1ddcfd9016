//! The face recognizer the evaluation attacks and measures: the 512-d ArcFace-style
//! MobileFaceNet `fr_feature.onnx` of the npm package `faceplugin-face-recognition-js@0.0.1`,
//! run in tch through [`crate::onnx_tch`] so that gradients reach the input.
//!
//! The model is not shipped (its provenance is unclear): `scripts/fetch-recognizer.sh` fetches it
//! into `models/recognizer/` and checks its sha256 ([`MODEL_SHA256`]).
//!
//! The recognizer reads the same `S x S` face crop in [-1, 1] that the purifier acts on. A
//! differentiable bilinear warp (`affine_grid` + `grid_sample`, border padding), one per face,
//! maps the crop to the 112 x 112 ArcFace input: aligned to the standard 5-point ArcFace
//! template through each image's own landmarks, found by the project's CenterFace detector on
//! the original image ([`Alignment::Landmarks`]), or through the mean landmarks of LFW
//! deep-funneled images ([`Alignment::Template`]), or plainly resized ([`Alignment::Resize`]).
//! Pixels are then normalised as the package does, `(p - 127) / 128` for `p` in [0, 255], RGB.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use gstavaepurify::avaefacedetect::{Detector, DetectorParams};
use gstavaepurify::bundle::sha256_file;
use gstavaepurify::core::align::{Similarity, estimate_similarity};
use gstavaepurify::core::image::{FrameRef, PixelLayout};
use gstavaepurify::engine::{Backend, Device as EngineDevice};
use tch::{Device, Kind, Tensor};

use crate::data::{CropSpec, progress_bar};
use crate::onnx_tch::{OnnxGraph, channels_last};

/// sha256 of `fr_feature.onnx` in `faceplugin-face-recognition-js@0.0.1`.
pub const MODEL_SHA256: &str = "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581";

/// Where `scripts/fetch-recognizer.sh` puts the model, relative to the workspace root.
pub const MODEL_PATH: &str = "models/recognizer/fr_feature.onnx";

/// The script that fetches the model.
pub const FETCH_SCRIPT: &str = "scripts/fetch-recognizer.sh";

/// Side of the recognizer's input in pixels.
pub const INPUT_SIZE: i64 = 112;

/// Length of an embedding.
pub const EMBEDDING_DIM: i64 = 512;

/// The standard ArcFace 5-point template in the 112 x 112 input (left eye, right eye, nose tip,
/// left and right mouth corners, in image x, y), as the package aligns faces.
pub const ARCFACE_TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Side of an LFW deep-funneled image in pixels.
pub const LFW_IMAGE_SIDE: f32 = 250.0;

/// Mean CenterFace landmarks of LFW deep-funneled images in their 250 x 250 frame (same order as
/// [`ARCFACE_TEMPLATE`]), measured over the 807 distinct images of the fold-1 pairs. Deep
/// funnelling aligns the images, so the per-image standard deviation is only 2.4 to 6.8 pixels.
pub const LFW_MEAN_LANDMARKS: [[f32; 2]; 5] = [
    [104.3, 113.8],
    [147.2, 112.1],
    [125.7, 138.2],
    [108.6, 159.0],
    [144.2, 157.5],
];

/// 5 landmarks of a face (order of [`ARCFACE_TEMPLATE`]) in pixels of its image.
pub type Landmarks = [[f32; 2]; 5];

/// How the face crop is mapped to the recognizer's 112 x 112 input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alignment {
    /// Per image, the similarity taking its CenterFace landmarks (through the crop box) onto
    /// [`ARCFACE_TEMPLATE`]; [`Alignment::Template`] where no face was found.
    Landmarks,
    /// Similarity warp taking [`LFW_MEAN_LANDMARKS`] (through the crop box) onto
    /// [`ARCFACE_TEMPLATE`]; parts of the template outside the crop repeat its border.
    Template,
    /// The whole crop resized to 112 x 112.
    Resize,
}

impl Alignment {
    /// A short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Alignment::Landmarks => {
                "ArcFace 5-point template via each image's CenterFace landmarks"
            }
            Alignment::Template => "ArcFace 5-point template via the mean LFW landmarks",
            Alignment::Resize => "whole crop resized",
        }
    }
}

/// The model path under the workspace root.
pub fn default_model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(MODEL_PATH)
}

/// Checks that the model at `path` exists and is the expected file; the error names the fetch
/// script when it is missing.
pub fn check_model(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!(
            "the face recognizer '{}' is missing: run {FETCH_SCRIPT} from the workspace root \
             (it fetches fr_feature.onnx from the npm package faceplugin-face-recognition-js@0.0.1)",
            path.display()
        );
    }
    let digest = sha256_file(path)?;
    ensure!(
        digest == MODEL_SHA256,
        "'{}' has sha256 {digest}, expected {MODEL_SHA256} (run {FETCH_SCRIPT} again)",
        path.display()
    );
    Ok(())
}

/// The crop box `(x0, y0, side)` of `crop` in a `LFW_IMAGE_SIDE`-square image, rounded as
/// `trainer prepare` rounds it.
fn crop_box(crop: &CropSpec) -> (f32, f32, f32) {
    let side = LFW_IMAGE_SIDE as u32;
    let (x0, y0, s) = crate::data::crop_box(crop, side, side);
    (x0 as f32, y0 as f32, s as f32)
}

/// The similarity taking crop pixels (of an `size x size` crop made with `crop` from a
/// `LFW_IMAGE_SIDE`-square image) to recognizer-input pixels, for `alignment` and, with
/// [`Alignment::Landmarks`], the image's `landmarks` (mean landmarks when `None`).
pub fn crop_to_input(
    alignment: Alignment,
    crop: &CropSpec,
    size: i64,
    landmarks: Option<&Landmarks>,
) -> Result<Similarity> {
    let input = INPUT_SIZE as f32;
    let points = match (alignment, landmarks) {
        (Alignment::Resize, _) => {
            return Ok(Similarity {
                a: input / size as f32,
                b: 0.0,
                tx: 0.0,
                ty: 0.0,
            });
        }
        (Alignment::Landmarks, Some(l)) => l,
        _ => &LFW_MEAN_LANDMARKS,
    };
    let (x0, y0, side) = crop_box(crop);
    let k = size as f32 / side;
    let in_crop: Vec<[f32; 2]> = points
        .iter()
        .map(|p| [(p[0] - x0) * k, (p[1] - y0) * k])
        .collect();
    estimate_similarity(&in_crop, &ARCFACE_TEMPLATE)
        .context("cannot fit the ArcFace template to the landmarks")
}

/// The `[1, 2, 3]` `affine_grid` matrix (normalised coordinates, `align_corners = false`) that
/// samples an `size x size` crop at the preimage of every recognizer-input pixel under `to_input`.
fn grid_theta(to_input: &Similarity, size: i64) -> Result<Tensor> {
    let inv = to_input
        .inverse()
        .context("degenerate crop-to-input transform")?;
    Ok(sampling_theta(&inv, size, INPUT_SIZE))
}

/// The `[1, 2, 3]` `affine_grid` matrix (normalised coordinates, `align_corners = false`) of an
/// `out_size`-square output that samples an `in_size`-square input at `out_to_in` of every
/// output pixel (pixel centres at `i + 0.5`, as [`gstavaepurify::core::align`] maps them).
pub fn sampling_theta(out_to_in: &Similarity, in_size: i64, out_size: i64) -> Tensor {
    let r = out_size as f32 / in_size as f32;
    let k = 2.0 / in_size as f32;
    let (a, b) = (out_to_in.a, out_to_in.b);
    let theta = [
        r * a,
        -r * b,
        r * (a - b) + k * out_to_in.tx - 1.0,
        r * b,
        r * a,
        r * (b + a) + k * out_to_in.ty - 1.0,
    ];
    Tensor::from_slice(&theta).view([1, 2, 3])
}

/// The recognizer: the ONNX graph in tch plus the crop-to-input warp.
#[derive(Debug)]
pub struct Recognizer {
    graph: OnnxGraph,
    crop: CropSpec,
    crop_size: i64,
    alignment: Alignment,
}

impl Recognizer {
    /// Loads and checks the model at `path` for `crop_size x crop_size` crops made with `crop`.
    pub fn load(
        path: &Path,
        alignment: Alignment,
        crop: &CropSpec,
        crop_size: i64,
    ) -> Result<Self> {
        check_model(path)?;
        let mut graph = OnnxGraph::load(path)?;
        graph.optimize_for_cpu();
        ensure!(
            graph.input_names().len() == 1,
            "'{}' should have one input, has {:?}",
            path.display(),
            graph.input_names()
        );
        Ok(Self {
            graph,
            crop: *crop,
            crop_size,
            alignment,
        })
    }

    /// The ONNX graph (for op counts and parity checks).
    pub fn graph(&self) -> &OnnxGraph {
        &self.graph
    }

    /// The alignment in use.
    pub fn alignment(&self) -> Alignment {
        self.alignment
    }

    /// Moves the weights to `device`.
    pub fn to_device(&mut self, device: Device) {
        self.graph.to_device(device);
    }

    /// The warps `[N, 2, 3]` of N crops whose images have `landmarks` (used with
    /// [`Alignment::Landmarks`]; a `None` falls back to the mean landmarks).
    pub fn align_for(&self, landmarks: &[Option<Landmarks>]) -> Result<Tensor> {
        let thetas = landmarks
            .iter()
            .map(|l| {
                let s = crop_to_input(self.alignment, &self.crop, self.crop_size, l.as_ref())?;
                grid_theta(&s, self.crop_size)
            })
            .collect::<Result<Vec<_>>>()?;
        if thetas.is_empty() {
            return Ok(Tensor::zeros([0, 2, 3], (Kind::Float, Device::Cpu)));
        }
        Ok(Tensor::cat(&thetas, 0))
    }

    /// The same warp `[n, 2, 3]` for every crop: the mean landmarks (or the resize).
    pub fn default_align(&self, n: i64) -> Result<Tensor> {
        self.align_for(&vec![None; usize::try_from(n)?])
    }

    /// The recognizer input `[N, 3, 112, 112]` (normalised as the package does) for crops
    /// `[N, 3, S, S]` in [-1, 1] and their warps `align` `[N, 2, 3]`; differentiable.
    pub fn preprocess(&self, faces: &Tensor, align: &Tensor) -> Result<Tensor> {
        let size = faces.size();
        ensure!(
            size.len() == 4
                && size[1] == 3
                && size[2] == self.crop_size
                && size[3] == self.crop_size,
            "faces must be [N, 3, {s}, {s}], got {size:?}",
            s = self.crop_size
        );
        let n = size[0];
        ensure!(
            align.size() == [n, 2, 3],
            "the warps must be [{n}, 2, 3], got {:?}",
            align.size()
        );
        let theta = align.to_device(faces.device()).to_kind(faces.kind());
        let grid = Tensor::affine_grid_generator(&theta, [n, 3, INPUT_SIZE, INPUT_SIZE], false);
        // Bilinear (mode 0), border padding (mode 1).
        let warped = faces.grid_sampler(&grid, 0, 1, false);
        Ok(((warped + 1.0) * 127.5 - 127.0) / 128.0)
    }

    /// Embeddings `[N, 512]` (not normalised) of recognizer inputs `[N, 3, 112, 112]`.
    pub fn embed_input(&self, input: &Tensor) -> Result<Tensor> {
        // Channels-last strides: libtorch's CPU convolutions of this network run several
        // times faster on them than on NCHW (and the layout carries through every layer).
        let input = channels_last(input);
        let out = self
            .graph
            .run(&[&input])?
            .into_iter()
            .next()
            .context("the recognizer returned no output")?;
        ensure!(
            out.size() == [input.size()[0], EMBEDDING_DIM],
            "the recognizer returned {:?}, expected [N, {EMBEDDING_DIM}]",
            out.size()
        );
        Ok(out)
    }

    /// Embeddings `[N, 512]` of crops `[N, 3, S, S]` in [-1, 1] warped by `align` `[N, 2, 3]`;
    /// differentiable.
    pub fn embed(&self, faces: &Tensor, align: &Tensor) -> Result<Tensor> {
        self.embed_input(&self.preprocess(faces, align)?)
    }

    /// Unit-length embeddings of many crops, `batch` at a time, without autograd.
    pub fn embed_all(&self, faces: &Tensor, align: &Tensor, batch: i64) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let n = faces.size()[0];
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            parts.push(normalize(&self.embed(
                &faces.narrow(0, start, len),
                &align.narrow(0, start, len),
            )?));
            start += len;
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros(
                [0, EMBEDDING_DIM],
                (Kind::Float, faces.device()),
            ));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}

/// A decoded RGB image as a packed frame for the plugin's image and detection code.
pub fn rgb_frame(rgb: &image::RgbImage) -> FrameRef<'_> {
    FrameRef {
        data: rgb.as_raw(),
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        stride: 3 * rgb.width() as usize,
        layout: PixelLayout::Rgb,
    }
}

/// Landmarks of the central face of each image in `paths` (LFW's 250 x 250 images), found by
/// the project's CenterFace detector (`models/centerface`); `None` where no face is found.
pub fn detect_landmarks(paths: &[PathBuf]) -> Result<Vec<Option<Landmarks>>> {
    let model = gstavaepurify::avaefacedetect::default_model_path();
    let mut detector = Detector::open(&model, Backend::Auto, EngineDevice::Cpu)
        .with_context(|| format!("cannot open the face detector '{}'", model.display()))?;
    let params = DetectorParams {
        input_size: 256,
        ..DetectorParams::default()
    };
    let bar = progress_bar(paths.len() as u64, "landmarks");
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let rgb = image::open(path)
            .with_context(|| format!("cannot read '{}'", path.display()))?
            .into_rgb8();
        ensure!(
            rgb.width() as f32 == LFW_IMAGE_SIDE && rgb.height() as f32 == LFW_IMAGE_SIDE,
            "'{}' is {}x{}, the landmark alignment expects LFW's {LFW_IMAGE_SIDE}x{LFW_IMAGE_SIDE} images",
            path.display(),
            rgb.width(),
            rgb.height()
        );
        let faces = detector
            .detect(&rgb_frame(&rgb), &params)
            .with_context(|| format!("face detection failed on '{}'", path.display()))?;
        let centre = LFW_IMAGE_SIDE / 2.0;
        let central = faces.iter().min_by(|a, b| {
            let d = |f: &gstavaepurify::core::detect::Face| {
                let c = f.centre();
                (c[0] - centre).hypot(c[1] - centre)
            };
            d(a).total_cmp(&d(b))
        });
        out.push(central.map(|f| f.landmarks));
        bar.inc(1);
    }
    bar.finish();
    Ok(out)
}

/// Rows of `x` scaled to unit L2 norm.
pub fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

/// Row-wise cosine similarity of two `[N, D]` tensors; differentiable.
pub fn cosine(a: &Tensor, b: &Tensor) -> Tensor {
    (normalize(a) * normalize(b)).sum_dim_intlist(1, false, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_theta_is_the_identity() {
        let s = crop_to_input(Alignment::Resize, &CropSpec::default(), 64, None).unwrap();
        let theta = grid_theta(&s, 64).unwrap();
        let id = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0]).view([1, 2, 3]);
        assert!(theta.allclose(&id, 1e-6, 1e-6, false), "{theta}");
    }

    #[test]
    fn template_maps_mean_eyes_onto_the_template_eyes() {
        let crop = CropSpec::default();
        let (x0, y0, side) = crop_box(&crop);
        let to_crop = |p: [f32; 2]| [(p[0] - x0) * 64.0 / side, (p[1] - y0) * 64.0 / side];
        let s = crop_to_input(Alignment::Template, &crop, 64, None).unwrap();
        for k in 0..2 {
            let q = s.apply(to_crop(LFW_MEAN_LANDMARKS[k]));
            let t = ARCFACE_TEMPLATE[k];
            assert!(
                (q[0] - t[0]).abs() < 2.0 && (q[1] - t[1]).abs() < 2.0,
                "{q:?} vs {t:?}"
            );
        }
        // Landmarks shifted by (10, -10) pixels map onto the template as the mean ones did.
        let shifted = LFW_MEAN_LANDMARKS.map(|p| [p[0] + 10.0, p[1] - 10.0]);
        let s2 = crop_to_input(Alignment::Landmarks, &crop, 64, Some(&shifted)).unwrap();
        let (q, q0) = (
            s2.apply(to_crop(shifted[2])),
            s.apply(to_crop(LFW_MEAN_LANDMARKS[2])),
        );
        assert!(
            (q[0] - q0[0]).abs() < 1e-3 && (q[1] - q0[1]).abs() < 1e-3,
            "{q:?} vs {q0:?}"
        );
    }

    #[test]
    fn grid_samples_the_preimage_pixel() {
        // A crop whose value is its x coordinate: after a pure scale, input pixel j samples the
        // crop at (j + 0.5) * S / 112 - 0.5.
        let s = Similarity {
            a: 112.0 / 64.0,
            b: 0.0,
            tx: 0.0,
            ty: 0.0,
        };
        let theta = grid_theta(&s, 64).unwrap();
        let x = Tensor::arange(64, (Kind::Float, Device::Cpu))
            .view([1, 1, 1, 64])
            .expand([1, 1, 64, 64], false)
            .contiguous();
        let grid = Tensor::affine_grid_generator(&theta, [1, 1, 112, 112], false);
        let out = x.grid_sampler(&grid, 0, 1, false);
        let j = 40;
        let expected = (j as f64 + 0.5) * 64.0 / 112.0 - 0.5;
        let got = out.double_value(&[0, 0, 10, j]);
        assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
    }
}

//! `trainer template`: measures where CenterFace puts the 5 facial landmarks inside the fixed
//! crops `trainer prepare` made, so that `avaepurify` can align faces to the geometry the model
//! was trained on (the manifest's `landmark_template`, written by `trainer export
//! --landmark-template`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use gstavaepurify::avaefacedetect::{Detector, DetectorParams};
use gstavaepurify::core::detect::LANDMARKS;
use gstavaepurify::core::image::{FrameRef, PixelLayout, square_box};
use gstavaepurify::engine::{Backend, Device};

use crate::data::{self, CacheIndex, CropSpec, Split};

/// Landmark positions (left eye, right eye, nose tip, left and right mouth corners, as seen in
/// the image), as fractions of the face crop's side.
pub type LandmarkTemplate = [[f32; 2]; LANDMARKS];

/// Least detector confidence of a face that counts towards the template.
pub const MIN_CONFIDENCE: f32 = 0.8;

/// What [`measure`] needs.
#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// Image root of the crop cache (its `source`, or `<dataset>/lfw-deepfunneled`).
    pub images: PathBuf,
    /// The crop cache index (`<name>-<S>.json`) whose crop box and training split are used.
    pub index: PathBuf,
    /// Most training images to run the detector on, evenly spread over the split.
    pub limit: usize,
    /// CenterFace ONNX file.
    pub model: PathBuf,
    /// Detector backend.
    pub backend: Backend,
}

/// The measured template and how it was measured.
#[derive(Debug, Clone)]
pub struct TemplateReport {
    /// Mean landmark positions, as fractions of the crop's side.
    pub template: LandmarkTemplate,
    /// Per-coordinate standard deviation, same layout.
    pub spread: LandmarkTemplate,
    /// Images that gave one confident face with every landmark inside the crop.
    pub used: usize,
    /// Images the detector ran on.
    pub examined: usize,
}

/// Runs CenterFace on up to `opts.limit` training images of the cache and averages the
/// landmarks of the images with exactly one confident face, in the cache's crop coordinates.
pub fn measure(opts: &TemplateOptions) -> Result<TemplateReport> {
    let text = fs::read_to_string(&opts.index).with_context(|| {
        format!(
            "cannot read the crop cache index '{}' (run `trainer prepare` first)",
            opts.index.display()
        )
    })?;
    let index: CacheIndex = serde_json::from_str(&text)
        .with_context(|| format!("'{}' is not a crop cache index", opts.index.display()))?;
    let train: Vec<&str> = index
        .images
        .iter()
        .filter(|e| e.split == Split::Train)
        .map(|e| e.file.as_str())
        .collect();
    ensure!(
        !train.is_empty() && opts.limit > 0,
        "no training images to measure ('{}' has {} training images, --images {})",
        opts.index.display(),
        train.len(),
        opts.limit
    );
    let step = train.len().div_ceil(opts.limit);
    let chosen: Vec<&str> = train.iter().step_by(step).copied().collect();

    let mut detector = Detector::open(&opts.model, opts.backend, Device::Cpu)
        .with_context(|| format!("cannot open the detector '{}'", opts.model.display()))?;
    let params = DetectorParams {
        input_size: 256,
        ..DetectorParams::default()
    };
    let bar = data::progress_bar(chosen.len() as u64, "images");
    let mut sum = [[0.0f64; 2]; LANDMARKS];
    let mut sum_sq = [[0.0f64; 2]; LANDMARKS];
    let mut used = 0usize;
    for file in &chosen {
        bar.inc(1);
        let path = opts.images.join(file);
        let Some(points) = crop_landmarks(&mut detector, &params, &path, &index.crop)? else {
            continue;
        };
        for (i, [x, y]) in points.iter().enumerate() {
            for (k, v) in [x, y].into_iter().enumerate() {
                sum[i][k] += f64::from(*v);
                sum_sq[i][k] += f64::from(*v) * f64::from(*v);
            }
        }
        used += 1;
    }
    bar.finish_and_clear();
    ensure!(
        used > 0,
        "no image of {} gave a single confident face (detector '{}', images under '{}')",
        chosen.len(),
        opts.model.display(),
        opts.images.display()
    );
    let n = used as f64;
    let template = sum.map(|p| p.map(|s| (s / n) as f32));
    let mut spread = [[0.0f32; 2]; LANDMARKS];
    for i in 0..LANDMARKS {
        for k in 0..2 {
            let mean = sum[i][k] / n;
            spread[i][k] = (sum_sq[i][k] / n - mean * mean).max(0.0).sqrt() as f32;
        }
    }
    Ok(TemplateReport {
        template,
        spread,
        used,
        examined: chosen.len(),
    })
}

/// The landmarks of the single confident face of one image, as fractions of its training crop;
/// `None` when the image has no such face or a landmark falls outside the crop.
fn crop_landmarks(
    detector: &mut Detector,
    params: &DetectorParams,
    path: &Path,
    crop: &CropSpec,
) -> Result<Option<LandmarkTemplate>> {
    let rgb = image::open(path)
        .with_context(|| format!("cannot read '{}'", path.display()))?
        .into_rgb8();
    let (width, height) = rgb.dimensions();
    let frame = FrameRef {
        data: rgb.as_raw(),
        width: width as usize,
        height: height as usize,
        stride: 3 * width as usize,
        layout: PixelLayout::Rgb,
    };
    let faces = detector
        .detect(&frame, params)
        .with_context(|| format!("detection failed on '{}'", path.display()))?;
    let [face] = faces.as_slice() else {
        return Ok(None);
    };
    if face.confidence < MIN_CONFIDENCE {
        return Ok(None);
    }
    let (x0, y0, side) = data::crop_box(crop, width, height);
    let Some(crop_square) = square_box(x0, y0, side, side, 0.0, frame.width, frame.height) else {
        return Ok(None);
    };
    let s = crop_square.side as f32;
    let points = face.landmarks.map(|[x, y]| {
        [
            (x - crop_square.x as f32) / s,
            (y - crop_square.y as f32) / s,
        ]
    });
    let inside = points.iter().flatten().all(|v| (0.0..=1.0).contains(v));
    Ok(inside.then_some(points))
}

/// Writes `template` as JSON `[[x, y], ...]` (5 points).
pub fn write_template(path: &Path, template: &LandmarkTemplate) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(template)?;
    fs::write(path, json + "\n").with_context(|| format!("cannot write '{}'", path.display()))
}

/// Reads a template written by [`write_template`], checking that every coordinate is in [0, 1].
pub fn read_template(path: &Path) -> Result<LandmarkTemplate> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the landmark template '{}'", path.display()))?;
    let template: LandmarkTemplate = serde_json::from_str(&text).with_context(|| {
        format!(
            "'{}' is not a landmark template: expected [[x, y], ...] with 5 points",
            path.display()
        )
    })?;
    ensure!(
        template.iter().flatten().all(|v| (0.0..=1.0).contains(v)),
        "landmark template '{}' has a coordinate outside [0, 1]: {template:?}",
        path.display()
    );
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips_and_rejects_out_of_range_points() {
        let dir = std::env::temp_dir().join(format!("avae-template-{}", std::process::id()));
        let path = dir.join("template.json");
        let t = [
            [0.3, 0.4],
            [0.7, 0.4],
            [0.5, 0.55],
            [0.35, 0.7],
            [0.65, 0.7],
        ];
        write_template(&path, &t).unwrap();
        assert_eq!(read_template(&path).unwrap(), t);
        fs::write(
            &path,
            "[[0.3, 0.4], [1.7, 0.4], [0.5, 0.55], [0.35, 0.7], [0.65, 0.7]]",
        )
        .unwrap();
        assert!(read_template(&path).is_err());
        fs::write(&path, "[[0.3, 0.4]]").unwrap();
        assert!(read_template(&path).is_err());
        fs::remove_dir_all(&dir).ok();
    }
}

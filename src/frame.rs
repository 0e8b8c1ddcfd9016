//! The frame purifier, without GStreamer: the faces of one packed RGB frame are cut out (a
//! square box, the whole frame, or a similarity warp onto the bundle's landmark template),
//! purified in one [`Purifier`] call, and pasted back under a feathered mask.
//!
//! `avaepurify` turns ROI metas into [`Placement`]s and calls [`purify_faces`]; the trainer's
//! image threat model calls the same function on whole photos, so the evaluation measures
//! exactly what a pipeline does to a frame.

use ndarray::{ArrayView3, ArrayViewMut3, ArrayViewMut4, Axis};
use rand::rngs::StdRng;

use crate::core::align::{self, Similarity};
use crate::core::image::{self, FrameMut, FrameRef, Region};
use crate::core::resample;
use crate::purifier::{Purified, Purifier, PurifyParams};

/// Where one face lies in its frame, and so how it is cut out and put back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// The whole frame (or a region of it), resampled to the face and written back as it is.
    Frame(Region),
    /// A square box around the face, pasted back under the feathered mask.
    Box(Region),
    /// A similarity transform (frame pixels to face pixels) that puts the face's landmarks on
    /// the bundle's template, pasted back through its inverse under the feathered mask.
    Aligned(Similarity),
}

impl Placement {
    /// The aligned placement that maps `landmarks` (frame pixels, the five points of
    /// [`crate::bundle::Manifest::landmark_template`]) onto `template` (fractions of the
    /// `side` x `side` face); `None` when the points are degenerate (coinciding, not finite).
    pub fn aligned(
        landmarks: &[[f32; 2]; 5],
        template: &[[f32; 2]; 5],
        side: usize,
    ) -> Option<Placement> {
        let dst = template.map(|[u, v]| [u * side as f32, v * side as f32]);
        align::estimate_similarity(landmarks, &dst)
            .filter(|t| t.inverse().is_some())
            .map(Placement::Aligned)
    }

    /// The frame region this `side` x `side` face covers in a `width` x `height` frame,
    /// clipped to the frame; `None` when it misses the frame.
    pub fn bounds(&self, side: usize, width: usize, height: usize) -> Option<Region> {
        match self {
            Placement::Frame(region) | Placement::Box(region) => Some(*region),
            Placement::Aligned(to_face) => aligned_bounds(to_face, side, width, height),
        }
    }
}

/// Why a frame's faces could not be purified; the frame is then untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame's pixels could not be read or written (bad layout, stride, region).
    Unreadable(String),
    /// The purifier failed or panicked.
    Engine(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Unreadable(reason) | FrameError::Engine(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads, purifies and writes back every face of `frame` in one purifier call, with `feather`
/// the fraction of the face over which the pasted face fades into the frame. `storage` holds the
/// face batch between calls (it grows to `faces.len() * 3 * S * S`). On error the frame is
/// untouched: faces are written only once all of them are purified.
pub fn purify_faces(
    purifier: &mut Purifier,
    frame: &mut FrameMut<'_>,
    faces: &[Placement],
    params: &PurifyParams,
    feather: f32,
    rng: &mut StdRng,
    storage: &mut Vec<f32>,
) -> Result<Vec<Purified>, FrameError> {
    let unreadable = |err: crate::Error| FrameError::Unreadable(err.to_string());
    let side = purifier.image_size();
    let n = faces.len();
    storage.resize(n * 3 * side * side, 0.0);
    let mut batch = ArrayViewMut4::from_shape((n, 3, side, side), &mut storage[..])
        .map_err(|err| FrameError::Unreadable(format!("face batch: {err}")))?;

    let source = frame.as_frame_ref();
    for (placement, face) in faces.iter().zip(batch.axis_iter_mut(Axis(0))) {
        read(&source, placement, face).map_err(unreadable)?;
    }

    let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        purifier.purify(batch.view_mut(), params, rng)
    }))
    .map_err(|_| FrameError::Engine("the purifier panicked (see the log above)".to_owned()))?
    .map_err(|err| FrameError::Engine(err.to_string()))?;
    if results.len() != n {
        return Err(FrameError::Engine(format!(
            "the purifier returned {} results for {n} faces",
            results.len()
        )));
    }

    for (placement, face) in faces.iter().zip(batch.axis_iter(Axis(0))) {
        paste(frame, placement, face, feather).map_err(unreadable)?;
    }
    Ok(results)
}

/// Cuts the face at `placement` out of `frame` into `out` (`[3, S, S]`, RGB in [-1, 1]).
pub fn read(
    frame: &FrameRef<'_>,
    placement: &Placement,
    out: ArrayViewMut3<'_, f32>,
) -> Result<(), crate::Error> {
    match placement {
        Placement::Frame(region) | Placement::Box(region) => {
            image::read_region(frame, *region, out)
        }
        Placement::Aligned(to_face) => align::warp_face(frame, to_face, out),
    }
}

/// Writes `face` (`[3, S, S]`) back to where `placement` cut it from.
pub fn paste(
    frame: &mut FrameMut<'_>,
    placement: &Placement,
    face: ArrayView3<'_, f32>,
    feather: f32,
) -> Result<(), crate::Error> {
    match placement {
        Placement::Frame(region) => image::write_region(frame, *region, face),
        Placement::Box(region) => {
            // Resampled to the box first (the kernel of `write_region`), the paste itself is
            // 1:1: a feather of 0 writes exactly what `write_region` would.
            let fitted = resample::resize(face, region.height, region.width);
            align::paste_face(
                frame,
                &Similarity::from_region(*region, region.width),
                fitted.view(),
                feather,
            )
        }
        Placement::Aligned(to_face) => paste_antialiased(frame, to_face, face, feather),
    }
}

/// Pixelates the frame region of each face (fail closed: no recogniser can use it), in blocks
/// of a quarter of the face.
pub fn conceal(
    frame: &mut FrameMut<'_>,
    faces: &[Placement],
    side: usize,
) -> Result<(), crate::Error> {
    for placement in faces {
        let Some(region) = placement.bounds(side, frame.width, frame.height) else {
            continue;
        };
        let block = region.width.max(region.height).div_ceil(4).max(2);
        image::pixelate(frame, region, block)?;
    }
    Ok(())
}

/// Pastes `face` (`[3, S, S]`) back through `to_face` under the feathered mask. Where the face
/// is larger than its place in the frame it is first area-averaged by the largest factor that
/// divides S and does not exceed the shrink, so that the paste does not alias.
fn paste_antialiased(
    frame: &mut FrameMut<'_>,
    to_face: &Similarity,
    face: ArrayView3<'_, f32>,
    feather: f32,
) -> Result<(), crate::Error> {
    let side = face.dim().1;
    let shrink = to_face.scale().floor();
    let factor = (2..=side)
        .take_while(|&k| k as f32 <= shrink)
        .filter(|&k| side.is_multiple_of(k))
        .last();
    match factor {
        Some(k) => {
            let small = resample::area_downsample(face, k);
            let k = k as f32;
            let scaled = Similarity {
                a: to_face.a / k,
                b: to_face.b / k,
                tx: to_face.tx / k,
                ty: to_face.ty / k,
            };
            align::paste_face(frame, &scaled, small.view(), feather)
        }
        None => align::paste_face(frame, to_face, face, feather),
    }
}

/// The frame region covered by the `side` x `side` face of an aligned crop (`to_face` maps
/// frame to face), clipped to the frame; `None` when it misses the frame.
fn aligned_bounds(
    to_face: &Similarity,
    side: usize,
    width: usize,
    height: usize,
) -> Option<Region> {
    let back = to_face.inverse()?;
    let side = side as f32;
    let corners = [[0.0, 0.0], [side, 0.0], [0.0, side], [side, side]].map(|p| back.apply(p));
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for [x, y] in corners {
        if !x.is_finite() || !y.is_finite() {
            return None;
        }
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let x0 = x0.floor().max(0.0) as usize;
    let y0 = y0.floor().max(0.0) as usize;
    let x1 = (x1.ceil().max(0.0) as usize).min(width);
    let y1 = (y1.ceil().max(0.0) as usize).min(height);
    // Lazily: the widths underflow when the face lies past the frame's right or bottom edge.
    (x1 > x0 && y1 > y0).then(|| Region {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::image::PixelLayout;

    const TEMPLATE: [[f32; 2]; 5] = [
        [0.34, 0.45],
        [0.66, 0.45],
        [0.5, 0.6],
        [0.37, 0.77],
        [0.63, 0.77],
    ];

    #[test]
    fn aligned_placement_puts_the_landmarks_on_the_template() {
        let landmarks = TEMPLATE.map(|[u, v]| [100.0 + 200.0 * u, 50.0 + 200.0 * v]);
        let Some(Placement::Aligned(t)) = Placement::aligned(&landmarks, &TEMPLATE, 64) else {
            panic!("expected an aligned placement");
        };
        for (p, q) in landmarks.iter().zip(TEMPLATE) {
            let [u, v] = t.apply(*p);
            assert!((u - q[0] * 64.0).abs() < 1e-3 && (v - q[1] * 64.0).abs() < 1e-3);
        }
        let bounds = Placement::Aligned(t).bounds(64, 1000, 1000).unwrap();
        // 200 x 200 pixels from (100, 50), give or take the rounding outwards of each edge.
        assert!((99..=100).contains(&bounds.x) && (49..=50).contains(&bounds.y));
        assert!((200..=202).contains(&bounds.width) && (200..=202).contains(&bounds.height));
        assert_eq!(Placement::aligned(&[[3.0, 3.0]; 5], &TEMPLATE, 64), None);
    }

    #[test]
    fn aligned_bounds_clip_to_the_frame_and_miss_outside_it() {
        let t = Similarity {
            a: 0.5,
            b: 0.0,
            tx: 10.0,
            ty: 10.0,
        };
        // The 64-pixel face covers frame pixels -20..108 on both axes.
        let r = Placement::Aligned(t).bounds(64, 100, 50).unwrap();
        assert_eq!((r.x, r.y, r.width, r.height), (0, 0, 100, 50));
        // Faces past the right and bottom edges and before the left one miss the frame.
        for (tx, ty) in [(-500.0, 10.0), (10.0, -500.0), (500.0, 10.0)] {
            let far = Similarity { tx, ty, ..t };
            assert_eq!(Placement::Aligned(far).bounds(64, 100, 50), None, "{far:?}");
        }
    }

    #[test]
    fn conceal_pixelates_only_the_face() {
        let (w, h) = (40, 20);
        let mut data: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let before = data.clone();
        let mut frame = FrameMut {
            data: &mut data,
            width: w,
            height: h,
            stride: w * 3,
            layout: PixelLayout::Rgb,
        };
        let region = Region {
            x: 4,
            y: 4,
            width: 8,
            height: 8,
        };
        conceal(&mut frame, &[Placement::Box(region)], 64).unwrap();
        let px = |d: &[u8], x: usize, y: usize| d[(y * w + x) * 3];
        assert_eq!(px(&data, 30, 10), px(&before, 30, 10));
        // A 2 x 2 block inside the face is flat after pixelation.
        assert_eq!(px(&data, 4, 4), px(&data, 5, 5));
        assert_ne!(data, before);
    }
}

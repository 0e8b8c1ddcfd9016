//! The frame purifier, without GStreamer: the faces of one packed RGB frame are cut out (a
//! square box, the whole frame, or a similarity warp onto the bundle's landmark template),
//! purified in one [`Purifier`] call, and pasted back under a feathered mask.
//!
//! `avaepurify` turns ROI metas into [`Placement`]s and calls [`purify_faces`]; the trainer's
//! image threat model calls the same function on whole photos, so the evaluation measures
//! exactly what a pipeline does to a frame.

use ndarray::{Array3, ArrayView3, ArrayViewMut3, ArrayViewMut4, Axis};
use rand::rngs::StdRng;

use crate::alarm::{AlarmParams, NativeBands};
use crate::core::align::{self, Similarity};
use crate::core::band;
use crate::core::image::{self, FrameMut, FrameRef, Region};
use crate::core::resample;
use crate::purifier::{Chosen, Purified, Purifier, PurifyParams};

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
            Placement::Aligned(to_face) => aligned_bounds(to_face, 0.0, side, width, height),
        }
    }

    /// The frame region that pasting this face can write: [`Placement::bounds`] widened by a
    /// context of `margin` x the face's side on every edge (see [`soften_context`]) and two
    /// pixels for the resampling kernels, clipped to the frame.
    pub fn covers(&self, side: usize, margin: f32, width: usize, height: usize) -> Option<Region> {
        let widen = |region: Region, by: f32| {
            let dx = (region.width as f32 * by).ceil() as usize + 2;
            let dy = (region.height as f32 * by).ceil() as usize + 2;
            let (x, y) = (region.x.saturating_sub(dx), region.y.saturating_sub(dy));
            Region {
                x,
                y,
                width: (region.x + region.width + dx).min(width).saturating_sub(x),
                height: (region.y + region.height + dy)
                    .min(height)
                    .saturating_sub(y),
            }
        };
        match self {
            Placement::Frame(region) => Some(widen(*region, 0.0)),
            Placement::Box(region) => Some(widen(*region, margin)),
            Placement::Aligned(to_face) => {
                aligned_bounds(to_face, margin, side, width, height).map(|r| widen(r, 0.0))
            }
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

/// `avaepurify`'s default `passes` (measured, see README "Does the defense work?").
pub const DEFAULT_PASSES: usize = 2;

/// `avaepurify`'s default `context` (measured, see README "Does the defense work?"), also the
/// evaluation's default, so that it measures what ships.
pub const DEFAULT_CONTEXT: f32 = 0.5;

/// `avaepurify`'s default `suspect-blur` ([`Prefilter`]), crop pixels; 0: off.
pub const DEFAULT_SUSPECT_BLUR: f32 = 1.0;

/// How a purified face goes back into its frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paste {
    /// Fraction of the face over which the pasted face fades into the frame.
    pub feather: f32,
    /// Margin around the face crop, as a fraction of its side, that is low-passed before the
    /// face is pasted (see [`soften_context`]); 0 leaves the frame around the face as it is.
    pub context: f32,
    /// Samples per face side at which the context is low-passed (the encoder's input size:
    /// the context keeps no more detail than the purifier reads from the face).
    pub context_detail: usize,
}

impl Paste {
    /// A paste with `feather` and no context.
    pub fn feathered(feather: f32) -> Self {
        Paste {
            feather,
            context: 0.0,
            context_detail: 0,
        }
    }
}

/// What happens to a face the alarm flags before it is purified: where the bundle's alarm
/// score can be read from the frame alone (its finest band, [`native_bands`]), a face whose
/// score is above `threshold` (the alarm's own test) has its region (the crop and its context) Gaussian-blurred in
/// the frame with `sigma` face-crop pixels before it is read, so that the finest detail an
/// attack put there does not reach the purifier. Clean faces under the threshold are read as
/// they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prefilter {
    /// Alarm score from which a face is blurred.
    pub threshold: f32,
    /// Blur in face-crop pixels (0: none).
    pub sigma: f32,
}

impl Prefilter {
    /// No face is blurred.
    pub const OFF: Prefilter = Prefilter {
        threshold: f32::INFINITY,
        sigma: 0.0,
    };

    /// The prefilter of a bundle's `alarm`: faces scoring above `threshold` (the alarm's own
    /// 1% threshold when `None`) are blurred by `sigma` face-crop pixels; off without an alarm
    /// or with `sigma` 0.
    pub fn for_alarm(alarm: Option<&AlarmParams>, threshold: Option<f32>, sigma: f32) -> Self {
        match alarm {
            Some(alarm) if sigma > 0.0 => Prefilter {
                threshold: threshold.unwrap_or(alarm.threshold_1),
                sigma,
            },
            _ => Prefilter::OFF,
        }
    }

    /// Whether this prefilter can blur anything.
    pub fn is_on(&self) -> bool {
        self.sigma > 0.0 && self.threshold.is_finite()
    }

    /// Whether it can blur faces scored by `alarm`: it is on and the alarm scores from the
    /// frame alone ([`AlarmParams::scores_from_the_frame`]). Only then does a face's region get
    /// written before its paste.
    pub fn acts_on(&self, alarm: Option<&AlarmParams>) -> bool {
        self.is_on() && alarm.is_some_and(AlarmParams::scores_from_the_frame)
    }
}

/// Frame pixels per face-crop pixel of `placement` (`side` its crop side).
pub fn frame_pixels_per_crop_pixel(placement: &Placement, side: usize) -> f32 {
    match placement {
        Placement::Frame(region) | Placement::Box(region) => {
            region.width.max(region.height) as f32 / side.max(1) as f32
        }
        Placement::Aligned(to_face) => 1.0 / to_face.scale().max(1e-6),
    }
}

/// Blurs, as `prefilter` says, the faces of `faces` whose alarm score (`alarm`, from their
/// finest-band figures `bands`) reaches its threshold; returns which faces it blurred.
pub fn blur_suspects(
    frame: &mut FrameMut<'_>,
    faces: &[Placement],
    bands: &[NativeBands],
    alarm: Option<&AlarmParams>,
    prefilter: &Prefilter,
    side: usize,
    margin: f32,
) -> Result<Vec<bool>, crate::Error> {
    let mut blurred = vec![false; faces.len()];
    let Some(alarm) = alarm.filter(|_| prefilter.acts_on(alarm)) else {
        return Ok(blurred);
    };
    for ((placement, &b), flag) in faces.iter().zip(bands).zip(blurred.iter_mut()) {
        if alarm
            .native_score(b)
            .is_none_or(|score| score <= prefilter.threshold)
        {
            continue;
        }
        let Some(region) = placement.covers(side, margin.max(0.0), frame.width, frame.height)
        else {
            continue;
        };
        if region.width == 0 || region.height == 0 {
            continue;
        }
        let sigma = prefilter.sigma * frame_pixels_per_crop_pixel(placement, side);
        image::gaussian_blur_region(frame, region, sigma)?;
        *flag = true;
    }
    Ok(blurred)
}

/// How each pass of [`purify_faces_with`] gets each face's latent.
#[derive(Debug)]
pub enum Latents<'a> {
    /// Chosen among M candidates (a full purification).
    Choose,
    /// Chosen among M candidates, and each face's chosen latent of each pass pushed onto its
    /// list (`kept[face]`), as `avaepurify` keeps them for a track.
    Keep(&'a mut [Vec<Chosen>]),
    /// Decoded from each face's given latent of each pass (`given[face][pass]`) with the
    /// face's own encoding, no M candidates: `avaepurify`'s reuse path between refreshes.
    Reuse(&'a [Vec<Chosen>]),
}

impl Latents<'_> {
    /// How many faces' lists it holds (`None` for [`Latents::Choose`], which has none).
    pub fn lists(&self) -> Option<usize> {
        match self {
            Latents::Choose => None,
            Latents::Keep(kept) => Some(kept.len()),
            Latents::Reuse(given) => Some(given.len()),
        }
    }

    /// The same route for the faces `range` of its lists only.
    pub fn rows(&mut self, range: std::ops::Range<usize>) -> Latents<'_> {
        match self {
            Latents::Choose => Latents::Choose,
            Latents::Keep(kept) => Latents::Keep(&mut kept[range]),
            Latents::Reuse(given) => Latents::Reuse(&given[range]),
        }
    }
}

/// Reads, purifies and writes back every face of `frame` in one purifier call per pass, pasted
/// as `paste` says (feathered edge, low-passed context). With `passes` > 1 each further pass
/// reads the faces again from the frame the last pass was pasted into and purifies them again,
/// exactly as `passes` `avaepurify` elements in a row would. The results (distance,
/// candidate, the alarm's signals) are the first pass's, which saw the face as given.
/// `storage` holds the face batch between calls (it grows to `faces.len() * 3 * S * S`). On
/// error the frame is untouched: the rows a pass may write are kept and put back.
#[allow(clippy::too_many_arguments)]
pub fn purify_faces(
    purifier: &mut Purifier,
    frame: &mut FrameMut<'_>,
    faces: &[Placement],
    params: &PurifyParams,
    passes: usize,
    paste: &Paste,
    prefilter: &Prefilter,
    rng: &mut StdRng,
    storage: &mut Vec<f32>,
) -> Result<Vec<Purified>, FrameError> {
    purify_faces_with(
        purifier,
        frame,
        faces,
        (params, passes),
        paste,
        prefilter,
        Latents::Choose,
        rng,
        storage,
    )
}

/// [`purify_faces`] with each pass's latents chosen, chosen and kept, or given
/// ([`Latents`]); `run` is the purification's parameters and passes. With
/// [`Latents::Reuse`] every face needs a latent for every pass.
#[allow(clippy::too_many_arguments)]
pub fn purify_faces_with(
    purifier: &mut Purifier,
    frame: &mut FrameMut<'_>,
    faces: &[Placement],
    (params, passes): (&PurifyParams, usize),
    paste: &Paste,
    prefilter: &Prefilter,
    mut latents: Latents<'_>,
    rng: &mut StdRng,
    storage: &mut Vec<f32>,
) -> Result<Vec<Purified>, FrameError> {
    let unreadable = |err: crate::Error| FrameError::Unreadable(err.to_string());
    if faces.is_empty() {
        // Nothing to encode: the engines are never run on an empty batch.
        return Ok(Vec::new());
    }
    let side = purifier.image_size();
    let n = faces.len();
    if let Some(lists) = latents.lists().filter(|&l| l != n) {
        return Err(FrameError::Engine(format!(
            "{lists} lists of latents for {n} faces: one per face expected"
        )));
    }
    storage.resize(n * 3 * side * side, 0.0);
    let mut batch = ArrayViewMut4::from_shape((n, 3, side, side), &mut storage[..])
        .map_err(|err| FrameError::Unreadable(format!("face batch: {err}")))?;
    let alarm = purifier.bundle().manifest.alarm.as_ref();
    // A blurred suspect is written before the last paste too: keep its rows as well.
    let writes = if prefilter.acts_on(alarm) {
        passes.max(2)
    } else {
        passes
    };
    let kept = Snapshot::take(frame, faces.iter(), side, paste, writes);
    let bands = native_bands(&frame.as_frame_ref(), faces.iter(), side);

    if let Err(err) = blur_suspects(frame, faces, &bands, alarm, prefilter, side, paste.context) {
        kept.restore(frame);
        return Err(unreadable(err));
    }

    let mut run = || -> Result<Vec<Purified>, FrameError> {
        let mut first = None;
        for pass in 0..passes.max(1) {
            read_all(&frame.as_frame_ref(), faces.iter(), batch.view_mut()).map_err(unreadable)?;
            let results = engine_call(|| {
                let enc = purifier.encode(batch.view())?;
                match &mut latents {
                    Latents::Choose => purifier.purify_encoded(batch.view_mut(), &enc, params, rng),
                    Latents::Keep(kept) => {
                        let (results, chosen) =
                            purifier.purify_chosen(batch.view_mut(), &enc, params, rng)?;
                        for (list, c) in kept.iter_mut().zip(chosen) {
                            list.push(c);
                        }
                        Ok(results)
                    }
                    Latents::Reuse(given) => {
                        // One list per face is checked above; each needs this pass's latent.
                        let chosen: Vec<&Chosen> = given
                            .iter()
                            .map(|g| g.get(pass))
                            .collect::<Option<_>>()
                            .ok_or_else(|| crate::Error::InvalidParameter {
                                name: "latents",
                                value: format!("no latent for pass {} of {passes}", pass + 1),
                                expected: "one latent per face and pass",
                            })?;
                        purifier.decode_chosen(batch.view_mut(), &enc, &chosen, params.batch)
                    }
                }
            })?;
            if results.len() != n {
                return Err(FrameError::Engine(format!(
                    "the purifier returned {} results for {n} faces",
                    results.len()
                )));
            }
            first.get_or_insert_with(|| {
                let mut results = results;
                for (r, &b) in results.iter_mut().zip(&bands) {
                    r.set_native_bands(b);
                }
                results
            });
            let pasted: Vec<(&Placement, ArrayView3<'_, f32>)> =
                faces.iter().zip(batch.axis_iter(Axis(0))).collect();
            paste_all(frame, &pasted, paste).map_err(unreadable)?;
        }
        Ok(first.unwrap_or_default())
    };
    let outcome = run();
    if outcome.is_err() {
        kept.restore(frame);
    }
    outcome
}

/// The alarm's finest-band figures ([`crate::core::band::frame_bands`]) of every face of
/// `faces` (`side` its crop side), read from `frame` over the face's region at the frame's
/// own resolution, with the width of the face's crop in frame pixels; `(0, 0)` bands for a
/// face outside the frame.
pub fn native_bands<'p>(
    frame: &FrameRef<'_>,
    faces: impl IntoIterator<Item = &'p Placement>,
    side: usize,
) -> Vec<NativeBands> {
    faces
        .into_iter()
        .map(|p| {
            let (fine, mid) = p
                .bounds(side, frame.width, frame.height)
                .map_or((0.0, 0.0), |region| band::frame_bands(frame, region));
            NativeBands {
                fine,
                mid,
                width: frame_pixels_per_crop_pixel(p, side) * side as f32,
            }
        })
        .collect()
}

/// Runs `f` on the purifier, turning an error or a panic into [`FrameError::Engine`].
pub fn engine_call<T>(f: impl FnOnce() -> Result<T, crate::Error>) -> Result<T, FrameError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| FrameError::Engine("the purifier panicked (see the log above)".to_owned()))?
        .map_err(|err| FrameError::Engine(err.to_string()))
}

/// Cuts every face of `faces` out of `frame` into the rows of `batch` (`[N, 3, S, S]`).
pub fn read_all<'p>(
    frame: &FrameRef<'_>,
    faces: impl IntoIterator<Item = &'p Placement>,
    mut batch: ArrayViewMut4<'_, f32>,
) -> Result<(), crate::Error> {
    for (placement, face) in faces.into_iter().zip(batch.axis_iter_mut(Axis(0))) {
        read(frame, placement, face)?;
    }
    Ok(())
}

/// The frame rows that pasting some faces can write (their crops, feathered edges and
/// contexts), copied before the first paste so that a failure in a later pass can put the
/// frame back as it was.
#[derive(Debug, Default)]
pub struct Snapshot {
    start: usize,
    bytes: Vec<u8>,
}

impl Snapshot {
    /// Copies the rows of `frame` that pasting `faces` (`side` x `side`, as `paste` says) over
    /// `passes` passes can write. With one pass nothing: the only paste is the last step.
    pub fn take<'p>(
        frame: &FrameMut<'_>,
        faces: impl IntoIterator<Item = &'p Placement>,
        side: usize,
        paste: &Paste,
        passes: usize,
    ) -> Snapshot {
        if passes <= 1 {
            return Snapshot::default();
        }
        let margin = paste.context.max(0.0);
        let (mut y0, mut y1) = (frame.height, 0);
        for placement in faces {
            if let Some(r) = placement.covers(side, margin, frame.width, frame.height) {
                y0 = y0.min(r.y);
                y1 = y1.max(r.y + r.height);
            }
        }
        if y1 <= y0 {
            return Snapshot::default();
        }
        let start = (y0 * frame.stride).min(frame.data.len());
        let end = (y1 * frame.stride).min(frame.data.len());
        Snapshot {
            start,
            bytes: frame.data[start..end].to_vec(),
        }
    }

    /// Puts the copied rows back.
    pub fn restore(&self, frame: &mut FrameMut<'_>) {
        if let Some(rows) = frame
            .data
            .get_mut(self.start..self.start + self.bytes.len())
        {
            rows.copy_from_slice(&self.bytes);
        }
    }
}

/// Writes every purified face back: first every face's context is low-passed (so that one
/// face's context cannot cover another face), then the faces are pasted on top.
pub fn paste_all(
    frame: &mut FrameMut<'_>,
    faces: &[(&Placement, ArrayView3<'_, f32>)],
    how: &Paste,
) -> Result<(), crate::Error> {
    if how.context > 0.0 {
        for (placement, face) in faces {
            soften_context(frame, placement, face.dim().1, how)?;
        }
    }
    for (placement, face) in faces {
        paste(frame, placement, face.view(), how.feather)?;
    }
    Ok(())
}

/// Low-passes the frame around the face at `placement` (`side` its crop side): the square
/// that extends `context` x `side` beyond every edge of the face crop is resampled down to
/// `context_detail` samples per face side and back up, fading out over the outer half of the
/// margin. A recogniser's own crop of the face is wider than the purifier's (it sees forehead,
/// cheeks and ears the purifier never reads), so without this an attacker's perturbation there
/// reaches the recogniser untouched. Whole-frame placements have no context.
pub fn soften_context(
    frame: &mut FrameMut<'_>,
    placement: &Placement,
    side: usize,
    how: &Paste,
) -> Result<(), crate::Error> {
    let margin = how.context;
    if margin <= 0.0 || how.context_detail == 0 {
        return Ok(());
    }
    let to_face = match placement {
        Placement::Frame(_) => return Ok(()),
        Placement::Box(region) => Similarity::from_region(*region, side),
        Placement::Aligned(to_face) => *to_face,
    };
    let span = 1.0 + 2.0 * margin;
    let samples = ((how.context_detail as f32 * span).round() as usize).max(2);
    // Frame pixels -> context samples: the face's own coordinates, shifted by the margin and
    // scaled to the samples.
    let k = samples as f32 / (side as f32 * span);
    let shift = margin * side as f32;
    let to_context = Similarity {
        a: to_face.a * k,
        b: to_face.b * k,
        tx: (to_face.tx + shift) * k,
        ty: (to_face.ty + shift) * k,
    };
    let mut low = Array3::<f32>::zeros((3, samples, samples));
    align::warp_face(&frame.as_frame_ref(), &to_context, low.view_mut())?;
    align::paste_face(frame, &to_context, low.view(), margin / (2.0 * span))
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
    margin: f32,
    side: usize,
    width: usize,
    height: usize,
) -> Option<Region> {
    let back = to_face.inverse()?;
    let (lo, hi) = (-margin * side as f32, (1.0 + margin) * side as f32);
    let corners = [[lo, lo], [hi, lo], [lo, hi], [hi, hi]].map(|p| back.apply(p));
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
    fn context_smooths_a_ring_around_the_face_and_nothing_else() {
        let (w, h) = (120, 120);
        // Alternating columns: the finest detail a frame can hold, all of it lost to a
        // low-pass at a quarter of the resolution.
        let mut data: Vec<u8> = (0..w * h * 3)
            .map(|i| if (i / 3) % 2 == 0 { 40 } else { 200 })
            .collect();
        let before = data.clone();
        let mut frame = FrameMut::new(&mut data, w, h, w * 3, PixelLayout::Rgb).unwrap();
        // A 40-pixel face at (40, 40), read at S = 64, context 0.5: the context square spans
        // frame pixels 20..100, fully smoothed over 30..90.
        let face = Placement::Box(Region {
            x: 40,
            y: 40,
            width: 40,
            height: 40,
        });
        let how = Paste {
            feather: 0.15,
            context: 0.5,
            context_detail: 16,
        };
        soften_context(&mut frame, &face, 64, &how).unwrap();
        let px = |d: &[u8], x: usize, y: usize| i32::from(d[(y * w + x) * 3]);
        // Inside the margin the stripes (160 levels apart) are smoothed out.
        for (x, y) in [(32, 60), (35, 35), (60, 85), (86, 50)] {
            let contrast = (px(&data, x, y) - px(&data, x + 1, y)).abs();
            assert!(contrast <= 40, "({x}, {y}): stripes {contrast} apart");
        }
        // Beyond the context square the frame is untouched.
        for (x, y) in [(5, 5), (110, 60), (60, 110), (15, 60)] {
            assert_eq!(px(&data, x, y), px(&before, x, y), "({x}, {y})");
        }
        // No context, no change.
        let mut again = before.clone();
        let mut frame = FrameMut::new(&mut again, w, h, w * 3, PixelLayout::Rgb).unwrap();
        soften_context(&mut frame, &face, 64, &Paste::feathered(0.15)).unwrap();
        assert_eq!(again, before);
    }

    #[test]
    fn conceal_pixelates_only_the_face() {
        let (w, h) = (40, 20);
        let mut data: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let before = data.clone();
        let mut frame = FrameMut::new(&mut data, w, h, w * 3, PixelLayout::Rgb).unwrap();
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

    /// A 160 x 120 frame of smooth gradients and two faces: a box and an aligned one.
    fn two_faces() -> (Vec<u8>, [Placement; 2]) {
        let (w, h) = (160, 120);
        let data: Vec<u8> = (0..w * h * 3)
            .map(|i| {
                let (p, c) = (i / 3, i % 3);
                ((p % w) * (2 + c) + (p / w) * 3) as u8
            })
            .collect();
        let boxed = Placement::Box(Region {
            x: 10,
            y: 20,
            width: 48,
            height: 48,
        });
        let turned = Placement::Aligned(Similarity {
            a: 0.9,
            b: 0.3,
            tx: -70.0,
            ty: -20.0,
        });
        (data, [boxed, turned])
    }

    #[test]
    fn flagged_faces_are_blurred_before_purification_and_clean_ones_are_not() {
        let (_, faces) = two_faces();
        let (w, h) = (160, 120);
        let mut data: Vec<u8> = (0..w * h * 3)
            .map(|i| {
                let (x, y, c) = ((i / 3) % w, i / 3 / w, i % 3);
                let v = 110.0
                    + 40.0 * (x as f32 * 0.15 + c as f32).sin()
                    + 30.0 * (y as f32 * 0.11).cos();
                v.round() as u8
            })
            .collect();
        // Sign noise of +-8 over the first face only.
        for y in 20..68 {
            for x in 10..58 {
                for c in 0..3 {
                    let i = (y * w + x) * 3 + c;
                    let sign = if (x * 7 + y * 13 + c * 5) % 3 == 0 {
                        8
                    } else {
                        -8
                    };
                    data[i] = (i32::from(data[i]) + sign).clamp(0, 255) as u8;
                }
            }
        }
        let before = data.clone();
        let side = 64;
        let bands = native_bands(
            &FrameRef::new(&before, w, h, w * 3, PixelLayout::Rgb).unwrap(),
            faces.iter(),
            side,
        );
        // A score of ln(fine / mid) alone, flagged above 1.
        let alarm = AlarmParams {
            features: vec![crate::alarm::Feature::LogNativeDetailRatio],
            mean: vec![0.0],
            std: vec![1.0],
            weights: vec![1.0],
            threshold_1: 1.0,
            threshold_5: 0.5,
            calibration: String::new(),
            native_sizes: Vec::new(),
        };
        let prefilter = Prefilter {
            threshold: 1.0,
            sigma: 1.0,
        };
        let mut frame = FrameMut::new(&mut data, w, h, w * 3, PixelLayout::Rgb).unwrap();
        let off = blur_suspects(
            &mut frame,
            &faces,
            &bands,
            Some(&alarm),
            &Prefilter::OFF,
            side,
            0.5,
        )
        .unwrap();
        assert_eq!(off, vec![false, false]);
        let flags = blur_suspects(
            &mut frame,
            &faces,
            &bands,
            Some(&alarm),
            &prefilter,
            side,
            0.5,
        )
        .unwrap();
        assert_eq!(flags, vec![true, false], "bands {bands:?}");
        let after = FrameRef::new(&data, w, h, w * 3, PixelLayout::Rgb).unwrap();
        let region = faces[0].bounds(side, w, h).unwrap();
        let fine_before = bands[0].fine;
        let (fine_after, _) = band::frame_bands(&after, region);
        assert!(
            fine_after < 0.2 * fine_before,
            "{fine_before} -> {fine_after}"
        );
        // Nothing outside the flagged face's region and context moved.
        let covered = faces[0].covers(side, 0.5, w, h).unwrap();
        for y in 0..h {
            for x in 0..w {
                let inside = (covered.x..covered.x + covered.width).contains(&x)
                    && (covered.y..covered.y + covered.height).contains(&y);
                if !inside {
                    let i = (y * w + x) * 3;
                    assert_eq!(data[i..i + 3], before[i..i + 3], "({x}, {y})");
                }
            }
        }
        // An alarm that needs purification's signals blurs nothing.
        let mut needs_purification = alarm.clone();
        needs_purification.features = vec![crate::alarm::Feature::LogDistance];
        let mut copy = before.clone();
        let mut frame = FrameMut::new(&mut copy, w, h, w * 3, PixelLayout::Rgb).unwrap();
        let flags = blur_suspects(
            &mut frame,
            &faces,
            &bands,
            Some(&needs_purification),
            &prefilter,
            side,
            0.5,
        )
        .unwrap();
        assert_eq!(flags, vec![false, false]);
        assert_eq!(copy, before);
    }

    fn with_context() -> Paste {
        Paste {
            feather: 0.15,
            context: 0.5,
            context_detail: 32,
        }
    }

    /// [`purify_faces`] on the 160 x 120 frame `data` (from [`two_faces`]) with `faces`, M =
    /// `samples`, `passes` passes, the context paste and no prefilter, seeded by `rng`.
    fn purify_in(
        purifier: &mut Purifier,
        data: &mut [u8],
        faces: &[Placement],
        (samples, passes): (usize, usize),
        rng: &mut StdRng,
    ) -> Vec<Purified> {
        let params = PurifyParams {
            samples,
            batch: 4,
            tau: purifier.default_tau(),
        };
        let mut frame = FrameMut::new(data, 160, 120, 160 * 3, PixelLayout::Rgb).unwrap();
        purify_faces(
            purifier,
            &mut frame,
            faces,
            &params,
            passes,
            &with_context(),
            &Prefilter::OFF,
            rng,
            &mut Vec::new(),
        )
        .unwrap()
    }

    #[test]
    fn reusing_the_kept_latents_repeats_the_purification() {
        let mut purifier = crate::purifier::tiny_purifier();
        let params = PurifyParams {
            samples: 3,
            batch: 4,
            tau: purifier.default_tau(),
        };
        let (start, faces) = two_faces();
        let mut run = |data: &mut Vec<u8>, latents: Latents<'_>| {
            let mut frame = FrameMut::new(data, 160, 120, 160 * 3, PixelLayout::Rgb).unwrap();
            let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(5);
            purify_faces_with(
                &mut purifier,
                &mut frame,
                &faces,
                (&params, 2),
                &with_context(),
                &Prefilter::OFF,
                latents,
                &mut rng,
                &mut Vec::new(),
            )
        };
        let mut kept = vec![Vec::new(); 2];
        let mut full = start.clone();
        run(&mut full, Latents::Keep(&mut kept)).unwrap();
        assert!(
            kept.iter().all(|k| k.len() == 2),
            "a latent per face and pass"
        );
        assert_ne!(full, start);
        // The same frame decoded from the kept latents: the same faces (within one level: an
        // engine may round the last bits differently with the size of its call).
        let mut reused = start.clone();
        run(&mut reused, Latents::Reuse(&kept)).unwrap();
        let most = full
            .iter()
            .zip(&reused)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            most <= 1,
            "reuse differs from the full purification by {most}"
        );
        // Too few latents: an error, the frame put back.
        let short: Vec<Vec<Chosen>> = kept.iter().map(|k| k[..1].to_vec()).collect();
        let mut failed = start.clone();
        assert!(run(&mut failed, Latents::Reuse(&short)).is_err());
        assert_eq!(failed, start);
        // A list for one face of two: refused before anything is written.
        let err = run(&mut failed, Latents::Reuse(&kept[..1])).unwrap_err();
        assert!(
            err.to_string().contains("1 lists of latents for 2 faces"),
            "{err}"
        );
        assert_eq!(failed, start);
    }

    #[test]
    fn the_alarms_finest_band_is_read_from_the_frame_as_it_came_in() {
        let mut purifier = crate::purifier::tiny_purifier();
        let (start, faces) = two_faces();
        let mut data = start.clone();
        let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(3);
        let results = purify_in(&mut purifier, &mut data, &faces, (2, 2), &mut rng);
        let before = FrameRef::new(&start, 160, 120, 160 * 3, PixelLayout::Rgb).unwrap();
        let side = purifier.image_size();
        let want = native_bands(&before, faces.iter(), side);
        for (r, b) in results.iter().zip(want) {
            assert!(b.fine > 0.0 && b.mid > 0.0 && b.width > 0.0);
            assert_eq!(
                (r.native_fine, r.native_mid, r.native_width),
                (b.fine, b.mid, b.width)
            );
        }
    }

    #[test]
    fn further_passes_read_the_pasted_frame_as_elements_in_a_row_would() {
        let mut purifier = crate::purifier::tiny_purifier();
        let (start, faces) = two_faces();
        let run = |purifier: &mut Purifier, passes: usize, times: usize| {
            let mut data = start.clone();
            let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(7);
            let mut first = Vec::new();
            for k in 0..times {
                let results = purify_in(purifier, &mut data, &faces, (3, passes), &mut rng);
                if k == 0 {
                    first = results;
                }
            }
            (data, first)
        };
        let (two_passes, results) = run(&mut purifier, 2, 1);
        let (two_calls, first_call) = run(&mut purifier, 1, 2);
        let (one_pass, _) = run(&mut purifier, 1, 1);
        assert_eq!(two_passes, two_calls, "two passes = two elements in a row");
        assert_eq!(results, first_call, "the results are the first pass's");
        assert_ne!(two_passes, one_pass, "the second pass changed the frame");
    }

    #[test]
    fn the_snapshot_holds_every_pixel_a_paste_writes() {
        let mut purifier = crate::purifier::tiny_purifier();
        let (start, faces) = two_faces();
        let mut data = start.clone();
        let kept = {
            let frame = FrameMut::new(&mut data, 160, 120, 160 * 3, PixelLayout::Rgb).unwrap();
            Snapshot::take(&frame, faces.iter(), 64, &with_context(), 3)
        };
        let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(3);
        purify_in(&mut purifier, &mut data, &faces, (2, 3), &mut rng);
        let covered: Vec<Region> = faces
            .iter()
            .map(|f| f.covers(64, 0.5, 160, 120).unwrap())
            .collect();
        let inside = |x: usize, y: usize| {
            covered
                .iter()
                .any(|r| (r.x..r.x + r.width).contains(&x) && (r.y..r.y + r.height).contains(&y))
        };
        let changed: Vec<(usize, usize)> = (0..160 * 120)
            .filter(|p| data[p * 3..p * 3 + 3] != start[p * 3..p * 3 + 3])
            .map(|p| (p % 160, p / 160))
            .collect();
        assert!(
            changed.len() > 1000,
            "the faces were pasted: {}",
            changed.len()
        );
        let outside: Vec<_> = changed.iter().filter(|&&(x, y)| !inside(x, y)).collect();
        assert!(
            outside.is_empty(),
            "written outside the covered regions: {outside:?}"
        );
        let mut frame = FrameMut::new(&mut data, 160, 120, 160 * 3, PixelLayout::Rgb).unwrap();
        kept.restore(&mut frame);
        assert_eq!(data, start, "the snapshot puts the frame back");
    }

    #[test]
    fn no_faces_purify_nothing_and_leave_the_frame_alone() {
        let mut purifier = crate::purifier::tiny_purifier();
        let (w, h) = (8, 6);
        let mut data: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let before = data.clone();
        let mut frame = FrameMut::new(&mut data, w, h, w * 3, PixelLayout::Rgb).unwrap();
        let params = PurifyParams {
            samples: 2,
            batch: 2,
            tau: purifier.default_tau(),
        };
        let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(0);
        let results = purify_faces(
            &mut purifier,
            &mut frame,
            &[],
            &params,
            DEFAULT_PASSES,
            &Paste::feathered(0.15),
            &Prefilter::OFF,
            &mut rng,
            &mut Vec::new(),
        )
        .unwrap();
        assert!(results.is_empty());
        assert_eq!(data, before);
    }
}

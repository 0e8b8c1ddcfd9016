//! One frame's faces through `avaepurify`'s two paths: every face is encoded in one call;
//! tracked faces between refreshes decode their track's kept latent (one decoder run), the
//! others are purified in full (M samples, one call for all of them). A reused face whose
//! decoding is too far from it is purified in full at once. Under a live budget, faces get a
//! full purification only while the measured costs say it fits; the others take the reuse
//! path, or go out unpurified when they have no latent yet. The frame is written only once
//! every face is done, so on error it is untouched.

use std::time::Instant;

use ndarray::{Array4, Axis};
use rand::rngs::StdRng;

use super::targets::Target;
use super::tracks::{Budget, Costs, FacePath, Outcome, Plan, Refresh, Tracks};
use crate::core::image::FrameMut;
use crate::frame::{self, FrameError, Paste};
use crate::purifier::{Chosen, Encoded, PassEngine, Passes, Purified, PurifyParams, purify_passes};
use crate::shared::PurifierHandle;

/// How this frame is purified: the sampling, the refresh rule and the live budget.
pub(super) struct Rate {
    pub(super) params: PurifyParams,
    pub(super) paste: Paste,
    pub(super) passes: usize,
    pub(super) interval: u32,
    pub(super) ratio: f64,
    pub(super) budget: Option<Budget>,
}

/// Engine time of each path in this frame (ms), the encoder's share included.
#[derive(Debug, Default)]
pub(super) struct Timing {
    pub(super) full_ms: f64,
    pub(super) reuse_ms: f64,
}

/// What a frame's purification works with.
pub(super) struct Work<'a> {
    pub(super) purifier: &'a mut PurifierHandle,
    pub(super) rng: &'a mut StdRng,
    pub(super) tracks: &'a mut Tracks,
    pub(super) costs: &'a mut Costs,
}

/// Runs `f` on the purifier, turning an error or a panic into [`FrameError::Engine`].
fn engine<T>(f: impl FnOnce() -> Result<T, crate::Error>) -> Result<T, FrameError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| FrameError::Engine("the purifier panicked (see the log above)".to_owned()))?
        .map_err(|err| FrameError::Engine(err.to_string()))
}

/// Copies faces `rows` of `batch` into `out`.
fn scatter(out: &mut Array4<f32>, rows: &[usize], batch: &Array4<f32>) {
    for (k, &i) in rows.iter().enumerate() {
        out.index_axis_mut(Axis(0), i)
            .assign(&batch.index_axis(Axis(0), k));
    }
}

/// Purifies the faces of `targets` in `frame` along their paths and records the tracks.
pub(super) fn purify(
    work: Work<'_>,
    frame: &mut FrameMut<'_>,
    targets: &[Target],
    rate: &Rate,
) -> Result<(Vec<Outcome>, Timing), FrameError> {
    let Work {
        purifier,
        rng,
        tracks,
        costs,
    } = work;
    let unreadable = |err: crate::Error| FrameError::Unreadable(err.to_string());
    let side = purifier.image_size();
    let n = targets.len();
    let copy_started = Instant::now();
    let mut input = Array4::<f32>::zeros((n, 3, side, side));
    let source = frame.as_frame_ref();
    for (target, face) in targets.iter().zip(input.axis_iter_mut(Axis(0))) {
        frame::read(&source, &target.placement, face).map_err(unreadable)?;
    }
    let mut copy_time = copy_started.elapsed();

    let started = Instant::now();
    let enc = engine(|| purifier.encode(input.view()))?;
    let encode_time = started.elapsed();
    costs.encode.update(encode_time, n);
    let encode_share = encode_time.as_secs_f64() * 1000.0 / n.max(1) as f64;

    let ids: Vec<Option<i32>> = targets.iter().map(|t| t.track).collect();
    let mut plans = tracks.plan(&ids, rate.interval);
    let mut output = input.clone();
    let mut results: Vec<Option<Purified>> = vec![None; n];
    let mut timing = Timing::default();

    // The reuse path: faces between refreshes, and under a live budget also the faces due
    // for a refresh, whose reused decoding stands in if the full purification does not fit.
    let mut reuse: Vec<usize> = (0..n)
        .filter(|&i| match plans[i] {
            Plan::Reuse => true,
            Plan::Full(Refresh::Interval) => rate.budget.is_some(),
            Plan::Full(_) => false,
        })
        .collect();
    reuse.sort_by_key(|&i| plans[i].is_full());
    if let Some(budget) = &rate.budget {
        let after = costs.copy.ms() * n as f64;
        reuse.truncate(budget.fitting(reuse.len(), costs.reuse.ms(), after));
    }
    if !reuse.is_empty() {
        let chosen: Vec<&Chosen> = reuse
            .iter()
            .filter_map(|&i| ids[i].and_then(|id| tracks.chosen(id)))
            .collect();
        let mut batch = input.select(Axis(0), &reuse);
        let started = Instant::now();
        let decoded = engine(|| {
            purifier.decode_chosen(
                batch.view_mut(),
                &enc.select(&reuse),
                &chosen,
                rate.params.batch,
            )
        })?;
        // Further passes: each decodes the latent its pass chose at the last full purification
        // with the encoding of the previous pass's output.
        for k in 0..rate.passes.saturating_sub(1) {
            let (rows, latents): (Vec<usize>, Vec<&Chosen>) = reuse
                .iter()
                .enumerate()
                .filter_map(|(r, &i)| {
                    let id = ids[i]?;
                    tracks.later(id).get(k).map(|c| (r, c))
                })
                .unzip();
            if rows.is_empty() {
                break;
            }
            let mut sub = batch.select(Axis(0), &rows);
            let sub_enc = engine(|| purifier.encode(sub.view()))?;
            engine(|| {
                purifier.decode_chosen(sub.view_mut(), &sub_enc, &latents, rate.params.batch)
            })?;
            scatter(&mut batch, &rows, &sub);
        }
        let elapsed = started.elapsed();
        costs.reuse.update(elapsed, reuse.len());
        timing.reuse_ms = elapsed.as_secs_f64() * 1000.0 + encode_share * reuse.len() as f64;
        scatter(&mut output, &reuse, &batch);
        for (&i, result) in reuse.iter().zip(decoded) {
            let id = ids[i].unwrap_or_default();
            if plans[i] == Plan::Reuse && tracks.changed(id, result.distance, rate.ratio) {
                plans[i] = Plan::Full(Refresh::Changed);
            }
            results[i] = Some(result);
        }
    }

    // The full path, in order of need; under a live budget only as many as fit.
    let mut full: Vec<usize> = (0..n).filter(|&i| plans[i].is_full()).collect();
    full.sort_by_key(|&i| plans[i].priority());
    let mut params = rate.params;
    let passes = rate.passes.max(1);
    if let Some(budget) = &rate.budget {
        let per_latent = costs.sample.ms() * passes as f64;
        let per_face = per_latent * rate.params.samples as f64;
        let after = costs.copy.ms() * n as f64;
        let fitting = budget.fitting(full.len(), per_face, after);
        // Not even one face fits in full: the most needed face that nothing else purifies this
        // frame (no latent yet) gets as many samples as fit, so that a budget too tight for M
        // still purifies faces (with a smaller choice) and gives their tracks a latent to reuse.
        let needy = full.first().filter(|&&i| results[i].is_none());
        if fitting == 0 && needy.is_some() {
            params.samples = budget.fitting(rate.params.samples, per_latent, after);
            full.truncate(usize::from(params.samples > 0));
        } else {
            full.truncate(fitting);
        }
    }
    let mut kept: Vec<Option<(Chosen, f32)>> = vec![None; n];
    let mut kept_later: Vec<Vec<Chosen>> = vec![Vec::new(); n];
    if !full.is_empty() {
        let started = Instant::now();
        let (purified, done) = full_path(purifier, &input, &enc, &full, &params, rate.passes, rng)?;
        let elapsed = started.elapsed();
        costs
            .sample
            .update(elapsed, full.len() * params.samples * passes);
        timing.full_ms = elapsed.as_secs_f64() * 1000.0 + encode_share * full.len() as f64;
        scatter(&mut output, &full, &purified);
        let Passes {
            results: first,
            chosen,
            later,
        } = done;
        for (((&i, result), chosen), later) in full.iter().zip(first).zip(chosen).zip(later) {
            kept[i] = Some((chosen, result.distance));
            kept_later[i] = later;
            results[i] = Some(result);
        }
    }

    let paths: Vec<FacePath> = (0..n)
        .map(
            |i| match (plans[i], kept[i].is_some(), results[i].is_some()) {
                (Plan::Full(refresh), true, _) => FacePath::Full(refresh),
                (_, _, true) => FacePath::Reused,
                _ => FacePath::OverBudget,
            },
        )
        .collect();
    let ages = tracks.record(&ids, &plans, &paths, kept);
    for (i, later) in kept_later.into_iter().enumerate() {
        if let (Some(id), FacePath::Full(_)) = (ids[i], paths[i]) {
            tracks.keep_later(id, later);
        }
    }

    let paste_started = Instant::now();
    let done: Vec<_> = targets
        .iter()
        .zip(output.axis_iter(Axis(0)))
        .zip(&results)
        .filter(|(_, result)| result.is_some())
        .map(|((target, face), _)| (&target.placement, face))
        .collect();
    frame::paste_all(frame, &done, &rate.paste).map_err(unreadable)?;
    copy_time += paste_started.elapsed();
    costs.copy.update(copy_time, n);

    let outcomes = paths
        .into_iter()
        .zip(results)
        .zip(ages)
        .map(|((path, result), ages)| Outcome {
            path,
            result: if path == FacePath::OverBudget {
                None
            } else {
                result
            },
            ages,
            samples: match path {
                FacePath::Full(_) => params.samples,
                _ => rate.params.samples,
            },
        })
        .collect();
    Ok((outcomes, timing))
}

/// Purifies faces `rows` of `input` in full ([`purify_passes`]): their purified images and
/// what each pass chose (the results are the first pass's, which saw the face as given).
fn full_path(
    purifier: &mut PurifierHandle,
    input: &Array4<f32>,
    enc: &Encoded,
    rows: &[usize],
    params: &PurifyParams,
    passes: usize,
    rng: &mut StdRng,
) -> Result<(Array4<f32>, Passes), FrameError> {
    let mut batch = input.select(Axis(0), rows);
    let enc = enc.select(rows);
    let done = engine(|| purify_passes(purifier, batch.view_mut(), &enc, params, passes, rng))?;
    Ok((batch, done))
}

//! One frame's faces through `avaepurify`'s two paths: every face is encoded in one call;
//! tracked faces between refreshes decode their track's kept latent (one decoder run), the
//! others are purified in full (M samples, one call for all of them). A reused face whose
//! decoding is too far from it is purified in full at once. Under a live budget, faces get a
//! full purification only while the measured costs say it fits; the others take the reuse
//! path, or go out unpurified when they have no latent yet. With further passes every pass
//! reads its faces again from the frame the last pass was pasted into (as elements in a row
//! would); on error the rows pasted so far are put back, so the frame is untouched.

use std::time::Instant;

use ndarray::{Array4, Axis};
use rand::rngs::StdRng;

use super::targets::Target;
use super::tracks::{Budget, Costs, FacePath, Outcome, Plan, Refresh, Tracks};
use crate::alarm::{Feature, NativeBands};
use crate::core::image::FrameMut;
use crate::frame::{
    self, FrameError, Paste, Placement, Prefilter, Snapshot, engine_call as engine,
};
use crate::purifier::{Chosen, PassEngine, Purified, PurifyParams};
use crate::shared::PurifierHandle;

/// How this frame is purified: the sampling, the refresh rule and the live budget.
pub(super) struct Rate {
    pub(super) params: PurifyParams,
    pub(super) paste: Paste,
    pub(super) passes: usize,
    pub(super) interval: u32,
    pub(super) ratio: f64,
    pub(super) budget: Option<Budget>,
    /// What becomes of faces the alarm flags before purification (`suspect-blur`).
    pub(super) prefilter: Prefilter,
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

/// Copies faces `rows` of `batch` into `out`.
fn scatter(out: &mut Array4<f32>, rows: &[usize], batch: &Array4<f32>) {
    for (k, &i) in rows.iter().enumerate() {
        out.index_axis_mut(Axis(0), i)
            .assign(&batch.index_axis(Axis(0), k));
    }
}

/// Purifies the faces of `targets` in `frame` along their paths and records the tracks. The
/// alarm's finest band is read from the frame as it came in, where the bundle's alarm weighs it
/// (otherwise the figures the purifier reads from the crops stay); faces the alarm flags are
/// blurred first as `rate.prefilter` says. On error the frame is untouched.
pub(super) fn purify(
    work: Work<'_>,
    frame: &mut FrameMut<'_>,
    targets: &[Target],
    rate: &Rate,
) -> Result<(Vec<Outcome>, Timing), FrameError> {
    let copy_started = Instant::now();
    let side = work.purifier.image_size();
    let placed: Vec<Placement> = targets.iter().map(|t| t.placement).collect();
    let alarm = work.purifier.bundle().manifest.alarm.as_ref();
    let bands = if alarm.is_some_and(|a| a.uses(Feature::LogNativeDetailRatio)) {
        frame::native_bands(&frame.as_frame_ref(), placed.iter(), side)
    } else {
        Vec::new()
    };
    // A blurred face is written before its paste: keep its rows to put them back on error
    // (nothing is kept when no face can be blurred).
    let writes = if rate.prefilter.acts_on(alarm) { 2 } else { 1 };
    let kept = Snapshot::take(frame, placed.iter(), side, &rate.paste, writes);
    let outcome = frame::blur_suspects(
        frame,
        &placed,
        &bands,
        alarm,
        &rate.prefilter,
        side,
        rate.paste.context,
    )
    .map_err(|err| FrameError::Unreadable(err.to_string()))
    .and_then(|blurred| purify_read(work, frame, targets, rate, (&bands, blurred), copy_started));
    if outcome.is_err() {
        kept.restore(frame);
    }
    outcome
}

/// [`purify`] once the faces' finest bands are read and the flagged ones blurred (`seen`: the
/// bands, empty when the alarm does not weigh them, and which faces were blurred).
fn purify_read(
    work: Work<'_>,
    frame: &mut FrameMut<'_>,
    targets: &[Target],
    rate: &Rate,
    seen: (&[NativeBands], Vec<bool>),
    copy_started: Instant,
) -> Result<(Vec<Outcome>, Timing), FrameError> {
    let Work {
        purifier,
        rng,
        tracks,
        costs,
    } = work;
    let (bands, blurred) = seen;
    let unreadable = |err: crate::Error| FrameError::Unreadable(err.to_string());
    let side = purifier.image_size();
    let n = targets.len();
    let mut input = Array4::<f32>::zeros((n, 3, side, side));
    let source = frame.as_frame_ref();
    let placements = |rows: &[usize]| -> Vec<&frame::Placement> {
        rows.iter().map(|&i| &targets[i].placement).collect()
    };
    let all: Vec<usize> = (0..n).collect();
    frame::read_all(&source, placements(&all), input.view_mut()).map_err(unreadable)?;
    let copy_time = copy_started.elapsed();

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
    let passes = rate.passes.max(1);
    // Every purified face is pasted once per pass (and read again before each further pass).
    let pasting = costs.paste.ms() * passes as f64;
    if let Some(budget) = &rate.budget {
        let after = costs.copy.ms() * n as f64;
        reuse.truncate(budget.fitting(reuse.len(), costs.reuse.ms() + pasting, after));
    }
    let mut reuse_time = std::time::Duration::ZERO;
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
        reuse_time += started.elapsed();
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
    if let Some(budget) = &rate.budget {
        let per_latent = costs.sample.ms() * passes as f64;
        let per_face = per_latent * rate.params.samples as f64 + pasting;
        // The faces already on the reuse path are pasted after the full ones are done.
        let reused = results.iter().filter(|r| r.is_some()).count() as f64;
        let after = costs.copy.ms() * n as f64 + pasting * reused;
        let fitting = budget.fitting(full.len(), per_face, after);
        // Not even one face fits in full: the most needed face that nothing else purifies this
        // frame (no latent yet) gets as many samples as fit, so that a budget too tight for M
        // still purifies faces (with a smaller choice) and gives their tracks a latent to reuse.
        let needy = full.first().filter(|&&i| results[i].is_none());
        if fitting == 0 && needy.is_some() {
            params.samples = budget.fitting(rate.params.samples, per_latent, after + pasting);
            full.truncate(usize::from(params.samples > 0));
        } else {
            full.truncate(fitting);
        }
    }
    let mut kept: Vec<Option<(Chosen, f32)>> = vec![None; n];
    let mut kept_later: Vec<Vec<Chosen>> = vec![Vec::new(); n];
    let mut full_time = std::time::Duration::ZERO;
    if !full.is_empty() {
        let mut batch = input.select(Axis(0), &full);
        let started = Instant::now();
        let (first, chosen) =
            engine(|| purifier.purify_chosen(batch.view_mut(), &enc.select(&full), &params, rng))?;
        full_time += started.elapsed();
        scatter(&mut output, &full, &batch);
        for ((&i, result), chosen) in full.iter().zip(first).zip(chosen) {
            kept[i] = Some((chosen, result.distance));
            results[i] = Some(result);
        }
    }

    // Paste the first pass; every further pass reads its faces from the pasted frame: the
    // full ones choose again among M, the reused ones decode the latent that pass chose at
    // their track's last full purification (when it kept one).
    let done: Vec<usize> = (0..n).filter(|&i| results[i].is_some()).collect();
    let paste_started = Instant::now();
    // Engine time before the pastes; what the further passes add is not pasting.
    let engine_before = reuse_time + full_time;
    let snapshot = Snapshot::take(frame, placements(&done), side, &rate.paste, passes);
    let mut pasted = 0;
    let mut run = || -> Result<(), FrameError> {
        paste_rows(frame, targets, &output, &done, &rate.paste)?;
        pasted += done.len();
        for pass in 1..passes {
            // Rows of this pass's batch: `fresh` ones choose again, `reused` ones decode
            // `chosen`.
            let (mut rows, mut fresh, mut reused) = (Vec::new(), Vec::new(), Vec::new());
            let mut chosen: Vec<&Chosen> = Vec::new();
            for &i in &done {
                if kept[i].is_some() {
                    fresh.push(rows.len());
                    rows.push(i);
                } else if let Some(c) = ids[i].and_then(|id| tracks.later(id).get(pass - 1)) {
                    reused.push(rows.len());
                    chosen.push(c);
                    rows.push(i);
                }
            }
            if rows.is_empty() {
                break;
            }
            let mut batch = Array4::<f32>::zeros((rows.len(), 3, side, side));
            let source = frame.as_frame_ref();
            frame::read_all(&source, placements(&rows), batch.view_mut()).map_err(unreadable)?;
            let started = Instant::now();
            let enc = engine(|| purifier.encode(batch.view()))?;
            if reused.is_empty() {
                full_time += started.elapsed();
            } else {
                let mut sub = batch.select(Axis(0), &reused);
                engine(|| {
                    purifier.decode_chosen(
                        sub.view_mut(),
                        &enc.select(&reused),
                        &chosen,
                        rate.params.batch,
                    )
                })?;
                scatter(&mut batch, &reused, &sub);
                reuse_time += started.elapsed();
            }
            if !fresh.is_empty() {
                let started = Instant::now();
                let mut sub = batch.select(Axis(0), &fresh);
                let (_, picked) = engine(|| {
                    purifier.purify_chosen(sub.view_mut(), &enc.select(&fresh), &params, rng)
                })?;
                for (&r, c) in fresh.iter().zip(picked) {
                    kept_later[rows[r]].push(c);
                }
                scatter(&mut batch, &fresh, &sub);
                full_time += started.elapsed();
            }
            scatter(&mut output, &rows, &batch);
            paste_rows(frame, targets, &output, &rows, &rate.paste)?;
            pasted += rows.len();
        }
        Ok(())
    };
    if let Err(err) = run() {
        snapshot.restore(frame);
        return Err(err);
    }
    let engine_time = (reuse_time + full_time).saturating_sub(engine_before);
    costs.copy.update(copy_time, n);
    costs
        .paste
        .update(paste_started.elapsed().saturating_sub(engine_time), pasted);
    if !reuse.is_empty() {
        costs.reuse.update(reuse_time, reuse.len());
        timing.reuse_ms = reuse_time.as_secs_f64() * 1000.0 + encode_share * reuse.len() as f64;
    }
    if !full.is_empty() {
        costs
            .sample
            .update(full_time, full.len() * params.samples * passes);
        timing.full_ms = full_time.as_secs_f64() * 1000.0 + encode_share * full.len() as f64;
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

    for (r, &b) in results.iter_mut().zip(bands) {
        if let Some(r) = r {
            r.set_native_bands(b);
        }
    }
    let outcomes = paths
        .into_iter()
        .zip(results)
        .zip(ages)
        .zip(blurred)
        .map(|(((path, result), ages), blurred)| Outcome {
            path,
            blurred,
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

/// Pastes faces `rows` of `output` back where their targets were read.
fn paste_rows(
    frame: &mut FrameMut<'_>,
    targets: &[Target],
    output: &Array4<f32>,
    rows: &[usize],
    paste: &Paste,
) -> Result<(), FrameError> {
    let faces: Vec<_> = rows
        .iter()
        .map(|&i| (&targets[i].placement, output.index_axis(Axis(0), i)))
        .collect();
    frame::paste_all(frame, &faces, paste).map_err(|err| FrameError::Unreadable(err.to_string()))
}

//! The live frame budget of `avaepurify`: whether upstream is live (a latency query), the
//! budget that follows from `max-latency-ms` and the negotiated frame rate, and the warm-up
//! at start that measures what each path costs before the first frame needs the figures.

use std::time::{Duration, Instant};

use gst::prelude::*;
use ndarray::{Array2, Array4, Axis};

use super::tracks::Costs;
use crate::core::image::{FrameMut, PixelLayout, Region};
use crate::frame::{self, Paste, Placement};
use crate::purifier::Purifier;

/// Whether the source upstream of `sink` is live (its latency query says so); `false` when
/// nobody answers.
pub(super) fn upstream_is_live(sink: &gst::Pad) -> bool {
    let mut query = gst::query::Latency::new();
    sink.peer_query(&mut query) && query.result().0
}

/// Whether `element` runs on gst-check's test clock (a `Harness`): its time is not wall-clock
/// time and the source behind it is not a real one, so the frame-rate budget does not apply
/// there (an explicit `max-latency-ms` still does).
pub(super) fn test_clock(element: &impl IsA<gst::Element>) -> bool {
    element
        .clock()
        .is_some_and(|clock| clock.type_().name() == "GstTestClock")
}

/// The frame budget: `max_latency_ms` when it is set, else one frame period of `info`'s frame
/// rate; `None` when it is 0 and the frame rate is unknown (variable, 0/1).
pub(super) fn frame_budget(max_latency_ms: u32, info: &gst_video::VideoInfo) -> Option<Duration> {
    if max_latency_ms > 0 {
        return Some(Duration::from_millis(u64::from(max_latency_ms)));
    }
    let fps = info.fps();
    (fps.numer() > 0 && fps.denom() > 0)
        .then(|| Duration::from_secs_f64(f64::from(fps.denom()) / f64::from(fps.numer())))
}

/// Runs the encoder on one blank face and the decoder on a chunk of latents (one face's full
/// purification: `samples` latents in chunks of at most `batch`) and on one latent, twice (the
/// first run warms the engines up), and seeds `costs` with the second. Measuring the chunk one
/// face really runs matters at small M: per latent, a chunk of 1 costs about half what a chunk
/// of 16 does in an unoptimised build, and an estimate too high for any face to fit would never
/// be corrected, since only full purifications that run update it.
/// Largest batch of faces [`warm_up`] runs once before timing.
const WARM_SHAPES: usize = 8;

pub(super) fn warm_up(
    purifier: &mut Purifier,
    batch: usize,
    samples: usize,
    passes: usize,
    paste: &Paste,
    costs: &mut Costs,
) -> Result<(), crate::Error> {
    let side = purifier.image_size();
    let dim = purifier.bundle().manifest.latent_dim;
    let chunk = purifier.effective_batch(batch.min(samples).max(1));
    let face = Array4::<f32>::zeros((1, 3, side, side));
    // The engines' first run of each batch shape is slower than the later ones: run the small
    // batches a frame's faces bring (encoder over several faces, reuse decodes of several faces)
    // once, so the first live frames do not pay for it.
    for n in 2..=WARM_SHAPES {
        let faces = Array4::<f32>::zeros((n, 3, side, side));
        let enc = purifier.encode(faces.view())?;
        let z = Array2::<f32>::zeros((n, dim));
        purifier.decode(z.view(), enc.skip.view())?;
    }
    for round in 0..2 {
        let started = Instant::now();
        let enc = purifier.encode(face.view())?;
        let encoded = started.elapsed();
        let skip = enc.skip.broadcast((chunk, enc.skip.dim().1, 16, 16));
        let skip = skip
            .map(|s| s.to_owned())
            .ok_or_else(|| crate::Error::InvalidParameter {
                name: "skip",
                value: format!("{:?}", enc.skip.dim()),
                expected: "one face's skip feature",
            })?;
        let z = Array2::<f32>::zeros((chunk, dim));
        let started = Instant::now();
        purifier.decode(z.view(), skip.view())?;
        let sampled = started.elapsed();
        let started = Instant::now();
        purifier.decode(
            z.slice(ndarray::s![..1, ..]),
            skip.slice(ndarray::s![..1, .., .., ..]),
        )?;
        let reused = started.elapsed();
        if round == 1 {
            // Every further pass decodes again and first encodes the last pass's output.
            let passes = u32::try_from(passes.max(1)).unwrap_or(1);
            costs.encode.update(encoded, 1);
            costs.sample.update(sampled, chunk);
            costs
                .reuse
                .update(reused * passes + encoded * (passes - 1), 1);
        }
    }
    // Pasting (with the context) and reading again, for a face of the bundle's side: a first
    // estimate until frames measure it (kept low: a cost that is too high would let no face be
    // purified, and so never be measured again; one too low rises with the first frame).
    let (w, h) = (3 * side, 3 * side);
    let mut data = vec![128u8; w * h * 3];
    let mut frame = FrameMut::new(&mut data, w, h, w * 3, PixelLayout::Rgb)?;
    let placement = Placement::Box(Region {
        x: side,
        y: side,
        width: side,
        height: side,
    });
    let mut crop = Array4::<f32>::zeros((1, 3, side, side));
    for round in 0..2 {
        let started = Instant::now();
        frame::paste_all(
            &mut frame,
            &[(&placement, face.index_axis(Axis(0), 0))],
            paste,
        )?;
        frame::read_all(&frame.as_frame_ref(), [&placement], crop.view_mut())?;
        if round == 1 {
            costs.paste.update(started.elapsed(), 1);
        }
    }
    Ok(())
}

/// How far a live stream's frames have fallen behind schedule because of this element: a frame
/// that arrives while the previous one still ran here (a slow frame, a cold engine) has
/// already spent part of its budget waiting, so its budget counts from when it should have
/// arrived. A frame is due one PTS spacing after the previous frame was due; the wait that
/// counts runs from then until the frame arrived or the previous frame left this element,
/// whichever came first. So delays this element did not cause (a jitter buffer, a decoder, a
/// detector or a leaky queue upstream that always holds a frame or two) are never counted: no
/// work left undone here could win them back, and counting them would leave a pipeline that
/// is slower than its camera upstream of this element no budget for any face.
#[derive(Debug, Default, Clone)]
pub(super) struct Backlog {
    /// The last frame: when it was due, its PTS, and when it left (if it did).
    last: Option<(Instant, gst::ClockTime, Option<Instant>)>,
}

impl Backlog {
    /// Records the arrival of a frame with `pts` at `received` and returns how far behind
    /// schedule this element has put it (0 without a PTS, on the first frame and after
    /// [`Backlog::reset`]).
    pub(super) fn arrive(&mut self, received: Instant, pts: Option<gst::ClockTime>) -> Duration {
        let Some(pts) = pts else {
            self.reset();
            return Duration::ZERO;
        };
        let behind = match self.last {
            // PTS going backwards (a reordering decoder, a new segment): start again.
            Some((due, last_pts, left)) if pts >= last_pts => {
                let due = due + Duration::from_nanos((pts - last_pts).nseconds());
                let held_until = left.map_or(received, |left| left.min(received));
                held_until.saturating_duration_since(due)
            }
            _ => Duration::ZERO,
        };
        let due = received.checked_sub(behind).unwrap_or(received);
        self.last = Some((due, pts, None));
        behind
    }

    /// Records that the last frame left this element at `at`.
    pub(super) fn depart(&mut self, at: Instant) {
        if let Some((_, _, left)) = &mut self.last {
            *left = Some(at);
        }
    }

    /// Forgets the schedule (flush, new caps).
    pub(super) fn reset(&mut self) {
        *self = Backlog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn backlog_counts_the_wait_behind_a_slow_frame_and_recovers() {
        let t0 = Instant::now();
        let pts = |v: u64| Some(gst::ClockTime::from_mseconds(v));
        let mut backlog = Backlog::default();
        // Frames every 40 ms, each done here in 10: nothing behind (a constant upstream delay
        // included).
        assert_eq!(backlog.arrive(t0 + ms(200), pts(0)), ms(0));
        backlog.depart(t0 + ms(210));
        assert_eq!(backlog.arrive(t0 + ms(240), pts(40)), ms(0));
        // Frame 40 took 100 ms here: frame 80 arrives 60 ms behind, frame 120 right after it.
        backlog.depart(t0 + ms(340));
        assert_eq!(backlog.arrive(t0 + ms(340), pts(80)), ms(60));
        backlog.depart(t0 + ms(350));
        assert_eq!(backlog.arrive(t0 + ms(350), pts(120)), ms(30));
        backlog.depart(t0 + ms(360));
        assert_eq!(backlog.arrive(t0 + ms(360), pts(160)), ms(0));
        backlog.depart(t0 + ms(365));
        // Early arrivals never make a frame ahead of schedule.
        assert_eq!(backlog.arrive(t0 + ms(370), pts(200)), ms(0));
        backlog.depart(t0 + ms(375));
        assert_eq!(backlog.arrive(t0 + ms(410), pts(240)), ms(0));
        // No PTS, or PTS going back, starts again.
        assert_eq!(backlog.arrive(t0 + ms(600), None), ms(0));
        assert_eq!(backlog.arrive(t0 + ms(700), pts(280)), ms(0));
        assert_eq!(backlog.arrive(t0 + ms(900), pts(100)), ms(0));
    }

    #[test]
    fn delays_upstream_of_this_element_are_not_backlog() {
        let t0 = Instant::now();
        let pts = |v: u64| Some(gst::ClockTime::from_mseconds(v));
        let mut backlog = Backlog::default();
        assert_eq!(backlog.arrive(t0, pts(0)), ms(0));
        backlog.depart(t0 + ms(10));
        // A detector or a leaky queue upstream delays every frame by 40 to 150 ms more than
        // its PTS spacing, while this element is done with each frame in 10 ms: its own work
        // never held a frame back, so no frame is behind because of it.
        for k in 1..=50u64 {
            let late = 40 + (k * 37) % 110;
            let at = t0 + ms(40 * k + late);
            assert_eq!(backlog.arrive(at, pts(40 * k)), ms(0), "frame {k}");
            backlog.depart(at + ms(10));
        }
        // A frame that this element held 50 ms past the next one's arrival still counts.
        let at = t0 + ms(40 * 51 + 200);
        assert_eq!(backlog.arrive(at, pts(40 * 51)), ms(0));
        backlog.depart(at + ms(90));
        assert_eq!(backlog.arrive(at + ms(90), pts(40 * 52)), ms(50));
    }
}

//! `avaepurify` behind a live 25 fps source (10 fps in an unoptimised build) with more tracked
//! faces than one frame period allows: no frame is held past the budget (measured at the sink from buffer timestamps
//! against a run without the element), none is lost, faces without a latent that do not fit
//! go out marked `purified=false reason=latency-budget`, and the others take the reuse path.

mod common;

use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;

/// Frames the source sends.
const FRAMES: u64 = 50;
/// Tracked faces per frame: far more than one frame period purifies in full.
const FACES: u32 = 6;
/// The source's frame rate: 25 fps, or 10 in an unoptimised build. There, reading the six
/// faces out of the frame and encoding them take about 25 ms before any decoder call (measured
/// 2026-12-03 on a 2-core AMD EPYC: decoder 11.5 ms per latent), so at 25 fps no face of 300
/// fitted a 40 ms period (5 runs of 5) and the test would check nothing but the marking; at 10
/// fps 23-34 faces per run are purified in full and about 95 reused.
const FPS: u32 = if cfg!(debug_assertions) { 10 } else { 25 };
/// One frame period, the default budget.
const BUDGET_MS: f64 = 1000.0 / FPS as f64;
/// Samples per full purification: enough that the six faces never all fit in one period, few
/// enough that some do. An unoptimised test build decodes about 8x slower than a release one
/// (its warm-up measured 15.8 ms per latent on 2 cores, a release build about 2 ms), so it
/// runs M = 1 there; at M = 8 no face would ever fit and none would get a latent to reuse.
const SAMPLES: u32 = if cfg!(debug_assertions) { 1 } else { 8 };

/// What the sink saw of one buffer: its lateness and its faces' `avae-purify` params.
struct Seen {
    late_ms: f64,
    params: Vec<Option<gst::Structure>>,
}

/// Adds `FACES` face ROIs (ids 1..=FACES, a 3 x 2 grid of 90 x 90 boxes) to every buffer that
/// passes `pad`, as a tracker would.
fn attach_tracked_faces(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(buffer) = info.buffer_mut() {
            let buffer = buffer.make_mut();
            for id in 1..=FACES {
                let (x, y) = (10 + 100 * ((id - 1) % 3), 20 + 110 * ((id - 1) / 3));
                let mut meta = VideoRegionOfInterestMeta::add(buffer, "face", (x, y, 90, 90));
                meta.set_id(id as i32);
                meta.add_param(
                    gst::Structure::builder("detection")
                        .field("x_min", f64::from(x) / 320.0)
                        .field("y_min", f64::from(y) / 240.0)
                        .field("x_max", f64::from(x + 90) / 320.0)
                        .field("y_max", f64::from(y + 90) / 240.0)
                        .field("confidence", 0.9f64)
                        .field("object_id", id as i32)
                        .field("track-age", 0u32)
                        .field("tracked", false)
                        .build(),
                );
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Runs a live `videotestsrc` at 25 fps through `middle` into a fakesink and returns what the
/// sink saw, and the `avaepurify` named `purify` when there is one.
fn run(middle: &str) -> (Vec<Seen>, Option<gst::Element>) {
    common::init();
    let launch = format!(
        "videotestsrc is-live=true num-buffers={FRAMES} pattern=ball \
         ! video/x-raw,format=RGBx,width=320,height=240,framerate={FPS}/1 \
         ! {middle} ! fakesink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&launch)
        .unwrap_or_else(|e| panic!("cannot build `{launch}`: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let purify = pipeline.by_name("purify");
    if let Some(purify) = &purify {
        attach_tracked_faces(&purify.static_pad("sink").expect("sink pad"));
    }
    let sink_pad = pipeline
        .by_name("sink")
        .and_then(|sink| sink.static_pad("sink"))
        .expect("a fakesink with a sink pad");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let clocked = pipeline.clone();
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let now = clocked.clock().map(|c| c.time());
        let running = pad
            .sticky_event::<gst::event::Segment>(0)
            .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned())
            .and_then(|segment| segment.to_running_time(buffer.pts()));
        let late_ms = match (now, running, clocked.base_time()) {
            (Some(now), Some(running), Some(base)) => {
                (now.nseconds() as f64 - (base + running).nseconds() as f64) / 1e6
            }
            _ => f64::NAN,
        };
        let mut metas: Vec<_> = buffer
            .iter_meta::<VideoRegionOfInterestMeta>()
            .map(|m| (m.seqnum(), m.param("avae-purify").map(|p| p.to_owned())))
            .collect();
        metas.sort_by_key(|(seqnum, _)| *seqnum);
        let params = metas.into_iter().map(|(_, p)| p).collect();
        store.lock().expect("lock").push(Seen { late_ms, params });
        gst::PadProbeReturn::Ok
    });
    pipeline
        .set_state(gst::State::Playing)
        .expect("pipeline plays");
    let bus = pipeline.bus().expect("a bus");
    for message in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(err) => panic!("pipeline error: {}", err.error()),
            _ => {}
        }
    }
    pipeline
        .set_state(gst::State::Null)
        .expect("pipeline stops");
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    (seen, purify)
}

#[test]
fn a_live_source_is_never_held_past_its_frame_budget() {
    let bundle = common::workspace().join("models/avae-cpu");
    assert!(
        bundle.join("manifest.json").is_file(),
        "shipped bundle missing"
    );
    let (baseline, _) = run("identity");
    assert_eq!(baseline.len() as u64, FRAMES);
    let source_late = baseline.iter().map(|s| s.late_ms).fold(f64::MIN, f64::max);

    let (seen, purify) = run(&format!(
        "avaepurify name=purify backend=tract seed=1 samples={SAMPLES} model=\"{}\"",
        bundle.display()
    ));
    let purify = purify.expect("avaepurify in the pipeline");
    assert_eq!(seen.len() as u64, FRAMES, "frames in == frames out");
    let added: Vec<f64> = seen.iter().map(|s| s.late_ms - source_late).collect();
    // The first frame is held apart: it is the first the engines see with some of this frame's
    // batch shapes (the warm-up runs batches of 1-8 faces), and in this unoptimised build it was
    // late by up to 126.7 ms in 1 of 6 runs before that warm-up
    // (26-31 ms in the others); every later frame must keep the budget. (Frame 1 waits
    // upstream while frame 0 runs; the element's budget counts that wait as spent: before it
    // did, frame 1 was late by 103-192 ms on a 100 ms budget in 4 of 7 runs here.)
    let first = added[0];
    let worst = added[1..].iter().copied().fold(f64::MIN, f64::max);
    let worst_frame = 1 + added[1..]
        .iter()
        .position(|&a| a == worst)
        .unwrap_or_default();
    let stats = purify.property::<gst::Structure>("stats");
    let stat = |field: &str| {
        stats
            .get::<u64>(field)
            .unwrap_or_else(|e| panic!("{field}: {e}"))
    };
    println!(
        "source lateness {source_late:.1} ms; added by avaepurify: first frame {first:.1} ms, \
         worst later {worst:.1} ms (frame {worst_frame}), mean {:.1} ms (budget {BUDGET_MS} \
         ms); {stats}",
        added.iter().sum::<f64>() / added.len() as f64
    );
    assert!(worst.is_finite(), "lateness not measurable");
    assert!(
        worst <= BUDGET_MS,
        "frame {worst_frame} was late by {worst:.1} ms beyond the source's own lateness"
    );
    assert!(
        first <= 5.0 * BUDGET_MS,
        "the first frame was late by {first:.1} ms"
    );
    assert!(stat("late-frames") <= 1, "{stats}");

    // Every face is accounted for: purified (either path) or marked over budget.
    let mut over = 0;
    for (f, s) in seen.iter().enumerate() {
        assert_eq!(s.params.len(), FACES as usize, "frame {f}");
        for p in &s.params {
            let p = p.as_ref().expect("every face has an avae-purify param");
            if p.has_field("distance") {
                continue;
            }
            assert!(!p.get::<bool>("purified").expect("purified"), "{p}");
            assert_eq!(p.get::<String>("reason").as_deref(), Ok("latency-budget"));
            over += 1;
        }
    }
    assert!(
        over > 0,
        "the budget must have bitten: {FACES} faces at M={SAMPLES} in {BUDGET_MS} ms"
    );
    assert_eq!(stat("faces-over-budget"), over);
    assert!(stat("faces-reused") > 0, "{stats}");
    assert_eq!(
        stat("faces-purified") + over,
        FRAMES * u64::from(FACES),
        "{stats}"
    );
}

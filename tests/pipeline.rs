//! `avaepurify` in real `gst::parse::launch` pipelines with both backends: synthetic video, LFW
//! face images and the shared street video with ROI metas. Every test checks that each frame
//! that enters the element leaves it, in the same order.

mod common;

use std::sync::{Arc, Mutex};

use gst::prelude::*;

/// Presentation timestamps seen on one pad, in order.
type Seen = Arc<Mutex<Vec<Option<gst::ClockTime>>>>;

fn record_buffers(pad: &gst::Pad) -> Seen {
    let seen = Seen::default();
    let sink = seen.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
            sink.lock().unwrap().push(buffer.pts());
        }
        gst::PadProbeReturn::Ok
    })
    .expect("buffer probe");
    seen
}

/// What a pipeline run through `purify` saw.
struct Run {
    frames_in: Vec<Option<gst::ClockTime>>,
    frames_out: Vec<Option<gst::ClockTime>>,
    stats: gst::Structure,
}

/// Runs `description` (with an `avaepurify name=purify`) to EOS; `prepare` may add probes.
fn run(description: &str, prepare: impl FnOnce(&gst::Pipeline)) -> Run {
    common::ensure_ort_library();
    common::init();
    let pipeline = gst::parse::launch(description)
        .unwrap_or_else(|e| panic!("cannot build `{description}`: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let purify = pipeline.by_name("purify").expect("an element named purify");
    let frames_in = record_buffers(&purify.static_pad("sink").unwrap());
    let frames_out = record_buffers(&purify.static_pad("src").unwrap());
    prepare(&pipeline);

    pipeline
        .set_state(gst::State::Playing)
        .expect("pipeline plays");
    let bus = pipeline.bus().unwrap();
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or an error within 120 s");
    if let gst::MessageView::Error(err) = message.view() {
        pipeline.set_state(gst::State::Null).ok();
        panic!(
            "`{description}` failed: {} ({:?})",
            err.error(),
            err.debug()
        );
    }
    let stats = purify.property::<gst::Structure>("stats");
    pipeline
        .set_state(gst::State::Null)
        .expect("pipeline stops");

    let take = |seen: Seen| std::mem::take(&mut *seen.lock().unwrap());
    Run {
        frames_in: take(frames_in),
        frames_out: take(frames_out),
        stats,
    }
}

fn stat(stats: &gst::Structure, field: &str) -> u64 {
    stats
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
}

/// Frames in == frames out, in the same order, and `expected` of them.
fn assert_every_frame_out_in_order(run: &Run, expected: usize) {
    assert_eq!(run.frames_in.len(), expected, "frames into avaepurify");
    assert_eq!(
        run.frames_out.len(),
        run.frames_in.len(),
        "frames in != frames out"
    );
    assert_eq!(
        run.frames_out, run.frames_in,
        "output order differs from input order"
    );
    assert!(
        run.frames_out.windows(2).all(|w| w[0] < w[1]),
        "timestamps not increasing: {:?}",
        run.frames_out
    );
    assert_eq!(stat(&run.stats, "frames"), expected as u64);
    assert_eq!(stat(&run.stats, "failures"), 0);
}

fn synthetic(backend: &str) {
    let description = format!(
        "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,format=BGRx,width=160,height=120 \
         ! avaepurify name=purify full-frame=true backend={backend} samples=4 seed=3 \
         model=\"{}\" ! fakesink",
        common::tiny_bundle()
    );
    let run = run(&description, |_| {});
    assert_every_frame_out_in_order(&run, 30);
    assert_eq!(stat(&run.stats, "faces-purified"), 30);
}

#[test]
fn synthetic_video_with_tract() {
    synthetic("tract");
}

#[test]
fn synthetic_video_with_ort() {
    synthetic("ort");
}

fn lfw_faces(backend: &str) {
    let person = common::shared().join("datasets/lfw/lfw-deepfunneled/Aaron_Peirsol");
    assert!(
        person.is_dir(),
        "LFW images not found at {} (the tests read ../shared/datasets/lfw)",
        person.display()
    );
    let description = format!(
        "multifilesrc location=\"{}\" start-index=1 stop-index=4 caps=image/jpeg,framerate=5/1 \
         ! jpegdec ! videoconvert ! video/x-raw,format=RGB \
         ! avaepurify name=purify full-frame=true backend={backend} samples=4 seed=5 \
         model=\"{}\" ! videoconvert ! fakesink",
        person.join("Aaron_Peirsol_%04d.jpg").display(),
        common::tiny_bundle()
    );
    let run = run(&description, |_| {});
    assert_every_frame_out_in_order(&run, 4);
    assert_eq!(stat(&run.stats, "faces-purified"), 4);
}

#[test]
fn lfw_faces_with_tract() {
    lfw_faces("tract");
}

#[test]
fn lfw_faces_with_ort() {
    lfw_faces("ort");
}

/// Attaches two "face" ROIs to every buffer leaving `pad`: one inside the frame, one partly
/// outside its right edge.
fn add_face_rois(pad: &gst::Pad, width: u32, height: u32) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            let buffer = buffer.make_mut();
            gst_video::VideoRegionOfInterestMeta::add(
                buffer,
                "face",
                (width / 3, height / 4, 40, 48),
            );
            gst_video::VideoRegionOfInterestMeta::add(
                buffer,
                "face",
                (width - 20, height / 2, 40, 40),
            );
        }
        gst::PadProbeReturn::Ok
    })
    .expect("ROI probe");
}

fn street_video(backend: &str) {
    let video = common::shared().join("media/opera-house-pedestrians.mp4");
    assert!(
        video.is_file(),
        "shared video not found at {}",
        video.display()
    );
    let (width, height) = (320, 180);
    let description = format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! videoscale \
         ! video/x-raw,format=RGBx,width={width},height={height} ! identity name=detect \
         ! avaepurify name=purify backend={backend} samples=2 seed=7 model=\"{}\" \
         ! fakesink",
        video.display(),
        common::tiny_bundle()
    );
    let run = run(&description, |pipeline| {
        let detect = pipeline.by_name("detect").expect("identity named detect");
        add_face_rois(&detect.static_pad("src").unwrap(), width, height);
    });
    // The clip has 105 frames (../shared/media/SOURCE.md).
    assert_every_frame_out_in_order(&run, 105);
    assert_eq!(stat(&run.stats, "faces-purified"), 2 * 105);
    assert_eq!(stat(&run.stats, "faces-skipped"), 0);
}

#[test]
fn street_video_with_rois_with_ort() {
    street_video("ort");
}

#[test]
fn street_video_with_rois_with_tract() {
    street_video("tract");
}

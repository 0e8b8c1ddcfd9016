//! Face tracks of `avaefacedetect` on the shipped street video (`media/`, 105 frames, scaled
//! to 960x540) through `filesrc ! decodebin ! videoconvert ! videoscale ! avaefacedetect !
//! fakesink` (a probe on the sink reads the metas): no frame lost, every face ROI carries its track (meta id = `object_id`,
//! `track-age`, `tracked`), the detector runs on ceil(frames / interval) frames and the frames
//! in between still carry the tracked faces, tracks persist, and id switches are counted and
//! printed for interval 1 against the default. A harness test checks that a flush ends the
//! tracks and that `tracking=false` leaves faces untracked.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_check::Harness;
use gst_video::{VideoFormat, VideoInfo, VideoRegionOfInterestMeta};
use gstavaepurify::avaefacedetect::{face_from_detection, track_from_detection};
use gstavaepurify::core::detect::Face;
use gstavaepurify::tracker::TrackInfo;

use common::{LFW_SIDE, frame_buffer, lfw_images, load_rgb};

/// Frames of the shipped video.
const VIDEO_FRAMES: usize = 105;

/// The width and height the video is scaled to before detection (keeps the test quick).
const SCALED: (u32, u32) = (960, 540);

/// One face ROI of a frame, as the test reads it back.
#[derive(Debug, Clone, Copy)]
struct TrackedRoi {
    /// The meta's id.
    meta_id: i32,
    /// The `detection` param's box, normalised.
    face: Face,
    /// The `detection` param's track (`None`: untracked face).
    track: Option<TrackInfo>,
}

/// The face ROIs of `buffer`.
fn rois(buffer: &gst::BufferRef) -> Vec<TrackedRoi> {
    buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .filter(|m| m.roi_type() == "face")
        .map(|m| {
            let param = m
                .param("detection")
                .expect("a face ROI has a detection param");
            TrackedRoi {
                meta_id: m.id(),
                face: face_from_detection(param).expect("a box").0,
                track: track_from_detection(param),
            }
        })
        .collect()
}

/// What one run of the video gave.
struct Run {
    interval: u32,
    frames_in: usize,
    /// Face ROIs of each frame out, in order.
    frames: Vec<Vec<TrackedRoi>>,
    stats: gst::Structure,
}

impl Run {
    fn stat(&self, field: &str) -> u64 {
        self.stats
            .get::<u64>(field)
            .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
    }
}

/// The shipped video through the detector with `interval` (tracking on, ONNX Runtime).
fn run_video(interval: u32) -> Run {
    common::ensure_ort_library();
    common::init();
    let video = common::workspace().join("media/opera-house-pedestrians.mp4");
    assert!(
        video.is_file(),
        "the shipped video is missing: {}",
        video.display()
    );
    let (width, height) = SCALED;
    let description = format!(
        "filesrc location={} ! decodebin ! videoconvert ! videoscale ! \
         video/x-raw,format=RGB,width={width},height={height} ! \
         avaefacedetect name=detect backend=ort interval={interval} ! \
         fakesink name=sink sync=false",
        video.display()
    );
    let pipeline = gst::parse::launch(&description)
        .unwrap_or_else(|e| panic!("cannot build '{description}': {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let detect = pipeline.by_name("detect").expect("detect");
    let frames_in = Arc::new(Mutex::new(0usize));
    let counter = frames_in.clone();
    detect.static_pad("sink").expect("sink pad").add_probe(
        gst::PadProbeType::BUFFER,
        move |_, _| {
            *counter.lock().expect("lock") += 1;
            gst::PadProbeReturn::Ok
        },
    );
    let frames = Arc::new(Mutex::new(Vec::new()));
    let seen = frames.clone();
    pipeline
        .by_name("sink")
        .expect("sink")
        .static_pad("sink")
        .expect("sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                seen.lock().expect("lock").push(rois(buffer));
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).expect("to PLAYING");
    let bus = pipeline.bus().expect("bus");
    for message in bus.iter_timed(gst::ClockTime::from_seconds(600)) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                pipeline.set_state(gst::State::Null).ok();
                panic!("pipeline error: {} ({:?})", e.error(), e.debug());
            }
            _ => {}
        }
    }
    let stats = detect.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).expect("to NULL");
    let frames_in = *frames_in.lock().expect("lock");
    let frames = std::mem::take(&mut *frames.lock().expect("lock"));
    Run {
        interval,
        frames_in,
        frames,
        stats,
    }
}

/// The figures of a run: how long tracks last and how often ids switch.
#[derive(Debug, Default)]
struct TrackFigures {
    rois: usize,
    tracks: usize,
    /// Frames each track appears on, sorted.
    lengths: Vec<usize>,
    /// An id's box moved by more than its own size from one frame to the next.
    jumps: usize,
    /// Two ids exchanged their faces from one frame to the next.
    swaps: usize,
    /// A new id was born on a face that an id of the frame before covered (that id vanished).
    rebirths: usize,
}

impl TrackFigures {
    fn switches(&self) -> usize {
        self.jumps + self.swaps + self.rebirths
    }

    fn median_length(&self) -> usize {
        self.lengths
            .get(self.lengths.len() / 2)
            .copied()
            .unwrap_or(0)
    }

    fn mean_length(&self) -> f64 {
        self.rois as f64 / self.tracks.max(1) as f64
    }

    /// Share of the ROIs that belong to tracks of at least `frames` frames.
    fn share_in_tracks_of(&self, frames: usize) -> f64 {
        let long: usize = self.lengths.iter().filter(|&&l| l >= frames).sum();
        long as f64 / self.rois.max(1) as f64
    }
}

/// The boxes of each id on one frame.
fn boxes_by_id(frame: &[TrackedRoi]) -> HashMap<i32, Face> {
    frame
        .iter()
        .map(|roi| (roi.track.expect("tracked").object_id, roi.face))
        .collect()
}

/// Track lengths and id switches of `frames` (every ROI tracked).
fn track_figures(frames: &[Vec<TrackedRoi>]) -> TrackFigures {
    let mut figures = TrackFigures::default();
    let mut length: BTreeMap<i32, usize> = BTreeMap::new();
    for roi in frames.iter().flatten() {
        *length
            .entry(roi.track.expect("tracked").object_id)
            .or_default() += 1;
        figures.rois += 1;
    }
    figures.tracks = length.len();
    figures.lengths = length.into_values().collect();
    figures.lengths.sort_unstable();
    for pair in frames.windows(2) {
        let (before, now) = (boxes_by_id(&pair[0]), boxes_by_id(&pair[1]));
        for (id, face) in &now {
            let Some(previous) = before.get(id) else {
                continue;
            };
            let [x0, y0] = previous.centre();
            let [x1, y1] = face.centre();
            let size = previous.width().max(previous.height());
            if (x1 - x0).hypot(y1 - y0) > size {
                figures.jumps += 1;
            }
            for (other, other_face) in &now {
                let Some(other_before) = before.get(other) else {
                    continue;
                };
                if id < other
                    && face.iou(other_before) > face.iou(previous)
                    && other_face.iou(previous) > other_face.iou(other_before)
                {
                    figures.swaps += 1;
                }
            }
        }
        for roi in &pair[1] {
            let track = roi.track.expect("tracked");
            let vanished = before
                .iter()
                .filter(|(id, _)| !now.contains_key(id))
                .any(|(_, face)| face.iou(&roi.face) >= 0.3);
            if track.age == 0 && vanished {
                figures.rebirths += 1;
            }
        }
    }
    figures
}

/// Checks what every run must give: no frame lost, every face tracked, the detector's share
/// of frames, carried frames with the tracked faces, ages that count frames.
fn check_run(run: &Run) {
    let n = run.interval as usize;
    assert_eq!(run.frames_in, VIDEO_FRAMES, "frames into the detector");
    assert_eq!(run.frames.len(), run.frames_in, "frames out != frames in");
    assert_eq!(run.stat("frames"), VIDEO_FRAMES as u64);
    let due = VIDEO_FRAMES.div_ceil(n) as u64;
    assert_eq!(run.stat("detector-runs"), due, "interval {n}");
    assert_eq!(
        run.stat("inferences"),
        due,
        "interval {n}: a detector run failed"
    );
    assert_eq!(run.stat("carried-frames"), VIDEO_FRAMES as u64 - due);
    assert_eq!(
        run.stat("scene-cuts"),
        0,
        "interval {n}: a continuous video has no cuts"
    );
    let rois: usize = run.frames.iter().map(Vec::len).sum();
    assert_eq!(run.stat("rois"), rois as u64);
    let ids: HashSet<i32> = run
        .frames
        .iter()
        .flatten()
        .filter_map(|r| r.track.map(|t| t.object_id))
        .collect();
    assert_eq!(
        run.stat("tracks-born"),
        ids.len() as u64,
        "one birth per id"
    );
    let mut born_on: HashMap<i32, usize> = HashMap::new();
    let mut last_detected: HashSet<i32> = HashSet::new();
    for (index, frame) in run.frames.iter().enumerate() {
        let detected = index % n == 0;
        for roi in frame {
            let track = roi
                .track
                .unwrap_or_else(|| panic!("frame {index}: a face ROI without object_id"));
            assert!(track.object_id >= 1);
            assert_eq!(roi.meta_id, track.object_id, "frame {index}: meta id");
            assert_eq!(track.tracked, !detected, "frame {index}: tracked flag");
            let born = *born_on.entry(track.object_id).or_insert(index);
            assert_eq!(track.age as usize, index - born, "frame {index}: track-age");
        }
        let frame_ids: HashSet<i32> = frame
            .iter()
            .filter_map(|r| r.track)
            .map(|t| t.object_id)
            .collect();
        assert_eq!(frame_ids.len(), frame.len(), "frame {index}: an id twice");
        if detected {
            last_detected = frame_ids;
        } else {
            assert_eq!(
                frame_ids, last_detected,
                "frame {index}: the carried faces are not those of the last detection"
            );
        }
    }
}

#[test]
fn street_video_faces_keep_their_ids() {
    common::init();
    let default_interval = gst::ElementFactory::make("avaefacedetect")
        .build()
        .expect("avaefacedetect is registered")
        .property::<u32>("interval");
    let mut intervals = vec![1, 2, 3, 5];
    if !intervals.contains(&default_interval) {
        intervals.push(default_interval);
        intervals.sort_unstable();
    }
    println!(
        "interval | detector runs | ms per run | ROIs | tracks | median len | mean len | \
         ROIs in tracks >= 10 | jumps | swaps | rebirths | id switches"
    );
    let mut by_interval = HashMap::new();
    for &interval in &intervals {
        let run = run_video(interval);
        check_run(&run);
        let figures = track_figures(&run.frames);
        println!(
            "{interval:8} | {:13} | {:10.1} | {:4} | {:6} | {:10} | {:8.1} | {:19.0}% | {:5} | \
             {:5} | {:8} | {:11}",
            run.stat("detector-runs"),
            run.stats
                .get::<f64>("mean-inference-ms")
                .unwrap_or(f64::NAN),
            figures.rois,
            figures.tracks,
            figures.median_length(),
            figures.mean_length(),
            100.0 * figures.share_in_tracks_of(10),
            figures.jumps,
            figures.swaps,
            figures.rebirths,
            figures.switches(),
        );
        by_interval.insert(interval, figures);
    }
    for interval in [1, default_interval] {
        let figures = &by_interval[&interval];
        assert!(
            figures.rois > 300,
            "interval {interval}: only {} faces",
            figures.rois
        );
        assert!(
            figures.median_length() >= 20,
            "interval {interval}: median track length {}",
            figures.median_length()
        );
        assert!(
            figures.share_in_tracks_of(10) >= 0.9,
            "interval {interval}: faces in tracks of 10 frames or more: {:.2}",
            figures.share_in_tracks_of(10)
        );
        assert!(
            figures.switches() <= 3,
            "interval {interval}: {} id switches ({figures:?})",
            figures.switches()
        );
    }
}

/// An `avaefacedetect` harness on tract fed LFW-sized RGB frames.
fn lfw_harness(props: &[(&str, &str)]) -> (Harness, VideoInfo) {
    common::init();
    let mut builder = gst::ElementFactory::make("avaefacedetect")
        .property_from_str("backend", "tract")
        .property_from_str("input-size", "128");
    for (name, value) in props {
        builder = builder.property_from_str(name, value);
    }
    let element = builder.build().expect("avaefacedetect is registered");
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    let info = VideoInfo::builder(VideoFormat::Rgb, LFW_SIDE, LFW_SIDE)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .expect("valid video info");
    h.set_src_caps(info.to_caps().expect("caps from info"));
    (h, info)
}

fn stat(h: &Harness, field: &str) -> u64 {
    h.element()
        .expect("harness element")
        .property::<gst::Structure>("stats")
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
}

/// The tracks of the faces on a frame pushed through `h`.
fn push_and_track(
    h: &mut Harness,
    face: &image::RgbImage,
    info: &VideoInfo,
    i: u64,
) -> Vec<TrackedRoi> {
    h.push(frame_buffer(face, info, 40 * i)).expect("push");
    rois(&h.pull().expect("a frame out"))
}

#[test]
fn flush_ends_the_tracks() {
    let (mut h, info) = lfw_harness(&[]);
    let face = load_rgb(&lfw_images(1, 1)[0]);
    for i in 0..3 {
        let frame = push_and_track(&mut h, &face, &info, i);
        assert_eq!(frame.len(), 1, "frame {i}: one face");
        let track = frame[0].track.expect("tracked");
        assert_eq!(
            (track.object_id, track.age, track.tracked),
            (1, i as u32, false)
        );
        assert_eq!(frame[0].meta_id, 1);
    }
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    // A flush resets the segment; a seek sends a new one before the next buffer.
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    let after = push_and_track(&mut h, &face, &info, 3);
    let track = after[0].track.expect("tracked");
    assert_eq!(
        (track.object_id, track.age),
        (2, 0),
        "a new track after the flush"
    );
    assert_eq!(stat(&h, "tracks-born"), 2);
    assert_eq!(stat(&h, "tracks-ended"), 1);
}

#[test]
fn unrelated_images_are_cuts_detected_at_once() {
    // One LFW photo after another at interval 3: every photo is a cut (scene-change), so each
    // is detected and its face starts a new track; with scene-change=0 the second and third
    // photos would get the first photo's box.
    let photos: Vec<image::RgbImage> = lfw_images(6, 97).iter().map(|p| load_rgb(p)).collect();
    let (mut h, info) = lfw_harness(&[("interval", "3")]);
    let mut ids = HashSet::new();
    for (i, photo) in photos.iter().enumerate() {
        let frame = push_and_track(&mut h, photo, &info, i as u64);
        assert!(!frame.is_empty(), "photo {i}: no face");
        for roi in &frame {
            let track = roi.track.expect("tracked");
            assert!(!track.tracked, "photo {i}: a carried box on a new photo");
            assert_eq!(track.age, 0, "photo {i}: a track continued across photos");
            assert!(
                ids.insert(track.object_id),
                "photo {i}: id {}",
                track.object_id
            );
        }
    }
    assert_eq!(stat(&h, "detector-runs"), 6);
    assert_eq!(stat(&h, "scene-cuts"), 5, "photos 1 to 5 came early");
    assert_eq!(stat(&h, "carried-frames"), 0);

    let (mut h, info) = lfw_harness(&[("interval", "3"), ("scene-change", "0")]);
    for (i, photo) in photos.iter().enumerate() {
        push_and_track(&mut h, photo, &info, i as u64);
    }
    assert_eq!(stat(&h, "detector-runs"), 2);
    assert_eq!(stat(&h, "scene-cuts"), 0);
    assert_eq!(stat(&h, "carried-frames"), 4);
}

#[test]
fn tracking_off_leaves_faces_untracked() {
    let (mut h, info) = lfw_harness(&[("tracking", "false"), ("interval", "2")]);
    let face = load_rgb(&lfw_images(1, 1)[0]);
    for i in 0..4 {
        let frame = push_and_track(&mut h, &face, &info, i);
        assert_eq!(frame.len(), 1, "frame {i}: one face, carried or detected");
        assert!(
            frame[0].track.is_none(),
            "frame {i}: object_id without tracking"
        );
        assert_eq!(frame[0].meta_id, 0);
    }
    assert_eq!(stat(&h, "detector-runs"), 2);
    assert_eq!(stat(&h, "carried-frames"), 2);
    assert_eq!(stat(&h, "tracks-born"), 0);
}

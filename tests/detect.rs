//! `avaefacedetect` on real faces: 200 LFW images (one face near the centre), the shipped street
//! video in a `gst::parse::launch` pipeline (faces in most frames, no frame lost or reordered),
//! frames with 0 and 30 faces, the interval, a bad model path, both backends; and the shipped
//! `pipelines/*.sh` lines that can run here.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_check::Harness;
use gst_video::{VideoFormat, VideoInfo, VideoRegionOfInterestMeta};
use gstavaepurify::avaefacedetect::face_from_detection;
use gstavaepurify::core::detect::Face;

use common::{LFW_SIDE, frame_buffer, lfw_images, load_rgb};

/// An `avaefacedetect` harness on `backend` fed `format` frames of `width` x `height`.
fn harness(
    backend: &str,
    format: VideoFormat,
    width: u32,
    height: u32,
    props: &[(&str, &str)],
) -> (Harness, VideoInfo) {
    if backend == "ort" {
        common::ensure_ort_library();
    }
    common::init();
    let mut builder =
        gst::ElementFactory::make("avaefacedetect").property_from_str("backend", backend);
    for (name, value) in props {
        builder = builder.property_from_str(name, value);
    }
    let element = builder.build().expect("avaefacedetect is registered");
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    let info = VideoInfo::builder(format, width, height)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .expect("valid video info");
    h.set_src_caps(info.to_caps().expect("caps from info"));
    (h, info)
}

/// A face ROI read back from a buffer.
struct FaceRoi {
    /// The meta's pixel rectangle.
    rect: (u32, u32, u32, u32),
    /// Its `detection` param, normalised.
    face: Face,
    /// Whether the param had 10 landmark values.
    has_landmarks: bool,
}

/// The face ROIs of `buffer`, in attach order.
fn faces(buffer: &gst::BufferRef) -> Vec<FaceRoi> {
    let mut metas: Vec<_> = buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .filter(|m| m.roi_type() == "face")
        .map(|m| {
            let (face, has_landmarks) = m
                .param("detection")
                .and_then(face_from_detection)
                .expect("each face ROI has a detection param with a box");
            let roi = FaceRoi {
                rect: m.rect(),
                face,
                has_landmarks,
            };
            (m.seqnum(), roi)
        })
        .collect();
    metas.sort_by_key(|(seqnum, _)| *seqnum);
    metas.into_iter().map(|(_, roi)| roi).collect()
}

fn stat(h: &Harness, field: &str) -> u64 {
    h.element()
        .expect("harness element")
        .property::<gst::Structure>("stats")
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
}

/// Runs `count` LFW images through the element; returns how many have exactly one face whose
/// centre lies within 12% of the image side of the image centre, and checks their landmarks.
fn lfw_one_face_near_centre(backend: &str, count: usize, step: usize) -> usize {
    let (mut h, info) = harness(
        backend,
        VideoFormat::Rgbx,
        LFW_SIDE,
        LFW_SIDE,
        &[("input-size", "256")],
    );
    let mut good = 0;
    let mut misses = Vec::new();
    for (i, path) in lfw_images(count, step).iter().enumerate() {
        let buffer = frame_buffer(&load_rgb(path), &info, 40 * i as u64);
        h.push(buffer).expect("push");
        let out = h.pull().expect("a frame out for each frame in");
        let near: Vec<_> = faces(&out)
            .into_iter()
            .filter(|roi| {
                let [cx, cy] = roi.face.centre();
                (cx - 0.5).abs() < 0.12 && (cy - 0.5).abs() < 0.12
            })
            .collect();
        if let [
            FaceRoi {
                rect,
                face,
                has_landmarks,
            },
        ] = near.as_slice()
        {
            good += 1;
            assert!(*has_landmarks, "{}: no landmarks", path.display());
            // The pixel rectangle covers the normalised box.
            let side = LFW_SIDE as f32;
            assert!(
                rect.0 as f32 <= face.x_min * side + 1e-3,
                "{rect:?} {face:?}"
            );
            assert!(
                (rect.0 + rect.2) as f32 >= face.x_max * side - 1e-3,
                "{rect:?} {face:?}"
            );
            // Plausible landmarks: eyes left to right and above the mouth corners, nose between.
            let [le, re, nose, lm, rm] = face.landmarks;
            assert!(
                le[0] < re[0] && lm[0] < rm[0],
                "{}: {face:?}",
                path.display()
            );
            assert!(
                le[1] < nose[1] && re[1] < nose[1],
                "{}: {face:?}",
                path.display()
            );
            assert!(
                nose[1] < lm[1] && nose[1] < rm[1],
                "{}: {face:?}",
                path.display()
            );
            assert!(face.confidence > 0.5 && face.confidence <= 1.0, "{face:?}");
        } else {
            misses.push(format!(
                "{} ({} near the centre)",
                path.display(),
                near.len()
            ));
        }
    }
    assert_eq!(stat(&h, "frames"), count as u64);
    assert_eq!(stat(&h, "failures"), 0);
    println!(
        "{backend}: {good}/{count} LFW images with exactly one face near the centre; \
         mean inference {:.1} ms; misses: {misses:?}",
        h.element()
            .expect("element")
            .property::<gst::Structure>("stats")
            .get::<f64>("mean-inference-ms")
            .expect("mean-inference-ms")
    );
    good
}

#[test]
fn lfw_200_faces_near_the_centre_with_ort() {
    let good = lfw_one_face_near_centre("ort", 200, 28);
    assert!(
        good >= 196,
        "only {good}/200 LFW images have one face near the centre"
    );
}

#[test]
fn lfw_faces_near_the_centre_with_tract() {
    // A different, smaller slice of LFW: tract is slower, and the 200 run above is on ort.
    let good = lfw_one_face_near_centre("tract", 40, 131);
    assert!(
        good >= 39,
        "only {good}/40 LFW images have one face near the centre"
    );
}

#[test]
fn flat_frame_has_no_face_and_passes_unchanged() {
    // BGR at an odd width: rows are padded (stride 968 for 322 pixels).
    let (mut h, info) = harness("tract", VideoFormat::Bgr, 322, 240, &[]);
    assert!(info.stride()[0] as usize > 322 * 3);
    for (i, level) in [0u8, 128, 255].into_iter().enumerate() {
        let flat = image::RgbImage::from_pixel(322, 240, image::Rgb([level; 3]));
        let input = frame_buffer(&flat, &info, 40 * i as u64);
        let bytes = input.map_readable().expect("readable").to_vec();
        h.push(input).expect("push");
        let out = h.pull().expect("frame out");
        assert!(
            faces(&out).is_empty(),
            "a flat frame of level {level} has faces"
        );
        assert_eq!(
            out.map_readable().expect("readable").as_slice(),
            bytes.as_slice()
        );
    }
    assert_eq!(stat(&h, "detections"), 0);
    assert_eq!(stat(&h, "rois"), 0);
}

/// A 6x5 mosaic of the central 150x150 of 30 LFW images (900x750).
fn mosaic_of_30() -> image::RgbImage {
    let mut mosaic = image::RgbImage::new(900, 750);
    for (i, path) in lfw_images(30, 97).iter().enumerate() {
        let face = image::imageops::crop_imm(&load_rgb(path), 50, 50, 150, 150).to_image();
        let (col, row) = (i as i64 % 6, i as i64 / 6);
        image::imageops::replace(&mut mosaic, &face, col * 150, row * 150);
    }
    mosaic
}

#[test]
fn mosaic_of_30_faces_passes_unchanged_with_its_faces() {
    let mosaic = mosaic_of_30();
    let (mut h, info) = harness(
        "tract",
        VideoFormat::Rgba,
        900,
        750,
        &[("input-size", "640")],
    );
    let input = frame_buffer(&mosaic, &info, 0);
    let bytes = input.map_readable().expect("readable").to_vec();
    h.push(input).expect("push");
    let out = h.pull().expect("frame out");
    assert_eq!(
        out.map_readable().expect("readable").as_slice(),
        bytes.as_slice()
    );
    let found = faces(&out);
    // One face per tile at most: count the tiles whose centre cell holds a face centre.
    let mut tiles = std::collections::BTreeSet::new();
    for roi in &found {
        let [cx, cy] = roi.face.centre();
        tiles.insert(((cx * 6.0) as u32, (cy * 5.0) as u32));
    }
    println!(
        "mosaic of 30 faces: {} found, in {} tiles",
        found.len(),
        tiles.len()
    );
    assert!(
        tiles.len() >= 27,
        "only {} of 30 tiles have a face",
        tiles.len()
    );
    assert!(found.len() <= 36, "{} faces in a mosaic of 30", found.len());

    // max-faces keeps the most confident.
    h.element()
        .expect("element")
        .set_property("max-faces", 5u32);
    h.push(frame_buffer(&mosaic, &info, 40)).expect("push");
    let limited = faces(&h.pull().expect("frame out"));
    assert_eq!(limited.len(), 5);
    let mut confidences: Vec<f32> = found.iter().map(|roi| roi.face.confidence).collect();
    confidences.sort_by(|a, b| b.total_cmp(a));
    for (roi, best) in limited.iter().zip(&confidences) {
        let face = roi.face;
        assert!((face.confidence - best).abs() < 1e-6, "{face:?} vs {best}");
    }
    // min-size larger than every tile drops them all.
    h.element()
        .expect("element")
        .set_property("min-size", 200u32);
    h.push(frame_buffer(&mosaic, &info, 80)).expect("push");
    assert!(faces(&h.pull().expect("frame out")).is_empty());
}

#[test]
fn interval_carries_the_last_faces() {
    let path = &lfw_images(1, 1)[0];
    let (mut h, info) = harness(
        "tract",
        VideoFormat::Rgb,
        LFW_SIDE,
        LFW_SIDE,
        &[("input-size", "128"), ("interval", "3")],
    );
    let face = load_rgb(path);
    let mut seen = Vec::new();
    for i in 0..7 {
        h.push(frame_buffer(&face, &info, 40 * i)).expect("push");
        seen.push(faces(&h.pull().expect("frame out")));
    }
    // Detection on frames 0, 3 and 6; the same boxes in between.
    assert_eq!(stat(&h, "inferences"), 3);
    assert_eq!(stat(&h, "frames"), 7);
    assert!(!seen[0].is_empty());
    for frame in &seen[1..3] {
        assert_eq!(frame.len(), seen[0].len());
        assert_eq!(frame[0].face, seen[0][0].face);
        assert_eq!(frame[0].rect, seen[0][0].rect);
    }
    assert_eq!(
        stat(&h, "rois"),
        seen.iter().map(|f| f.len() as u64).sum::<u64>()
    );
}

#[test]
fn bad_model_path_fails_start_naming_the_path() {
    let missing = "/nonexistent/detector/centerface.onnx";
    let pipeline = launch(&format!(
        "videotestsrc num-buffers=1 ! videoconvert ! avaefacedetect model={missing} ! fakesink"
    ));
    assert!(pipeline.set_state(gst::State::Paused).is_err());
    let bus = pipeline.bus().expect("bus");
    let message = bus
        .iter_timed(gst::ClockTime::from_seconds(5))
        .find_map(|m| match m.view() {
            gst::MessageView::Error(e) => Some(format!("{} {:?}", e.error(), e.debug())),
            _ => None,
        })
        .expect("an error message");
    pipeline.set_state(gst::State::Null).expect("to NULL");
    assert!(message.contains(missing), "{message}");
}

/// What the probes around the detector saw.
#[derive(Default)]
struct Seen {
    pts_in: Vec<gst::ClockTime>,
    pts_out: Vec<gst::ClockTime>,
    faces_out: Vec<usize>,
}

/// Parses `description` into a pipeline (GStreamer and the plugin initialised first).
fn launch(description: &str) -> gst::Pipeline {
    common::init();
    gst::parse::launch(description)
        .unwrap_or_else(|e| panic!("cannot parse `{description}`: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
}

/// Plays `pipeline` until end of stream (panicking on an error or after 5 minutes), then
/// stops it.
fn play_to_eos(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Playing).expect("to PLAYING");
    let bus = pipeline.bus().expect("bus");
    let mut eos = false;
    for message in bus.iter_timed(gst::ClockTime::from_seconds(300)) {
        match message.view() {
            gst::MessageView::Eos(_) => {
                eos = true;
                break;
            }
            gst::MessageView::Error(e) => {
                pipeline.set_state(gst::State::Null).ok();
                panic!("pipeline error: {} ({:?})", e.error(), e.debug());
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).expect("to NULL");
    assert!(eos, "no end of stream within 5 minutes");
}

/// Runs `description` (with one `avaefacedetect`) to EOS, recording the buffers entering and
/// leaving the detector; `prepare` may change elements before it starts.
fn run_counting(description: &str, prepare: impl FnOnce(&gst::Pipeline)) -> Seen {
    let pipeline = launch(description);
    prepare(&pipeline);
    let detect = common::element_of(&pipeline, "avaefacedetect").expect("an avaefacedetect");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink_pad = detect.static_pad("sink").expect("sink pad");
    let record = seen.clone();
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer() {
            let pts = buffer.pts().expect("decoded frames have a PTS");
            record.lock().expect("lock").pts_in.push(pts);
        }
        gst::PadProbeReturn::Ok
    });
    let src_pad = detect.static_pad("src").expect("src pad");
    let record = seen.clone();
    src_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer() {
            let mut seen = record.lock().expect("lock");
            seen.pts_out.push(buffer.pts().expect("a PTS"));
            seen.faces_out.push(faces(buffer).len());
        }
        gst::PadProbeReturn::Ok
    });
    play_to_eos(&pipeline);
    std::mem::take(&mut *seen.lock().expect("lock"))
}

/// The shipped street video.
fn street_video() -> String {
    common::workspace()
        .join("media/opera-house-pedestrians.mp4")
        .to_string_lossy()
        .into_owned()
}

fn street_video_faces(backend: &str, props: &str) {
    if backend == "ort" {
        common::ensure_ort_library();
    }
    let seen = run_counting(
        &format!(
            "filesrc location={} ! decodebin ! videoconvert ! \
             avaefacedetect backend={backend} {props} ! fakesink",
            street_video()
        ),
        |_| {},
    );
    // 105 frames of 1920x1080; every frame out, in order.
    assert_eq!(seen.pts_in.len(), 105, "frames into the detector");
    assert_eq!(
        seen.pts_out, seen.pts_in,
        "frames out differ from frames in"
    );
    assert!(
        seen.pts_out.windows(2).all(|w| w[0] < w[1]),
        "PTS not increasing"
    );
    let with_faces = seen.faces_out.iter().filter(|&&n| n > 0).count();
    let total: usize = seen.faces_out.iter().sum();
    println!(
        "{backend} {props}: faces in {with_faces}/105 frames, {total} in all, at most {} in one",
        seen.faces_out.iter().max().unwrap_or(&0)
    );
    assert!(with_faces >= 95, "faces in only {with_faces}/105 frames");
}

#[test]
fn street_video_with_ort() {
    street_video_faces("ort", "input-size=640");
}

#[test]
fn street_video_with_tract() {
    street_video_faces("tract", "input-size=480 interval=5");
}

/// Points the pipeline's `avaepurify` at the test bundle (fast, tract) unless the shipped
/// bundle exists.
fn use_test_bundle(pipeline: &gst::Pipeline) {
    let shipped = common::workspace().join("models/avae-cpu/manifest.json");
    let purify = common::element_of(pipeline, "avaepurify").expect("the line has an avaepurify");
    if !shipped.is_file() {
        purify.set_property("model", common::tiny_bundle());
    }
    purify.set_property_from_str("backend", "tract");
    purify.set_property("samples", 4u32);
}

#[test]
fn shipped_file_replay_pipeline_runs() {
    let description = common::shipped_pipeline(
        "file-replay.sh",
        &[("INPUT", &street_video()), ("SINK", "fakesink")],
    );
    assert!(description.contains("decodebin") && description.contains("avaepurify"));
    let purifier = Mutex::new(None);
    let seen = run_counting(&description, |pipeline| {
        use_test_bundle(pipeline);
        *purifier.lock().expect("lock") = common::element_of(pipeline, "avaepurify");
        // A small input size keeps the test quick.
        let detect =
            common::element_of(pipeline, "avaefacedetect").expect("the line has an avaefacedetect");
        detect.set_property("input-size", 320u32);
        detect.set_property("interval", 5u32);
    });
    assert_eq!(seen.pts_in.len(), 105);
    assert_eq!(seen.pts_out, seen.pts_in);
    let purified = purifier
        .lock()
        .expect("lock")
        .as_ref()
        .expect("the line has an avaepurify")
        .property::<gst::Structure>("stats")
        .get::<u64>("faces-purified")
        .expect("faces-purified");
    let detected: usize = seen.faces_out.iter().sum();
    assert!(
        detected > 105,
        "only {detected} faces detected in 105 frames"
    );
    assert_eq!(purified, detected as u64, "every detected face is purified");
}

#[test]
fn shipped_image_folder_pipeline_runs() {
    let dir = std::env::temp_dir().join(format!("avae-image-folder-{}", std::process::id()));
    let (input, output) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&input).expect("input folder");
    std::fs::create_dir_all(&output).expect("output folder");
    let faces = lfw_images(3, 211);
    for (i, path) in faces.iter().enumerate() {
        let crop = image::imageops::crop_imm(&load_rgb(path), 61, 61, 128, 128).to_image();
        crop.save(input.join(format!("face-{i:05}.png")))
            .expect("write a test face");
    }
    let description = common::shipped_pipeline(
        "image-folder.sh",
        &[
            ("INPUT", &input.join("face-%05d.png").to_string_lossy()),
            ("OUTPUT", &output.join("face-%05d.png").to_string_lossy()),
        ],
    );
    assert!(description.contains("full-frame=true"), "{description}");
    let pipeline = launch(&description);
    use_test_bundle(&pipeline);
    play_to_eos(&pipeline);
    let purify = common::element_of(&pipeline, "avaepurify").expect("an avaepurify");
    let stats = purify.property::<gst::Structure>("stats");
    assert_eq!(
        stats.get::<u64>("frames").expect("frames"),
        faces.len() as u64
    );
    assert_eq!(
        stats.get::<u64>("faces-purified").expect("faces-purified"),
        faces.len() as u64
    );
    for i in 0..faces.len() {
        let written = output.join(format!("face-{i:05}.png"));
        let out = image::open(&written)
            .unwrap_or_else(|e| panic!("{} not written: {e}", written.display()))
            .to_rgb8();
        assert_eq!(out.dimensions(), (128, 128));
    }
    assert!(!output.join(format!("face-{:05}.png", faces.len())).exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// A `[N, 3, H, W] -> 4 outputs` graph of Identity nodes declared with CenterFace's channel
/// counts: it loads, but every output really has 3 channels, so each run fails.
fn broken_detector_model() -> PathBuf {
    use prost::Message;
    use tract_onnx::pb;
    let value = |name: &str, channels: i64| {
        use pb::tensor_shape_proto::{Dimension, dimension::Value};
        let dims = [
            Value::DimParam("N".into()),
            Value::DimValue(channels),
            Value::DimParam("H".into()),
            Value::DimParam("W".into()),
        ];
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .into_iter()
                            .map(|v| Dimension {
                                value: Some(v),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let outputs = [
        ("heatmap", 1),
        ("scale", 2),
        ("offset", 2),
        ("landmarks", 10),
    ];
    let graph = pb::GraphProto {
        name: "broken".into(),
        node: outputs
            .iter()
            .map(|(name, _)| pb::NodeProto {
                op_type: "Identity".into(),
                input: vec!["image".into()],
                output: vec![(*name).into()],
                ..Default::default()
            })
            .collect(),
        input: vec![value("image", 3)],
        output: outputs.iter().map(|(n, c)| value(n, *c)).collect(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    let path =
        std::env::temp_dir().join(format!("avae-broken-detector-{}.onnx", std::process::id()));
    std::fs::write(&path, model.encode_to_vec()).expect("write the broken model");
    path
}

#[test]
fn detector_failure_passes_frames_and_warns_once() {
    let model = broken_detector_model();
    let (mut h, info) = harness(
        "tract",
        VideoFormat::Rgb,
        64,
        48,
        &[("model", &model.to_string_lossy())],
    );
    let bus = gst::Bus::new();
    h.element().expect("element").set_bus(Some(&bus));
    let face = image::RgbImage::from_pixel(64, 48, image::Rgb([90, 120, 150]));
    for i in 0..3 {
        let input = frame_buffer(&face, &info, 40 * i);
        let bytes = input.map_readable().expect("readable").to_vec();
        h.push(input)
            .expect("a failing detection still passes the frame");
        let out = h.pull().expect("frame out");
        assert!(faces(&out).is_empty());
        assert_eq!(
            out.map_readable().expect("readable").as_slice(),
            bytes.as_slice()
        );
    }
    assert_eq!(stat(&h, "frames"), 3);
    assert_eq!(stat(&h, "failures"), 3);
    assert_eq!(stat(&h, "inferences"), 0);
    let warnings: Vec<String> = std::iter::from_fn(|| bus.pop())
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("Face detection failed"),
        "{warnings:?}"
    );
    std::fs::remove_file(&model).ok();
}

#[test]
fn a_model_that_is_not_centerface_is_refused_naming_the_file() {
    // The A-VAE decoder of the test bundle: valid ONNX, wrong inputs and outputs.
    let wrong = common::workspace().join("tests/data/bundle-tiny/decoder.onnx");
    let err = match gstavaepurify::avaefacedetect::Detector::open(
        &wrong,
        gstavaepurify::engine::Backend::Tract,
        gstavaepurify::engine::Device::Cpu,
    ) {
        Ok(_) => panic!("{} accepted as a face detector", wrong.display()),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("decoder.onnx") && err.contains("CenterFace"),
        "{err}"
    );
    let garbage = std::env::temp_dir().join(format!("avae-not-onnx-{}.onnx", std::process::id()));
    std::fs::write(&garbage, b"not a model").expect("write");
    let err = gstavaepurify::avaefacedetect::Detector::open(
        &garbage,
        gstavaepurify::engine::Backend::Tract,
        gstavaepurify::engine::Device::Cpu,
    )
    .err()
    .expect("garbage refused")
    .to_string();
    assert!(
        err.contains("not a valid ONNX model") && err.contains("avae-not-onnx"),
        "{err}"
    );
    std::fs::remove_file(&garbage).ok();
}

// ---- issue 11: bounded candidates, the verified cache, the per-user cache folder ----

/// The first LFW image as a packed RGB frame.
fn lfw_frame() -> (Vec<u8>, usize, usize) {
    let rgb = load_rgb(&lfw_images(1, 1)[0]);
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    (rgb.into_raw(), w, h)
}

fn frame_ref(data: &[u8], width: usize, height: usize) -> gstavaepurify::core::image::FrameRef<'_> {
    gstavaepurify::core::image::FrameRef {
        data,
        width,
        height,
        stride: width * 3,
        layout: gstavaepurify::core::image::PixelLayout::Rgb,
    }
}

fn private_temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("avae-detect-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

#[test]
fn threshold_zero_stays_bounded_and_returns_at_most_max_faces() {
    use gstavaepurify::avaefacedetect::{Detector, DetectorParams};
    let cache = private_temp_dir("threshold0");
    let mut detector = Detector::open_with_cache(
        &gstavaepurify::avaefacedetect::default_model_path(),
        gstavaepurify::engine::Backend::Tract,
        gstavaepurify::engine::Device::Cpu,
        &cache,
    )
    .expect("the shipped detector loads");
    let (data, w, h) = lfw_frame();
    // At 1280 every one of the 320 x 320 heatmap cells is a candidate at threshold 0; without a
    // cap, suppression compares ~10^10 pairs.
    let params = DetectorParams {
        threshold: 0.0,
        max_faces: 64,
        input_size: 1280,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let faces = detector
        .detect(&frame_ref(&data, w, h), &params)
        .expect("detection runs");
    let took = started.elapsed();
    assert!(faces.len() <= 64, "{} faces", faces.len());
    assert!(!faces.is_empty());
    assert!(took.as_secs_f64() < 60.0, "threshold=0 took {took:?}");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn candidates_are_capped_before_suppression() {
    use gstavaepurify::avaefacedetect::candidate_limit;
    assert_eq!(candidate_limit(64), 2048);
    assert_eq!(candidate_limit(1), 256);
    assert_eq!(candidate_limit(usize::MAX), 4096);
    let mut faces: Vec<Face> = (0..10_000)
        .map(|i| Face {
            x_min: i as f32,
            y_min: 0.0,
            x_max: i as f32 + 1.0,
            y_max: 1.0,
            confidence: (i % 1000) as f32 / 1000.0,
            landmarks: [[0.0; 2]; 5],
        })
        .collect();
    gstavaepurify::core::detect::keep_most_confident(&mut faces, 2048);
    assert_eq!(faces.len(), 2048);
    assert!(faces.windows(2).all(|p| p[0].confidence >= p[1].confidence));
    // Ten faces per score: the 2048 kept are those of the 205 highest scores, 0.999 to 0.795.
    assert!(
        faces.iter().all(|f| f.confidence >= 0.795),
        "the most confident are kept"
    );
}

#[test]
fn a_bogus_file_under_the_cached_copys_name_is_replaced() {
    use gstavaepurify::avaefacedetect::{Detector, DetectorParams};
    let cache = private_temp_dir("bogus-cache");
    let model = gstavaepurify::avaefacedetect::default_model_path();
    let open = || {
        Detector::open_with_cache(
            &model,
            gstavaepurify::engine::Backend::Tract,
            gstavaepurify::engine::Device::Cpu,
            &cache,
        )
    };
    drop(open().expect("the shipped detector loads"));
    let copies: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("the cache folder exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-dynamic.onnx"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    std::fs::write(&copies[0], b"planted: not the derived graph").unwrap();
    let mut detector = open().expect("a planted cache file does not break loading");
    let (data, w, h) = lfw_frame();
    let faces = detector
        .detect(&frame_ref(&data, w, h), &DetectorParams::default())
        .expect("detection runs");
    assert!(!faces.is_empty(), "the LFW face is found");
    assert_ne!(
        std::fs::read(&copies[0]).unwrap(),
        b"planted: not the derived graph"
    );
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn the_default_cache_folder_is_per_user_and_private() {
    use gstavaepurify::avaefacedetect::{create_private_dir, default_cache_dir};
    use std::ffi::OsStr;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        default_cache_dir(Some(OsStr::new("/x/cache")), Some(OsStr::new("/home/u"))),
        PathBuf::from("/x/cache/avae-purify")
    );
    for xdg in [None, Some(OsStr::new("")), Some(OsStr::new("relative"))] {
        assert_eq!(
            default_cache_dir(xdg, Some(OsStr::new("/home/u"))),
            PathBuf::from("/home/u/.cache/avae-purify")
        );
    }
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let fallback = default_cache_dir(None, None);
    assert_eq!(
        fallback,
        std::env::temp_dir().join(format!("avae-purify-{uid}"))
    );
    assert_ne!(fallback, std::env::temp_dir().join("avae-purify"));

    let root = private_temp_dir("private");
    let dir = root.join("a/b");
    create_private_dir(&dir).expect("created");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "mode {mode:o}");
    create_private_dir(&dir).expect("an existing folder of ours is fine");
    std::fs::remove_dir_all(&root).ok();
}

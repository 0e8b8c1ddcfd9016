//! The attack alarm of `avaepurify` on the shipped bundle: clean LFW faces and the shipped
//! street video raise few alarms, a face under strong high-frequency noise raises one (its ROI
//! param, the `avae-purify-alarm` bus message and its rate limit, `stats`), `suspect-blur` on the
//! flagged faces only, `alarm=false` and `alarm-threshold`, a bundle without an alarm, and
//! small sharp faces (LFW photos box-downscaled 3x) scored at their own width.

mod common;

use gst::prelude::*;
use gst_check::Harness;
use gst_video::{VideoFormat, VideoInfo, VideoRegionOfInterestMeta};
use gstavaepurify::bundle::Manifest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{LFW_SIDE, frame_buffer, lfw_images, load_rgb};

/// The shipped bundle, whose manifest has an alarm.
fn shipped_bundle() -> String {
    common::workspace()
        .join("models/avae-cpu")
        .to_string_lossy()
        .into_owned()
}

/// The shipped bundle's threshold at 1% clean false alarms.
fn shipped_threshold() -> f64 {
    let text = std::fs::read_to_string(common::workspace().join("models/avae-cpu/manifest.json"))
        .expect("shipped manifest");
    let manifest: Manifest = serde_json::from_str(&text).expect("shipped manifest parses");
    f64::from(
        manifest
            .alarm
            .expect("the shipped bundle has an alarm")
            .threshold_1,
    )
}

fn lfw_info() -> VideoInfo {
    VideoInfo::builder(VideoFormat::Rgbx, LFW_SIDE, LFW_SIDE)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .expect("valid video info")
}

/// A started harness around `element` fed LFW-sized RGBx frames, with a bus.
fn harness(element: &gst::Element) -> (Harness, gst::Bus) {
    let mut h = Harness::with_element(element, Some("sink"), Some("src"));
    h.set_src_caps(lfw_info().to_caps().expect("caps from info"));
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    (h, bus)
}

/// `launch` (one element or a bin of them) as an element, ort ready.
fn parse(launch: &str) -> gst::Element {
    common::ensure_ort_library();
    common::init();
    gst::parse::bin_from_description(launch, true)
        .unwrap_or_else(|e| panic!("cannot build `{launch}`: {e}"))
        .upcast()
}

/// An `avaepurify name=purify` on the shipped bundle (ort, seed 1, default samples) with
/// `props`.
fn purify_launch(props: &str) -> String {
    format!(
        "avaepurify name=purify backend=ort seed=1 refresh-interval=1 model=\"{}\" {props}",
        shipped_bundle()
    )
}

/// The `avaepurify` inside `bin`.
fn purify_of(bin: &gst::Element) -> gst::Element {
    bin.downcast_ref::<gst::Bin>()
        .and_then(|bin| bin.by_name("purify"))
        .expect("an avaepurify named purify")
}

/// The `avae-purify` params of the face ROIs of `buffer`, in attach order.
fn purify_params(buffer: &gst::BufferRef) -> Vec<gst::Structure> {
    let mut metas: Vec<_> = buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .filter_map(|m| Some((m.seqnum(), m.param("avae-purify")?.to_owned())))
        .collect();
    metas.sort_by_key(|(seqnum, _)| *seqnum);
    metas.into_iter().map(|(_, p)| p).collect()
}

/// `(score, suspicious)` of a param that has them.
fn verdict(param: &gst::Structure) -> (f64, bool) {
    (
        param.get::<f64>("score").expect("score is a double"),
        param
            .get::<bool>("suspicious")
            .expect("suspicious is a bool"),
    )
}

/// The `avae-purify-alarm` messages on `bus` (the others are dropped).
fn alarm_messages(bus: &gst::Bus) -> Vec<gst::Structure> {
    std::iter::from_fn(|| bus.pop())
        .filter_map(|message| match message.view() {
            gst::MessageView::Element(element) => element
                .structure()
                .filter(|s| s.name() == "avae-purify-alarm")
                .map(|s| s.to_owned()),
            _ => None,
        })
        .collect()
}

fn stat(purify: &gst::Element, field: &str) -> u64 {
    purify
        .property::<gst::Structure>("stats")
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
}

/// Sorted copy of `values` and its `q` quantile.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn summary(scores: &[f64]) -> String {
    format!(
        "n {} min {:.3} median {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        scores.len(),
        quantile(scores, 0.0),
        quantile(scores, 0.5),
        quantile(scores, 0.9),
        quantile(scores, 0.99),
        quantile(scores, 1.0)
    )
}

/// The face ROI `avaefacedetect` finds in an LFW image: its rectangle and `detection` param.
struct DetectedFace {
    rgb: image::RgbImage,
    rect: (u32, u32, u32, u32),
    detection: gst::Structure,
}

/// The LFW images of `lfw_images(count, step)` with exactly one detected face.
fn detected_faces(count: usize, step: usize) -> Vec<DetectedFace> {
    let (mut h, _bus) = harness(&parse("avaefacedetect backend=ort input-size=256"));
    let info = lfw_info();
    let mut faces = Vec::new();
    for (i, path) in lfw_images(count, step).iter().enumerate() {
        let rgb = load_rgb(path);
        h.push(frame_buffer(&rgb, &info, 40 * i as u64))
            .expect("push");
        let out = h.pull().expect("a frame out");
        let rois: Vec<_> = out
            .iter_meta::<VideoRegionOfInterestMeta>()
            .filter_map(|m| Some((m.rect(), m.param("detection")?.to_owned())))
            .collect();
        if let [(rect, detection)] = rois.as_slice() {
            faces.push(DetectedFace {
                rgb,
                rect: *rect,
                detection: detection.clone(),
            });
        }
    }
    faces
}

/// `rgb` with `+-amplitude` (in 1/255) of random sign added to every channel of every pixel
/// in `rect` grown by a fifth on each side, seeded by `seed`.
fn with_noise(
    rgb: &image::RgbImage,
    rect: (u32, u32, u32, u32),
    amplitude: u8,
    seed: u64,
) -> image::RgbImage {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut noisy = rgb.clone();
    let (x, y, w, h) = rect;
    let (gx, gy) = (w / 5, h / 5);
    let x0 = x.saturating_sub(gx);
    let y0 = y.saturating_sub(gy);
    let x1 = (x + w + gx).min(rgb.width());
    let y1 = (y + h + gy).min(rgb.height());
    for yy in y0..y1 {
        for xx in x0..x1 {
            for c in noisy.get_pixel_mut(xx, yy).0.iter_mut() {
                *c = if rng.random::<bool>() {
                    c.saturating_add(amplitude)
                } else {
                    c.saturating_sub(amplitude)
                };
            }
        }
    }
    noisy
}

/// `rgb` as a frame at `pts_ms` with one face ROI (`rect`, `detection`, `id`).
fn face_frame(
    rgb: &image::RgbImage,
    rect: (u32, u32, u32, u32),
    detection: &gst::Structure,
    id: i32,
    pts_ms: u64,
) -> gst::Buffer {
    let mut buffer = frame_buffer(rgb, &lfw_info(), pts_ms);
    {
        let buffer = buffer.get_mut().expect("new buffer is writable");
        let mut meta = VideoRegionOfInterestMeta::add(buffer, "face", rect);
        meta.set_id(id);
        meta.add_param(detection.clone());
    }
    buffer
}

/// Noise amplitude (1/255) that trips the alarm on every face measured: at +-32, 19 of 19 LFW
/// faces scored 3.07 or more (threshold 2.08 then; 2.29 since the calibration on element-aligned crops); at +-24, 18 of 19; at +-16, 10 of 19.
const NOISE: u8 = 32;

#[test]
fn clean_lfw_faces_raise_few_alarms() {
    let bin = parse(&format!(
        "avaefacedetect backend=ort input-size=256 ! {}",
        purify_launch("")
    ));
    let (mut h, bus) = harness(&bin);
    let info = lfw_info();
    let threshold = shipped_threshold();
    let mut scores = Vec::new();
    let mut suspicious = 0;
    for (i, path) in lfw_images(120, 47).iter().enumerate() {
        h.push(frame_buffer(&load_rgb(path), &info, 40 * i as u64))
            .expect("push");
        let out = h.pull().expect("a frame out for each frame in");
        for param in purify_params(&out) {
            let (score, flagged) = verdict(&param);
            assert!(score.is_finite(), "{param}");
            assert_eq!(flagged, score > threshold, "{param}");
            scores.push(score);
            suspicious += usize::from(flagged);
        }
    }
    println!(
        "clean LFW faces: {}; {suspicious} suspicious",
        summary(&scores)
    );
    assert!(scores.len() >= 100, "only {} faces scored", scores.len());
    assert!(
        suspicious * 10 <= scores.len(),
        "{suspicious} of {} clean faces raised the alarm (calibrated for 1%)",
        scores.len()
    );
    let purify = purify_of(&bin);
    assert_eq!(stat(&purify, "alarms"), suspicious as u64);
    assert_eq!(stat(&purify, "faces-purified"), scores.len() as u64);
    // One message per suspicious face at most (the detector's ids are not unique per frame
    // when it sees several faces, so those faces share one limit).
    let messages = alarm_messages(&bus);
    assert!(messages.len() <= suspicious, "{messages:?}");
    for message in &messages {
        assert!(
            message.get::<f64>("score").unwrap() > threshold,
            "{message}"
        );
        assert_eq!(message.get::<f64>("threshold").unwrap(), threshold);
    }
}

#[test]
fn a_noisy_face_raises_the_alarm_once_a_second() {
    let faces = detected_faces(8, 61);
    assert!(faces.len() >= 6, "only {} faces detected", faces.len());
    let threshold = shipped_threshold();
    let (mut h, bus) = harness(&parse(&purify_launch("")));
    let mut pts_ms = 0;
    let mut score_of = |rgb: &image::RgbImage, face: &DetectedFace| {
        h.push(face_frame(rgb, face.rect, &face.detection, 0, pts_ms))
            .expect("push");
        pts_ms += 40;
        verdict(&purify_params(&h.pull().expect("frame out"))[0])
    };
    // The fine-tuned bundle (5,500 steps) flags fewer of them than the 3,500-step one did
    // (face 1 of these scores 0.49 under +-32 noise against a threshold of 2.17): every score
    // must rise clearly, and at least half the faces must be flagged.
    let mut flagged_faces = 0;
    for (i, face) in faces.iter().enumerate() {
        let (clean, _) = score_of(&face.rgb, face);
        let (noisy, flagged) = score_of(&with_noise(&face.rgb, face.rect, NOISE, i as u64), face);
        println!("face {i}: clean score {clean:.3}, +-{NOISE} noise {noisy:.3}");
        assert_eq!(
            flagged,
            noisy > threshold,
            "face {i}: {noisy} vs {threshold}"
        );
        flagged_faces += usize::from(flagged);
        assert!(noisy > clean + 1.0, "face {i}: {clean} -> {noisy}");
    }
    assert!(
        flagged_faces * 2 >= faces.len(),
        "only {flagged_faces} of {} noisy faces flagged",
        faces.len()
    );
    drop(alarm_messages(&bus));

    // One face under noise for 30 frames (1.2 s of PTS): 30 alarms, 2 messages.
    // Face 4 is the one this bundle scores highest under noise (4.1; face 0 only 2.2, at the
    // threshold).
    let (mut h, bus) = harness(&parse(&purify_launch("")));
    let face = &faces[4];
    let noisy = with_noise(&face.rgb, face.rect, NOISE, 99);
    let mut scores = Vec::new();
    for i in 0..30 {
        h.push(face_frame(&noisy, face.rect, &face.detection, 5, 40 * i))
            .expect("push");
        let (score, flagged) = verdict(&purify_params(&h.pull().expect("frame out"))[0]);
        assert!(flagged, "frame {i}: {score}");
        scores.push(score);
    }
    let messages = alarm_messages(&bus);
    assert_eq!(messages.len(), 2, "{messages:?}");
    for (message, (frame, pts_ms)) in messages.iter().zip([(0, 0u64), (25, 1000)]) {
        assert_eq!(message.get::<u64>("pts").unwrap(), pts_ms * 1_000_000);
        assert_eq!(message.get::<i32>("roi-id").unwrap(), 5);
        assert_eq!(message.get::<f64>("score").unwrap(), scores[frame]);
        assert_eq!(message.get::<f64>("threshold").unwrap(), threshold);
    }
    let purify = purify_of(&h.element().unwrap());
    assert_eq!(stat(&purify, "alarms"), 30);
}

#[test]
fn suspect_blur_blurs_the_flagged_faces_only() {
    let faces = detected_faces(4, 61);
    assert!(faces.len() >= 3, "only {} faces detected", faces.len());
    let threshold = shipped_threshold();
    for sigma in [0.0, 1.0] {
        let bin = parse(&purify_launch(&format!("suspect-blur={sigma}")));
        let (mut h, _bus) = harness(&bin);
        let (mut flagged, mut blurred) = (0, 0);
        let mut pts_ms = 0;
        for (i, face) in faces.iter().enumerate() {
            for rgb in [
                face.rgb.clone(),
                with_noise(&face.rgb, face.rect, NOISE, i as u64),
            ] {
                h.push(face_frame(
                    &rgb,
                    face.rect,
                    &face.detection,
                    i as i32,
                    pts_ms,
                ))
                .expect("push");
                pts_ms += 40;
                let param = &purify_params(&h.pull().expect("frame out"))[0];
                let (score, suspicious) = verdict(param);
                let was_blurred = param
                    .get::<bool>("suspect-blurred")
                    .expect("suspect-blurred is a bool");
                // The alarm reads the face as it came in, before any blur.
                assert_eq!(suspicious, score > threshold, "{param}");
                assert_eq!(
                    was_blurred,
                    sigma > 0.0 && suspicious,
                    "sigma {sigma}: {param}"
                );
                flagged += usize::from(suspicious);
                blurred += usize::from(was_blurred);
            }
        }
        println!("suspect-blur={sigma}: {flagged} flagged, {blurred} blurred");
        assert!(flagged >= 1, "no face flagged");
        let purify = purify_of(&bin);
        assert_eq!(stat(&purify, "faces-suspect-blurred"), blurred as u64);
        assert_eq!(stat(&purify, "alarms"), flagged as u64);
    }
}

/// `rgb` box-downscaled by 3 (each output pixel the mean of 3 x 3), as a sensor with pixels
/// three times as wide would see it: a sharp small face.
fn box_downscale_3(rgb: &image::RgbImage) -> image::RgbImage {
    let (w, h) = (rgb.width() / 3, rgb.height() / 3);
    image::RgbImage::from_fn(w, h, |x, y| {
        let mut sum = [0u32; 3];
        for dy in 0..3 {
            for dx in 0..3 {
                let p = rgb.get_pixel(3 * x + dx, 3 * y + dy).0;
                for c in 0..3 {
                    sum[c] += u32::from(p[c]);
                }
            }
        }
        image::Rgb(sum.map(|s| ((s + 4) / 9) as u8))
    })
}

#[test]
fn small_sharp_clean_faces_are_scored_at_their_width() {
    // LFW photos at a third of their size: faces about 40 px wide, where a threshold fitted on
    // LFW's own size alone flagged 81-93% of clean faces (`trainer alarm`'s held-out check).
    let bin = parse(&format!(
        "avaefacedetect backend=ort input-size=256 ! {}",
        purify_launch("")
    ));
    let side = LFW_SIDE / 3;
    let info = VideoInfo::builder(VideoFormat::Rgbx, side, side)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .expect("valid video info");
    let mut h = Harness::with_element(&bin, Some("sink"), Some("src"));
    h.set_src_caps(info.to_caps().expect("caps from info"));
    let threshold = shipped_threshold();
    let (mut clean, mut noisy, mut suspicious, mut noisy_flagged) = (vec![], vec![], 0, 0);
    for (i, path) in lfw_images(60, 83).iter().enumerate() {
        let small = box_downscale_3(&load_rgb(path));
        for (noise, scores) in [(false, &mut clean), (true, &mut noisy)] {
            let rgb = if noise {
                with_noise(&small, (0, 0, side, side), NOISE, i as u64)
            } else {
                small.clone()
            };
            h.push(frame_buffer(
                &rgb,
                &info,
                80 * i as u64 + 40 * u64::from(noise),
            ))
            .expect("push");
            let params = purify_params(&h.pull().expect("a frame out for each frame in"));
            // The pair counts where the detector finds exactly one face in both.
            if let [param] = params.as_slice() {
                let (score, flagged) = verdict(param);
                assert_eq!(flagged, score > threshold, "{param}");
                scores.push(score);
                if noise {
                    noisy_flagged += usize::from(flagged);
                } else {
                    suspicious += usize::from(flagged);
                }
            }
        }
    }
    println!(
        "clean faces at a third of LFW's size: {}; {suspicious} suspicious; under +-{NOISE} \
         noise: {}; {noisy_flagged} flagged",
        summary(&clean),
        summary(&noisy)
    );
    assert!(clean.len() >= 40, "only {} small faces scored", clean.len());
    assert!(
        suspicious * 10 <= clean.len(),
        "{suspicious} of {} small clean faces raised the alarm (calibrated for 1% at every \
         width)",
        clean.len()
    );
    // Noise still lifts the median score of small faces clearly.
    assert!(
        quantile(&noisy, 0.5) > quantile(&clean, 0.5) + 1.0,
        "{} vs {}",
        summary(&noisy),
        summary(&clean)
    );
}

#[test]
fn alarm_off_scores_nothing_and_alarm_threshold_overrides() {
    let faces = detected_faces(1, 61);
    let face = faces.first().expect("a face detected");
    let noisy = with_noise(&face.rgb, face.rect, NOISE, 7);
    let run = |props: &str| {
        let bin = parse(&purify_launch(props));
        let (mut h, bus) = harness(&bin);
        h.push(face_frame(&noisy, face.rect, &face.detection, 3, 0))
            .expect("push");
        let param = purify_params(&h.pull().expect("frame out")).remove(0);
        (
            param,
            alarm_messages(&bus),
            stat(&purify_of(&bin), "alarms"),
        )
    };

    let (param, messages, alarms) = run("alarm=false");
    assert!(param.get::<f64>("distance").is_ok(), "{param}");
    assert!(
        !param.has_field("score") && !param.has_field("suspicious"),
        "{param}"
    );
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(alarms, 0);

    let (param, messages, alarms) = run("alarm-threshold=1000");
    let (score, flagged) = verdict(&param);
    assert!(score > shipped_threshold() && !flagged, "{param}");
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(alarms, 0);

    let lowered = score - 0.5;
    let (param, messages, alarms) = run(&format!("alarm-threshold={lowered}"));
    assert_eq!(verdict(&param), (score, true));
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].get::<f64>("threshold").unwrap(), lowered);
    assert_eq!(messages[0].get::<i32>("roi-id").unwrap(), 3);
    assert_eq!(alarms, 1);
}

#[test]
fn a_bundle_without_alarm_scores_nothing() {
    common::init();
    let bin = parse(&format!(
        "avaepurify name=purify backend=tract samples=2 seed=1 model=\"{}\"",
        common::tiny_bundle()
    ));
    let (mut h, bus) = harness(&bin);
    let face = load_rgb(&lfw_images(1, 1)[0]);
    let mut input = frame_buffer(&face, &lfw_info(), 0);
    VideoRegionOfInterestMeta::add(input.get_mut().unwrap(), "face", (60, 60, 120, 120));
    let out = h.push_and_pull(input).expect("frame out");
    assert_eq!(stat(&purify_of(&bin), "faces-purified"), 1);
    let param = &purify_params(&out)[0];
    assert!(param.get::<f64>("distance").is_ok(), "{param}");
    assert!(
        !param.has_field("score") && !param.has_field("suspicious"),
        "{param}"
    );
    assert!(alarm_messages(&bus).is_empty());
    assert_eq!(stat(&purify_of(&bin), "alarms"), 0);
}

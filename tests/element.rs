//! `avaepurify` driven through `gst_check::Harness`: formats, sizes and strides, ROI handling,
//! reproducibility, the effect of `tau` and `samples`, stats, and failures that must pass frames
//! through.

mod common;

use gst::glib;
use gst::prelude::*;
use gst_check::Harness;
use gst_video::VideoRegionOfInterestMeta;
use gstavaepurify::core::image::{Region, square_box};

/// An `avaepurify` on the tiny test bundle with tract and few samples, no context (so that only
/// the face crops change, which most tests check), then `props`.
fn element(props: &[(&str, &str)]) -> gst::Element {
    common::init();
    let mut builder = gst::ElementFactory::make("avaepurify")
        .property("model", common::tiny_bundle())
        .property_from_str("backend", "tract")
        .property("samples", 4u32)
        .property("seed", 1u64)
        .property("context", 0.0f32);
    for (name, value) in props {
        builder = builder.property_from_str(name, value);
    }
    builder.build().expect("avaepurify is registered")
}

/// A started harness around [`element`] fed `format` frames of `width` x `height`.
fn harness(
    format: gst_video::VideoFormat,
    width: u32,
    height: u32,
    props: &[(&str, &str)],
) -> (Harness, gst_video::VideoInfo) {
    let mut h = Harness::with_element(&element(props), Some("sink"), Some("src"));
    let info = gst_video::VideoInfo::builder(format, width, height)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .expect("valid video info");
    h.set_src_caps(info.to_caps().expect("caps from info"));
    (h, info)
}

/// A frame of patterned bytes with one ROI meta per `(roi_type, x, y, w, h)`, attached in order.
fn frame(
    info: &gst_video::VideoInfo,
    seed: u32,
    rois: &[(&str, u32, u32, u32, u32)],
) -> gst::Buffer {
    let mut buffer = gst::Buffer::from_mut_slice(common::pattern(info.size(), seed));
    {
        let buffer = buffer.get_mut().expect("new buffer is writable");
        buffer.set_pts(gst::ClockTime::from_mseconds(40 * u64::from(seed)));
        for &(roi_type, x, y, w, h) in rois {
            VideoRegionOfInterestMeta::add(buffer, roi_type, (x, y, w, h));
        }
    }
    buffer
}

fn bytes(buffer: &gst::BufferRef) -> Vec<u8> {
    buffer.map_readable().expect("readable buffer").to_vec()
}

/// The `avae-purify` param of each ROI meta, in the order the metas were attached.
fn purify_params(buffer: &gst::BufferRef) -> Vec<Option<gst::Structure>> {
    let mut metas: Vec<_> = buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .map(|m| (m.seqnum(), m.param("avae-purify").map(|s| s.to_owned())))
        .collect();
    metas.sort_by_key(|(seqnum, _)| *seqnum);
    metas.into_iter().map(|(_, p)| p).collect()
}

fn distance(param: &Option<gst::Structure>) -> f64 {
    param
        .as_ref()
        .expect("ROI has an avae-purify param")
        .get::<f64>("distance")
        .expect("distance is a double")
}

fn stats(h: &Harness) -> gst::Structure {
    h.element()
        .expect("harness element")
        .property::<gst::Structure>("stats")
}

fn stat(stats: &gst::Structure, field: &str) -> u64 {
    stats
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
}

/// Byte offsets of the pixel components (not padding/alpha) that lie inside `region`.
fn inside(info: &gst_video::VideoInfo, region: Region) -> Vec<bool> {
    let stride = info.stride()[0] as usize;
    let bpp = info.format_info().pixel_stride()[0] as usize;
    let mut mask = vec![false; info.size()];
    for y in region.y..region.y + region.height {
        for x in region.x..region.x + region.width {
            // The colour components come first in every format the element accepts.
            for c in 0..3 {
                mask[y * stride + x * bpp + c] = true;
            }
        }
    }
    mask
}

/// Asserts that only bytes inside `regions` changed, and that some did.
fn assert_changed_only_inside(
    info: &gst_video::VideoInfo,
    input: &[u8],
    output: &[u8],
    regions: &[Region],
) {
    assert_eq!(input.len(), output.len());
    let masks: Vec<_> = regions.iter().map(|r| inside(info, *r)).collect();
    let mut changed_inside = 0;
    for (i, (a, b)) in input.iter().zip(output).enumerate() {
        let is_inside = masks.iter().any(|m| m[i]);
        if is_inside {
            changed_inside += usize::from(a != b);
        } else {
            assert_eq!(a, b, "byte {i} outside the purified regions changed");
        }
    }
    assert!(changed_inside > 0, "nothing changed inside {regions:?}");
}

fn region(info: &gst_video::VideoInfo, x: i64, y: i64, w: u32, h: u32, margin: f32) -> Region {
    square_box(
        x,
        y,
        w,
        h,
        margin,
        info.width() as usize,
        info.height() as usize,
    )
    .expect("ROI intersects the frame")
    .into()
}

#[test]
fn no_roi_leaves_the_frame_unchanged() {
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 97, 61, &[]);
    let input = frame(&info, 1, &[("person", 10, 10, 30, 30)]);
    let expected = bytes(&input);
    let output = h.push_and_pull(input).expect("frame out");
    assert!(bytes(&output) == expected, "the frame changed");
    assert_eq!(purify_params(&output), vec![None]);
    let s = stats(&h);
    assert_eq!(stat(&s, "frames"), 1);
    assert_eq!(stat(&s, "faces-purified"), 0);
    assert_eq!(stat(&s, "faces-skipped"), 0);
}

#[test]
fn rgb_odd_size_purifies_inside_the_square_only() {
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 97, 61, &[]);
    assert_ne!(
        info.stride()[0] as u32,
        97 * 3,
        "RGB 97 wide has a padded stride"
    );
    let input = frame(&info, 2, &[("face", 30, 12, 21, 27)]);
    let before = bytes(&input);
    let output = h.push_and_pull(input).expect("frame out");
    assert_changed_only_inside(
        &info,
        &before,
        &bytes(&output),
        &[region(&info, 30, 12, 21, 27, 0.2)],
    );

    let params = purify_params(&output);
    let param = params[0].as_ref().expect("avae-purify param on the ROI");
    assert!(param.get::<f64>("distance").unwrap() >= 0.0);
    assert!(param.get::<u32>("candidate").unwrap() < 4);
    assert_eq!(param.get::<u32>("samples").unwrap(), 4);
}

/// Pushes one `side` x `side` RGB frame (pattern `seed`) with one face ROI `(x, y, w, h)` through
/// an element with `margin=0` and `props`: the frame's info, its bytes before, and what came out.
fn one_face(
    side: u32,
    seed: u32,
    face: (u32, u32, u32, u32),
    props: &[(&str, &str)],
) -> (gst_video::VideoInfo, Vec<u8>, gst::Buffer) {
    let mut all = vec![("margin", "0")];
    all.extend_from_slice(props);
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, side, side, &all);
    let (x, y, w, hh) = face;
    let input = frame(&info, seed, &[("face", x, y, w, hh)]);
    let before = bytes(&input);
    let output = h.push_and_pull(input).expect("frame out");
    (info, before, output)
}

/// `context` low-passes a ring around the face crop (here a 64-pixel box in a 160x160 frame,
/// read at S = 64 and low-passed to the bundle's 32 samples per face side: context 0.5 reaches
/// 32 pixels beyond the box, fully smoothed over the first 16) and leaves the rest alone.
#[test]
fn context_smooths_the_ring_around_the_face_only() {
    let run = |context: &str| {
        let (info, before, output) = one_face(160, 5, (48, 48, 64, 64), &[("context", context)]);
        (info, before, bytes(&output))
    };
    let (info, before, plain) = run("0");
    let (_, _, ringed) = run("0.5");
    let stride = info.stride()[0] as usize;
    let (mut ring_changed, mut ring) = (0, 0);
    for y in 0..160usize {
        for x in 0..160usize {
            let i = y * stride + x * 3;
            let d = (x as i32 - 80).abs().max((y as i32 - 80).abs());
            if d >= 65 {
                // Beyond the context square: the frame as it was, with or without context.
                assert_eq!(
                    ringed[i..i + 3],
                    before[i..i + 3],
                    "pixel ({x}, {y}) changed"
                );
            } else if (36..=46).contains(&d) {
                // Outside the face crop, inside the fully smoothed part of the context.
                assert_eq!(
                    plain[i..i + 3],
                    before[i..i + 3],
                    "context 0 changed ({x}, {y})"
                );
                ring += 1;
                ring_changed += usize::from(ringed[i..i + 3] != before[i..i + 3]);
            }
        }
    }
    assert!(
        ring_changed * 10 > ring * 9,
        "only {ring_changed} of {ring} ring pixels smoothed"
    );
}

/// A second pass purifies the first pass's output again: the same face comes out otherwise,
/// while the ROI's figures stay the first pass's (the same with one pass or two).
#[test]
fn a_second_pass_changes_the_face_but_not_its_figures() {
    let run = |passes: &str| {
        let (_, _, output) = one_face(96, 7, (16, 16, 64, 64), &[("passes", passes)]);
        let param = purify_params(&output)[0].clone().expect("purified");
        (bytes(&output), param.get::<f64>("distance").unwrap())
    };
    let (one, d1) = run("1");
    let (two, d2) = run("2");
    assert_ne!(one, two, "the second pass changed nothing");
    assert_eq!(d1, d2, "the reported distance is the first pass's");
}

#[test]
fn bgrx_keeps_padding_bytes() {
    let (mut h, info) = harness(gst_video::VideoFormat::Bgrx, 64, 48, &[("margin", "0")]);
    let input = frame(&info, 3, &[("face", 8, 8, 32, 32)]);
    let before = bytes(&input);
    let output = h.push_and_pull(input).expect("frame out");
    let after = bytes(&output);
    assert_changed_only_inside(&info, &before, &after, &[region(&info, 8, 8, 32, 32, 0.0)]);
    for (i, (a, b)) in before.iter().zip(&after).enumerate().skip(3).step_by(4) {
        assert_eq!(a, b, "x byte {i} changed");
    }
}

#[test]
fn custom_stride_from_video_meta_is_respected() {
    let (mut h, info) = harness(
        gst_video::VideoFormat::Bgra,
        37,
        23,
        &[("full-frame", "true")],
    );
    let stride = 37 * 4 + 20;
    let mut buffer = gst::Buffer::from_mut_slice(common::pattern(stride * 23, 4));
    gst_video::VideoMeta::add_full(
        buffer.get_mut().unwrap(),
        gst_video::VideoFrameFlags::empty(),
        info.format(),
        37,
        23,
        &[0],
        &[stride as i32],
    )
    .expect("video meta");
    let before = bytes(&buffer);
    let after = bytes(&h.push_and_pull(buffer).expect("frame out"));
    let mut changed = 0;
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let (col, component) = (i % stride, i % stride % 4);
        if col >= 37 * 4 || component == 3 {
            assert_eq!(a, b, "padding or alpha byte {i} changed");
        } else {
            changed += usize::from(a != b);
        }
    }
    assert!(changed > 0, "the full frame was not purified");
}

#[test]
fn every_format_and_odd_sizes() {
    use gst_video::VideoFormat as F;
    for format in [F::Rgb, F::Bgr, F::Rgba, F::Bgra, F::Rgbx, F::Bgrx] {
        for (width, height) in [(97, 61), (1, 1), (13, 130)] {
            for full_frame in ["true", "false"] {
                let (mut h, info) = harness(format, width, height, &[("full-frame", full_frame)]);
                let input = frame(
                    &info,
                    5,
                    &[("face", width / 3, height / 3, width / 2 + 1, height / 2 + 1)],
                );
                let before = bytes(&input);
                let output = h.push_and_pull(input).expect("frame out");
                assert_eq!(output.size(), before.len(), "{format} {width}x{height}");
                let s = stats(&h);
                assert_eq!(
                    stat(&s, "faces-purified"),
                    1,
                    "{format} {width}x{height} full-frame={full_frame}"
                );
                assert_eq!(stat(&s, "failures"), 0, "{format} {width}x{height}");
            }
        }
    }
}

#[test]
fn full_frame_purifies_a_non_square_frame_and_ignores_rois() {
    let (mut h, info) = harness(
        gst_video::VideoFormat::Rgb,
        97,
        61,
        &[("full-frame", "true")],
    );
    let input = frame(&info, 6, &[("face", 0, 0, 10, 10)]);
    let before = bytes(&input);
    let output = h.push_and_pull(input).expect("frame out");
    assert_changed_only_inside(&info, &before, &bytes(&output), &[Region::full(97, 61)]);
    assert_eq!(purify_params(&output), vec![None]);
    assert_eq!(stat(&stats(&h), "faces-purified"), 1);
}

#[test]
fn rois_at_the_edges_are_purified_and_outside_ones_skipped() {
    let (mut h, info) = harness(gst_video::VideoFormat::Rgbx, 80, 60, &[]);
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    let rois = [
        ("face", 0, 0, 20, 20),   // top-left corner
        ("face", 70, 50, 30, 30), // partly outside bottom-right
        ("face", 75, 0, 20, 80),  // taller than the frame, partly outside on the right
        ("face", 80, 10, 10, 10), // entirely outside
        ("face", 10, 10, 0, 5),   // empty
    ];
    for seed in [7, 8] {
        let input = frame(&info, seed, &rois);
        let before = bytes(&input);
        let output = h.push_and_pull(input).expect("frame out");
        let regions: Vec<_> = rois[..3]
            .iter()
            .map(|&(_, x, y, w, hh)| region(&info, x.into(), y.into(), w, hh, 0.2))
            .collect();
        assert_changed_only_inside(&info, &before, &bytes(&output), &regions);
        let params = purify_params(&output);
        assert!(params[..3].iter().all(Option::is_some), "{params:?}");
        assert!(params[3..].iter().all(Option::is_none), "{params:?}");
    }
    let s = stats(&h);
    assert_eq!(stat(&s, "frames"), 2);
    assert_eq!(stat(&s, "faces-purified"), 6);
    assert_eq!(stat(&s, "faces-skipped"), 4);
    assert_eq!(stat(&s, "failures"), 0);
    let warnings = bus
        .iter()
        .filter(|m| m.type_() == gst::MessageType::Warning)
        .count();
    assert_eq!(warnings, 1, "one warning for the outside/empty ROIs");
}

/// Twenty ROIs on a grid of a 160x128 frame.
fn twenty_rois() -> Vec<(&'static str, u32, u32, u32, u32)> {
    (0..20)
        .map(|i| ("face", (i % 5) * 32 + 4, (i / 5) * 32 + 4, 20, 24))
        .collect()
}

#[test]
fn twenty_rois_are_purified_in_one_frame() {
    let (mut h, info) = harness(
        gst_video::VideoFormat::Bgr,
        160,
        128,
        &[("max-faces", "20"), ("margin", "0")],
    );
    let rois = twenty_rois();
    let input = frame(&info, 9, &rois);
    let before = bytes(&input);
    let output = h.push_and_pull(input).expect("frame out");
    let regions: Vec<_> = rois
        .iter()
        .map(|&(_, x, y, w, hh)| region(&info, x.into(), y.into(), w, hh, 0.0))
        .collect();
    assert_changed_only_inside(&info, &before, &bytes(&output), &regions);
    let params = purify_params(&output);
    assert_eq!(params.len(), 20);
    assert!(params.iter().all(Option::is_some));
    let s = stats(&h);
    assert_eq!(stat(&s, "faces-purified"), 20);
    assert_eq!(stat(&s, "faces-skipped"), 0);
    assert!(s.get::<f64>("mean-latency-ms").unwrap() > 0.0);
}

#[test]
fn rois_beyond_max_faces_pass_through_and_warn_once() {
    let (mut h, info) = harness(
        gst_video::VideoFormat::Bgr,
        160,
        128,
        &[("max-faces", "16"), ("margin", "0")],
    );
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    let rois = twenty_rois();
    for seed in [10, 11] {
        let input = frame(&info, seed, &rois);
        let before = bytes(&input);
        let output = h.push_and_pull(input).expect("frame out");
        let regions: Vec<_> = rois[..16]
            .iter()
            .map(|&(_, x, y, w, hh)| region(&info, x.into(), y.into(), w, hh, 0.0))
            .collect();
        assert_changed_only_inside(&info, &before, &bytes(&output), &regions);
        let params = purify_params(&output);
        assert!(
            params[..16].iter().all(Option::is_some),
            "the first 16 attached are purified"
        );
        assert!(params[16..].iter().all(Option::is_none));
    }
    let s = stats(&h);
    assert_eq!(stat(&s, "faces-purified"), 32);
    assert_eq!(stat(&s, "faces-skipped"), 8);
    let warnings: Vec<_> = bus
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("max-faces"), "{warnings:?}");
}

#[test]
fn roi_type_selects_the_metas() {
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 64, 64, &[("roi-type", "head")]);
    let output = h
        .push_and_pull(frame(
            &info,
            12,
            &[("face", 4, 4, 20, 20), ("head", 30, 30, 20, 20)],
        ))
        .expect("frame out");
    let params = purify_params(&output);
    assert!(params[0].is_none() && params[1].is_some(), "{params:?}");
}

/// Outputs and ROI distances of `frames` frames (3 ROIs each) through a fresh element.
fn run(props: &[(&str, &str)], frames: u32) -> (Vec<Vec<u8>>, Vec<f64>) {
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 96, 64, props);
    let rois = [
        ("face", 4, 4, 28, 28),
        ("face", 40, 10, 24, 30),
        ("face", 60, 30, 30, 30),
    ];
    let mut outputs = Vec::new();
    let mut distances = Vec::new();
    for seed in 0..frames {
        let output = h
            .push_and_pull(frame(&info, 20 + seed, &rois))
            .expect("frame out");
        outputs.push(bytes(&output));
        distances.extend(purify_params(&output).iter().map(distance));
    }
    (outputs, distances)
}

/// Bytes that differ between two runs' outputs.
fn differing_bytes(a: &[Vec<u8>], b: &[Vec<u8>]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).filter(|(p, q)| p != q).count())
        .sum()
}

// The untrained test bundle's posterior is wide enough that its calibrated default tau leaves
// little room for sampling; tau = 1 lets the samples (and so the seed) matter.
#[test]
fn the_same_seed_gives_identical_output() {
    let a = run(&[("seed", "42"), ("tau", "1")], 3);
    let b = run(&[("seed", "42"), ("tau", "1")], 3);
    assert_eq!(differing_bytes(&a.0, &b.0), 0);
    assert_eq!(a.1, b.1);
}

#[test]
fn different_seeds_give_different_output() {
    let a = run(&[("seed", "42"), ("tau", "1")], 2);
    let b = run(&[("seed", "43"), ("tau", "1")], 2);
    assert!(
        differing_bytes(&a.0, &b.0) > 0,
        "seeds 42 and 43 gave the same frames"
    );
    assert_ne!(a.1, b.1);
}

#[test]
fn seed_zero_draws_a_new_seed_each_run() {
    let a = run(&[("seed", "0"), ("tau", "1")], 1);
    let b = run(&[("seed", "0"), ("tau", "1")], 1);
    assert!(
        differing_bytes(&a.0, &b.0) > 0,
        "two seed=0 runs gave the same frames"
    );
}

#[test]
fn tau_zero_makes_the_output_independent_of_the_seed() {
    let a = run(&[("seed", "42"), ("tau", "0")], 2);
    let b = run(&[("seed", "43"), ("tau", "0")], 2);
    assert_eq!(differing_bytes(&a.0, &b.0), 0);
    assert_eq!(a.1, b.1);
    // ... while a looser clip on the same seeds does depend on them.
    let c = run(&[("seed", "43"), ("tau", "1")], 2);
    assert!(differing_bytes(&b.0, &c.0) > 0, "tau had no effect");
}

#[test]
fn more_samples_find_closer_candidates() {
    let mean = |d: &[f64]| d.iter().sum::<f64>() / d.len() as f64;
    let (_, one) = run(&[("samples", "1"), ("tau", "1e30")], 3);
    let (_, many) = run(&[("samples", "64"), ("tau", "1e30")], 3);
    assert!(
        mean(&many) <= mean(&one),
        "mean distance with 64 samples {} > with 1 sample {}",
        mean(&many),
        mean(&one)
    );
}

#[test]
fn an_unreadable_frame_passes_through_and_counts_as_a_failure() {
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 32, 32, &[]);
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    for seed in [1, 2] {
        // One byte short of a frame: the element cannot map it as video.
        let mut buffer = gst::Buffer::from_mut_slice(common::pattern(info.size() - 1, seed));
        VideoRegionOfInterestMeta::add(buffer.get_mut().unwrap(), "face", (4, 4, 16, 16));
        let before = bytes(&buffer);
        let output = h.push_and_pull(buffer).expect("the frame still comes out");
        assert!(bytes(&output) == before, "the frame changed");
        assert_eq!(purify_params(&output), vec![None]);
    }
    let s = stats(&h);
    assert_eq!(stat(&s, "frames"), 2);
    assert_eq!(stat(&s, "failures"), 2);
    assert_eq!(stat(&s, "faces-purified"), 0);
    let warnings = bus
        .iter()
        .filter(|m| m.type_() == gst::MessageType::Warning)
        .count();
    assert_eq!(warnings, 1);
}

#[test]
fn a_bad_model_path_fails_start_with_an_error_naming_it() {
    common::init();
    let path = "/nonexistent/avae-bundle-for-test";
    let element = gst::ElementFactory::make("avaepurify")
        .property("model", path)
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    assert!(element.set_state(gst::State::Paused).is_err());
    let message = bus
        .iter()
        .find(|m| m.type_() == gst::MessageType::Error)
        .expect("an error message");
    let gst::MessageView::Error(error) = message.view() else {
        unreachable!()
    };
    let text = error.error().to_string();
    assert!(text.contains(path), "{text}");
    assert!(text.contains("model"), "{text}");
    element.set_state(gst::State::Null).unwrap();
}

#[test]
fn property_defaults_and_ranges() {
    common::init();
    let element = gst::ElementFactory::make("avaepurify").build().unwrap();
    assert_eq!(element.property::<u32>("samples"), 16);
    assert_eq!(element.property::<u32>("batch"), 16);
    assert_eq!(
        element.property::<f32>("tau"),
        -1.0,
        "default: the bundle's calibrated tau"
    );
    assert_eq!(element.property::<u64>("seed"), 0);
    assert_eq!(element.property::<String>("roi-type"), "face");
    assert_eq!(element.property::<f32>("margin"), 0.2);
    assert!(!element.property::<bool>("full-frame"));
    assert_eq!(element.property::<u32>("max-faces"), 16);
    assert_eq!(element.property::<f32>("feather"), 0.15);
    assert_eq!(
        element.property::<f32>("context"),
        gstavaepurify::frame::DEFAULT_CONTEXT
    );
    assert_eq!(
        element.property::<u32>("passes") as usize,
        gstavaepurify::frame::DEFAULT_PASSES
    );
    assert!(element.property::<bool>("align"));
    assert!(
        !element.property::<bool>("qos"),
        "QoS would drop late frames"
    );
    assert_eq!(
        element.property::<String>("model"),
        gstavaepurify::bundle::default_model_dir().to_string_lossy()
    );
    let pspec = element.find_property("samples").unwrap();
    let pspec = pspec.downcast_ref::<glib::ParamSpecUInt>().unwrap();
    assert_eq!((pspec.minimum(), pspec.maximum()), (1, 4096));
    assert!(
        !element
            .find_property("stats")
            .unwrap()
            .flags()
            .contains(glib::ParamFlags::WRITABLE)
    );
    for name in ["model", "backend", "device", "seed"] {
        let flags = element.find_property(name).unwrap().flags();
        assert!(
            flags.contains(gst::PARAM_FLAG_MUTABLE_READY),
            "{name} is mutable in READY"
        );
    }
    element.set_property_from_str("backend", "ort");
    element.set_property_from_str("device", "tensorrt");
    assert_eq!(
        element
            .property_value("backend")
            .get::<gstavaepurify::avaepurify::BackendChoice>()
            .unwrap(),
        gstavaepurify::avaepurify::BackendChoice::Ort
    );
    let s = element.property::<gst::Structure>("stats");
    assert_eq!(s.name(), "avaepurify-stats");
    assert_eq!(stat(&s, "frames"), 0);
}

/// Landmark template of the aligned tests, as fractions of the face: left eye, right eye, nose,
/// left and right mouth corners.
const TEMPLATE: [[f32; 2]; 5] = [
    [0.35, 0.40],
    [0.65, 0.40],
    [0.50, 0.55],
    [0.38, 0.72],
    [0.62, 0.72],
];

/// A copy of the tiny bundle whose manifest has [`TEMPLATE`], in a fresh temporary folder.
fn bundle_with_template(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("avae-element-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary bundle folder");
    let source = std::path::PathBuf::from(common::tiny_bundle());
    for entry in std::fs::read_dir(&source).expect("tiny bundle readable") {
        let path = entry.expect("bundle entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("file name"))).expect("copy");
    }
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).unwrap();
    manifest["landmark_template"] = serde_json::json!(TEMPLATE);
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    dir
}

/// Adds a `face` ROI at `rect` with a `detection` param holding `landmarks` (frame pixels).
fn add_face_with_landmarks(
    buffer: &mut gst::BufferRef,
    info: &gst_video::VideoInfo,
    rect: (u32, u32, u32, u32),
    landmarks: &[[f32; 2]; 5],
) {
    let (w, h) = (info.width() as f32, info.height() as f32);
    let face = gstavaepurify::core::detect::Face {
        x_min: rect.0 as f32 / w,
        y_min: rect.1 as f32 / h,
        x_max: (rect.0 + rect.2) as f32 / w,
        y_max: (rect.1 + rect.3) as f32 / h,
        confidence: 0.9,
        landmarks: landmarks.map(|[x, y]| [x / w, y / h]),
    };
    let mut meta = VideoRegionOfInterestMeta::add(buffer, "face", rect);
    meta.add_param(gstavaepurify::avaefacedetect::detection_structure(&face));
}

/// The template of a 40-pixel face at (70, 40), rotated by 30 degrees: far from the ROI box
/// the aligned tests attach, so that which crop was used shows in the pixels that change.
fn rotated_landmarks() -> [[f32; 2]; 5] {
    let (cos, sin) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
    TEMPLATE.map(|[u, v]| {
        let (x, y) = ((u - 0.5) * 40.0, (v - 0.5) * 40.0);
        [90.0 + cos * x - sin * y, 60.0 + sin * x + cos * y]
    })
}

/// Pushes one 128x96 RGB frame with a face ROI at (4, 4, 20, 20) carrying
/// [`rotated_landmarks`], plus a second ROI at (4, 60, 20, 20) whose landmarks coincide.
fn run_aligned(
    name: &str,
    props: &[(&str, &str)],
) -> (gst_video::VideoInfo, Vec<u8>, gst::Buffer, Harness) {
    let bundle = bundle_with_template(name);
    let mut all = vec![("model", bundle.to_str().expect("utf-8 temp path"))];
    all.extend_from_slice(props);
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 128, 96, &all);
    let mut input = frame(&info, 30, &[]);
    {
        let buffer = input.get_mut().unwrap();
        add_face_with_landmarks(buffer, &info, (4, 4, 20, 20), &rotated_landmarks());
        add_face_with_landmarks(buffer, &info, (4, 60, 20, 20), &[[14.0, 70.0]; 5]);
    }
    let before = bytes(&input);
    let output = h.push_and_pull(input).expect("frame out");
    std::fs::remove_dir_all(&bundle).ok();
    (info, before, output, h)
}

#[test]
fn landmarks_align_the_crop_to_the_template() {
    let (info, before, output, h) = run_aligned("aligned", &[("feather", "0")]);
    let after = bytes(&output);
    let params = purify_params(&output);
    assert!(params.iter().all(Option::is_some), "{params:?}");
    let s = stats(&h);
    assert_eq!(stat(&s, "faces-purified"), 2);
    assert_eq!(
        stat(&s, "faces-aligned"),
        1,
        "degenerate landmarks use the box"
    );
    assert_eq!(stat(&s, "failures"), 0);

    let side = 64.0;
    let dst = TEMPLATE.map(|[u, v]| [u * side, v * side]);
    let to_face = gstavaepurify::core::align::estimate_similarity(&rotated_landmarks(), &dst)
        .expect("a proper transform");
    let degenerate_box = region(&info, 4, 60, 20, 20, 0.2);
    let stride = info.stride()[0] as usize;
    let (mut inside_changed, mut outside_box_changed) = (0, 0);
    for y in 0..96usize {
        for x in 0..128usize {
            let [u, v] = to_face.apply([x as f32 + 0.5, y as f32 + 0.5]);
            let in_face = (-0.5..=side + 0.5).contains(&u) && (-0.5..=side + 0.5).contains(&v);
            let in_box = (degenerate_box.x..degenerate_box.x + degenerate_box.width).contains(&x)
                && (degenerate_box.y..degenerate_box.y + degenerate_box.height).contains(&y);
            let i = y * stride + x * 3;
            let changed = before[i..i + 3] != after[i..i + 3];
            if in_face {
                inside_changed += usize::from(changed);
                // Outside the axis-aligned square around the landmarks' face: the rotation.
                let (dx, dy) = (x as f32 + 0.5 - 90.0, y as f32 + 0.5 - 60.0);
                if dx.abs().max(dy.abs()) > 20.0 * 1.2 {
                    outside_box_changed += usize::from(changed);
                }
            } else if !in_box {
                assert!(
                    !changed,
                    "pixel ({x}, {y}) outside the aligned face changed"
                );
            }
        }
    }
    assert!(
        inside_changed > 1000,
        "{inside_changed} pixels of the face changed"
    );
    assert!(
        outside_box_changed > 0,
        "the rotated square reaches beyond an unrotated one"
    );
}

#[test]
fn align_false_crops_the_box_around_the_roi() {
    let (info, before, output, h) = run_aligned("box", &[("align", "false"), ("feather", "0")]);
    assert_changed_only_inside(
        &info,
        &before,
        &bytes(&output),
        &[
            region(&info, 4, 4, 20, 20, 0.2),
            region(&info, 4, 60, 20, 20, 0.2),
        ],
    );
    let s = stats(&h);
    assert_eq!(stat(&s, "faces-purified"), 2);
    assert_eq!(stat(&s, "faces-aligned"), 0);
}

#[test]
fn feather_blends_the_crop_border_into_the_frame() {
    // Mean absolute change of the outermost ring of the box and of its central quarter, after
    // one paste (a second pass reads the feathered paste again, so its centre depends on the
    // feather).
    let ring_and_centre = |feather: &str| {
        let (mut h, info) = harness(
            gst_video::VideoFormat::Rgb,
            96,
            96,
            &[("margin", "0"), ("feather", feather), ("passes", "1")],
        );
        let input = frame(&info, 31, &[("face", 16, 16, 64, 64)]);
        let before = bytes(&input);
        let after = bytes(&h.push_and_pull(input).expect("frame out"));
        let stride = info.stride()[0] as usize;
        let (mut ring, mut centre) = (Vec::new(), Vec::new());
        for y in 16..80usize {
            for x in 16..80usize {
                let i = y * stride + x * 3;
                let d = f64::from(before[i].abs_diff(after[i]));
                if x == 16 || x == 79 || y == 16 || y == 79 {
                    ring.push(d);
                } else if (32..64).contains(&x) && (32..64).contains(&y) {
                    centre.push(d);
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        (mean(&ring), mean(&centre))
    };
    let (hard_ring, hard_centre) = ring_and_centre("0");
    let (soft_ring, soft_centre) = ring_and_centre("0.15");
    assert!(
        hard_ring > 0.5 * hard_centre,
        "a hard paste replaces the border: ring {hard_ring}, centre {hard_centre}"
    );
    assert!(
        soft_ring < 0.1 * soft_centre,
        "a feathered paste keeps the border: ring {soft_ring}, centre {soft_centre}"
    );
    assert_eq!(
        soft_centre, hard_centre,
        "the centre is fully replaced either way"
    );
}

// ---- on-failure, batch, roi-type, device (issue 11) ----

/// A `[N, dims...]` f32 tensor value for a hand-built ONNX graph.
fn value_info(name: &str, dims: &[i64]) -> tract_onnx::pb::ValueInfoProto {
    use tract_onnx::pb;
    use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension::Value as D};
    let mut dim = vec![Dimension {
        value: Some(D::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| Dimension {
        value: Some(D::DimValue(d)),
        ..Default::default()
    }));
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A copy of the tiny bundle whose decoder passes the bundle checks (names, declared shapes,
/// checksum) but fails when it runs: it returns its skip input, `[N, 8, 16, 16]`, as the
/// `[N, 3, 64, 64]` image. Every face then fails in the engine.
fn bundle_with_failing_decoder(name: &str) -> std::path::PathBuf {
    bundle_with_failing_decoder_and(name, None)
}

/// [`bundle_with_failing_decoder`], with `template` as the manifest's landmark template.
fn bundle_with_failing_decoder_and(
    name: &str,
    template: Option<[[f32; 2]; 5]>,
) -> std::path::PathBuf {
    use prost::Message;
    use tract_onnx::pb;
    let dir = std::env::temp_dir().join(format!("avae-element-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary bundle folder");
    let source = std::path::PathBuf::from(common::tiny_bundle());
    for entry in std::fs::read_dir(&source).expect("tiny bundle readable") {
        let path = entry.expect("bundle entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("file name"))).expect("copy");
    }
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "failing-decoder".into(),
            node: vec![pb::NodeProto {
                op_type: "Identity".into(),
                input: vec!["skip".into()],
                output: vec!["image".into()],
                ..Default::default()
            }],
            input: vec![value_info("z", &[64]), value_info("skip", &[8, 16, 16])],
            output: vec![value_info("image", &[3, 64, 64])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let decoder = dir.join("decoder.onnx");
    std::fs::write(&decoder, model.encode_to_vec()).unwrap();
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).unwrap();
    manifest["graphs"]["decoder"]["sha256"] =
        serde_json::json!(gstavaepurify::bundle::sha256_file(&decoder).unwrap());
    if let Some(template) = template {
        manifest["landmark_template"] = serde_json::json!(template);
    }
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    dir
}

/// Messages of `kind` on `bus`, as their error texts (the others are popped and dropped).
fn bus_texts(bus: &gst::Bus, kind: gst::MessageType) -> Vec<String> {
    bus.iter()
        .filter(|m| m.type_() == kind)
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        })
        .collect()
}

/// Pushes one 64x64 RGB frame with a face ROI at (8, 8, 32, 32) through an element on the
/// failing-decoder bundle with `on-failure=policy`: the input bytes, the push result, the
/// warnings and errors posted, and the harness.
#[allow(clippy::type_complexity)]
fn run_failing(
    policy: &str,
) -> (
    gst_video::VideoInfo,
    Vec<u8>,
    Result<gst::Buffer, gst::FlowError>,
    Vec<String>,
    Vec<String>,
    Harness,
) {
    let bundle = bundle_with_failing_decoder(&format!("failing-{policy}"));
    let props = [
        ("model", bundle.to_str().expect("utf-8 temp path")),
        ("on-failure", policy),
        ("margin", "0"),
    ];
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 64, 64, &props);
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    let input = frame(&info, 40, &[("face", 8, 8, 32, 32)]);
    let before = bytes(&input);
    let result = h
        .push(input)
        .and_then(|_| h.pull().map_err(|_| gst::FlowError::Error));
    let (mut warnings, mut errors) = (Vec::new(), Vec::new());
    for message in bus.iter() {
        match message.view() {
            gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
            gst::MessageView::Error(e) => errors.push(e.error().to_string()),
            _ => {}
        }
    }
    std::fs::remove_dir_all(&bundle).ok();
    (info, before, result, warnings, errors, h)
}

#[test]
fn on_failure_pass_lets_the_unpurified_face_through_unchanged() {
    let (_, before, result, warnings, errors, h) = run_failing("pass");
    let output = result.expect("the frame comes out");
    assert!(bytes(&output) == before, "the frame changed");
    assert_eq!(purify_params(&output), vec![None]);
    assert_eq!(stat(&stats(&h), "failures"), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("unpurified"), "{warnings:?}");
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn on_failure_mark_flags_the_roi_purified_false() {
    let (_, before, result, warnings, errors, _h) = run_failing("mark");
    let output = result.expect("the frame comes out");
    assert!(bytes(&output) == before, "the frame changed");
    let params = purify_params(&output);
    let param = params[0].as_ref().expect("the ROI is marked");
    assert!(!param.get::<bool>("purified").unwrap(), "{param}");
    assert_eq!(param.get::<&str>("reason").unwrap(), "engine-failed");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn on_failure_mark_flags_purified_faces_true() {
    let (mut h, info) = harness(
        gst_video::VideoFormat::Rgb,
        64,
        64,
        &[("on-failure", "mark"), ("max-faces", "1")],
    );
    let output = h
        .push_and_pull(frame(
            &info,
            41,
            &[("face", 4, 4, 20, 20), ("face", 30, 30, 20, 20)],
        ))
        .expect("frame out");
    let params = purify_params(&output);
    let first = params[0].as_ref().expect("purified ROI has a param");
    assert!(first.get::<bool>("purified").unwrap(), "{first}");
    assert!(first.get::<f64>("distance").is_ok(), "{first}");
    let second = params[1]
        .as_ref()
        .expect("the ROI beyond max-faces is marked");
    assert!(!second.get::<bool>("purified").unwrap(), "{second}");
    assert_eq!(second.get::<&str>("reason").unwrap(), "max-faces");
}

#[test]
fn on_failure_conceal_pixelates_the_face_region_only() {
    let (info, before, result, warnings, errors, _h) = run_failing("conceal");
    let output = result.expect("the frame comes out");
    let after = bytes(&output);
    let face = region(&info, 8, 8, 32, 32, 0.0);
    assert_changed_only_inside(&info, &before, &after, &[face]);
    // A 4 x 4 mosaic: each 8 x 8 block of the 32-pixel face is one flat colour.
    let stride = info.stride()[0] as usize;
    for by in 0..4 {
        for bx in 0..4 {
            let (x0, y0) = (face.x + bx * 8, face.y + by * 8);
            let first = &after[y0 * stride + x0 * 3..][..3];
            for y in y0..y0 + 8 {
                for x in x0..x0 + 8 {
                    assert_eq!(&after[y * stride + x * 3..][..3], first, "({x}, {y})");
                }
            }
        }
    }
    assert_eq!(purify_params(&output), vec![None]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("concealed"), "{warnings:?}");
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn on_failure_conceal_drops_a_frame_it_cannot_map() {
    let (mut h, info) = harness(
        gst_video::VideoFormat::Rgb,
        32,
        32,
        &[("on-failure", "conceal")],
    );
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    let mut buffer = gst::Buffer::from_mut_slice(common::pattern(info.size() - 1, 1));
    VideoRegionOfInterestMeta::add(buffer.get_mut().unwrap(), "face", (4, 4, 16, 16));
    assert_eq!(h.push(buffer), Ok(gst::FlowSuccess::Ok));
    assert!(
        h.try_pull().is_none(),
        "the unconcealable frame was dropped"
    );
    assert_eq!(stat(&stats(&h), "failures"), 1);
    let warnings = bus_texts(&bus, gst::MessageType::Warning);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("dropped"), "{warnings:?}");
}

#[test]
fn on_failure_error_posts_an_error_and_fails_the_flow() {
    let (_, _, result, _, errors, _h) = run_failing("error");
    assert_eq!(result.err(), Some(gst::FlowError::Error));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("on-failure=error"), "{errors:?}");
}

#[test]
fn on_failure_defaults_to_pass() {
    common::init();
    let element = gst::ElementFactory::make("avaepurify").build().unwrap();
    assert_eq!(
        element
            .property_value("on-failure")
            .get::<gstavaepurify::avaepurify::OnFailure>()
            .unwrap(),
        gstavaepurify::avaepurify::OnFailure::Pass
    );
}

#[test]
fn a_huge_batch_is_clamped_by_memory_and_warned_about_once() {
    let manifest = gstavaepurify::bundle::Bundle::load(common::tiny_bundle())
        .unwrap()
        .manifest;
    let limit = gstavaepurify::purifier::batch_limit(&manifest);
    assert!(
        (16..4096).contains(&limit),
        "the tiny bundle's limit {limit} must clamp 4096 and keep the default 16"
    );
    let samples = (limit + 8).to_string();
    let (mut h, info) = harness(
        gst_video::VideoFormat::Rgb,
        64,
        64,
        &[("batch", "4096"), ("samples", &samples)],
    );
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    for seed in [50, 51] {
        let output = h
            .push_and_pull(frame(&info, seed, &[("face", 8, 8, 40, 40)]))
            .expect("frame out");
        assert!(purify_params(&output)[0].is_some(), "the face is purified");
    }
    let warnings = bus_texts(&bus, gst::MessageType::Warning);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(
        w.contains("batch=4096") && w.contains(&format!("batch={limit}")),
        "{w}"
    );
}

#[test]
fn an_empty_roi_type_is_refused() {
    common::init();
    let element = element(&[]);
    element.set_property("roi-type", "");
    assert_eq!(element.property::<String>("roi-type"), "face");
    element.set_property("roi-type", "head");
    assert_eq!(element.property::<String>("roi-type"), "head");
}

#[test]
fn rois_of_other_types_only_warn_once_naming_them() {
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 64, 64, &[]);
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    for seed in [60, 61] {
        h.push_and_pull(frame(
            &info,
            seed,
            &[("person", 4, 4, 20, 20), ("Face", 30, 30, 20, 20)],
        ))
        .expect("frame out");
    }
    // A frame without any ROI says nothing.
    h.push_and_pull(frame(&info, 62, &[])).expect("frame out");
    let warnings = bus_texts(&bus, gst::MessageType::Warning);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(
        w.contains("'person'") && w.contains("'Face'") && w.contains("roi-type 'face'"),
        "{w}"
    );
}

#[test]
fn an_explicit_unavailable_device_is_a_bus_warning() {
    common::ensure_ort_library();
    common::init();
    let on_cuda = gstavaepurify::purifier::Purifier::load(
        std::path::Path::new(&common::tiny_bundle()),
        gstavaepurify::engine::Backend::Ort,
        gstavaepurify::engine::Device::Cuda,
    )
    .expect("the tiny bundle loads on ort")
    .backend_name();
    if on_cuda.contains("CUDA") {
        eprintln!("CUDA is available here: nothing to warn about");
        return;
    }
    for (device, warned) in [("cuda", true), ("tensorrt", true), ("auto", false)] {
        let element = element(&[("backend", "ort"), ("device", device)]);
        let bus = gst::Bus::new();
        element.set_bus(Some(&bus));
        element
            .set_state(gst::State::Paused)
            .expect("starts on the CPU");
        let warnings = bus_texts(&bus, gst::MessageType::Warning);
        element.set_state(gst::State::Null).unwrap();
        if warned {
            assert_eq!(warnings.len(), 1, "{device}: {warnings:?}");
            let w = &warnings[0];
            assert!(
                w.contains(&format!("device={device}")) && w.contains("unavailable"),
                "{w}"
            );
            assert!(w.contains("CPU"), "names where it runs instead: {w}");
        } else {
            assert!(warnings.is_empty(), "auto stays at INFO: {warnings:?}");
        }
    }
}

#[test]
fn on_failure_conceal_covers_the_aligned_face_not_the_roi_box() {
    let bundle = bundle_with_failing_decoder_and("failing-aligned", Some(TEMPLATE));
    let props = [
        ("model", bundle.to_str().expect("utf-8 temp path")),
        ("on-failure", "conceal"),
    ];
    let (mut h, info) = harness(gst_video::VideoFormat::Rgb, 128, 96, &props);
    let mut input = frame(&info, 31, &[]);
    add_face_with_landmarks(
        input.get_mut().unwrap(),
        &info,
        (4, 4, 20, 20),
        &rotated_landmarks(),
    );
    let before = bytes(&input);
    let after = bytes(&h.push_and_pull(input).expect("frame out"));
    std::fs::remove_dir_all(&bundle).ok();
    let stride = info.stride()[0] as usize;
    let changed = |x0: usize, y0: usize, x1: usize, y1: usize| {
        (y0..y1)
            .flat_map(|y| (x0 * 3..x1 * 3).map(move |i| y * stride + i))
            .filter(|&i| before[i] != after[i])
            .count()
    };
    // The landmarks put the face around (90, 60), 40 pixels wide; the ROI box is elsewhere.
    assert!(
        changed(80, 50, 100, 70) > 0,
        "the aligned face was not concealed"
    );
    assert_eq!(changed(0, 0, 30, 30), 0, "the ROI box is not the face");
}

#[test]
fn explicit_device_warnings_name_the_device_and_the_reason() {
    use gstavaepurify::engine::{Device, explicit_device_unavailable};
    let tract = explicit_device_unavailable(Device::Cuda, "tract (CPU)", &[]).unwrap();
    assert!(
        tract.contains("device=cuda") && tract.contains("tract") && tract.contains("CPU"),
        "{tract}"
    );
    let why = vec!["CUDA execution provider unavailable (no GPU)".to_owned()];
    let ort = explicit_device_unavailable(Device::TensorRt, "ort (CUDA)", &why).unwrap();
    assert!(
        ort.contains("device=tensorrt") && ort.contains("no GPU"),
        "{ort}"
    );
    assert_eq!(
        explicit_device_unavailable(Device::Cuda, "ort (CUDA)", &[]),
        None
    );
    assert_eq!(
        explicit_device_unavailable(Device::Auto, "ort (CPU)", &why),
        None
    );
    assert_eq!(
        explicit_device_unavailable(Device::Cpu, "tract (CPU)", &[]),
        None
    );
}

//! Per-track latent reuse in `avaepurify` on the shipped bundle: a tracked face (its ROI's
//! `detection` param has `object_id`) is purified in full on its first frame and every
//! `refresh-interval` frames and decoded from its kept latent in between; `refresh-interval=1`
//! is the untracked path exactly; a face that changes is refreshed early; flush and caps
//! changes forget the tracks; the ROI params and `stats` say which path each face took.

mod common;

use gst::prelude::*;
use gst_check::Harness;
use gst_video::{VideoFormat, VideoInfo, VideoRegionOfInterestMeta};

use common::{LFW_SIDE, lfw_images, load_rgb};

/// An `avaepurify` on the shipped bundle (tract, seed 1) with `props`.
fn element(props: &[(&str, &str)]) -> gst::Element {
    common::init();
    let bundle = common::workspace().join("models/avae-cpu");
    assert!(
        bundle.join("manifest.json").is_file(),
        "shipped bundle missing at {}",
        bundle.display()
    );
    let mut builder = gst::ElementFactory::make("avaepurify")
        .property("model", bundle.to_string_lossy().into_owned())
        .property_from_str("backend", "tract")
        .property("seed", 1u64);
    for (name, value) in props {
        builder = builder.property_from_str(name, value);
    }
    builder.build().expect("avaepurify is registered")
}

/// Two LFW faces side by side: a 500 x 250 RGBx frame.
fn info(width: u32) -> VideoInfo {
    common::init();
    VideoInfo::builder(VideoFormat::Rgbx, width, LFW_SIDE)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .expect("valid video info")
}

fn harness(element: &gst::Element, info: &VideoInfo) -> Harness {
    let mut h = Harness::with_element(element, Some("sink"), Some("src"));
    h.set_src_caps(info.to_caps().expect("caps from info"));
    h
}

/// A frame holding LFW image `faces[k]` at `x = 250 k`, each with a face ROI over its middle;
/// ROI `k` has `object_id = ids[k]` (none: untracked).
fn frame(
    info: &VideoInfo,
    faces: &[&image::RgbImage],
    ids: &[Option<i32>],
    pts_ms: u64,
) -> gst::Buffer {
    let mut canvas = image::RgbImage::new(info.width(), info.height());
    for (k, face) in faces.iter().enumerate() {
        image::imageops::replace(&mut canvas, *face, 250 * k as i64, 0);
    }
    let mut buffer = common::frame_buffer(&canvas, info, pts_ms);
    {
        let buffer = buffer.get_mut().expect("new buffer is writable");
        for (k, id) in ids.iter().enumerate() {
            let x = 250 * k as u32 + 75;
            let mut meta = VideoRegionOfInterestMeta::add(buffer, "face", (x, 70, 100, 110));
            let (w, h) = (f64::from(info.width()), f64::from(info.height()));
            let mut detection = gst::Structure::builder("detection")
                .field("x_min", f64::from(x) / w)
                .field("y_min", 70.0 / h)
                .field("x_max", f64::from(x + 100) / w)
                .field("y_max", 180.0 / h)
                .field("confidence", 0.9f64);
            if let Some(id) = id {
                detection = detection
                    .field("object_id", *id)
                    .field("track-age", pts_ms as u32 / 40)
                    .field("tracked", false);
            }
            meta.add_param(detection.build());
        }
    }
    buffer
}

/// The `avae-purify` params of the face ROIs of `buffer`, in attach order.
fn params(buffer: &gst::BufferRef) -> Vec<gst::Structure> {
    let mut metas: Vec<_> = buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .map(|m| {
            let param = m.param("avae-purify").map(|p| p.to_owned());
            (
                m.seqnum(),
                param.expect("every face ROI has an avae-purify param"),
            )
        })
        .collect();
    metas.sort_by_key(|(seqnum, _)| *seqnum);
    metas.into_iter().map(|(_, p)| p).collect()
}

fn reused(param: &gst::Structure) -> bool {
    param.get::<bool>("reused").expect("reused is a bool")
}

fn refresh(param: &gst::Structure) -> Option<String> {
    param.get::<String>("refresh").ok()
}

fn ages(param: &gst::Structure) -> Option<(u32, u32)> {
    Some((
        param.get::<u32>("track-age").ok()?,
        param.get::<u32>("latent-age").ok()?,
    ))
}

fn stat_u64(element: &gst::Element, field: &str) -> u64 {
    element
        .property::<gst::Structure>("stats")
        .get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
}

fn stat_f64(element: &gst::Element, field: &str) -> f64 {
    element
        .property::<gst::Structure>("stats")
        .get::<f64>(field)
        .unwrap_or_else(|e| panic!("stats.{field}: {e}"))
}

/// The bytes of the left 250 columns (the first face's half) of an RGBx frame.
fn left_half(buffer: &gst::BufferRef, info: &VideoInfo) -> Vec<u8> {
    let map = buffer.map_readable().expect("readable");
    let stride = info.stride()[0] as usize;
    (0..info.height() as usize)
        .flat_map(|y| map[y * stride..y * stride + 250 * 4].to_vec())
        .collect()
}

fn two_faces() -> (image::RgbImage, image::RgbImage) {
    let paths = lfw_images(2, 97);
    (load_rgb(&paths[0]), load_rgb(&paths[1]))
}

#[test]
fn a_track_is_purified_in_full_every_refresh_interval_frames() {
    let (a, b) = two_faces();
    let purify = element(&[("refresh-interval", "4")]);
    let info = info(500);
    let mut h = harness(&purify, &info);
    let mut first_half = None;
    for f in 0..9u32 {
        let out = h
            .push_and_pull(frame(&info, &[&a, &b], &[Some(7), None], 40 * u64::from(f)))
            .expect("a frame comes out for every frame in");
        let p = params(&out);
        assert_eq!(p.len(), 2);
        let full = f % 4 == 0;
        assert_eq!(reused(&p[0]), !full, "frame {f}: {}", p[0]);
        let expected = match f {
            0 => Some("new"),
            _ if full => Some("interval"),
            _ => None,
        };
        assert_eq!(refresh(&p[0]).as_deref(), expected, "frame {f}: {}", p[0]);
        assert_eq!(ages(&p[0]), Some((f, f % 4)), "frame {f}: {}", p[0]);
        // The untracked face keeps today's path, every frame.
        assert!(!reused(&p[1]), "frame {f}: {}", p[1]);
        assert_eq!(refresh(&p[1]).as_deref(), Some("untracked"));
        assert_eq!(ages(&p[1]), None);
        // Both paths are scored by the alarm.
        assert!(p[0].get::<f64>("score").is_ok() && p[1].get::<f64>("score").is_ok());
        // A static face decoded from its kept latent is exactly its full purification (same
        // latent, same encoder output): no flicker between refreshes.
        let half = left_half(&out, &info);
        if f < 4 {
            let first = first_half.get_or_insert_with(|| (half.clone(), p[0].clone()));
            // Decoder batches of 1 and of M may round differently: one level at most.
            let off = (half.iter().zip(&first.0))
                .filter(|(x, y)| x.abs_diff(**y) > 1)
                .count();
            assert_eq!(off, 0, "frame {f}: the reused face differs from frame 0's");
            let d0 = first.1.get::<f64>("distance").expect("distance");
            let d = p[0].get::<f64>("distance").expect("distance");
            assert!(
                (d - d0).abs() <= 1e-3 * d0,
                "frame {f}: distance {d} vs {d0}"
            );
        }
    }
    assert_eq!(stat_u64(&purify, "faces-purified"), 18);
    assert_eq!(stat_u64(&purify, "faces-full"), 12);
    assert_eq!(stat_u64(&purify, "faces-reused"), 6);
    assert_eq!(stat_u64(&purify, "faces-refreshed-early"), 0);
    assert_eq!(stat_u64(&purify, "faces-over-budget"), 0);
    let (full, reuse) = (
        stat_f64(&purify, "mean-full-ms"),
        stat_f64(&purify, "mean-reuse-ms"),
    );
    assert!(
        reuse > 0.0 && reuse * 3.0 < full,
        "a reused face costs {reuse} ms, a full one {full} ms"
    );
}

#[test]
fn refresh_interval_1_is_the_untracked_path_exactly() {
    let (a, b) = two_faces();
    let run = |ids: &[Option<i32>]| -> Vec<Vec<u8>> {
        let purify = element(&[("refresh-interval", "1")]);
        let info = info(500);
        let mut h = harness(&purify, &info);
        (0..3u64)
            .map(|f| {
                let out = h
                    .push_and_pull(frame(&info, &[&a, &b], ids, 40 * f))
                    .expect("a frame out");
                for p in params(&out) {
                    assert!(!reused(&p), "{p}");
                }
                out.map_readable().expect("readable").to_vec()
            })
            .collect()
    };
    let tracked = run(&[Some(1), Some(2)]);
    let untracked = run(&[None, None]);
    assert_eq!(tracked, untracked);
}

#[test]
fn a_changed_face_is_refreshed_early() {
    let (a, b) = two_faces();
    let info = info(250);
    for (ratio, early) in [("1.5", true), ("1e30", false)] {
        let purify = element(&[("refresh-interval", "100"), ("refresh-ratio", ratio)]);
        let mut h = harness(&purify, &info);
        for f in 0..4u64 {
            // Another person under the same track id from frame 3 on.
            let face = if f < 3 { &a } else { &b };
            let out = h
                .push_and_pull(frame(&info, &[face], &[Some(5)], 40 * f))
                .expect("a frame out");
            let p = &params(&out)[0];
            match f {
                0 => assert_eq!(refresh(p).as_deref(), Some("new")),
                1 | 2 => assert!(reused(p), "frame {f}: {p}"),
                _ if early => {
                    assert_eq!(refresh(p).as_deref(), Some("changed"), "{p}");
                    assert_eq!(ages(p), Some((3, 0)));
                }
                _ => assert!(reused(p), "refresh-ratio={ratio}: {p}"),
            }
        }
        assert_eq!(
            stat_u64(&purify, "faces-refreshed-early"),
            u64::from(early),
            "refresh-ratio={ratio}"
        );
    }
}

#[test]
fn flush_and_caps_changes_forget_the_tracks() {
    let (a, _) = two_faces();
    let purify = element(&[]);
    let info = info(250);
    let mut h = harness(&purify, &info);
    let path = |h: &mut Harness, info: &VideoInfo, pts: u64| {
        let out = h
            .push_and_pull(frame(info, &[&a], &[Some(9)], pts))
            .expect("a frame out");
        let p = params(&out).remove(0);
        (refresh(&p), ages(&p))
    };
    assert_eq!(path(&mut h, &info, 0), (Some("new".into()), Some((0, 0))));
    assert_eq!(path(&mut h, &info, 40), (None, Some((1, 1))));
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    assert_eq!(path(&mut h, &info, 80), (Some("new".into()), Some((0, 0))));
    assert_eq!(path(&mut h, &info, 120), (None, Some((1, 1))));
    // Other caps (here a wider frame): the kept latents do not apply any more.
    let wider = self::info(260);
    h.set_src_caps(wider.to_caps().expect("caps"));
    assert_eq!(
        path(&mut h, &wider, 160),
        (Some("new".into()), Some((0, 0)))
    );
}

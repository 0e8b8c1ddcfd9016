//! Temporal stability of `avaepurify` on a video: the flicker figure and the distances behind
//! the reuse path's early refresh, for each `refresh-interval` asked.
//!
//! ```sh
//! cargo run --example flicker -- [VIDEO] [INTERVALS] [FRAMES]
//! # defaults: ../shared/media/opera-house-pedestrians.mp4  1,4,8,16  all frames
//! ```
//!
//! It runs `filesrc ! decodebin ! videoconvert ! avaefacedetect tracking=true ! avaepurify
//! refresh-interval=N ! fakesink` (ONNX Runtime, seed 1) and, for every track seen on two
//! consecutive frames, the mean absolute change of its face (its ROI box sampled to 32 x 32 RGB,
//! 0-255) from one frame to the next, before `avaepurify` and after it. The flicker figure is
//! the mean change after over the mean change before: 1.0 adds no flicker. It also prints the
//! reused faces' distance over their track's distance at its last full purification (the
//! quantity `refresh-ratio` bounds), the same ratio between consecutive full purifications,
//! and the engine time per face of each path (`stats`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;

/// Side of the grid a face box is sampled to.
const GRID: usize = 32;

/// One tracked face on one frame: its track id, its box sampled to the grid, and (after the
/// element) its `avae-purify` param.
struct Face {
    id: i32,
    grid: Vec<f32>,
    param: Option<gst::Structure>,
}

/// The faces of each frame as one probe saw them.
type Frames = Arc<Mutex<Vec<Vec<Face>>>>;

/// The box `(x, y, w, h)` of an RGBx frame averaged over a `GRID` x `GRID` grid of cells.
fn sample_box(
    data: &[u8],
    stride: usize,
    rect: (u32, u32, u32, u32),
    size: (u32, u32),
) -> Vec<f32> {
    let (x0, y0) = (
        rect.0.min(size.0 - 1) as usize,
        rect.1.min(size.1 - 1) as usize,
    );
    let w = (rect.2 as usize).clamp(1, size.0 as usize - x0);
    let h = (rect.3 as usize).clamp(1, size.1 as usize - y0);
    let mut grid = vec![0.0f32; GRID * GRID * 3];
    for gy in 0..GRID {
        let (ya, yb) = (
            y0 + gy * h / GRID,
            (y0 + (gy + 1) * h / GRID).max(y0 + gy * h / GRID + 1),
        );
        for gx in 0..GRID {
            let (xa, xb) = (
                x0 + gx * w / GRID,
                (x0 + (gx + 1) * w / GRID).max(x0 + gx * w / GRID + 1),
            );
            let mut sum = [0.0f64; 3];
            for y in ya..yb {
                for x in xa..xb {
                    for (c, s) in sum.iter_mut().enumerate() {
                        *s += f64::from(data[y * stride + x * 4 + c]);
                    }
                }
            }
            let n = ((yb - ya) * (xb - xa)) as f64;
            for c in 0..3 {
                grid[(gy * GRID + gx) * 3 + c] = (sum[c] / n) as f32;
            }
        }
    }
    grid
}

/// Records the tracked faces of every buffer through `pad` into `frames`.
fn watch(pad: &gst::Pad, frames: Frames) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(vinfo) = pad
            .current_caps()
            .and_then(|caps| gst_video::VideoInfo::from_caps(&caps).ok())
        else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(map) = buffer.map_readable() else {
            return gst::PadProbeReturn::Ok;
        };
        let stride = vinfo.stride()[0] as usize;
        let faces = buffer
            .iter_meta::<VideoRegionOfInterestMeta>()
            .filter_map(|meta| {
                let id = meta.param("detection")?.get::<i32>("object_id").ok()?;
                Some(Face {
                    id,
                    grid: sample_box(&map, stride, meta.rect(), (vinfo.width(), vinfo.height())),
                    param: meta.param("avae-purify").map(|p| p.to_owned()),
                })
            })
            .collect();
        frames.lock().expect("lock").push(faces);
        gst::PadProbeReturn::Ok
    });
}

/// What one run measured.
struct Figures {
    frames: usize,
    pairs: usize,
    before: f64,
    after: f64,
    reuse_ratios: Vec<f64>,
    full_ratios: Vec<f64>,
    stats: gst::Structure,
}

/// Runs the chain on `video` with `refresh-interval=interval`.
fn run(video: &str, interval: u32, frames: Option<u32>) -> Result<Figures, String> {
    let limit = frames.map_or(String::new(), |n| format!("! identity eos-after={n} "));
    let launch = format!(
        "filesrc location=\"{video}\" ! decodebin ! videoconvert {limit}! video/x-raw,format=RGBx \
         ! avaefacedetect tracking=true ! avaepurify name=purify backend=ort seed=1 \
         refresh-interval={interval} ! fakesink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&launch)
        .map_err(|e| format!("cannot build `{launch}`: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let purify = pipeline.by_name("purify").ok_or("no avaepurify")?;
    let sink = pipeline.by_name("sink").ok_or("no sink")?;
    let (input, output): (Frames, Frames) = Default::default();
    watch(
        &purify.static_pad("sink").ok_or("no sink pad")?,
        input.clone(),
    );
    watch(
        &sink.static_pad("sink").ok_or("no sink pad")?,
        output.clone(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot play: {e}"))?;
    let bus = pipeline.bus().ok_or("no bus")?;
    for message in bus.iter_timed(gst::ClockTime::NONE) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(err) => {
                let _ = pipeline.set_state(gst::State::Null);
                return Err(format!(
                    "pipeline error: {} ({:?})",
                    err.error(),
                    err.debug()
                ));
            }
            _ => {}
        }
    }
    let stats = purify.property::<gst::Structure>("stats");
    let _ = pipeline.set_state(gst::State::Null);
    let input = std::mem::take(&mut *input.lock().expect("lock"));
    let output = std::mem::take(&mut *output.lock().expect("lock"));
    if input.len() != output.len() {
        return Err(format!("{} frames in, {} out", input.len(), output.len()));
    }
    Ok(measure(&input, &output, stats))
}

fn mean_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .sum::<f64>()
        / a.len() as f64
}

/// The flicker figure's sums and the distance ratios of one run.
fn measure(input: &[Vec<Face>], output: &[Vec<Face>], stats: gst::Structure) -> Figures {
    let (mut pairs, mut before, mut after) = (0, 0.0, 0.0);
    for t in 1..input.len() {
        for (k, face) in input[t].iter().enumerate() {
            let Some(prev) = input[t - 1].iter().position(|f| f.id == face.id) else {
                continue;
            };
            before += mean_abs(&face.grid, &input[t - 1][prev].grid);
            after += mean_abs(&output[t][k].grid, &output[t - 1][prev].grid);
            pairs += 1;
        }
    }
    // Distances: each track's last full distance, against its reused and next full ones.
    let mut last_full: HashMap<i32, f64> = HashMap::new();
    let (mut reuse_ratios, mut full_ratios) = (Vec::new(), Vec::new());
    for frame in output {
        for face in frame {
            let Some(param) = &face.param else { continue };
            let Ok(distance) = param.get::<f64>("distance") else {
                continue;
            };
            let reused = param.get::<bool>("reused").unwrap_or(false);
            match (reused, last_full.get(&face.id)) {
                (true, Some(&d0)) => reuse_ratios.push(distance / d0),
                (false, Some(&d0)) => full_ratios.push(distance / d0),
                _ => {}
            }
            if !reused {
                last_full.insert(face.id, distance);
            }
        }
    }
    Figures {
        frames: input.len(),
        pairs,
        before: before / pairs.max(1) as f64,
        after: after / pairs.max(1) as f64,
        reuse_ratios,
        full_ratios,
        stats,
    }
}

fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> Result<(), String> {
    gst::init().map_err(|e| e.to_string())?;
    gstavaepurify::plugin_register_static().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let video = args.first().cloned().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/media/opera-house-pedestrians.mp4")
            .to_string_lossy()
            .into_owned()
    });
    let intervals: Vec<u32> = args
        .get(1)
        .map_or("1,4,8,16", String::as_str)
        .split(',')
        .map(|v| v.trim().parse().map_err(|e| format!("interval '{v}': {e}")))
        .collect::<Result<_, _>>()?;
    let frames = args
        .get(2)
        .map(|v| v.parse::<u32>().map_err(|e| format!("frames '{v}': {e}")))
        .transpose()?;
    println!("flicker on {video}");
    println!(
        "| refresh-interval | frames | face pairs | change before | change after | flicker | \
         faces full / reused / early | ms/face full | ms/face reuse | reused d/d_full p50 / p90 / p99 | full d/d_prev p50 / p90 / p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|");
    for interval in intervals {
        let f = run(&video, interval, frames)?;
        let s = &f.stats;
        let get_u = |k: &str| s.get::<u64>(k).unwrap_or(0);
        let get_f = |k: &str| s.get::<f64>(k).unwrap_or(f64::NAN);
        println!(
            "| {interval} | {} | {} | {:.2} | {:.2} | {:.3} | {} / {} / {} | {:.1} | {:.1} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
            f.frames,
            f.pairs,
            f.before,
            f.after,
            f.after / f.before,
            get_u("faces-full"),
            get_u("faces-reused"),
            get_u("faces-refreshed-early"),
            get_f("mean-full-ms"),
            get_f("mean-reuse-ms"),
            quantile(&f.reuse_ratios, 0.5),
            quantile(&f.reuse_ratios, 0.9),
            quantile(&f.reuse_ratios, 0.99),
            quantile(&f.full_ratios, 0.5),
            quantile(&f.full_ratios, 0.9),
            quantile(&f.full_ratios, 0.99),
        );
    }
    Ok(())
}

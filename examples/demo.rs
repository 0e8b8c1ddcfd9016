//! The demo: a real video through `avaefacedetect ! avaepurify` into a playable MP4, a summary
//! (frames, faces found and purified, fps) and a PNG contact sheet of faces before and after.
//!
//! ```text
//! cargo run --release --example demo -- [--input FILE] [--output out/demo.mp4]
//!     [--sheet out/contact-sheet.png] [--samples N] [--faces K] [--model BUNDLE]
//!     [--backend auto|ort|tract] [--input-size PIXELS] [--interval N]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;
use gst_video::prelude::*;
use gstavaepurify::core::image::{self, FrameRef, PixelLayout};
use ndarray::Array3;

/// Side of each face in the contact sheet, in pixels.
const TILE: usize = 112;
/// Margin around a face box in the contact sheet (avaepurify's default crop margin).
const MARGIN: f32 = 0.2;
/// A face is sampled for the contact sheet from every this many frames.
const SAMPLE_EVERY: u64 = 8;

const USAGE: &str = "usage: cargo run --release --example demo -- [--input FILE] \
    [--output out/demo.mp4] [--sheet out/contact-sheet.png] [--samples N] [--faces K] \
    [--model BUNDLE] [--backend auto|ort|tract] [--input-size PIXELS] [--interval N]";

/// Command-line options.
struct Options {
    input: PathBuf,
    output: PathBuf,
    sheet: PathBuf,
    samples: u32,
    faces: usize,
    model: PathBuf,
    backend: String,
    input_size: u32,
    interval: u32,
}

fn parse_options() -> Result<Options> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut options = Options {
        input: root.join("media/opera-house-pedestrians.mp4"),
        output: PathBuf::from("out/demo.mp4"),
        sheet: PathBuf::from("out/contact-sheet.png"),
        samples: 16,
        faces: 8,
        model: gstavaepurify::bundle::default_model_dir(),
        backend: "auto".to_owned(),
        input_size: 640,
        interval: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| -> Result<u32> {
            value
                .parse::<u32>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| anyhow!("{what} must be a positive integer, got '{value}'"))
        };
        match flag.as_str() {
            "--input" => options.input = PathBuf::from(&value),
            "--output" => options.output = PathBuf::from(&value),
            "--sheet" => options.sheet = PathBuf::from(&value),
            "--samples" => options.samples = number("--samples")?,
            "--faces" => options.faces = number("--faces")? as usize,
            "--model" => options.model = PathBuf::from(&value),
            "--backend" => options.backend = value.clone(),
            "--input-size" => options.input_size = number("--input-size")?,
            "--interval" => options.interval = number("--interval")?,
            _ => bail!("unknown option '{flag}'\n{USAGE}"),
        }
    }
    if !options.input.is_file() {
        bail!("input video '{}' does not exist", options.input.display());
    }
    if !options.model.join("manifest.json").is_file() {
        bail!(
            "no A-VAE model bundle at '{}' (expected manifest.json there; --model DIR picks another)",
            options.model.display()
        );
    }
    Ok(options)
}

/// A face crop of the contact sheet, `TILE x TILE` packed RGB.
type Tile = Vec<u8>;

/// A pixel rectangle `(x, y, w, h)`, as region-of-interest metas give it.
type Rect = (u32, u32, u32, u32);

/// What the probes collect while the pipeline runs.
#[derive(Default)]
struct Probed {
    frames_in: u64,
    frames_out: u64,
    out_of_order: u64,
    last_pts: Option<gst::ClockTime>,
    /// Faces sampled before purification, by frame PTS: the ROI rectangle and its crop.
    before: HashMap<gst::ClockTime, (Rect, Tile)>,
    /// Before and after crops of the same face, in stream order.
    pairs: Vec<(Tile, Tile)>,
}

fn lock(probed: &Mutex<Probed>) -> std::sync::MutexGuard<'_, Probed> {
    probed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The packed layout of a negotiated format.
fn layout(format: gst_video::VideoFormat) -> Option<PixelLayout> {
    use gst_video::VideoFormat as F;
    Some(match format {
        F::Rgb => PixelLayout::Rgb,
        F::Bgr => PixelLayout::Bgr,
        F::Rgba => PixelLayout::Rgba,
        F::Bgra => PixelLayout::Bgra,
        F::Rgbx => PixelLayout::Rgbx,
        F::Bgrx => PixelLayout::Bgrx,
        _ => return None,
    })
}

/// The square crop (with margin) around `rect` in `buffer`, resized to `TILE`.
fn crop(pad: &gst::Pad, buffer: &gst::BufferRef, rect: Rect) -> Option<Tile> {
    let caps = pad.current_caps()?;
    let info = gst_video::VideoInfo::from_caps(&caps).ok()?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
    let (width, height) = (info.width() as usize, info.height() as usize);
    let square = image::square_box(
        i64::from(rect.0),
        i64::from(rect.1),
        rect.2,
        rect.3,
        MARGIN,
        width,
        height,
    )?;
    let source = FrameRef {
        data: frame.plane_data(0).ok()?,
        width,
        height,
        stride: usize::try_from(frame.plane_stride()[0]).ok()?,
        layout: layout(info.format())?,
    };
    let mut face = Array3::<f32>::zeros((3, TILE, TILE));
    image::read_face(&source, &square, face.view_mut()).ok()?;
    Some(image::to_rgb8(face.view()))
}

/// The largest face ROI of `buffer`.
fn largest_face(buffer: &gst::BufferRef) -> Option<Rect> {
    buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .filter(|m| m.roi_type() == "face")
        .map(|m| m.rect())
        .max_by_key(|r| u64::from(r.2) * u64::from(r.3))
}

/// Counts frames into the detector; samples faces before purification; counts, checks the
/// order of, and samples faces after purification.
fn add_probes(pipeline: &gst::Pipeline, probed: &Arc<Mutex<Probed>>) -> Result<()> {
    let element = |name: &str| {
        pipeline
            .by_name(name)
            .ok_or_else(|| anyhow!("no element named {name}"))
    };
    let detect_sink = element("detect")?
        .static_pad("sink")
        .context("detector sink pad")?;
    let purify_sink = element("purify")?
        .static_pad("sink")
        .context("purifier sink pad")?;
    let purify_src = element("purify")?
        .static_pad("src")
        .context("purifier src pad")?;

    let state = probed.clone();
    detect_sink.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        lock(&state).frames_in += 1;
        gst::PadProbeReturn::Ok
    });

    let state = probed.clone();
    purify_sink.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let mut state = lock(&state);
        let index = state.frames_out;
        if index.is_multiple_of(SAMPLE_EVERY)
            && let (Some(pts), Some(rect)) = (buffer.pts(), largest_face(buffer))
            && let Some(tile) = crop(pad, buffer, rect)
        {
            state.before.insert(pts, (rect, tile));
        }
        gst::PadProbeReturn::Ok
    });

    let state = probed.clone();
    let started = Instant::now();
    purify_src.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let mut state = lock(&state);
        state.frames_out += 1;
        let pts = buffer.pts();
        if let (Some(last), Some(pts)) = (state.last_pts, pts)
            && pts <= last
        {
            state.out_of_order += 1;
        }
        state.last_pts = pts.or(state.last_pts);
        if let Some((rect, before)) = pts.and_then(|pts| state.before.remove(&pts))
            && let Some(after) = crop(pad, buffer, rect)
        {
            state.pairs.push((before, after));
        }
        if state.frames_out.is_multiple_of(10) {
            let seconds = started.elapsed().as_secs_f64();
            eprint!(
                "\r  {} frames purified, {:.1} s, {:.2} fps ",
                state.frames_out,
                seconds,
                state.frames_out as f64 / seconds.max(1e-9)
            );
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// Writes the contact sheet: `count` faces spread over the video, before on the top row and
/// after on the bottom row, 4-pixel grey gutters.
fn write_sheet(path: &Path, pairs: &[(Tile, Tile)], count: usize) -> Result<usize> {
    if pairs.is_empty() {
        bail!("no face was sampled for the contact sheet");
    }
    let count = count.min(pairs.len());
    let chosen: Vec<&(Tile, Tile)> = (0..count)
        .map(|i| &pairs[i * pairs.len() / count])
        .collect();
    let gutter = 4;
    let width = count * (TILE + gutter) + gutter;
    let height = 2 * (TILE + gutter) + gutter;
    let mut sheet =
        ::image::RgbImage::from_pixel(width as u32, height as u32, ::image::Rgb([64; 3]));
    for (column, (before, after)) in chosen.iter().enumerate() {
        for (row, tile) in [before, after].into_iter().enumerate() {
            let x0 = gutter + column * (TILE + gutter);
            let y0 = gutter + row * (TILE + gutter);
            for (i, px) in tile.chunks_exact(3).enumerate() {
                let (x, y) = (x0 + i % TILE, y0 + i / TILE);
                sheet.put_pixel(x as u32, y as u32, ::image::Rgb([px[0], px[1], px[2]]));
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    sheet
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(count)
}

fn main() -> Result<()> {
    let options = parse_options()?;
    gst::init().context("GStreamer does not initialise")?;
    gstavaepurify::plugin_register_static().context("cannot register the avaepurify plugin")?;
    if let Some(dir) = options
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    // Quoted locations: gst::parse::launch takes paths with spaces inside double quotes.
    let description = format!(
        "filesrc location=\"{input}\" ! decodebin ! videoconvert ! \
         avaefacedetect name=detect backend={backend} input-size={input_size} \
         interval={interval} ! \
         avaepurify name=purify backend={backend} model=\"{model}\" samples={samples} ! \
         videoconvert ! x264enc speed-preset=faster ! mp4mux ! filesink location=\"{output}\"",
        input = options.input.display(),
        backend = options.backend,
        input_size = options.input_size,
        interval = options.interval,
        model = options.model.display(),
        samples = options.samples,
        output = options.output.display(),
    );
    println!("avae-purify demo");
    println!("  pipeline: {description}");
    let pipeline = gst::parse::launch(&description)
        .context("cannot build the demo pipeline (are the H.264 plugins installed? run scripts/setup.sh)")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("the description is not a pipeline"))?;
    let probed = Arc::new(Mutex::new(Probed::default()));
    add_probes(&pipeline, &probed)?;
    let detect = pipeline.by_name("detect").context("detector")?;
    let purify = pipeline.by_name("purify").context("purifier")?;

    let started = Instant::now();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| anyhow!("the pipeline does not start (see the messages above)"))?;
    let bus = pipeline.bus().context("pipeline bus")?;
    let mut error = None;
    for message in bus.iter_timed(gst::ClockTime::NONE) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                error = Some(format!(
                    "{} ({})",
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                ));
                break;
            }
            gst::MessageView::Warning(w) => eprintln!("\nwarning: {}", w.error()),
            _ => {}
        }
    }
    let wall = started.elapsed().as_secs_f64();
    eprintln!();
    let detect_stats = detect.property::<gst::Structure>("stats");
    let purify_stats = purify.property::<gst::Structure>("stats");
    pipeline
        .set_state(gst::State::Null)
        .map_err(|_| anyhow!("the pipeline does not stop"))?;
    if let Some(error) = error {
        bail!("pipeline error: {error}");
    }

    let probed = std::mem::take(&mut *lock(&probed));
    let detections = detect_stats.get::<u64>("detections").unwrap_or(0);
    let rois = detect_stats.get::<u64>("rois").unwrap_or(0);
    println!("  input: {}", options.input.display());
    println!(
        "  detector: CenterFace, input size {}, interval {}, mean inference {:.1} ms",
        options.input_size,
        options.interval,
        detect_stats.get::<f64>("mean-inference-ms").unwrap_or(0.0)
    );
    println!(
        "  purifier: bundle {}, {} samples per face",
        options.model.display(),
        options.samples
    );
    let frames_ok = probed.frames_in == probed.frames_out && probed.out_of_order == 0;
    println!(
        "frames in: {}, frames out: {} ({})",
        probed.frames_in,
        probed.frames_out,
        if frames_ok {
            "all frames out, in order".to_owned()
        } else {
            format!("MISMATCH, {} out of order", probed.out_of_order)
        }
    );
    println!(
        "faces found: {detections} by {} detections ({rois} face regions with carried ones)",
        detect_stats.get::<u64>("inferences").unwrap_or(0)
    );
    println!(
        "faces purified: {}, skipped: {}, failures: {} (detector) + {} (purifier), mean {:.1} ms per face",
        purify_stats.get::<u64>("faces-purified").unwrap_or(0),
        purify_stats.get::<u64>("faces-skipped").unwrap_or(0),
        detect_stats.get::<u64>("failures").unwrap_or(0),
        purify_stats.get::<u64>("failures").unwrap_or(0),
        purify_stats.get::<f64>("mean-latency-ms").unwrap_or(0.0),
    );
    println!(
        "wall time: {wall:.1} s, {:.2} fps",
        probed.frames_out as f64 / wall.max(1e-9)
    );
    let size = std::fs::metadata(&options.output)
        .map(|m| m.len())
        .unwrap_or(0);
    println!("output: {} ({size} bytes)", options.output.display());
    let shown = write_sheet(&options.sheet, &probed.pairs, options.faces)?;
    println!(
        "contact sheet: {} ({shown} faces; top row before, bottom row after purification)",
        options.sheet.display()
    );
    if !frames_ok {
        bail!("frames were lost or reordered");
    }
    Ok(())
}

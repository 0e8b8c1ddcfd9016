//! The demo: a real video through `avaefacedetect ! avaepurify` into a playable MP4, a summary
//! (frames, faces found and purified, fps, where the time goes) and a PNG contact sheet of faces
//! before and after.
//!
//! ```text
//! cargo run --release --example demo -- [--input FILE] [--output out/demo.mp4]
//!     [--sheet out/contact-sheet.png] [--samples N] [--faces K] [--model BUNDLE]
//!     [--backend auto|ort|tract] [--input-size PIXELS] [--interval N]
//!     [--refresh-interval N] [--queue] [--encoder 'x264enc ...'] [--compare]
//! ```
//!
//! `--interval` and `--refresh-interval` replace the elements' defaults in the "defaults" run;
//! `--queue` puts a `queue` between the detector and the purifier there, so that the two run on
//! two streaming threads (the stage columns then count the detector's thread only: decoding,
//! conversion and detection; purification and encoding run on the queue's thread).
//!
//! `--compare` runs the video twice in one process: first with the settings the demo had before
//! issue 13 (detection on every frame, no tracking, every face purified in full, `x264enc
//! speed-preset=faster`), then with the elements' defaults and the faster encoder, and prints one
//! table of both. Each run's output is decoded back to check that it holds every frame.
//!
//! **Where the time goes.** From decodebin's multiqueue to the muxer, every frame is decoded,
//! converted, detected, purified, converted and encoded by one streaming thread, which is what
//! bounds the frame rate. A pad probe on the sink pad of the parser and decoder, both
//! `videoconvert`s, the detector, the purifier, the encoder and the muxer marks the moment a
//! buffer (or the end of stream) enters that element, and that thread's wall time from one mark to
//! the next goes to the stage entered last; only the thread that runs the detector is counted.
//! The stages therefore add up to that thread's time per frame (the models' loading at start is
//! in the wall time, in no stage); "other" is the hand-off to the muxer's own thread and the way
//! back up to the multiqueue. Work the stage waits for on other threads (the decoder's and
//! encoder's worker threads, the engines' intra-op threads) counts in that stage; the demuxer
//! (and the parser, when it sits before the multiqueue), running ahead on its own thread, counts
//! in none. When the decoder or the encoder drains at the end of the stream, the
//! time after each of its pushes goes back to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

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
/// The demo's encoder: no B-frames or lookahead, the fastest x264 preset; the output is checked
/// by decoding it back.
const FAST_ENCODER: &str = "x264enc speed-preset=ultrafast tune=zerolatency";
/// The encoder the demo used before issue 13.
const TODAY_ENCODER: &str = "x264enc speed-preset=faster";

const USAGE: &str = "usage: cargo run --release --example demo -- [--input FILE] \
    [--output out/demo.mp4] [--sheet out/contact-sheet.png] [--samples N] [--faces K] \
    [--model BUNDLE] [--backend auto|ort|tract] [--input-size PIXELS] [--interval N] \
    [--refresh-interval N] [--queue] [--encoder 'x264enc ...'] [--compare]\n  \
    --queue: a queue between the detector and the purifier (two streaming threads)\n  \
    --compare: also run the settings of before issue 13 (interval=1, tracking=false, \
    refresh-interval=1, x264enc speed-preset=faster) and print both side by side";

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
    /// `None`: the detector's default.
    interval: Option<u32>,
    /// `None`: the purifier's default.
    refresh_interval: Option<u32>,
    /// A queue between the detector and the purifier.
    queue: bool,
    encoder: String,
    compare: bool,
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
        interval: None,
        refresh_interval: None,
        queue: false,
        encoder: FAST_ENCODER.to_owned(),
        compare: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--compare" => {
                options.compare = true;
                continue;
            }
            "--queue" => {
                options.queue = true;
                continue;
            }
            _ => {}
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
            "--interval" => options.interval = Some(number("--interval")?),
            "--refresh-interval" => {
                options.refresh_interval = Some(number("--refresh-interval")?);
            }
            "--encoder" => options.encoder = value.clone(),
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

/// One configuration of the demo's line.
struct Setup {
    label: &'static str,
    /// `name=value` settings of the detector and the purifier (on top of backend, model,
    /// input size and samples).
    detect: Vec<String>,
    purify: Vec<String>,
    /// A queue between the detector and the purifier.
    queue: bool,
    encoder: String,
    /// Settings asked for that this build's elements do not have, left out.
    absent: Vec<String>,
    output: PathBuf,
}

/// Whether elements of `factory` have a property `name`.
fn has_property(factory: &str, name: &str) -> bool {
    gst::ElementFactory::make(factory)
        .build()
        .is_ok_and(|element| element.find_property(name).is_some())
}

impl Setup {
    /// The elements' defaults (an `--interval` or `--refresh-interval` given replaces the
    /// element's), `--queue` and `--encoder`.
    fn defaults(options: &Options) -> Setup {
        Setup {
            label: "defaults",
            detect: options
                .interval
                .map(|n| format!("interval={n}"))
                .into_iter()
                .collect(),
            purify: options
                .refresh_interval
                .map(|n| format!("refresh-interval={n}"))
                .into_iter()
                .collect(),
            queue: options.queue,
            encoder: options.encoder.clone(),
            absent: Vec::new(),
            output: options.output.clone(),
        }
    }

    /// The demo before issue 13: detection on every frame, no tracking, every face purified in
    /// full, the slower encoder; settings these elements do not have are left out and listed.
    fn before_issue_13(options: &Options) -> Setup {
        let mut setup = Setup {
            label: "before issue 13",
            detect: Vec::new(),
            purify: Vec::new(),
            queue: false,
            encoder: TODAY_ENCODER.to_owned(),
            absent: Vec::new(),
            output: options.output.with_file_name(format!(
                "{}-before.mp4",
                options
                    .output
                    .file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default()
            )),
        };
        for (factory, name, value) in [
            ("avaefacedetect", "interval", "1"),
            ("avaefacedetect", "tracking", "false"),
            ("avaepurify", "refresh-interval", "1"),
        ] {
            let setting = format!("{name}={value}");
            if !has_property(factory, name) {
                setup.absent.push(format!("{factory} {setting}"));
            } else if factory == "avaefacedetect" {
                setup.detect.push(setting);
            } else {
                setup.purify.push(setting);
            }
        }
        setup
    }

    /// The label with what it changes from the elements' defaults, for the table.
    fn title(&self) -> String {
        if self.label != "defaults" {
            return self.label.to_owned();
        }
        let mut changed: Vec<String> = self.detect.iter().chain(&self.purify).cloned().collect();
        if self.queue {
            changed.push("queue".to_owned());
        }
        if changed.is_empty() {
            self.label.to_owned()
        } else {
            format!("{}, {}", self.label, changed.join(", "))
        }
    }

    /// The pipeline description.
    fn description(&self, options: &Options) -> String {
        // Quoted locations: gst::parse::launch takes paths with spaces inside double quotes.
        format!(
            "filesrc location=\"{input}\" ! decodebin ! videoconvert name=convert-in ! \
             avaefacedetect name=detect backend={backend} input-size={input_size} {detect} ! \
             {queue}avaepurify name=purify backend={backend} model=\"{model}\" samples={samples} \
             {purify} ! videoconvert name=convert-out ! {encoder} name=encode ! \
             mp4mux name=mux ! filesink location=\"{output}\"",
            input = options.input.display(),
            backend = options.backend,
            input_size = options.input_size,
            detect = self.detect.join(" "),
            queue = if self.queue {
                "queue name=between max-size-buffers=4 max-size-bytes=0 max-size-time=0 ! "
            } else {
                ""
            },
            model = options.model.display(),
            samples = options.samples,
            purify = self.purify.join(" "),
            encoder = self.encoder,
            output = self.output.display(),
        )
    }
}

/// The stages of a frame's time in the streaming thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Decode,
    Convert,
    Detect,
    Purify,
    Encode,
    Other,
}

/// Every stage, in table order.
const STAGES: [Stage; 6] = [
    Stage::Decode,
    Stage::Convert,
    Stage::Detect,
    Stage::Purify,
    Stage::Encode,
    Stage::Other,
];

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Convert => "colour conversion",
            Stage::Detect => "detection",
            Stage::Purify => "purification",
            Stage::Encode => "encode",
            Stage::Other => "other",
        }
    }
}

/// Wall time per stage and thread, from the marks the pad probes make (module docs).
#[derive(Default)]
struct StageClock {
    /// The last mark of each thread: the stage it entered, and when.
    last: HashMap<ThreadId, (Stage, Instant)>,
    totals: HashMap<ThreadId, [Duration; STAGES.len()]>,
    /// The stage the time after a push into the muxer goes to: `Other`, or the decoder or
    /// encoder once it drains at the end of the stream.
    after_mux: Option<Stage>,
}

impl StageClock {
    /// The current thread enters `stage` now.
    fn enter(&mut self, stage: Stage) {
        let now = Instant::now();
        let thread = std::thread::current().id();
        if let Some((previous, since)) = self.last.insert(thread, (stage, now)) {
            let index = STAGES.iter().position(|s| *s == previous).unwrap_or(0);
            self.totals.entry(thread).or_default()[index] += now - since;
        }
    }

    /// The totals of the streaming thread, the one that ran the detector. Other threads that
    /// pass a mark (the demuxer's, when decodebin plugs the parser before its multiqueue) run
    /// ahead of it and wait on it, so their time is not the frame's.
    fn streaming_thread_totals(&self) -> [Duration; STAGES.len()] {
        let detect = STAGES.iter().position(|s| *s == Stage::Detect).unwrap_or(0);
        self.totals
            .values()
            .max_by_key(|totals| totals[detect])
            .copied()
            .unwrap_or_default()
    }
}

/// Adds a probe to `pad` that marks `stage` for each buffer and at the end of stream.
/// `Stage::Other` marks the muxer's input, whose time goes to a draining element once one
/// drains; `drains` says the element drains frames at the end of stream (decoder, encoder).
fn time_stage(pad: &gst::Pad, clock: &Arc<Mutex<StageClock>>, stage: Stage, drains: bool) {
    let clock = clock.clone();
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let eos = matches!(info.event().map(|e| e.type_()), Some(gst::EventType::Eos));
            if info.buffer().is_none() && !eos {
                return gst::PadProbeReturn::Ok;
            }
            let mut clock = clock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if stage == Stage::Other {
                let after = clock.after_mux.unwrap_or(Stage::Other);
                clock.enter(after);
            } else {
                if eos && drains {
                    clock.after_mux = Some(stage);
                }
                clock.enter(stage);
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// Times every stage of `pipeline` (named elements as in [`Setup::description`]; the parser
/// and decoder decodebin plugs are found as they are added).
fn add_stage_probes(pipeline: &gst::Pipeline, clock: &Arc<Mutex<StageClock>>) -> Result<()> {
    for (name, stage) in [
        ("convert-in", Stage::Convert),
        ("detect", Stage::Detect),
        ("purify", Stage::Purify),
        ("convert-out", Stage::Convert),
        ("encode", Stage::Encode),
    ] {
        let pad = pipeline
            .by_name(name)
            .and_then(|e| e.static_pad("sink"))
            .ok_or_else(|| anyhow!("no sink pad on the element named {name}"))?;
        time_stage(&pad, clock, stage, stage == Stage::Encode);
    }
    let mux = pipeline.by_name("mux").context("no element named mux")?;
    let mux_pad = mux
        .sink_pads()
        .into_iter()
        .next()
        .context("the muxer has no linked sink pad")?;
    time_stage(&mux_pad, clock, Stage::Other, false);
    let clock = clock.clone();
    pipeline.connect_deep_element_added(move |_, _, element| {
        let klass = element
            .factory()
            .map(|f| f.klass().to_string())
            .unwrap_or_default();
        if (klass.contains("Decoder") || klass.contains("Parser"))
            && let Some(pad) = element.static_pad("sink")
        {
            time_stage(&pad, &clock, Stage::Decode, klass.contains("Decoder"));
        }
    });
    Ok(())
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

/// What one run of the line measured.
struct Measured {
    probed: Probed,
    /// Seconds from starting the pipeline (models load then) to the end of stream.
    wall: f64,
    stages: [Duration; STAGES.len()],
    detect_stats: gst::Structure,
    purify_stats: gst::Structure,
    /// Frames decoded back from the written file.
    decoded_back: u64,
}

impl Measured {
    fn fps(&self) -> f64 {
        self.probed.frames_out as f64 / self.wall.max(1e-9)
    }

    fn stat(stats: &gst::Structure, name: &str) -> Option<u64> {
        stats.get::<u64>(name).ok()
    }

    fn faces_purified(&self) -> u64 {
        Self::stat(&self.purify_stats, "faces-purified").unwrap_or(0)
    }

    /// Milliseconds per frame out in `stage`.
    fn stage_ms(&self, index: usize) -> f64 {
        self.stages[index].as_secs_f64() * 1e3 / self.probed.frames_out.max(1) as f64
    }
}

/// Plays `pipeline` to the end of stream; an error message ends it with that error.
fn play(pipeline: &gst::Pipeline) -> Result<()> {
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
    if let Some(error) = error {
        pipeline.set_state(gst::State::Null).ok();
        bail!("pipeline error: {error}");
    }
    Ok(())
}

/// The number of video frames `path` decodes to: the check that the MP4 is playable.
fn decode_back(path: &Path) -> Result<u64> {
    let description = format!(
        "filesrc location=\"{}\" ! decodebin ! video/x-raw ! fakesink name=sink",
        path.display()
    );
    let pipeline = gst::parse::launch(&description)
        .context("cannot build the decoding check")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("the decoding check is not a pipeline"))?;
    let frames = Arc::new(Mutex::new(0u64));
    let count = frames.clone();
    pipeline
        .by_name("sink")
        .and_then(|sink| sink.static_pad("sink"))
        .context("the decoding check's sink pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            *count
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
            gst::PadProbeReturn::Ok
        });
    play(&pipeline).with_context(|| format!("{} does not decode", path.display()))?;
    pipeline.set_state(gst::State::Null).ok();
    let frames = *frames
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(frames)
}

/// Runs the line of `setup` over the video.
fn run(options: &Options, setup: &Setup) -> Result<Measured> {
    let description = setup.description(options);
    println!("[{}] pipeline: {description}", setup.label);
    if !setup.absent.is_empty() {
        println!(
            "[{}] not in this build, left out: {}",
            setup.label,
            setup.absent.join(", ")
        );
    }
    let pipeline = gst::parse::launch(&description)
        .context("cannot build the demo pipeline (are the H.264 plugins installed? run scripts/setup.sh)")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("the description is not a pipeline"))?;
    let probed = Arc::new(Mutex::new(Probed::default()));
    add_probes(&pipeline, &probed)?;
    let clock = Arc::new(Mutex::new(StageClock::default()));
    add_stage_probes(&pipeline, &clock)?;
    let detect = pipeline.by_name("detect").context("detector")?;
    let purify = pipeline.by_name("purify").context("purifier")?;

    let started = Instant::now();
    play(&pipeline)?;
    let wall = started.elapsed().as_secs_f64();
    eprintln!();
    let detect_stats = detect.property::<gst::Structure>("stats");
    let purify_stats = purify.property::<gst::Structure>("stats");
    pipeline
        .set_state(gst::State::Null)
        .map_err(|_| anyhow!("the pipeline does not stop"))?;
    let stages = clock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .streaming_thread_totals();
    Ok(Measured {
        probed: std::mem::take(&mut *lock(&probed)),
        wall,
        stages,
        detect_stats,
        purify_stats,
        decoded_back: decode_back(&setup.output)?,
    })
}

/// The summary of one run.
fn print_run(options: &Options, setup: &Setup, m: &Measured) {
    let (d, p) = (&m.detect_stats, &m.purify_stats);
    let stat = |s: &gst::Structure, name: &str| Measured::stat(s, name).unwrap_or(0);
    let probed = &m.probed;
    println!("[{}] input: {}", setup.label, options.input.display());
    println!(
        "[{}] detector: CenterFace, input size {}, {} detections on {} frames, mean inference \
         {:.1} ms",
        setup.label,
        options.input_size,
        stat(d, "inferences"),
        stat(d, "frames"),
        d.get::<f64>("mean-inference-ms").unwrap_or(0.0)
    );
    println!(
        "[{}] frames in: {}, frames out: {} ({}), decoded back from the output: {}",
        setup.label,
        probed.frames_in,
        probed.frames_out,
        if frames_ok(probed) {
            "all frames out, in order".to_owned()
        } else {
            format!("MISMATCH, {} out of order", probed.out_of_order)
        },
        m.decoded_back
    );
    println!(
        "[{}] faces found: {} by {} detections ({} face regions with carried ones)",
        setup.label,
        stat(d, "detections"),
        stat(d, "inferences"),
        stat(d, "rois")
    );
    let reuse = match (
        Measured::stat(p, "faces-full"),
        Measured::stat(p, "faces-reused"),
    ) {
        (Some(full), Some(reused)) => format!(" ({full} in full, {reused} from a kept latent)"),
        _ => String::new(),
    };
    println!(
        "[{}] faces purified: {}{reuse}, skipped: {}, failures: {} (detector) + {} (purifier), \
         mean {:.1} ms per face",
        setup.label,
        m.faces_purified(),
        stat(p, "faces-skipped"),
        stat(d, "failures"),
        stat(p, "failures"),
        p.get::<f64>("mean-latency-ms").unwrap_or(0.0),
    );
    if let Some(alarms) = Measured::stat(p, "alarms") {
        println!(
            "[{}] attack alarm: {alarms} suspicious face(s) of {}, {} blurred before purification \
             (suspect-blur)",
            setup.label,
            m.faces_purified(),
            stat(p, "faces-suspect-blurred"),
        );
    }
    let size = std::fs::metadata(&setup.output)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "[{}] wall time: {:.1} s, {:.2} fps; output: {} ({size} bytes)",
        setup.label,
        m.wall,
        m.fps(),
        setup.output.display()
    );
}

fn frames_ok(probed: &Probed) -> bool {
    probed.frames_in == probed.frames_out && probed.out_of_order == 0
}

/// The side-by-side table: fps, faces/s and milliseconds per frame in each stage.
fn print_table(runs: &[(&Setup, &Measured)]) {
    let stages: Vec<&str> = STAGES.iter().map(|s| s.label()).collect();
    println!(
        "| settings | frames in / out | fps | faces purified | faces/s | {} | stages sum | wall per frame |",
        stages.join(" | ")
    );
    println!(
        "|---|---:|---:|---:|---:|{}---:|---:|",
        "---:|".repeat(STAGES.len())
    );
    for (setup, m) in runs {
        let per_stage: Vec<String> = (0..STAGES.len())
            .map(|i| format!("{:.1}", m.stage_ms(i)))
            .collect();
        let sum: f64 = (0..STAGES.len()).map(|i| m.stage_ms(i)).sum();
        println!(
            "| {} | {} / {} | {:.2} | {} | {:.1} | {} | {sum:.1} | {:.1} |",
            setup.title(),
            m.probed.frames_in,
            m.probed.frames_out,
            m.fps(),
            m.faces_purified(),
            m.faces_purified() as f64 / m.wall.max(1e-9),
            per_stage.join(" | "),
            m.wall * 1e3 / m.probed.frames_out.max(1) as f64,
        );
    }
    println!(
        "(stage columns: ms per frame in the streaming thread that detects; with a queue, \
         purification and encoding run on the queue's thread; see examples/demo.rs)"
    );
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
    println!("avae-purify demo");
    let mut setups = Vec::new();
    if options.compare {
        setups.push(Setup::before_issue_13(&options));
    }
    setups.push(Setup::defaults(&options));
    let mut measured = Vec::new();
    for setup in &setups {
        let m = run(&options, setup)?;
        print_run(&options, setup, &m);
        measured.push(m);
    }
    let runs: Vec<(&Setup, &Measured)> = setups.iter().zip(&measured).collect();
    print_table(&runs);
    if let [(_, before), (_, after)] = runs.as_slice() {
        println!(
            "end-to-end speed-up of the defaults over the settings before issue 13: {:.2}x",
            after.fps() / before.fps().max(1e-9)
        );
    }
    let last = measured.last().context("no run")?;
    let shown = write_sheet(&options.sheet, &last.probed.pairs, options.faces)?;
    println!(
        "contact sheet: {} ({shown} faces; top row before, bottom row after purification)",
        options.sheet.display()
    );
    for (setup, m) in &runs {
        if !frames_ok(&m.probed) || m.decoded_back != m.probed.frames_out {
            bail!(
                "[{}] frames were lost or reordered ({} in, {} out, {} decoded back)",
                setup.label,
                m.probed.frames_in,
                m.probed.frames_out,
                m.decoded_back
            );
        }
    }
    Ok(())
}

//! Many streams in one process, side by side in one run: 1, 2 and 4 streams of synthetic
//! 640x480 frames with 4 face ROIs each, every stream an `avaepurify` in its own
//! `gst_check::Harness` on its own thread, with
//!
//! - *separate* engines (no `model-instance-id`: each stream loads the bundle),
//! - one *shared* engine (`model-instance-id`: one bundle, faces batched across streams),
//! - `backend=kserve` against the Open Inference Protocol server named by `AVAE_KSERVE`
//!   (host:port) when the plugin has that backend and the server answers; otherwise the row
//!   says why it was not run.
//!
//! Per row: faces/s over the whole run (all streams), per-frame latency percentiles (p50,
//! p99: from pushing a frame to getting it back) and, for shared rows, faces/s against the
//! separate engines of the same stream count.
//!
//! The separate and shared rows are measured `--rounds` times (default 3), alternating which
//! goes first, and each figure is the median over the rounds; "vs separate" is the median of
//! the rounds' ratios, with their range, so that one noisy round does not decide. The kserve
//! row is measured once.
//!
//! `cargo bench --bench streams [-- --quick] [--frames N] [--rounds R] [--model DIR]
//! [--backend B] [--samples M] [--shared-timeout-ms T]`

mod common;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gstavaepurify::bundle::default_model_dir;
use rand::SeedableRng;
use rand::rngs::StdRng;

use common::{FRAME_H, FRAME_W};

const FACES: u32 = 4;

#[derive(Clone)]
struct Options {
    frames: usize,
    rounds: usize,
    /// `shared-timeout-ms` of the shared rows; `None`: the element's default.
    shared_timeout_ms: Option<u32>,
    model: PathBuf,
    backend: String,
    samples: u32,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        frames: 16,
        rounds: 3,
        shared_timeout_ms: None,
        model: default_model_dir(),
        backend: "ort".into(),
        samples: 16,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, what: &str| -> Result<usize, String> {
        v.and_then(|v| v.parse().ok())
            .filter(|&v: &usize| v >= 1)
            .ok_or(format!("{what} needs a number >= 1"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                o.frames = 6;
                o.rounds = 1;
            }
            "--frames" => o.frames = number(args.next(), "--frames")?,
            "--rounds" => o.rounds = number(args.next(), "--rounds")?,
            "--shared-timeout-ms" => {
                o.shared_timeout_ms = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--shared-timeout-ms needs a number of milliseconds")?,
                )
            }
            "--samples" => o.samples = number(args.next(), "--samples")? as u32,
            "--model" => o.model = args.next().ok_or("--model needs a folder")?.into(),
            "--backend" => {
                o.backend = args
                    .next()
                    .filter(|b| b == "ort" || b == "tract")
                    .ok_or("--backend needs ort or tract")?
            }
            "--bench" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

/// How the streams of a row get their engine.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Separate,
    Shared,
    Kserve,
}

impl Mode {
    fn label(self, backend: &str) -> String {
        match self {
            Mode::Separate => format!("separate engines ({backend})"),
            Mode::Shared => format!("one shared engine ({backend}, model-instance-id)"),
            Mode::Kserve => "backend=kserve (loopback server)".into(),
        }
    }
}

/// One row's measurement.
struct Row {
    faces_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_batch_faces: f64,
}

fn harness(
    o: &Options,
    mode: Mode,
    id: &str,
    server: Option<&str>,
) -> Result<gst_check::Harness, String> {
    common::purify_harness(|el| {
        el.set_property("model", common::model_str(&o.model)?);
        match mode {
            Mode::Kserve => {
                el.set_property_from_str("backend", "kserve");
                el.set_property("server", server.unwrap_or_default());
            }
            _ => {
                el.set_property_from_str("backend", &o.backend);
                el.set_property_from_str("device", "cpu");
            }
        }
        if mode == Mode::Shared {
            el.set_property("model-instance-id", id);
            if let Some(ms) = o.shared_timeout_ms {
                el.set_property("shared-timeout-ms", ms);
            }
        }
        el.set_property("samples", o.samples);
        el.set_property("batch", 16u32);
        el.set_property("seed", 1u64);
        el.set_property("alarm", false);
        Ok(())
    })
}

/// `streams` streams of `o.frames` frames each, started together; per-frame latencies of
/// all streams and the run's wall time.
fn measure(o: &Options, mode: Mode, streams: usize, server: Option<&str>) -> Result<Row, String> {
    let id = format!("bench-{streams}");
    let start = Arc::new(Barrier::new(streams + 1));
    let done = Arc::new(Barrier::new(streams + 1));
    let mut workers = Vec::new();
    for s in 0..streams {
        let (start, done) = (start.clone(), done.clone());
        let (id, server) = (id.clone(), server.map(str::to_owned));
        let o = o.clone();
        workers.push(std::thread::spawn(
            move || -> Result<(Vec<f64>, f64), String> {
                let prepared = (|| -> Result<(gst_check::Harness, Vec<gst::Buffer>), String> {
                    let mut h = harness(&o, mode, &id, server.as_deref())?;
                    let mut rng = StdRng::seed_from_u64(s as u64 + 2);
                    // Warm-up (engine load, first-shape plans) outside the timed run.
                    h.push_and_pull(common::face_frame(&mut rng, FACES)?)
                        .map_err(|e| format!("warm-up frame: {e:?}"))?;
                    let frames = (0..o.frames)
                        .map(|_| common::face_frame(&mut rng, FACES))
                        .collect::<Result<_, _>>()?;
                    Ok((h, frames))
                })();
                start.wait();
                let timed = prepared.and_then(|(mut h, frames)| {
                    let mut latencies = Vec::with_capacity(frames.len());
                    for f in frames {
                        let t = Instant::now();
                        h.push_and_pull(f).map_err(|e| format!("frame: {e:?}"))?;
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    let stats =
                        (h.element().ok_or("no element")?).property::<gst::Structure>("stats");
                    let failures = stats.get::<u64>("failures").unwrap_or(0);
                    if failures > 0 {
                        return Err(format!("{failures} frames failed: {stats}"));
                    }
                    let mean = stats.get::<f64>("shared-mean-batch-faces").unwrap_or(0.0);
                    Ok((latencies, mean, h))
                });
                // Keep the engine until every stream is done, then stop together.
                done.wait();
                timed.map(|(latencies, mean, _)| (latencies, mean))
            },
        ));
    }
    start.wait();
    let t0 = Instant::now();
    done.wait();
    let wall = t0.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut means = Vec::new();
    for w in workers {
        let (lat, mean) = w.join().map_err(|_| "a stream panicked".to_owned())??;
        latencies.extend(lat);
        means.push(mean);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).copied().unwrap_or(f64::NAN)
    };
    Ok(Row {
        faces_per_s: (streams * o.frames) as f64 * f64::from(FACES) / wall,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        mean_batch_faces: means.iter().sum::<f64>() / means.len().max(1) as f64,
    })
}

/// The server to use for the kserve rows, or why they are not run.
fn kserve_server() -> Result<String, String> {
    let element = gst::ElementFactory::make("avaepurify")
        .build()
        .map_err(|e| format!("no avaepurify: {e}"))?;
    let pspec = element
        .find_property("backend")
        .ok_or("avaepurify has no backend property")?;
    let has_kserve = pspec
        .downcast_ref::<glib::ParamSpecEnum>()
        .map(|e| e.enum_class().value_by_nick("kserve").is_some())
        .unwrap_or(false);
    if !has_kserve {
        return Err("this build has no backend=kserve".into());
    }
    let server = std::env::var("AVAE_KSERVE")
        .map_err(|_| "AVAE_KSERVE (host:port of an MLServer/Triton with the bundle) is not set")?;
    let addr = server
        .to_socket_addrs()
        .map_err(|e| format!("AVAE_KSERVE={server}: {e}"))?
        .next()
        .ok_or(format!("AVAE_KSERVE={server}: no address"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("no server answers at AVAE_KSERVE={server}: {e}"))?;
    Ok(server)
}

fn run() -> Result<(), String> {
    let o = options()?;
    gst::init().map_err(|e| e.to_string())?;
    gstavaepurify::plugin_register_static().map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "avaepurify multi-stream benchmark: model {}, {FACES} faces per {FRAME_W}x{FRAME_H} RGB \
         frame, M = {}, batch 16, {} frames per stream, {} rounds (medians), {cores} cores",
        o.model.display(),
        o.samples,
        o.frames,
        o.rounds
    );
    println!(
        "| streams | engine | faces/s | ms/frame p50 | ms/frame p99 | faces per shared call | \
         vs separate |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let kserve = kserve_server();
    let mut ratios_4 = Vec::new();
    for streams in [1usize, 2, 4] {
        // Separate and shared, interleaved over the rounds (the first of a round alternates).
        let mut rows: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
        let mut failed: [Option<String>; 2] = [None, None];
        for round in 0..o.rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                if failed[which].is_some() {
                    continue;
                }
                let mode = [Mode::Separate, Mode::Shared][which];
                match measure(&o, mode, streams, None) {
                    Ok(row) => rows[which].push(row),
                    Err(e) => failed[which] = Some(e),
                }
            }
        }
        let ratios: Vec<f64> = rows[0]
            .iter()
            .zip(&rows[1])
            .map(|(sep, shared)| shared.faces_per_s / sep.faces_per_s - 1.0)
            .collect();
        for (which, mode) in [Mode::Separate, Mode::Shared].into_iter().enumerate() {
            let label = mode.label(&o.backend);
            if let Some(e) = &failed[which] {
                println!("| {streams} | {label} | failed: {e} | | | | |");
                continue;
            }
            let middle = |f: fn(&Row) -> f64| median(rows[which].iter().map(f).collect());
            let batch = if mode == Mode::Shared {
                format!("{:.2}", middle(|r| r.mean_batch_faces))
            } else {
                "-".into()
            };
            let versus = if mode == Mode::Shared && !ratios.is_empty() {
                let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if ratios.len() > 1 {
                    format!(
                        "{:+.1} % ({:+.1} to {:+.1})",
                        median(ratios.clone()) * 100.0,
                        lo * 100.0,
                        hi * 100.0
                    )
                } else {
                    format!("{:+.1} %", ratios[0] * 100.0)
                }
            } else {
                "-".into()
            };
            println!(
                "| {streams} | {label} | {:.1} | {:.1} | {:.1} | {batch} | {versus} |",
                middle(|r| r.faces_per_s),
                middle(|r| r.p50_ms),
                middle(|r| r.p99_ms)
            );
        }
        if streams == 4 {
            ratios_4 = ratios;
        }
        let label = Mode::Kserve.label(&o.backend);
        match &kserve {
            Err(why) => println!("| {streams} | {label} | not run: {why} | | | | |"),
            Ok(server) => match measure(&o, Mode::Kserve, streams, Some(server)) {
                Ok(row) => {
                    let versus = if rows[0].is_empty() {
                        "-".into()
                    } else {
                        let base = median(rows[0].iter().map(|r| r.faces_per_s).collect());
                        format!("{:+.1} %", (row.faces_per_s / base - 1.0) * 100.0)
                    };
                    println!(
                        "| {streams} | {label} | {:.1} | {:.1} | {:.1} | - | {versus} |",
                        row.faces_per_s, row.p50_ms, row.p99_ms
                    );
                }
                Err(e) => println!("| {streams} | {label} | failed: {e} | | | | |"),
            },
        }
    }
    if !ratios_4.is_empty() {
        let list: Vec<String> = ratios_4
            .iter()
            .map(|r| format!("{:+.1} %", r * 100.0))
            .collect();
        println!(
            "4 streams, shared against separate, round by round: {}",
            list.join(", ")
        );
    }
    Ok(())
}

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("streams bench: {e}");
        std::process::exit(1);
    }
}

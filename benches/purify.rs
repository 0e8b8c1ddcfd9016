//! Purification throughput, side by side in one run, printed as one table:
//! for each backend (tract, ONNX Runtime on the CPU) and M = 16, 64, 128 samples per face:
//! faces/s and ms per face through the `avaepurify` element, the raw engine time spent on the
//! same faces inside it (encoder + decoder calls, from the element's `stats`) and the element's
//! overhead over it (crop, resize, sampling, selection, paste-back), the same faces through the
//! GStreamer-free frame purifier (`frame::purify_faces`, no pipeline, at the element's default
//! precision, passes and paste), and the decoder's achieved
//! GFLOP/s (M x the bundle's `decoder_flops` over that engine time, which also holds the encoder:
//! a lower bound) beside this machine's measured sgemm GFLOP/s.
//!
//! `cargo bench --bench purify [-- --quick] [--model DIR] [--faces N]`
//! (`--quick`: M = 16 only and fewer repetitions, for CI).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use gst::prelude::*;
use gstavaepurify::bundle::default_model_dir;
use gstavaepurify::core::image::{FrameMut, PixelLayout, Region};
use gstavaepurify::engine::precision::Precision;
use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::frame::{self, Placement};
use gstavaepurify::purifier::{Purifier, PurifyParams};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{FRAME_H, FRAME_W};
const BATCH: usize = 16;

struct Options {
    quick: bool,
    model: PathBuf,
    faces: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        model: default_model_dir(),
        faces: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--model" => o.model = args.next().ok_or("--model needs a folder")?.into(),
            "--faces" => {
                o.faces = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v: &usize| (1..=16).contains(&v))
                    .ok_or("--faces needs a number from 1 to 16")?
            }
            // cargo bench passes --bench; anything else is a mistake worth saying.
            "--bench" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

/// Single-precision matrix multiply GFLOP/s on `threads` threads at once (ndarray/matrixmultiply,
/// 512x512x512 per call).
fn sgemm_gflops(threads: usize, reps: usize) -> f64 {
    let n = 512;
    let a = Array2::<f32>::from_shape_fn((n, n), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01);
    let b = a.t().to_owned();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut c = Array2::<f32>::zeros((n, n));
                for _ in 0..reps {
                    ndarray::linalg::general_mat_mul(1.0, &a, &b, 0.0, &mut c);
                }
                std::hint::black_box(&c);
            });
        }
    });
    let flops = 2.0 * (n * n * n) as f64 * (reps * threads) as f64;
    flops / start.elapsed().as_secs_f64() / 1e9
}

struct Row {
    backend: String,
    samples: usize,
    element_ms: f64,
    engine_ms: f64,
    frame_ms: f64,
    decoder_gflops: f64,
}

/// Element time per face: frames with `nfaces` face ROIs through `avaepurify` in a Harness.
fn element_time(
    model: &std::path::Path,
    backend: &str,
    samples: usize,
    nfaces: usize,
    reps: usize,
) -> Result<(f64, f64), String> {
    let mut h = common::purify_harness(|el| {
        el.set_property("model", common::model_str(model)?);
        el.set_property_from_str("backend", backend);
        el.set_property_from_str("device", "cpu");
        el.set_property("samples", samples as u32);
        el.set_property("batch", BATCH as u32);
        el.set_property("seed", 1u64);
        el.set_property("max-faces", 16u32);
        Ok(())
    })?;
    let mut rng = StdRng::seed_from_u64(2);
    let frame = |rng: &mut StdRng| common::face_frame(rng, nfaces as u32);
    h.push_and_pull(frame(&mut rng)?)
        .map_err(|e| format!("warm-up frame: {e:?}"))?;
    let engine_total = |h: &gst_check::Harness| -> Result<f64, String> {
        let stats = common::stats(h)?;
        let mean = stats
            .get::<f64>("mean-engine-ms")
            .map_err(|e| e.to_string())?;
        let faces = stats
            .get::<u64>("faces-purified")
            .map_err(|e| e.to_string())?;
        Ok(mean * faces as f64)
    };
    let engine_before = engine_total(&h)?;
    let t = Instant::now();
    for _ in 0..reps {
        h.push_and_pull(frame(&mut rng)?)
            .map_err(|e| format!("frame: {e:?}"))?;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let el = h.element().ok_or("no element in harness")?;
    let stats = el.property::<gst::Structure>("stats");
    let purified = stats
        .get::<u64>("faces-purified")
        .map_err(|e| e.to_string())?;
    let failures = stats.get::<u64>("failures").map_err(|e| e.to_string())?;
    if failures > 0 || purified != ((reps + 1) * nfaces) as u64 {
        return Err(format!(
            "element ({backend}, M = {samples}) did not purify every face: {stats}"
        ));
    }
    let engine_ms = (engine_total(&h)? - engine_before) / (reps * nfaces) as f64;
    Ok((elapsed * 1e3 / (reps * nfaces) as f64, engine_ms))
}

/// Milliseconds per face through the GStreamer-free frame purifier ([`frame::purify_faces`]) on
/// the element's frames and face boxes, without a pipeline.
fn frame_time(
    purifier: &mut Purifier,
    samples: usize,
    nfaces: usize,
    reps: usize,
) -> Result<f64, String> {
    let (w, h) = (FRAME_W as usize, FRAME_H as usize);
    let mut rng = StdRng::seed_from_u64(2);
    let faces: Vec<Placement> = (0..nfaces)
        .map(|i| {
            Placement::Box(Region {
                x: (i % 4) * 150 + 10,
                y: (i / 4) * 115 + 5,
                width: 110,
                height: 110,
            })
        })
        .collect();
    let params = PurifyParams {
        samples,
        batch: BATCH,
        tau: purifier.default_tau(),
    };
    // The element's paste at its defaults: feather, context, the context's detail at the
    // bundle's encoder input size.
    let paste = frame::Paste {
        feather: 0.15,
        context: frame::DEFAULT_CONTEXT,
        context_detail: purifier.bundle().manifest.encoder_input_size,
    };
    let mut storage = Vec::new();
    // Random frames drawn before the clock starts; each run purifies a fresh copy.
    let frames: Vec<Vec<u8>> = (0..=reps)
        .map(|_| (0..w * h * 3).map(|_| rng.random()).collect())
        .collect();
    let mut run_once = |source: &Vec<u8>| -> Result<(), String> {
        let mut data = source.clone();
        let mut frame =
            FrameMut::new(&mut data, w, h, 3 * w, PixelLayout::Rgb).map_err(|e| e.to_string())?;
        let mut draw = StdRng::seed_from_u64(1);
        let out = frame::purify_faces(
            purifier,
            &mut frame,
            &faces,
            &params,
            frame::DEFAULT_PASSES,
            &paste,
            &frame::Prefilter::OFF,
            &mut draw,
            &mut storage,
        )
        .map_err(|e| format!("frame purifier (M = {samples}): {e}"))?;
        if out.len() != nfaces {
            return Err(format!(
                "frame purifier returned {} results for {nfaces} faces",
                out.len()
            ));
        }
        Ok(())
    };
    run_once(&frames[0])?;
    let t = Instant::now();
    for data in &frames[1..] {
        run_once(data)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / (reps * nfaces) as f64)
}

fn run() -> Result<(), String> {
    let o = options()?;
    gst::init().map_err(|e| e.to_string())?;
    gstavaepurify::plugin_register_static().map_err(|e| e.to_string())?;
    let sample_counts: &[usize] = if o.quick { &[16] } else { &[16, 64, 128] };
    let reps = if o.quick { 2 } else { 5 };
    let mut rows = Vec::new();
    for (label, backend) in [("tract", Backend::Tract), ("ort", Backend::Ort)] {
        let mut purifier = match Purifier::load(&o.model, backend, Device::Cpu) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipping backend {label}: {e}");
                continue;
            }
        };
        // The element's default precision (`auto`: int8 where the CPU and engine gain from it).
        purifier
            .set_precision(Precision::Auto, backend, Device::Cpu)
            .map_err(|e| format!("backend {label}: precision auto: {e}"))?;
        let name = purifier.backend_name();
        let flops = purifier.bundle().manifest.decoder_flops as f64;
        for &m in sample_counts {
            let (element_ms, engine_ms) = element_time(&o.model, label, m, o.faces, reps)?;
            let frame_ms = frame_time(&mut purifier, m, o.faces, reps)?;
            // Encoder time is in the engine time too, so this is a lower bound for the decoder;
            // every pass decodes M latents.
            let latents = (m * frame::DEFAULT_PASSES) as f64;
            let decoder_gflops = (latents * flops) / (engine_ms * 1e-3) / 1e9;
            rows.push(Row {
                backend: name.clone(),
                samples: m,
                element_ms,
                engine_ms,
                frame_ms,
                decoder_gflops,
            });
        }
    }
    if rows.is_empty() {
        return Err("no backend could load the model".into());
    }
    let sgemm1 = sgemm_gflops(1, if o.quick { 4 } else { 10 });
    let sgemm_all = sgemm_gflops(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if o.quick { 4 } else { 10 },
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "avaepurify benchmark: model {}, {} faces per {}x{} RGB frame, batch {BATCH}, passes {} \
         (the element's default), {cores} cores",
        o.model.display(),
        o.faces,
        FRAME_W,
        FRAME_H,
        frame::DEFAULT_PASSES
    );
    println!();
    println!(
        "| backend | M | faces/s | ms/face (element) | ms/face (frame purifier, no GStreamer) | ms/face (engine only) | element overhead | decoder GFLOP/s | sgemm GFLOP/s (1 thread / {cores} threads) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let overhead = 100.0 * (r.element_ms - r.engine_ms) / r.element_ms;
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} % | {:.1} | {:.1} / {:.1} |",
            r.backend,
            r.samples,
            1000.0 / r.element_ms,
            r.element_ms,
            r.frame_ms,
            r.engine_ms,
            overhead,
            r.decoder_gflops,
            sgemm1,
            sgemm_all
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

//! Decoder precision against a plain Python loop, printed as one table: for M = 16, 64, 128
//! samples per face, ms per face of `benches/python_loop.py` (onnxruntime + numpy on the
//! bundle's fp32 decoder: encode, one batched decode of M per face, nearest; run with the
//! project's `.venv/bin/python`) beside `avaepurify` with `precision=fp32`, `int8` and the
//! default `auto` (and what it chose), on each CPU backend, and the Python loop's time over the
//! element's at the default. The element runs one pass without the context low-pass, the work
//! the loop does. `bf16` is listed with the reason it falls back to fp32. The int8
//! decoder's quality figures are the ones `scripts/quantize.py` measured and wrote into the
//! manifest.
//!
//! `cargo bench --bench precision [-- --quick] [--model DIR] [--faces N] [--backend ort|tract]`
//! (`--quick`: M = 16 only, fewer faces).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use gst::prelude::*;
use gstavaepurify::bundle::{Bundle, default_model_dir};
use gstavaepurify::engine::precision::{self, CpuFeatures, Precision};
use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::purifier::Purifier;
use rand::SeedableRng;
use rand::rngs::StdRng;

use common::{FRAME_H, FRAME_W};

struct Options {
    quick: bool,
    model: PathBuf,
    faces: usize,
    backends: Vec<&'static str>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        model: default_model_dir(),
        faces: 4,
        backends: vec!["ort", "tract"],
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
            "--backend" => {
                o.backends = match args.next().as_deref() {
                    Some("ort") => vec!["ort"],
                    Some("tract") => vec!["tract"],
                    other => return Err(format!("--backend needs ort or tract, got {other:?}")),
                }
            }
            "--bench" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

/// ms per face of `benches/python_loop.py` at M = `samples` on `faces` faces.
fn python_loop(model: &Path, samples: usize, faces: usize) -> Result<f64, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if !python.is_file() {
        return Err(format!(
            "{} not found: run scripts/setup.sh (the Python loop needs its onnxruntime)",
            python.display()
        ));
    }
    let out = Command::new(&python)
        .arg(root.join("benches/python_loop.py"))
        .arg("--bundle")
        .arg(model)
        .args([
            "--samples",
            &samples.to_string(),
            "--faces",
            &faces.to_string(),
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "python_loop.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("python_loop.py printed no JSON line: {stdout}"))?;
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    value["ms_per_face"]
        .as_f64()
        .ok_or_else(|| format!("no ms_per_face in {json}"))
}

/// ms per face through `avaepurify` (`backend`, `precision`, batch 16) on 640x480 random-pixel
/// frames with `nfaces` face ROIs, after one frame of warm-up; every face must be purified.
fn element_time(
    model: &Path,
    backend: &str,
    precision: &str,
    samples: usize,
    nfaces: usize,
    reps: usize,
) -> Result<f64, String> {
    let mut h = common::purify_harness(|el| {
        el.set_property("model", common::model_str(model)?);
        el.set_property_from_str("backend", backend);
        el.set_property_from_str("device", "cpu");
        el.set_property_from_str("precision", precision);
        el.set_property("samples", samples as u32);
        // The same work as the Python loop: one A-VAE pass, no context low-pass (the element's
        // defaults, passes=2 and context=0.5, do about twice as much per face).
        el.set_property("passes", 1u32);
        el.set_property("context", 0.0f32);
        el.set_property("seed", 1u64);
        Ok(())
    })?;
    let mut rng = StdRng::seed_from_u64(2);
    let mut frame = || common::face_frame(&mut rng, nfaces as u32);
    h.push_and_pull(frame()?)
        .map_err(|e| format!("warm-up frame: {e:?}"))?;
    let t = Instant::now();
    for _ in 0..reps {
        h.push_and_pull(frame()?)
            .map_err(|e| format!("frame: {e:?}"))?;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let stats = common::stats(&h)?;
    if common::stat(&h, "faces-purified")? != ((reps + 1) * nfaces) as u64 {
        return Err(format!(
            "element ({backend}, precision={precision}, M = {samples}) did not purify every \
             face: {stats}"
        ));
    }
    Ok(elapsed * 1e3 / (reps * nfaces) as f64)
}

fn run() -> Result<(), String> {
    let o = options()?;
    gst::init().map_err(|e| e.to_string())?;
    gstavaepurify::plugin_register_static().map_err(|e| e.to_string())?;
    let bundle = Bundle::load(&o.model).map_err(|e| e.to_string())?;
    let cpu = CpuFeatures::detect();
    let sample_counts: &[usize] = if o.quick { &[16] } else { &[16, 64, 128] };
    let (reps, py_faces) = if o.quick { (2, 8) } else { (3, 16) };
    let python: Vec<f64> = sample_counts
        .iter()
        .map(|&m| python_loop(&o.model, m, py_faces))
        .collect::<Result<_, _>>()?;
    let mut lines = Vec::new();
    for &backend in &o.backends {
        let engine = match backend {
            "ort" => Backend::Ort,
            _ => Backend::Tract,
        };
        let running = Purifier::load(&o.model, engine, Device::Cpu)
            .map_err(|e| format!("backend {backend}: {e}"))?
            .backend_name();
        let auto = precision::choose(&bundle, Precision::Auto, &running, cpu).precision;
        for (&m, &py) in sample_counts.iter().zip(&python) {
            let fp32 = element_time(&o.model, backend, "fp32", m, o.faces, reps)?;
            let int8 = element_time(&o.model, backend, "int8", m, o.faces, reps)?;
            let default = element_time(&o.model, backend, "auto", m, o.faces, reps)?;
            lines.push(format!(
                "| {running} | {m} | {py:.1} | {fp32:.1} | {int8:.1} | {default:.1} ({auto}) | {:.2}x | {:.2}x |",
                fp32 / int8,
                py / default
            ));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "precision benchmark: model {}, {} faces per {FRAME_W}x{FRAME_H} RGB frame (element, \
         batch 16, passes 1, context 0), {py_faces} faces (Python loop, one decoder call of M per face), {cores} \
         cores, CPU VNNI {} / AVX-512 BF16 {}; ms per face",
        o.model.display(),
        o.faces,
        cpu.vnni,
        cpu.bf16
    );
    println!();
    println!(
        "| element backend | M | Python loop fp32 (onnxruntime) | element fp32 | element int8 | element default (auto: chose) | int8 speed-up | Python / element default |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for line in &lines {
        println!("{line}");
    }
    let bf16 = precision::choose(&bundle, Precision::Bf16, "ort (CPU)", cpu);
    println!();
    println!(
        "bf16: {}",
        bf16.fallback.unwrap_or_else(|| "available".into())
    );
    if let Some(q) = bundle.manifest.provenance.get("decoder_int8") {
        println!(
            "int8 quality (scripts/quantize.py, {}): candidates {} dB PSNR against fp32; \
             nearest candidate against the input {} (fp32) / {} (int8) dB",
            q["check"].as_str().unwrap_or("?"),
            q["candidates_psnr_vs_fp32_db"],
            q["nearest_psnr_vs_input_db"]["fp32"],
            q["nearest_psnr_vs_input_db"]["int8"]
        );
    } else {
        println!("int8: this bundle has no int8 decoder (scripts/quantize.py adds one)");
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("precision benchmark failed: {e}");
        std::process::exit(1);
    }
}

//! The serving export: writes a bundle as a Triton model repository and an MLServer layout
//! (`gstavaepurify::engine::kserve::repository`), for `avaepurify backend=kserve`.
//!
//! ```sh
//! cargo run --release --example serving -- --out serving/avae-cpu   # the shipped bundle
//! .venv/bin/mlserver start serving/avae-cpu/mlserver                 # gRPC on 127.0.0.1:8001
//! tritonserver --model-repository serving/avae-cpu/triton            # or Triton (untested here)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use gstavaepurify::bundle::{Bundle, default_model_dir};
use gstavaepurify::engine::kserve::repository::{InstanceKind, ServingOptions, write_serving};

const USAGE: &str = "usage: serving --out DIR [--bundle DIR] [--instance-kind gpu|cpu] \
[--instances N] [--max-queue-delay-us N] [--grpc-port PORT]

Writes DIR/triton (a Triton model repository: one model per graph, config.pbtxt with the ONNX
Runtime backend, dynamic batching and an instance group) and DIR/mlserver (settings.json and
one model-settings.json per graph with the avae_runtime.py ONNX Runtime runtime).
--bundle defaults to the shipped avae-cpu bundle (AVAE_PURIFY_MODEL overrides).";

fn parse() -> Result<(PathBuf, PathBuf, ServingOptions), String> {
    let mut bundle = default_model_dir();
    let mut out = None;
    let mut options = ServingOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what} {value}: expected a non-negative integer"))
        };
        match flag.as_str() {
            "--bundle" => bundle = PathBuf::from(&value),
            "--out" => out = Some(PathBuf::from(&value)),
            "--instance-kind" => {
                options.instance_kind = match value.as_str() {
                    "gpu" => InstanceKind::Gpu,
                    "cpu" => InstanceKind::Cpu,
                    _ => return Err(format!("--instance-kind {value}: expected gpu or cpu")),
                }
            }
            "--instances" => {
                options.instances = u32::try_from(number("--instances")?)
                    .map_err(|_| format!("--instances {value}: too large"))?
            }
            "--max-queue-delay-us" => options.max_queue_delay_us = number("--max-queue-delay-us")?,
            "--grpc-port" => {
                options.grpc_port = u16::try_from(number("--grpc-port")?)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("--grpc-port {value}: expected 1-65535"))?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let out = out.ok_or("--out DIR is required")?;
    Ok((bundle, out, options))
}

fn main() -> ExitCode {
    let (bundle, out, options) = match parse() {
        Ok(parsed) => parsed,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("serving: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let written = Bundle::load(&bundle).and_then(|b| write_serving(&b, &out, &options));
    match written {
        Ok(layout) => {
            println!("models: {}", layout.models.join(", "));
            println!("triton repository: {}", layout.triton.display());
            println!("mlserver folder:   {}", layout.mlserver.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("serving: {err}");
            ExitCode::FAILURE
        }
    }
}

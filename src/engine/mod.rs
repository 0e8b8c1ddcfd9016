//! Inference engines: one trait, three backends.
//!
//! - [`ort`](crate::engine::ort): ONNX Runtime loaded at run time (`load-dynamic`), with the
//!   TensorRT, CUDA and CPU execution providers tried in that order.
//! - [`tract`](crate::engine::tract): pure Rust, nothing to install; an optimised plan per input
//!   shape, cached.
//! - [`kserve`](crate::engine::kserve): a remote server speaking the Open Inference Protocol
//!   (Triton, MLServer, KServe) over gRPC; the local graph is the reference its model metadata
//!   is checked against.
//!
//! `Backend::Auto` uses ONNX Runtime when its library loads and tract otherwise.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ndarray::{ArrayD, ArrayViewD, Axis};

use crate::Error;

pub mod kserve;
pub mod ort;
pub mod precision;
pub mod tract;

/// A loaded ONNX graph that can be run on f32 inputs.
pub trait Engine: Send {
    /// Backend and device actually in use, e.g. `ort (CPU)` or `tract (CPU)`.
    fn describe(&self) -> String;

    /// Why the engine is not running where it was asked to (each fallback with its reason),
    /// for the caller to log once.
    fn fallbacks(&self) -> &[String];

    /// Runs the graph. `inputs` are given in the graph's declared input order; outputs come back
    /// in its declared output order, integer outputs converted to f32.
    fn run(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>, Error>;
}

/// The rows of a batch whose inputs all share their first axis, when there are at least two
/// (a batch worth splitting); `None` otherwise: the engine then runs it as one call, which
/// reports any mismatch itself.
pub(crate) fn splittable_rows(inputs: &[ArrayViewD<'_, f32>]) -> Option<usize> {
    let rows = *inputs.first()?.shape().first()?;
    (rows > 1 && inputs.iter().all(|a| a.shape().first() == Some(&rows))).then_some(rows)
}

/// Runs a batch whose rows are independent in contiguous shares, one share per worker state in
/// `workers` (fewer when there are fewer rows), each in its own thread, and joins the outputs
/// in row order. `fail` turns a reason into the backend's error (naming its graph).
pub(crate) fn run_in_shares<W: Send>(
    workers: &mut [W],
    inputs: &[ArrayViewD<'_, f32>],
    run: impl Fn(&mut W, &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>, Error> + Sync,
    fail: impl Fn(String) -> Error + Sync,
) -> Result<Vec<ArrayD<f32>>, Error> {
    let rows = inputs
        .first()
        .map_or(0, |a| a.shape().first().copied().unwrap_or(0));
    let per_worker = rows.div_ceil(workers.len().clamp(1, rows.max(1)));
    let (run, fail) = (&run, &fail);
    let parts: Vec<Result<Vec<ArrayD<f32>>, Error>> = std::thread::scope(|scope| {
        let running: Vec<_> = workers
            .iter_mut()
            .zip((0..rows).step_by(per_worker.max(1)))
            .map(|(worker, start)| {
                let end = (start + per_worker).min(rows);
                scope.spawn(move || {
                    let share: Vec<ArrayViewD<'_, f32>> = inputs
                        .iter()
                        .map(|a| a.slice_axis(Axis(0), (start..end).into()))
                        .collect();
                    run(worker, &share)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(fail("a row worker panicked".to_string())))
            })
            .collect()
    });
    join_rows(parts.into_iter().collect::<Result<Vec<_>, _>>()?, fail)
}

/// Joins the outputs of consecutive row shares: output k of the batch is every share's output
/// k, in order.
pub(crate) fn join_rows(
    parts: Vec<Vec<ArrayD<f32>>>,
    fail: impl Fn(String) -> Error,
) -> Result<Vec<ArrayD<f32>>, Error> {
    let count = parts.first().map_or(0, Vec::len);
    (0..count)
        .map(|k| {
            let views: Vec<_> = parts
                .iter()
                .map(|part| part.get(k).map(|a| a.view()))
                .collect::<Option<_>>()
                .ok_or_else(|| fail("row shares gave different outputs".into()))?;
            ndarray::concatenate(Axis(0), &views)
                .map_err(|e| fail(format!("joining the row shares: {e}")))
        })
        .collect()
}

/// Which inference backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// ONNX Runtime when its library loads, tract otherwise.
    #[default]
    Auto,
    /// ONNX Runtime (`ort`).
    Ort,
    /// tract (pure Rust).
    Tract,
    /// A remote Open Inference Protocol (KServe v2) gRPC server.
    Kserve(kserve::Remote),
}

/// Which device ONNX Runtime should run on (tract always runs on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// TensorRT, then CUDA, then CPU: the first that works.
    #[default]
    Auto,
    /// TensorRT (falls back to CUDA, then CPU, with the reason logged).
    TensorRt,
    /// CUDA (falls back to CPU, with the reason logged).
    Cuda,
    /// CPU only.
    Cpu,
}

impl Backend {
    /// The property nick: `auto`, `ort`, `tract` or `kserve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Ort => "ort",
            Backend::Tract => "tract",
            Backend::Kserve(_) => "kserve",
        }
    }
}

impl Device {
    /// The property nick: `auto`, `tensorrt`, `cuda` or `cpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::TensorRt => "tensorrt",
            Device::Cuda => "cuda",
            Device::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `auto`, `ort`, `tract`, `kserve` (the default server) or `kserve:HOST:PORT`.
impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(server) = s.strip_prefix("kserve:") {
            return kserve::Remote::new(server, kserve::DEFAULT_TIMEOUT_MS).map(Backend::Kserve);
        }
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "ort" | "onnxruntime" => Ok(Backend::Ort),
            "tract" => Ok(Backend::Tract),
            "kserve" => Ok(Backend::Kserve(kserve::Remote::default())),
            _ => Err(Error::InvalidParameter {
                name: "backend",
                value: s.to_string(),
                expected: "one of auto, ort, tract, kserve, kserve:HOST:PORT",
            }),
        }
    }
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "tensorrt" | "trt" => Ok(Device::TensorRt),
            "cuda" | "gpu" => Ok(Device::Cuda),
            "cpu" => Ok(Device::Cpu),
            _ => Err(Error::InvalidParameter {
                name: "device",
                value: s.to_string(),
                expected: "one of auto, tensorrt, cuda, cpu",
            }),
        }
    }
}

/// When `device` was asked for explicitly (`cuda` or `tensorrt`) but the engine runs elsewhere
/// (`running`, an [`Engine::describe`]), the warning to give: it names the device, where the
/// engine runs instead, and why (`fallbacks`). `None` for `auto` and `cpu`, whose fallbacks are
/// expected and only worth an INFO line, and for a remote engine, whose device the server
/// chooses.
pub fn explicit_device_unavailable(
    device: Device,
    running: &str,
    fallbacks: &[String],
) -> Option<String> {
    let (property, provider) = match device {
        Device::Cuda => ("cuda", "CUDA"),
        Device::TensorRt => ("tensorrt", "TensorRT"),
        Device::Auto | Device::Cpu => return None,
    };
    if running.starts_with("kserve") {
        return None;
    }
    if running.contains(&format!("({provider})")) {
        return None;
    }
    let reason = if running.starts_with("tract") {
        "the tract backend runs on the CPU only (use backend=ort)".to_owned()
    } else if fallbacks.is_empty() {
        "no reason given".to_owned()
    } else {
        fallbacks.join("; ")
    };
    Some(format!(
        "device={property} was requested but {provider} is unavailable, running on {running} \
         instead: {reason}"
    ))
}

/// Opens the ONNX graph at `path` with the requested backend and device. `cache_dir` receives
/// TensorRT engine and timing caches (normally the bundle folder). With `Backend::Kserve` the
/// graph runs on the server as the model named after its file, `device` is the server's
/// business and `cache_dir` is not used.
pub fn open_graph(
    path: &Path,
    backend: Backend,
    device: Device,
    cache_dir: &Path,
) -> Result<Box<dyn Engine>, Error> {
    match backend {
        Backend::Tract => Ok(Box::new(tract::TractEngine::open(path)?)),
        Backend::Ort => Ok(Box::new(ort::OrtEngine::open(path, device, cache_dir)?)),
        Backend::Kserve(remote) => Ok(Box::new(kserve::KserveEngine::open(path, remote)?)),
        Backend::Auto => match ort::runtime_status() {
            Ok(_) => Ok(Box::new(ort::OrtEngine::open(path, device, cache_dir)?)),
            Err(reason) => {
                let mut engine = tract::TractEngine::open(path)?;
                engine.note_fallback(format!(
                    "backend=auto: ONNX Runtime unavailable ({reason}); using tract"
                ));
                Ok(Box::new(engine))
            }
        },
    }
}

/// What the tract and ONNX Runtime tests of the row-wise path share.
#[cfg(test)]
pub(crate) mod row_checks {
    use ndarray::{ArrayD, s};

    /// Five different rows of the tiny bundle's decoder input: `z` `[5, 64]`, `skip`
    /// `[5, 8, 16, 16]`.
    pub fn decoder_inputs() -> (ArrayD<f32>, ArrayD<f32>) {
        let z = ArrayD::from_shape_fn(vec![5, 64], |i| {
            (i[0] as f32 * 0.7 + i[1] as f32 * 0.13).sin()
        });
        let skip = ArrayD::from_shape_fn(vec![5, 8, 16, 16], |i| {
            (i[0] as f32 + i[1] as f32 * 0.3 + i[2] as f32 * 0.07 - i[3] as f32 * 0.05).cos()
        });
        (z, skip)
    }

    /// Asserts that a batch whose inputs disagree on their rows is not split: the engine itself
    /// refuses it, naming the graph.
    pub fn assert_mismatched_rows_name_the_graph(decoder: &mut dyn super::Engine) {
        let z = ArrayD::<f32>::zeros(vec![3, 64]);
        let skip = ArrayD::<f32>::zeros(vec![2, 8, 16, 16]);
        let err = decoder
            .run(&[z.view(), skip.view()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("decoder.onnx"), "{err}");
    }

    /// Asserts that the images `rows` (`[5, 3, 64, 64]`) equal `batched` within `tol`, and
    /// that they are in row order (the last row is not a copy of the first).
    pub fn assert_rows_match(rows: &ArrayD<f32>, batched: &ArrayD<f32>, tol: f32) {
        assert_eq!(rows.shape(), &[5, 3, 64, 64]);
        assert_eq!(rows.shape(), batched.shape());
        let worst = rows
            .iter()
            .zip(batched.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < tol, "rows differ from the batch by {worst}");
        assert!(
            (&rows.slice(s![4, .., .., ..]) - &rows.slice(s![0, .., .., ..]))
                .iter()
                .any(|v| v.abs() > 1e-3)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_property_values() {
        assert_eq!("TRACT".parse::<Backend>().unwrap(), Backend::Tract);
        assert_eq!("tensorrt".parse::<Device>().unwrap(), Device::TensorRt);
        let err = "gpu9".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("backend") && err.contains("gpu9"), "{err}");
        let Backend::Kserve(remote) = "kserve:10.0.0.2:9000".parse::<Backend>().unwrap() else {
            panic!("kserve:HOST:PORT is the kserve backend");
        };
        assert_eq!(remote.server(), "10.0.0.2:9000");
        assert_eq!(
            "kserve".parse::<Backend>().unwrap(),
            Backend::Kserve(kserve::Remote::default())
        );
        let err = "kserve:nowhere".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("server") && err.contains("nowhere"), "{err}");
    }
}

//! The ONNX Runtime backend (`ort` with `load-dynamic`).
//!
//! The library is found, in order, at `ORT_DYLIB_PATH`, in the project's own venv
//! (`.venv/lib/python3*/site-packages/onnxruntime/capi/`, where `scripts/setup.sh` installs the
//! PyPI wheel), or as `libonnxruntime.so` on the system library path. It is loaded once per
//! process; when it cannot be, [`runtime_status`] says why instead of panicking.
//! Execution providers are tried TensorRT, then CUDA, then CPU (depending on [`Device`]); each
//! fallback is recorded with its reason for the caller to log once.
//!
//! On the CPU a graph whose inputs and outputs all share one symbolic batch axis (the encoder
//! and the decoders: every row is independent) runs as one single-threaded session per core,
//! each on its share of the rows, all at once. ONNX Runtime's own two intra-op threads split
//! each node instead, and for the int8 decoder's many small quantize, layout and normalisation
//! nodes that scales poorly (README, "Precision").

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{ArrayD, ArrayViewD};
use ort::ep::{self, ExecutionProvider};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorRef, ValueType};

use super::{Device, Engine};
use crate::Error;

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

static RUNTIME: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// Candidate library paths, most specific first.
fn library_candidates() -> Result<Vec<PathBuf>, String> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(vec![p])
        } else {
            Err(format!("{DYLIB_ENV}={} does not exist", p.display()))
        };
    }
    let mut found = Vec::new();
    let venv_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv_lib) {
        for python in entries.flatten() {
            let capi = python.path().join("site-packages/onnxruntime/capi");
            if let Ok(files) = std::fs::read_dir(&capi) {
                let mut libs: Vec<PathBuf> = files
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                libs.sort();
                found.extend(libs.into_iter().rev());
            }
        }
    }
    found.push(PathBuf::from("libonnxruntime.so"));
    Ok(found)
}

/// Loads ONNX Runtime once; returns the library path in use, or why it cannot be used.
pub fn runtime_status() -> Result<&'static Path, String> {
    let runtime = RUNTIME.get_or_init(|| {
        let mut reasons = Vec::new();
        for candidate in library_candidates()? {
            // ort loads the library into a process-wide slot; a failed dlopen leaves it empty,
            // so the next candidate can still be tried.
            match ort::init_from(&candidate) {
                Ok(builder) => {
                    return builder
                        .with_name("avaepurify")
                        .build()
                        .map(|env| (candidate.clone(), env))
                        .map_err(|e| {
                            format!("{}: cannot create environment: {e}", candidate.display())
                        });
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(format!(
            "no usable ONNX Runtime library (set {DYLIB_ENV} or run scripts/setup.sh): {}",
            reasons.join("; ")
        ))
    });
    match runtime {
        Ok((path, _)) => Ok(path.as_path()),
        Err(e) => Err(e.clone()),
    }
}

fn environment() -> Result<&'static ort::environment::Environment, String> {
    runtime_status()?;
    match RUNTIME.get() {
        Some(Ok((_, env))) => Ok(env),
        Some(Err(e)) => Err(e.clone()),
        None => Err("ONNX Runtime not initialised".to_string()),
    }
}

/// An ONNX graph run by ONNX Runtime.
pub struct OrtEngine {
    path: PathBuf,
    /// One session, or on the CPU for a row-wise graph one single-threaded session per core
    /// (see the module docs).
    sessions: Vec<Session>,
    provider: &'static str,
    fallbacks: Vec<String>,
}

fn engine_error(path: &Path, reason: String) -> Error {
    Error::Engine {
        backend: "ort",
        path: path.to_path_buf(),
        reason,
    }
}

#[derive(Clone, Copy)]
enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorRT",
            Provider::Cuda => "CUDA",
            Provider::Cpu => "CPU",
        }
    }
}

impl OrtEngine {
    /// Opens `path` on the first execution provider of `device`'s list that works;
    /// TensorRT caches go to `cache_dir/trt-cache`.
    pub fn open(path: &Path, device: Device, cache_dir: &Path) -> Result<Self, Error> {
        let env = environment().map_err(|e| engine_error(path, e))?;
        let order: &[Provider] = match device {
            Device::Auto | Device::TensorRt => &[Provider::TensorRt, Provider::Cuda, Provider::Cpu],
            Device::Cuda => &[Provider::Cuda, Provider::Cpu],
            Device::Cpu => &[Provider::Cpu],
        };
        let mut fallbacks = Vec::new();
        for (i, &provider) in order.iter().enumerate() {
            // On a multi-core CPU the first session is single-threaded: for a row-wise graph
            // it is the first of one per core, otherwise it is opened again with ONNX
            // Runtime's own threads.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let share = matches!(provider, Provider::Cpu) && cores > 1;
            match Self::session(env, path, provider, cache_dir, share.then_some(1)) {
                Ok(session) => {
                    let reopen = |threads| {
                        Self::session(env, path, provider, cache_dir, threads)
                            .map_err(|e| engine_error(path, e))
                    };
                    let sessions = if !share {
                        vec![session]
                    } else if shares_batch_axis(&session) {
                        std::iter::once(Ok(session))
                            .chain((1..cores).map(|_| reopen(Some(1))))
                            .collect::<Result<Vec<_>, _>>()?
                    } else {
                        vec![reopen(None)?]
                    };
                    return Ok(Self {
                        path: path.to_path_buf(),
                        sessions,
                        provider: provider.name(),
                        fallbacks,
                    });
                }
                Err(reason) => {
                    let next = order.get(i + 1).map_or("nothing", |p| p.name());
                    fallbacks.push(format!(
                        "{} execution provider unavailable ({reason}); falling back to {next}",
                        provider.name()
                    ));
                }
            }
        }
        Err(engine_error(path, fallbacks.join("; ")))
    }

    fn session(
        env: &ort::environment::Environment,
        path: &Path,
        provider: Provider,
        cache_dir: &Path,
        threads: Option<usize>,
    ) -> Result<Session, String> {
        let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
        if let Some(threads) = threads {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| e.to_string())?;
        }
        match provider {
            Provider::TensorRt => {
                if !ep::TensorRT::is_available().unwrap_or(false) {
                    return Err("not in this ONNX Runtime build".to_string());
                }
                // What protects this cache: ONNX Runtime names each serialized TensorRT engine
                // after a hash of the graph, the TensorRT version and the GPU, so a stale
                // engine is not picked up for another graph or GPU, but it does NOT verify the
                // content of a file found under that name: TensorRT deserializes whatever is
                // there. The only protection is who can write the folder: the bundle folder
                // for the purifier, and for the detector the per-user cache folder, created
                // with mode 0700 and refused when owned by another user
                // (`avaefacedetect::create_private_dir`). Never point either at a folder other
                // users can write.
                let cache = cache_dir.join("trt-cache");
                std::fs::create_dir_all(&cache)
                    .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
                let cache = cache.display().to_string();
                let trt = ep::TensorRT::default()
                    .with_engine_cache(true)
                    .with_engine_cache_path(&cache)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&cache)
                    .build()
                    .error_on_failure();
                builder = builder
                    .with_execution_providers([trt])
                    .map_err(|e| e.to_string())?;
            }
            Provider::Cuda => {
                if !ep::CUDA::is_available().unwrap_or(false) {
                    return Err("not in this ONNX Runtime build".to_string());
                }
                builder = builder
                    .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
                    .map_err(|e| e.to_string())?;
            }
            Provider::Cpu => {}
        }
        builder.commit_from_file(path).map_err(|e| e.to_string())
    }
}

impl Engine for OrtEngine {
    fn describe(&self) -> String {
        format!("ort ({})", self.provider)
    }

    fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    fn run(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>, Error> {
        if self.sessions.len() <= 1 || super::splittable_rows(inputs).is_none() {
            return self.run_batched(inputs);
        }
        let path = &self.path;
        super::run_in_shares(
            &mut self.sessions,
            inputs,
            |session, share| run_session(session, path, share),
            |reason| engine_error(path, reason),
        )
    }
}

impl OrtEngine {
    /// How many sessions share a batch's rows (1: ONNX Runtime splits each node itself).
    pub fn workers(&self) -> usize {
        self.sessions.len()
    }

    /// Runs a batch as one call of the first session, as [`Engine::run`] does for graphs that
    /// are not row-wise (for comparing the two ways).
    pub fn run_batched(
        &mut self,
        inputs: &[ArrayViewD<'_, f32>],
    ) -> Result<Vec<ArrayD<f32>>, Error> {
        run_session(&mut self.sessions[0], &self.path, inputs)
    }
}

/// Runs `session` once on `inputs` (in the graph's input order).
fn run_session(
    session: &mut Session,
    path: &Path,
    inputs: &[ArrayViewD<'_, f32>],
) -> Result<Vec<ArrayD<f32>>, Error> {
    let names: Vec<String> = session
        .inputs()
        .iter()
        .map(|i| i.name().to_string())
        .collect();
    if names.len() != inputs.len() {
        return Err(engine_error(
            path,
            format!("graph takes {} inputs, {} given", names.len(), inputs.len()),
        ));
    }
    let contiguous: Vec<_> = inputs.iter().map(|a| a.as_standard_layout()).collect();
    let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, array) in names.into_iter().zip(&contiguous) {
        let tensor = TensorRef::from_array_view(array)
            .map_err(|e| engine_error(path, format!("input `{name}`: {e}")))?;
        values.push((name, tensor.into()));
    }
    let outputs = session
        .run(values)
        .map_err(|e| engine_error(path, format!("run failed: {e}")))?;
    let mut result = Vec::with_capacity(outputs.len());
    for (name, value) in outputs.iter() {
        let array = match value.try_extract_array::<f32>() {
            Ok(a) => a.to_owned(),
            Err(_) => value
                .try_extract_array::<i64>()
                .map(|a| a.mapv(|v| v as f32))
                .map_err(|e| engine_error(path, format!("output `{name}`: {e}")))?,
        };
        result.push(array);
    }
    Ok(result)
}

/// Whether every input and output of the session's graph starts with the same named symbolic
/// axis (a batch whose rows the graph treats independently, as the exported encoder and
/// decoders declare it; the fused purifier's per-face inputs have a fixed 1 there).
fn shares_batch_axis(session: &Session) -> bool {
    let first = |t: &ValueType| match t {
        ValueType::Tensor {
            shape,
            dimension_symbols,
            ..
        } => (shape.first() == Some(&-1))
            .then(|| dimension_symbols.first().cloned())
            .flatten()
            .filter(|s| !s.is_empty()),
        _ => None,
    };
    let mut axes = session
        .inputs()
        .iter()
        .chain(session.outputs())
        .map(|o| first(o.dtype()));
    match axes.next() {
        Some(Some(axis)) => axes.all(|a| a.as_ref() == Some(&axis)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(graph: &str) -> OrtEngine {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny");
        OrtEngine::open(&dir.join(graph), Device::Cpu, &std::env::temp_dir())
            .unwrap_or_else(|e| panic!("ONNX Runtime (scripts/setup.sh installs it): {e}"))
    }

    #[test]
    fn only_graphs_with_one_batch_axis_share_rows_over_sessions() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(tiny("encoder.onnx").workers(), cores);
        assert_eq!(tiny("decoder.onnx").workers(), cores);
        // The fused graph chooses among all the batch's candidates: its rows are not independent.
        assert_eq!(tiny("purifier.onnx").workers(), 1);
    }

    #[test]
    fn shared_rows_give_the_batched_result() {
        let mut decoder = tiny("decoder.onnx");
        let (z, skip) = super::super::row_checks::decoder_inputs();
        let shared = decoder.run(&[z.view(), skip.view()]).unwrap();
        let batched = decoder.run_batched(&[z.view(), skip.view()]).unwrap();
        super::super::row_checks::assert_rows_match(&shared[0], &batched[0], 1e-5);
    }

    #[test]
    fn mismatched_batches_run_as_one_call_and_name_the_graph() {
        super::super::row_checks::assert_mismatched_rows_name_the_graph(&mut tiny("decoder.onnx"));
    }
}

//! The ONNX Runtime backend (`ort` with `load-dynamic`).
//!
//! The library is found, in order, at `ORT_DYLIB_PATH`, in the project's own venv
//! (`.venv/lib/python3*/site-packages/onnxruntime/capi/`, where `scripts/setup.sh` installs the
//! PyPI wheel), or as `libonnxruntime.so` on the system library path. It is loaded once per
//! process; when it cannot be, [`runtime_status`] says why instead of panicking.
//! Execution providers are tried TensorRT, then CUDA, then CPU (depending on [`Device`]); each
//! fallback is recorded with its reason for the caller to log once.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{ArrayD, ArrayViewD};
use ort::ep::{self, ExecutionProvider};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

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
    session: Session,
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
            match Self::session(env, path, provider, cache_dir) {
                Ok(session) => {
                    return Ok(Self {
                        path: path.to_path_buf(),
                        session,
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
    ) -> Result<Session, String> {
        let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
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
        let names: Vec<String> = self
            .session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        if names.len() != inputs.len() {
            return Err(engine_error(
                &self.path,
                format!("graph takes {} inputs, {} given", names.len(), inputs.len()),
            ));
        }
        let contiguous: Vec<_> = inputs.iter().map(|a| a.as_standard_layout()).collect();
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, array) in names.into_iter().zip(&contiguous) {
            let tensor = TensorRef::from_array_view(array)
                .map_err(|e| engine_error(&self.path, format!("input `{name}`: {e}")))?;
            values.push((name, tensor.into()));
        }
        let path = self.path.clone();
        let outputs = self
            .session
            .run(values)
            .map_err(|e| engine_error(&path, format!("run failed: {e}")))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            let array = match value.try_extract_array::<f32>() {
                Ok(a) => a.to_owned(),
                Err(_) => value
                    .try_extract_array::<i64>()
                    .map(|a| a.mapv(|v| v as f32))
                    .map_err(|e| engine_error(&path, format!("output `{name}`: {e}")))?,
            };
            result.push(array);
        }
        Ok(result)
    }
}

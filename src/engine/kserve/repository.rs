//! The serving export: a bundle written as the model repositories of two Open Inference
//! Protocol servers, one model per graph, named as [`super::model_name`] names them
//! (`encoder`, `decoder`, `purifier`), so that `backend=kserve` finds them.
//!
//! ```text
//! DIR/triton/<graph>/config.pbtxt      ONNX Runtime backend, dynamic batching, instance group
//! DIR/triton/<graph>/1/model.onnx
//! DIR/mlserver/settings.json           server settings (gRPC on 8001, in-process workers)
//! DIR/mlserver/<graph>/model-settings.json
//! DIR/mlserver/<graph>/model.onnx
//! DIR/mlserver/<graph>/avae_runtime.py the custom runtime: the graph on ONNX Runtime
//! ```
//!
//! A graph whose every input and output starts with the batch dimension (the encoder, the
//! decoder) gets Triton's dynamic batching with a `max_batch_size` at least what the element
//! sends; the fused purifier (one face with B latents) cannot be batched across requests and
//! gets `max_batch_size: 0` with its full shapes.

use std::fs;
use std::path::{Path, PathBuf};

use super::{TensorSpec, graph_signature, model_name};
use crate::Error;
use crate::bundle::{Bundle, GraphKind};

/// The MLServer runtime written next to every MLServer model (`serving/avae_runtime.py`).
pub const MLSERVER_RUNTIME: &str = include_str!("../../../serving/avae_runtime.py");

/// Most faces `avaepurify` encodes in one call (the top of its `max-faces` range).
pub const ENCODER_MAX_BATCH: usize = 256;

/// Where Triton runs a model's instances (`instance_group.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceKind {
    /// `KIND_GPU`: one set of instances per visible GPU.
    #[default]
    Gpu,
    /// `KIND_CPU`.
    Cpu,
}

/// Options of the serving export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingOptions {
    /// Triton instance kind.
    pub instance_kind: InstanceKind,
    /// Triton instances per device (`instance_group.count`), at least 1.
    pub instances: u32,
    /// Triton's `dynamic_batching.max_queue_delay_microseconds`.
    pub max_queue_delay_us: u64,
    /// The gRPC port written into MLServer's `settings.json` (Triton's is its own flag).
    pub grpc_port: u16,
}

impl Default for ServingOptions {
    fn default() -> Self {
        Self {
            instance_kind: InstanceKind::Gpu,
            instances: 1,
            max_queue_delay_us: 100,
            grpc_port: 8001,
        }
    }
}

/// What the export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingLayout {
    /// The Triton model repository (`tritonserver --model-repository`).
    pub triton: PathBuf,
    /// The MLServer folder (`mlserver start`).
    pub mlserver: PathBuf,
    /// The model names, one per graph.
    pub models: Vec<String>,
}

/// One graph to serve.
struct Served {
    name: String,
    path: PathBuf,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Triton `max_batch_size`; 0 where the graph cannot be batched across requests.
    max_batch: usize,
}

fn write_error(path: &Path, e: std::io::Error) -> Error {
    Error::bundle(path, format!("serving export: cannot write: {e}"))
}

/// Writes the Triton repository and the MLServer layout of `bundle` under `out` (created if
/// needed; files of an earlier export are replaced).
pub fn write_serving(
    bundle: &Bundle,
    out: &Path,
    options: &ServingOptions,
) -> Result<ServingLayout, Error> {
    if options.instances == 0 {
        return Err(Error::InvalidParameter {
            name: "instances",
            value: "0".to_owned(),
            expected: "at least 1 Triton instance per device",
        });
    }
    let mut served = Vec::new();
    for kind in [GraphKind::Encoder, GraphKind::Decoder, GraphKind::Purifier] {
        let Some(path) = bundle.graph_path(kind) else {
            continue;
        };
        let (inputs, outputs) = graph_signature(&path)?;
        let batchable = inputs
            .iter()
            .chain(&outputs)
            .all(|t| t.dims.first() == Some(&None));
        let max_batch = match (batchable, kind) {
            (false, _) => 0,
            (true, GraphKind::Decoder) => crate::purifier::batch_limit(&bundle.manifest),
            (true, _) => ENCODER_MAX_BATCH,
        };
        served.push(Served {
            name: model_name(&path),
            path,
            inputs,
            outputs,
            max_batch,
        });
    }
    let triton = out.join("triton");
    let mlserver = out.join("mlserver");
    for graph in &served {
        let dir = triton.join(&graph.name);
        write(&dir.join("config.pbtxt"), &triton_config(graph, options))?;
        place(&graph.path, &dir.join("1").join("model.onnx"))?;
        let dir = mlserver.join(&graph.name);
        write(&dir.join("model-settings.json"), &mlserver_settings(graph))?;
        write(&dir.join("avae_runtime.py"), MLSERVER_RUNTIME)?;
        place(&graph.path, &dir.join("model.onnx"))?;
    }
    let settings = serde_json::json!({
        "host": "127.0.0.1",
        "grpc_port": options.grpc_port,
        "http_port": 8000,
        "metrics_port": 8002,
        "parallel_workers": 0,
        "grpc_max_message_length": super::MAX_MESSAGE_BYTES,
    });
    write(&mlserver.join("settings.json"), &format!("{settings:#}\n"))?;
    Ok(ServingLayout {
        triton,
        mlserver,
        models: served.into_iter().map(|g| g.name).collect(),
    })
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    }
    fs::write(path, text).map_err(|e| write_error(path, e))
}

/// Puts the graph at `to`: a hard link where the file system allows one, a copy otherwise.
fn place(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    }
    if to.exists() {
        fs::remove_file(to).map_err(|e| write_error(to, e))?;
    }
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).map_err(|e| write_error(to, e))?;
    }
    Ok(())
}

/// Triton's `config.pbtxt` for one graph (protobuf text format of `ModelConfig`).
fn triton_config(graph: &Served, options: &ServingOptions) -> String {
    let tensors = |specs: &[TensorSpec]| -> String {
        specs
            .iter()
            .map(|t| {
                // With max_batch_size > 0 Triton's dims leave out the batch dimension.
                let dims: Vec<String> = t
                    .shape()
                    .iter()
                    .skip(usize::from(graph.max_batch > 0))
                    .map(i64::to_string)
                    .collect();
                format!(
                    "  {{\n    name: \"{}\"\n    data_type: TYPE_{}\n    dims: [ {} ]\n  }}",
                    t.name,
                    t.datatype,
                    dims.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let mut text = format!(
        "# Written by the avae-purify serving export from {}.\n\
         name: \"{}\"\n\
         backend: \"onnxruntime\"\n\
         max_batch_size: {}\n\
         input [\n{}\n]\n\
         output [\n{}\n]\n",
        graph
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        graph.name,
        graph.max_batch,
        tensors(&graph.inputs),
        tensors(&graph.outputs),
    );
    if graph.max_batch > 0 {
        text.push_str(&format!(
            "dynamic_batching {{\n  max_queue_delay_microseconds: {}\n}}\n",
            options.max_queue_delay_us
        ));
    }
    let kind = match options.instance_kind {
        InstanceKind::Gpu => "KIND_GPU",
        InstanceKind::Cpu => "KIND_CPU",
    };
    text.push_str(&format!(
        "instance_group [\n  {{\n    count: {}\n    kind: {kind}\n  }}\n]\n",
        options.instances
    ));
    text
}

/// MLServer's `model-settings.json` for one graph.
fn mlserver_settings(graph: &Served) -> String {
    let tensors = |specs: &[TensorSpec]| -> serde_json::Value {
        specs
            .iter()
            .map(|t| serde_json::json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape() }))
            .collect()
    };
    let settings = serde_json::json!({
        "name": graph.name,
        "implementation": "avae_runtime.OnnxGraph",
        "parameters": { "uri": "./model.onnx", "version": "1" },
        "inputs": tensors(&graph.inputs),
        "outputs": tensors(&graph.outputs),
    });
    format!("{settings:#}\n")
}

//! The remote backend (`backend=kserve`): a gRPC client of the Open Inference Protocol (KServe
//! v2), the API of Triton, MLServer, KServe and OpenVINO Model Server.
//!
//! Each graph of a bundle is a model of the server, named after its file (`encoder.onnx` is the
//! model `encoder`; see [`model_name`]). The bundle stays the source of truth: at open the
//! engine asks the server whether the model is ready and compares its metadata (input and
//! output names, data types and shapes) with the local graph's, which [`crate::bundle`] has
//! already checked against the manifest; any difference is an error naming the server, the
//! model and the tensor. Inputs go out as `raw_input_contents` (little-endian FP32), outputs
//! are read from `raw_output_contents` or from the typed `contents`, whichever the server uses.
//!
//! The [`Engine`] trait is synchronous: each engine owns a current-thread tokio runtime and
//! blocks on it. Every call is bounded by the timeout of its [`Remote`]. When a call fails for
//! a reason that says the server or model is gone (unavailable, deadline, not found, ...), the
//! engine drops its connection and backs off (200 ms, doubling to 2 s): calls within the
//! back-off fail at once instead of each costing a timeout, and the first call after it
//! reconnects and checks the model's readiness and metadata again before inferring.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use prost::Message;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tract_onnx::pb;

use super::Engine;
use crate::Error;

pub mod proto;
pub mod repository;

/// The default `server`: Triton's gRPC port on this machine (the MLServer layout written by
/// [`repository`] listens there too).
pub const DEFAULT_SERVER: &str = "127.0.0.1:8001";

/// The default `server-timeout-ms`: the bound on connecting and on each call.
pub const DEFAULT_TIMEOUT_MS: u32 = 5000;

/// First wait after a failed call; it doubles on each further failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);

/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Messages up to this size are accepted each way (tonic's default is 4 MiB, less than one
/// decoder chunk of a large `batch`).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Where the remote engine runs: a `host:port` and the timeout of each call. `Copy`, like the
/// [`super::Backend`] it is part of: the address is interned (each distinct address is kept for
/// the life of the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    server: &'static str,
    timeout: Duration,
}

impl Remote {
    /// Checks `server` (`host:port`, the `server` property) and `timeout_ms`
    /// (`server-timeout-ms`, at least 1).
    pub fn new(server: &str, timeout_ms: u32) -> Result<Self, Error> {
        let server = server.trim();
        let valid = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(Error::InvalidParameter {
                name: "server",
                value: server.to_owned(),
                expected: "host:port of an Open Inference Protocol (KServe v2) gRPC server, \
                           e.g. 127.0.0.1:8001",
            });
        }
        if timeout_ms == 0 {
            return Err(Error::InvalidParameter {
                name: "server-timeout-ms",
                value: timeout_ms.to_string(),
                expected: "at least 1 (milliseconds)",
            });
        }
        Ok(Self {
            server: intern(server),
            timeout: Duration::from_millis(u64::from(timeout_ms)),
        })
    }

    /// The server's `host:port`.
    pub fn server(&self) -> &'static str {
        self.server
    }

    /// The bound on connecting and on each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for Remote {
    fn default() -> Self {
        Self {
            server: DEFAULT_SERVER,
            timeout: Duration::from_millis(u64::from(DEFAULT_TIMEOUT_MS)),
        }
    }
}

/// The one `'static` copy of `server`.
fn intern(server: &str) -> &'static str {
    static SERVERS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut servers = SERVERS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = servers.iter().find(|s| **s == server) {
        return known;
    }
    let leaked: &'static str = Box::leak(server.to_owned().into_boxed_str());
    servers.push(leaked);
    leaked
}

/// The model name under which the server serves the graph at `path`: its file stem
/// (`decoder.onnx` -> `decoder`). The detector's dynamic-shape copy
/// (`centerface-<hash>-dynamic.onnx`) is served under its original stem (`centerface`).
pub fn model_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if let Some(rest) = stem.strip_suffix("-dynamic")
        && let Some((base, hash)) = rest.rsplit_once('-')
        && hash.len() == 16
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return base.to_owned();
    }
    stem.to_owned()
}

/// One input or output of a graph as the protocol describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Protocol data type (`FP32`, `INT64`, ...).
    pub datatype: &'static str,
    /// Dimensions; `None` for a symbolic one (the batch).
    pub dims: Vec<Option<i64>>,
}

impl TensorSpec {
    /// The dimensions as the protocol writes them (-1 for a variable one).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().map(|d| d.unwrap_or(-1)).collect()
    }
}

/// The inputs (initialisers excluded) and outputs of the ONNX graph at `path`.
pub fn graph_signature(path: &Path) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), Error> {
    let fail = |reason: String| engine_error(path, reason);
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the graph: {e}")))?;
    let model = pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| fail(format!("not a valid ONNX model: {e}")))?;
    let graph = model
        .graph
        .ok_or_else(|| fail("ONNX model has no graph".to_owned()))?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let spec = |value: &pb::ValueInfoProto| -> Result<TensorSpec, Error> {
        let elem = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => t.elem_type,
            _ => return Err(fail(format!("`{}` is not a tensor", value.name))),
        };
        Ok(TensorSpec {
            name: value.name.clone(),
            datatype: datatype_name(elem)
                .ok_or_else(|| fail(format!("`{}` has ONNX element type {elem}", value.name)))?,
            dims: crate::bundle::tensor_dims(value)
                .ok_or_else(|| fail(format!("`{}` has no shape", value.name)))?,
        })
    };
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name.as_str()))
        .map(spec)
        .collect::<Result<_, _>>()?;
    let outputs = graph.output.iter().map(spec).collect::<Result<_, _>>()?;
    Ok((inputs, outputs))
}

/// The protocol's name of an ONNX element type.
fn datatype_name(elem_type: i32) -> Option<&'static str> {
    Some(match elem_type {
        1 => "FP32",
        2 => "UINT8",
        3 => "INT8",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        9 => "BOOL",
        10 => "FP16",
        11 => "FP64",
        _ => return None,
    })
}

fn engine_error(path: &Path, reason: String) -> Error {
    Error::Engine {
        backend: "kserve",
        path: path.to_path_buf(),
        reason,
    }
}

/// A failed remote call: what happened, and whether it says the server or model is gone (the
/// engine then reconnects, after its back-off).
struct CallError {
    reason: String,
    lost: bool,
}

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let lost = matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::NotFound
                | Code::Aborted
                | Code::ResourceExhausted
        );
        let mut reason = format!("{:?}: {}", status.code(), status.message());
        if let Some(source) = std::error::Error::source(&status) {
            reason = format!("{reason} ({source})");
        }
        Self { reason, lost }
    }
}

impl CallError {
    fn lost(reason: String) -> Self {
        Self { reason, lost: true }
    }

    fn kept(reason: String) -> Self {
        Self {
            reason,
            lost: false,
        }
    }
}

/// When the next reconnection may be tried, after consecutive failures.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Backoff {
    fn failed(&mut self, reason: &str) {
        let wait = BACKOFF_FIRST
            .saturating_mul(1 << self.failures.min(8))
            .min(BACKOFF_MAX);
        self.failures += 1;
        self.retry_at = Some(Instant::now() + wait);
        self.last_error = reason.to_owned();
    }

    fn waiting(&self) -> Option<Duration> {
        self.retry_at
            .and_then(|at| at.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }
}

/// A graph run by an Open Inference Protocol server.
pub struct KserveEngine {
    path: PathBuf,
    remote: Remote,
    model: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    runtime: tokio::runtime::Runtime,
    client: Option<Grpc<Channel>>,
    backoff: Backoff,
    fallbacks: Vec<String>,
}

impl KserveEngine {
    /// Connects to `remote`, checks that the model named after `path` ([`model_name`]) is
    /// ready and that its metadata matches the graph at `path`.
    pub fn open(path: &Path, remote: Remote) -> Result<Self, Error> {
        let (inputs, outputs) = graph_signature(path)?;
        if let Some(input) = inputs.iter().find(|i| i.datatype != "FP32") {
            return Err(engine_error(
                path,
                format!(
                    "input `{}` is {}: the kserve backend sends FP32 inputs only",
                    input.name, input.datatype
                ),
            ));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| engine_error(path, format!("cannot start the gRPC runtime: {e}")))?;
        let mut engine = Self {
            path: path.to_path_buf(),
            remote,
            model: model_name(path),
            inputs,
            outputs,
            runtime,
            client: None,
            backoff: Backoff::default(),
            fallbacks: Vec::new(),
        };
        engine.connect().map_err(|e| engine.error(&e.reason))?;
        Ok(engine)
    }

    /// The model name on the server.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn error(&self, reason: &str) -> Error {
        engine_error(
            &self.path,
            format!(
                "server {}, model '{}': {reason}",
                self.remote.server, self.model
            ),
        )
    }

    /// Opens a channel and checks the model; keeps the client only when everything matches.
    fn connect(&mut self) -> Result<(), CallError> {
        let remote = self.remote;
        let model = self.model.clone();
        let client = self.runtime.block_on(async {
            let endpoint = Endpoint::from_shared(format!("http://{}", remote.server))
                .map_err(|e| CallError::kept(format!("not a valid address: {e}")))?
                .connect_timeout(remote.timeout)
                .timeout(remote.timeout);
            let channel = tokio::time::timeout(remote.timeout, endpoint.connect())
                .await
                .map_err(|_| {
                    CallError::lost(format!(
                        "no connection within {} ms (server-timeout-ms)",
                        remote.timeout.as_millis()
                    ))
                })?
                .map_err(|e| {
                    let mut reason = format!("cannot connect: {e}");
                    if let Some(source) = std::error::Error::source(&e) {
                        reason = format!("{reason} ({source})");
                    }
                    CallError::lost(reason)
                })?;
            let mut client = Grpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let ready: proto::ModelReadyResponse = call(
                &mut client,
                "ModelReady",
                proto::ModelReadyRequest {
                    name: model.clone(),
                    version: String::new(),
                },
                remote.timeout,
            )
            .await
            .map_err(|e| CallError {
                reason: format!("not ready on the server: ModelReady failed ({})", e.reason),
                lost: true,
            })?;
            if !ready.ready {
                return Err(CallError::lost(
                    "the model is not ready on the server (ModelReady: false)".to_owned(),
                ));
            }
            let metadata: proto::ModelMetadataResponse = call(
                &mut client,
                "ModelMetadata",
                proto::ModelMetadataRequest {
                    name: model.clone(),
                    version: String::new(),
                },
                remote.timeout,
            )
            .await
            .map_err(|e| CallError {
                reason: format!("no model metadata ({})", e.reason),
                lost: e.lost,
            })?;
            Ok((client, metadata))
        })?;
        let (client, metadata) = client;
        self.check_metadata(&metadata).map_err(CallError::kept)?;
        self.client = Some(client);
        Ok(())
    }

    /// Compares the server's model metadata with the local graph: the same input names, and
    /// every output, with the same data types and compatible shapes (a server dimension of -1
    /// accepts any size; a batch dimension must be -1 there).
    fn check_metadata(&self, metadata: &proto::ModelMetadataResponse) -> Result<(), String> {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let compare = |what: &str, local: &[TensorSpec], served: &[proto::TensorMetadata]| {
            for spec in local {
                let Some(remote) = served.iter().find(|t| t.name == spec.name) else {
                    let names: Vec<&str> = served.iter().map(|t| t.name.as_str()).collect();
                    return Err(format!(
                        "the server's model has no {what} `{}` (its {what}s: {names:?}; the \
                         bundle's graph {file} has it): the server serves another graph",
                        spec.name
                    ));
                };
                let fits = remote.datatype == spec.datatype
                    && remote.shape.len() == spec.dims.len()
                    && remote.shape.iter().zip(&spec.dims).all(|(r, l)| match l {
                        Some(n) => *r == -1 || r == n,
                        None => *r == -1,
                    });
                if !fits {
                    return Err(format!(
                        "{what} `{}` is {} {:?} on the server, but {} {:?} in the bundle's \
                         graph {file} (-1 = any size): the server serves another graph",
                        spec.name,
                        remote.datatype,
                        remote.shape,
                        spec.datatype,
                        spec.shape()
                    ));
                }
            }
            Ok(())
        };
        compare("input", &self.inputs, &metadata.inputs)?;
        compare("output", &self.outputs, &metadata.outputs)?;
        if let Some(extra) = metadata
            .inputs
            .iter()
            .find(|t| !self.inputs.iter().any(|s| s.name == t.name))
        {
            return Err(format!(
                "the server's model has an input `{}` that the bundle's graph {file} lacks",
                extra.name
            ));
        }
        Ok(())
    }

    fn infer(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>, CallError> {
        if inputs.len() != self.inputs.len() {
            return Err(CallError::kept(format!(
                "{} inputs given, the graph has {}",
                inputs.len(),
                self.inputs.len()
            )));
        }
        let request = proto::ModelInferRequest {
            model_name: self.model.clone(),
            inputs: self
                .inputs
                .iter()
                .zip(inputs)
                .map(|(spec, array)| proto::InferInputTensor {
                    name: spec.name.clone(),
                    datatype: "FP32".to_owned(),
                    shape: array.shape().iter().map(|&d| d as i64).collect(),
                    ..Default::default()
                })
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|spec| proto::InferRequestedOutputTensor {
                    name: spec.name.clone(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: inputs.iter().map(le_bytes).collect(),
            ..Default::default()
        };
        let timeout = self.remote.timeout;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| CallError::lost("not connected".to_owned()))?;
        let response: proto::ModelInferResponse =
            self.runtime
                .block_on(call(client, "ModelInfer", request, timeout))?;
        self.outputs
            .iter()
            .map(|spec| read_output(&response, &spec.name).map_err(CallError::kept))
            .collect()
    }
}

/// One unary call of the inference service, bounded by `timeout`.
async fn call<Req, Resp>(
    client: &mut Grpc<Channel>,
    method: &str,
    request: Req,
    timeout: Duration,
) -> Result<Resp, CallError>
where
    Req: Message + Send + Sync + 'static,
    Resp: Message + Default + Send + Sync + 'static,
{
    let path = PathAndQuery::try_from(format!("{}{method}", proto::SERVICE))
        .map_err(|e| CallError::kept(format!("bad method path: {e}")))?;
    let exchange = async {
        client
            .ready()
            .await
            .map_err(|e| CallError::lost(format!("connection not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let response = client
            .unary(tonic::Request::new(request), path, codec)
            .await?;
        Ok(response.into_inner())
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        CallError::lost(format!(
            "{method} took longer than {} ms (server-timeout-ms)",
            timeout.as_millis()
        ))
    })?
}

/// The little-endian bytes of `array`, in row-major order.
fn le_bytes(array: &ArrayViewD<'_, f32>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(array.len() * 4);
    match array.as_slice() {
        Some(values) => values
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        None => array
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
    }
    bytes
}

/// Output `name` of `response` as f32 (integer and FP64 outputs converted), from its raw bytes
/// or its typed contents.
fn read_output(response: &proto::ModelInferResponse, name: &str) -> Result<ArrayD<f32>, String> {
    let (index, tensor) = response
        .outputs
        .iter()
        .enumerate()
        .find(|(_, t)| t.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = response.outputs.iter().map(|t| t.name.as_str()).collect();
            format!("the response has no output `{name}` (it has {names:?})")
        })?;
    let shape: Vec<usize> = tensor
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("output `{name}` has shape {:?}", tensor.shape))?;
    let values: Vec<f32> = match response.raw_output_contents.get(index) {
        Some(raw) if !response.raw_output_contents.is_empty() => decode_raw(&tensor.datatype, raw)
            .ok_or_else(|| {
                format!(
                    "output `{name}`: {} raw bytes of {} cannot be read",
                    raw.len(),
                    tensor.datatype
                )
            })?,
        _ => {
            let contents = tensor.contents.clone().unwrap_or_default();
            match tensor.datatype.as_str() {
                "FP32" => contents.fp32_contents,
                "FP64" => contents.fp64_contents.iter().map(|&v| v as f32).collect(),
                "INT64" => contents.int64_contents.iter().map(|&v| v as f32).collect(),
                "INT32" | "INT16" | "INT8" => {
                    contents.int_contents.iter().map(|&v| v as f32).collect()
                }
                other => return Err(format!("output `{name}` has data type {other}")),
            }
        }
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|_| format!("output `{name}`: its data does not fill its shape {shape:?}"))
}

/// Little-endian raw tensor bytes of `datatype` as f32.
fn decode_raw(datatype: &str, raw: &[u8]) -> Option<Vec<f32>> {
    fn chunks<const N: usize>(raw: &[u8]) -> Option<impl Iterator<Item = [u8; N]> + '_> {
        raw.len().is_multiple_of(N).then(|| {
            raw.chunks_exact(N)
                .map(|c| <[u8; N]>::try_from(c).expect("exact chunk"))
        })
    }
    Some(match datatype {
        "FP32" => chunks::<4>(raw)?.map(f32::from_le_bytes).collect(),
        "FP64" => chunks::<8>(raw)?
            .map(|b| f64::from_le_bytes(b) as f32)
            .collect(),
        "INT64" => chunks::<8>(raw)?
            .map(|b| i64::from_le_bytes(b) as f32)
            .collect(),
        "INT32" => chunks::<4>(raw)?
            .map(|b| i32::from_le_bytes(b) as f32)
            .collect(),
        _ => return None,
    })
}

impl Engine for KserveEngine {
    fn describe(&self) -> String {
        format!("kserve ({}, model {})", self.remote.server, self.model)
    }

    fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    fn run(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>, Error> {
        if let Some(left) = self.backoff.waiting() {
            return Err(self.error(&format!(
                "unreachable ({}); next attempt in {} ms",
                self.backoff.last_error,
                left.as_millis()
            )));
        }
        if self.client.is_none()
            && let Err(e) = self.connect()
        {
            self.backoff.failed(&e.reason);
            return Err(self.error(&format!("reconnecting failed: {}", e.reason)));
        }
        match self.infer(inputs) {
            Ok(outputs) => {
                self.backoff = Backoff::default();
                Ok(outputs)
            }
            Err(e) => {
                if e.lost {
                    self.client = None;
                    self.backoff.failed(&e.reason);
                }
                Err(self.error(&format!("ModelInfer failed: {}", e.reason)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_server_address_and_timeout() {
        let remote = Remote::new("127.0.0.1:8001", 250).unwrap();
        assert_eq!(remote.server(), "127.0.0.1:8001");
        assert_eq!(remote.timeout(), Duration::from_millis(250));
        assert!(std::ptr::eq(
            remote.server(),
            Remote::new("127.0.0.1:8001", 9).unwrap().server()
        ));
        Remote::new("[::1]:8001", 1).unwrap();
        for bad in [
            "",
            "localhost",
            "host:",
            ":8001",
            "host:0",
            "host:99999",
            "http://h:1",
        ] {
            let err = Remote::new(bad, 100).unwrap_err().to_string();
            assert!(err.contains("server") && err.contains("host:port"), "{err}");
        }
        let err = Remote::new("h:1", 0).unwrap_err().to_string();
        assert!(err.contains("server-timeout-ms"), "{err}");
    }

    #[test]
    fn names_models_after_graph_files() {
        assert_eq!(model_name(Path::new("/b/decoder.onnx")), "decoder");
        assert_eq!(
            model_name(Path::new("/tmp/centerface-0123456789abcdef-dynamic.onnx")),
            "centerface"
        );
        assert_eq!(model_name(Path::new("x-dynamic.onnx")), "x-dynamic");
    }

    #[test]
    fn backs_off_doubling_up_to_the_cap() {
        let mut backoff = Backoff::default();
        assert!(backoff.waiting().is_none());
        backoff.failed("down");
        let first = backoff.waiting().unwrap();
        assert!(
            first <= BACKOFF_FIRST && first > BACKOFF_FIRST / 2,
            "{first:?}"
        );
        for _ in 0..10 {
            backoff.failed("down");
        }
        assert!(backoff.waiting().unwrap() <= BACKOFF_MAX);
        assert!(backoff.waiting().unwrap() > BACKOFF_MAX / 2);
    }

    #[test]
    fn reads_raw_and_typed_outputs() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let index: Vec<u8> = 7i64.to_le_bytes().to_vec();
        let response = proto::ModelInferResponse {
            outputs: vec![
                proto::InferOutputTensor {
                    name: "image".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 2],
                    ..Default::default()
                },
                proto::InferOutputTensor {
                    name: "index".into(),
                    datatype: "INT64".into(),
                    shape: vec![1],
                    ..Default::default()
                },
            ],
            raw_output_contents: vec![raw, index],
            ..Default::default()
        };
        assert_eq!(
            read_output(&response, "image")
                .unwrap()
                .into_raw_vec_and_offset()
                .0,
            vec![1.5, -2.0]
        );
        assert_eq!(read_output(&response, "index").unwrap()[[0]], 7.0);
        assert!(read_output(&response, "mu").unwrap_err().contains("`mu`"));
        let typed = proto::ModelInferResponse {
            outputs: vec![proto::InferOutputTensor {
                name: "index".into(),
                datatype: "INT64".into(),
                shape: vec![2],
                contents: Some(proto::InferTensorContents {
                    int64_contents: vec![3, 4],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            read_output(&typed, "index")
                .unwrap()
                .into_raw_vec_and_offset()
                .0,
            vec![3.0, 4.0]
        );
    }

    #[test]
    fn reads_the_signature_of_a_bundle_graph() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/avae-cpu/decoder.onnx");
        let (inputs, outputs) = graph_signature(&path).unwrap();
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["z", "skip"]);
        assert_eq!(inputs[0].datatype, "FP32");
        assert_eq!(inputs[0].dims[0], None);
        assert_eq!(outputs[0].name, "image");
        assert_eq!(outputs[0].shape()[0], -1);
    }
}

//! The messages of the Open Inference Protocol's gRPC API (KServe v2, package `inference`,
//! service `GRPCInferenceService`), written by hand as prost structs from the published
//! `grpc_predict_v2.proto`: the field numbers and types are the specification's. Only the calls
//! this client makes are here: ServerLive, ServerReady, ModelReady, ModelMetadata and ModelInfer.
//! Fields a server adds beyond these (e.g. MLServer's tensor `parameters`) are skipped by prost.

use std::collections::HashMap;

/// The gRPC service path prefix.
pub const SERVICE: &str = "/inference.GRPCInferenceService/";

/// `ServerLiveRequest {}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveRequest {}

/// `ServerLiveResponse { bool live = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveResponse {
    /// Whether the server is live.
    #[prost(bool, tag = "1")]
    pub live: bool,
}

/// `ServerReadyRequest {}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyRequest {}

/// `ServerReadyResponse { bool ready = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyResponse {
    /// Whether the server is ready for inference.
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

/// `ModelReadyRequest { string name = 1; string version = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyRequest {
    /// Model name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Model version; empty lets the server choose.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `ModelReadyResponse { bool ready = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyResponse {
    /// Whether the model is ready for inference.
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

/// `ModelMetadataRequest { string name = 1; string version = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataRequest {
    /// Model name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Model version; empty lets the server choose.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `ModelMetadataResponse.TensorMetadata { string name = 1; string datatype = 2;
/// repeated int64 shape = 3; }`: -1 marks a variable dimension.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorMetadata {
    /// Tensor name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Data type, e.g. `FP32`, `INT64`.
    #[prost(string, tag = "2")]
    pub datatype: String,
    /// Shape; -1 for a variable dimension.
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

/// `ModelMetadataResponse { string name = 1; repeated string versions = 2; string platform = 3;
/// repeated TensorMetadata inputs = 4; repeated TensorMetadata outputs = 5; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataResponse {
    /// Model name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Versions available.
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    /// Framework / backend, e.g. `onnxruntime_onnx`.
    #[prost(string, tag = "3")]
    pub platform: String,
    /// Inputs.
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<TensorMetadata>,
}

/// `InferParameter { oneof parameter_choice { bool bool_param = 1; int64 int64_param = 2;
/// string string_param = 3; } }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferParameter {
    /// The parameter's value.
    #[prost(oneof = "infer_parameter::ParameterChoice", tags = "1, 2, 3")]
    pub parameter_choice: Option<infer_parameter::ParameterChoice>,
}

/// The oneof of [`InferParameter`].
pub mod infer_parameter {
    /// `oneof parameter_choice`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum ParameterChoice {
        /// `bool bool_param = 1`.
        #[prost(bool, tag = "1")]
        BoolParam(bool),
        /// `int64 int64_param = 2`.
        #[prost(int64, tag = "2")]
        Int64Param(i64),
        /// `string string_param = 3`.
        #[prost(string, tag = "3")]
        StringParam(String),
    }
}

/// `InferTensorContents`: tensor data as typed repeated fields, in row-major order (used when
/// `raw_*_contents` is empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensorContents {
    /// `repeated bool bool_contents = 1`.
    #[prost(bool, repeated, tag = "1")]
    pub bool_contents: Vec<bool>,
    /// `repeated int32 int_contents = 2` (INT8, INT16, INT32).
    #[prost(int32, repeated, tag = "2")]
    pub int_contents: Vec<i32>,
    /// `repeated int64 int64_contents = 3`.
    #[prost(int64, repeated, tag = "3")]
    pub int64_contents: Vec<i64>,
    /// `repeated uint32 uint_contents = 4` (UINT8, UINT16, UINT32).
    #[prost(uint32, repeated, tag = "4")]
    pub uint_contents: Vec<u32>,
    /// `repeated uint64 uint64_contents = 5`.
    #[prost(uint64, repeated, tag = "5")]
    pub uint64_contents: Vec<u64>,
    /// `repeated float fp32_contents = 6`.
    #[prost(float, repeated, tag = "6")]
    pub fp32_contents: Vec<f32>,
    /// `repeated double fp64_contents = 7`.
    #[prost(double, repeated, tag = "7")]
    pub fp64_contents: Vec<f64>,
    /// `repeated bytes bytes_contents = 8`.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub bytes_contents: Vec<Vec<u8>>,
}

/// `ModelInferRequest.InferInputTensor { string name = 1; string datatype = 2;
/// repeated int64 shape = 3; map<string, InferParameter> parameters = 4;
/// InferTensorContents contents = 5; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferInputTensor {
    /// Tensor name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Data type.
    #[prost(string, tag = "2")]
    pub datatype: String,
    /// Shape.
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    /// Optional parameters.
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    /// Typed data; `None` when the request carries `raw_input_contents`.
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

/// `ModelInferRequest.InferRequestedOutputTensor { string name = 1;
/// map<string, InferParameter> parameters = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferRequestedOutputTensor {
    /// Tensor name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Optional parameters.
    #[prost(map = "string, message", tag = "2")]
    pub parameters: HashMap<String, InferParameter>,
}

/// `ModelInferRequest { string model_name = 1; string model_version = 2; string id = 3;
/// map<string, InferParameter> parameters = 4; repeated InferInputTensor inputs = 5;
/// repeated InferRequestedOutputTensor outputs = 6; repeated bytes raw_input_contents = 7; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferRequest {
    /// Model name.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// Model version; empty lets the server choose.
    #[prost(string, tag = "2")]
    pub model_version: String,
    /// Request id, echoed in the response.
    #[prost(string, tag = "3")]
    pub id: String,
    /// Optional parameters.
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    /// Inputs.
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<InferInputTensor>,
    /// Outputs asked for; empty asks for all.
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<InferRequestedOutputTensor>,
    /// One little-endian byte string per input, in `inputs` order (instead of `contents`).
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub raw_input_contents: Vec<Vec<u8>>,
}

/// `ModelInferResponse.InferOutputTensor { string name = 1; string datatype = 2;
/// repeated int64 shape = 3; map<string, InferParameter> parameters = 4;
/// InferTensorContents contents = 5; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferOutputTensor {
    /// Tensor name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Data type.
    #[prost(string, tag = "2")]
    pub datatype: String,
    /// Shape.
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    /// Optional parameters.
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    /// Typed data; `None` when the response carries `raw_output_contents`.
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

/// `ModelInferResponse { string model_name = 1; string model_version = 2; string id = 3;
/// map<string, InferParameter> parameters = 4; repeated InferOutputTensor outputs = 5;
/// repeated bytes raw_output_contents = 6; }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferResponse {
    /// Model name.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// Model version that ran.
    #[prost(string, tag = "2")]
    pub model_version: String,
    /// The request's id.
    #[prost(string, tag = "3")]
    pub id: String,
    /// Optional parameters.
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    /// Outputs.
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<InferOutputTensor>,
    /// One little-endian byte string per output, in `outputs` order (instead of `contents`).
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub raw_output_contents: Vec<Vec<u8>>,
}

//! The shapes of the V2 protocol's bodies for the OpenAPI description. The codec
//! (`v2`) parses and writes these bodies by hand, for speed, so their shapes are declared
//! here as schema types; the handlers name them in their `#[utoipa::path]` attributes.
//! Declarations only: imports nothing of `http`.

use serde::Serialize;
use utoipa::ToSchema;

/// An error: every 4xx and 5xx answer carries one.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words meant for the client.
    pub error: String,
}

/// A tensor in a request (JSON form). With the binary-tensor extension the data follows the
/// JSON header instead and `parameters.binary_data_size` gives its length in bytes.
#[derive(Serialize, ToSchema)]
pub struct RequestTensor {
    pub name: String,
    /// The shape, batch dimension included.
    pub shape: Vec<i64>,
    /// BOOL, UINT8…UINT64, INT8…INT64, FP16, FP32, FP64 or BYTES.
    pub datatype: String,
    /// Row-major values, flat or nested; BYTES as strings.
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

/// An output the client asks for (all outputs when the list is absent).
#[derive(Serialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    /// `{"binary_data": true}` returns this output as raw bytes after the JSON header.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

/// `POST /v2/models/{model}/infer` body (JSON, or JSON header + binary tensors with
/// `Inference-Header-Content-Length`).
#[derive(Serialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    pub inputs: Vec<RequestTensor>,
    pub outputs: Option<Vec<RequestedOutput>>,
    /// `{"binary_data_output": true}` returns every output as raw bytes.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

/// A tensor in a response.
#[derive(Serialize, ToSchema)]
pub struct ResponseTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// Flat row-major values (absent when the output is sent as binary data).
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct InferResponse {
    pub id: Option<String>,
    pub model_name: String,
    /// The version that answered (the rollout picks it unless the path pins one).
    pub model_version: String,
    pub outputs: Vec<ResponseTensor>,
}

#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// -1 for a dynamic dimension.
    pub shape: Vec<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    /// `onnxruntime_onnx`, Triton's name for an ONNX model, whichever engine runs it.
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// A model's rollout as served.
#[derive(Serialize, ToSchema)]
pub struct RolloutState {
    pub model: String,
    pub stable: Option<u64>,
    pub canary: Option<u64>,
    /// Percent of unpinned requests the canary answers (split mode).
    pub weight: u8,
    /// `split` or `shadow`.
    pub mode: String,
    pub sticky_header: String,
    /// Loaded versions.
    pub versions: Vec<u64>,
}

/// `PUT /v2/models/{model}/rollout`: the fields to change (absent fields stay).
#[derive(Serialize, ToSchema)]
pub struct RolloutChange {
    pub stable: Option<u64>,
    /// `null` removes the canary.
    pub canary: Option<u64>,
    pub weight: Option<u8>,
    pub mode: Option<String>,
    pub sticky_header: Option<String>,
    /// `[rollout.analysis]` keys (steps, interval, min_requests, max_wait,
    /// max_error_rate_delta, max_latency_ratio, max_output_psi, min_agreement,
    /// on_success); `null` stops the analysis.
    #[schema(value_type = Option<Object>)]
    pub analysis: Option<serde_json::Value>,
}

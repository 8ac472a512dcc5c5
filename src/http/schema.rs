//! The shapes of the bodies vigil reads and writes, for the OpenAPI description. The codec
//! (`v2`) and the handlers build most bodies by hand (for speed, or from `json!`), so
//! their shapes are declared here as schema types; the handlers name them in their
//! `#[utoipa::path]` attributes. The V2 bodies follow the Open Inference Protocol's REST
//! specification (`open_inference_rest.yaml`: required fields, `parameters` objects,
//! nested `tensor_data`), with Triton's extensions beside them; every other body is
//! vigil's own. Declarations only: imports nothing of `http`.
//!
//! A test (`tests/openapi.rs`) fuzzes a real server against this description and fails
//! on any response outside it: change a handler's body and its schema here together.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// An error: every 4xx and 5xx answer carries one (OIP's `*_error_response`).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words meant for the client.
    pub error: String,
}

/// OIP's `parameters`: an object of named values (`binary_data_size`, `binary_data`,
/// `binary_data_output`, Triton's `config` for a load, …). vigil reads `null` as absent,
/// as some clients send it.
#[derive(Serialize)]
pub struct Parameters;

impl PartialSchema for Parameters {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .description(Some(
                "Named parameters (an object of any values); null is read as absent",
            ))
            .into()
    }
}

impl ToSchema for Parameters {
    fn name() -> Cow<'static, str> {
        "parameters".into()
    }
}

/// OIP's `tensor_data`: row-major values, flat or nested arrays of numbers, strings
/// (BYTES) or booleans. vigil writes a non-finite float of a JSON output as `null`, which
/// JSON cannot otherwise express; ask for binary outputs to get it exactly.
#[derive(Serialize)]
pub struct TensorData;

impl PartialSchema for TensorData {
    fn schema() -> RefOr<Schema> {
        let item = AnyOfBuilder::new()
            .item(Ref::from_schema_name("tensor_data"))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null));
        ArrayBuilder::new()
            .schema_type(SchemaType::Type(Type::Array))
            .items(item)
            .description(Some(
                "Row-major values, flat or nested; BYTES as strings; null for a non-finite \
                 float in a JSON output",
            ))
            .into()
    }
}

impl ToSchema for TensorData {
    fn name() -> Cow<'static, str> {
        "tensor_data".into()
    }
}

/// A tensor in a request (OIP `request_input`). With the binary-tensor extension the data
/// follows the JSON header instead, `parameters.binary_data_size` gives its length in
/// bytes and `data` is absent.
#[derive(Serialize, ToSchema)]
#[schema(as = request_input)]
pub struct RequestTensor {
    pub name: String,
    /// The shape, batch dimension included.
    pub shape: Vec<i64>,
    /// BOOL, UINT8…UINT64, INT8…INT64, FP16, FP32, FP64 or BYTES.
    pub datatype: String,
    #[schema(schema_with = TensorData::schema, required = false)]
    pub data: TensorData,
    #[schema(schema_with = Parameters::schema, required = false)]
    pub parameters: Parameters,
}

/// An output the client asks for (OIP `request_output`; all outputs when the list is
/// absent).
#[derive(Serialize, ToSchema)]
#[schema(as = request_output)]
pub struct RequestedOutput {
    pub name: String,
    /// `{"binary_data": true}` returns this output as raw bytes after the JSON header.
    #[schema(schema_with = Parameters::schema, required = false)]
    pub parameters: Parameters,
}

/// `POST /v2/models/{model}/infer` body (OIP `inference_request`): JSON, or JSON header
/// + binary tensors with `Inference-Header-Content-Length`.
#[derive(Serialize, ToSchema)]
#[schema(as = inference_request)]
pub struct InferRequest {
    /// Echoed in the response (vigil makes one up when it is absent or `null`).
    #[schema(required = false, nullable)]
    pub id: String,
    pub inputs: Vec<RequestTensor>,
    /// `null` is read as absent.
    #[schema(required = false, nullable)]
    pub outputs: Vec<RequestedOutput>,
    /// `{"binary_data_output": true}` returns every output as raw bytes.
    #[schema(schema_with = Parameters::schema, required = false)]
    pub parameters: Parameters,
}

/// A tensor in a response (OIP `response_output`). `data` is absent when the output is
/// sent as binary data (then `parameters.binary_data_size` gives its length).
#[derive(Serialize, ToSchema)]
#[schema(as = response_output)]
pub struct ResponseTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[schema(schema_with = TensorData::schema, required = false)]
    pub data: TensorData,
    #[schema(schema_with = Parameters::schema, required = false)]
    pub parameters: Parameters,
}

/// OIP `inference_response`.
#[derive(Serialize, ToSchema)]
#[schema(as = inference_response)]
pub struct InferResponse {
    #[schema(required = false)]
    pub id: String,
    pub model_name: String,
    /// The version that answered (the rollout picks it unless the path pins one).
    pub model_version: String,
    pub outputs: Vec<ResponseTensor>,
    #[schema(schema_with = Parameters::schema, required = false)]
    pub parameters: Parameters,
}

/// OIP `metadata_tensor`.
#[derive(Serialize, ToSchema)]
#[schema(as = metadata_tensor)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// -1 for a dynamic dimension.
    pub shape: Vec<i64>,
}

/// OIP `metadata_model_response`.
#[derive(Serialize, ToSchema)]
#[schema(as = metadata_model_response)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    /// `onnxruntime_onnx`, Triton's name for an ONNX model, whichever engine runs it.
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// OIP `metadata_server_response`.
#[derive(Serialize, ToSchema)]
#[schema(as = metadata_server_response)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    /// The protocol extensions served.
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`.
#[derive(Serialize, ToSchema)]
pub struct Live {
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

/// `GET /v2/models/{model}[/versions/{version}]/ready`.
#[derive(Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
    /// The version asked about, when the path names one.
    #[schema(required = false)]
    pub version: String,
}

/// An input or output in Triton's model configuration.
#[derive(Serialize, ToSchema)]
pub struct ConfigTensor {
    pub name: String,
    /// Triton's `data_type` (`TYPE_FP32`, …).
    pub data_type: String,
    /// Without the batch dimension when `max_batch_size > 0`; -1 for a dynamic one.
    pub dims: Vec<i64>,
}

/// `instance_group` of Triton's model configuration.
#[derive(Serialize, ToSchema)]
pub struct InstanceGroup {
    pub count: u64,
    pub kind: String,
}

/// `dynamic_batching` of Triton's model configuration, as in force.
#[derive(Serialize, ToSchema)]
pub struct DynamicBatching {
    /// vigil's: the largest batch the batcher forms.
    pub max_batch_size: u64,
    pub max_queue_delay_microseconds: u64,
    pub preferred_batch_size: Vec<u64>,
    pub max_queue_size: u64,
    pub default_queue_policy: QueuePolicy,
}

#[derive(Serialize, ToSchema)]
pub struct QueuePolicy {
    pub max_queue_size: u64,
}

/// A parameter of Triton's model configuration.
#[derive(Serialize, ToSchema)]
pub struct ConfigParameter {
    pub string_value: String,
}

/// vigil's own: where compute runs (inline on the request's thread, or the worker pool).
#[derive(Serialize, ToSchema)]
pub struct ConfigExecution {
    /// `auto`, `inline` or `pool`, as configured.
    pub mode: String,
    /// `inline` or `pool`, as decided.
    pub in_force: String,
}

/// `GET /v2/models/{model}[/versions/{version}]/config`: Triton's model configuration
/// (its JSON form), with vigil's own `execution` and `ignored`.
#[derive(Serialize, ToSchema)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    /// The engine that runs it here (`tract` or `ort`).
    pub backend: String,
    pub version: String,
    /// Triton's meaning: `> 0` says the first dimension is the batch and `dims` leave it out.
    pub max_batch_size: u64,
    pub input: Vec<ConfigTensor>,
    pub output: Vec<ConfigTensor>,
    /// `{"latest": {"num_versions": n}}`, `{"specific": {"versions": [..]}}` or `{"all": {}}`.
    #[schema(value_type = Object)]
    pub version_policy: (),
    pub instance_group: Vec<InstanceGroup>,
    #[schema(required = false)]
    pub parameters: BTreeMap<String, ConfigParameter>,
    /// Fields of `config.pbtxt` vigil read but does not act on.
    #[schema(required = false)]
    pub ignored: Vec<String>,
    pub execution: ConfigExecution,
    /// Present when requests are batched.
    #[schema(required = false)]
    pub dynamic_batching: DynamicBatching,
}

/// A count and the time it took, in Triton's statistics.
#[derive(Serialize, ToSchema)]
pub struct DurationStat {
    pub count: u64,
    pub ns: u64,
}

/// `inference_stats` of Triton's statistics extension.
#[derive(Serialize, ToSchema)]
pub struct InferenceStats {
    pub success: DurationStat,
    pub fail: DurationStat,
    pub queue: DurationStat,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
    pub cache_hit: DurationStat,
    pub cache_miss: DurationStat,
}

/// vigil's own, in a version's statistics: where compute runs and the figures it is
/// decided from (microseconds; `null` until measured).
#[derive(Serialize, ToSchema)]
pub struct ExecutionReport {
    pub configured: String,
    pub mode: String,
    pub inline_max_compute_us: u64,
    pub inline_max_elements: Option<u64>,
    /// On the pool in auto mode: a request this size or smaller that arrives while
    /// nothing else of the version is in flight runs inline (`null`: it does not).
    pub lone_inline_max_elements: Option<u64>,
    pub warmup_cpu_p90_us: Option<f64>,
    pub cpu_p50_us: Option<f64>,
    pub cpu_p90_us: Option<f64>,
    pub cpu_p99_us: Option<f64>,
    pub window_samples: u64,
    /// The lone rule's measurements, per size class run three times or more.
    pub size_classes: Vec<SizeClassReport>,
}

/// Requests of `min_elements` to `max_elements` input elements: the median CPU time of
/// the class's last five runs, for a request of `min_elements`.
#[derive(Serialize, ToSchema)]
pub struct SizeClassReport {
    pub min_elements: u64,
    pub max_elements: u64,
    pub runs: u64,
    pub median_cpu_us: f64,
}

/// One version's statistics (Triton's `model_stats` item).
#[derive(Serialize, ToSchema)]
pub struct VersionStats {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last inference (0 before the first).
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferenceStats,
    #[schema(value_type = Vec<Object>)]
    pub batch_stats: (),
    pub execution: ExecutionReport,
}

/// `GET /v2/models[/{model}[/versions/{version}]]/stats` (Triton's statistics extension).
#[derive(Serialize, ToSchema)]
pub struct ModelStats {
    pub model_stats: Vec<VersionStats>,
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
    /// The canary analysis configured (`[rollout.analysis]`), or `null`.
    #[schema(value_type = Option<Object>)]
    pub analysis: (),
}

/// `PUT /v2/models/{model}/rollout`: the fields to change (absent fields stay).
#[derive(Serialize, ToSchema)]
pub struct RolloutChange {
    #[schema(minimum = 1)]
    pub stable: Option<u64>,
    /// `null` removes the canary.
    #[schema(minimum = 1)]
    pub canary: Option<u64>,
    #[schema(maximum = 100)]
    pub weight: Option<u8>,
    /// `split` or `shadow`.
    pub mode: Option<String>,
    pub sticky_header: Option<String>,
    /// `[rollout.analysis]` keys (steps, interval, min_requests, max_wait,
    /// max_error_rate_delta, max_latency_ratio, max_output_psi, min_agreement,
    /// on_success); `null` stops the analysis.
    #[schema(value_type = Option<Object>)]
    pub analysis: (),
}

/// `GET /v2/models/{model}/rollout/analysis`: the canary analysis. `status` is `none`
/// when no analysis ran (then `configured` shows the settings); otherwise the state
/// machine's fields follow (steps, judged figures and checks, the decision).
#[derive(Serialize, ToSchema)]
pub struct Analysis {
    pub model: String,
    /// `none`, `running`, `succeeded`, `failed`, …
    pub status: String,
    /// The running step's live counts (`null` once the analysis ended).
    #[schema(value_type = Option<Object>, required = false)]
    pub current: (),
    #[schema(value_type = Option<Object>, required = false)]
    pub configured: (),
}

/// `POST /v2/models/{model}/feedback`: what became of the truths sent.
#[derive(Serialize, ToSchema)]
pub struct JoinSummary {
    pub joined: u64,
    pub late: u64,
    pub unknown: u64,
    pub invalid: u64,
}

/// Per class, in a classifier's quality window.
#[derive(Serialize, ToSchema)]
pub struct ClassQuality {
    pub class: i64,
    pub predicted: u64,
    pub actual: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

/// One version's live quality over its rolling window.
#[derive(Serialize, ToSchema)]
pub struct VersionQuality {
    pub version: u64,
    pub role: String,
    /// `classification` or `regression`.
    pub kind: String,
    pub labels_received: u64,
    pub window_rows: u64,
    /// Figures by kind (accuracy, macro_f1, classes; mae, rmse) once labelled.
    #[schema(required = false)]
    pub accuracy: Option<f64>,
    #[schema(required = false)]
    pub macro_f1: Option<f64>,
    #[schema(required = false)]
    pub classes: Vec<ClassQuality>,
    #[schema(required = false)]
    pub mae: Option<f64>,
    #[schema(required = false)]
    pub rmse: Option<f64>,
}

/// `GET /v2/models/{model}/quality` (and the drift report's `quality`).
#[derive(Serialize, ToSchema)]
pub struct QualityReport {
    /// The model's quality report is absent from `quality` unless feedback is on.
    #[schema(required = false)]
    pub model: String,
    pub enabled: bool,
    pub labels_pending: u64,
    pub joined: u64,
    pub late: u64,
    pub unknown: u64,
    pub invalid: u64,
    pub versions: Vec<VersionQuality>,
}

/// `GET /v2/models/{model}/drift`: per loaded version, its drift report and role.
#[derive(Serialize, ToSchema)]
pub struct DriftReport {
    pub model: String,
    /// `crate::monitor::VersionReport` with `role` (`stable`, `canary` or `standby`).
    #[schema(value_type = Vec<crate::monitor::VersionReport>)]
    pub versions: (),
    pub quality: QualityReport,
}

/// `POST /v2/repository/models/{model}/load` and `/unload`: an empty object.
#[derive(Serialize, ToSchema)]
pub struct Empty {}

/// `POST /v2/repository/models/{model}/load` body (Triton's repository extension):
/// `parameters.config` holds a model configuration override as a JSON string.
#[derive(Serialize, ToSchema)]
pub struct LoadRequest {
    #[schema(schema_with = Parameters::schema, required = false)]
    pub parameters: Parameters,
}

/// `POST /v2/repository/index` body.
#[derive(Serialize, ToSchema)]
pub struct IndexRequest {
    /// Only the versions that are ready.
    #[schema(required = false)]
    pub ready: bool,
}

/// `POST /v2/models/{model}/retrain` body.
#[derive(Serialize, ToSchema)]
pub struct RetrainRequest {
    /// Why (at most 1000 bytes); carried in the event.
    #[schema(required = false, max_length = 1000)]
    pub reason: Option<String>,
}

/// `POST /v2/models/{model}/retrain`: the event created.
#[derive(Serialize, ToSchema)]
pub struct EventCreated {
    pub event_id: String,
}

/// `POST /v2/retrain/dead-letters/{id}/replay`.
#[derive(Serialize, ToSchema)]
pub struct Replayed {
    pub event_id: String,
    /// `pending`.
    pub state: String,
}

/// `GET /v2/retrain/events`: the outbox by state.
#[derive(Serialize, ToSchema)]
pub struct RetrainEvents {
    pub pending: Vec<crate::retrain::EventRecord>,
    pub delivered: Vec<crate::retrain::EventRecord>,
    pub dead_letters: Vec<crate::retrain::EventRecord>,
}

/// What became of one alert of an Alertmanager webhook.
#[derive(Serialize, ToSchema)]
pub struct AlertResult {
    pub fingerprint: String,
    pub model: String,
    #[schema(required = false)]
    pub version: String,
    /// `created`, `duplicate`, `cooldown`, `no_hook` or `skipped`.
    pub outcome: String,
    /// Why it was skipped.
    #[schema(required = false)]
    pub reason: String,
    #[schema(required = false)]
    pub event_id: Option<String>,
}

/// `POST /v2/retrain/alertmanager`.
#[derive(Serialize, ToSchema)]
pub struct AlertResults {
    pub alerts: Vec<AlertResult>,
}

/// Alertmanager's webhook payload (version 4), the fields vigil reads.
#[derive(Serialize, ToSchema)]
pub struct AlertmanagerPayload {
    /// `"4"`.
    pub version: String,
    #[schema(value_type = Vec<Object>)]
    pub alerts: (),
}

/// `POST /v2/models/{model}/feedback`: one item, or an array of them.
#[derive(Serialize, ToSchema)]
pub struct FeedbackItem {
    /// The id of the inference request whose prediction this labels.
    pub id: String,
    /// `outputs[0].data` holds the true values (numbers or booleans, nested arrays
    /// flattened).
    pub outputs: Vec<FeedbackOutput>,
}

/// An output's true values; its other fields (`name`, …) are not read.
#[derive(Serialize, ToSchema)]
pub struct FeedbackOutput {
    #[schema(schema_with = TensorData::schema)]
    pub data: TensorData,
}

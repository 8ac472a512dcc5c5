//! Read-only endpoints about the server and its models: health and readiness, metadata,
//! Triton's model configuration and statistics, drift reports, and `/metrics`. Never
//! imports the router or another handler room.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::schema;
use super::state::{entry, target, AppState};
use crate::config::VersionPolicy;
use crate::serving::ServedVersion;

/// The extensions of the protocol this server implements, as `GET /v2` lists them.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

#[utoipa::path(get, path = "/v2", tag = "metadata", responses((status = 200, description = "Name, version and protocol extensions", body = schema::ServerMetadata)))]
pub(super) async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "vigil",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

/// The OIP specification's server-metadata path (`GET /v2/`): the same answer as `/v2`.
#[utoipa::path(get, path = "/v2/", tag = "metadata", responses((status = 200, description = "Name, version and protocol extensions (the same as GET /v2)", body = schema::ServerMetadata)))]
pub(super) async fn server_metadata_oip() -> Json<Value> {
    server_metadata().await
}

#[utoipa::path(get, path = "/v2/health/live", tag = "health", responses((status = 200, description = "The process is up", body = schema::Live)))]
pub(super) async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "health", responses((status = 200, description = "Every model has a version to serve", body = schema::Ready), (status = 503, description = "Starting, shutting down, or a model has nothing to serve", body = schema::Ready)))]
pub(super) async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.server.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

fn tensor_specs(specs: &[crate::tensor::spec::TensorSpec]) -> Value {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape }))
        .collect()
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "metadata", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Inputs and outputs of the version unpinned requests go to", body = schema::ModelMetadata), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn model_metadata(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (model, version) = target(&p)?;
    let entry = entry(&s.server, model)?;
    let v = s.server.resolve(model, version)?;
    Ok(Json(json!({
        "name": entry.name,
        "versions": entry.versions.keys().map(u64::to_string).collect::<Vec<_>>(),
        // Triton's name for an ONNX model, whichever engine runs it here.
        "platform": "onnxruntime_onnx",
        "inputs": tensor_specs(&v.signature.inputs),
        "outputs": tensor_specs(&v.signature.outputs),
    })))
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "health", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Ready", body = schema::ModelReady), (status = 503, description = "Not ready", body = schema::ModelReady), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn model_ready(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (model, version) = target(&p)?;
    let entry = entry(&s.server, model)?;
    let ready = match version {
        Some(v) => entry.versions.contains_key(&v),
        None => entry.is_ready(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({ "name": model, "ready": ready });
    if let Some(v) = version {
        body["version"] = json!(v.to_string());
    }
    Ok((status, Json(body)).into_response())
}

/// Inputs or outputs as Triton's configuration shows them: with `batched`, the batch
/// dimension (the first) is left out of `dims`, as `max_batch_size > 0` means in Triton.
fn config_io(specs: &[crate::tensor::spec::TensorSpec], batched: bool) -> Value {
    specs
        .iter()
        .map(|s| {
            let dims = crate::serving::triton_io::config_dims(s, batched);
            json!({ "name": s.name, "data_type": s.datatype.triton_config_name(), "dims": dims })
        })
        .collect()
}

fn version_policy_json(policy: Option<VersionPolicy>) -> Value {
    match policy {
        Some(VersionPolicy::All) => json!({ "all": {} }),
        Some(VersionPolicy::Specific(v)) => json!({ "specific": { "versions": v } }),
        Some(VersionPolicy::Latest(n)) => json!({ "latest": { "num_versions": n } }),
        None => json!({ "latest": { "num_versions": 1 } }),
    }
}

#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "metadata", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Triton model configuration, with dynamic_batching in force", body = schema::ModelConfig), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn model_config(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (model, version) = target(&p)?;
    let entry = entry(&s.server, model)?;
    let v = s.server.resolve(model, version)?;
    let triton = entry.config.triton.as_ref();
    let b = v.batcher.settings();
    // Triton's meaning: `max_batch_size > 0` says the first dimension is the batch and
    // `dims` leave it out.
    let max_batch_size = crate::serving::triton_io::config_max_batch_size(triton, &v);
    let batched = max_batch_size > 0;
    let mut config = json!({
        "name": model,
        "platform": "onnxruntime_onnx",
        "backend": v.engine.as_str(),
        "version": v.version.to_string(),
        "max_batch_size": max_batch_size,
        "input": config_io(&v.signature.inputs, batched),
        "output": config_io(&v.signature.outputs, batched),
        "version_policy": version_policy_json(entry.config.version_policy.policy().ok()),
        "instance_group": [{
            "count": triton.and_then(|t| t.instance_count).unwrap_or(1),
            "kind": "KIND_CPU",
        }],
    });
    if let Some(t) = triton {
        config["parameters"] = t
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), json!({ "string_value": v })))
            .collect::<serde_json::Map<_, _>>()
            .into();
        if !t.ignored.is_empty() {
            // vigil's own: fields of config.pbtxt it read but does not act on.
            config["ignored"] = json!(t.ignored);
        }
    }
    config["execution"] = json!({
        "mode": v.exec.report().configured,
        "in_force": if v.exec.is_inline() { "inline" } else { "pool" },
    });
    if b.max_batch > 1 {
        // Triton's field names (and vigil's `max_batch_size`, the largest batch formed).
        config["dynamic_batching"] = json!({
            "max_batch_size": b.max_batch,
            "max_queue_delay_microseconds": b.delay.as_micros() as u64,
            "preferred_batch_size": b.preferred,
            "max_queue_size": b.max_queue,
            "default_queue_policy": { "max_queue_size": b.max_queue },
        });
    }
    Ok(Json(config))
}

fn duration_stat(count: u64, ns: u64) -> Value {
    json!({ "count": count, "ns": ns })
}

fn version_stats(v: &ServedVersion) -> Value {
    let st = v.stats.snapshot();
    json!({
        "name": v.model,
        "version": v.version.to_string(),
        "last_inference": st.last_inference_ms,
        "inference_count": st.inference_count,
        "execution_count": st.success_count,
        "inference_stats": {
            "success": duration_stat(st.success_count, st.success_ns),
            "fail": duration_stat(st.fail_count, 0),
            "queue": duration_stat(st.success_count, st.queue_ns),
            "compute_input": duration_stat(st.success_count, 0),
            "compute_infer": duration_stat(st.success_count, st.compute_ns),
            "compute_output": duration_stat(st.success_count, 0),
            "cache_hit": duration_stat(0, 0),
            "cache_miss": duration_stat(0, 0),
        },
        "batch_stats": [],
        // vigil's own: where compute runs and the figures it is decided from.
        "execution": v.exec.report(),
    })
}

#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "metadata", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Triton statistics of every loaded version", body = schema::ModelStats), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn model_stats(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (model, version) = target(&p)?;
    let table = s.server.table();
    let stats: Vec<Value> = if model.is_empty() {
        table
            .models
            .values()
            .flat_map(|e| e.versions.values().map(|v| version_stats(v)))
            .collect()
    } else {
        let entry = entry(&s.server, model)?;
        match version {
            Some(_) => vec![version_stats(&*s.server.resolve(model, version)?)],
            None => entry.versions.values().map(|v| version_stats(v)).collect(),
        }
    };
    Ok(Json(json!({ "model_stats": stats })))
}

#[utoipa::path(get, path = "/metrics", tag = "metadata", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"), (status = 401, description = "Missing or wrong --metrics-token")))]
pub(super) async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.server
        .metrics
        .queue_depth
        .set(s.server.queue_depth() as i64);
    for e in s.server.table().models.values() {
        for v in e.versions.values() {
            v.metrics.inline.set(i64::from(v.exec.is_inline()));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.server.metrics.render(),
    )
}

#[utoipa::path(get, path = "/v2/models/{model}/drift", tag = "drift", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Drift state, last window and time line of every loaded version", body = schema::DriftReport), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn drift_report(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&s.server, &model)?;
    let versions: Vec<_> = entry
        .versions
        .values()
        .map(|v| {
            let mut r = serde_json::to_value(v.monitor.report()).expect("report serialises");
            r["role"] = json!(if Some(v.version) == entry.stable {
                "stable"
            } else if Some(v.version) == entry.canary {
                "canary"
            } else {
                "standby"
            });
            r
        })
        .collect();
    let quality = json!(entry.feedback.report());
    Ok(Json(
        json!({ "model": model, "versions": versions, "quality": quality }),
    ))
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "metadata", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Inputs and outputs of this version", body = schema::ModelMetadata), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn version_metadata(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_metadata(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "health", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Loaded", body = schema::ModelReady), (status = 503, description = "Not loaded", body = schema::ModelReady), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn version_ready(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    model_ready(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/config", tag = "metadata", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Triton model configuration of this version", body = schema::ModelConfig), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn version_config(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_config(state, path).await
}

#[utoipa::path(get, path = "/v2/models/stats", tag = "metadata", responses((status = 200, description = "Triton statistics of every loaded version of every model", body = schema::ModelStats)))]
pub(super) async fn all_stats(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_stats(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/stats", tag = "metadata", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Triton statistics of this version", body = schema::ModelStats), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn pinned_version_stats(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_stats(state, path).await
}

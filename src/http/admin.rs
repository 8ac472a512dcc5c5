//! The control plane for models: Triton's repository extension (index, load, unload)
//! and the rollout (read, change, promote, roll back). Reads and changes go through
//! `serving`; never imports the router or another handler room.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::schema;
use super::state::{blocking, entry, AppState};
use crate::config::{AnalysisConfig, RolloutMode};
use crate::serving::ModelEntry;

#[utoipa::path(post, path = "/v2/repository/index", tag = "repository", request_body(description = "Optional {\"ready\": true}", content((Option<schema::IndexRequest> = "application/json"))), responses((status = 200, description = "Every model and version on disk and its state", body = Vec<crate::serving::reload::IndexRow>), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody)))]
pub(super) async fn repository_index(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let ready_only = if body.is_empty() {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid index request JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            ApiError::BadRequest(format!("the index request must be a JSON object, got {v}"))
        })?;
        match obj.get("ready") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "'ready' must be true or false, got {other}"
                )))
            }
        }
    };
    let reloader = s.reloader.clone();
    let rows = blocking(move || reloader.index()).await?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| !ready_only || r.state == "READY")
        .collect();
    Ok(Json(serde_json::to_value(rows).expect("rows serialise")))
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "repository", params(("model" = String, Path, description = "Model name")), request_body(description = "Optional: {\"parameters\": {\"config\": \"<model configuration as JSON>\"}}, Triton's override", content((Option<schema::LoadRequest> = "application/json"))), responses((status = 200, description = "Loaded", body = schema::Empty), (status = 400, description = "Load failed", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn repository_load(
    State(s): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let config = load_override(&model, &body)?;
    let reloader = s.reloader.clone();
    blocking(move || reloader.load_with(&model, config)).await??;
    Ok(Json(json!({})))
}

/// The Triton configuration a load request carries (`{"parameters": {"config": "<JSON>"}}`,
/// as `tritonclient`'s `load_model(name, config=...)` sends it), if any.
fn load_override(
    model: &str,
    body: &[u8],
) -> Result<Option<crate::config::TritonConfig>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // Triton's text first, vigil's reason after.
    let bad = |why: String| {
        ApiError::BadRequest(format!(
            "failed to load '{model}', failed to parse the model configuration override: {why}"
        ))
    };
    let req: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let req = req
        .as_object()
        .ok_or_else(|| bad(format!("the request must be a JSON object, got {req}")))?;
    let params = match req.get("parameters") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(p)) => p,
        Some(other) => return Err(bad(format!("parameters must be an object, got {other}"))),
    };
    let Some(config) = params.get("config") else {
        return Ok(None);
    };
    let text = config
        .as_str()
        .ok_or_else(|| bad("parameters.config must be a string holding JSON".into()))?;
    crate::config::TritonConfig::load_override(model, text)
        .map(Some)
        .map_err(ApiError::BadRequest)
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "repository", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Unloaded", body = schema::Empty), (status = 400, description = "Not allowed in this model-control mode", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn repository_unload(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reloader = s.reloader.clone();
    blocking(move || reloader.unload(&model)).await??;
    Ok(Json(json!({})))
}

fn rollout_json(entry: &ModelEntry) -> Value {
    json!({
        "model": entry.name,
        "stable": entry.stable,
        "canary": entry.canary,
        "weight": if entry.canary.is_some() { entry.rollout.weight } else { 0 },
        "mode": entry.rollout.mode.as_str(),
        "sticky_header": entry.rollout.sticky_header,
        "versions": entry.versions.keys().collect::<Vec<_>>(),
        "analysis": entry.rollout.analysis,
    })
}

#[utoipa::path(get, path = "/v2/models/{model}/rollout", tag = "rollout", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Current rollout", body = schema::RolloutState), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn rollout_get(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    current_entry_json(&s, &model)
}

fn current_entry_json(s: &AppState, model: &str) -> Result<Json<Value>, ApiError> {
    let entry = entry(&s.server, model)?;
    Ok(Json(rollout_json(&entry)))
}

#[utoipa::path(put, path = "/v2/models/{model}/rollout", tag = "rollout", params(("model" = String, Path, description = "Model name")), request_body(content = schema::RolloutChange, content_type = "application/json"), responses((status = 200, description = "The rollout now in force (stored durably)", body = schema::RolloutState), (status = 400, description = "Invalid change; nothing changed", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn rollout_put(
    State(s): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid rollout JSON: {e}")))?;
    let obj = req
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("the rollout must be a JSON object".into()))?;
    for key in obj.keys() {
        if ![
            "stable",
            "canary",
            "weight",
            "mode",
            "sticky_header",
            "analysis",
        ]
        .contains(&key.as_str())
        {
            return Err(ApiError::BadRequest(format!(
                "unknown rollout field '{key}' (expected stable, canary, weight, mode, sticky_header, analysis)"
            )));
        }
    }
    let analysis = match obj.get("analysis") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(
            serde_json::from_value::<AnalysisConfig>(v.clone())
                .map_err(|e| ApiError::BadRequest(format!("invalid analysis: {e}")))?,
        )),
    };
    let version_field = |key: &str| -> Result<Option<Option<u64>>, ApiError> {
        match obj.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(Some(n)))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "'{key}' must be a positive version number or null"
                    ))
                }),
        }
    };
    let stable = version_field("stable")?;
    let canary = version_field("canary")?;
    let weight = match obj.get("weight") {
        None => None,
        Some(v) => Some(v.as_u64().filter(|&w| w <= 100).ok_or_else(|| {
            ApiError::BadRequest(format!("weight must be an integer in 0..=100, got {v}"))
        })? as u8),
    };
    let mode = match obj.get("mode") {
        None => None,
        Some(v) => Some(match v.as_str() {
            Some("split") => RolloutMode::Split,
            Some("shadow") => RolloutMode::Shadow,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "mode must be \"split\" or \"shadow\", got {v}"
                )))
            }
        }),
    };
    let sticky = match obj.get("sticky_header") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| ApiError::BadRequest("sticky_header must be a string".into()))?
                .to_ascii_lowercase(),
        ),
    };
    s.server.set_rollout(&model, |entry| {
        // Only what the change names changes: an absent field keeps its value, unset
        // (null) included.
        let mut next = entry.rollout.clone();
        if let Some(s) = stable {
            next.stable = s;
        }
        if let Some(c) = canary {
            next.canary = c;
        }
        if let Some(w) = weight {
            next.weight = w;
        }
        if let Some(m) = mode {
            next.mode = m;
        }
        if let Some(h) = sticky {
            next.sticky_header = h;
        }
        if let Some(a) = analysis {
            next.analysis = a;
        }
        Ok(next)
    })?;
    current_entry_json(&s, &model)
}

#[utoipa::path(post, path = "/v2/models/{model}/rollout/promote", tag = "rollout", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "The canary is now stable", body = schema::RolloutState), (status = 400, description = "No canary", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn rollout_promote(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.server.set_rollout(&model, |entry| {
        let canary = entry
            .canary
            .ok_or_else(|| format!("model '{model}' has no canary to promote"))?;
        let mut next = entry.rollout.clone();
        next.stable = Some(canary);
        next.canary = None;
        next.weight = 0;
        Ok(next)
    })?;
    current_entry_json(&s, &model)
}

#[utoipa::path(post, path = "/v2/models/{model}/rollout/rollback", tag = "rollout", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "The canary is removed", body = schema::RolloutState), (status = 400, description = "No canary", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody)))]
pub(super) async fn rollout_rollback(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.server.set_rollout(&model, |entry| {
        if entry.canary.is_none() && entry.rollout.canary.is_none() {
            return Err(format!("model '{model}' has no canary to roll back"));
        }
        // The stable version that served stays pinned: the rejected canary is often the
        // highest version, which an unpinned stable would otherwise pick up.
        let mut next = entry.rollout.clone();
        next.stable = entry.stable;
        next.canary = None;
        next.weight = 0;
        Ok(next)
    })?;
    current_entry_json(&s, &model)
}

#[utoipa::path(get, path = "/v2/models/{model}/rollout/analysis", tag = "rollout", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "The canary analysis: status, current step and its live request counts, every judged step's figures and checks, the decision", body = schema::Analysis), (status = 404, description = "No such model", body = schema::ErrorBody)))]
pub(super) async fn rollout_analysis(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&s.server, &model)?;
    let Some((state, counts, elapsed)) = s.server.analysis(&model) else {
        return Ok(Json(json!({
            "model": model,
            "status": "none",
            "configured": entry.rollout.analysis,
        })));
    };
    let running = state.status == crate::serving::analysis::Status::Running;
    let mut v = serde_json::to_value(&state).expect("analysis state serialises");
    let obj = v.as_object_mut().expect("an object");
    obj.insert("model".into(), json!(model));
    obj.insert(
        "started_at".into(),
        json!(crate::retrain::rfc3339(state.started_at)),
    );
    obj.insert(
        "step_started_at".into(),
        json!(crate::retrain::rfc3339(state.step_started_at)),
    );
    obj.insert("step".into(), json!(state.step + 1));
    obj.insert("step_count".into(), json!(state.step_count()));
    obj.insert(
        "current".into(),
        if running {
            json!({
                "step": state.step + 1,
                "weight": state.weight(),
                "stable": {"requests": counts[0].0, "errors": counts[0].1},
                "canary": {"requests": counts[1].0, "errors": counts[1].1},
                "collecting_seconds": elapsed,
            })
        } else {
            Value::Null
        },
    );
    Ok(Json(v))
}

//! The retrain hook's control endpoints: a manual trigger, Alertmanager's webhook, the
//! outbox's events and dead-letter replay. Events go to `retrain` through the server's
//! retrainer; never imports the router or another handler room.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::schema;
use super::state::{blocking, entry, AppState};

#[utoipa::path(post, path = "/v2/models/{model}/retrain", tag = "retrain", params(("model" = String, Path, description = "Model name")), request_body(description = "Optional {\"reason\": \"...\"}", content((Option<schema::RetrainRequest> = "application/json"))), responses((status = 202, description = "Event created in the durable outbox; body carries event_id", body = schema::EventCreated), (status = 400, description = "No retrain hook configured, or a bad reason", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody), (status = 500, description = "The event could not be stored (a full disk, say); nothing was accepted", body = schema::ErrorBody)))]
pub(super) async fn retrain_trigger(
    State(s): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let entry = entry(&s.server, &model)?;
    let reason = if body.is_empty() {
        String::new()
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid retrain request JSON: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::BadRequest(format!(
                "the retrain request must be a JSON object ({{\"reason\": \"...\"}}), got {v}"
            )));
        }
        match v.get("reason") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(r)) if r.len() <= 1000 => r.clone(),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "reason must be a string of at most 1000 bytes".into(),
                ))
            }
        }
    };
    let server = s.server.clone();
    let version = entry.stable;
    let id = blocking(move || server.manual_retrain(&model, version, &reason))
        .await?
        .map_err(|e| match e {
            crate::retrain::RetrainError::NoTarget(_) => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "event_id": id }))).into_response())
}

#[utoipa::path(post, path = "/v2/retrain/alertmanager", tag = "retrain", request_body(description = "Alertmanager's webhook payload (version 4); firing alerts with a `model` label become drift events", content((schema::AlertmanagerPayload = "application/json"))), responses((status = 200, description = "What became of each alert: created, duplicate, cooldown, no_hook or skipped (with why)", body = schema::AlertResults), (status = 400, description = "Not an Alertmanager version 4 payload", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody), (status = 500, description = "The event could not be stored; Alertmanager retries", body = schema::ErrorBody)))]
pub(super) async fn retrain_alertmanager(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid Alertmanager payload JSON: {e}")))?;
    if payload.get("version").and_then(Value::as_str) != Some("4") {
        return Err(ApiError::BadRequest(
            "expected Alertmanager's webhook payload with \"version\": \"4\"".into(),
        ));
    }
    let alerts = payload
        .get("alerts")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadRequest("the payload has no \"alerts\" list".into()))?;
    let mut results = Vec::with_capacity(alerts.len());
    for a in alerts {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
        let labels = a.get("labels");
        let alert = crate::retrain::FleetAlert {
            alertname: text(labels.and_then(|l| l.get("alertname"))),
            model: text(labels.and_then(|l| l.get("model"))),
            version: text(labels.and_then(|l| l.get("version"))),
            fingerprint: text(a.get("fingerprint")),
            starts_at: text(a.get("startsAt")),
            ends_at: text(a.get("endsAt")),
            summary: text(a.get("annotations").and_then(|n| n.get("summary"))),
            data_window: text(a.get("annotations").and_then(|n| n.get("data_window"))),
        };
        let status = text(a.get("status"));
        let skip = if status != "firing" {
            Some(format!("status is '{status}', not 'firing'"))
        } else if alert.model.is_empty() {
            Some("the alert has no 'model' label".to_string())
        } else if !crate::repository::is_model_name(&alert.model) {
            // It would reach the payload directory's paths and the event's globs.
            Some(format!(
                "the 'model' label {:?} is not a model name (a leading '.', '/' or '\\')",
                alert.model
            ))
        } else if alert.fingerprint.is_empty() || alert.starts_at.is_empty() {
            Some("the alert has no fingerprint or startsAt".to_string())
        } else {
            None
        };
        // The range of the data behind the alert (its event's `data`).
        let range = match skip {
            Some(why) => Err(why),
            None => alert
                .range(crate::retrain::now_unix())
                .map_err(|e| e.to_string()),
        };
        let range = match range {
            Ok(range) => range,
            Err(why) => {
                results.push(
                    json!({"fingerprint": alert.fingerprint, "model": alert.model,
                    "outcome": "skipped", "reason": why}),
                );
                continue;
            }
        };
        let cooldown = s.server.retrain_config(&alert.model).cooldown();
        let server = s.server.clone();
        let a2 = alert.clone();
        let outcome = blocking(move || server.fleet_retrain(&a2, range, cooldown))
            .await?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        use crate::retrain::AlertOutcome;
        let (name, id) = match outcome {
            AlertOutcome::Created(id) => ("created", Some(id)),
            AlertOutcome::Duplicate(id) => ("duplicate", Some(id)),
            AlertOutcome::Cooldown => ("cooldown", None),
            AlertOutcome::NoHook => ("no_hook", None),
        };
        results.push(
            json!({"fingerprint": alert.fingerprint, "model": alert.model,
            "version": alert.version, "outcome": name, "event_id": id}),
        );
    }
    Ok(Json(json!({ "alerts": results })))
}

#[utoipa::path(get, path = "/v2/retrain/events", tag = "retrain", responses((status = 200, description = "Pending, delivered and dead-lettered events", body = schema::RetrainEvents), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody)))]
pub(super) async fn retrain_events(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let records = s.server.retrainer.list();
    let by_state = |st: crate::retrain::EventState| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r.state == st)
            .map(|r| serde_json::to_value(r).expect("records serialise"))
            .collect()
    };
    Ok(Json(json!({
        "pending": by_state(crate::retrain::EventState::Pending),
        "delivered": by_state(crate::retrain::EventState::Delivered),
        "dead_letters": by_state(crate::retrain::EventState::Dead),
    })))
}

#[utoipa::path(post, path = "/v2/retrain/dead-letters/{id}/replay", tag = "retrain", params(("id" = String, Path, description = "Event id")), responses((status = 200, description = "Queued again", body = schema::Replayed), (status = 404, description = "No such dead letter", body = schema::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = schema::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = schema::ErrorBody)))]
pub(super) async fn retrain_replay(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let retrainer = s.server.retrainer.clone();
    let id2 = id.clone();
    blocking(move || retrainer.replay(&id2))
        .await?
        .map_err(|e| match e {
            crate::retrain::RetrainError::NoSuchEvent(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok(Json(json!({ "event_id": id, "state": "pending" })))
}

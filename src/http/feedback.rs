//! Ground truth: `POST /v2/models/{model}/feedback` joins labels to the predictions of
//! earlier requests by their id, and `GET /v2/models/{model}/quality` reports the live
//! quality they measure. The body is one `{"id", "outputs": [{"name", "data"}]}` or an
//! array of them; every item is checked before any is joined. The join itself and the
//! quality windows are `payload::feedback`'s.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::body::read_request_body;
use super::error::ApiError;
use super::schema;
use super::state::{entry, AppState};
use crate::payload::Truth;

/// The truths in one feedback item: `outputs[0].data` (nested arrays flattened), numbers.
fn truth(item: &Value, at: usize) -> Result<Truth, ApiError> {
    let bad = |m: &str| ApiError::BadRequest(format!("feedback item {at}: {m}"));
    let id = item
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'id' (a string: the request's id) is missing"))?;
    let data = item
        .get("outputs")
        .and_then(Value::as_array)
        .and_then(|o| o.first())
        .and_then(|o| o.get("data"))
        .ok_or_else(|| bad("'outputs[0].data' (the true values) is missing"))?;
    if !data.is_array() {
        return Err(bad(&format!(
            "'outputs[0].data' must be an array of the true values, got {data}"
        )));
    }
    let mut values = Vec::new();
    let mut stack = vec![data];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter().rev()),
            Value::Number(n) => {
                values.push(n.as_f64().ok_or_else(|| bad("a value is not a number"))?)
            }
            Value::Bool(b) => values.push(f64::from(u8::from(*b))),
            other => return Err(bad(&format!("true values must be numbers, got {other}"))),
        }
    }
    Ok(Truth {
        id: id.to_string(),
        values,
    })
}

#[utoipa::path(post, path = "/v2/models/{model}/feedback", tag = "quality", params(("model" = String, Path, description = "Model name")), request_body(description = "One {\"id\": \"<request id>\", \"outputs\": [{\"name\": \"label\", \"data\": [...]}]} or an array of them", content = schema::FeedbackItem, content_type = "application/json"), responses((status = 200, description = "How many truths were joined, late, unknown or invalid", body = schema::JoinSummary), (status = 400, description = "Malformed body, or the model keeps no predictions ([logging] feedback_window)", body = schema::ErrorBody), (status = 404, description = "No such model", body = schema::ErrorBody)))]
pub(super) async fn feedback(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&s.server, &model)?;
    if !entry.feedback.enabled() {
        return Err(ApiError::BadRequest(format!(
            "model '{model}' keeps no predictions for feedback: set [logging] feedback_window in its config.toml"
        )));
    }
    let body = read_request_body(&headers, body, s.opts.max_body_bytes).await?;
    let doc: Value = serde_json::from_slice(body.bytes())
        .map_err(|e| ApiError::BadRequest(format!("the feedback body is not JSON: {e}")))?;
    let items: Vec<&Value> = match &doc {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    let truths = items
        .iter()
        .enumerate()
        .map(|(i, v)| truth(v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let server = s.server.clone();
    let summary =
        super::state::blocking(move || server.feedback(&model, &entry.feedback, truths)).await?;
    Ok(Json(json!(summary)))
}

#[utoipa::path(get, path = "/v2/models/{model}/quality", tag = "quality", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Labels received and pending, and per version the live quality over its rolling window", body = schema::QualityReport), (status = 404, description = "No such model", body = schema::ErrorBody)))]
pub(super) async fn quality(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&s.server, &model)?;
    let mut r = json!(entry.feedback.report());
    r["model"] = json!(model);
    Ok(Json(r))
}

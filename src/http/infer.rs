//! Inference: `POST /v2/models/{model}[/versions/{v}]/infer`. Routes the request
//! (`serving` picks the version), reads the body within its deadline, checks and decodes
//! it with [`v2`], hands the tensors to `serving`, encodes the chosen outputs, and counts
//! the outcome. Never imports the router or another handler room.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;

use super::body::read_request_body;
use super::error::ApiError;
use super::schema;
use super::state::{parse_version, target, AppState};
use super::v2::{self, BodyBuffer};
use std::sync::Arc;

use crate::serving::{InferError, PendingRoute, Refused, Route, ServedVersion};

/// An answer's body as built here: the encoded bytes, unboxed.
type Encoded = http_body_util::Full<bytes::Bytes>;

/// What the fast path in front of the router (`listen`) answers: this room's answers
/// unboxed, its refusals in axum's `Body` (they are rare).
pub(super) type FrontBody = http_body_util::Either<Encoded, Body>;

/// The header that says how long the JSON part of a binary-tensor body is.
pub const HEADER_LEN: &str = "inference-header-content-length";

fn header_len(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    headers
        .get(HEADER_LEN)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Inference-Header-Content-Length is not a number".into())
                })
        })
        .transpose()
}

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "inference", params(("model" = String, Path, description = "Model name"), ("x-vigil-routing-key" = Option<String>, Header, description = "Sticky routing key (the header name is configurable)")), request_body(description = "A V2 request: JSON, or a JSON header followed by binary tensors (Inference-Header-Content-Length gives the header length)", content((schema::InferRequest = "application/json", example = json!({"id": "1", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})), ("application/octet-stream"))), responses((status = 200, description = "Outputs (JSON, or JSON header + binary tensors)", content((schema::InferResponse = "application/json"), ("application/octet-stream"))), (status = 400, description = "Bad request: the message says what is wrong", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody), (status = 413, description = "Body larger than --max-body-bytes", body = schema::ErrorBody), (status = 503, description = "Queue full or not ready; retry after Retry-After", body = schema::ErrorBody)))]
pub(super) async fn infer(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (model, version) = target(&p)?;
    infer_target(&s, model, version, &headers, body)
        .await
        .map(|r| r.map(Body::new))
}

/// The infer routes' paths, matched by hand for the fast path in front of the router
/// (`listen`): `/v2/models/{model}/infer` and `/v2/models/{model}/versions/{version}/infer`
/// with non-empty segments. A segment with `%` is left to the router, which decodes it.
pub(super) fn infer_route(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/v2/models/")?;
    let plain = |seg: &str| !seg.is_empty() && !seg.contains('%');
    let (model, rest) = rest.split_once('/')?;
    if !plain(model) {
        return None;
    }
    if rest == "infer" {
        return Some((model, None));
    }
    let (version, tail) = rest.strip_prefix("versions/")?.split_once('/')?;
    (tail == "infer" && plain(version)).then_some((model, Some(version)))
}

/// `POST` to an infer route, served before (and without) the router: the gate's token
/// check, then the same handler. Saves the router's work per request (its parameter map,
/// the boxed middleware futures and extensions) on the one route that carries the load.
pub(super) async fn infer_direct<B>(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: B,
) -> axum::http::Response<FrontBody>
where
    B: http_body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    use axum::response::IntoResponse;
    use http_body_util::Either;
    let refused = |r: Response| r.map(Either::Right);
    if let Err(e) = super::auth::authorize(s, super::auth::Class::Infer, headers) {
        return refused(e.into_response());
    }
    let version = match version.map(parse_version).transpose() {
        Ok(v) => v,
        Err(e) => return refused(e.into_response()),
    };
    match infer_target(s, model, version, headers, body).await {
        Ok(answer) => answer.map(Either::Left),
        Err(e) => refused(e.into_response()),
    }
}

async fn infer_target<B>(
    s: &AppState,
    model: &str,
    version: Option<u64>,
    headers: &HeaderMap,
    body: B,
) -> Result<axum::http::Response<Encoded>, ApiError>
where
    B: http_body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    let plan = s.server.plan_route(model, version, |name| {
        headers.get(name).map(|v| v.as_bytes().to_vec())
    })?;
    let start = Instant::now();
    let (served, result) = match read_infer_body(s, headers, body).await {
        // Refused before the split is decided: counted against the stable version.
        Err(e) => (plan.primary().clone(), Err(InferOnError::Api(e))),
        Ok((body, header_len)) => infer_on(s, plan, body, header_len).await,
    };
    if let Err(InferOnError::Api(ApiError::ClientClosed(why))) = &result {
        // No one is left to answer, and the request did nothing wrong: neither a
        // bad_request nor a failure in the version's statistics.
        tracing::debug!(model, reason = %why, "client left before its body arrived");
        s.server.metrics.requests_abandoned.inc();
        return Err(ApiError::ClientClosed(why.clone()));
    }
    let outcome = match &result {
        Ok(_) => crate::metrics::Outcome::Success,
        Err(InferOnError::Api(_)) => crate::metrics::Outcome::BadRequest,
        Err(InferOnError::Serving(e)) => e.outcome(),
    };
    served
        .metrics
        .count_protocol(crate::metrics::Protocol::Http, outcome);
    match &result {
        Ok(_) => {
            served.metrics.count(crate::metrics::Outcome::Success);
            served
                .metrics
                .request
                .observe(start.elapsed().as_secs_f64());
        }
        // Errors inside `serving` are already counted there.
        Err(InferOnError::Api(_)) => {
            served.metrics.count(crate::metrics::Outcome::BadRequest);
            served.stats.record_failure();
        }
        Err(InferOnError::Serving(_)) => {}
    }
    result.map_err(|e| match e {
        InferOnError::Api(a) => a,
        InferOnError::Serving(s) => s.into(),
    })
}

enum InferOnError {
    Api(ApiError),
    Serving(InferError),
}

/// The body, within `--body-timeout` and `--max-body-bytes`, and the JSON header's length.
async fn read_infer_body<B>(
    s: &AppState,
    headers: &HeaderMap,
    body: B,
) -> Result<(BodyBuffer, Option<usize>), ApiError>
where
    B: http_body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    let header_len = header_len(headers)?;
    let body = tokio::time::timeout(
        s.opts.body_timeout,
        read_request_body(headers, body, s.opts.max_body_bytes),
    )
    .await
    .map_err(|_| {
        ApiError::RequestTimeout(format!(
            "the request body did not arrive within {:?}",
            s.opts.body_timeout
        ))
    })??;
    Ok((body, header_len))
}

/// A request checked against one signature: its descriptors, and which outputs to
/// answer, in which order and encoding.
struct Accepted {
    req: v2::CheckedRequest,
    chosen: Vec<(usize, bool)>,
}

/// Checks every descriptor and every requested output against `sig` before any data is
/// decoded, so that the memory a request takes stays a small multiple of its body.
fn accept(
    body: &[u8],
    header_len: Option<usize>,
    version: &ServedVersion,
    max_elements: usize,
) -> Result<Accepted, ApiError> {
    let sig = &version.signature;
    let req = v2::check_request(&version.model, body, header_len, sig, max_elements)?;
    let chosen: Vec<(usize, bool)> = match &req.outputs {
        None => (0..sig.outputs.len())
            .map(|i| (i, req.binary_output))
            .collect(),
        Some(list) => {
            let picked = crate::serving::pick_outputs(
                sig,
                &version.model,
                list.iter().map(|o| o.name.as_str()),
            )
            .map_err(ApiError::BadRequest)?;
            picked
                .into_iter()
                .zip(list)
                .map(|(i, o)| (i, o.binary.unwrap_or(req.binary_output)))
                .collect()
        }
    };
    Ok(Accepted { req, chosen })
}

/// Routes the request through `serving`'s one routing path ([`PendingRoute::settle`]:
/// checked against the version it goes to before an open split is decided), decodes,
/// runs and encodes. Returns the version it was counted on.
async fn infer_on(
    s: &AppState,
    plan: PendingRoute,
    body: BodyBuffer,
    header_len: Option<usize>,
) -> (
    Arc<ServedVersion>,
    Result<axum::http::Response<Encoded>, InferOnError>,
) {
    let max = s.opts.max_tensor_elements;
    let (served, settled) = plan.settle(|v| accept(body.bytes(), header_len, v, max));
    let result = match settled {
        Ok((route, a)) => run(s, &route, a, body).await,
        Err(Refused::Request(e)) => Err(InferOnError::Api(e)),
        Err(Refused::Serving(e)) => Err(InferOnError::Serving(e)),
    };
    (served, result)
}

async fn run(
    s: &AppState,
    route: &Route,
    accepted: Accepted,
    mut body: BodyBuffer,
) -> Result<axum::http::Response<Encoded>, InferOnError> {
    let served = &route.version;
    let api = InferOnError::Api;
    let Accepted { req, chosen } = accepted;
    // A big body's pages are given back as they are decoded.
    let req = req.decode_releasing(&mut body).map_err(|e| api(e.into()))?;
    drop(body);
    // A logged model's requests all carry an id (the client's, else one assigned here and
    // returned), so that feedback and the payload log can name them.
    let id = req
        .id
        .or_else(|| route.wants_id().then(crate::payload::new_request_id));
    let outputs = s
        .server
        .infer_routed(route, req.inputs, id.as_deref())
        .await
        .map_err(InferOnError::Serving)?;
    let selected: Vec<_> = chosen.iter().map(|&(i, b)| (&outputs[i], b)).collect();
    let encoded = v2::encode_response(&served.model, served.version, id.as_deref(), &selected);
    let mut resp = axum::http::Response::new(Encoded::new(encoded.body.into()));
    let h = resp.headers_mut();
    match encoded.header_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LEN, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(resp)
}

#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "inference", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), request_body(description = "As for /v2/models/{model}/infer; the version is pinned (the rollout is bypassed)", content((schema::InferRequest = "application/json", example = json!({"id": "1", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})), ("application/octet-stream"))), responses((status = 200, description = "Outputs of this version", content((schema::InferResponse = "application/json"), ("application/octet-stream"))), (status = 400, description = "Bad request", body = schema::ErrorBody), (status = 404, description = "No such model or version", body = schema::ErrorBody), (status = 503, description = "Queue full or not ready", body = schema::ErrorBody)))]
pub(super) async fn version_infer(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer(state, path, headers, body).await
}

//! The HTTP front: KServe V2 REST endpoints with Triton's binary-tensor, model-configuration
//! and statistics extensions, `/metrics`, and graceful shutdown.
//!
//! Handlers only translate: bytes to tensors ([`v2`]), tensors to `serving`, results and
//! errors ([`error`]) back to bytes. No model compute happens on these async tasks.

pub mod error;
pub mod openapi;
pub mod v2;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::RolloutMode;
use crate::console::traffic::Traffic;
use crate::serving::reload::Reloader;
use crate::serving::{InferError, ModelEntry, Route, ServedVersion, Server};
pub use error::ApiError;

/// The header that says how long the JSON part of a binary-tensor body is.
pub const HEADER_LEN: &str = "inference-header-content-length";

/// Settings of the HTTP front.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub max_body_bytes: usize,
    /// Elements of all input tensors of one request together.
    pub max_tensor_elements: usize,
    /// Longest time a client may take to send a request body.
    pub body_timeout: Duration,
    /// How long in-flight requests may take to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Bearer token for endpoints that change state; `None`: loopback clients only.
    pub admin_token: Option<String>,
    /// Bearer token for inference and metadata endpoints; `None`: open.
    pub api_token: Option<String>,
    /// Bearer token for `/metrics`; `None`: open.
    pub metrics_token: Option<String>,
}

#[derive(Clone)]
struct AppState {
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    opts: Arc<HttpOptions>,
    traffic: Arc<Traffic>,
    /// This listener is bound to a loopback address: without `--admin-token` it may serve
    /// the control plane.
    control_open: bool,
    surface: Surface,
}

/// The extensions of the protocol this server implements, as `GET /v2` lists them.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

/// Which endpoints a listener serves. With `--admin-addr`, the main listener serves the
/// data plane ([`Surface::Public`]) and the admin listener the control plane and `/metrics`
/// ([`Surface::Admin`]); without it one listener serves everything ([`Surface::All`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    All,
    Public,
    Admin,
}

/// Health, metadata, inference, statistics, drift reports and the rollout state.
fn data_routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(version_config),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(pinned_version_stats),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
        .route("/v2/models/{model}/drift", get(drift_report))
        .route("/", get(console_page))
        .route("/console", get(console_alias))
        .route("/openapi.json", get(openapi_json))
        .route("/console.css", get(console_css))
        .route("/console.js", get(console_js))
        .route("/favicon.svg", get(console_icon))
        .route("/favicon.ico", get(console_icon))
}

/// The control plane: everything that changes state, the retrain outbox, and `/metrics`.
fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/v2/models/{model}/rollout/promote", post(rollout_promote))
        .route(
            "/v2/models/{model}/rollout/rollback",
            post(rollout_rollback),
        )
        .route("/v2/models/{model}/retrain", post(retrain_trigger))
        .route("/v2/retrain/events", get(retrain_events))
        .route("/v2/retrain/alertmanager", post(retrain_alertmanager))
        .route("/v2/retrain/dead-letters/{id}/replay", post(retrain_replay))
        .route("/metrics", get(metrics))
}

/// Whether a request is for the control plane (served on the admin listener when there is one).
fn is_admin_request(method: &axum::http::Method, path: &str) -> bool {
    matches!(classify(method, path), Class::Admin | Class::Metrics)
}

pub fn router(
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    opts: HttpOptions,
    surface: Surface,
    traffic: Arc<Traffic>,
    bound: std::net::SocketAddr,
) -> Router {
    let state = AppState {
        server,
        reloader,
        opts: Arc::new(opts),
        traffic,
        control_open: bound.ip().is_loopback(),
        surface,
    };
    let health = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready));
    let routes = match surface {
        Surface::All => health.merge(data_routes()).merge(admin_routes()).route(
            "/v2/models/{model}/rollout",
            get(rollout_get).put(rollout_put),
        ),
        Surface::Public => health
            .merge(data_routes())
            .route("/v2/models/{model}/rollout", get(rollout_get)),
        Surface::Admin => health.merge(admin_routes()).route(
            "/v2/models/{model}/rollout",
            get(rollout_get).put(rollout_put),
        ),
    };
    routes
        .fallback(move |req: axum::extract::Request| async move {
            unrouted(surface, req.method(), req.uri().path(), false)
        })
        .method_not_allowed_fallback(move |req: axum::extract::Request| async move {
            unrouted(surface, req.method(), req.uri().path(), true)
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// The answer to a request no route took: 404 naming the listener that serves it when it
/// is on the other one, else 404 or 405.
fn unrouted(
    surface: Surface,
    method: &axum::http::Method,
    path: &str,
    path_exists: bool,
) -> ApiError {
    match surface {
        Surface::Public if is_admin_request(method, path) => ApiError::NotFound(
            "this endpoint is served on the admin listener (--admin-addr)".into(),
        ),
        Surface::Admin if !is_admin_request(method, path) && !path.starts_with("/v2/health/") => {
            ApiError::NotFound(
                "the admin listener serves the control plane and /metrics only; \
                 inference and metadata are on the main listener"
                    .into(),
            )
        }
        _ if path_exists => ApiError::MethodNotAllowed,
        _ => ApiError::NotFound("no such endpoint".into()),
    }
}

/// Listening sockets and connection settings of [`serve`].
pub struct Listeners {
    pub main: TcpListener,
    /// `--admin-addr`: the control plane and `/metrics` on their own socket.
    pub admin: Option<TcpListener>,
    /// Longest time a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Connections served at once (both listeners together); beyond it new connections
    /// wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
}

/// Serves HTTP until `shutdown` resolves, then stops accepting, turns readiness off,
/// lets in-flight requests finish (idle keep-alive connections close at once) for at most
/// `opts.shutdown_grace`, and returns.
pub async fn serve(
    listeners: Listeners,
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    opts: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = opts.shutdown_grace;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let permits = Arc::new(tokio::sync::Semaphore::new(
        listeners.max_connections.max(1),
    ));
    let conn = ConnSettings {
        header_timeout: listeners.header_timeout,
        permits,
        graceful: graceful.clone(),
        server: server.clone(),
    };
    let mut loops = Vec::new();
    let main_surface = if listeners.admin.is_some() {
        Surface::Public
    } else {
        Surface::All
    };
    let traffic = Traffic::start(server.clone());
    let app = router(
        server.clone(),
        reloader.clone(),
        opts.clone(),
        main_surface,
        traffic.clone(),
        listeners.main.local_addr()?,
    );
    loops.push(tokio::spawn(accept_loop(
        listeners.main,
        app,
        "main",
        conn.clone(),
        stop_rx.clone(),
    )));
    if let Some(admin) = listeners.admin {
        let bound = admin.local_addr()?;
        let app = router(
            server.clone(),
            reloader,
            opts,
            Surface::Admin,
            traffic,
            bound,
        );
        loops.push(tokio::spawn(accept_loop(
            admin,
            app,
            "admin",
            conn.clone(),
            stop_rx.clone(),
        )));
    }
    drop(conn);
    shutdown.await;
    // Load balancers stop sending new requests as soon as readiness fails.
    server.set_not_ready();
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let graceful = Arc::try_unwrap(graceful)
        .unwrap_or_else(|_| unreachable!("the accept loops have ended and hold no other handle"));
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs_f64(),
            "requests still in flight at the end of the shutdown grace; stopping anyway"
        );
    }
    Ok(())
}

#[derive(Clone)]
struct ConnSettings {
    header_timeout: Duration,
    permits: Arc<tokio::sync::Semaphore>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    server: Arc<Server>,
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    name: &'static str,
    conn: ConnSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let open = conn
        .server
        .metrics
        .http_connections
        .with_label_values(&[name]);
    let waits = conn
        .server
        .metrics
        .http_connection_limit_waits
        .with_label_values(&[name]);
    loop {
        let permit = match conn.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                waits.inc();
                tracing::debug!(listener = name, "connection limit reached; not accepting");
                tokio::select! {
                    p = conn.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(conn.header_timeout)
            .serve_connection(TokioIo::new(tcp), service);
        let watched = conn.graceful.watch(connection);
        let open = crate::metrics::GaugeGuard::raise(&open);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }
}

/// The model name and optional version from the path.
fn target(params: &HashMap<String, String>) -> Result<(&str, Option<u64>), ApiError> {
    let model = params.get("model").map(String::as_str).unwrap_or_default();
    let version = match params.get("version") {
        None => None,
        Some(v) => Some(v.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("version '{v}' is not a positive integer"))
        })?),
    };
    Ok((model, version))
}

fn entry(server: &Server, model: &str) -> Result<Arc<ModelEntry>, ApiError> {
    Ok(crate::serving::lookup_entry(&server.table(), model)?.clone())
}

#[utoipa::path(get, path = "/v2", tag = "metadata", responses((status = 200, description = "Name, version and protocol extensions")))]
async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "vigil",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

#[utoipa::path(get, path = "/v2/health/live", tag = "health", responses((status = 200, description = "The process is up")))]
async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "health", responses((status = 200, description = "Every model has a version to serve"), (status = 503, description = "Starting, shutting down, or a model has nothing to serve")))]
async fn ready(State(s): State<AppState>) -> Response {
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

#[utoipa::path(get, path = "/v2/models/{model}", tag = "metadata", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Inputs and outputs of the version unpinned requests go to", body = openapi::ModelMetadata), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn model_metadata(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (model, version) = target(&p)?;
    let entry = entry(&s.server, model)?;
    let v = s.server.resolve(model, version)?;
    Ok(Json(json!({
        "name": entry.name,
        "versions": entry.versions.keys().map(u64::to_string).collect::<Vec<_>>(),
        "platform": format!("onnx_{}", v.engine),
        "inputs": tensor_specs(&v.signature.inputs),
        "outputs": tensor_specs(&v.signature.outputs),
    })))
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "health", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Ready"), (status = 503, description = "Not ready"), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn model_ready(
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

fn config_io(specs: &[crate::tensor::spec::TensorSpec]) -> Value {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "data_type": s.datatype.triton_config_name(), "dims": s.shape }))
        .collect()
}

#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "metadata", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Triton model configuration, with dynamic_batching in force"), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn model_config(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (model, version) = target(&p)?;
    let v = s.server.resolve(model, version)?;
    let mut config = json!({
        "name": model,
        "platform": "onnxruntime_onnx",
        "backend": v.engine.as_str(),
        "version": v.version.to_string(),
        // Shapes below include the batch dimension, as Triton shows them with batching off.
        "max_batch_size": 0,
        "input": config_io(&v.signature.inputs),
        "output": config_io(&v.signature.outputs),
        "version_policy": { "latest": { "num_versions": 1 } },
    });
    let b = v.batcher.settings();
    if b.max_batch > 1 {
        // Triton's field names; the batch size lives here because the shapes above keep
        // their batch dimension.
        config["dynamic_batching"] = json!({
            "max_batch_size": b.max_batch,
            "max_queue_delay_microseconds": b.delay.as_micros() as u64,
            "preferred_batch_size": b.preferred,
            "max_queue_size": b.max_queue,
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
    })
}

#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "metadata", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Triton statistics of every loaded version"), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn model_stats(
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
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.server
        .metrics
        .queue_depth
        .set(s.server.queue_depth() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.server.metrics.render(),
    )
}

/// Reads the body, refusing anything over the limit with 413 (before reading, when the
/// client declared its length). The frames are copied into one buffer of the declared
/// size as they arrive: collecting them first and joining them after would hold the
/// body twice.
async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Content-Encoding '{other}' is not supported; send the body uncompressed"
            )))
        }
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - buf.len() {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

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

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "inference", params(("model" = String, Path, description = "Model name"), ("x-vigil-routing-key" = Option<String>, Header, description = "Sticky routing key (the header name is configurable)")), request_body(description = "A V2 request: JSON, or a JSON header followed by binary tensors (Inference-Header-Content-Length gives the header length)", content((openapi::InferRequest = "application/json"), ("application/octet-stream"))), responses((status = 200, description = "Outputs (JSON, or JSON header + binary tensors)", body = openapi::InferResponse), (status = 400, description = "Bad request: the message says what is wrong", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody), (status = 413, description = "Body larger than --max-body-bytes", body = openapi::ErrorBody), (status = 503, description = "Queue full or not ready; retry after Retry-After", body = openapi::ErrorBody)))]
async fn infer(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (model, version) = target(&p)?;
    let route = s.server.route(model, version, |name| {
        headers.get(name).map(|v| v.as_bytes().to_vec())
    })?;
    let served = route.version.clone();
    let start = Instant::now();
    let result = infer_on(&s, &route, &headers, body).await;
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

async fn infer_on(
    s: &AppState,
    route: &Route,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, InferOnError> {
    let served = &route.version;
    let api = InferOnError::Api;
    let header_len = header_len(headers).map_err(api)?;
    let body = tokio::time::timeout(
        s.opts.body_timeout,
        read_body(headers, body, s.opts.max_body_bytes),
    )
    .await
    .map_err(|_| {
        api(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {:?}",
            s.opts.body_timeout
        )))
    })?
    .map_err(api)?;
    // Every descriptor is checked against the version's signature before any data is
    // decoded, so that the memory a request takes stays a small multiple of its body.
    let sig = &served.signature;
    let req = v2::check_request(&body, header_len, sig, s.opts.max_tensor_elements)
        .map_err(|e| api(e.into()))?;
    // Which outputs, in which order, and how: checked before decoding anything.
    let chosen: Vec<(usize, bool)> = match &req.outputs {
        None => (0..sig.outputs.len())
            .map(|i| (i, req.binary_output))
            .collect(),
        Some(list) => list
            .iter()
            .map(|o| {
                sig.outputs
                    .iter()
                    .position(|spec| spec.name == o.name)
                    .map(|i| (i, o.binary.unwrap_or(req.binary_output)))
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            sig.outputs.iter().map(|o| o.name.as_str()).collect();
                        api(ApiError::BadRequest(format!(
                            "unknown output '{}': the model's outputs are {names:?}",
                            o.name
                        )))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let req = req.decode().map_err(|e| api(e.into()))?;
    drop(body);
    let outputs = s
        .server
        .infer_routed(route, req.inputs)
        .await
        .map_err(InferOnError::Serving)?;
    let selected: Vec<_> = chosen.iter().map(|&(i, b)| (&outputs[i], b)).collect();
    let encoded = v2::encode_response(&served.model, served.version, req.id.as_deref(), &selected);
    let mut resp = Response::new(Body::from(encoded.body));
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

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// What a request is, for the gate: which token it needs and how its body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Health,
    Metrics,
    /// The control plane: repository, rollout changes, retrain triggers and the outbox.
    Admin,
    /// Inference: its body is read (streaming, limited, within the body deadline) by the
    /// handler, after the route is known.
    Infer,
    Api,
}

fn classify(method: &axum::http::Method, path: &str) -> Class {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match seg.as_slice() {
        ["metrics"] => Class::Metrics,
        ["v2", "health", ..] => Class::Health,
        ["v2", "repository", ..] | ["v2", "retrain", ..] => Class::Admin,
        ["v2", "models", _, "retrain"] => Class::Admin,
        ["v2", "models", _, "rollout", ..] if method != axum::http::Method::GET => Class::Admin,
        ["v2", "models", _, "infer"] | ["v2", "models", _, "versions", _, "infer"] => Class::Infer,
        _ => Class::Api,
    }
}

/// In front of every route: the token a request needs, checked before any of its body is
/// read, and the body deadline for every route that is not inference.
///
/// - `/metrics`: `--metrics-token` when set. Health: open.
/// - The control plane: `--admin-token` when set; without one, only on a listener bound to
///   a loopback address (`--admin-addr 127.0.0.1:9000`, or a main listener on loopback).
///   Peers are not trusted by their address: sidecars and proxies connect from loopback.
/// - Everything else: `--api-token` when set (the admin token is accepted too).
async fn gate(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let class = match classify(req.method(), req.uri().path()) {
        // Not served here at all: the router answers 404 naming the admin listener.
        Class::Admin if s.surface == Surface::Public => Class::Api,
        c => c,
    };
    let given = bearer(req.headers()).as_bytes();
    let matches = |t: Option<&str>| t.is_some_and(|t| constant_time_eq(given, t.as_bytes()));
    let (label, needed) = match class {
        Class::Health => ("health", None),
        Class::Metrics => ("metrics", s.opts.metrics_token.as_deref()),
        Class::Admin => match s.opts.admin_token.as_deref() {
            Some(t) => ("admin", Some(t)),
            None if s.control_open => ("admin", s.opts.api_token.as_deref()),
            None => {
                s.server.metrics.auth_failure("admin", 403);
                return ApiError::Forbidden(
                    "the control plane needs --admin-token, or a listener bound to a loopback                      address (--admin-addr 127.0.0.1:PORT)"
                        .into(),
                )
                .into_response();
            }
        },
        Class::Infer | Class::Api => ("api", s.opts.api_token.as_deref()),
    };
    let admin_ok = class != Class::Admin && matches(s.opts.admin_token.as_deref());
    if needed.is_some() && !matches(needed) && !admin_ok {
        s.server.metrics.auth_failure(label, 401);
        return ApiError::Unauthorized.into_response();
    }
    if class == Class::Infer {
        return next.run(req).await;
    }
    // Every other body is small: read it whole, within the deadline and the size limit,
    // so that no client holds a connection by trickling one.
    let (parts, body) = req.into_parts();
    let read = read_body(&parts.headers, body, s.opts.max_body_bytes);
    let bytes = match tokio::time::timeout(s.opts.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError::RequestTimeout(format!(
                "the request body did not arrive within {:?} (--body-timeout)",
                s.opts.body_timeout
            ))
            .into_response()
        }
    };
    next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("background task failed: {e}")))
}

#[utoipa::path(post, path = "/v2/repository/index", tag = "repository", request_body(description = "Optional {\"ready\": true}", content(("application/json"))), responses((status = 200, description = "Every model and version on disk and its state", body = Vec<crate::serving::reload::IndexRow>), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody)))]
async fn repository_index(State(s): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let ready_only = if body.is_empty() {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid index request JSON: {e}")))?;
        v.get("ready").and_then(Value::as_bool).unwrap_or(false)
    };
    let reloader = s.reloader.clone();
    let rows = blocking(move || reloader.index()).await?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| !ready_only || r.state == "READY")
        .collect();
    Ok(Json(serde_json::to_value(rows).expect("rows serialise")))
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "repository", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Loaded"), (status = 400, description = "Load failed", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn repository_load(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reloader = s.reloader.clone();
    blocking(move || reloader.load(&model)).await??;
    Ok(Json(json!({})))
}

#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "repository", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Unloaded"), (status = 400, description = "Not allowed in this model-control mode", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn repository_unload(
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
    })
}

#[utoipa::path(get, path = "/v2/models/{model}/rollout", tag = "rollout", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Current rollout", body = openapi::RolloutState), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn rollout_get(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    current_entry_json(&s, &model)
}

fn current_entry_json(s: &AppState, model: &str) -> Result<Json<Value>, ApiError> {
    let entry = entry(&s.server, model)?;
    Ok(Json(rollout_json(&entry)))
}

#[utoipa::path(put, path = "/v2/models/{model}/rollout", tag = "rollout", params(("model" = String, Path, description = "Model name")), request_body(content = openapi::RolloutChange, content_type = "application/json"), responses((status = 200, description = "The rollout now in force (stored durably)", body = openapi::RolloutState), (status = 400, description = "Invalid change; nothing changed", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn rollout_put(
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
        if !["stable", "canary", "weight", "mode", "sticky_header"].contains(&key.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown rollout field '{key}' (expected stable, canary, weight, mode, sticky_header)"
            )));
        }
    }
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
        Ok(next)
    })?;
    current_entry_json(&s, &model)
}

#[utoipa::path(post, path = "/v2/models/{model}/rollout/promote", tag = "rollout", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "The canary is now stable", body = openapi::RolloutState), (status = 400, description = "No canary", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn rollout_promote(
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

#[utoipa::path(post, path = "/v2/models/{model}/rollout/rollback", tag = "rollout", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "The canary is removed", body = openapi::RolloutState), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn rollout_rollback(
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

#[utoipa::path(get, path = "/v2/models/{model}/drift", tag = "drift", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Drift state, last window and time line of every loaded version"), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn drift_report(
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
    Ok(Json(json!({ "model": model, "versions": versions })))
}

/// What a browser may load and run on the console's pages: only vigil's own files.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

#[utoipa::path(get, path = "/", tag = "console", responses((status = 200, description = "The console (HTML)", content_type = "text/html")))]
async fn console_page(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (server, reloader, traffic) = (s.server.clone(), s.reloader.clone(), s.traffic.clone());
    let html = blocking(move || {
        let index = reloader.index();
        crate::console::page(&crate::console::collect(&server, &index, &traffic)).into_string()
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "metadata", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Inputs and outputs of this version", body = openapi::ModelMetadata), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn version_metadata(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_metadata(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "health", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Loaded"), (status = 503, description = "Not loaded"), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn version_ready(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    model_ready(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/config", tag = "metadata", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Triton model configuration of this version"), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn version_config(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_config(state, path).await
}

#[utoipa::path(get, path = "/v2/models/stats", tag = "metadata", responses((status = 200, description = "Triton statistics of every loaded version of every model")))]
async fn all_stats(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_stats(state, path).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/stats", tag = "metadata", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), responses((status = 200, description = "Triton statistics of this version"), (status = 404, description = "No such model or version", body = openapi::ErrorBody)))]
async fn pinned_version_stats(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    model_stats(state, path).await
}

#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "inference", params(("model" = String, Path, description = "Model name"), ("version" = u64, Path, description = "Model version")), request_body(description = "As for /v2/models/{model}/infer; the version is pinned (the rollout is bypassed)", content((openapi::InferRequest = "application/json"), ("application/octet-stream"))), responses((status = 200, description = "Outputs of this version", body = openapi::InferResponse), (status = 400, description = "Bad request", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody), (status = 503, description = "Queue full or not ready", body = openapi::ErrorBody)))]
async fn version_infer(
    state: State<AppState>,
    path: Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer(state, path, headers, body).await
}

#[utoipa::path(get, path = "/console", tag = "console", responses((status = 200, description = "The console (HTML), as at /", content_type = "text/html")))]
async fn console_alias(state: State<AppState>) -> Result<Response, ApiError> {
    console_page(state).await
}

#[utoipa::path(get, path = "/openapi.json", tag = "console", responses((status = 200, description = "This description", content_type = "application/json")))]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(openapi::json).as_str(),
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=60"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn console_css() -> Response {
    asset("text/css; charset=utf-8", crate::console::CSS)
}

async fn console_icon() -> Response {
    asset("image/svg+xml", crate::console::ICON)
}

async fn console_js() -> Response {
    asset("text/javascript; charset=utf-8", crate::console::JS)
}

#[utoipa::path(post, path = "/v2/models/{model}/retrain", tag = "retrain", params(("model" = String, Path, description = "Model name")), request_body(description = "Optional {\"reason\": \"...\"}", content(("application/json"))), responses((status = 202, description = "Event created in the durable outbox; body carries event_id"), (status = 400, description = "No retrain hook configured, or a bad reason", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody), (status = 404, description = "No such model or version", body = openapi::ErrorBody), (status = 500, description = "The event could not be stored (a full disk, say); nothing was accepted", body = openapi::ErrorBody)))]
async fn retrain_trigger(
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
    let retrainer = s.server.retrainer.clone();
    let version = entry.stable;
    let id = blocking(move || retrainer.manual(&model, version, &reason))
        .await?
        .map_err(|e| match e {
            crate::retrain::RetrainError::NoTarget(_) => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "event_id": id }))).into_response())
}

#[utoipa::path(post, path = "/v2/retrain/alertmanager", tag = "retrain", request_body(description = "Alertmanager's webhook payload (version 4); firing alerts with a `model` label become drift events", content(("application/json"))), responses((status = 200, description = "What became of each alert: created, duplicate, cooldown, no_hook or skipped (with why)"), (status = 400, description = "Not an Alertmanager version 4 payload", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody), (status = 500, description = "The event could not be stored; Alertmanager retries", body = openapi::ErrorBody)))]
async fn retrain_alertmanager(
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
            summary: text(a.get("annotations").and_then(|n| n.get("summary"))),
        };
        let status = text(a.get("status"));
        let skip = if status != "firing" {
            Some(format!("status is '{status}', not 'firing'"))
        } else if alert.model.is_empty() {
            Some("the alert has no 'model' label".to_string())
        } else if alert.fingerprint.is_empty() || alert.starts_at.is_empty() {
            Some("the alert has no fingerprint or startsAt".to_string())
        } else {
            None
        };
        if let Some(why) = skip {
            results.push(
                json!({"fingerprint": alert.fingerprint, "model": alert.model,
                "outcome": "skipped", "reason": why}),
            );
            continue;
        }
        let cooldown = s.server.retrain_config(&alert.model).cooldown();
        let retrainer = s.server.retrainer.clone();
        let a2 = alert.clone();
        let outcome = blocking(move || retrainer.fleet_alert(&a2, cooldown))
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

#[utoipa::path(get, path = "/v2/retrain/events", tag = "retrain", responses((status = 200, description = "Pending, delivered and dead-lettered events"), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody)))]
async fn retrain_events(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
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

#[utoipa::path(post, path = "/v2/retrain/dead-letters/{id}/replay", tag = "retrain", params(("id" = String, Path, description = "Event id")), responses((status = 200, description = "Queued again"), (status = 404, description = "No such dead letter", body = openapi::ErrorBody), (status = 401, description = "Missing or wrong admin token", body = openapi::ErrorBody), (status = 403, description = "Not a loopback client and no admin token configured", body = openapi::ErrorBody)))]
async fn retrain_replay(
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

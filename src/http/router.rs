//! The route tables: which handler answers which path, on which listener ([`Surface`]),
//! behind the [`gate`], and the 404/405 for paths no route takes. Adding an endpoint
//! means a line here and a handler in its room. Nothing below imports this file.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use super::admin::{
    repository_index, repository_load, repository_unload, rollout_analysis, rollout_get,
    rollout_promote, rollout_put, rollout_rollback,
};
use super::auth::{classify, gate, Class};
use super::console::{console_alias, console_css, console_icon, console_js, console_page};
use super::error::ApiError;
use super::feedback::{feedback, quality};
use super::infer::{infer, version_infer};
use super::meta::{
    all_stats, drift_report, live, metrics, model_config, model_metadata, model_ready, model_stats,
    pinned_version_stats, ready, server_metadata, server_metadata_oip, version_config,
    version_metadata, version_ready,
};
use super::openapi::openapi_json;
use super::retrain::{retrain_alertmanager, retrain_events, retrain_replay, retrain_trigger};
use super::state::{AppState, HttpOptions, Surface};
use crate::console::traffic::Traffic;
use crate::serving::reload::Reloader;
use crate::serving::Server;

/// Health, metadata, inference, statistics, drift reports and the rollout state.
fn data_routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        // The OIP specification's path for the same.
        .route("/v2/", get(server_metadata_oip))
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
        .route("/v2/models/{model}/feedback", post(feedback))
        .route("/v2/models/{model}/quality", get(quality))
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
    app(server, reloader, opts, surface, traffic, bound).0
}

/// The router and the state its handlers share (for the inference fast path in `listen`).
pub(super) fn app(
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    opts: HttpOptions,
    surface: Surface,
    traffic: Arc<Traffic>,
    bound: std::net::SocketAddr,
) -> (Router, AppState) {
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
    }
    // Read-only, beside the rollout on every surface.
    .route("/v2/models/{model}/rollout/analysis", get(rollout_analysis));
    let routes = routes
        .fallback(move |req: axum::extract::Request| async move {
            unrouted(surface, req.method(), req.uri().path(), false)
        })
        .method_not_allowed_fallback(move |req: axum::extract::Request| async move {
            unrouted(surface, req.method(), req.uri().path(), true)
        })
        // The gate reads every body within --max-body-bytes (413 in JSON); axum's own 2 MB
        // default for `Bytes` would refuse control bodies between the two in plain text.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state.clone());
    (routes, state)
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

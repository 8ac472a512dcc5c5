//! The gate in front of every route: which bearer token a request needs (health, metrics,
//! control plane, data plane), compared in constant time before any of its body is read,
//! and the body deadline and size limit for every request but inference. Never imports
//! a handler.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::body::read_body;
use super::error::ApiError;
use super::state::{AppState, Surface};

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// What a request is, for the gate: which token it needs and how its body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Health,
    Metrics,
    /// The control plane: repository, rollout changes, retrain triggers and the outbox.
    Admin,
    /// Inference: its body is read (streaming, limited, within the body deadline) by the
    /// handler, after the route is known.
    Infer,
    Api,
}

pub(super) fn classify(method: &axum::http::Method, path: &str) -> Class {
    // The first segments only, without allocating: every pattern below is at most six
    // segments long or matches a prefix, so a longer path classifies the same.
    let mut buf = [""; 8];
    let mut n = 0;
    for (slot, part) in buf.iter_mut().zip(path.trim_start_matches('/').split('/')) {
        *slot = part;
        n += 1;
    }
    match &buf[..n] {
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
pub(super) async fn gate(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let class = match classify(req.method(), req.uri().path()) {
        // Not served here at all: the router answers 404 naming the admin listener.
        Class::Admin if s.surface == Surface::Public => Class::Api,
        c => c,
    };
    if let Err(refused) = authorize(&s, class, req.headers()) {
        return refused.into_response();
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

/// The token check of [`gate`] for a request of `class`: `Err` is the answer (401/403,
/// already counted) when the request may not go on. Shared with the inference fast path, which
/// is served in front of the router (see `listen`).
pub(super) fn authorize(s: &AppState, class: Class, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer(headers).as_bytes();
    let matches = |t: Option<&str>| t.is_some_and(|t| constant_time_eq(given, t.as_bytes()));
    let (label, needed) = match class {
        Class::Health => ("health", None),
        Class::Metrics => ("metrics", s.opts.metrics_token.as_deref()),
        Class::Admin => match s.opts.admin_token.as_deref() {
            Some(t) => ("admin", Some(t)),
            None if s.control_open => ("admin", s.opts.api_token.as_deref()),
            None => {
                s.server.metrics.auth_failure("admin", 403);
                return Err(ApiError::Forbidden(
                    "the control plane needs --admin-token, or a listener bound to a loopback address (--admin-addr 127.0.0.1:PORT)"
                        .into(),
                ));
            }
        },
        Class::Infer | Class::Api => ("api", s.opts.api_token.as_deref()),
    };
    let admin_ok = class != Class::Admin && matches(s.opts.admin_token.as_deref());
    if needed.is_some() && !matches(needed) && !admin_ok {
        s.server.metrics.auth_failure(label, 401);
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

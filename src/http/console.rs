//! Serving the console: the HTML page (rendered by `crate::console` off the async
//! workers) under a strict Content-Security-Policy, and its static assets. Never imports
//! the router or another handler room.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::{blocking, AppState};

/// What a browser may load and run on the console's pages: only vigil's own files.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

#[utoipa::path(get, path = "/", tag = "console", responses((status = 200, description = "The console (HTML)", content_type = "text/html")))]
pub(super) async fn console_page(State(s): State<AppState>) -> Result<Response, ApiError> {
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

#[utoipa::path(get, path = "/console", tag = "console", responses((status = 200, description = "The console (HTML), as at /", content_type = "text/html")))]
pub(super) async fn console_alias(state: State<AppState>) -> Result<Response, ApiError> {
    console_page(state).await
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

pub(super) async fn console_css() -> Response {
    asset("text/css; charset=utf-8", crate::console::CSS)
}

pub(super) async fn console_icon() -> Response {
    asset("image/svg+xml", crate::console::ICON)
}

pub(super) async fn console_js() -> Response {
    asset("text/javascript; charset=utf-8", crate::console::JS)
}

//! What every handler shares: the settings of the HTTP front ([`HttpOptions`]), which
//! endpoints a listener serves ([`Surface`]), the per-listener state handed to handlers,
//! and small helpers (path parsing, model lookup, running blocking work off the async
//! workers). The floor of `http`: it imports no other room of `http` but `error`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::error::ApiError;
use crate::console::traffic::Traffic;
use crate::serving::reload::Reloader;
use crate::serving::{ModelEntry, Server};

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
pub(super) struct AppState {
    pub(super) server: Arc<Server>,
    pub(super) reloader: Arc<Reloader>,
    pub(super) opts: Arc<HttpOptions>,
    pub(super) traffic: Arc<Traffic>,
    /// This listener is bound to a loopback address: without `--admin-token` it may serve
    /// the control plane.
    pub(super) control_open: bool,
    pub(super) surface: Surface,
}

/// Which endpoints a listener serves. With `--admin-addr`, the main listener serves the
/// data plane ([`Surface::Public`]) and the admin listener the control plane and `/metrics`
/// ([`Surface::Admin`]); without it one listener serves everything ([`Surface::All`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    All,
    Public,
    Admin,
}

/// The model name and optional version from the path.
pub(super) fn target(params: &HashMap<String, String>) -> Result<(&str, Option<u64>), ApiError> {
    let model = params.get("model").map(String::as_str).unwrap_or_default();
    let version = params
        .get("version")
        .map(|v| parse_version(v))
        .transpose()?;
    Ok((model, version))
}

/// A version from a path: a positive integer, else 400.
pub(super) fn parse_version(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("version '{v}' is not a positive integer")))
}

pub(super) fn entry(server: &Server, model: &str) -> Result<Arc<ModelEntry>, ApiError> {
    Ok(crate::serving::lookup_entry(&server.table(), model)?.clone())
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("background task failed: {e}")))
}

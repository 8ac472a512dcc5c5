//! The gRPC front: KServe V2 / Triton's `inference.GRPCInferenceService` on its own
//! listener (`--grpc-addr`), beside `http/`, plus `grpc.health.v1.Health` (SERVING while
//! the server is ready, NOT_SERVING from shutdown on) and server reflection.
//!
//! Same serving path as HTTP, not a copy: requests decode into the same `Tensor`s and go
//! through `serving`'s routing (canary split, sticky key from the request metadata under
//! the model's `sticky_header`, shadow copies), batching, drift and statistics; the same
//! tokens guard the same classes of call; errors carry the HTTP front's messages with the
//! matching gRPC codes. `--max-body-bytes` is the largest message accepted
//! (RESOURCE_EXHAUSTED beyond), `--max-tensor-elements` bounds a request's inputs.
//!
//! Rooms: [`proto`] (generated), `codec` (messages to tensors and back), `service` (the
//! RPCs), `unary` (ModelInfer from hyper's stream to its handler, past tonic's router and
//! codec), `auth` (the gate), `status` (errors to codes), `limits` (connections, stalled
//! streams), `health` (Watch streams end at the drain). Never imports `http`.

mod auth;
mod codec;
mod health;
mod limits;
pub mod proto;
mod service;
mod status;
mod unary;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic_health::ServingStatus;

use crate::serving::reload::Reloader;
use crate::serving::Server;
use proto::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The service name clients and probes ask grpc.health.v1 about ("" is the server).
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// Settings of the gRPC front (the HTTP front's limits and tokens).
#[derive(Clone)]
pub struct GrpcOptions {
    /// Largest request message, in bytes (`--max-body-bytes`).
    pub max_message_bytes: usize,
    /// Elements of all input tensors of one request together.
    pub max_tensor_elements: usize,
    /// How long in-flight calls may take to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Bearer token for the repository RPCs; `None`: loopback listeners only.
    pub admin_token: Option<String>,
    /// Bearer token for every other RPC but health; `None`: open.
    pub api_token: Option<String>,
    /// Connections, stalled streams, keepalive.
    pub limits: GrpcLimits,
    /// Set by [`serve`]: the listener is bound to a loopback address.
    control_open: bool,
}

/// What a client may hold on the gRPC front (see `limits`).
#[derive(Clone, Debug)]
pub struct GrpcLimits {
    /// `--max-connections`, shared with the HTTP listeners.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// `--body-timeout`: how long an inference call's request message may take to arrive
    /// (DEADLINE_EXCEEDED after that).
    pub body_timeout: Duration,
    /// `--grpc-keepalive`: the HTTP/2 PING interval; no answer within
    /// [`KEEPALIVE_TIMEOUT`] closes the connection.
    pub keepalive: Duration,
    /// `--grpc-max-streams`: concurrent streams per connection.
    pub max_streams: u32,
    /// `--grpc-idle-timeout`: a connection with no open stream for this long is closed
    /// (GOAWAY); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// `--header-timeout`: how long a new connection may take to say its HTTP/2 preface
    /// (the magic and its first SETTINGS frame); it is dropped after that, whatever the
    /// idle timeout (hyper waits for the preface forever).
    pub preface_timeout: Duration,
}

/// `--grpc-idle-timeout`'s default (grpc-go's `MaxConnectionIdle` is a common setting of
/// minutes; clients reconnect transparently).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a client has to answer a keepalive PING (grpc-go's and grpc-core's default).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for GrpcLimits {
    fn default() -> GrpcLimits {
        GrpcLimits {
            connections: Arc::new(tokio::sync::Semaphore::new(4096)),
            body_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(60),
            max_streams: 128,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            preface_timeout: Duration::from_secs(10),
        }
    }
}

impl GrpcOptions {
    pub fn new(
        max_message_bytes: usize,
        max_tensor_elements: usize,
        shutdown_grace: Duration,
        admin_token: Option<String>,
        api_token: Option<String>,
    ) -> GrpcOptions {
        GrpcOptions {
            max_message_bytes,
            max_tensor_elements,
            shutdown_grace,
            admin_token,
            api_token,
            limits: GrpcLimits::default(),
            control_open: false,
        }
    }

    pub fn with_limits(mut self, limits: GrpcLimits) -> GrpcOptions {
        self.limits = limits;
        self
    }
}

impl std::fmt::Debug for GrpcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcOptions")
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_tensor_elements", &self.max_tensor_elements)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("api_token", &self.api_token.as_ref().map(|_| "<set>"))
            .field("limits", &self.limits)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How often the health service looks at readiness (a load, an unload, the first scan).
const HEALTH_TICK: Duration = Duration::from_millis(100);

/// Serves gRPC on `listener` until `shutdown` resolves; then health turns NOT_SERVING,
/// no new connections are taken, and calls in flight get `opts.shutdown_grace` to finish.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    mut opts: GrpcOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    opts.control_open = listener.local_addr()?.ip().is_loopback();
    let grace = opts.shutdown_grace;
    let opts = Arc::new(opts);
    let limit = opts.max_message_bytes;
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (alive_tx, alive_rx) = tokio::sync::watch::channel(());
    let (accept_stop_tx, accept_stop) = tokio::sync::watch::channel(false);
    let reporter = tonic_health::server::HealthReporter::new();
    // Every service decodes with the same limit, so that tonic's refusal of a larger
    // message means one thing (turned into RESOURCE_EXHAUSTED by `status::oversized`).
    let health = health::server(&reporter, drain_rx.clone()).max_decoding_message_size(limit);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?
        .max_decoding_message_size(limit);
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?
        .max_decoding_message_size(limit);
    let handler = Arc::new(service::Inference {
        server: server.clone(),
        reloader,
        opts: opts.clone(),
    });
    let inference = GrpcInferenceServiceServer::from_arc(handler.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Health follows readiness until shutdown, then says NOT_SERVING before the drain.
    let follow = {
        let (server, reporter, mut stop) = (server.clone(), reporter.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_TICK);
            let mut told = None;
            loop {
                let status = if server.is_ready() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                // Only a change is reported: every report is a message to every Watch.
                if told != Some(status) {
                    for name in ["", SERVICE_NAME] {
                        reporter.set_service_status(name, status).await;
                    }
                    told = Some(status);
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
            }
            for name in ["", SERVICE_NAME] {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        })
    };
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(inference)
        .prepare();
    let app = tower::ServiceBuilder::new()
        .map_request(limits::body_deadline(opts.limits.body_timeout))
        .map_response(status::oversized(limit))
        .service(routes);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(opts.limits.keepalive)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(opts.limits.max_streams)
        // gRPC has no use for a `date` header on every response.
        .auto_date_header(false);
    let conn = ConnSettings {
        app,
        infer: handler,
        limit,
        body_timeout: opts.limits.body_timeout,
        h2: Arc::new(h2),
        idle: opts.limits.idle_timeout,
        preface: opts.limits.preface_timeout,
        drain: drain_rx,
        alive: alive_rx,
    };
    let accepting = {
        let metrics = server.metrics.clone();
        let permits = opts.limits.connections.clone();
        tokio::spawn(async move {
            crate::accept::accept_loop(
                listener,
                "grpc",
                permits,
                &metrics,
                accept_stop,
                |tcp, _peer, admitted| conn.serve(tcp, admitted),
            )
            .await
        })
    };
    shutdown.await;
    tracing::info!("gRPC: shutting down, health NOT_SERVING, finishing calls in flight");
    let _ = stop_tx.send(true);
    let _ = follow.await;
    let _ = accept_stop_tx.send(true);
    let _ = accepting.await;
    let _ = drain_tx.send(true);
    if tokio::time::timeout(grace, alive_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs_f64(),
            "gRPC calls still in flight at the end of the shutdown grace; stopping anyway"
        );
    }
    Ok(())
}

/// What every gRPC connection is served with.
#[derive(Clone)]
struct ConnSettings<A> {
    app: A,
    /// ModelInfer's handler, called without tonic in between ([`unary`]).
    infer: Arc<service::Inference>,
    /// `--max-body-bytes`, `--body-timeout`: for ModelInfer's message.
    limit: usize,
    body_timeout: Duration,
    h2: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    idle: Option<Duration>,
    /// `--header-timeout`, for the client's connection preface.
    preface: Duration,
    /// Turns true at shutdown: every connection says GOAWAY and finishes its streams.
    drain: tokio::sync::watch::Receiver<bool>,
    /// Held by every connection's task: the sender's `closed()` is "all connections ended".
    alive: tokio::sync::watch::Receiver<()>,
}

impl<A> ConnSettings<A>
where
    A: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    A::Future: Send + 'static,
{
    /// Serves one connection on its own task until it closes: the client went away, it
    /// was idle for `--grpc-idle-timeout` (GOAWAY), or the server drains (GOAWAY).
    fn serve(&self, tcp: tokio::net::TcpStream, admitted: crate::accept::Admitted) {
        let activity = limits::Activity::new();
        let app = self.app.clone();
        let act = activity.clone();
        let (infer, limit, body_timeout) = (self.infer.clone(), self.limit, self.body_timeout);
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let busy = limits::Busy::enter(&act);
            let deadline = limits::client_deadline(req.headers());
            let (app, infer) = (app.clone(), infer.clone());
            let call = async move {
                if unary::takes(&req) {
                    Ok(unary::model_infer(infer, req, limit, body_timeout).await)
                } else {
                    tower::ServiceExt::oneshot(app, req.map(tonic::body::Body::new))
                        .await
                        .map(|r| r.map(unary::Reply::Tonic))
                }
            };
            async move {
                let resp = match deadline {
                    None => call.await,
                    Some(d) => match tokio::time::timeout(d, call).await {
                        Ok(r) => r,
                        Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
                    },
                };
                resp.map(|r| r.map(|body| limits::Tracked { body, _busy: busy }))
            }
        });
        let (tcp, said) = limits::Preface::new(tcp);
        let conn = self.h2.serve_connection(TokioIo::new(tcp), service);
        let (mut drain, alive, idle) = (self.drain.clone(), self.alive.clone(), self.idle);
        let preface = self.preface;
        tokio::spawn(async move {
            tokio::pin!(conn);
            // A client that has not said its preface by then is dropped, idle timeout or
            // not: until it does, hyper neither serves nor closes the connection.
            let unsaid = tokio::time::sleep(preface);
            tokio::pin!(unsaid);
            let mut preface_due = true;
            let drained = drain.wait_for(|&d| d);
            tokio::pin!(drained);
            let quiet = activity.idle(idle);
            tokio::pin!(quiet);
            // After an idle GOAWAY: hyper closes the connection only once the client has
            // said its preface and answered the GOAWAY's PING. One that never does (it
            // connected and sent nothing, or half a preface) is dropped after
            // `close_wait` (the idle timeout, within 1 to 20 s), unless a stream opened
            // meanwhile.
            let close_wait = idle
                .unwrap_or(KEEPALIVE_TIMEOUT)
                .clamp(Duration::from_secs(1), KEEPALIVE_TIMEOUT);
            let abandon = tokio::time::sleep(close_wait);
            tokio::pin!(abandon);
            let mut closing = false;
            let mut idle_closing = false;
            loop {
                tokio::select! {
                    r = &mut conn => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "gRPC connection ended with an error");
                        }
                        break;
                    }
                    _ = &mut drained, if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = &mut quiet, if !closing => {
                        tracing::debug!("gRPC connection idle for --grpc-idle-timeout; closing it");
                        closing = true;
                        idle_closing = true;
                        abandon.as_mut().reset(tokio::time::Instant::now() + close_wait);
                        conn.as_mut().graceful_shutdown();
                    }
                    () = &mut unsaid, if preface_due => {
                        if !said.load(std::sync::atomic::Ordering::Acquire) {
                            tracing::debug!("gRPC client did not say its HTTP/2 preface within --header-timeout; dropping the connection");
                            break;
                        }
                        preface_due = false;
                    }
                    () = &mut abandon, if idle_closing => {
                        if activity.is_quiet() {
                            tracing::debug!("gRPC connection did not close after GOAWAY; dropping it");
                            break;
                        }
                        abandon.as_mut().reset(tokio::time::Instant::now() + close_wait);
                    }
                }
            }
            drop(admitted);
            drop(alive);
        });
    }
}

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
//! RPCs), `auth` (the gate), `status` (errors to codes), `limits` (connections, stalled
//! streams), `health` (Watch streams end at the drain). Never imports `http`.

mod auth;
mod codec;
mod health;
mod limits;
pub mod proto;
mod service;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
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
}

/// How long a client has to answer a keepalive PING (grpc-go's and grpc-core's default).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for GrpcLimits {
    fn default() -> GrpcLimits {
        GrpcLimits {
            connections: Arc::new(tokio::sync::Semaphore::new(4096)),
            body_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(60),
            max_streams: 128,
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
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
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
    let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
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
    let inference = GrpcInferenceServiceServer::new(service::Inference {
        server: server.clone(),
        reloader,
        opts: opts.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Health follows readiness until shutdown, then says NOT_SERVING before the drain.
    let follow = {
        let (server, reporter, mut stop) = (server.clone(), reporter.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_TICK);
            loop {
                let status = if server.is_ready() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in ["", SERVICE_NAME] {
                    reporter.set_service_status(name, status).await;
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
    let incoming = limits::accept(listener, opts.limits.connections.clone(), &server.metrics);
    let drained = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(opts.limits.keepalive))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(opts.limits.max_streams))
        .layer(tower::util::MapRequestLayer::new(limits::body_deadline(
            opts.limits.body_timeout,
        )))
        .layer(tower::util::MapResponseLayer::new(status::oversized(limit)))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(inference)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = drain_rx.wait_for(|&s| s).await;
        });
    tokio::pin!(drained);
    let result = tokio::select! {
        r = &mut drained => r,
        () = shutdown => {
            tracing::info!("gRPC: shutting down, health NOT_SERVING, finishing calls in flight");
            let _ = stop_tx.send(true);
            let _ = follow.await;
            let _ = drain_tx.send(true);
            match tokio::time::timeout(grace, &mut drained).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(grace_s = grace.as_secs_f64(), "gRPC calls still in flight at the end of the shutdown grace; stopping anyway");
                    Ok(())
                }
            }
        }
    };
    Ok(result?)
}

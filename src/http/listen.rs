//! Sockets: [`serve`] binds the router to one or two listeners (main, and `--admin-addr`),
//! runs the accept loops under the connection limit and header timeout, and on shutdown
//! turns readiness off and lets requests in flight finish within the grace. Knows the
//! router only as a whole; never imports a handler.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use super::router::router;
use super::state::{HttpOptions, Surface};
use crate::console::traffic::Traffic;
use crate::serving::reload::Reloader;
use crate::serving::Server;

/// Listening sockets and connection settings of [`serve`].
pub struct Listeners {
    pub main: TcpListener,
    /// `--admin-addr`: the control plane and `/metrics` on their own socket.
    pub admin: Option<TcpListener>,
    /// Longest time a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// `--max-connections`: one permit per connection served, shared by both listeners
    /// and the gRPC front; at the limit new connections wait in the kernel's accept
    /// queue until one closes.
    pub connections: Arc<tokio::sync::Semaphore>,
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
    let permits = listeners.connections.clone();
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
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = conn.permits.clone();
    let metrics = conn.server.metrics.clone();
    crate::accept::accept_loop(
        listener,
        name,
        permits,
        &metrics,
        stop,
        |tcp, peer, admitted| {
            let app = app.clone();
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    tower::ServiceExt::oneshot(app.clone(), req)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(conn.header_timeout)
                .serve_connection(TokioIo::new(tcp), service);
            let watched = conn.graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = watched.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(admitted);
            });
        },
    )
    .await;
}

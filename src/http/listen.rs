//! Sockets: [`serve`] binds the router to one or two listeners (main, and `--admin-addr`),
//! runs the accept loops under the connection limit and header timeout, and on shutdown
//! turns readiness off and lets requests in flight finish within the grace. Knows the
//! router only as a whole; never imports a handler.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use super::infer::{infer_direct, infer_route, FrontBody};
use super::router::app;
use super::state::{AppState, HttpOptions, Surface};
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
    let main_app = app(
        server.clone(),
        reloader.clone(),
        opts.clone(),
        main_surface,
        traffic.clone(),
        listeners.main.local_addr()?,
    );
    loops.push(tokio::spawn(accept_loop(
        listeners.main,
        main_app,
        "main",
        conn.clone(),
        stop_rx.clone(),
    )));
    if let Some(admin) = listeners.admin {
        let bound = admin.local_addr()?;
        let admin_app = app(
            server.clone(),
            reloader,
            opts,
            Surface::Admin,
            traffic,
            bound,
        );
        loops.push(tokio::spawn(accept_loop(
            admin,
            admin_app,
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
    (router, state): (Router, AppState),
    name: &'static str,
    conn: ConnSettings,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let front = Arc::new(Front { router, state });
    let permits = conn.permits.clone();
    let metrics = conn.server.metrics.clone();
    crate::accept::accept_loop(
        listener,
        name,
        permits,
        &metrics,
        stop,
        |tcp, peer, admitted| {
            let front = front.clone();
            let service = hyper::service::service_fn(move |req| respond(front.clone(), peer, req));
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

/// What a listener serves: the router, and the state its handlers share.
struct Front {
    router: Router,
    state: AppState,
}

/// One request of a connection. `POST` to an infer route, on a listener that serves
/// inference, goes straight to its handler after the same token check as the gate: per
/// one-row request the router's parameter map, the boxed middleware futures and the
/// extensions cost about as much as the rest of vigil's HTTP handling (issue #19).
/// Everything else, and any infer path with a `%` in it, goes through the router.
async fn respond(
    front: Arc<Front>,
    peer: std::net::SocketAddr,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<axum::http::Response<FrontBody>, std::convert::Infallible> {
    if front.state.surface != Surface::Admin && req.method() == axum::http::Method::POST {
        let (parts, body) = req.into_parts();
        if let Some((model, version)) = infer_route(parts.uri.path()) {
            return Ok(infer_direct(&front.state, model, version, &parts.headers, body).await);
        }
        req = hyper::Request::from_parts(parts, body);
    }
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let answer = tower::ServiceExt::oneshot(front.router.clone(), req).await;
    answer.map(|r| r.map(http_body_util::Either::Right))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendOptions, Backends};
    use crate::config::{BackendChoice, ModelControl};
    use crate::serving::{ServerOptions, WorkerPool};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server with one model, `lookup` (tests/data/exec: a Gather, a few µs), run by
    /// tract on the thread that decoded the request, with drift off: what a request
    /// allocates is then all on this thread.
    fn one_model_server(dir: &std::path::Path) -> (Arc<Server>, Arc<Reloader>) {
        let repo = dir.join("repo");
        let v1 = repo.join("lookup/1");
        std::fs::create_dir_all(&v1).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            root.join("tests/data/exec/lookup/1/model.onnx"),
            v1.join("model.onnx"),
        )
        .unwrap();
        std::fs::write(
            repo.join("lookup/config.toml"),
            "backend = \"tract\"\n[execution]\nmode = \"inline\"\n[drift]\nenabled = false\n",
        )
        .unwrap();
        let backends = Backends::new(BackendOptions {
            default: BackendChoice::Tract,
            ort_library: None,
            parallelism: 1,
        })
        .unwrap();
        let options = ServerOptions {
            repository: repo.clone(),
            state_dir: dir.join("state"),
            max_shadow_in_flight: 4,
            retrain_defaults: Default::default(),
            payload: Default::default(),
        };
        let server = Arc::new(
            Server::new(
                backends,
                WorkerPool::new(1, 16),
                Arc::new(crate::metrics::Metrics::new()),
                options,
            )
            .unwrap(),
        );
        let reloader = Arc::new(Reloader::new(server.clone(), repo, ModelControl::Poll, &[]));
        reloader.initial_load().unwrap();
        assert!(
            server
                .table()
                .models
                .get("lookup")
                .is_some_and(|m| m.is_ready()),
            "the lookup model did not load"
        );
        server.set_ready();
        (server, reloader)
    }

    /// Sends `request` on `io` and reads one whole answer (headers and Content-Length
    /// bytes of body) into `buf`, without allocating; returns its length.
    async fn exchange(io: &mut tokio::io::DuplexStream, request: &[u8], buf: &mut [u8]) -> usize {
        io.write_all(request).await.unwrap();
        let mut n = 0;
        loop {
            n += io.read(&mut buf[n..]).await.unwrap();
            let text = &buf[..n];
            let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&text[..end])
                .unwrap()
                .to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if n >= end + 4 + len {
                return n;
            }
        }
    }

    /// Issue #19: a one-row inference request through the whole HTTP front (hyper's
    /// connection, the router or the fast path, the gate, the handler, the codec, the
    /// engine and the answer) on one thread, counted. Through the router it took 66
    /// (its parameter map, boxed middleware futures, extensions, axum's boxed body); the
    /// fast path left 42, and 41 since its answers are not boxed into axum's `Body`. The
    /// count is exact (one thread, fixed dependencies): the bound is the count.
    #[test]
    fn a_one_row_inference_takes_few_allocations_through_the_http_front() {
        let dir = std::env::temp_dir().join(format!("vigil-front-allocs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (server, reloader) = one_model_server(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = r#"{"inputs":[{"name":"index","shape":[1],"datatype":"INT64","data":[2]}]}"#;
        let request = format!(
            "POST /v2/models/lookup/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let request = request.as_bytes();
        let opts = HttpOptions {
            max_body_bytes: 1 << 20,
            max_tensor_elements: 1 << 20,
            body_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
            admin_token: None,
            api_token: None,
            metrics_token: None,
        };
        let peer: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut io = rt.block_on(async {
            let (router, state) = app(
                server.clone(),
                reloader,
                opts,
                Surface::All,
                Arc::new(Traffic::default()),
                peer,
            );
            let front = Arc::new(Front { router, state });
            let (client, conn) = tokio::io::duplex(64 * 1024);
            let service = hyper::service::service_fn(move |req| respond(front.clone(), peer, req));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            tokio::spawn(connection);
            client
        });
        let mut buf = vec![0u8; 64 * 1024];
        // Warm-up: buffers that grow once, lazily created counters.
        for _ in 0..20 {
            let n = rt.block_on(exchange(&mut io, request, &mut buf));
            let answer = std::str::from_utf8(&buf[..n]).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        const ROUNDS: u64 = 50;
        let ((), n) = crate::alloc_count::allocations(|| {
            rt.block_on(async {
                for _ in 0..ROUNDS {
                    exchange(&mut io, request, &mut buf).await;
                }
            })
        });
        let answer = std::str::from_utf8(&buf[..64]).unwrap_or("?");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let per_request = n as f64 / ROUNDS as f64;
        eprintln!("one-row inference through the HTTP front: {per_request:.1} allocations");
        drop(io);
        drop(rt);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            per_request <= 41.0,
            "{per_request:.1} allocations per one-row request"
        );
    }
}

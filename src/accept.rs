//! The accept loop both fronts share (HTTP's listeners and gRPC's): a connection is taken
//! from the kernel only once a `--max-connections` permit is free (at the limit new
//! clients wait in the kernel's accept queue), gets TCP_NODELAY, and is handed to the
//! front with its [`Admitted`] share, which gives the permit back and lowers
//! `vigil_http_connections{listener}` when the front drops it (the connection closed).
//! Knows sockets, permits and gauges only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::{GaugeGuard, Metrics};

/// A connection's share of `--max-connections`: keep it as long as the connection lives.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _open: GaugeGuard,
}

/// Accepts on `listener` until `stop` turns true (or its sender is gone), handing each
/// connection to `serve` (which must not block: it spawns the connection's task).
pub async fn accept_loop<F>(
    listener: TcpListener,
    name: &'static str,
    permits: Arc<Semaphore>,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Admitted),
{
    let open = metrics.http_connections.with_label_values(&[name]);
    let waits = metrics
        .http_connection_limit_waits
        .with_label_values(&[name]);
    if *stop.borrow_and_update() {
        return;
    }
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                waits.inc();
                tracing::debug!(listener = name, "connection limit reached; not accepting");
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
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
        // Small answers go out at once (no Nagle delay behind the client's delayed ACK).
        let _ = tcp.set_nodelay(true);
        let admitted = Admitted {
            _permit: permit,
            _open: GaugeGuard::raise(&open),
        };
        serve(tcp, peer, admitted);
    }
}

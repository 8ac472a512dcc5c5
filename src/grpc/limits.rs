//! What a gRPC client may hold: connections (one `--max-connections` budget with the HTTP
//! front, counted in `vigil_http_connections{listener="grpc"}`), and the time an inference
//! call's request message may take to arrive (`--body-timeout`, as an HTTP body). A client
//! that opens streams and never sends gets DEADLINE_EXCEEDED when that time is up, so its
//! stream, its task and its connection's permit are not held forever; HTTP/2 keepalive
//! pings and the per-connection stream limit are set in [`super::serve`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::Status;

use crate::metrics::GaugeGuard;

/// An accepted connection with its share of `--max-connections`: dropping it (the
/// connection closed, for whatever reason) gives the permit back and lowers the gauge.
pub struct Conn {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    _open: GaugeGuard,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Accepts connections while a permit of `permits` is free (at the limit new clients
/// wait in the kernel's accept queue, as on HTTP), until the returned stream is dropped.
pub fn accept(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    metrics: &crate::metrics::Metrics,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let open = metrics.http_connections.with_label_values(&["grpc"]);
    let waits = metrics
        .http_connection_limit_waits
        .with_label_values(&["grpc"]);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    waits.inc();
                    tokio::select! {
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                        () = tx.closed() => return,
                    }
                }
            };
            let tcp = tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(listener = "grpc", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Small answers go out at once (no Nagle delay behind the client's delayed ACK).
            let _ = tcp.set_nodelay(true);
            let conn = Conn {
                tcp,
                _permit: permit,
                _open: GaugeGuard::raise(&open),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The paths whose request message must arrive within the body timeout: the inference
/// service's calls, all unary. (Health/Watch and reflection streams stay open by design.)
const TIMED_PREFIX: &str = "/inference.GRPCInferenceService/";

/// Puts a deadline on the arrival of an inference call's request message.
pub fn body_deadline(
    timeout: Duration,
) -> impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone {
    move |req| {
        if !req.uri().path().starts_with(TIMED_PREFIX) {
            return req;
        }
        req.map(|body| {
            tonic::body::Body::new(Deadline {
                body,
                sleep: Box::pin(tokio::time::sleep(timeout)),
                timeout,
                done: false,
            })
        })
    }
}

/// A request body that fails with DEADLINE_EXCEEDED if it has not ended within `timeout`.
struct Deadline {
    body: tonic::body::Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    /// The body ended (or failed): the deadline no longer applies.
    done: bool,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Pin::new(&mut this.body).poll_frame(cx);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() || matches!(frame, Some(Err(_))) || this.body.is_end_stream() {
                    this.done = true;
                }
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                        "the request message did not arrive within {:?} (--body-timeout)",
                        this.timeout
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

//! What a gRPC client may hold: connections (one `--max-connections` budget with the HTTP
//! front, counted in `vigil_http_connections{listener="grpc"}`), and the time an inference
//! call's request message may take to arrive (`--body-timeout`, as an HTTP body). A client
//! that opens streams and never sends gets DEADLINE_EXCEEDED when that time is up, so its
//! stream, its task and its connection's permit are not held forever. A connection with
//! no open stream for `--grpc-idle-timeout` is closed ([`Activity`]); HTTP/2 keepalive
//! pings and the per-connection stream limit are set in [`super::serve`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::codegen::http;
use tonic::Status;

/// When a connection last had no open stream, and how many it has: a connection with
/// none for `--grpc-idle-timeout` is closed (GOAWAY), so a client that connects and sits
/// there does not hold its `--max-connections` permit forever. Two atomics per call, no
/// wake-up of the connection's task.
pub struct Activity {
    born: Instant,
    open: AtomicUsize,
    /// Milliseconds after `born` at which the last stream ended.
    last_end_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// No stream open right now.
    pub fn is_quiet(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// Resolves once the connection has had no open stream for `after` (never if `None`).
    pub async fn idle(&self, after: Option<Duration>) {
        let Some(after) = after else {
            return std::future::pending().await;
        };
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        loop {
            let wait = if self.open.load(Ordering::Acquire) > 0 {
                after
            } else {
                let quiet = self
                    .now_ms()
                    .saturating_sub(self.last_end_ms.load(Ordering::Acquire));
                if quiet >= after_ms {
                    return;
                }
                Duration::from_millis(after_ms - quiet)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One open stream of a connection (a call in flight, or a response still streaming):
/// held by the call's future, then by its response body, so a client that resets the
/// stream ends it too.
pub struct Busy(Arc<Activity>);

impl Busy {
    pub fn enter(a: &Arc<Activity>) -> Busy {
        a.open.fetch_add(1, Ordering::AcqRel);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The end time first: whoever sees no stream open also sees when the last ended.
        self.0.last_end_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted as open until it is dropped.
pub struct Tracked<B> {
    pub body: B,
    pub _busy: Busy,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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

/// What a call whose request message missed `--body-timeout` is answered.
pub fn late(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the request message did not arrive within {timeout:?} (--body-timeout)"
    ))
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
                    Poll::Ready(Some(Err(late(this.timeout))))
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

/// The caller's deadline from the `grpc-timeout` header (gRPC's wire format: at most 8
/// digits and a unit, H M S m u n); a malformed one is ignored, as tonic does.
pub fn client_deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    if !(2..=9).contains(&v.len()) {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The client connection preface (RFC 9113 §3.4): these 24 octets, then a SETTINGS frame.
const PREFACE_MAGIC: usize = 24;
/// The magic and the SETTINGS frame's 9-octet header (whose first 3 octets are its length).
const PREFACE_HEAD: usize = PREFACE_MAGIC + 9;

/// A connection's socket, watching for the end of the client's connection preface (the
/// magic and its first SETTINGS frame) as hyper reads it. A client that has not said it
/// within `--header-timeout` is dropped, whatever `--grpc-idle-timeout` is (hyper waits for
/// the preface forever, and its permit of `--max-connections` is shared with HTTP). After
/// the preface, one branch per read.
pub struct Preface<T> {
    io: T,
    /// The magic and the SETTINGS header, as far as read.
    head: [u8; PREFACE_HEAD],
    read: usize,
    said: Arc<std::sync::atomic::AtomicBool>,
    done: bool,
}

impl<T> Preface<T> {
    /// The socket, and a flag that turns true once the preface has been read.
    pub fn new(io: T) -> (Preface<T>, Arc<std::sync::atomic::AtomicBool>) {
        let said = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = Preface {
            io,
            head: [0; PREFACE_HEAD],
            read: 0,
            said: said.clone(),
            done: false,
        };
        (p, said)
    }

    fn saw(&mut self, bytes: &[u8]) {
        if self.read < PREFACE_HEAD {
            let copy = bytes.len().min(PREFACE_HEAD - self.read);
            self.head[self.read..self.read + copy].copy_from_slice(&bytes[..copy]);
        }
        self.read = self.read.saturating_add(bytes.len());
        if self.read >= PREFACE_HEAD {
            let h = &self.head[PREFACE_MAGIC..];
            let settings = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if self.read >= PREFACE_HEAD + settings {
                self.done = true;
                self.said.store(true, Ordering::Release);
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Preface<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.done && r.is_ready() {
            let this = &mut *self;
            this.saw(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Preface<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        let at = |v: &[u8]| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_bytes(v).unwrap());
            client_deadline(&h)
        };
        assert_eq!(at(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            at(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(at(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(at(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [
            &b"S"[..],
            b"123456789S",
            b"-1S",
            b"+1S",
            b"1x",
            b"1.5S",
            b"\xff\xfeS",
        ] {
            assert_eq!(at(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(client_deadline(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn idle_only_after_the_last_stream_ended_for_the_timeout() {
        let a = Activity::new();
        let after = Some(Duration::from_millis(50));
        // An open stream is never idle.
        let busy = Busy::enter(&a);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), a.idle(after))
                .await
                .is_err()
        );
        drop(busy);
        let t = Instant::now();
        a.idle(after).await;
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
        // No timeout: never.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), a.idle(None))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_preface_is_said_after_the_magic_and_the_whole_settings_frame() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let magic = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        // SETTINGS with one 6-octet setting, fed a byte at a time.
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        let (mut client, server) = tokio::io::duplex(64);
        let (mut p, said) = Preface::new(server);
        let mut one = [0u8; 1];
        for (i, b) in bytes.iter().enumerate() {
            client.write_all(&[*b]).await.unwrap();
            p.read_exact(&mut one).await.unwrap();
            let whole = i + 1 == bytes.len();
            assert_eq!(said.load(Ordering::Acquire), whole, "after {} bytes", i + 1);
        }
        // An empty SETTINGS, in one read with what follows.
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0xff]);
        let (mut client, server) = tokio::io::duplex(64);
        let (mut p, said) = Preface::new(server);
        client.write_all(&bytes).await.unwrap();
        let mut all = [0u8; 34];
        p.read_exact(&mut all).await.unwrap();
        assert!(said.load(Ordering::Acquire));
    }
}

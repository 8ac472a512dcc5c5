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
}

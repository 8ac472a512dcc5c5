//! ModelInfer without tonic's router, codec and boxed bodies: the one call that carries
//! the traffic goes from hyper's HTTP/2 stream straight to [`Inference::model_infer`]
//! (the same handler tonic calls, so the same gate, routing, counting and errors), and its
//! answer is one DATA frame and the `grpc-status` trailers. Every other call, and a
//! ModelInfer with a `grpc-encoding` (which tonic refuses in its own words), goes through
//! tonic as before.
//!
//! What tonic did on the way in is done here with its words: the 5-octet message prefix
//! (compressed flag, length), the `--max-body-bytes` limit (RESOURCE_EXHAUSTED, as
//! [`super::status::oversized`] words it), a missing or cut-off message, a protobuf that
//! does not decode (INTERNAL), request trailers merged into the metadata, and the
//! `--body-timeout` on the message's arrival (DEADLINE_EXCEEDED). A message that arrived
//! with its headers, the usual case, is read without arming a timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use prost::Message;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::ModelInferRequest;
use super::service::Inference;
use super::status::too_large;

/// The path of the call served here.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The gRPC message prefix: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// Whether `req` is a ModelInfer this path serves (tonic answers a compressed one).
pub fn takes<B>(req: &http::Request<B>) -> bool {
    req.uri().path() == MODEL_INFER
        && req
            .headers()
            .get("grpc-encoding")
            .is_none_or(|e| e.as_bytes() == b"identity")
}

/// A response body: tonic's, or the one message and trailers of a unary answer.
pub enum Reply {
    Tonic(tonic::body::Body),
    Unary(Unary),
}

impl Default for Reply {
    fn default() -> Reply {
        Reply::Unary(Unary::default())
    }
}

impl HttpBody for Reply {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            Reply::Tonic(b) => Pin::new(b).poll_frame(cx),
            Reply::Unary(u) => Poll::Ready(
                u.message
                    .take()
                    .map(Frame::data)
                    .or_else(|| u.trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Tonic(b) => b.is_end_stream(),
            Reply::Unary(u) => u.message.is_none() && u.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Tonic(b) => b.size_hint(),
            Reply::Unary(_) => SizeHint::default(),
        }
    }
}

/// One framed message, then the trailers; nothing for a trailers-only answer.
#[derive(Default)]
pub struct Unary {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

/// Serves one ModelInfer stream.
pub async fn model_infer(
    inference: Arc<Inference>,
    req: http::Request<Incoming>,
    limit: usize,
    body_timeout: Duration,
) -> http::Response<Reply> {
    let (parts, body) = req.into_parts();
    let (message, trailers) = match read_message(body, limit, body_timeout).await {
        Ok(m) => m,
        Err(status) => return status.into_http(),
    };
    let mut headers = parts.headers;
    if let Some(t) = trailers {
        headers.extend(t);
    }
    let metadata = MetadataMap::from_headers(headers);
    let request = tonic::Request::from_parts(metadata, parts.extensions, message);
    match inference.model_infer(request).await {
        Ok(response) => {
            let (metadata, message, _) = response.into_parts();
            let len = message.encoded_len();
            // The prefix holds 32 bits: a larger answer cannot be framed (tonic refuses
            // it too).
            let Ok(prefix_len) = u32::try_from(len) else {
                return Status::resource_exhausted(format!(
                    "the answer is {len} bytes, over the 4 GiB a gRPC message can hold; ask for fewer rows or outputs"
                ))
                .into_http();
            };
            let mut framed = BytesMut::with_capacity(PREFIX + len);
            framed.put_u8(0);
            framed.put_u32(prefix_len);
            if let Err(e) = message.encode(&mut framed) {
                return super::status::internal(format!("encoding the answer: {e}")).into_http();
            }
            let mut headers = metadata.into_headers();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            let mut trailers = http::HeaderMap::with_capacity(1);
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let mut resp = http::Response::new(Reply::Unary(Unary {
                message: Some(framed.freeze()),
                trailers: Some(trailers),
            }));
            *resp.headers_mut() = headers;
            resp
        }
        Err(status) => status.into_http(),
    }
}

/// A message that does not parse: INTERNAL, in prost's words (tonic's mapping).
fn decode(m: Bytes) -> Result<ModelInferRequest, Status> {
    ModelInferRequest::decode(m).map_err(|e| Status::internal(e.to_string()))
}

/// Reads the request to the end of its stream, as tonic's unary path did: the first
/// message is decoded as soon as it is whole (a broken one is refused then, not when the
/// stream ends), any later one is decoded and dropped (a broken one refused), and the
/// trailers are kept.
async fn read_message(
    mut body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<(ModelInferRequest, Option<http::HeaderMap>), Status> {
    let mut reader = Reader::default();
    let mut first: Option<ModelInferRequest> = None;
    let mut trailers: Option<http::HeaderMap> = None;
    // Armed only when a frame has to be waited for, or after a batch of them.
    let mut sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let deadline = |sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>, cx: &mut Context<'_>| {
        let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        s.as_mut()
            .poll(cx)
            .map(|()| Err(super::limits::late(timeout)))
    };
    std::future::poll_fn(|cx| {
        // A client that keeps frames coming faster than they are read does not hold
        // this thread: after a batch of frames the task yields (and the deadline holds).
        for _ in 0..FRAMES_PER_POLL {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => reader.data(data, limit, |m| {
                        let decoded = decode(m)?;
                        first.get_or_insert(decoded);
                        Ok(())
                    })?,
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers.get_or_insert_with(Default::default).extend(t);
                        }
                    }
                },
                // The client reset the stream or the connection went away: nobody reads
                // the answer.
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(Status::cancelled(e.to_string())))
                }
                Poll::Ready(None) => {
                    return Poll::Ready(reader.finish().and_then(|()| {
                        first
                            .take()
                            .map(|m| (m, trailers.take()))
                            .ok_or_else(|| Status::internal("Missing request message."))
                    }))
                }
                Poll::Pending => return deadline(&mut sleep, cx),
            }
        }
        if let Poll::Ready(late) = deadline(&mut sleep, cx) {
            return Poll::Ready(late);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// DATA and trailer frames read in one poll before the reading task yields.
const FRAMES_PER_POLL: usize = 64;

/// Cuts the stream's octets into messages as their frames arrive.
#[derive(Default)]
struct Reader {
    /// A prefix, or a message, that came in more than one frame, so far.
    buf: BytesMut,
    /// The current message's length, once its prefix has been read.
    len: Option<usize>,
}

impl Reader {
    /// Takes one DATA frame; `message` gets every message completed by it, in order.
    fn data(
        &mut self,
        mut data: Bytes,
        limit: usize,
        mut message: impl FnMut(Bytes) -> Result<(), Status>,
    ) -> Result<(), Status> {
        loop {
            let len = match self.len {
                Some(len) => len,
                None => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    let len = if self.buf.is_empty() && data.len() >= PREFIX {
                        let len = prefix(&data[..PREFIX], limit)?;
                        data.advance(PREFIX);
                        len
                    } else {
                        let take = (PREFIX - self.buf.len()).min(data.len());
                        self.buf.extend_from_slice(&data[..take]);
                        data.advance(take);
                        if self.buf.len() < PREFIX {
                            return Ok(());
                        }
                        let len = prefix(&self.buf[..PREFIX], limit)?;
                        self.buf.clear();
                        len
                    };
                    self.len = Some(len);
                    len
                }
            };
            if self.buf.is_empty() && data.len() >= len {
                // The whole message in this frame: no copy.
                self.len = None;
                message(data.split_to(len))?;
                continue;
            }
            // Grown as the octets arrive, not reserved at the declared length (tonic
            // reserves it; untouched, that is address space more than memory).
            let take = (len - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data.advance(take);
            if self.buf.len() < len {
                return Ok(());
            }
            self.len = None;
            message(std::mem::take(&mut self.buf).freeze())?;
        }
    }

    /// At the end of the stream: an error if it cut a message short. As tonic counts it,
    /// a prefix with none of its message after it is no message ("Missing request
    /// message." when it was the first), a part of a prefix or of a message is a cut.
    fn finish(&self) -> Result<(), Status> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Status::internal("Unexpected EOF decoding stream."))
        }
    }
}

/// The message length from its prefix, in tonic's words when refused.
fn prefix(p: &[u8], limit: usize) -> Result<usize, Status> {
    match p[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ))
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )))
        }
    }
    let len = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
    if len > limit {
        return Err(too_large(Some(len as u64), limit));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, msg: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    /// Feeds `parts` as DATA frames; the messages read, or the first refusal.
    fn read(parts: &[&[u8]], limit: usize) -> (Result<Vec<Vec<u8>>, Status>, Reader) {
        let mut r = Reader::default();
        let mut got = Vec::new();
        for p in parts {
            let fed = r.data(Bytes::copy_from_slice(p), limit, |m| {
                got.push(m.to_vec());
                Ok(())
            });
            if let Err(e) = fed {
                return (Err(e), r);
            }
        }
        (Ok(got), r)
    }

    /// Messages read back whole however the frames cut them, and the prefix's faults
    /// in tonic's words.
    #[test]
    fn messages_are_read_whole_across_any_cut_of_their_frames() {
        let msg: Vec<u8> = (0..40u8).collect();
        let mut wire = framed(0, &msg);
        wire.extend_from_slice(&framed(0, b"second"));
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let (got, r) = read(&[&wire[..a], &wire[a..b], &wire[b..]], 1000);
                assert_eq!(
                    got.unwrap(),
                    vec![msg.clone(), b"second".to_vec()],
                    "cut at {a}, {b}"
                );
                assert!(r.finish().is_ok());
            }
        }
        // Cut short inside a prefix or a message: EOF; right after a whole prefix, as
        // tonic counts it, no message at all.
        let one = framed(0, &msg);
        for end in 1..one.len() {
            let (got, r) = read(&[&one[..end]], 1000);
            assert!(got.unwrap().is_empty());
            let eof = r.finish();
            if end == PREFIX {
                assert!(eof.is_ok(), "{end}");
            } else {
                assert_eq!(
                    eof.unwrap_err().message(),
                    "Unexpected EOF decoding stream.",
                    "{end}"
                );
            }
        }
        // An empty message is a message.
        assert_eq!(
            read(&[&framed(0, &[])], 10).0.unwrap(),
            vec![Vec::<u8>::new()]
        );
        // Over the limit: refused at the prefix, before the message arrives, first
        // message or later one.
        for wire in [
            framed(0, &msg)[..PREFIX].to_vec(),
            [framed(0, b"ok"), framed(0, &msg)[..PREFIX].to_vec()].concat(),
        ] {
            let err = read(&[&wire], 39).0.unwrap_err();
            assert_eq!(err.code(), tonic::Code::ResourceExhausted);
            assert!(
                err.message().contains("(40 vs. 39 bytes)"),
                "{}",
                err.message()
            );
        }
        // Compressed without an encoding, or a flag that is not one.
        for (flag, needle) in [
            (1, "compressed-flag but no grpc-encoding"),
            (7, "invalid compression flag: 7"),
        ] {
            let err = read(&[&framed(flag, &msg)], 1000).0.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Internal);
            assert!(err.message().contains(needle), "{}", err.message());
        }
        // A prefix that declares a large message reserves nothing ahead of its octets.
        let mut big = framed(0, &[7; 16]);
        big[1..PREFIX].copy_from_slice(&(64u32 << 20).to_be_bytes());
        let (_, r) = read(&[&big], 64 << 20);
        assert!(r.buf.capacity() < 4096, "{}", r.buf.capacity());
    }
}

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
    let message = match ModelInferRequest::decode(message) {
        Ok(m) => m,
        // tonic's (prost's) mapping: a message that does not parse is INTERNAL.
        Err(e) => return Status::internal(e.to_string()).into_http(),
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
            let mut framed = BytesMut::with_capacity(PREFIX + message.encoded_len());
            framed.put_u8(0);
            // Within u32: an answer is at most the tensors the limits let through.
            framed.put_u32(u32::try_from(message.encoded_len()).unwrap_or(u32::MAX));
            message
                .encode(&mut framed)
                .expect("the buffer was sized for the message");
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

/// Reads the request's one message (its bytes, without the prefix) and its trailers, to
/// the end of the stream.
async fn read_message(
    mut body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<(Bytes, Option<http::HeaderMap>), Status> {
    let mut reader = Reader::default();
    // Armed only when the message has to be waited for.
    let mut sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| loop {
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => reader.data(data, limit)?,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        reader
                            .trailers
                            .get_or_insert_with(Default::default)
                            .extend(t);
                    }
                }
            },
            // The client reset the stream or the connection went away: nobody reads
            // the answer.
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Status::cancelled(e.to_string()))),
            Poll::Ready(None) => return Poll::Ready(reader.finish()),
            Poll::Pending => {
                let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                return match s.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(Status::deadline_exceeded(format!(
                        "the request message did not arrive within {timeout:?} (--body-timeout)"
                    )))),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
    })
    .await
}

/// The message as its frames arrive.
#[derive(Default)]
struct Reader {
    /// The prefix and the message so far, when they came in more than one frame.
    buf: BytesMut,
    /// The message, once whole.
    message: Option<Bytes>,
    /// The message's length, once its prefix has been read.
    len: Option<usize>,
    trailers: Option<http::HeaderMap>,
}

impl Reader {
    fn data(&mut self, mut data: Bytes, limit: usize) -> Result<(), Status> {
        if self.message.is_some() {
            // A unary call has one message; tonic reads and drops what follows it, and so
            // does this (the stream's flow control bounds what is buffered meanwhile).
            return Ok(());
        }
        if self.len.is_none() {
            if self.buf.is_empty() && data.len() >= PREFIX {
                self.len = Some(prefix(&data[..PREFIX], limit)?);
                data.advance(PREFIX);
            } else {
                let need = PREFIX - self.buf.len();
                let take = need.min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data.advance(take);
                if self.buf.len() < PREFIX {
                    return Ok(());
                }
                self.len = Some(prefix(&self.buf[..PREFIX], limit)?);
                self.buf.clear();
            }
        }
        let len = self.len.unwrap_or(0);
        if self.buf.is_empty() && data.len() >= len {
            // The whole message in this frame: no copy.
            self.message = Some(data.split_to(len));
            return Ok(());
        }
        // Grown as the octets arrive, not reserved at the declared length: a prefix that
        // says 64 MiB and one octet after it must not cost 64 MiB (tonic reserves it).
        let take = (len - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == len {
            self.message = Some(std::mem::take(&mut self.buf).freeze());
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(Bytes, Option<http::HeaderMap>), Status> {
        match self.message.take() {
            Some(m) => Ok((m, self.trailers.take())),
            None if self.len.is_none() && self.buf.is_empty() => {
                Err(Status::internal("Missing request message."))
            }
            None => Err(Status::internal("Unexpected EOF decoding stream.")),
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

    /// The message read back whole however the frames cut it, and the prefix's faults.
    #[test]
    fn a_message_is_read_whole_across_any_cut_of_its_frames() {
        let msg: Vec<u8> = (0..40u8).collect();
        let wire = framed(0, &msg);
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let mut r = Reader::default();
                for part in [&wire[..a], &wire[a..b], &wire[b..]] {
                    r.data(Bytes::copy_from_slice(part), 1000).unwrap();
                }
                let (got, _) = r.finish().unwrap();
                assert_eq!(&got[..], &msg[..], "cut at {a}, {b}");
            }
        }
        // Cut short anywhere after the first octet: EOF; nothing at all: missing.
        for end in 1..wire.len() {
            let mut r = Reader::default();
            r.data(Bytes::copy_from_slice(&wire[..end]), 1000).unwrap();
            assert_eq!(
                r.finish().unwrap_err().message(),
                "Unexpected EOF decoding stream.",
                "{end}"
            );
        }
        let err = Reader::default().finish().unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::Internal, "Missing request message.")
        );
        // An empty message is a message.
        let mut r = Reader::default();
        r.data(Bytes::from(framed(0, &[])), 10).unwrap();
        assert!(r.finish().unwrap().0.is_empty());
        // Over the limit: refused at the prefix, before the message arrives.
        let mut r = Reader::default();
        let err = r
            .data(Bytes::from(framed(0, &msg)[..PREFIX].to_vec()), 39)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("(40 vs. 39 bytes)"),
            "{}",
            err.message()
        );
        // Compressed without an encoding, or a flag that is not one.
        for (flag, needle) in [
            (1, "compressed-flag but no grpc-encoding"),
            (7, "invalid compression flag: 7"),
        ] {
            let err = Reader::default()
                .data(Bytes::from(framed(flag, &msg)), 1000)
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Internal);
            assert!(err.message().contains(needle), "{}", err.message());
        }
        // A prefix that declares a large message reserves nothing ahead of its octets.
        let mut r = Reader::default();
        let mut big = framed(0, &[7; 16])[..PREFIX + 16].to_vec();
        big[1..PREFIX].copy_from_slice(&(64u32 << 20).to_be_bytes());
        r.data(Bytes::from(big), 64 << 20).unwrap();
        assert!(r.buf.capacity() < 4096, "{}", r.buf.capacity());
        // What follows the one message is dropped.
        let mut wire2 = wire.clone();
        wire2.extend_from_slice(&framed(0, b"more"));
        let mut r = Reader::default();
        r.data(Bytes::from(wire2), 1000).unwrap();
        assert_eq!(&r.finish().unwrap().0[..], &msg[..]);
    }
}

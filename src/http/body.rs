//! Reading a request body whole, within `--max-body-bytes` (413 before reading when the
//! declared length is over it) and without a second copy. Used by the gate and by
//! inference (into a [`BodyBuffer`], whose pages decoding gives back); imports nothing of
//! `http` but `error` and the codec's buffer.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use super::error::ApiError;
use super::v2::BodyBuffer;

/// Reads the body, refusing anything over the limit with 413 (before reading, when the
/// client declared its length). The frames are copied into one buffer of the declared
/// size as they arrive: collecting them first and joining them after would hold the
/// body twice.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let mut buf = bytes::BytesMut::with_capacity(declared_length(headers, limit)?);
    read_frames(body, limit, |data| buf.extend_from_slice(data)).await?;
    Ok(buf.freeze())
}

/// [`read_body`] into a [`BodyBuffer`]: a big body gets a mapping of its own, which
/// decoding gives back page by page.
pub(super) async fn read_request_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<BodyBuffer, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    let mut buf = BodyBuffer::with_capacity(declared_length(headers, limit)?);
    read_frames(body, limit, |data| buf.extend_from_slice(data)).await?;
    Ok(buf)
}

/// The declared Content-Length (0 when there is none), once the headers are known to be
/// acceptable: within the limit, and no Content-Encoding.
fn declared_length(headers: &HeaderMap, limit: usize) -> Result<usize, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Content-Encoding '{other}' is not supported; send the body uncompressed"
            )))
        }
    }
    // At most `limit`, which is a usize.
    Ok(declared.map_or(0, |n| n as usize))
}

/// Hands each data frame to `keep`, refusing with 413 once they pass `limit` together.
/// Generic over the body so that the inference fast path reads hyper's body as it comes,
/// without boxing it into axum's.
async fn read_frames<B>(
    mut body: B,
    limit: usize,
    mut keep: impl FnMut(&[u8]),
) -> Result<(), ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if went_away(&e) {
                ApiError::ClientClosed(format!("the client closed the connection mid-body: {e}"))
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - read {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            read += data.len();
            keep(&data);
        }
    }
    Ok(())
}

/// Whether a body's error is the client going away (the connection closed or reset before
/// the declared length arrived, or the HTTP/2 stream was cancelled) rather than a body
/// that broke the protocol.
fn went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

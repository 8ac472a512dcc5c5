//! Reading a request body whole, within `--max-body-bytes` (413 before reading when the
//! declared length is over it) and without a second copy. Used by the gate and by
//! inference; imports nothing of `http` but `error`.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use super::error::ApiError;

/// Reads the body, refusing anything over the limit with 413 (before reading, when the
/// client declared its length). The frames are copied into one buffer of the declared
/// size as they arrive: collecting them first and joining them after would hold the
/// body twice.
pub(super) async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
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
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - buf.len() {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

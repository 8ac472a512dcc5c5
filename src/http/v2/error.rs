//! The codec's one error: why a body is not a valid V2 request. Imports nothing of `http`.

/// Why a body is not a valid V2 request; the message names the input and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

pub(super) fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

//! Every error a gRPC client can see, and its status code, decided in one exhaustive match
//! per source error. Messages are the HTTP front's, word for word; only the code differs
//! (400 → INVALID_ARGUMENT, 404 → NOT_FOUND, 503 → UNAVAILABLE, 401 → UNAUTHENTICATED,
//! 403 → PERMISSION_DENIED, 500 → INTERNAL; a repository change the model-control mode
//! refuses is FAILED_PRECONDITION; a message over `--max-body-bytes` is
//! RESOURCE_EXHAUSTED, as gRPC's status-code table, grpc-core (Triton) and grpc-go answer
//! it: [`oversized`] rewrites tonic's OUT_OF_RANGE for it).

use tonic::codegen::http;
use tonic::{Code, Status};

use crate::backend::BackendError;
use crate::serving::reload::ControlError;
use crate::serving::InferError;

/// A request the gRPC codec refused: the message says what is wrong (INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl From<CodecError> for Status {
    fn from(e: CodecError) -> Status {
        Status::invalid_argument(e.0)
    }
}

pub fn infer_status(e: InferError) -> Status {
    let msg = e.to_string();
    match e {
        InferError::NotFound(_) => Status::not_found(msg),
        InferError::Invalid(_) => Status::invalid_argument(msg),
        InferError::Overloaded | InferError::NotReady { .. } => Status::unavailable(msg),
        // The engine refused inputs that matched the declared signature: the request is
        // at fault, as over HTTP.
        InferError::Backend(BackendError::Run(_)) => Status::invalid_argument(msg),
        InferError::Backend(
            BackendError::Read(_)
            | BackendError::Unsupported(_)
            | BackendError::Load(_)
            | BackendError::Unavailable { .. },
        ) => internal(msg),
    }
}

pub fn control_status(e: ControlError) -> Status {
    let msg = e.to_string();
    match e {
        ControlError::NotFound(_) | ControlError::NotServed(_) => Status::not_found(msg),
        ControlError::Failed(_) => Status::invalid_argument(msg),
        // Refused in this model-control mode (HTTP 400): the server's state, not the
        // request, is what does not allow it.
        ControlError::NotAllowed(_) => Status::failed_precondition(msg),
    }
}

/// An unexpected failure: logged once, here.
pub fn internal(msg: String) -> Status {
    tracing::error!(error = %msg, "internal error (gRPC)");
    Status::internal(msg)
}

pub fn unauthenticated() -> Status {
    Status::unauthenticated(
        "missing or wrong bearer token (authorization: Bearer <token> metadata)",
    )
}

/// A request message over `limit` bytes (`found` of them, when known): RESOURCE_EXHAUSTED
/// in grpc-core's words, with the limit and the flag that sets it.
pub fn too_large(found: Option<u64>, limit: usize) -> Status {
    let size = match found {
        Some(n) => format!("{n} vs. {limit}"),
        None => format!("the limit is {limit}"),
    };
    Status::resource_exhausted(format!(
        "Received message larger than max ({size} bytes): the server takes messages of up to {limit} bytes (--max-body-bytes / VIGIL_MAX_BODY_BYTES)"
    ))
}

/// tonic refuses a message over a service's `max_decoding_message_size` with OUT_OF_RANGE
/// before any handler runs; gRPC's status-code table says RESOURCE_EXHAUSTED ("server:
/// received message larger than max"), which is what grpc-core (so Triton) and grpc-go
/// answer and what clients retry on or report as a size problem. No handler of ours and
/// no other tonic path answers OUT_OF_RANGE (the encoding limit is off, every service
/// decodes with `limit`), so the code alone marks the answer; this turns it into
/// RESOURCE_EXHAUSTED with grpc-core's wording, the limit and the flag that sets it.
pub fn oversized<B>(limit: usize) -> impl Fn(http::Response<B>) -> http::Response<B> + Clone {
    move |mut resp| {
        let headers = resp.headers_mut();
        let Some(refused) = Status::from_header_map(headers) else {
            return resp;
        };
        if refused.code() != Code::OutOfRange {
            return resp;
        }
        // tonic says how large the message was ("found N bytes"); shown when it does.
        let found = refused
            .message()
            .split_once("found ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        if too_large(found, limit).add_header(headers).is_err() {
            tracing::warn!("could not rewrite an oversized message's status");
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_message_is_resource_exhausted_with_the_limit_and_the_flag() {
        let tonic_answer: http::Response<()> = Status::out_of_range(
            "Error, decoded message length too large: found 2000 bytes, the limit is: 1000 bytes",
        )
        .into_http();
        let resp = oversized(1000)(tonic_answer);
        let status = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("Received message larger than max (2000 vs. 1000 bytes)"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("--max-body-bytes"),
            "{}",
            status.message()
        );
        // Every other answer passes unchanged.
        let other: http::Response<()> = Status::invalid_argument("x").into_http();
        let status = Status::from_header_map(oversized(1000)(other).headers()).unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "x")
        );
    }
}

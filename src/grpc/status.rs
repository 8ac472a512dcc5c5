//! Every error a gRPC client can see, and its status code, decided in one exhaustive match
//! per source error. Messages are the HTTP front's, word for word; only the code differs
//! (400 → INVALID_ARGUMENT, 404 → NOT_FOUND, 503 → UNAVAILABLE, 401 → UNAUTHENTICATED,
//! 403 → PERMISSION_DENIED, 500 → INTERNAL; a repository change the model-control mode
//! refuses is FAILED_PRECONDITION; a message over the size limit is
//! OUT_OF_RANGE, tonic's answer before any handler runs).

use tonic::Status;

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

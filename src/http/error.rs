//! Every error a client can see, and its HTTP status, decided in one exhaustive match.
//! Bodies are `{"error": "..."}`; 503s carry `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::backend::BackendError;
use crate::serving::reload::ControlError;
use crate::serving::{InferError, RolloutError};

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    MethodNotAllowed,
    Unauthorized,
    Forbidden(String),
    PayloadTooLarge(usize),
    RequestTimeout(String),
    /// The client closed the connection before its request's body was read: the answer
    /// is 499 (nginx's code for it), read only by a client that half-closed its side, and
    /// it is no request's fault.
    ClientClosed(String),
    Unavailable(String),
    Internal(String),
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> ApiError {
        let msg = e.to_string();
        match e {
            InferError::NotFound(_) => ApiError::NotFound(msg),
            InferError::Invalid(_) => ApiError::BadRequest(msg),
            InferError::Overloaded | InferError::NotReady { .. } => ApiError::Unavailable(msg),
            // The engine refused inputs that matched the declared signature (inconsistent
            // dynamic dimensions between inputs, say): the request is at fault.
            InferError::Backend(BackendError::Run(_)) => ApiError::BadRequest(msg),
            InferError::Backend(
                BackendError::Read(_)
                | BackendError::Unsupported(_)
                | BackendError::Load(_)
                | BackendError::Unavailable { .. },
            ) => ApiError::Internal(msg),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let msg = e.to_string();
        match e {
            ControlError::NotFound(_) | ControlError::NotServed(_) => ApiError::NotFound(msg),
            ControlError::Failed(_) | ControlError::NotAllowed(_) => ApiError::BadRequest(msg),
        }
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> ApiError {
        let msg = e.to_string();
        match e {
            RolloutError::UnknownModel(_) => ApiError::NotFound(msg),
            RolloutError::Invalid(_) => ApiError::BadRequest(msg),
            RolloutError::Persist(_) => ApiError::Internal(msg),
        }
    }
}

impl From<super::v2::DecodeError> for ApiError {
    fn from(e: super::v2::DecodeError) -> ApiError {
        ApiError::BadRequest(e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path".to_string(),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)".to_string(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {limit} bytes (--max-body-bytes)"),
            ),
            ApiError::RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, m),
            ApiError::ClientClosed(m) => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                m,
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        };
        let body = serde_json::json!({ "error": message }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

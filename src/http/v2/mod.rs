//! The KServe V2 inference body, both ways: JSON, and JSON header + raw tensors (Triton's
//! binary tensor extension: `Inference-Header-Content-Length`, `binary_data_size`,
//! `binary_data`, `binary_data_output`).
//!
//! Decoding happens in two steps so that memory per request is bounded before anything is
//! decoded: [`check_request`] reads the JSON header and checks every input's descriptor
//! against the target version's signature (name, datatype, shape, element limit) and
//! its data's size against its shape; only then [`CheckedRequest::decode`] turns the data
//! into [`Tensor`]s, each allocated once at its final size. Decoded data then takes at
//! most 4/3 of the body for BYTES and the binary layout's size for numbers; JSON numbers
//! take up to 4 bytes (FP32) or 8 bytes (64-bit types) per element of at least 2 bytes.
//! A big body is read into a [`BodyBuffer`] whose pages are given back as their data is
//! decoded ([`CheckedRequest::decode_releasing`]), so a request's peak is about the larger
//! of its body and its tensors, not their sum.
//!
//! Rooms: [`buffer`] holds the body and gives its pages back, [`request`] reads and
//! checks the JSON header and decodes the inputs, [`json_data`] parses one input's JSON
//! `data` straight into a typed vector, [`response`] encodes outputs, [`error`] is the
//! one error type.
//! This codec knows tensors and model signatures only: it never imports the handlers,
//! axum or the rest of `http`.

mod buffer;
mod error;
mod json_data;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use buffer::{BodyBuffer, MAP_FROM};
pub use error::DecodeError;
pub use request::{check_request, decode_request, CheckedRequest, InferRequest, OutputRequest};
pub use response::{encode_response, EncodedResponse};

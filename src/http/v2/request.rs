//! Reading a V2 request: the JSON header is parsed and every input's descriptor checked
//! against the version's signature and the element limit ([`check_request`]) before any
//! data is decoded ([`CheckedRequest::decode`]; each input's data is a range of the body,
//! given back to the kernel as it is decoded when the body is a [`BodyBuffer`]).
//! Must never import the handlers or axum: it sees bytes, signatures and tensors.

use std::ops::Range;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::buffer::{Body, BodyBuffer};
use super::error::{bad, DecodeError};
use super::json_data::{json_data, json_data_from, Mode, GROUP};
use crate::backend::ModelSignature;
use crate::serving::{check_raw_size, Described, InputCheck, RawField};
use crate::tensor::{DataType, Tensor, TensorData};

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs asked for, in order; `None` means all, in the model's order.
    pub outputs: Option<Vec<OutputRequest>>,
    /// Default for outputs without their own `binary_data` (top-level `binary_data_output`).
    pub binary_output: bool,
}

#[derive(Debug)]
pub struct OutputRequest {
    pub name: String,
    pub binary: Option<bool>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Kept as text and parsed once the datatype and shape are known, straight into a
    /// typed vector (no `Value` per element).
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}
fn param_bool(
    params: &Option<Map<String, Value>>,
    key: &str,
    whose: &str,
) -> Result<Option<bool>, DecodeError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(bad(format!(
            "{whose}: parameter '{key}' must be a boolean, got {other}"
        ))),
    }
}

fn param_usize(
    params: &Option<Map<String, Value>>,
    key: &str,
    whose: &str,
) -> Result<Option<usize>, DecodeError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                bad(format!(
                    "{whose}: parameter '{key}' must be a non-negative integer, got {v}"
                ))
            }),
    }
}

/// A request whose JSON header has been read and checked against the model's signature
/// (every input's name, datatype and shape, the element limit, and that each input's
/// data is large enough for its shape), with no tensor data decoded yet. It holds the
/// data's places in the body, not the body: decode it with the body it was checked on.
pub struct CheckedRequest {
    pub id: Option<String>,
    /// Outputs asked for, in order; `None` means all, in the model's order.
    pub outputs: Option<Vec<OutputRequest>>,
    /// Default for outputs without their own `binary_data` (top-level `binary_data_output`).
    pub binary_output: bool,
    inputs: Vec<PendingInput>,
}

/// An input whose descriptor passed the checks; its data is still the body's bytes.
struct PendingInput {
    name: String,
    shape: Vec<usize>,
    datatype: DataType,
    elements: usize,
    data: Source,
}

/// Where an input's data is in the body.
enum Source {
    /// The text of the JSON `data` value.
    Json(Range<usize>),
    /// The input's part of the binary data.
    Binary(Range<usize>),
}

/// Where `part`, a slice of `body`, lies in it.
fn range_in(body: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    start..start.saturating_add(part.len())
}

/// Decodes a request body for a model with `signature`: [`check_request`], then
/// [`CheckedRequest::decode`].
pub fn decode_request(
    body: &[u8],
    header_len: Option<usize>,
    signature: &ModelSignature,
    max_elements: usize,
) -> Result<InferRequest, DecodeError> {
    check_request("", body, header_len, signature, max_elements)?.decode(body)
}

/// The smallest number of JSON text bytes one element of `datatype` takes (`0`, `""`,
/// `true`), for the most elements a `data` text can hold.
fn min_json_element(datatype: DataType) -> usize {
    match datatype {
        DataType::Bool => 4,
        DataType::Bytes => 2,
        _ => 1,
    }
}

/// Reads the JSON header of a body and checks it against `signature` and the element
/// limit, before any tensor data is decoded; the memory the data will take is then
/// known to be within a small multiple of the body. `header_len` is
/// `Inference-Header-Content-Length` when present: the JSON is the first `header_len`
/// bytes and binary tensor data follows. `model` names the model in messages (Triton's
/// "... for model 'm'"); empty when not known.
pub fn check_request(
    model: &str,
    body: &[u8],
    header_len: Option<usize>,
    signature: &ModelSignature,
    max_elements: usize,
) -> Result<CheckedRequest, DecodeError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let de = &mut serde_json::Deserializer::from_slice(json);
    // Parsed without path tracking (serde_path_to_error allocates for every key and
    // element it passes: ~13 of a one-row request's ~60 allocations); a request that
    // does not parse is parsed again with it, for the path in the message.
    let raw = match RawRequest::deserialize(&mut *de) {
        Ok(raw) => raw,
        Err(first) => {
            let again = &mut serde_json::Deserializer::from_slice(json);
            return Err(
                match serde_path_to_error::deserialize::<_, RawRequest>(&mut *again) {
                    Err(e) => bad(format!(
                        "invalid inference request JSON at '{}': {}",
                        e.path(),
                        e.inner()
                    )),
                    Ok(_) => bad(format!("invalid inference request JSON: {first}")),
                },
            );
        }
    };
    de.end()
        .map_err(|e| bad(format!("invalid inference request JSON: {e}")))?;

    if let Some(p) = &raw.parameters {
        if p.contains_key("classification") {
            return Err(bad("the classification extension is not supported"));
        }
    }
    let binary_output =
        param_bool(&raw.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let mut check = InputCheck::for_model(signature, model).with_limit(max_elements);
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for input in raw.inputs {
        let whose = format!("input '{}'", input.name);
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| bad(format!("{whose}: dimension {d} is too large")))
            })
            .collect::<Result<_, _>>()?;
        let described = check
            .describe(&input.name, &input.datatype, &shape)
            .map_err(|e| bad(e.to_string()))?;
        let Described {
            datatype,
            elements: expected,
        } = described;
        let data = match param_usize(&input.parameters, "binary_data_size", &whose)? {
            Some(size) => {
                if input.data.is_some() {
                    return Err(bad(format!(
                        "{whose}: has both 'data' and binary_data_size"
                    )));
                }
                if header_len.is_none() {
                    return Err(bad(format!(
                        "{whose}: binary_data_size given but the request has no Inference-Header-Content-Length header"
                    )));
                }
                if size > binary.len() {
                    return Err(bad(format!(
                        "{whose}: binary_data_size is {size} but only {} bytes of binary data are left",
                        binary.len()
                    )));
                }
                check_raw_size(
                    &input.name,
                    &shape,
                    described,
                    size,
                    RawField::BinaryDataSize,
                )
                .map_err(|e| bad(e.to_string()))?;
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                Source::Binary(range_in(body, mine))
            }
            None => {
                let raw = input
                    .data
                    .ok_or_else(|| bad(format!("{whose}: no 'data' and no binary_data_size")))?;
                let text = raw.get();
                // Elements are separated by commas: n of them take at least
                // n * (min + 1) - 1 bytes.
                let most = (text.len() + 1) / (min_json_element(datatype) + 1);
                if expected > most {
                    // Count what is there (with a bounded scratch buffer) for a
                    // precise message.
                    let got = json_data(datatype, text.as_bytes(), usize::MAX, Mode::Count)
                        .map_err(|e| bad(format!("{whose}: {}", e.0)))?;
                    return Err(bad(format!(
                        "{whose}: shape {shape:?} needs {expected} elements, got {got}"
                    )));
                }
                Source::Json(range_in(body, text.as_bytes()))
            }
        };
        inputs.push(PendingInput {
            name: input.name,
            shape,
            datatype,
            elements: expected,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the inputs that no input claims",
            binary.len()
        )));
    }
    check.finish().map_err(|e| bad(e.to_string()))?;
    let outputs = match raw.outputs {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .map(|o| {
                    let whose = format!("output '{}'", o.name);
                    if o.parameters
                        .as_ref()
                        .is_some_and(|p| p.contains_key("classification"))
                    {
                        return Err(bad(format!(
                            "{whose}: the classification extension is not supported"
                        )));
                    }
                    let binary = param_bool(&o.parameters, "binary_data", &whose)?;
                    Ok(OutputRequest {
                        name: o.name,
                        binary,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(CheckedRequest {
        id: raw.id,
        outputs,
        binary_output,
        inputs,
    })
}

impl CheckedRequest {
    /// Decodes the inputs' data, read from `body` (the body this request was checked
    /// on), into tensors, each allocated once at its final size.
    pub fn decode(self, body: &[u8]) -> Result<InferRequest, DecodeError> {
        self.decode_from(&mut { body })
    }

    /// [`CheckedRequest::decode`] from a [`BodyBuffer`], whose pages are given back as
    /// their data is decoded: the request then takes about the larger of its body and
    /// its tensors, not their sum.
    pub fn decode_releasing(self, body: &mut BodyBuffer) -> Result<InferRequest, DecodeError> {
        self.decode_from(body)
    }

    fn decode_from(self, body: &mut impl Body) -> Result<InferRequest, DecodeError> {
        let inputs = self
            .inputs
            .into_iter()
            .map(|input| {
                let whose = format!("input '{}'", input.name);
                let data = match input.data {
                    Source::Binary(range) => binary_data(input.datatype, body, range)
                        .map_err(|e| bad(format!("{whose}: {}", e.0)))?,
                    Source::Json(range) => {
                        let mut data = TensorData::with_capacity(
                            input.datatype,
                            input.elements,
                            range.len().saturating_sub(2 * input.elements),
                        );
                        json_data_from(input.datatype, body, range, input.elements, &mut data)
                            .map_err(|e| bad(format!("{whose}: {}", e.0)))?;
                        data
                    }
                };
                if data.len() != input.elements {
                    return Err(bad(format!(
                        "{whose}: shape {:?} needs {} elements, got {}",
                        input.shape,
                        input.elements,
                        data.len()
                    )));
                }
                Ok(Tensor {
                    name: input.name,
                    shape: input.shape,
                    data,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(InferRequest {
            id: self.id,
            inputs,
            outputs: self.outputs,
            binary_output: self.binary_output,
        })
    }
}

/// One input's binary data at `range` of `body`, decoded [`GROUP`] bytes at a time (or
/// one whole element, if larger), each group's pages given back once it is copied.
fn binary_data(
    datatype: DataType,
    body: &mut impl Body,
    range: Range<usize>,
) -> Result<TensorData, DecodeError> {
    let missing = || bad("the input's data lies outside the body (this is a bug)");
    let raw = body.bytes().get(range.clone()).ok_or_else(missing)?;
    let mut data = TensorData::for_le_bytes(datatype, raw).map_err(|e| bad(e.to_string()))?;
    let (mut at, mut window) = (range.start, GROUP);
    while at < range.end {
        let end = range.end.min(at.saturating_add(window));
        let raw = body.bytes().get(at..end).ok_or_else(missing)?;
        let used = data
            .extend_from_le_bytes(raw)
            .map_err(|e| bad(e.to_string()))?;
        at += used;
        body.release(range.start..at);
        // An element longer than the window: widen it until the element fits.
        window = if used == 0 {
            if end == range.end {
                return Err(bad(
                    "the binary data ends inside an element (this is a bug)",
                ));
            }
            window.saturating_mul(2)
        } else {
            GROUP
        };
    }
    Ok(data)
}

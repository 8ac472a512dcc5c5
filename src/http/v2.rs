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

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::backend::ModelSignature;
use crate::serving::InputCheck;
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

/// Why a body is not a valid V2 request; the message names the input and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
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
/// data is large enough for its shape), with no tensor data decoded yet.
pub struct CheckedRequest<'a> {
    pub id: Option<String>,
    /// Outputs asked for, in order; `None` means all, in the model's order.
    pub outputs: Option<Vec<OutputRequest>>,
    /// Default for outputs without their own `binary_data` (top-level `binary_data_output`).
    pub binary_output: bool,
    inputs: Vec<PendingInput<'a>>,
}

/// An input whose descriptor passed the checks; its data is still the body's bytes.
struct PendingInput<'a> {
    name: String,
    shape: Vec<usize>,
    datatype: DataType,
    elements: usize,
    data: Source<'a>,
}

enum Source<'a> {
    /// The text of the JSON `data` value.
    Json(&'a str),
    /// The input's slice of the binary part.
    Binary(&'a [u8]),
}

/// Decodes a request body for a model with `signature`: [`check_request`], then
/// [`CheckedRequest::decode`].
pub fn decode_request(
    body: &[u8],
    header_len: Option<usize>,
    signature: &ModelSignature,
    max_elements: usize,
) -> Result<InferRequest, DecodeError> {
    check_request(body, header_len, signature, max_elements)?.decode()
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
/// bytes and binary tensor data follows.
pub fn check_request<'a>(
    body: &'a [u8],
    header_len: Option<usize>,
    signature: &ModelSignature,
    max_elements: usize,
) -> Result<CheckedRequest<'a>, DecodeError> {
    let mut total_elements = 0usize;
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
    let raw: RawRequest = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        bad(format!(
            "invalid inference request JSON at '{}': {}",
            e.path(),
            e.inner()
        ))
    })?;
    de.end()
        .map_err(|e| bad(format!("invalid inference request JSON: {e}")))?;

    if let Some(p) = &raw.parameters {
        if p.contains_key("classification") {
            return Err(bad("the classification extension is not supported"));
        }
    }
    let binary_output =
        param_bool(&raw.parameters, "binary_data_output", "request")?.unwrap_or(false);
    let mut check = InputCheck::new(signature);
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for input in raw.inputs {
        let whose = format!("input '{}'", input.name);
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            bad(format!(
                "{whose}: unknown datatype '{}' (expected one of {})",
                input.datatype,
                DataType::ALL.map(|d| d.as_str()).join(", ")
            ))
        })?;
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| bad(format!("{whose}: dimension {d} is too large")))
            })
            .collect::<Result<_, _>>()?;
        let expected = Tensor::shape_elements(&shape)
            .ok_or_else(|| bad(format!("{whose}: shape {shape:?} is too large")))?;
        total_elements = total_elements.saturating_add(expected);
        if total_elements > max_elements {
            return Err(bad(format!(
                "{whose}: shape {shape:?} brings the request to {total_elements} elements, more than the limit of {max_elements} (--max-tensor-elements)"
            )));
        }
        check
            .input(&input.name, datatype, &shape)
            .map_err(|e| bad(e.to_string()))?;
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
                match datatype.element_size() {
                    Some(width) if expected.checked_mul(width) != Some(size) => {
                        return Err(bad(format!(
                            "{whose}: shape {shape:?} needs {expected} elements ({} bytes of {datatype}), but binary_data_size is {size}",
                            expected.saturating_mul(width)
                        )))
                    }
                    // Each BYTES element has a 4-byte length before it.
                    None if expected > size / 4 => {
                        return Err(bad(format!(
                            "{whose}: shape {shape:?} needs {expected} elements, but binary_data_size {size} holds at most {} BYTES elements (4-byte length each)",
                            size / 4
                        )))
                    }
                    _ => {}
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                Source::Binary(mine)
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
                    let got = json_data(datatype, text, usize::MAX, Mode::Count)
                        .map_err(|e| bad(format!("{whose}: {}", e.0)))?;
                    return Err(bad(format!(
                        "{whose}: shape {shape:?} needs {expected} elements, got {got}"
                    )));
                }
                Source::Json(text)
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

impl CheckedRequest<'_> {
    /// Decodes the inputs' data into tensors, each allocated once at its final size.
    pub fn decode(self) -> Result<InferRequest, DecodeError> {
        let inputs = self
            .inputs
            .into_iter()
            .map(|input| {
                let whose = format!("input '{}'", input.name);
                let data = match input.data {
                    Source::Binary(raw) => TensorData::from_le_bytes(input.datatype, raw)
                        .map_err(|e| bad(format!("{whose}: {e}")))?,
                    Source::Json(text) => {
                        let mut data = TensorData::with_capacity(
                            input.datatype,
                            input.elements,
                            text.len().saturating_sub(2 * input.elements),
                        );
                        json_data(input.datatype, text, input.elements, Mode::Keep(&mut data))
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

/// What [`json_data`] does with the elements it parses.
enum Mode<'d> {
    /// Appends them to the vector (allocated beforehand at the shape's size).
    Keep(&'d mut TensorData),
    /// Only checks and counts them.
    Count,
}

/// Elements a counting pass holds at once before it empties its scratch vector.
const COUNT_SCRATCH: usize = 4096;

/// Parses an input's `data` (nested or flat JSON arrays, row-major, or one scalar)
/// straight into a typed vector, checking each element against the datatype and never
/// taking more than `limit` elements. Returns how many elements it saw.
fn json_data(
    datatype: DataType,
    text: &str,
    limit: usize,
    mode: Mode<'_>,
) -> Result<usize, DecodeError> {
    let mut scratch;
    let (data, counting) = match mode {
        Mode::Keep(data) => (data, false),
        Mode::Count => {
            scratch = TensorData::with_capacity(datatype, COUNT_SCRATCH, 0);
            (&mut scratch, true)
        }
    };
    let mut builder = DataBuilder {
        data,
        counting,
        datatype,
        count: 0,
        limit,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = serde::de::DeserializeSeed::deserialize(&mut builder, &mut de);
    if let Some(e) = builder.error {
        return Err(e);
    }
    parsed
        .and_then(|()| de.end())
        .map_err(|e| bad(format!("invalid data: {e}")))?;
    Ok(builder.count)
}

/// Receives the elements of `data` as serde_json parses them.
struct DataBuilder<'d> {
    data: &'d mut TensorData,
    /// Only counting: `data` is a scratch vector, emptied every [`COUNT_SCRATCH`] elements.
    counting: bool,
    datatype: DataType,
    count: usize,
    limit: usize,
    /// The first problem found (a JSON syntax error is reported by serde_json instead).
    error: Option<DecodeError>,
}

/// How an element looked, for error messages.
enum Seen<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Other(&'static str),
}

impl std::fmt::Display for Seen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Bool(b) => write!(f, "{b}"),
            Seen::I64(x) => write!(f, "{x}"),
            Seen::U64(x) => write!(f, "{x}"),
            Seen::F64(x) => write!(f, "{x}"),
            Seen::Str(s) => write!(f, "{}", Value::String((*s).to_string())),
            Seen::Other(what) => write!(f, "{what}"),
        }
    }
}

impl DataBuilder<'_> {
    fn fail<E: serde::de::Error>(&mut self, e: DecodeError) -> Result<(), E> {
        self.error = Some(e);
        Err(E::custom("invalid tensor data"))
    }

    fn push<E: serde::de::Error>(&mut self, seen: Seen<'_>) -> Result<(), E> {
        let i = self.count;
        if i >= self.limit {
            return self.fail(bad(format!(
                "more data elements than the shape's {}",
                self.limit
            )));
        }
        let datatype = self.datatype;
        let wrong = |seen: &Seen<'_>| {
            bad(format!(
                "element {i} ({seen}) is not a valid {datatype} value"
            ))
        };
        macro_rules! int {
            ($v:ident, $t:ty) => {{
                let x = match seen {
                    Seen::I64(x) => <$t>::try_from(x).ok(),
                    Seen::U64(x) => <$t>::try_from(x).ok(),
                    _ => None,
                };
                match x {
                    Some(x) => $v.push(x),
                    None => return self.fail(wrong(&seen)),
                }
            }};
        }
        let float = match seen {
            Seen::I64(x) => Some(x as f64),
            Seen::U64(x) => Some(x as f64),
            Seen::F64(x) => Some(x),
            Seen::Str("NaN" | "nan") => Some(f64::NAN),
            Seen::Str("Infinity" | "inf" | "+inf") => Some(f64::INFINITY),
            Seen::Str("-Infinity" | "-inf") => Some(f64::NEG_INFINITY),
            _ => None,
        };
        if self.counting && self.data.len() >= COUNT_SCRATCH {
            self.data.clear();
        }
        match &mut *self.data {
            TensorData::Bool(v) => match seen {
                Seen::Bool(b) => v.push(b),
                _ => return self.fail(wrong(&seen)),
            },
            TensorData::Uint8(v) => int!(v, u8),
            TensorData::Uint16(v) => int!(v, u16),
            TensorData::Uint32(v) => int!(v, u32),
            TensorData::Uint64(v) => int!(v, u64),
            TensorData::Int8(v) => int!(v, i8),
            TensorData::Int16(v) => int!(v, i16),
            TensorData::Int32(v) => int!(v, i32),
            TensorData::Int64(v) => int!(v, i64),
            TensorData::Fp32(v) => match float {
                Some(x) if x.is_finite() && x.abs() > f32::MAX as f64 => {
                    return self.fail(bad(format!(
                        "element {i} ({seen}) is out of range for FP32"
                    )))
                }
                Some(x) => v.push(x as f32),
                None => return self.fail(wrong(&seen)),
            },
            TensorData::Fp64(v) => match float {
                Some(x) => v.push(x),
                None => return self.fail(wrong(&seen)),
            },
            TensorData::Bytes(v) => match seen {
                Seen::Str(s) => {
                    if let Err(e) = v.push(s.as_bytes()) {
                        return self.fail(bad(format!("element {i}: {e}")));
                    }
                }
                _ => return self.fail(wrong(&seen)),
            },
        }
        self.count += 1;
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut DataBuilder<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut DataBuilder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of {} values", self.datatype)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Seen::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Seen::I64(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Seen::U64(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Seen::F64(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Seen::Str(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.push(Seen::Other("null"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.push(Seen::Other("an object"))
    }
}

/// Tensor data as a flat JSON array. Floats are written at their own precision (an
/// `f32` as the shortest decimal that reads back to it); NaN and infinities, which JSON
/// cannot express, become `null` (ask for binary outputs to get them exactly).
struct JsonData<'a>(&'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        crate::dispatch_numeric!(self.0,
            v => { for x in v { seq.serialize_element(x)?; } },
            bool b => { for x in b { seq.serialize_element(x)?; } },
            bytes st => { for x in st.iter() { seq.serialize_element(&String::from_utf8_lossy(x))?; } }
        );
        seq.end()
    }
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputJson<'a>>,
}

/// An encoded response: the body, and the JSON header's length when binary data follows.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Encodes the chosen outputs; each `(tensor, binary)` pair says how to send it.
pub fn encode_response(
    model: &str,
    version: u64,
    id: Option<&str>,
    outputs: &[(&Tensor, bool)],
) -> EncodedResponse {
    let doc = ResponseJson {
        model_name: model,
        model_version: version.to_string(),
        id,
        outputs: outputs
            .iter()
            .map(|&(t, binary)| OutputJson {
                name: &t.name,
                datatype: t.datatype().as_str(),
                shape: &t.shape,
                parameters: binary.then(|| BinaryParams {
                    binary_data_size: t.data.byte_size(),
                }),
                data: (!binary).then_some(JsonData(&t.data)),
            })
            .collect(),
    };
    let mut body = serde_json::to_vec(&doc).expect("serialising plain data cannot fail");
    let any_binary = outputs.iter().any(|&(_, b)| b);
    let header_len = any_binary.then_some(body.len());
    for &(t, binary) in outputs {
        if binary {
            t.data.write_le_bytes(&mut body);
        }
    }
    EncodedResponse { body, header_len }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::bytes::ByteStrings;
    use crate::tensor::spec::TensorSpec;

    /// A signature that accepts whatever the body's header declares (any size in every
    /// dimension), so that these tests reach the data.
    fn lenient(body: &[u8], header_len: Option<usize>) -> ModelSignature {
        let json = &body[..header_len.unwrap_or(body.len()).min(body.len())];
        let header: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
        let inputs = header["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                Some(TensorSpec {
                    name: i["name"].as_str()?.to_string(),
                    datatype: DataType::parse(i["datatype"].as_str()?)?,
                    shape: vec![-1; i["shape"].as_array()?.len()],
                })
            })
            .collect();
        ModelSignature {
            inputs,
            outputs: Vec::new(),
        }
    }

    fn decode(body: &[u8], header_len: Option<usize>) -> Result<InferRequest, DecodeError> {
        decode_request(body, header_len, &lenient(body, header_len), usize::MAX)
    }

    #[test]
    fn json_nested_and_flat_agree() {
        let nested =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#;
        let flat =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#;
        let a = decode(nested, None).unwrap();
        let b = decode(flat, None).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.5]));
    }

    #[test]
    fn binary_inputs_are_sliced_in_order() {
        let header = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"BOOL","parameters":{"binary_data_size":1}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        body.push(1);
        let req = decode(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].data, TensorData::Int32(vec![7, -1]));
        assert_eq!(req.inputs[1].data, TensorData::Bool(vec![true]));
        assert!(req.binary_output);
        // One byte too many, one too few.
        let mut extra = body.clone();
        extra.push(0);
        assert!(decode(&extra, Some(header.len()))
            .unwrap_err()
            .0
            .contains("no input claims"));
        assert!(decode(&body[..body.len() - 1], Some(header.len()))
            .unwrap_err()
            .0
            .contains("binary_data_size is 1"));
        assert!(decode(&body, Some(body.len() + 1)).is_err());
    }

    #[test]
    fn errors_name_the_input() {
        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                "needs 3 elements, got 2",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
                "more data elements",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#,
                "not a valid INT8",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
                "not a valid INT32",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP17","data":[1]}]}"#,
                "unknown datatype 'FP17'",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
                "not a valid BOOL",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                "inputs[0].shape[0]",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                "no 'data'",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
                "not a valid FP32",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e300]}]}"#,
                "out of range for FP32",
            ),
            (br#"{"inputs":[]"#, "invalid inference request JSON"),
            (br#"{"inputs":[]}x"#, "trailing characters"),
            (br#"{"inputz":[]}"#, "missing field `inputs`"),
        ];
        for (body, want) in cases {
            let err = decode(body, None).unwrap_err().0;
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            if !want.contains("JSON")
                && !want.contains("missing field")
                && !want.contains("shape[0]")
                && !want.contains("trailing")
            {
                assert!(err.contains("input 'x'"), "{err}");
            }
        }
    }

    #[test]
    fn element_limit_is_checked_before_decoding() {
        let body = br#"{"inputs":[{"name":"x","shape":[10000000],"datatype":"FP32","data":[1]}]}"#;
        let err = decode_request(body, None, &lenient(body, None), 1000)
            .unwrap_err()
            .0;
        assert!(err.contains("limit of 1000"), "{err}");
        // Without the limit, a tiny body claiming a huge shape is a clean mismatch.
        let err = decode(body, None).unwrap_err().0;
        assert!(err.contains("needs 10000000 elements, got 1"), "{err}");
    }

    #[test]
    fn descriptors_are_checked_against_the_signature_before_the_data() {
        let sig = ModelSignature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 2],
            }],
            outputs: Vec::new(),
        };
        // The data is not even numbers: the descriptor is refused first.
        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"BYTES","data":["",""]}]}"#,
                "input 'x' has datatype BYTES, the model expects FP32",
            ),
            (
                br#"{"inputs":[{"name":"y","shape":[1,2],"datatype":"FP32","data":["nope"]}]}"#,
                "unexpected input 'y'",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":["nope"]}]}"#,
                "the model expects [-1, 2]",
            ),
            (
                br#"{"inputs":[{"name":"x","shape":[0,2],"datatype":"FP32","data":["nope"]}]}"#,
                "empty tensors",
            ),
            (br#"{"inputs":[]}"#, "missing input 'x'"),
            // 10⁸ elements claimed, 3 bytes of data: refused without decoding anything.
            (
                br#"{"inputs":[{"name":"x","shape":[50000000,2],"datatype":"FP32","data":[1]}]}"#,
                "needs 100000000 elements, got 1",
            ),
        ];
        for (body, want) in cases {
            let err = decode_request(body, None, &sig, usize::MAX).unwrap_err().0;
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        // Binary sizes are checked against the shape before the data is read.
        let binary = |datatype: &str, size: usize, shape: &str| {
            let header = format!(
                r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","parameters":{{"binary_data_size":{size}}}}}]}}"#
            );
            let mut body = header.clone().into_bytes();
            body.resize(header.len() + size, 0);
            decode(&body, Some(header.len())).map_err(|e| e.0)
        };
        let err = binary("FP32", 12, "[2,2]").unwrap_err();
        assert!(
            err.contains("needs 4 elements (16 bytes of FP32), but binary_data_size is 12"),
            "{err}"
        );
        let err = binary("BYTES", 12, "[4]").unwrap_err();
        assert!(err.contains("holds at most 3 BYTES elements"), "{err}");
        assert_eq!(binary("BYTES", 12, "[3]").unwrap().inputs[0].data.len(), 3);
    }

    #[test]
    fn bytes_are_packed_both_ways() {
        let json = br#"{"inputs":[{"name":"s","shape":[2,2],"datatype":"BYTES","data":[["","a"],["\u00e9x","bc"]]}]}"#;
        let from_json = decode(json, None).unwrap();
        let want = ByteStrings::try_from_iter(["", "a", "éx", "bc"]).unwrap();
        assert_eq!(from_json.inputs[0].data, TensorData::Bytes(want.clone()));
        let header = br#"{"inputs":[{"name":"s","shape":[4],"datatype":"BYTES","parameters":{"binary_data_size":22}}]}"#;
        let mut body = header.to_vec();
        TensorData::Bytes(want.clone()).write_le_bytes(&mut body);
        assert_eq!(body.len(), header.len() + 22);
        let from_binary = decode(&body, Some(header.len())).unwrap();
        assert_eq!(from_binary.inputs[0].data, TensorData::Bytes(want));
    }

    #[test]
    fn special_floats_in_and_out() {
        let req = decode(
            br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP64","data":["NaN","Infinity","-inf"]}]}"#,
            None,
        )
        .unwrap();
        let TensorData::Fp64(v) = &req.inputs[0].data else {
            panic!()
        };
        assert!(v[0].is_nan() && v[1] == f64::INFINITY && v[2] == f64::NEG_INFINITY);
        let out = encode_response("m", 1, None, &[(&req.inputs[0], false)]);
        let s = String::from_utf8(out.body).unwrap();
        assert!(s.contains("[null,null,null]"), "{s}");
    }

    #[test]
    fn response_mixes_json_and_binary() {
        let a = Tensor {
            name: "a".into(),
            shape: vec![2],
            data: TensorData::Fp32(vec![0.1, 2.0]),
        };
        let b = Tensor {
            name: "b".into(),
            shape: vec![1],
            data: TensorData::Int64(vec![5]),
        };
        let out = encode_response("m", 3, Some("req-1"), &[(&a, false), (&b, true)]);
        let n = out.header_len.unwrap();
        let header: Value = serde_json::from_slice(&out.body[..n]).unwrap();
        assert_eq!(header["model_version"], "3");
        assert_eq!(header["id"], "req-1");
        assert_eq!(
            header["outputs"][0]["data"][0].as_f64().unwrap() as f32,
            0.1f32
        );
        assert_eq!(header["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert_eq!(&out.body[n..], &5i64.to_le_bytes());
        let json_only = encode_response("m", 3, None, &[(&a, false)]);
        assert!(json_only.header_len.is_none());
    }
}

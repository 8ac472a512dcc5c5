//! ModelInfer messages, both ways: a request's inputs are checked against a version's
//! signature and the element limit ([`check`]) before any data is converted, then turned
//! into [`Tensor`]s ([`decode`]); outputs become raw `raw_output_contents` (the binary
//! tensor layout, as Triton answers) or typed `contents` ([`encode`]).
//!
//! Inputs come either all raw (`raw_input_contents`, one entry per input, the binary
//! tensor layout: little-endian elements, BYTES as 4-byte length + bytes) or all typed
//! (`contents`, the repeated field of the datatype: INT8/16/32 in `int_contents`,
//! UINT8/16/32 in `uint_contents`). Knows tensors, signatures and messages only.

use std::collections::HashMap;

use super::proto::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor, InferParameter, InferTensorContents,
    ModelInferRequest, ModelInferResponse,
};
use super::status::CodecError;
use crate::backend::ModelSignature;
use crate::serving::{check_raw_size, Described, InputCheck, RawField};
use crate::tensor::bytes::ByteStrings;
use crate::tensor::{DataType, Tensor, TensorData};

fn bad(msg: impl Into<String>) -> CodecError {
    CodecError(msg.into())
}

/// A request checked against one signature: which outputs to answer, in which order,
/// and whether raw.
#[derive(Debug)]
pub struct Checked {
    pub chosen: Vec<usize>,
    pub raw_output: bool,
}

fn param_bool(
    params: &HashMap<String, InferParameter>,
    key: &str,
    whose: &str,
) -> Result<Option<bool>, CodecError> {
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::BoolParam(b)) => Ok(Some(*b)),
        Some(other) => Err(bad(format!(
            "{whose}: parameter '{key}' must be a boolean, got {other:?}"
        ))),
    }
}

/// The shape as sizes: a negative dimension is refused.
fn dims(shape: &[i64], whose: &str) -> Result<Vec<usize>, CodecError> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                bad(format!(
                    "{whose}: dimension {d} is negative (shape {shape:?})"
                ))
            })
        })
        .collect()
}

/// How many elements `contents` holds in the field of `datatype`.
fn typed_len(c: Option<&InferTensorContents>, datatype: DataType) -> usize {
    let Some(c) = c else { return 0 };
    match datatype {
        DataType::Bool => c.bool_contents.len(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => c.int_contents.len(),
        DataType::Int64 => c.int64_contents.len(),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => c.uint_contents.len(),
        DataType::Uint64 => c.uint64_contents.len(),
        DataType::Fp32 => c.fp32_contents.len(),
        DataType::Fp64 => c.fp64_contents.len(),
        DataType::Bytes => c.bytes_contents.len(),
    }
}

fn typed_field(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
    }
}

/// Checks every input's descriptor and data size against `sig` and the element limit,
/// and every requested output, before any data is converted.
pub fn check(
    req: &ModelInferRequest,
    sig: &ModelSignature,
    max_elements: usize,
) -> Result<Checked, CodecError> {
    if req.parameters.contains_key("classification") {
        return Err(bad("the classification extension is not supported"));
    }
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries for {} inputs (one per input, in order)",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut check = InputCheck::for_model(sig, &req.model_name).with_limit(max_elements);
    for (i, input) in req.inputs.iter().enumerate() {
        let whose = format!("input '{}'", input.name);
        let shape = dims(&input.shape, &whose)?;
        let described = check
            .describe(&input.name, &input.datatype, &shape)
            .map_err(|e| bad(e.to_string()))?;
        let Described {
            datatype,
            elements: expected,
        } = described;
        if raw {
            if input.contents.is_some() {
                return Err(bad(format!(
                    "{whose}: has both contents and raw_input_contents"
                )));
            }
            let size = req.raw_input_contents[i].len();
            check_raw_size(
                &input.name,
                &shape,
                described,
                size,
                RawField::RawInputContents,
            )
            .map_err(|e| bad(e.to_string()))?;
        } else {
            let got = typed_len(input.contents.as_ref(), datatype);
            if got != expected {
                return Err(bad(format!(
                    "{whose}: shape {shape:?} needs {expected} elements, got {got} in contents.{}",
                    typed_field(datatype)
                )));
            }
        }
    }
    check.finish().map_err(|e| bad(e.to_string()))?;
    let default_raw = param_bool(&req.parameters, "binary_data_output", "request")?.unwrap_or(true);
    let mut chosen = Vec::with_capacity(req.outputs.len().max(sig.outputs.len()));
    let mut raws = Vec::with_capacity(chosen.capacity());
    if req.outputs.is_empty() {
        chosen.extend(0..sig.outputs.len());
        raws.push(default_raw);
    }
    chosen.extend(
        crate::serving::pick_outputs(
            sig,
            &req.model_name,
            req.outputs.iter().map(|o| o.name.as_str()),
        )
        .map_err(bad)?,
    );
    for o in &req.outputs {
        let whose = format!("output '{}'", o.name);
        if o.parameters.contains_key("classification") {
            return Err(bad(format!(
                "{whose}: the classification extension is not supported"
            )));
        }
        raws.push(param_bool(&o.parameters, "binary_data", &whose)?.unwrap_or(default_raw));
    }
    let raw_output = raws.first().copied().unwrap_or(true);
    if raws.iter().any(|&r| r != raw_output) {
        return Err(bad(
            "outputs must be all raw (raw_output_contents) or all typed (binary_data = false): raw_output_contents is positional",
        ));
    }
    Ok(Checked { chosen, raw_output })
}

/// Narrows typed contents to the datatype's element type; an element out of its range is
/// refused, never wrapped.
fn narrow<S, T>(src: Vec<S>, whose: &str, datatype: DataType) -> Result<Vec<T>, CodecError>
where
    S: Copy + std::fmt::Display,
    T: TryFrom<S>,
{
    src.into_iter()
        .enumerate()
        .map(|(i, x)| {
            T::try_from(x).map_err(|_| {
                bad(format!(
                    "{whose}: element {i} ({x}) is out of range for {datatype}"
                ))
            })
        })
        .collect()
}

fn typed(
    datatype: DataType,
    c: InferTensorContents,
    whose: &str,
) -> Result<TensorData, CodecError> {
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Int8 => TensorData::Int8(narrow(c.int_contents, whose, datatype)?),
        DataType::Int16 => TensorData::Int16(narrow(c.int_contents, whose, datatype)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(c.uint_contents, whose, datatype)?),
        DataType::Uint16 => TensorData::Uint16(narrow(c.uint_contents, whose, datatype)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(
            ByteStrings::try_from_iter(&c.bytes_contents)
                .map_err(|e| bad(format!("{whose}: {e}")))?,
        ),
    })
}

/// Converts a request [`check`]ed against the signature into tensors, in request order.
pub fn decode(
    inputs: Vec<InferInputTensor>,
    raw: Vec<bytes::Bytes>,
) -> Result<Vec<Tensor>, CodecError> {
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let whose = format!("input '{}'", input.name);
            let datatype = DataType::parse(&input.datatype)
                .ok_or_else(|| bad(format!("{whose}: unknown datatype (this is a bug)")))?;
            let shape = dims(&input.shape, &whose)?;
            let data = match raw.next() {
                Some(bytes) => TensorData::from_le_bytes(datatype, &bytes)
                    .map_err(|e| bad(format!("{whose}: {e}")))?,
                None => typed(datatype, input.contents.unwrap_or_default(), &whose)?,
            };
            let expected = Tensor::shape_elements(&shape);
            if expected != Some(data.len()) {
                return Err(bad(format!(
                    "{whose}: shape {shape:?} needs {} elements, got {}",
                    expected.unwrap_or(usize::MAX),
                    data.len()
                )));
            }
            Ok(Tensor {
                name: input.name,
                shape,
                data,
            })
        })
        .collect()
}

fn contents(data: &TensorData) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::Int8(v) => c.int_contents = v.iter().map(|&x| x.into()).collect(),
        TensorData::Int16(v) => c.int_contents = v.iter().map(|&x| x.into()).collect(),
        TensorData::Int32(v) => c.int_contents = v.clone(),
        TensorData::Int64(v) => c.int64_contents = v.clone(),
        TensorData::Uint8(v) => c.uint_contents = v.iter().map(|&x| x.into()).collect(),
        TensorData::Uint16(v) => c.uint_contents = v.iter().map(|&x| x.into()).collect(),
        TensorData::Uint32(v) => c.uint_contents = v.clone(),
        TensorData::Uint64(v) => c.uint64_contents = v.clone(),
        TensorData::Fp32(v) => c.fp32_contents = v.clone(),
        TensorData::Fp64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(s) => c.bytes_contents = s.iter().map(<[u8]>::to_vec).collect(),
    }
    c
}

/// The answer: the chosen outputs, in the order asked for.
pub fn encode(
    model: &str,
    version: u64,
    id: String,
    outputs: &[Tensor],
    checked: &Checked,
) -> ModelInferResponse {
    let mut resp = ModelInferResponse {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id,
        ..Default::default()
    };
    for &i in &checked.chosen {
        let Some(t) = outputs.get(i) else { continue };
        let mut out = InferOutputTensor {
            name: t.name.clone(),
            datatype: t.datatype().as_str().to_string(),
            shape: t
                .shape
                .iter()
                .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
                .collect(),
            ..Default::default()
        };
        if checked.raw_output {
            let mut buf = Vec::new();
            t.data.write_le_bytes(&mut buf);
            resp.raw_output_contents.push(buf.into());
        } else {
            out.contents = Some(contents(&t.data));
        }
        resp.outputs.push(out);
    }
    resp
}

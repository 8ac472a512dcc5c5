//! One payload-log record and its JSON Lines encoding. Tensors are written exactly: every
//! number as the shortest decimal that reads back to the same value at its own width
//! (an `f32` as an `f32`), non-finite floats as the strings `"NaN"`, `"Infinity"` and
//! `"-Infinity"` (JSON has no such numbers), BYTES elements as strings when they are UTF-8
//! and as `{"b64": "<base64>"}` when they are not. Encoding runs on the writer thread.

use base64::Engine;
use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::tensor::{Tensor, TensorData};

/// Which role the answering version had for this request (the `role` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Stable,
    Canary,
    /// The canary's answer to a shadow copy (never returned to the client).
    Shadow,
    /// A version loaded by the policy, answering a request pinned to it.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stable => "stable",
            Role::Canary => "canary",
            Role::Shadow => "shadow",
            Role::Standby => "standby",
        }
    }
}

/// A sampled request and its answer, as handed to the writer.
pub struct Record {
    pub id: String,
    /// Unix time in seconds when the request was run.
    pub time: f64,
    pub model: String,
    pub version: u64,
    pub role: Role,
    pub latency: std::time::Duration,
    /// `success`, or the outcome of the failure (`bad_request`, `overloaded`, `error`).
    pub status: &'static str,
    pub error: Option<String>,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

impl Record {
    /// Tensor bytes the record holds (what the queue's byte budget counts).
    pub fn weight(&self) -> usize {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .map(|t| t.data.byte_size() + t.name.len() + 8 * t.shape.len())
            .sum::<usize>()
            + 256
    }

    /// Appends the record as one JSON line (ending in `\n`).
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let doc = RecordJson {
            id: &self.id,
            time: crate::retrain::rfc3339(self.time),
            model: &self.model,
            model_version: self.version.to_string(),
            role: self.role.as_str(),
            latency_us: self.latency.as_micros() as u64,
            status: self.status,
            error: self.error.as_deref(),
            inputs: self.inputs.iter().map(TensorJson).collect(),
            outputs: self.outputs.iter().map(TensorJson).collect(),
        };
        serde_json::to_writer(&mut *out, &doc).expect("serialising plain data cannot fail");
        out.push(b'\n');
    }

    /// The V2 request and response bodies (JSON) of the record, as the CloudEvents sink
    /// posts them; a failed request's response is `{"id", "error"}`.
    pub fn v2_bodies(&self) -> (Vec<u8>, Vec<u8>) {
        let inputs: Vec<TensorJson> = self.inputs.iter().map(TensorJson).collect();
        let request = serde_json::to_vec(&serde_json::json!({
            "id": self.id,
            "inputs": inputs,
        }))
        .expect("serialising plain data cannot fail");
        let response = match &self.error {
            Some(e) => serde_json::json!({"id": self.id, "error": e}),
            None => {
                let outputs: Vec<TensorJson> = self.outputs.iter().map(TensorJson).collect();
                serde_json::json!({
                    "id": self.id,
                    "model_name": self.model,
                    "model_version": self.version.to_string(),
                    "outputs": outputs,
                })
            }
        };
        let response = serde_json::to_vec(&response).expect("serialising plain data cannot fail");
        (request, response)
    }
}

#[derive(Serialize)]
struct RecordJson<'a> {
    id: &'a str,
    time: String,
    model: &'a str,
    model_version: String,
    role: &'static str,
    latency_us: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    inputs: Vec<TensorJson<'a>>,
    outputs: Vec<TensorJson<'a>>,
}

struct TensorJson<'a>(&'a Tensor);

impl Serialize for TensorJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let t = self.0;
        let mut st = s.serialize_struct("Tensor", 4)?;
        st.serialize_field("name", &t.name)?;
        st.serialize_field("datatype", t.datatype().as_str())?;
        st.serialize_field("shape", &t.shape)?;
        st.serialize_field("data", &DataJson(&t.data))?;
        st.end()
    }
}

struct DataJson<'a>(&'a TensorData);

/// A float that JSON can hold as a number, else its name as a string.
macro_rules! float_elements {
    ($seq:ident, $v:ident) => {
        for &x in $v {
            if x.is_finite() {
                $seq.serialize_element(&x)?;
            } else if x.is_nan() {
                $seq.serialize_element("NaN")?;
            } else if x > 0.0 {
                $seq.serialize_element("Infinity")?;
            } else {
                $seq.serialize_element("-Infinity")?;
            }
        }
    };
}

#[derive(Serialize)]
struct B64 {
    b64: String,
}

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        match self.0 {
            TensorData::Fp32(v) => float_elements!(seq, v),
            TensorData::Fp64(v) => float_elements!(seq, v),
            other => crate::dispatch_numeric!(other,
                v => { for x in v { seq.serialize_element(x)?; } },
                bool b => { for x in b { seq.serialize_element(x)?; } },
                bytes st => {
                    for x in st.iter() {
                        match std::str::from_utf8(x) {
                            Ok(text) => seq.serialize_element(text)?,
                            Err(_) => seq.serialize_element(&B64 {
                                b64: base64::engine::general_purpose::STANDARD.encode(x),
                            })?,
                        }
                    }
                }
            ),
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::bytes::ByteStrings;

    fn record(inputs: Vec<Tensor>) -> Record {
        Record {
            id: "r1".into(),
            time: 0.0,
            model: "m".into(),
            version: 3,
            role: Role::Canary,
            latency: std::time::Duration::from_micros(42),
            status: "success",
            error: None,
            inputs,
            outputs: vec![],
        }
    }

    #[test]
    fn floats_and_bytes_are_written_exactly() {
        let f = vec![0.1f32, -0.0, 1e-45, f32::MAX, f32::NAN, f32::NEG_INFINITY];
        let bytes = ByteStrings::try_from_iter([&b"caf\xc3\xa9"[..], &b"\xff\x00"[..]]).unwrap();
        let r = record(vec![
            Tensor {
                name: "x".into(),
                shape: vec![2, 3],
                data: TensorData::Fp32(f.clone()),
            },
            Tensor {
                name: "s".into(),
                shape: vec![2],
                data: TensorData::Bytes(bytes),
            },
        ]);
        let mut line = Vec::new();
        r.write_line(&mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["role"], "canary");
        assert_eq!(v["model_version"], "3");
        let data = v["inputs"][0]["data"].as_array().unwrap();
        for (got, want) in data.iter().zip(&f) {
            match got.as_f64() {
                Some(x) => assert_eq!((x as f32).to_bits(), want.to_bits()),
                None => assert!(want.is_nan() || want.is_infinite(), "{got}"),
            }
        }
        assert_eq!(data[4], "NaN");
        assert_eq!(data[5], "-Infinity");
        assert_eq!(v["inputs"][1]["data"][0], "café");
        assert_eq!(v["inputs"][1]["data"][1]["b64"], "/wA=");
    }
}

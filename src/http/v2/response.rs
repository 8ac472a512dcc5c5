//! Encoding a V2 response: outputs as JSON, or a JSON header followed by raw little-endian
//! tensors (`binary_data`). Knows only tensors; never imports the rest of `http`.

use serde::{Serialize, Serializer};

use crate::tensor::{Tensor, TensorData};

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

use serde_json::Value;

use super::*;
use crate::backend::ModelSignature;
use crate::tensor::bytes::ByteStrings;
use crate::tensor::spec::TensorSpec;
use crate::tensor::{DataType, Tensor, TensorData};

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
    let flat = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#;
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
            "inference input 'x' data-type is 'BYTES', but the model expects 'FP32'",
        ),
        (
            br#"{"inputs":[{"name":"y","shape":[1,2],"datatype":"FP32","data":["nope"]}]}"#,
            "unexpected inference input 'y'",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":["nope"]}]}"#,
            "unexpected shape for input 'x'. Expected [-1,2], got [1,3]",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[0,2],"datatype":"FP32","data":["nope"]}]}"#,
            "empty tensors",
        ),
        (
            br#"{"inputs":[]}"#,
            "expected 1 inputs but got 0 inputs: missing input 'x'",
        ),
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

/// `body` read the way the server reads it: into a [`BodyBuffer`] of its declared
/// length, 64 KiB at a time.
fn buffered(body: &[u8], declared: usize) -> BodyBuffer {
    let mut buf = BodyBuffer::with_capacity(declared);
    for piece in body.chunks(64 << 10) {
        buf.extend_from_slice(piece);
    }
    assert_eq!(buf.bytes(), body);
    buf
}

/// Decodes `body` from a slice and from a [`BodyBuffer`]; both must agree. Returns the
/// result and the share of the data's bytes that read as zeros after (given back).
fn decode_both(body: &[u8], header_len: Option<usize>) -> (Result<InferRequest, String>, f64) {
    let sig = lenient(body, header_len);
    let plain = decode_request(body, header_len, &sig, usize::MAX).map_err(|e| e.0);
    let mut buf = buffered(body, body.len());
    let released = check_request("", buf.bytes(), header_len, &sig, usize::MAX)
        .and_then(|req| req.decode_releasing(&mut buf))
        .map_err(|e| e.0);
    match (&plain, &released) {
        (Ok(a), Ok(b)) => assert_eq!(a.inputs, b.inputs),
        (a, b) => assert_eq!(a.as_ref().err(), b.as_ref().err()),
    }
    let zeros = buf.bytes().iter().filter(|&&b| b == 0).count();
    let before = body.iter().filter(|&&b| b == 0).count();
    (plain, (zeros - before) as f64 / body.len() as f64)
}

fn json_input(datatype: &str, shape: &[usize], data: &str) -> Vec<u8> {
    format!(
        r#"{{"inputs":[{{"name":"x","shape":{shape:?},"datatype":"{datatype}","data":{data}}}]}}"#
    )
    .into_bytes()
}

#[test]
fn big_json_data_is_parsed_in_groups_as_one_parse_would() {
    // 3 M FP32 elements (over 6 MiB of text, several groups), nested three ways: rows
    // of 4, one row (so the outer array has a single element), and 2 x 2 blocks.
    let n = 3_000_000;
    let values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5).collect();
    let text = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = format!(
        "[{}]",
        values
            .chunks(4)
            .map(|r| format!("[{}]", text(r)))
            .collect::<Vec<_>>()
            .join(",\n ")
    );
    let one_row = format!("[[{}]]", text(&values));
    let blocks = format!(
        "[{}]",
        values
            .chunks(4)
            .map(|b| format!("[[{}],[{}]]", text(&b[..2]), text(&b[2..])))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (data, shape) in [
        (&rows, vec![n / 4, 4]),
        (&one_row, vec![1, n]),
        (&blocks, vec![n / 4, 2, 2]),
    ] {
        assert!(data.len() > 3 * super::json_data::GROUP);
        let (got, given_back) = decode_both(&json_input("FP32", &shape, data), None);
        assert_eq!(
            got.unwrap().inputs[0].data,
            TensorData::Fp32(values.clone())
        );
        if cfg!(target_os = "linux") {
            assert!(given_back > 0.9, "{given_back} of the body given back");
        }
    }
    // Strings holding the characters the groups are cut and closed by, and one string
    // longer than a group.
    let tricky = ["a,b", "[", "]", "{\"k\": [1,2]}", "\\", "\"", ",,", "é", ""];
    let mut strings: Vec<String> = (0..400_000)
        .map(|i| tricky[i % tricky.len()].to_string())
        .collect();
    strings.insert(1000, ",[".repeat(super::json_data::GROUP * 2));
    let data = serde_json::to_string(&strings).unwrap();
    let (got, _) = decode_both(&json_input("BYTES", &[strings.len()], &data), None);
    let want = ByteStrings::try_from_iter(&strings).unwrap();
    assert_eq!(got.unwrap().inputs[0].data, TensorData::Bytes(want));
    // Errors far into the data name the element as one parse does.
    let mut ints = vec!["1"; n];
    ints[n - 7] = "300";
    let data = format!("[{}]", ints.join(","));
    let (got, _) = decode_both(&json_input("INT8", &[n], &data), None);
    let err = got.unwrap_err();
    assert!(
        err.contains(&format!("element {} (300) is not a valid INT8", n - 7)),
        "{err}"
    );
    let (got, _) = decode_both(
        &json_input("INT8", &[n - 1], &data.replace("300", "3")),
        None,
    );
    let err = got.unwrap_err();
    assert!(
        err.contains(&format!("more data elements than the shape's {}", n - 1)),
        "{err}"
    );
    let data = data.replace("300", "{\"a\": [1, 2]}");
    let (got, _) = decode_both(&json_input("INT8", &[n], &data), None);
    let err = got.unwrap_err();
    assert!(
        err.contains(&format!("element {} (an object)", n - 7)),
        "{err}"
    );
}

#[test]
fn big_binary_data_is_decoded_in_pieces() {
    let binary = |datatype: &str, data: &TensorData| {
        let mut payload = Vec::new();
        data.write_le_bytes(&mut payload);
        let header = format!(
            r#"{{"inputs":[{{"name":"x","shape":[{}],"datatype":"{datatype}","parameters":{{"binary_data_size":{}}}}}]}}"#,
            data.len(),
            payload.len()
        );
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&payload);
        decode_both(&body, Some(header.len()))
    };
    let fp32 = TensorData::Fp32((0..3_000_000).map(|i| i as f32 + 1.0).collect());
    let (got, given_back) = binary("FP32", &fp32);
    assert_eq!(got.unwrap().inputs[0].data, fp32);
    if cfg!(target_os = "linux") {
        assert!(given_back > 0.9, "{given_back} of the body given back");
    }
    // Strings around one longer than a piece.
    let mut strings = vec![b"ab".to_vec(); 500_000];
    strings.insert(7, vec![b'z'; 3 * super::json_data::GROUP + 5]);
    let bytes = TensorData::Bytes(ByteStrings::try_from_iter(&strings).unwrap());
    let (got, _) = binary("BYTES", &bytes);
    assert_eq!(got.unwrap().inputs[0].data, bytes);
    // A bad BOOL byte far in is named by its place in the whole tensor.
    let mut header = br#"{"inputs":[{"name":"x","shape":[3000000],"datatype":"BOOL","parameters":{"binary_data_size":3000000}}]}"#.to_vec();
    let at = header.len();
    header.resize(at + 3_000_000, 1);
    header[at + 2_500_000] = 7;
    let (got, _) = decode_both(&header, Some(at));
    let err = got.unwrap_err();
    assert!(err.contains("BOOL byte 2500000 is 7"), "{err}");
}

#[test]
fn a_body_of_unknown_length_is_kept_whole_as_it_grows() {
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut buf = BodyBuffer::with_capacity(0);
    for piece in body.chunks(12_345) {
        buf.extend_from_slice(piece);
    }
    assert_eq!(buf.bytes(), &body[..]);
    // Giving back a range leaves the bytes outside it as they were.
    buf.release(100..4_000_000);
    assert_eq!(&buf.bytes()[..100], &body[..100]);
    assert_eq!(&buf.bytes()[4_000_000..], &body[4_000_000..]);
    if cfg!(target_os = "linux") {
        let zeros = buf.bytes().iter().filter(|&&b| b == 0).count();
        assert!(zeros > 3_900_000, "{zeros} bytes given back");
    }
}

/// The JSON header of a one-row request is parsed without per-key allocations (main
/// tracked the path of every key and element with serde_path_to_error: 13 more
/// allocations per one-row request); a malformed one still names the path.
#[test]
fn a_one_row_request_is_checked_with_few_allocations() {
    let body = br#"{"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [0.59, -0.12, -0.68, 6.31, -0.76, 12.11]}]}"#;
    let sig = ModelSignature {
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 6],
        }],
        outputs: Vec::new(),
    };
    let check = || check_request("m", body, None, &sig, usize::MAX).unwrap();
    check();
    let (checked, n) = crate::alloc_count::allocations(check);
    drop(checked);
    eprintln!("check_request: {n} allocations");
    // 8 on the perf branch; the input check shared with gRPC since adds one. The path
    // tracking this guards against costs 13 more.
    assert!(n <= 9, "check_request made {n} allocations for one row");
    let bad =
        br#"{"inputs": [{"name": "input", "shape": [1, "x"], "datatype": "FP32", "data": [1]}]}"#;
    let Err(e) = check_request("m", bad, None, &sig, usize::MAX) else {
        panic!("a string dimension was accepted");
    };
    assert!(e.to_string().contains("JSON at 'inputs[0].shape"), "{e}");
}

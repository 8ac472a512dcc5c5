//! Tokens, limits, malformed input and broken models: refused clearly, nothing else
//! disturbed. Also a bounded, seeded fuzz of the decoders and parsers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{reference, root, Engine, TempDir, Vigil};
use serde_json::json;

fn iris_body() -> serde_json::Value {
    json!({"inputs": reference("iris_v2")["inputs"]})
}

#[test]
fn api_metrics_and_admin_tokens() {
    let dir = TempDir::new("tokens");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "adm1n\n").unwrap();
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &[
            "--api-token",
            "ap1",
            "--metrics-token",
            "m3t",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let infer = v.url("/v2/models/iris/infer");
    assert_eq!(
        v.client
            .post(&infer)
            .json(&iris_body())
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        v.client
            .post(&infer)
            .bearer_auth("nope")
            .json(&iris_body())
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        v.client
            .post(&infer)
            .bearer_auth("ap1")
            .json(&iris_body())
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        v.client
            .get(v.url("/v2/models/iris"))
            .send()
            .unwrap()
            .status(),
        401
    );
    // Health stays open; metrics need their own token.
    assert_eq!(
        v.client
            .get(v.url("/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        v.client.get(v.url("/metrics")).send().unwrap().status(),
        401
    );
    let text = v
        .client
        .get(v.url("/metrics"))
        .bearer_auth("m3t")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(r#"vigil_auth_failures_total{endpoint="api",status="401"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"vigil_auth_failures_total{endpoint="metrics",status="401"} 1"#));
    // The admin token (from the file) opens admin endpoints; the api token does not.
    let rollout = v.url("/v2/models/iris/rollout");
    let r = v
        .client
        .put(&rollout)
        .bearer_auth("ap1")
        .json(&json!({"weight": 0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = v
        .client
        .put(&rollout)
        .bearer_auth("adm1n")
        .json(&json!({"weight": 0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn limits_and_malformed_requests() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--max-tensor-elements", "1000", "--body-timeout", "1"],
    );
    let post = |body: Vec<u8>| {
        let r = v
            .client
            .post(v.url("/v2/models/iris/infer"))
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    };
    // Nothing may allocate the claimed sizes (10⁷ × 4 FP32 would be 160 MB): the server's
    // peak resident set, measured around the cases.
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    let peak_before = peak_rss(v.pid());
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (br#"{"inputs":[{"name":"X","shape":[10000000,4],"datatype":"FP32","data":[1]}]}"#.to_vec(), 400, "limit of 1000"),
        (br#"{"inputs":[{"name":"X","shape":[18446744073709551615,4],"datatype":"FP32","data":[1]}]}"#.to_vec(), 400, "too large"),
        (format!(r#"{{"inputs":[{{"name":"X","shape":[1,4],"datatype":"FP32","data":{}1{}}}]}}"#, "[".repeat(300), "]".repeat(300)).into_bytes(), 400, "recursion limit"),
        (b"{\"inputs\":[{\"name\":\"X\xff\xfe\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}".to_vec(), 400, "invalid inference request JSON"),
        (br#"{"inputs":[{"name":"X","shape":[1,4],"datatype":"float32","data":[1,2,3,4]}]}"#.to_vec(), 400, "unknown datatype"),
    ];
    for (body, status, want) in cases {
        let (got, text) = post(body.clone());
        assert_eq!(
            got,
            status,
            "{}: {text}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        );
        assert!(text.contains(want), "{text} should contain {want}");
    }
    let grown = peak_rss(v.pid()).saturating_sub(peak_before);
    assert!(
        grown < 32 << 20,
        "the peak resident set grew by {} MB: something allocated a claimed size",
        grown >> 20
    );
    // Binary-tensor bodies that lie: each a 400 with a message, nothing allocated for
    // the claimed sizes.
    let binary = |header: serde_json::Value, payload: &[u8], hlen: Option<usize>| {
        let h = header.to_string();
        let mut body = h.clone().into_bytes();
        body.extend_from_slice(payload);
        let r = v
            .client
            .post(v.url("/v2/models/iris/infer"))
            .header(
                "Inference-Header-Content-Length",
                hlen.unwrap_or(h.len()).to_string(),
            )
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let fp32 = |shape: serde_json::Value, size: usize| json!({"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    let four = [0u8; 16];
    let bin_cases: Vec<(serde_json::Value, &[u8], Option<usize>, &str)> = vec![
        // truncated body: 16 bytes promised, 8 sent
        (fp32(json!([1, 4]), 16), &four[..8], None, "binary"),
        // header length beyond the body
        (fp32(json!([1, 4]), 16), &four, Some(10_000), "header"),
        // header length cutting the JSON header short
        (fp32(json!([1, 4]), 16), &four, Some(20), "json"),
        // size ≠ shape product × 4
        (
            fp32(json!([1, 4]), 12),
            &four[..12],
            None,
            "needs 4 elements",
        ),
        // 10⁷ elements claimed, 16 bytes sent
        (
            fp32(json!([10_000_000, 4]), 16),
            &four,
            None,
            "limit of 1000",
        ),
        // negative and overflowing shapes
        (fp32(json!([-1, 4]), 16), &four, None, "shape"),
        (
            fp32(json!([4294967296u64, 4294967296u64]), 16),
            &four,
            None,
            "large",
        ),
        // a BYTES length prefix past the end, to an FP32 input: the datatype is refused
        // before the data is read (tests/errors.rs sends it to a BYTES model)
        (
            json!({"inputs": [{"name": "X", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}),
            &[200, 0, 0, 0, b'a', b'b', b'c', b'd'],
            None,
            "data-type is 'bytes', but model 'iris' expects 'fp32'",
        ),
    ];
    for (header, payload, hlen, want) in bin_cases {
        let (status, text) = binary(header.clone(), payload, hlen);
        assert_eq!(status, 400, "{header} ({hlen:?}): {text}");
        let msg = serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            !msg.is_empty() && msg.to_lowercase().contains(want),
            "{header}: {msg:?} should contain {want:?}"
        );
        println!("{header} ({hlen:?}) -> {msg}");
    }
    let grown = peak_rss(v.pid()).saturating_sub(peak_before);
    assert!(
        grown < 32 << 20,
        "the peak resident set grew by {} MB: a binary body's claimed size was allocated",
        grown >> 20
    );
    // A body that never arrives in full: 408 after the body timeout.
    let mut s = TcpStream::connect(&v.addr).unwrap();
    write!(
        s,
        "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"inputs\""
    )
    .unwrap();
    let mut resp = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
}

/// The raw bytes of each output of a binary-output answer, by name.
fn binary_outputs(r: reqwest::blocking::Response) -> Vec<(String, Vec<u8>)> {
    let hlen: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().unwrap();
    let header: serde_json::Value = serde_json::from_slice(&bytes[..hlen]).unwrap();
    let mut at = hlen;
    let mut out = Vec::new();
    for o in header["outputs"].as_array().unwrap() {
        let n = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        out.push((
            o["name"].as_str().unwrap().to_string(),
            bytes[at..at + n].to_vec(),
        ));
        at += n;
    }
    assert_eq!(at, bytes.len());
    out
}

/// Non-finite floats are data, not errors (docs/api.md): JSON `"NaN"`/`"Infinity"`/
/// `"-Infinity"` strings and binary NaN/±inf reach the model; in JSON answers non-finite
/// floats are written as `null`, in binary answers exactly. The dtypes model passes
/// FP32 and FP64 through (Identity) and squares FP32 (so inf² and NaN² are computed).
#[test]
fn non_finite_floats_reach_the_model_and_come_back_as_null() {
    let r = reference("dtypes_v1");
    let mut inputs = r["inputs"].as_array().unwrap().clone();
    for t in &mut inputs {
        if t["name"] == "x_fp32" {
            t["data"] = json!(["NaN", "Infinity", "-Infinity", 1.5, -2.0, "nan"]);
        }
        if t["name"] == "x_fp64" {
            t["data"] = json!(["-inf", 0.25, "NaN", "inf", "+inf", 3.0]);
        }
    }
    let output = |doc: &serde_json::Value, name: &str| {
        doc["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name} in {doc}"))["data"]
            .clone()
    };
    for engine in [Engine::Tract, Engine::Ort] {
        let v = Vigil::start(&root().join("tests/data/repo"), engine, &[]);
        let (status, got) = v.post_json("/v2/models/dtypes/infer", &json!({"inputs": inputs}));
        assert_eq!(status, 200, "{engine:?}: {got}");
        assert_eq!(
            output(&got, "y_fp32"),
            json!([null, null, null, 1.5, -2.0, null]),
            "{engine:?}"
        );
        assert_eq!(
            output(&got, "sq_fp32"),
            json!([null, null, null, 2.25, 4.0, null]),
            "{engine:?}"
        );
        assert_eq!(
            output(&got, "y_fp64"),
            json!([null, 0.25, null, null, null, 3.0]),
            "{engine:?}"
        );
        // Binary outputs carry them exactly.
        let resp = v
            .client
            .post(v.url("/v2/models/dtypes/infer"))
            .json(&json!({"inputs": inputs, "parameters": {"binary_data_output": true}}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let outs = binary_outputs(resp);
        let raw = |name: &str| {
            outs.iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no output {name}"))
                .1
                .clone()
        };
        let f32s = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let y = f32s(raw("y_fp32"));
        assert!(y[0].is_nan() && y[5].is_nan(), "{engine:?}: {y:?}");
        assert_eq!(&y[1..5], &[f32::INFINITY, f32::NEG_INFINITY, 1.5, -2.0]);
        let sq = f32s(raw("sq_fp32"));
        assert!(sq[0].is_nan() && sq[5].is_nan(), "{engine:?}: {sq:?}");
        assert_eq!(&sq[1..5], &[f32::INFINITY, f32::INFINITY, 2.25, 4.0]);
        let y64: Vec<f64> = raw("y_fp64")
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(y64[2].is_nan(), "{engine:?}: {y64:?}");
        assert_eq!(
            [y64[0], y64[1], y64[3], y64[4], y64[5]],
            [f64::NEG_INFINITY, 0.25, f64::INFINITY, f64::INFINITY, 3.0]
        );
        // Binary NaN/±inf inputs (to the FP32 identity) come back bit for bit.
        let mut header_inputs = Vec::new();
        let mut payload = Vec::new();
        for t in r["inputs"].as_array().unwrap() {
            let bytes = if t["name"] == "x_fp32" {
                [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    1.0,
                    -0.0,
                    f32::MIN_POSITIVE,
                ]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
            } else {
                common::to_le_bytes(t)
            };
            header_inputs.push(
                json!({"name": t["name"], "shape": t["shape"], "datatype": t["datatype"],
                "parameters": {"binary_data_size": bytes.len()}}),
            );
            payload.extend(bytes);
        }
        let header = json!({"inputs": header_inputs, "outputs": [{"name": "y_fp32", "parameters": {"binary_data": true}}]})
            .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(payload);
        let resp = v
            .client
            .post(v.url("/v2/models/dtypes/infer"))
            .header("Inference-Header-Content-Length", header.len())
            .body(body)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let y = f32s(binary_outputs(resp).remove(0).1);
        let bits: Vec<u32> = y.iter().map(|x| x.to_bits()).collect();
        let want: Vec<u32> = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0,
            -0.0,
            f32::MIN_POSITIVE,
        ]
        .iter()
        .map(|x| x.to_bits())
        .collect();
        assert!(y[0].is_nan(), "{engine:?}: {y:?}");
        assert_eq!(&bits[1..], &want[1..], "{engine:?}: {y:?}");
    }
}

#[test]
fn broken_models_are_reported_and_disturb_nothing() {
    let repo = TempDir::new("broken");
    let copy = |model: &str, version: u32, bytes: &[u8]| {
        let d = repo.path().join(model).join(version.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.onnx"), bytes).unwrap();
    };
    let iris = std::fs::read(root().join("models/iris/2/model.onnx")).unwrap();
    copy("iris", 1, &iris);
    copy("empty", 1, b"");
    copy("truncated", 1, &iris[..iris.len() / 2]);
    copy("garbage", 1, b"\x08\x01\x12\x04junk");
    // An operator no engine knows: "Relu" renamed in the bytes of a tiny model.
    let mut unknown = std::fs::read(root().join("tests/data/repo/fixed/1/model.onnx")).unwrap();
    let at = unknown.windows(4).position(|w| w == b"Relu").unwrap();
    unknown[at..at + 4].copy_from_slice(b"Rulu");
    copy("unknown_op", 1, &unknown);
    for engine in [Engine::Tract, Engine::Ort] {
        let v = Vigil::start(repo.path(), engine, &["--poll-interval", "0"]);
        assert_eq!(
            v.post_json("/v2/models/iris/infer", &iris_body()).0,
            200,
            "{engine:?}"
        );
        let (_, index) = v.post_json("/v2/repository/index", &json!({}));
        for model in ["empty", "truncated", "garbage", "unknown_op"] {
            let row = index
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == model && r["version"] == "1")
                .unwrap_or_else(|| panic!("{model} missing from {index}"));
            assert_eq!(row["state"], "UNAVAILABLE", "{engine:?} {model}: {row}");
            assert!(!row["reason"].as_str().unwrap().is_empty());
            let (status, body) = v.post_json(&format!("/v2/models/{model}/infer"), &iris_body());
            assert_eq!(status, 503, "{engine:?} {model}: {body}");
        }
        // A model directory that disappears: unloaded on the next scan, others untouched.
        let gone = TempDir::new("gone");
        std::fs::create_dir_all(gone.path()).unwrap();
        std::fs::rename(repo.path().join("garbage"), gone.path().join("garbage")).unwrap();
        assert_eq!(
            v.post_json("/v2/repository/models/garbage/load", &json!({}))
                .0,
            404
        );
        std::fs::rename(gone.path().join("garbage"), repo.path().join("garbage")).unwrap();
        assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    }
}

/// Seeded, bounded fuzzing of everything that parses client or operator input: random
/// byte flips, truncations and splices of valid inputs. Must never panic.
///
/// CI runs 20 000 rounds with the fixed seed. Run it long with, e.g.,
/// `VIGIL_FUZZ_ROUNDS=5000000 VIGIL_FUZZ_SEED=$RANDOM cargo test --release --test hardening
/// decoders_and_parsers_never_panic -- --nocapture`.
#[test]
fn decoders_and_parsers_never_panic() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let rounds = env("VIGIL_FUZZ_ROUNDS", 20_000);
    let seed = env("VIGIL_FUZZ_SEED", 0x2545_f491_4f6c_dd1d).max(1);
    let state = std::cell::Cell::new(seed);
    let next = || {
        let mut seed = state.get();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        state.set(seed);
        seed
    };
    let valid_json = br#"{"id":"a","inputs":[{"name":"X","shape":[2,2],"datatype":"INT8","data":[[1,2],[3,4]]},{"name":"s","shape":[1],"datatype":"BYTES","data":["x"]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#.to_vec();
    let header = br#"{"inputs":[{"name":"X","shape":[2],"datatype":"FP64","parameters":{"binary_data_size":16}},{"name":"b","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}"#;
    let mut valid_bin = header.to_vec();
    valid_bin.extend(1.5f64.to_le_bytes());
    valid_bin.extend(2.5f64.to_le_bytes());
    valid_bin.extend([1, 0, 0, 0, b'a', 0, 0, 0, 0]);
    let profile = std::fs::read(root().join("models/iris/1/reference.json")).unwrap();
    let config = b"backend = \"tract\"\n[version_policy]\nlatest = 2\n[rollout]\ncanary = 2\nweight = 10\n[drift]\nwindow_rows = 10\n[retrain]\nurl = \"http://x\"\ncooldown = \"1h\"\n".to_vec();
    let mutate = |base: &[u8]| -> Vec<u8> {
        let mut b = base.to_vec();
        match next() % 4 {
            0 => {
                for _ in 0..1 + next() % 8 {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
            }
            1 => b.truncate((next() as usize) % b.len()),
            2 => {
                let i = (next() as usize) % b.len();
                let j = (next() as usize) % b.len();
                let chunk: Vec<u8> = b[i.min(j)..i.max(j)].to_vec();
                let at = (next() as usize) % b.len();
                b.splice(at..at, chunk);
            }
            _ => {
                let i = (next() as usize) % b.len();
                b.insert(i, b"[]{}\",:-0e9"[(next() % 11) as usize]);
            }
        }
        b
    };
    // Signatures the valid bodies satisfy, so that mutations reach the data decoders.
    let spec = |name: &str, datatype, rank| vigil::tensor::spec::TensorSpec {
        name: name.into(),
        datatype,
        shape: vec![-1; rank],
    };
    use vigil::tensor::DataType;
    let json_sig = vigil::backend::ModelSignature {
        inputs: vec![spec("X", DataType::Int8, 2), spec("s", DataType::Bytes, 1)],
        outputs: Vec::new(),
    };
    let bin_sig = vigil::backend::ModelSignature {
        inputs: vec![spec("X", DataType::Fp64, 1), spec("b", DataType::Bytes, 1)],
        outputs: Vec::new(),
    };
    let decode = vigil::http::v2::decode_request;
    assert!(decode(&valid_json, None, &json_sig, 1 << 20).is_ok());
    assert!(decode(&valid_bin, Some(header.len()), &bin_sig, 1 << 20).is_ok());
    let started = Instant::now();
    let mut cases = 0;
    for _ in 0..rounds {
        let j = mutate(&valid_json);
        let _ = decode(&j, None, &json_sig, 1 << 20);
        let b = mutate(&valid_bin);
        let hl = (next() as usize) % (b.len() + 4);
        let _ = decode(&b, Some(hl), &bin_sig, 1 << 20);
        let _ = decode(&b, Some(header.len()), &bin_sig, 1 << 20);
        cases += 3;
    }
    for _ in 0..rounds / 10 {
        let p = mutate(&profile);
        let _ = vigil::monitor::profile::Profile::from_json(&p);
        let c = mutate(&config);
        if let Ok(text) = std::str::from_utf8(&c) {
            if let Ok(cfg) = toml::from_str::<vigil::config::ModelConfig>(text) {
                let _ = cfg.version_policy.policy();
                let _ = cfg.rollout.validate();
                let _ = cfg.drift.validate();
                let _ = cfg.retrain.validate();
            }
        }
        cases += 2;
    }
    println!(
        "seed {seed}: {cases} fuzz cases in {:?}, no panic",
        started.elapsed()
    );
}

/// Reads from `s` until the peer closes the connection or `limit` passes; true if closed.
fn closed_by_peer(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends one request on `s` and returns the status line, or `None` if no answer came in `limit`.
fn request_on(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    status_line(s, limit)
}

/// The status line of the next answer on `s`, or `None` if none came in `limit`.
fn status_line(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => Some(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ),
        _ => None,
    }
}

#[test]
fn slow_headers_are_cut_off() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--header-timeout", "1"],
    );
    // Slowloris: a request line and one header, then nothing.
    let mut slow = TcpStream::connect(&v.addr).unwrap();
    slow.write_all(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A client trickling one header byte at a time is cut off the same way.
    let mut trickle = TcpStream::connect(&v.addr).unwrap();
    trickle
        .write_all(b"GET /v2/health/live HTTP/1.1\r\n")
        .unwrap();
    let t = std::thread::spawn(move || {
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if trickle.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        closed_by_peer(&mut trickle, Duration::from_secs(20))
    });
    assert!(
        closed_by_peer(&mut slow, Duration::from_secs(20)),
        "a connection that never finished its headers stayed open"
    );
    assert!(t.join().unwrap(), "a trickling client was not cut off");
    // Idle keep-alive connections are closed too; working clients are not disturbed.
    let mut idle = TcpStream::connect(&v.addr).unwrap();
    assert!(request_on(&mut idle, Duration::from_secs(10))
        .unwrap()
        .contains("200"));
    assert!(closed_by_peer(&mut idle, Duration::from_secs(20)));
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
}

#[test]
fn connection_limit_holds_new_clients_until_one_closes() {
    let mut v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--max-connections", "2"],
    );
    // The harness's own pooled connection holds a slot: close it (drop its client) and
    // wait until the server counts only the connection that asks.
    v.client = reqwest::blocking::Client::new();
    common::wait_for(20, "the harness's connection to close", || {
        (main_connections(&v.addr)? <= 1.0).then_some(())
    });
    let mut a = TcpStream::connect(&v.addr).unwrap();
    let mut b = TcpStream::connect(&v.addr).unwrap();
    assert!(request_on(&mut a, Duration::from_secs(10))
        .unwrap()
        .contains("200"));
    assert!(request_on(&mut b, Duration::from_secs(10))
        .unwrap()
        .contains("200"));
    // A third client connects (the kernel queues it) but is not served while a and b are open.
    let mut c = TcpStream::connect(&v.addr).unwrap();
    assert_eq!(request_on(&mut c, Duration::from_millis(800)), None);
    drop(a);
    let mut buf = [0u8; 256];
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop((b, c));
    let metrics = wait_metrics(&v, "vigil_http_connection_limit_waits_total");
    assert!(
        metrics.lines().any(|l| l
            .starts_with("vigil_http_connection_limit_waits_total{listener=\"main\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// `vigil_http_connections{listener="main"}`, asked on a connection of its own that the
/// server closes after answering (so no pooled connection is left holding a slot).
fn main_connections(addr: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("vigil_http_connections{listener=\"main\"} "))?
        .trim()
        .parse()
        .ok()
}

/// `/metrics` text once it mentions `name` (the harness may need a fresh connection slot).
fn wait_metrics(v: &Vigil, name: &str) -> String {
    common::wait_for(20, name, || {
        let text = reqwest::blocking::Client::new()
            .get(v.url("/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .ok()?
            .text()
            .ok()?;
        text.contains(name).then_some(text)
    })
}

#[test]
fn admin_listener_separates_the_control_plane() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &[
            "--admin-addr",
            "127.0.0.1:0",
            "--admin-token",
            "s3cret",
            "--model-control",
            "explicit",
            "--load-model",
            "*",
        ],
    );
    let admin = format!("http://{}", v.admin.clone().expect("admin address logged"));
    let c = &v.client;
    // Data plane on the main listener; the control plane is not there.
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    assert_eq!(v.get("/v2/models/iris/rollout").0, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/iris/unload"),
        ("PUT", "/v2/models/iris/rollout"),
        ("POST", "/v2/models/iris/rollout/promote"),
        ("POST", "/v2/models/iris/retrain"),
        ("GET", "/v2/retrain/events"),
    ] {
        let r = c
            .request(method.parse().unwrap(), v.url(path))
            .bearer_auth("s3cret")
            .send()
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        assert!(
            r.text().unwrap().contains("admin listener"),
            "{method} {path}"
        );
    }
    // The admin listener: control plane and metrics, with the token; health for probes.
    let r = c.get(format!("{admin}/metrics")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .unwrap()
        .contains("vigil_http_connections{listener=\"admin\"}"));
    assert_eq!(
        c.get(format!("{admin}/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(format!("{admin}/v2/repository/models/iris/unload"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{admin}/v2/repository/models/iris/unload"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 404);
    let r = c
        .post(format!("{admin}/v2/repository/models/iris/load"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    // Inference is not served on the admin listener.
    let r = c
        .post(format!("{admin}/v2/models/iris/infer"))
        .json(&iris_body())
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("main listener"));
}

/// Sustained overload: many clients against one worker and a short queue. Every answer
/// is 200 or 503 with Retry-After, the server keeps serving throughout, and once the load
/// stops the next requests are served at once (no backlog left behind).
#[test]
fn sustained_overload_sheds_and_recovers() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--workers", "1", "--queue-size", "2"],
    );
    let batch = 64;
    let body = json!({"inputs": [{"name": "input", "shape": [batch, 1, 28, 28], "datatype": "FP32", "data": vec![0.5f32; batch * 784]}]}).to_string();
    let body = std::sync::Arc::new(body);
    let url = v.url("/v2/models/cnn/infer");
    let stop = Instant::now() + Duration::from_secs(3);
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (body, url) = (body.clone(), url.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut seen = Vec::new();
                while Instant::now() < stop {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body((*body).clone())
                        .send()
                        .unwrap();
                    let retry = r.headers().get("retry-after").is_some();
                    seen.push((r.status().as_u16(), retry));
                    let _ = r.bytes();
                }
                seen
            })
        })
        .collect();
    let seen: Vec<(u16, bool)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let ok = seen.iter().filter(|s| s.0 == 200).count();
    let shed = seen.iter().filter(|s| s.0 == 503 && s.1).count();
    assert_eq!(
        ok + shed,
        seen.len(),
        "only 200 and 503+Retry-After expected"
    );
    assert!(ok > 0 && shed > 0, "{ok} served, {shed} shed");
    // Health and metadata stay answered during and after; the first requests after the
    // load are all served.
    assert_eq!(v.get("/v2/health/ready").0, 200);
    for _ in 0..20 {
        let r = v
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body((*body).clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    println!("overload: {ok} served, {shed} shed with 503");
}

/// Sends `head` (and nothing more) on a fresh connection and returns the status line of
/// the answer, or `None` if none came within `limit`.
fn status_after_head(addr: &str, head: &str, limit: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    status_line(&mut s, limit)
}

const CONTROL_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/iris/load"),
    ("POST", "/v2/repository/models/iris/unload"),
    ("PUT", "/v2/models/iris/rollout"),
    ("POST", "/v2/models/iris/rollout/promote"),
    ("POST", "/v2/models/iris/rollout/rollback"),
    ("POST", "/v2/models/iris/retrain"),
    ("GET", "/v2/retrain/events"),
    ("POST", "/v2/retrain/alertmanager"),
    ("POST", "/v2/retrain/dead-letters/evt_x/replay"),
];

#[test]
fn the_admin_token_guards_every_control_route_before_its_body() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--admin-token", "s3cret", "--body-timeout", "1s"],
    );
    for (method, path) in CONTROL_ROUTES {
        let r = v
            .client
            .request(method.parse().unwrap(), v.url(path))
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without the token");
        let r = v
            .client
            .request(method.parse().unwrap(), v.url(path))
            .bearer_auth("wrong")
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong token");
    }
    let r = v
        .client
        .post(v.url("/v2/repository/index"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The token is checked before the body is read: a request announcing a large body
    // and sending none is refused with 401. (Were the body read first, the answer would
    // be the 408 of the --body-timeout below, whatever the wait: the status proves the
    // order, so the wait is a ceiling a loaded machine cannot reach.)
    for (method, path) in CONTROL_ROUTES {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 100000\r\n\r\n"
        );
        let got = status_after_head(&v.addr, &head, Duration::from_secs(8));
        assert!(
            got.as_deref().is_some_and(|l| l.contains(" 401 ")),
            "{method} {path}: {got:?}"
        );
    }
    // With the token, a body that does not arrive in --body-timeout is cut off with 408,
    // on the control routes as on inference.
    for (method, path) in CONTROL_ROUTES
        .iter()
        .chain(&[("POST", "/v2/models/iris/infer")])
    {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"re"
        );
        let start = Instant::now();
        let got = status_after_head(&v.addr, &head, Duration::from_secs(8));
        assert!(
            got.as_deref().is_some_and(|l| l.contains(" 408 ")),
            "{method} {path}: {got:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(6), "{method} {path}");
    }
    // Every route, not only the control plane: a GET announcing a body.
    let head = "GET /v2/models/iris HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n";
    let got = status_after_head(&v.addr, head, Duration::from_secs(8));
    assert!(
        got.as_deref().is_some_and(|l| l.contains(" 408 ")),
        "{got:?}"
    );
    // The server still serves.
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
}

#[test]
fn without_a_token_the_control_plane_is_served_only_on_loopback_listeners() {
    // The main listener on every interface and no token: a loopback peer (a sidecar, a
    // proxy) is not trusted for that; the control plane is closed.
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--http-addr", "0.0.0.0:0"],
    );
    let port = v.addr.rsplit(':').next().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for (method, path) in CONTROL_ROUTES {
        let r = v
            .client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let text = r.text().unwrap();
        assert!(
            text.contains("--admin-token") && text.contains("loopback address (--admin-addr"),
            "{method} {path}: {text}"
        );
    }
    let r = v
        .client
        .post(format!("{base}/v2/models/iris/infer"))
        .json(&iris_body())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(v);
    // The operator opens it by binding the admin listener to loopback.
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--http-addr", "0.0.0.0:0", "--admin-addr", "127.0.0.1:0"],
    );
    let admin = format!("http://{}", v.admin.clone().unwrap());
    let r = v
        .client
        .post(format!("{admin}/v2/repository/index"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let port = v.addr.rsplit(':').next().unwrap();
    let r = v
        .client
        .post(format!("http://127.0.0.1:{port}/v2/repository/index"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("admin listener"));
}

#[test]
fn gauges_return_to_idle_when_clients_hang_up() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &["--workers", "1"]);
    let batch = 256;
    let body = json!({"inputs": [{"name": "input", "shape": [batch, 1, 28, 28], "datatype": "FP32", "data": vec![0.25f32; batch * 784]}]}).to_string();
    let head = format!(
        "POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    // Clients that send a slow request and hang up while it is queued or running.
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(&v.addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        conns.push(s);
    }
    common::wait_for(20, "the requests to be in flight", || {
        (v.metric("vigil_inference_in_flight ")? >= 2.0).then_some(())
    });
    drop(conns);
    common::wait_for(60, "every gauge back to idle", || {
        let idle = v.metric("vigil_inference_in_flight ")? == 0.0
            && v.metric("vigil_inference_queue_depth ")? == 0.0
            && v.metric(r#"vigil_http_connections{listener="main"}"#)? <= 1.0;
        idle.then_some(())
    });
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    assert_eq!(v.metric("vigil_inference_in_flight "), Some(0.0));
}

#[test]
fn a_client_that_hangs_up_mid_body_is_not_a_bad_request() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let counted = |outcome: &str| {
        v.metric(&format!(
            // Labels in name order; the one version served (the latest).
            r#"vigil_inference_requests_total{{model="iris",outcome="{outcome}","#
        ))
        .unwrap_or(0.0)
    };
    // Half a body, then the connection closes (FIN), three times; and once an RST.
    for reset in [false, false, false, true] {
        let mut s = TcpStream::connect(&v.addr).unwrap();
        write!(
            s,
            "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 100000\r\n\r\n{{\"inputs\": [{{\"name\""
        )
        .unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        if reset {
            // SO_LINGER 0: close sends RST instead of FIN.
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &l as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
        }
        drop(s);
    }
    common::wait_for(20, "four abandoned requests", || {
        (v.metric("vigil_http_requests_abandoned_total ")? >= 4.0).then_some(())
    });
    assert_eq!(counted("bad_request"), 0.0, "a hang-up is no bad request");
    // A body that really is bad still is one, and the server answers as before.
    let (status, _) = v.post_json("/v2/models/iris/infer", &json!({"inputs": 5}));
    assert_eq!(status, 400);
    assert_eq!(counted("bad_request"), 1.0);
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    assert_eq!(v.metric("vigil_http_requests_abandoned_total "), Some(4.0));
    assert_eq!(v.metric("vigil_inference_in_flight "), Some(0.0));
}

#[test]
fn every_body_limit_is_max_body_bytes_and_answers_json() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--max-body-bytes", "5000000", "--admin-token", "t"],
    );
    let post = |path: &str, body: Vec<u8>| {
        let r = v
            .client
            .post(v.url(path))
            .bearer_auth("t")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .map(|c| c.to_str().unwrap().to_string());
        (status, kind, r.text().unwrap())
    };
    // 3 MB of valid JSON: over axum's 2 MB default, under the flag.
    let pad = "x".repeat(3_000_000);
    let alert = json!({"version": "4", "status": "firing", "alerts": [], "pad": pad});
    for path in ["/v2/retrain/alertmanager", "/v2/repository/index"] {
        let (status, kind, text) = post(path, alert.to_string().into_bytes());
        assert_ne!(status, 413, "{path}: {text:.200}");
        assert_eq!(
            kind.as_deref(),
            Some("application/json"),
            "{path}: {text:.200}"
        );
    }
    // Over the flag: 413 with a JSON error naming it, on every kind of route, answered
    // from the declared length (a client still writing would see its pipe closed).
    for path in [
        "/v2/retrain/alertmanager",
        "/v2/repository/index",
        "/v2/repository/models/iris/load",
        "/v2/models/iris/infer",
    ] {
        let mut s = TcpStream::connect(&v.addr).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
             Content-Type: application/json\r\nContent-Length: 6000000\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{path}: {answer}"
        );
        assert!(answer.contains("--max-body-bytes"), "{path}: {answer}");
    }
}

#[test]
fn one_bad_config_costs_only_its_model() {
    let dir = TempDir::new("badcfg");
    for name in ["iris", "late", "huge", "negative"] {
        let d = dir.path().join(name).join("1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            root().join("models/iris/1/model.onnx"),
            d.join("model.onnx"),
        )
        .unwrap();
    }
    for (name, config) in [
        ("late", "[retrain]\ncooldown = \"1e20\"\n"),
        ("huge", "[retrain]\ntimeout = \"99999999999999999999d\"\n"),
        ("negative", "[drift]\nwindow_seconds = \"-5s\"\n"),
    ] {
        std::fs::write(dir.path().join(name).join("config.toml"), config).unwrap();
    }
    let v = Vigil::start(dir.path(), Engine::Tract, &["--poll-interval", "100ms"]);
    // Scans go on (one every 100 ms): the good model serves and each bad one is
    // unavailable, its reason naming the key.
    let index = common::wait_for(20, "an index with every model", || {
        let (status, index) = v.post_json("/v2/repository/index", &json!({}));
        assert_eq!(status, 200, "{index}");
        (index.as_array()?.len() >= 4).then_some(index)
    });
    let rows = index.as_array().unwrap();
    let row = |m: &str| {
        rows.iter()
            .find(|r| r["name"] == m)
            .unwrap_or_else(|| panic!("{m} missing from {index}"))
    };
    assert_eq!(row("iris")["state"], "READY", "{index}");
    for (m, key) in [
        ("late", "cooldown"),
        ("huge", "timeout"),
        ("negative", "window_seconds"),
    ] {
        assert_eq!(row(m)["state"], "UNAVAILABLE", "{index}");
        let reason = row(m)["reason"].as_str().unwrap();
        assert!(reason.contains(key), "{m}: {reason}");
        let (status, body) = v.post_json(&format!("/v2/models/{m}/infer"), &iris_body());
        assert_eq!(status, 503, "{m}: {body}");
        assert_eq!(
            v.metric(&format!(
                "vigil_model_versions_unavailable{{model=\"{m}\"}}"
            )),
            Some(1.0)
        );
    }
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    assert_eq!(v.get("/v2/health/ready").0, 200);
    assert_eq!(
        v.metric(r#"vigil_task_panics_total{task="reload"}"#),
        Some(0.0)
    );
}

#[test]
fn duration_flags_take_units_and_refuse_nonsense() {
    // Every duration flag takes units (the server starts and serves).
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &[
            "--poll-interval",
            "250ms",
            "--body-timeout",
            "1.5s",
            "--header-timeout",
            "1m",
            "--shutdown-grace",
            "2s",
            "--retrain-cooldown",
            "1h30m",
            "--retrain-timeout",
            "2d",
        ],
    );
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    drop(v);
    for flag in [
        "--poll-interval",
        "--body-timeout",
        "--header-timeout",
        "--shutdown-grace",
        "--retrain-cooldown",
        "--retrain-timeout",
    ] {
        for bad in [
            "1e20",
            "-1",
            "soon",
            "NaN",
            "99999999999999999999d",
            "\u{feff}5s",
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
                .args(["serve", "--repository"])
                .arg(root().join("models"))
                .args(["--http-addr", "127.0.0.1:0"])
                .arg(format!("{flag}={bad}"))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{flag} {bad} was accepted");
            assert!(err.contains(flag), "{flag} {bad}: {err}");
        }
    }
}

/// Peak resident set (VmHWM) of process `pid`, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// `n` copies of `element` joined by commas, in brackets.
fn json_list(element: &str, n: usize) -> String {
    let mut s = String::with_capacity(n * (element.len() + 1) + 2);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(element);
    }
    s.push(']');
    s
}

/// Worst-case bodies (many of the smallest elements, huge shapes with tiny bodies), each
/// sent to a fresh server: every one is refused with a clear 400, and the server's peak
/// RSS grows by at most 3 × the body + 30 MB when the data is decoded (2-byte JSON
/// numbers become 4-byte FP32), and by at most 1.25 × the body + 16 MB when the signature
/// refuses it first (the body, read once). Before descriptors were checked against the
/// signature ahead of decoding, 15 M empty BYTES strings to the FP32 model took ~24 bytes
/// each (~430 MB for a 45 MB body); before the body was read into one buffer, reading it
/// took twice its size.
#[test]
fn memory_per_request_is_bounded_by_the_body() {
    const N: usize = 15_000_000;
    // Bounds on peak RSS growth for a body of `len` bytes.
    let decoded = |len: u64| 3 * len + (30 << 20);
    let refused_first = |len: u64| len + len / 4 + (16 << 20);
    let json_input = |datatype: &str, shape: serde_json::Value, data: &str| {
        format!(
            r#"{{"inputs":[{{"name":"X","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
        )
        .into_bytes()
    };
    let binary_input = |datatype: &str, shape: serde_json::Value, payload: Vec<u8>| {
        let header = json!({"inputs": [{"name": "X", "shape": shape, "datatype": datatype,
            "parameters": {"binary_data_size": payload.len()}}]})
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&payload);
        (body, Some(header.len()))
    };
    let mut fp32_then_bad = json_list("0", N);
    fp32_then_bad.replace_range(fp32_then_bad.len() - 2.., "\"x\"]");
    type Case = (&'static str, Vec<u8>, Option<usize>, &'static str, bool);
    let cases: Vec<Box<dyn Fn() -> Case>> = vec![
        Box::new(|| {
            let body = json_input("BYTES", json!([N / 4, 4]), &json_list(r#""""#, N));
            (
                "15 M empty BYTES, JSON",
                body,
                None,
                "data-type is 'BYTES', but model 'iris' expects 'FP32'",
                false,
            )
        }),
        Box::new(|| {
            let (body, h) = binary_input("BYTES", json!([N / 4, 4]), vec![0; 4 * N]);
            (
                "15 M empty BYTES, binary",
                body,
                h,
                "data-type is 'BYTES', but model 'iris' expects 'FP32'",
                false,
            )
        }),
        Box::new(|| {
            let body = json_input("FP64", json!([N / 4, 4]), &json_list("0", N));
            (
                "15 M FP64 of 2 bytes, JSON",
                body,
                None,
                "data-type is 'FP64', but model 'iris' expects 'FP32'",
                false,
            )
        }),
        Box::new(|| {
            let body = json_input("FP32", json!([N / 4, 4]), &fp32_then_bad);
            (
                "15 M FP32 of 2 bytes, JSON, all decoded",
                body,
                None,
                "element 14999999",
                true,
            )
        }),
        Box::new(|| {
            let body = json_input("FP32", json!([16_000_000, 4]), "[1]");
            (
                "huge shape, JSON",
                body,
                None,
                "needs 64000000 elements, got 1",
                false,
            )
        }),
        Box::new(|| {
            let (body, h) = binary_input("FP32", json!([16_000_000, 4]), vec![0; 16]);
            (
                "huge shape, binary",
                body,
                h,
                "needs 64000000 elements",
                false,
            )
        }),
    ];
    let started = Instant::now();
    for make in cases {
        let (what, body, header_len, want, is_decoded) = make();
        let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
        assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
        let before = peak_rss(v.pid());
        let mut req = v.client.post(v.url("/v2/models/iris/infer"));
        if let Some(n) = header_len {
            req = req.header("Inference-Header-Content-Length", n.to_string());
        }
        let len = body.len() as u64;
        let r = req.body(body).send().unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        let growth = peak_rss(v.pid()).saturating_sub(before);
        println!(
            "{what}: body {:.1} MB, peak RSS +{:.1} MB ({:.2} x body), {status} {text}",
            len as f64 / 1e6,
            growth as f64 / 1e6,
            growth as f64 / len as f64
        );
        assert_eq!(status, 400, "{what}: {text}");
        assert!(
            text.contains(want),
            "{what}: {text} should contain {want:?}"
        );
        let bound = if is_decoded {
            decoded(len)
        } else {
            refused_first(len)
        };
        assert!(
            growth <= bound,
            "{what}: peak RSS grew by {growth} bytes for a body of {len} (bound {bound})"
        );
    }
    println!("{:?}", started.elapsed());
}

/// The decoded worst cases of `memory_per_request_is_bounded_by_the_body`, bounded by the
/// larger of the body and its tensors rather than their sum: a big body's pages are given
/// back as its data is decoded. Each body carries the `dtypes` model's inputs, a big one
/// first and a bad INT8 element last, so that all of the big input is decoded and the
/// request then refused. 2-byte JSON numbers become 4-byte FP32 (2 × the body) or 8-byte
/// FP64 (4 ×, the tensor itself); binary FP32 is copied once (1 ×); a body sent without
/// Content-Length (chunked) is held the same way. Before, the body stayed whole until
/// the tensors were built: 3 ×, 5 ×, 2 × and 3 × the body.
#[test]
fn memory_per_decoded_request_is_about_the_larger_of_body_and_tensors() {
    const ROWS: usize = 5_000_000; // 15 M elements
    let others = || {
        let mut v: Vec<serde_json::Value> = [
            ("x_int16", "INT16"),
            ("x_int32", "INT32"),
            ("x_int64", "INT64"),
            ("x_uint8", "UINT8"),
            ("x_uint16", "UINT16"),
            ("x_uint32", "UINT32"),
            ("x_uint64", "UINT64"),
        ]
        .iter()
        .map(|(n, t)| json!({"name": n, "shape": [1, 3], "datatype": t, "data": [0, 0, 0]}))
        .collect();
        v.push(json!({"name": "x_bool", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true]}));
        v.push(json!({"name": "x_int8", "shape": [1, 3], "datatype": "INT8", "data": [1, 2, 300]}));
        v
    };
    let small = |name: &str, datatype: &str| json!({"name": name, "shape": [1, 3], "datatype": datatype, "data": [0, 0, 0]});
    // The big input's JSON text goes in place of a marker, so as not to build 15 M Values.
    let json_body = |big: &str, datatype: &str, other: serde_json::Value| {
        let mut inputs = vec![
            json!({"name": big, "shape": [ROWS, 3], "datatype": datatype, "data": "BIG"}),
            other,
        ];
        inputs.extend(others());
        let header = json!({ "inputs": inputs }).to_string();
        header
            .replacen("\"BIG\"", &json_list("0", 3 * ROWS), 1)
            .into_bytes()
    };
    let binary_body = || {
        let mut inputs = vec![
            json!({"name": "x_fp32", "shape": [ROWS, 3], "datatype": "FP32",
                "parameters": {"binary_data_size": 12 * ROWS}}),
            small("x_fp64", "FP64"),
        ];
        inputs.extend(others());
        let header = json!({ "inputs": inputs }).to_string();
        let mut body = header.clone().into_bytes();
        body.resize(header.len() + 12 * ROWS, 0);
        (body, Some(header.len()))
    };
    // (what, body, Inference-Header-Content-Length, chunked, bound as growth / body)
    type Case = (&'static str, Vec<u8>, Option<usize>, bool, f64);
    let cases: Vec<Box<dyn Fn() -> Case>> = vec![
        Box::new(|| {
            let body = json_body("x_fp32", "FP32", small("x_fp64", "FP64"));
            ("15 M FP32 of 2 bytes, JSON", body, None, false, 2.5)
        }),
        Box::new(|| {
            let body = json_body("x_fp32", "FP32", small("x_fp64", "FP64"));
            ("15 M FP32 of 2 bytes, JSON, chunked", body, None, true, 2.5)
        }),
        Box::new(|| {
            let body = json_body("x_fp64", "FP64", small("x_fp32", "FP32"));
            ("15 M FP64 of 2 bytes, JSON", body, None, false, 4.25)
        }),
        Box::new(|| {
            let (body, h) = binary_body();
            ("15 M FP32, binary", body, h, false, 1.25)
        }),
        Box::new(|| {
            let (body, h) = binary_body();
            ("15 M FP32, binary, chunked", body, h, true, 1.25)
        }),
    ];
    // Every case runs, and the cases over their bound are reported together.
    let mut over = Vec::new();
    for make in cases {
        let (what, body, header_len, chunked, bound) = make();
        let v = Vigil::start(&root().join("tests/data/repo"), Engine::Tract, &[]);
        let mut warm = others();
        warm.pop(); // the bad INT8
        warm.extend([
            small("x_fp32", "FP32"),
            small("x_fp64", "FP64"),
            small("x_int8", "INT8"),
        ]);
        let (status, got) = v.post_json("/v2/models/dtypes/infer", &json!({ "inputs": warm }));
        assert_eq!(status, 200, "{got}");
        let before = peak_rss(v.pid());
        let mut req = v.client.post(v.url("/v2/models/dtypes/infer"));
        if let Some(n) = header_len {
            req = req.header("Inference-Header-Content-Length", n.to_string());
        }
        let len = body.len() as u64;
        let req = if chunked {
            // A reader of unknown length: sent with Transfer-Encoding: chunked.
            req.body(reqwest::blocking::Body::new(std::io::Cursor::new(body)))
        } else {
            req.body(body)
        };
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        let growth = peak_rss(v.pid()).saturating_sub(before);
        println!(
            "{what}: body {:.1} MB, peak RSS +{:.1} MB ({:.2} x body), {status} {text}",
            len as f64 / 1e6,
            growth as f64 / 1e6,
            growth as f64 / len as f64
        );
        assert_eq!(status, 400, "{what}: {text}");
        assert!(
            text.contains("input 'x_int8': element 2 (300)"),
            "{what}: {text}"
        );
        if growth > (bound * len as f64) as u64 {
            over.push(format!(
                "{what}: peak RSS grew by {growth} bytes for a body of {len} ({:.2} x, bound {bound} x)",
                growth as f64 / len as f64
            ));
        }
    }
    assert!(over.is_empty(), "{over:#?}");
}

/// Anonymous resident memory (RssAnon) of process `pid`, in bytes.
fn rss_anon(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/<pid>/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A burst of requests from many connections leaves free heap in every thread's malloc
/// arena (64 requests of 20 000 strings: ~16 MB on main, kept for the process's life);
/// once the burst is over the server gives it back to the kernel (memtrim). Waits on
/// RssAnon itself, for up to 15 s (the trim comes within 2 s of the last request).
#[test]
fn memory_a_burst_took_is_given_back_when_it_ends() {
    let v = Vigil::start(&root().join("tests/data/repo"), Engine::Tract, &[]);
    let n = 20_000;
    let data: Vec<String> = (0..n).map(|i| format!("abcdefghij{i}")).collect();
    let body = std::sync::Arc::new(
        json!({"inputs": [{"name": "text", "shape": [n], "datatype": "BYTES", "data": data}]})
            .to_string(),
    );
    let url = v.url("/v2/models/strings/infer");
    let post = |client: &reqwest::blocking::Client, body: &str| {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().unwrap();
    };
    post(&v.client, &body);
    // Settled: the warm-up's own trim (if any) is over.
    std::thread::sleep(Duration::from_millis(2500));
    let before = rss_anon(v.pid());
    std::thread::scope(|s| {
        for _ in 0..16 {
            let body = body.clone();
            let post = &post;
            s.spawn(move || {
                let client = reqwest::blocking::Client::new();
                for _ in 0..4 {
                    post(&client, &body);
                }
            });
        }
    });
    let after = rss_anon(v.pid());
    let grown = after.saturating_sub(before);
    assert!(
        grown > 4 << 20,
        "the burst should take memory: {before} -> {after} bytes"
    );
    let limit = before + grown / 4;
    let settled = common::wait_for(15, "RssAnon back near its level before the burst", || {
        let now = rss_anon(v.pid());
        (now <= limit).then_some(now)
    });
    eprintln!("RssAnon before {before}, after the burst {after}, settled {settled}");
}

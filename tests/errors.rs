//! Every error a client can provoke: the right status, a message that names the problem,
//! and a server that keeps serving afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{reference, root, Engine, Vigil};
use serde_json::{json, Value};

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
}

fn iris_input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "X", "shape": shape, "datatype": datatype, "data": data}]})
}

#[test]
fn bad_requests_get_clear_errors() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let ok = reference("iris_v2");
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v2/models/nope/infer",
            json!({"inputs": ok["inputs"]}),
            404,
            "Request for unknown model: 'nope' is not found",
        ),
        (
            "/v2/models/iris/versions/9/infer",
            json!({"inputs": ok["inputs"]}),
            404,
            "Request for unknown model: 'iris' version 9 is not found",
        ),
        (
            "/v2/models/iris/versions/x/infer",
            json!({"inputs": ok["inputs"]}),
            400,
            "not a positive integer",
        ),
        (
            "/v2/models/iris/versions/0/infer",
            json!({"inputs": ok["inputs"]}),
            400,
            "not a positive integer",
        ),
        (
            "/v2/models/iris/infer",
            iris_input(json!([1, 3]), "FP32", json!([1, 2, 3])),
            400,
            "unexpected shape for input 'X' for model 'iris'. Expected [-1,4], got [1,3]",
        ),
        (
            "/v2/models/iris/infer",
            iris_input(json!([4]), "FP32", json!([1, 2, 3, 4])),
            400,
            "unexpected shape for input 'X' for model 'iris'. Expected [-1,4], got [4]",
        ),
        (
            "/v2/models/iris/infer",
            iris_input(json!([1, 4]), "FP64", json!([1, 2, 3, 4])),
            400,
            "inference input 'X' data-type is 'FP64', but model 'iris' expects 'FP32'",
        ),
        (
            "/v2/models/iris/infer",
            iris_input(json!([2, 4]), "FP32", json!([1, 2, 3, 4])),
            400,
            "input 'X': shape [2, 4] needs 8 elements, got 4",
        ),
        (
            "/v2/models/iris/infer",
            iris_input(json!([1, 4]), "FP32", json!([1, 2, "x", 4])),
            400,
            "input 'X': element 2",
        ),
        (
            "/v2/models/iris/infer",
            iris_input(json!([0, 4]), "FP32", json!([])),
            400,
            "empty tensors",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": [{"name": "Y", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
            400,
            "unexpected inference input 'Y' for model 'iris'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": []}),
            400,
            "expected 1 inputs but got 0 inputs for model 'iris': missing input 'X'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": [ok["inputs"][0], ok["inputs"][0]]}),
            400,
            "given twice",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": ok["inputs"], "outputs": [{"name": "logits"}]}),
            400,
            "unexpected inference output 'logits' for model 'iris'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": "nope"}),
            400,
            "invalid inference request JSON at 'inputs'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"id": 5, "inputs": ok["inputs"]}),
            400,
            "at 'id'",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": ok["inputs"], "parameters": {"binary_data_output": "yes"}}),
            400,
            "binary_data_output",
        ),
    ];
    for (path, body, status, want) in cases {
        let (got_status, got) = v.post_json(path, &body);
        assert_eq!(got_status, status, "{path} {body}: {got}");
        assert!(
            error_of(&got).contains(want),
            "{path}: {:?} should contain {want:?}",
            error_of(&got)
        );
    }
    // Not JSON at all.
    let r = v
        .client
        .post(v.url("/v2/models/iris/infer"))
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    // Binary header that lies about lengths.
    for (hlen, body) in [("999", b"{}".to_vec()), ("abc", b"{}".to_vec())] {
        let r = v
            .client
            .post(v.url("/v2/models/iris/infer"))
            .header("Inference-Header-Content-Length", hlen)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "header length {hlen}");
    }
    // Unknown endpoint and wrong method are JSON errors too.
    let (status, body) = v.get("/v2/nothing/here");
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("no such endpoint"));
    let r = v.client.get(v.url("/v2/models/iris/infer")).send().unwrap();
    assert_eq!(r.status(), 405);
    // Metadata of unknown things.
    assert_eq!(v.get("/v2/models/nope").0, 404);
    assert_eq!(v.get("/v2/models/iris/versions/7").0, 404);
    assert_eq!(v.get("/v2/models/nope/config").0, 404);
    assert_eq!(v.get("/v2/models/nope/stats").0, 404);
    // After all that, still serving correctly.
    let (status, _) = v.post_json("/v2/models/iris/infer", &json!({"inputs": ok["inputs"]}));
    assert_eq!(status, 200);
}

#[test]
fn fixed_dimensions_are_enforced() {
    let v = Vigil::start(&root().join("tests/data/repo"), Engine::Tract, &[]);
    let body = json!({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": vec![1.0; 12]}]});
    let (status, got) = v.post_json("/v2/models/fixed/infer", &body);
    assert_eq!(status, 400);
    assert!(
        error_of(&got).contains(
            "unexpected shape for input 'x' for model 'fixed'. Expected [2,4], got [3,4]"
        ),
        "{got}"
    );
    let body = json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [-1, 2, -3, 4, 5, -6, 7, -8]}]});
    let (status, got) = v.post_json("/v2/models/fixed/infer", &body);
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got["outputs"][0]["data"],
        json!([0.0, 2.0, 0.0, 4.0, 5.0, 0.0, 7.0, 0.0])
    );
    // A BYTES value that is not UTF-8 reaches an engine that needs strings: 400, not a crash.
    let header = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}).to_string();
    let mut raw = header.clone().into_bytes();
    raw.extend([2, 0, 0, 0, 0xff, 0xfe]);
    let r = v
        .client
        .post(v.url("/v2/models/strings/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(raw)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("UTF-8"));
    // A BYTES length prefix past the end of the input's data.
    let header = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}).to_string();
    let mut raw = header.clone().into_bytes();
    raw.extend([200, 0, 0, 0, b'a', b'b', b'c', b'd']);
    let r = v
        .client
        .post(v.url("/v2/models/strings/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(raw)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().unwrap();
    assert!(
        text.contains("input 'text': BYTES element 0 is truncated"),
        "{text}"
    );
}

#[test]
fn body_limit_is_413() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--max-body-bytes", "1000"],
    );
    let rows: Vec<f32> = vec![0.5; 4 * 100];
    let body =
        json!({"inputs": [{"name": "X", "shape": [100, 4], "datatype": "FP32", "data": rows}]});
    let (status, got) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 413);
    assert!(error_of(&got).contains("1000 bytes"), "{got}");
    // Chunked upload without a Content-Length is cut off at the limit too.
    let mut s = TcpStream::connect(&v.addr).unwrap();
    let chunk = "x".repeat(600);
    write!(
        s,
        "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // A small request still works.
    let (status, _) = v.post_json(
        "/v2/models/iris/infer",
        &json!({"inputs": reference("iris_v2")["inputs"]}),
    );
    assert_eq!(status, 200);
}

#[test]
fn full_queue_is_503_with_retry_after() {
    // One worker, one waiting slot: a burst of slow requests must overflow.
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--workers", "1", "--queue-size", "1"],
    );
    let batch = 256;
    let body = json!({"inputs": [{"name": "input", "shape": [batch, 1, 28, 28], "datatype": "FP32", "data": vec![0.25f32; batch * 784]}]});
    let body = std::sync::Arc::new(body.to_string());
    let url = v.url("/v2/models/cnn/infer");
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let (body, url) = (body.clone(), url.clone());
            std::thread::spawn(move || {
                let r = reqwest::blocking::Client::new()
                    .post(url)
                    .header("content-type", "application/json")
                    .body((*body).clone())
                    .send()
                    .unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|h| h.to_str().unwrap().to_string());
                let status = r.status().as_u16();
                let text = r.text().unwrap();
                (status, retry, text)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(ok >= 1, "{results:?}");
    assert!(
        !busy.is_empty(),
        "expected some 503s: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(ok + busy.len(), results.len());
    for (_, retry, text) in &busy {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(text.contains("overloaded"), "{text}");
    }
    let metrics = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains(&format!(
        r#"vigil_inference_requests_total{{model="cnn",outcome="overloaded",version="1"}} {}"#,
        busy.len()
    )));
}

#[test]
fn garbage_never_takes_the_server_down() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    // Deterministic pseudo-random bodies, headers and raw bytes.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let templates = [
        r#"{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#,
        r#"{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
    ];
    for i in 0..300 {
        let mut body = templates[i % 2].as_bytes().to_vec();
        let flips = 1 + next() % 4;
        for _ in 0..flips {
            let pos = (next() as usize) % body.len();
            body[pos] = (next() % 256) as u8;
        }
        let mut req = v
            .client
            .post(v.url("/v2/models/iris/infer"))
            .body(body.clone());
        if i % 2 == 1 {
            let hl = (next() % (body.len() as u64 + 8)).to_string();
            req = req.header("Inference-Header-Content-Length", hl);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        assert!(
            matches!(status, 200 | 400),
            "status {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    // Raw protocol garbage on a socket.
    for junk in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        &[0u8, 255, 13, 10, 13, 10],
    ] {
        if let Ok(mut s) = TcpStream::connect(&v.addr) {
            let _ = s.write_all(junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    let (status, _) = v.post_json(
        "/v2/models/iris/infer",
        &json!({"inputs": reference("iris_v2")["inputs"]}),
    );
    assert_eq!(status, 200, "server still serves after the garbage");
}

// review: the same output requested N times is answered N times (HTTP and gRPC), so a
// request of a few hundred KB makes the server build hundreds of MB (seen on 2cae950 over
// gRPC: mlp, 1000 rows, 8000 × "probabilities": VmHWM 215 -> 597 MB; over HTTP 2000 × gave
// a 64 MB answer). Triton refuses a duplicate requested output; so should vigil.
#[test]
fn a_duplicate_requested_output_is_refused() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let ok = reference("iris_v2");
    let body = json!({"inputs": ok["inputs"], "outputs": [
        {"name": "probabilities"}, {"name": "probabilities"}, {"name": "probabilities"}]});
    let (status, out) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 400, "{out}");
    assert!(error_of(&out).contains("probabilities"), "{out}");
}

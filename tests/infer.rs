//! Every sample model through JSON and binary requests on both engines, compared with
//! onnxruntime-in-Python references (tests/data/refs, written by models/make_models.py);
//! every datatype round-trips; metadata, config and stats describe what is served.

mod common;

use common::{
    assert_output_close, assert_outputs_close, infer_binary, reference, root, Engine, Vigil,
};
use serde_json::{json, Value};

const TOL: f64 = 1e-5;

/// (model, version, reference name, engines that must serve it)
const CASES: &[(&str, u64, &str, &[Engine])] = &[
    ("iris", 1, "iris_v1", &[Engine::Tract, Engine::Ort]),
    ("iris", 2, "iris_v2", &[Engine::Tract, Engine::Ort]),
    ("mlp", 1, "mlp_v1", &[Engine::Tract, Engine::Ort]),
    ("cnn", 1, "cnn_v1", &[Engine::Tract, Engine::Ort]),
    (
        "breast_cancer",
        1,
        "breast_cancer_v1",
        &[Engine::Tract, Engine::Ort],
    ),
];

fn check_model(v: &Vigil, model: &str, version: u64, refname: &str) {
    let r = reference(refname);
    let want = r["outputs"].as_array().unwrap();
    // Versioned path for every case; the unversioned path serves the latest.
    let path = format!("/v2/models/{model}/versions/{version}/infer");
    let body = json!({"id": "json-1", "inputs": r["inputs"]});
    let (status, got) = v.post_json(&path, &body);
    assert_eq!(status, 200, "{model} v{version} JSON: {got}");
    assert_eq!(got["model_name"], model);
    assert_eq!(got["model_version"], version.to_string());
    assert_eq!(got["id"], "json-1");
    assert_outputs_close(&got["outputs"], want, TOL);
    let (status, got) = infer_binary(v, &path, r["inputs"].as_array().unwrap());
    assert_eq!(status, 200, "{model} v{version} binary: {got}");
    assert_eq!(got["id"], "bin-1");
    assert_outputs_close(&got["outputs"], want, TOL);
}

fn sample_models_on(engine: Engine) {
    let v = Vigil::start(&root().join("models"), engine, &[]);
    // Version 1 of iris is not served (latest only): pinning it is a 404.
    let (status, body) = v.post_json(
        "/v2/models/iris/versions/1/infer",
        &json!({"inputs": reference("iris_v1")["inputs"]}),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Request for unknown model: 'iris' version 1 is not found"),
        "{body}"
    );
    for &(model, version, refname, engines) in CASES {
        if !engines.contains(&engine) || (model, version) == ("iris", 1) {
            continue;
        }
        check_model(&v, model, version, refname);
    }
    // Unversioned infer goes to the latest.
    let (status, got) = v.post_json(
        "/v2/models/iris/infer",
        &json!({"inputs": reference("iris_v2")["inputs"]}),
    );
    assert_eq!(status, 200);
    assert_eq!(got["model_version"], "2");
}

#[test]
fn sample_models_on_tract() {
    // breast_cancer (two-class gradient boosting) included: tract serves it rewritten.
    sample_models_on(Engine::Tract);
}

#[test]
fn sample_models_on_ort() {
    sample_models_on(Engine::Ort);
}

/// iris v1 needs its own repository to be the served version.
#[test]
fn iris_v1_reference() {
    let dir = std::env::temp_dir().join(format!("vigil-iris1-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("iris/1")).unwrap();
    std::fs::copy(
        root().join("models/iris/1/model.onnx"),
        dir.join("iris/1/model.onnx"),
    )
    .unwrap();
    for engine in [Engine::Tract, Engine::Ort] {
        let v = Vigil::start(&dir, engine, &[]);
        check_model(&v, "iris", 1, "iris_v1");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_datatype_round_trips() {
    let r = reference("dtypes_v1");
    let want = r["outputs"].as_array().unwrap();
    for engine in [Engine::Tract, Engine::Ort] {
        let v = Vigil::start(&root().join("tests/data/repo"), engine, &[]);
        let (status, got) = v.post_json("/v2/models/dtypes/infer", &json!({"inputs": r["inputs"]}));
        assert_eq!(status, 200, "{engine:?}: {got}");
        assert_outputs_close(&got["outputs"], want, 0.0);
        let (status, got) = infer_binary(
            &v,
            "/v2/models/dtypes/infer",
            r["inputs"].as_array().unwrap(),
        );
        assert_eq!(status, 200, "{engine:?}: {got}");
        assert_outputs_close(&got["outputs"], want, 0.0);
        // Strings (BYTES) both ways.
        let s = reference("strings_v1");
        let (status, got) =
            v.post_json("/v2/models/strings/infer", &json!({"inputs": s["inputs"]}));
        assert_eq!(status, 200, "{engine:?}: {got}");
        assert_outputs_close(&got["outputs"], s["outputs"].as_array().unwrap(), 0.0);
        let (status, got) = infer_binary(
            &v,
            "/v2/models/strings/infer",
            s["inputs"].as_array().unwrap(),
        );
        assert_eq!(status, 200, "{engine:?}: {got}");
        assert_outputs_close(&got["outputs"], s["outputs"].as_array().unwrap(), 0.0);
    }
}

#[test]
fn output_selection_and_mixed_binary() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let r = reference("iris_v2");
    // Ask for probabilities only, as binary, and label as JSON, in that order.
    let body = json!({
        "inputs": r["inputs"],
        "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": true}},
            {"name": "label"}
        ]
    });
    let resp = v
        .client
        .post(v.url("/v2/models/iris/infer"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let hlen: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let bytes = resp.bytes().unwrap();
    let header: Value = serde_json::from_slice(&bytes[..hlen]).unwrap();
    let outs = header["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[0]["name"], "probabilities");
    assert!(outs[0].get("data").is_none());
    let size = outs[0]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(size, bytes.len() - hlen);
    let mut probs = common::from_le_bytes("FP32", &bytes[hlen..]);
    let want_probs = &r["outputs"][1];
    let mut got_probs = outs[0].clone();
    got_probs["data"] = Value::from(std::mem::take(&mut probs));
    assert_output_close(&got_probs, want_probs, TOL);
    assert_output_close(&outs[1], &r["outputs"][0], 0.0);
}

#[test]
fn metadata_config_and_stats() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let (status, meta) = v.get("/v2");
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "vigil");
    let ext: Vec<&str> = meta["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for e in ["binary_tensor_data", "model_configuration", "statistics"] {
        assert!(ext.contains(&e), "{ext:?}");
    }
    assert_eq!(v.get("/v2/health/live").0, 200);

    let (status, m) = v.get("/v2/models/iris");
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["name"], "iris");
    assert_eq!(m["versions"], json!(["2"]));
    assert_eq!(
        m["inputs"],
        json!([{"name": "X", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        m["outputs"],
        json!([
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
        ])
    );
    let (status, m2) = v.get("/v2/models/iris/versions/2");
    assert_eq!(status, 200);
    assert_eq!(m2["inputs"], m["inputs"]);
    let (status, cnn) = v.get("/v2/models/cnn");
    assert_eq!(status, 200);
    assert_eq!(cnn["inputs"][0]["shape"], json!([-1, 1, 28, 28]));

    let (status, ready) = v.get("/v2/models/iris/ready");
    assert_eq!((status, ready["ready"].clone()), (200, json!(true)));
    assert_eq!(v.get("/v2/models/iris/versions/2/ready").0, 200);
    assert_eq!(v.get("/v2/models/iris/versions/1/ready").0, 503);

    let (status, cfg) = v.get("/v2/models/mlp/config");
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(cfg["name"], "mlp");
    assert_eq!(cfg["backend"], "tract");
    assert_eq!(
        cfg["input"],
        json!([{"name": "X", "data_type": "TYPE_FP32", "dims": [32]}])
    );
    // Triton's meaning: the batch dimension is not in `dims` when max_batch_size > 0.
    assert_eq!(cfg["max_batch_size"], 32, "{cfg}");
    assert_eq!(cfg["output"][0]["data_type"], "TYPE_INT64");

    // Stats count what was served.
    let r = reference("iris_v2");
    for _ in 0..3 {
        assert_eq!(
            v.post_json("/v2/models/iris/infer", &json!({"inputs": r["inputs"]}))
                .0,
            200
        );
    }
    let bad =
        json!({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(v.post_json("/v2/models/iris/infer", &bad).0, 400);
    let (status, stats) = v.get("/v2/models/iris/stats");
    assert_eq!(status, 200);
    let s = &stats["model_stats"][0];
    assert_eq!(s["name"], "iris");
    assert_eq!(s["version"], "2");
    assert_eq!(s["inference_stats"]["success"]["count"], 3);
    assert_eq!(s["inference_stats"]["fail"]["count"], 1);
    assert_eq!(s["inference_count"], 3 * 7, "7 rows per request");
    assert!(
        s["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    let (_, all) = v.get("/v2/models/stats");
    assert_eq!(
        all["model_stats"].as_array().unwrap().len(),
        4,
        "iris, mlp, cnn and breast_cancer loaded on tract"
    );

    // Metrics carry the model and version labels.
    let text = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(
            r#"vigil_inference_requests_total{model="iris",outcome="success",version="2"} 3"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"vigil_inference_requests_total{model="iris",outcome="bad_request",version="2"} 1"#
    ));
    assert!(text.contains(r#"vigil_model_loaded{model="cnn",role="stable",version="1"} 1"#));
    for family in [
        "vigil_inference_request_duration_seconds_bucket",
        "vigil_inference_queue_duration_seconds_bucket",
        "vigil_inference_compute_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    // promtool (installed by scripts/setup-test-deps.sh) finds nothing to complain about.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/setup-test-deps.sh");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The infer routes are served in front of the router (issue #19: a hand match saves the
/// router's per-request work); every path the hand match does not take (empty or
/// percent-encoded segments, extra segments) goes through the router. Each answer here
/// is what main's router-only front gave for the same request.
#[test]
fn infer_paths_answer_as_the_router_did() {
    let v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let body = json!({"inputs": reference("iris_v2")["inputs"]});
    let cases: &[(&str, u16, &str)] = &[
        ("/v2/models/iris/infer", 200, ""),
        ("/v2/models/iris/versions/2/infer", 200, ""),
        ("/v2/models/iris/infer?x=1", 200, ""),
        ("/v2/models/ir%69s/infer", 200, ""),
        ("/v2/models/iris/versions/%32/infer", 200, ""),
        (
            "/v2/models/iris/versions/0/infer",
            400,
            "version '0' is not a positive integer",
        ),
        (
            "/v2/models/iris/versions/x/infer",
            400,
            "version 'x' is not",
        ),
        (
            "/v2/models/iris/versions/-1/infer",
            400,
            "version '-1' is not",
        ),
        (
            "/v2/models/iris/versions/99999999999999999999999/infer",
            400,
            "is not a positive integer",
        ),
        ("/v2/models/iris/versions//infer", 400, "version '' is not"),
        ("/v2/models//infer", 404, "unknown model: ''"),
        ("/v2/models/nope/infer", 404, "unknown model: 'nope'"),
        ("/v2/models/iris/infer/", 404, "no such endpoint"),
        ("//v2/models/iris/infer", 404, "no such endpoint"),
        ("/V2/models/iris/infer", 404, "no such endpoint"),
        (
            "/v2/models/iris/versions/2/infer/x",
            404,
            "no such endpoint",
        ),
    ];
    for &(path, status, error) in cases {
        let r = v.client.post(v.url(path)).json(&body).send().unwrap();
        let got_status = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(got_status, status, "{path}: {text}");
        if status == 200 {
            let got: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got["model_name"], "iris", "{path}: {text}");
            assert_eq!(got["model_version"], "2", "{path}: {text}");
        } else {
            assert!(text.contains(error), "{path}: {text}");
        }
    }
    // Not UTF-8 once decoded: the router's 400.
    let r = v
        .client
        .post(v.url("/v2/models/%ff/infer"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = v.client.get(v.url("/v2/models/iris/infer")).send().unwrap();
    assert_eq!(r.status(), 405);
}

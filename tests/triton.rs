//! A Triton model repository as Triton users have it: `config.pbtxt` per model, read and
//! obeyed (version policy, dynamic batching, Triton's meaning of `max_batch_size`), fields
//! vigil does not act on listed as ignored, a bad config costing only its model, and
//! `config.toml` winning where both set a thing. Triton's quick-start `simple` model as
//! ONNX (tests/python/make_simple_model.py).

mod common;

use std::path::Path;

use common::{root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};

/// A repository with `simple` at versions 1, 2, 3 and `config.pbtxt` = `pbtxt`.
fn simple_repo(pbtxt: Option<&str>) -> TempDir {
    let dir = TempDir::new("triton");
    add_simple(dir.path(), "simple", pbtxt);
    dir
}

fn add_simple(repo: &Path, name: &str, pbtxt: Option<&str>) {
    for v in 1..=3 {
        let vdir = repo.join(name).join(v.to_string());
        std::fs::create_dir_all(&vdir).unwrap();
        std::fs::copy(
            root().join("tests/data/triton/simple/1/model.onnx"),
            vdir.join("model.onnx"),
        )
        .unwrap();
    }
    if let Some(text) = pbtxt {
        std::fs::write(repo.join(name).join("config.pbtxt"), text).unwrap();
    }
}

const SIMPLE: &str = r#"
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 3 ] } }
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 400000
}
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "team" value: { string_value: "search" } }
optimization { input_pinned_memory { enable: false } }
"#;

fn index(v: &Vigil) -> Vec<Value> {
    let (status, rows) = v.post_json("/v2/repository/index", &json!({}));
    assert_eq!(status, 200, "{rows}");
    rows.as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [Value], name: &str, version: Option<&str>) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name && r["version"].as_str() == version)
        .unwrap_or_else(|| panic!("no index row {name} {version:?} in {rows:?}"))
}

fn body(rows: usize, seed: i32) -> Value {
    let a: Vec<i32> = (0..16 * rows as i32).map(|i| i + seed).collect();
    let b: Vec<i32> = (0..16 * rows as i32).map(|i| 2 * i - seed).collect();
    json!({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [rows, 16], "data": a},
        {"name": "INPUT1", "datatype": "INT32", "shape": [rows, 16], "data": b},
    ]})
}

#[test]
fn a_triton_repository_serves_with_the_settings_it_declares() {
    let dir = simple_repo(Some(SIMPLE));
    let v = Vigil::start(dir.path(), Engine::Ort, &["--workers", "1"]);

    // version_policy specific [1, 3]: 1 and 3 served, 2 not.
    let rows = index(&v);
    assert_eq!(
        row(&rows, "simple", Some("1"))["state"],
        "READY",
        "{rows:?}"
    );
    assert_eq!(
        row(&rows, "simple", Some("3"))["state"],
        "READY",
        "{rows:?}"
    );
    let two = row(&rows, "simple", Some("2"));
    assert_eq!(two["state"], "UNAVAILABLE");
    assert!(
        two["reason"].as_str().unwrap().contains("version policy"),
        "{two}"
    );
    // What vigil read but does not act on is listed, not silently dropped.
    assert_eq!(two["ignored"], json!(["optimization"]), "{two}");
    assert_eq!(v.get("/v2/models/simple/versions/1/ready").0, 200);
    assert_eq!(v.get("/v2/models/simple/versions/2/ready").0, 503);
    assert_eq!(v.get("/v2/models/simple/versions/3/ready").0, 200);

    // The config endpoint answers with Triton's meaning of max_batch_size.
    let (status, cfg) = v.get("/v2/models/simple/config");
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(cfg["platform"], "onnxruntime_onnx");
    assert_eq!(cfg["max_batch_size"], 8, "{cfg}");
    assert_eq!(
        cfg["input"][0],
        json!({"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]})
    );
    assert_eq!(cfg["output"][1]["dims"], json!([16]));
    assert_eq!(
        cfg["version_policy"],
        json!({"specific": {"versions": [1, 3]}})
    );
    assert_eq!(cfg["dynamic_batching"]["preferred_batch_size"], json!([4]));
    assert_eq!(
        cfg["dynamic_batching"]["max_queue_delay_microseconds"],
        400000
    );
    assert_eq!(cfg["instance_group"][0]["count"], 2, "{cfg}");
    assert_eq!(cfg["parameters"]["team"]["string_value"], "search");

    // Right answers, alone.
    let (status, out) = v.post_json("/v2/models/simple/infer", &body(1, 3));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["model_version"], "3");
    let sum: Vec<i64> = (0..16).map(|i| (i + 3) + (2 * i - 3)).collect();
    assert_eq!(out["outputs"][0]["data"], json!(sum));

    // Dynamic batching as declared: concurrent single-row requests are run together.
    let count = |name: &str| {
        v.metric(&format!("{name}{{model=\"simple\",version=\"3\"}}"))
            .unwrap_or(0.0)
    };
    let (runs0, rows0) = (
        count("vigil_inference_batch_size_count"),
        count("vigil_inference_batch_size_sum"),
    );
    let url = v.url("/v2/models/simple/infer");
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                for r in 0..4 {
                    let resp = client.post(&url).json(&body(1, c * 10 + r)).send().unwrap();
                    assert_eq!(resp.status(), 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let runs = count("vigil_inference_batch_size_count") - runs0;
    let rows_run = count("vigil_inference_batch_size_sum") - rows0;
    assert_eq!(rows_run, 32.0, "every row run once");
    assert!(
        runs < 32.0,
        "requests were batched: {runs} runs for 32 rows"
    );

    // config.toml wins where both say the same thing.
    std::fs::write(
        dir.path().join("simple/config.toml"),
        "[version_policy]\nlatest = 1\n",
    )
    .unwrap();
    let (status, out) = v.post_json("/v2/repository/models/simple/load", &json!({}));
    assert_eq!(status, 200, "{out}");
    let rows = index(&v);
    assert_eq!(
        row(&rows, "simple", Some("1"))["state"],
        "UNAVAILABLE",
        "{rows:?}"
    );
    assert_eq!(row(&rows, "simple", Some("3"))["state"], "READY");
    let (_, cfg) = v.get("/v2/models/simple/config");
    assert_eq!(
        cfg["version_policy"],
        json!({"latest": {"num_versions": 1}})
    );
    assert_eq!(
        cfg["max_batch_size"], 8,
        "the rest of config.pbtxt still holds"
    );
}

#[test]
fn a_bad_config_pbtxt_costs_only_its_model() {
    let dir = TempDir::new("triton-bad");
    add_simple(dir.path(), "good", None);
    let bad = [
        (
            "unparsable",
            "max_batch_size: [\n",
            "cannot parse config.pbtxt",
        ),
        (
            "wrong_type",
            &SIMPLE.replace("\"simple\"", "\"wrong_type\"").replace(
                "TYPE_INT32 dims: [ 16 ] },\n  { name: \"INPUT1\"",
                "TYPE_FP32 dims: [ 16 ] },\n  { name: \"INPUT1\"",
            ),
            "data_type TYPE_FP32 but the model file says TYPE_INT32",
        ),
        (
            "wrong_dims",
            "max_batch_size: 8\ninput [ { name: \"INPUT0\" data_type: TYPE_INT32 dims: [ 15 ] } ]",
            "dims [15]",
        ),
        (
            "wrong_name",
            "name: \"other\"",
            "does not match the model directory",
        ),
        (
            "not_onnx",
            "platform: \"tensorflow_savedmodel\"",
            "platform 'tensorflow_savedmodel' is not served",
        ),
        ("not_utf8", "name: \"\u{0}\"", ""),
    ];
    for (name, text, _) in &bad {
        add_simple(dir.path(), name, Some(text));
    }
    std::fs::write(dir.path().join("not_utf8/config.pbtxt"), [b'n', 0xff, 0xfe]).unwrap();
    let v = Vigil::start(dir.path(), Engine::Ort, &[]);
    wait_for(10, "good to serve", || {
        (v.get("/v2/models/good/ready").0 == 200).then_some(())
    });
    let rows = index(&v);
    for (name, _, want) in &bad {
        let reasons: Vec<&str> = rows
            .iter()
            .filter(|r| r["name"] == *name)
            .map(|r| {
                assert_ne!(r["state"], "READY", "{r}");
                r["reason"].as_str().unwrap()
            })
            .collect();
        let want = if want.is_empty() { "not UTF-8" } else { want };
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{name}: {reasons:?} should contain {want:?}"
        );
        assert_ne!(v.get(&format!("/v2/models/{name}/ready")).0, 200, "{name}");
    }
    let (status, out) = v.post_json("/v2/models/good/infer", &body(2, 1));
    assert_eq!(status, 200, "{out}");
}

#[test]
fn load_with_a_config_override_as_tritonclient_sends_it() {
    let dir = simple_repo(Some(SIMPLE));
    let v = Vigil::start(dir.path(), Engine::Ort, &[]);
    let load = |body: Value| v.post_json("/v2/repository/models/simple/load", &body);
    let config = json!({
        "name": "simple",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "version_policy": {"all": {}},
    });
    let (status, out) = load(json!({"parameters": {"config": config.to_string()}}));
    assert_eq!(status, 200, "{out}");
    let rows = index(&v);
    for version in ["1", "2", "3"] {
        assert_eq!(
            row(&rows, "simple", Some(version))["state"],
            "READY",
            "{rows:?}"
        );
    }
    let (_, cfg) = v.get("/v2/models/simple/config");
    assert_eq!(cfg["version_policy"], json!({"all": {}}), "{cfg}");
    assert!(
        cfg.get("dynamic_batching").is_none(),
        "the override replaces config.pbtxt: {cfg}"
    );

    // A bad override: Triton's text, 400, and what was served keeps serving.
    for bad in [
        json!({"parameters": {"config": "{not json"}}),
        json!({"parameters": {"config": 5}}),
        json!({"parameters": {"config": "{\"max_batch_size\": \"x\"}"}}),
        json!({"parameters": {"config": "{\"name\": \"other\"}"}}),
        json!({"parameters": {"config": "{\"platform\": \"pytorch_libtorch\"}"}}),
    ] {
        let (status, out) = load(bad.clone());
        assert_eq!(status, 400, "{bad}: {out}");
        let msg = out["error"].as_str().unwrap();
        assert!(
            msg.starts_with(
                "failed to load 'simple', failed to parse the model configuration override"
            ),
            "{bad}: {msg}"
        );
    }
    assert_eq!(v.get("/v2/models/simple/versions/2/ready").0, 200);
    assert_eq!(v.post_json("/v2/models/simple/infer", &body(1, 0)).0, 200);

    // A load without an override goes back to config.pbtxt.
    assert_eq!(load(json!({})).0, 200);
    assert_eq!(v.get("/v2/models/simple/versions/2/ready").0, 503);
}

/// Runs tests/python/triton_examples.py against a vigil on `repo` with HTTP and gRPC.
fn examples(repo: &Path, extra: &[&str], mode: &[&str]) -> String {
    let mut args = vec!["--grpc-addr", "127.0.0.1:0", "--poll-interval", "0"];
    args.extend_from_slice(extra);
    let v = Vigil::start(repo, Engine::Ort, &args);
    let line = v.wait_log(30, "the gRPC address", |l| {
        l.contains("gRPC listening on grpc://")
    });
    let rest = &line[line.find("grpc://").unwrap() + "grpc://".len()..];
    let grpc = rest.split_whitespace().next().unwrap().to_string();
    let out = std::process::Command::new(common::python())
        .arg(root().join("tests/python/triton_examples.py"))
        .arg(&v.addr)
        .arg(&grpc)
        .args(mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "triton_examples.py {mode:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("triton examples passed"), "{stdout}");
    stdout
}

/// The calls and expectations of Triton's Python client examples (sync, async and
/// asyncio inference, JSON and binary tensors, requested outputs, health, metadata,
/// statistics, the unknown-model errors) over HTTP and gRPC, on ONNX Runtime.
#[test]
fn triton_client_examples_pass_over_http_and_grpc() {
    let dir = simple_repo(Some(
        &SIMPLE.replace("version_policy: { specific: { versions: [ 1, 3 ] } }", ""),
    ));
    let out = examples(dir.path(), &[], &[]);
    for part in [
        "http sync ok",
        "http async ok",
        "http aio ok",
        "http health and metadata ok",
        "grpc sync ok",
        "grpc async ok",
        "grpc aio ok",
        "grpc health and metadata ok",
    ] {
        assert!(out.contains(part), "{part}: {out}");
    }
}

/// Triton's model-control example: load, a malformed override ("failed to load"), an
/// override of `max_batch_size`, unload, an unknown model; over HTTP and gRPC.
#[test]
fn triton_model_control_example_passes() {
    let dir = simple_repo(Some(
        &SIMPLE.replace("version_policy: { specific: { versions: [ 1, 3 ] } }", ""),
    ));
    add_simple(
        dir.path(),
        "other",
        Some(
            &SIMPLE
                .replace("name: \"simple\"", "name: \"other\"")
                .replace("version_policy: { specific: { versions: [ 1, 3 ] } }", ""),
        ),
    );
    let out = examples(dir.path(), &["--model-control", "explicit"], &["control"]);
    assert!(out.contains("model control ok"), "{out}");
}

// review: a load whose configuration override is refused (400) keeps the override:
// every later scan rejects the model's config again ("model config rejected" each poll),
// so a version published afterwards is never loaded and the index calls the model
// UNAVAILABLE, blaming config.toml, until a load without an override. Seen on 2cae950:
// override max_queue_delay_microseconds = 5000000 -> 400; version 2 published; 13 s and
// 16 rejections later the model still serves only version 1.
#[test]
fn a_refused_load_override_does_not_stick_to_the_model() {
    let dir = simple_repo(None);
    std::fs::remove_dir_all(dir.path().join("simple/2")).unwrap();
    std::fs::remove_dir_all(dir.path().join("simple/3")).unwrap();
    let v = Vigil::start(dir.path(), Engine::Ort, &["--poll-interval", "100ms"]);
    assert_eq!(v.get("/v2/models/simple/versions/1/ready").0, 200);
    let config = json!({"max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 5_000_000}});
    let (status, out) = v.post_json(
        "/v2/repository/models/simple/load",
        &json!({"parameters": {"config": config.to_string()}}),
    );
    assert_eq!(status, 400, "{out}");
    // A new version arrives: the default policy (latest 1) serves it.
    let vdir = dir.path().join("simple/2");
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::copy(
        root().join("tests/data/triton/simple/1/model.onnx"),
        vdir.join("model.onnx"),
    )
    .unwrap();
    wait_for(
        30,
        "version 2 to be served after the refused override",
        || (v.get("/v2/models/simple/versions/2/ready").0 == 200).then_some(()),
    );
    let rows = index(&v);
    assert_eq!(
        row(&rows, "simple", Some("2"))["state"],
        "READY",
        "{rows:?}"
    );
}

// review: a load override that does not describe the model file (an input it lacks, a
// wrong data_type) is refused with 400 for a model not yet loaded, but answered 200 for
// one already served: its loaded versions are kept without checking them against the new
// configuration. Seen on 2cae950 (iris): input "NOPE" -> 200; input X as TYPE_STRING
// dims [99] -> 200 and /config then says max_batch_size 8; the same "NOPE" override on a
// fresh model -> 400 "unexpected inference input 'NOPE'".
#[test]
fn a_load_override_that_does_not_describe_the_served_model_is_refused() {
    let dir = simple_repo(None);
    let v = Vigil::start(dir.path(), Engine::Ort, &["--poll-interval", "0"]);
    assert_eq!(v.get("/v2/models/simple/versions/3/ready").0, 200);
    for config in [
        json!({"input": [{"name": "NOPE", "data_type": "TYPE_INT32", "dims": [16]}]}),
        json!({"input": [{"name": "INPUT0", "data_type": "TYPE_STRING", "dims": [16]}]}),
    ] {
        let (status, out) = v.post_json(
            "/v2/repository/models/simple/load",
            &json!({"parameters": {"config": config.to_string()}}),
        );
        assert_eq!(status, 400, "{config}: {out}");
    }
}

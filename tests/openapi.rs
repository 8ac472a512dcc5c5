//! Property-based runs of schemathesis (PyPI, in `.venv-schemathesis`, installed by
//! `scripts/setup-test-deps.sh`) against a real vigil serving sample models:
//! - vigil's own `/openapi.json`: every operation fuzzed with positive and negative data;
//!   no 5xx, every status declared, every body within its declared schema;
//! - the Open Inference Protocol's REST specification (`tests/data/oip/`) on its V2 paths:
//!   no 5xx, every body within the specification's schemas.
//!
//! Both fail on any response that drifts from the schema; a third test proves that by
//! fuzzing against a description with one planted mismatch.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{root, Engine, TempDir, Vigil};

/// schemathesis's CLI, installed by scripts/setup-test-deps.sh. Missing is a failure.
fn schemathesis() -> PathBuf {
    let p = root().join(".venv-schemathesis/bin/st");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup-test-deps.sh",
        p.display()
    );
    p
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// iris (two versions, feedback and a retrain hook on a closed loopback port), mlp, and
/// `spare` (a copy of mlp) for the repository's load and unload to act on, so that the
/// models the other operations reach stay loaded.
fn repository() -> TempDir {
    let repo = TempDir::new("openapi");
    for m in ["iris", "mlp"] {
        copy_dir(&root().join("models").join(m), &repo.path().join(m));
    }
    copy_dir(&root().join("models/mlp"), &repo.path().join("spare"));
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[logging]\nfeedback_window = \"1m\"\n\n\
         [retrain]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"whsec_c2NoZW1hdGhlc2lz\"\nmax_attempts = 1\n",
    )
    .unwrap();
    repo
}

/// The checks every run makes.
const CHECKS: &str = "not_a_server_error,status_code_conformance,response_schema_conformance,\
     content_type_conformance,negative_data_rejection";

/// Runs `st run` with `config` (TOML) and `args`; returns whether it passed and its output.
fn run_schemathesis(dir: &Path, config: &str, args: &[&str]) -> (bool, String) {
    let cfg = dir.join("schemathesis.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&cfg)
        .args(["--no-color", "run"])
        .args(args)
        // One worker: the CPython of the test venv can trip over hypothesis's lambda
        // introspection in parallel threads; the seed makes a failure reproducible.
        .args(["--workers", "1", "--seed", "20261207"])
        .args(["--report", "junit", "--report-dir"])
        .arg(dir.join("report"))
        .current_dir(dir)
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Path parameters drawn mostly from what the server serves (so operations reach their
/// logic), sometimes from names and versions it does not.
const VIGIL_CONFIG: &str = r#"
[dictionaries.models]
values = ["iris", "mlp", "nope"]
[dictionaries.versions]
values = [1, 2, 9]
[dictionaries.spare]
values = ["spare", "nope"]

[parameters]
"path.model" = { dictionary = "models", probability = 0.9 }
"path.version" = { dictionary = "versions", probability = 0.9 }

# Load and unload act on `spare`, so the models the other operations reach stay served.
[[operations]]
include-path-regex = "^/v2/repository/models/"
parameters = { "path.model" = { dictionary = "spare", probability = 1.0 } }

# A readiness probe answers 503 for "not ready" (a version the policy does not load):
# declared, and the answer Kubernetes probes act on, not a fault.
[[operations]]
include-path-regex = "/ready$"
checks.not_a_server_error.expected-statuses = ["1XX", "2XX", "3XX", "4XX", "503"]
"#;

#[test]
fn vigil_answers_within_its_own_openapi_description() {
    let repo = repository();
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let work = TempDir::new("openapi-run");
    let url = v.url("/openapi.json");
    let (ok, out) = run_schemathesis(
        work.path(),
        VIGIL_CONFIG,
        &[
            &url,
            // Its own path too, which schemathesis leaves out by default.
            "--include-path-regex",
            "^/",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--mode",
            "all",
        ],
    );
    assert!(
        ok,
        "schemathesis found responses outside /openapi.json:\n{out}"
    );
    // Every operation of the description was exercised.
    let doc: serde_json::Value = v.client.get(&url).send().unwrap().json().unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p.as_object().unwrap().keys())
        .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
        .count();
    assert!(
        out.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{out}"
    );
    // Nothing a client sent panicked the server or stopped it.
    assert!(v
        .client
        .get(v.url("/v2/health/live"))
        .send()
        .unwrap()
        .status()
        .is_success());
    let logs = v.drain_logs().join("\n");
    assert!(!logs.contains("panicked"), "vigil panicked:\n{logs}");
}

/// The OIP specification writes path templates as `${NAME}`; OpenAPI's are `{NAME}`.
fn oip_spec(dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(root().join("tests/data/oip/open_inference_rest.yaml")).unwrap();
    let text = text
        .replace("${MODEL_NAME}", "{MODEL_NAME}")
        .replace("${MODEL_VERSION}", "{MODEL_VERSION}");
    let p = dir.join("open_inference_rest.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn vigil_answers_within_the_oip_specification() {
    let repo = repository();
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let work = TempDir::new("oip-run");
    let spec = oip_spec(work.path());
    // The specification declares 200 and 400 only; vigil answers 404 for a model it does
    // not serve, so the path names what it serves and statuses are not checked here
    // (vigil's own description declares them all, above).
    let config = r#"
[parameters]
"path.MODEL_NAME" = "iris"
"path.MODEL_VERSION" = "2"
"#;
    let (ok, out) = run_schemathesis(
        work.path(),
        config,
        &[
            spec.to_str().unwrap(),
            "--url",
            &v.base,
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "40",
            "--mode",
            "all",
        ],
    );
    assert!(
        ok,
        "schemathesis found responses outside the OIP specification:\n{out}"
    );
    assert!(
        out.contains("Tested: 6"),
        "the specification's 6 operations:\n{out}"
    );
}

/// The runs above can fail: a description that declares one field vigil does not send
/// (a required `bogus` in the model metadata) is caught.
#[test]
fn a_response_outside_the_description_fails_the_run() {
    let repo = repository();
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let work = TempDir::new("openapi-planted");
    let mut doc: serde_json::Value = v
        .client
        .get(v.url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let meta = &mut doc["components"]["schemas"]["metadata_model_response"];
    meta["properties"]["bogus"] = serde_json::json!({"type": "string"});
    meta["required"]
        .as_array_mut()
        .unwrap()
        .push("bogus".into());
    let file = work.path().join("planted.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let (ok, out) = run_schemathesis(
        work.path(),
        "[parameters]\n\"path.model\" = \"iris\"\n",
        &[
            file.to_str().unwrap(),
            "--url",
            &v.base,
            "--checks",
            "response_schema_conformance",
            "--include-path",
            "/v2/models/{model}",
            "--include-method",
            "GET",
            "--max-examples",
            "5",
        ],
    );
    assert!(!ok, "a planted schema mismatch went unnoticed:\n{out}");
    assert!(out.contains("bogus"), "the failure names the field:\n{out}");
}

/// Bodies of the wrong shape that schemathesis's negative data found accepted: each is
/// refused with 400 and changes nothing (a retrain trigger whose body was an array created
/// an event).
#[test]
fn bodies_of_the_wrong_shape_are_refused() {
    let repo = repository();
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let cases = [
        ("/v2/models/iris/retrain", r#"[null, null]"#),
        ("/v2/models/iris/retrain", r#""now""#),
        ("/v2/repository/index", r#"{"ready": {}}"#),
        ("/v2/repository/index", r#"{"ready": "yes"}"#),
        ("/v2/repository/index", r#"[]"#),
        ("/v2/repository/models/spare/load", r#"{"parameters": 3}"#),
        ("/v2/repository/models/spare/load", r#"["parameters"]"#),
        (
            "/v2/models/iris/feedback",
            r#"{"id": "a", "outputs": [{"data": false}]}"#,
        ),
    ];
    for (path, body) in cases {
        let r = v
            .client
            .post(v.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let answer: serde_json::Value = r.json().unwrap();
        assert_eq!(status, 400, "POST {path} {body}: {answer}");
        assert!(answer["error"].is_string(), "POST {path} {body}: {answer}");
    }
    // No event was created by the refused triggers.
    let (_, events) = v.get("/v2/retrain/events");
    assert_eq!(events["pending"], serde_json::json!([]), "{events}");
    // The well-formed bodies still work.
    assert_eq!(
        v.post_json("/v2/repository/index", &serde_json::json!({"ready": true}))
            .0,
        200
    );
    let (status, created) = v.post_json(
        "/v2/models/iris/retrain",
        &serde_json::json!({"reason": "a test"}),
    );
    assert_eq!(status, 202, "{created}");
}

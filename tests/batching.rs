//! Dynamic batching: concurrent requests are run together and each gets the answer it
//! would get alone; settings change without a reload; batching off means one request
//! per execution.

mod common;

use std::sync::Arc;

use common::{assert_outputs_close, python, root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};

/// A copy of a sample model with the given `config.toml`.
fn repo_of(model: &str, config: &str) -> TempDir {
    let dir = TempDir::new("batching");
    let v1 = dir.path().join(model).join("1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(
        root().join("models").join(model).join("1/model.onnx"),
        v1.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(dir.path().join(model).join("config.toml"), config).unwrap();
    dir
}

fn repo(config: &str) -> TempDir {
    repo_of("mlp", config)
}

/// Deterministic request bodies of 1 to 3 rows of 32 features.
fn bodies(n: usize) -> Vec<Value> {
    let mut x = 0x9e37_79b9u32;
    (0..n)
        .map(|i| {
            let rows = 1 + i % 3;
            let data: Vec<f32> = (0..rows * 32)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 2000) as f32 / 500.0 - 2.0
                })
                .collect();
            json!({"inputs": [{"name": "X", "shape": [rows, 32], "datatype": "FP32", "data": data}]})
        })
        .collect()
}

/// onnxruntime's outputs (in Python) for each body, run alone on `model`'s version 1.
fn ort_answers(model: &str, bodies: &[Value]) -> Vec<Vec<Value>> {
    let dir = TempDir::new("ort-oracle");
    let file = dir.path().join("requests.json");
    std::fs::write(&file, serde_json::to_vec(bodies).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(root().join("tests/python/ort_outputs.py"))
        .arg(root().join("models").join(model).join("1/model.onnx"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Vec<Value>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers.len(), bodies.len());
    answers
}

/// Rows of the requests answered (body i has 1 + i % 3 rows).
fn rows_of(got: &[(usize, Value)]) -> f64 {
    got.iter().map(|(i, _)| (1 + i % 3) as f64).sum()
}

/// `vigil_inference_batch_size` count and sum for the MLP.
fn batch_stats(v: &Vigil) -> (f64, f64) {
    let get = |name: &str| {
        v.metric(&format!("{name}{{model=\"mlp\",version=\"1\"}}"))
            .unwrap_or(0.0)
    };
    (
        get("vigil_inference_batch_size_count"),
        get("vigil_inference_batch_size_sum"),
    )
}

/// Sends every body from `clients` threads at once, repeatedly; returns (body index, outputs).
fn concurrent(
    v: &Vigil,
    bodies: &Arc<Vec<Value>>,
    clients: usize,
    rounds: usize,
) -> Vec<(usize, Value)> {
    let url = v.url("/v2/models/mlp/infer");
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (bodies, url) = (bodies.clone(), url.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut got = Vec::new();
                for r in 0..rounds {
                    let i = (c * 7 + r) % bodies.len();
                    let resp = client.post(&url).json(&bodies[i]).send().unwrap();
                    assert_eq!(resp.status(), 200);
                    let body: Value = resp.json().unwrap();
                    got.push((i, body["outputs"].clone()));
                }
                got
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn concurrent_requests_are_batched_and_answered_as_alone() {
    for engine in [Engine::Tract, Engine::Ort] {
        let dir = repo("[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 2000\n");
        let v = Vigil::start(
            dir.path(),
            engine,
            &["--workers", "1", "--poll-interval", "0.2"],
        );
        let bodies = Arc::new(bodies(24));
        let oracle = ort_answers("mlp", &bodies);
        // Alone: one request at a time (a lone request is never held back to wait).
        let alone: Vec<Value> = bodies
            .iter()
            .map(|b| {
                let (status, out) = v.post_json("/v2/models/mlp/infer", b);
                assert_eq!(status, 200, "{out}");
                out["outputs"].clone()
            })
            .collect();
        let (_, config) = v.get("/v2/models/mlp/config");
        assert_eq!(
            config["dynamic_batching"]["max_batch_size"],
            json!(16),
            "{config}"
        );
        assert_eq!(
            config["dynamic_batching"]["max_queue_delay_microseconds"],
            json!(2000)
        );
        let (count0, sum0) = batch_stats(&v);
        assert_eq!(count0, 24.0, "one execution per sequential request");
        for (i, outputs) in alone.iter().enumerate() {
            assert_outputs_close(outputs, &oracle[i], 1e-5);
        }
        let got = concurrent(&v, &bodies, 16, 30);
        for (i, outputs) in &got {
            // What onnxruntime answers for the body alone, and what vigil answered for it
            // alone, to the bit.
            assert_outputs_close(outputs, &oracle[*i], 1e-5);
            assert_eq!(
                outputs, &alone[*i],
                "{engine:?}: body {i} answered differently in a batch"
            );
        }
        let (count, sum) = batch_stats(&v);
        let executions = count - count0;
        let rows = sum - sum0;
        assert_eq!(rows, rows_of(&got), "every row ran exactly once");
        assert!(
            executions < got.len() as f64 * 0.8,
            "{engine:?}: {} requests took {executions} executions: not batched",
            got.len()
        );
        println!(
            "{engine:?}: {} requests ({rows} rows) in {executions} executions",
            got.len()
        );

        // Turning batching off takes effect without reloading the model.
        let loads =
            |v: &Vigil| v.metric("vigil_model_load_total{model=\"mlp\",outcome=\"success\"}");
        let loads_before = loads(&v);
        std::fs::write(
            dir.path().join("mlp/config.toml"),
            "[batching]\nmax_batch_size = 1\n",
        )
        .unwrap();
        wait_for(20, "batching off in the model config", || {
            let (_, config) = v.get("/v2/models/mlp/config");
            config.get("dynamic_batching").is_none().then_some(())
        });
        let (count1, sum1) = batch_stats(&v);
        let got = concurrent(&v, &bodies, 16, 10);
        for (i, outputs) in &got {
            assert_outputs_close(outputs, &oracle[*i], 1e-5);
        }
        let (count2, sum2) = batch_stats(&v);
        assert_eq!(
            count2 - count1,
            got.len() as f64,
            "batching off: one execution per request"
        );
        assert_eq!(sum2 - sum1, rows_of(&got));
        assert_eq!(loads(&v), loads_before, "no reload for a batching change");
    }
}

#[test]
fn batch_queue_full_is_503_and_bad_settings_are_refused() {
    // Slow requests (256 images each, larger than the batch: each runs alone) on one
    // worker with one waiting slot: a burst must overflow the version's queue.
    let dir = repo_of(
        "cnn",
        "[batching]\nmax_batch_size = 4\nmax_queue_size = 1\n",
    );
    let v = Vigil::start(dir.path(), Engine::Tract, &["--workers", "1"]);
    let batch = 256;
    let body = Arc::new(json!({"inputs": [{"name": "input", "shape": [batch, 1, 28, 28], "datatype": "FP32", "data": vec![0.25f32; batch * 784]}]}).to_string());
    let url = v.url("/v2/models/cnn/infer");
    let start = Arc::new(std::sync::Barrier::new(12));
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let (body, url, start) = (body.clone(), url.clone(), start.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                start.wait();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body((*body).clone())
                    .send()
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.headers().get("retry-after").is_some(),
                )
            })
        })
        .collect();
    let results: Vec<(u16, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        results.iter().all(|r| r.0 == 200 || (r.0 == 503 && r.1)),
        "{results:?}"
    );
    assert!(results.iter().any(|r| r.0 == 200), "{results:?}");
    assert!(results.iter().any(|r| r.0 == 503), "{results:?}");
    // A config with impossible settings is refused with the file and the reason.
    std::fs::write(
        dir.path().join("cnn/config.toml"),
        "[batching]\nmax_batch_size = 4\npreferred_batch_sizes = [8]\n",
    )
    .unwrap();
    let reason = wait_for(30, "the config error in the index", || {
        let r = v
            .client
            .post(v.url("/v2/repository/index"))
            .send()
            .ok()?
            .text()
            .ok()?;
        r.contains("preferred batch size 8").then_some(r)
    });
    assert!(reason.contains("config.toml"), "{reason}");
    // The model keeps serving with its last good settings.
    let small = json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": vec![0.5f32; 784]}]});
    assert_eq!(v.post_json("/v2/models/cnn/infer", &small).0, 200);
}

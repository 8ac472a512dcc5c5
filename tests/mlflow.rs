//! vigil following a real MLflow Model Registry: a real `mlflow server` (from
//! .venv-mlflow, installed by scripts/setup-test-deps.sh) on loopback with a temporary
//! SQLite store and artifact root; models logged and registered by MLflow's own Python
//! client; aliases moved through MLflow's REST API, as a pipeline or a person would.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_output_close, assert_outputs_close, iris_disputed_rows, iris_training_rows, logged_port,
    reference, root, wait_for, Engine, TempDir, Vigil,
};
use serde_json::{json, Value};

struct Mlflow {
    child: Child,
    uri: String,
    http: reqwest::blocking::Client,
}

impl Mlflow {
    /// Starts `mlflow server` on port 0 and reads the port uvicorn bound from its log.
    fn start(dir: &std::path::Path) -> Mlflow {
        let bin = root().join(".venv-mlflow/bin/mlflow");
        assert!(
            bin.exists(),
            "{} missing: run scripts/setup-test-deps.sh",
            bin.display()
        );
        let log_path = dir.join("mlflow.log");
        let log = std::fs::File::create(&log_path).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new(bin)
            .process_group(0)
            // No telemetry threads (they race on os.environ: one run failed with a
            // KeyError '_MLFLOW_TELEMETRY_SESSION_ID' in a REST call).
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .args(["server", "--host", "127.0.0.1", "--port", "0"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .args(["--workers", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mlflow server");
        // Owned (killed on drop) before anything here can fail.
        let mut m = Mlflow {
            child,
            uri: String::new(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        let port = logged_port(&log_path, "Uvicorn running on http://", 180);
        m.uri = format!("http://127.0.0.1:{port}");
        wait_for(180, "mlflow server to answer /health", || {
            let r = m.http.get(format!("{}/health", m.uri)).send().ok()?;
            r.status().is_success().then_some(())
        });
        m
    }

    fn alias(&self, model: &str, alias: &str, version: Option<u64>) {
        let url = format!("{}/api/2.0/mlflow/registered-models/alias", self.uri);
        let r = match version {
            Some(v) => self
                .http
                .post(url)
                .json(&json!({"name": model, "alias": alias, "version": v.to_string()})),
            None => self
                .http
                .delete(url)
                .json(&json!({"name": model, "alias": alias})),
        }
        .send()
        .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text());
    }

    /// Kills the server and its workers (children of the CLI process, in its group).
    fn kill(&mut self) {
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Sends `signal` to the server's whole process group (SIGSTOP: a registry that hangs).
    fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(-(self.child.id() as i32), signal);
        }
    }

    fn stop(&mut self) {
        self.kill();
        let addr = self.uri.trim_start_matches("http://").to_string();
        wait_for(30, "mlflow to stop listening", || {
            std::net::TcpStream::connect(&addr).is_err().then_some(())
        });
    }
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Logs and registers the test models with MLflow's own client (tests/python/mlflow_log.py);
/// `more` adds `sklearn_only` and `cnn`. Returns the versions registered, per model.
fn log_models(mlflow: &Mlflow, more: bool) -> Value {
    let out = Command::new(root().join(".venv-mlflow/bin/python"))
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .arg(root().join("tests/python/mlflow_log.py"))
        .arg(&mlflow.uri)
        .arg(root().join("models"))
        .args(more.then_some("--more"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logging models failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(
        out.stdout
            .split(|&b| b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap(),
    )
    .unwrap()
}

/// `vigil serve` arguments following `models` in MLflow at `uri`, polling every 0.5 s.
fn follow(uri: &str, models: &str, state: &std::path::Path) -> Vec<String> {
    [
        "--registry",
        "mlflow",
        "--mlflow-uri",
        uri,
        "--mlflow-models",
        models,
        "--poll-interval",
        "0.5",
        "--state-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([state.display().to_string()])
    .collect()
}

fn iris_body() -> Value {
    json!({"inputs": reference("iris_v2")["inputs"]})
}

/// The served version of one inference request.
fn served(v: &Vigil) -> String {
    let (status, body) = v.post_json("/v2/models/iris/infer", &iris_body());
    assert_eq!(status, 200, "{body}");
    body["model_version"].as_str().unwrap().to_string()
}

fn rollout(v: &Vigil) -> Value {
    v.get("/v2/models/iris/rollout").1
}

#[test]
fn serves_from_the_mlflow_registry_by_alias() {
    let dir = TempDir::new("mlflow");
    let mut mlflow = Mlflow::start(dir.path());

    // A training pipeline logs and registers two ONNX versions (and a non-ONNX model).
    let logged = log_models(&mlflow, false);
    assert_eq!(logged["iris"], json!([1, 2]));
    mlflow.alias("iris", "champion", Some(1));
    mlflow.alias("notonnx", "champion", Some(1));

    // The cache directory may carry vigil's own settings for a model: the canary weight.
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("iris")).unwrap();
    std::fs::write(
        cache.join("iris/config.toml"),
        "backend = \"tract\"\n[rollout]\nweight = 30\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let args = |uri: &str| -> Vec<String> {
        vec![
            "--registry".into(),
            "mlflow".into(),
            "--mlflow-uri".into(),
            uri.into(),
            "--mlflow-models".into(),
            "iris,notonnx".into(),
            "--poll-interval".into(),
            "0.5".into(),
            "--state-dir".into(),
            state.display().to_string(),
        ]
    };
    let a = args(&mlflow.uri);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let v = Vigil::start(&cache, Engine::Tract, &a);

    // champion → stable: version 1 serves, downloaded with its run's reference.json.
    assert_eq!(served(&v), "1");
    assert!(cache.join("iris/1/model.onnx").is_file());
    assert!(cache.join("iris/1/reference.json").is_file());
    assert!(
        !cache.join("iris/2").exists(),
        "only aliased versions are fetched"
    );
    // The reference came along: drift is measured against the training profile.
    let (_, drift) = v.get("/v2/models/iris/drift");
    assert_eq!(
        drift["versions"][0]["reference"]["rows"],
        json!(150),
        "{drift}"
    );
    // A non-ONNX model is refused with a clear message; iris is not disturbed.
    let logs = wait_for(20, "the non-ONNX refusal in the log", || {
        let l = v.drain_logs().join("\n");
        l.contains("not an ONNX model").then_some(l)
    });
    assert!(logs.contains("notonnx"), "{logs}");
    assert_eq!(v.get("/v2/models/notonnx").0, 404);
    assert!(
        v.metric("vigil_registry_errors_total{source=\"mlflow\"}")
            .unwrap()
            >= 1.0
    );

    // challenger → canary at config.toml's weight.
    mlflow.alias("iris", "challenger", Some(2));
    wait_for(30, "the challenger to become the canary", || {
        (rollout(&v)["canary"] == json!(2)).then_some(())
    });
    let n = 1000;
    let on_canary = (0..n).filter(|_| served(&v) == "2").count();
    let share = on_canary as f64 / n as f64;
    assert!((share - 0.30).abs() <= 0.05, "canary share {share}");
    // The roles follow MLflow: the rollout API may not override them.
    let r = v
        .client
        .post(v.url("/v2/models/iris/rollout/promote"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("registry"));

    // Moving champion to version 2 under load: the swap loses no request.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            let url = v.url("/v2/models/iris/infer");
            let body = iris_body().to_string();
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send();
                    match r {
                        Ok(r) if r.status() == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Requests answered before the move, during it, and after it.
    let answered = |n: usize, what: &str| {
        wait_for(60, what, || {
            (done.load(Ordering::Relaxed) >= n).then_some(())
        })
    };
    answered(100, "100 requests before the move");
    mlflow.alias("iris", "champion", Some(2));
    wait_for(30, "champion 2 to become stable", || {
        (rollout(&v)["stable"] == json!(2)).then_some(())
    });
    answered(
        done.load(Ordering::Relaxed) + 100,
        "100 requests after the move",
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(done.load(Ordering::Relaxed) >= 200);
    // champion and challenger now name the same version: no canary.
    assert_eq!(rollout(&v)["canary"], Value::Null);
    assert!((0..50).all(|_| served(&v) == "2"));

    // A new challenger, then deleting the alias: the canary is rolled back.
    mlflow.alias("iris", "challenger", Some(1));
    wait_for(30, "challenger 1 as canary", || {
        (rollout(&v)["canary"] == json!(1)).then_some(())
    });
    mlflow.alias("iris", "challenger", None);
    wait_for(30, "the canary to be rolled back", || {
        (rollout(&v)["canary"] == Value::Null).then_some(())
    });
    assert!((0..50).all(|_| served(&v) == "2"));

    // MLflow goes away: vigil keeps serving, reports the registry down, logs it once.
    // (Lines logged before: on a loaded machine a slow MLflow may already have been
    // reported unreachable once, a change of state of its own.)
    let before_stop = v.drain_logs();
    mlflow.stop();
    wait_for(30, "vigil_registry_up to drop", || {
        (v.metric("vigil_registry_up{source=\"mlflow\"}") == Some(0.0)).then_some(())
    });
    let errors_before = v
        .metric("vigil_registry_errors_total{source=\"mlflow\"}")
        .unwrap();
    // It keeps retrying (with a growing delay), counting each failure.
    wait_for(30, "another failed retry", || {
        (v.metric("vigil_registry_errors_total{source=\"mlflow\"}")? > errors_before).then_some(())
    });
    assert!((0..20).all(|_| served(&v) == "2"));
    // The line was logged when the registry went down; it reaches the test through the
    // log reader's pipe, so wait for it before counting.
    let unreachable: Vec<String> = v
        .logs_through(30, "the registry logged unreachable", |l| {
            l.contains("iris") && l.contains("unreachable")
        })
        .into_iter()
        .filter(|l| l.contains("iris") && l.contains("unreachable"))
        .collect();
    assert_eq!(
        unreachable.len(),
        1,
        "one log line per change of state: {unreachable:#?}; before the stop: {:#?}",
        before_stop
            .iter()
            .filter(|l| l.contains("unreachable"))
            .collect::<Vec<_>>()
    );

    // A restart with MLflow still down serves the cached champion.
    drop(v);
    let started = Instant::now();
    let v = Vigil::start(&cache, Engine::Tract, &a);
    assert_eq!(served(&v), "2");
    assert_eq!(rollout(&v)["stable"], json!(2));
    println!(
        "restart with MLflow down served the cached version after {:?}",
        started.elapsed()
    );
}

/// The model-level rows of the repository index (`reason` by model) and the state of
/// each version row (`"model/version"` -> state).
fn index(v: &Vigil) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (status, rows) = v.post_json("/v2/repository/index", &json!({}));
    assert_eq!(status, 200, "{rows}");
    let (mut models, mut versions) = (BTreeMap::new(), BTreeMap::new());
    for r in rows.as_array().unwrap() {
        let name = r["name"].as_str().unwrap().to_string();
        match r["version"].as_str() {
            Some(ver) => {
                versions.insert(format!("{name}/{ver}"), r["state"].as_str().unwrap().into());
            }
            None => {
                assert_eq!(r["state"], "UNAVAILABLE", "{r}");
                models.insert(name, r["reason"].as_str().unwrap().to_string());
            }
        }
    }
    (models, versions)
}

/// Waits for `done`, at most `bound`, and says how long it took.
fn within(bound: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    wait_for(bound.as_secs(), what, || done().then_some(()));
    let took = t0.elapsed();
    println!("{what}: {took:?}");
    took
}

/// Models that cannot be served (a scikit-learn model without an ONNX flavour; a model
/// with no `champion` alias yet) fail and back off on their own: a healthy model's alias
/// moves still take effect within about one poll interval, and the bad ones are reported
/// per model (log, repository index, `vigil_registry_model_up`). Before per-model backoff,
/// every failed pass doubled one shared delay (up to 60 s), and moves took 9 s and more.
#[test]
fn one_broken_model_never_delays_another() {
    let dir = TempDir::new("mlflow-isolation");
    let mlflow = Mlflow::start(dir.path());
    let logged = log_models(&mlflow, true);
    assert_eq!(logged["sklearn_only"], json!([1]));
    assert_eq!(logged["cnn"], json!([1]));
    mlflow.alias("iris", "champion", Some(1));
    mlflow.alias("sklearn_only", "champion", Some(1));
    // cnn is registered, but its champion alias is not set yet.

    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let a = follow(
        &mlflow.uri,
        "iris,sklearn_only,cnn",
        &dir.path().join("state"),
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let v = Vigil::start(&cache, Engine::Tract, &a);
    assert_eq!(served(&v), "1");

    // Each bad model is reported on its own: the index, a metric, one log line each.
    let (models, versions) = wait_for(20, "both bad models in the repository index", || {
        let (m, ver) = index(&v);
        (m.contains_key("sklearn_only") && m.contains_key("cnn")).then_some((m, ver))
    });
    assert!(
        models["sklearn_only"].contains("not an ONNX model"),
        "{models:?}"
    );
    assert!(models["sklearn_only"].contains("sklearn"), "{models:?}");
    assert!(models["cnn"].contains("no 'champion' alias"), "{models:?}");
    assert!(!models.contains_key("iris"), "{models:?}");
    assert_eq!(versions.get("iris/1").map(String::as_str), Some("READY"));
    let up = |m: &str| {
        v.metric(&format!(
            "vigil_registry_model_up{{model=\"{m}\",source=\"mlflow\"}}"
        ))
    };
    assert_eq!(up("iris"), Some(1.0));
    assert_eq!(up("sklearn_only"), Some(0.0));
    assert_eq!(up("cnn"), Some(0.0));
    // The registry answers: only the models are failing.
    assert_eq!(v.metric("vigil_registry_up{source=\"mlflow\"}"), Some(1.0));

    // Let the bad models fail a few times (each retry doubles a delay: with one shared
    // delay, it is several seconds by now).
    wait_for(30, "the bad models to fail three times each", || {
        (v.metric("vigil_registry_errors_total{source=\"mlflow\"}")? >= 6.0).then_some(())
    });

    // The healthy model's moves take effect within about one poll interval (0.5 s).
    let bound = Duration::from_secs(5);
    let mut took = Vec::new();
    mlflow.alias("iris", "champion", Some(2));
    took.push(within(bound, "champion move to 2", || {
        rollout(&v)["stable"] == json!(2)
    }));
    mlflow.alias("iris", "challenger", Some(1));
    took.push(within(bound, "challenger 1 as canary", || {
        rollout(&v)["canary"] == json!(1)
    }));
    mlflow.alias("iris", "challenger", None);
    took.push(within(bound, "challenger deletion", || {
        rollout(&v)["canary"] == Value::Null
    }));
    assert!((0..20).all(|_| served(&v) == "2"));

    // Setting the missing alias serves the model at once (its backoff does not hold
    // back a move of its own aliases): an ONNX model with its weights in external data.
    mlflow.alias("cnn", "champion", Some(1));
    took.push(within(bound, "the newly aliased cnn to serve", || {
        v.get("/v2/models/cnn/ready").0 == 200
    }));
    let case = reference("cnn_v1");
    let (status, body) = v.post_json("/v2/models/cnn/infer", &json!({"inputs": case["inputs"]}));
    assert_eq!(status, 200, "{body}");
    assert_output_close(&body["outputs"][0], &case["outputs"][0], 1e-4);
    let cached: Vec<String> = std::fs::read_dir(cache.join("cnn/1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached.iter().any(|f| f.ends_with(".data")),
        "cnn's external data file is cached beside model.onnx: {cached:?}"
    );
    wait_for(5, "cnn to leave the index's failures", || {
        (!index(&v).0.contains_key("cnn")).then_some(())
    });
    assert_eq!(up("cnn"), Some(1.0));
    // sklearn_only still fails, reported once in the log however often it is retried.
    assert!(index(&v).0["sklearn_only"].contains("not an ONNX model"));
    let refusals = v
        .logs_through(30, "sklearn_only refused in the log", |l| {
            l.contains("sklearn_only") && l.contains("not an ONNX model")
        })
        .iter()
        .filter(|l| l.contains("sklearn_only") && l.contains("not an ONNX model"))
        .count();
    assert_eq!(refusals, 1, "one log line per change of state");
    println!("alias moves took {took:?} with poll interval 0.5 s");
}

/// A cached `model.onnx` cut short (a crash before the data reached the disk, in a vigil
/// that did not fsync) is found by comparing the cache with the registry's listing at
/// the next start, downloaded again, and served correctly: with or without the size
/// manifest vigil now writes beside the files.
#[test]
fn a_truncated_cached_model_is_downloaded_again() {
    let dir = TempDir::new("mlflow-cache");
    let mlflow = Mlflow::start(dir.path());
    log_models(&mlflow, false);
    mlflow.alias("iris", "champion", Some(1));
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let a = follow(&mlflow.uri, "iris", &dir.path().join("state"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let case = reference("iris_v1");
    let answers_right = |v: &Vigil| {
        let (status, body) =
            v.post_json("/v2/models/iris/infer", &json!({"inputs": case["inputs"]}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_version"], "1");
        assert_outputs_close(&body["outputs"], case["outputs"].as_array().unwrap(), 1e-5);
    };
    let onnx = cache.join("iris/1/model.onnx");
    let size = {
        let v = Vigil::start(&cache, Engine::Tract, &a);
        answers_right(&v);
        std::fs::metadata(&onnx).unwrap().len()
        // Dropping the handle kills vigil (SIGKILL): a crash.
    };
    assert!(cache.join("iris/1/.vigil-artifacts.json").is_file());

    for with_manifest in [false, true] {
        if !with_manifest {
            // A cache written before the manifest existed: only the registry can tell.
            std::fs::remove_file(cache.join("iris/1/.vigil-artifacts.json")).unwrap();
        }
        let f = std::fs::OpenOptions::new().write(true).open(&onnx).unwrap();
        f.set_len(size / 2).unwrap();
        drop(f);
        let v = Vigil::start(&cache, Engine::Tract, &a);
        answers_right(&v);
        assert_eq!(
            std::fs::metadata(&onnx).unwrap().len(),
            size,
            "manifest {with_manifest}"
        );
        let logs = v.drain_logs().join("\n");
        assert!(
            logs.contains("version downloaded"),
            "manifest {with_manifest}: {logs}"
        );
        assert!(
            logs.contains("does not match the registry's listing"),
            "manifest {with_manifest}: {logs}"
        );
        assert!(
            logs.contains(&format!("model.onnx is {} bytes", size / 2)),
            "{logs}"
        );
    }
}

/// A proxy between vigil and MLflow. It passes everything through, except that while
/// `cut` is set, it answers a download of a `model.onnx` artifact with MLflow's headers
/// (the full `Content-Length`) and half the body, then holds the connection open (a
/// slow download) until `release` is set, and closes it (a download cut short).
struct CuttingProxy {
    uri: String,
    cut: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    /// Downloads cut: half sent, now held or closed.
    stalled: Arc<AtomicUsize>,
}

impl CuttingProxy {
    fn start(upstream: &str) -> CuttingProxy {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.trim_start_matches("http://").to_string();
        let (cut, release, stalled) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let p = CuttingProxy {
            uri: format!("http://127.0.0.1:{port}"),
            cut: cut.clone(),
            release: release.clone(),
            stalled: stalled.clone(),
        };
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let (upstream, cut, release, stalled) = (
                    upstream.clone(),
                    cut.clone(),
                    release.clone(),
                    stalled.clone(),
                );
                std::thread::spawn(move || {
                    // One request per connection: answered with `connection: close`.
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut head = request_line.clone();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if lower.starts_with("connection:") || lower.starts_with("host:") {
                            continue;
                        }
                        head.push_str(&line);
                    }
                    head.push_str(&format!("host: {upstream}\r\nconnection: close\r\n\r\n"));
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = up.write_all(head.as_bytes());
                    let _ = up.write_all(&body);
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer);
                    let path = request_line.split(' ').nth(1).unwrap_or("");
                    let path = path.split('?').next().unwrap_or("");
                    let onnx = path.contains("/mlflow-artifacts/artifacts/")
                        && path.ends_with("/model.onnx");
                    let split = answer.windows(4).position(|w| w == b"\r\n\r\n");
                    match split {
                        Some(end) if onnx && cut.load(Ordering::SeqCst) => {
                            let half = end + 4 + (answer.len() - end - 4) / 2;
                            let _ = client.write_all(&answer[..half]);
                            let _ = client.flush();
                            stalled.fetch_add(1, Ordering::SeqCst);
                            while !release.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            let _ = client.shutdown(std::net::Shutdown::Both);
                        }
                        _ => {
                            let _ = client.write_all(&answer);
                        }
                    }
                });
            }
        });
        p
    }
}

/// A version whose download is slow and then cut short is never loaded (the cache never
/// holds it under its name; the version served before keeps serving, its answers
/// right); the next full download serves it. Deleting the `champion` alias, and then
/// deleting the version it named, keeps the last stable version serving, though a newer
/// one is cached (the registry's failure is reported per model).
#[test]
fn a_half_downloaded_version_is_never_loaded_and_deletions_keep_the_last_serving() {
    let dir = TempDir::new("mlflow-partial");
    let mlflow = Mlflow::start(dir.path());
    log_models(&mlflow, false);
    mlflow.alias("iris", "champion", Some(1));
    let proxy = CuttingProxy::start(&mlflow.uri);
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let a = follow(&proxy.uri, "iris", &dir.path().join("state"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let v = Vigil::start(&cache, Engine::Tract, &a);
    let answers = |v: &Vigil, version: &str| {
        let case = reference(&format!("iris_v{version}"));
        let (status, body) =
            v.post_json("/v2/models/iris/infer", &json!({"inputs": case["inputs"]}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_version"], version, "{body}");
        assert_outputs_close(&body["outputs"], case["outputs"].as_array().unwrap(), 1e-5);
    };
    answers(&v, "1");
    let loads_failed = |v: &Vigil| {
        v.metric("vigil_model_load_total{model=\"iris\",outcome=\"failure\"}")
            .unwrap_or(0.0)
    };

    // champion moves to 2; its model.onnx arrives half, then nothing (a slow download).
    proxy.cut.store(true, Ordering::SeqCst);
    mlflow.alias("iris", "champion", Some(2));
    wait_for(60, "version 2's model.onnx half sent", || {
        (proxy.stalled.load(Ordering::SeqCst) >= 1).then_some(())
    });
    let in_iris = || -> Vec<String> {
        std::fs::read_dir(cache.join("iris"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    wait_for(30, "the download under way in a hidden directory", || {
        in_iris()
            .iter()
            .any(|n| n.starts_with(".download-2-"))
            .then_some(())
    });
    assert!(!cache.join("iris/2").exists(), "{:?}", in_iris());
    answers(&v, "1");
    assert_ne!(v.get("/v2/models/iris/versions/2/ready").0, 200);
    // The connection closes mid-body: the download fails and is thrown away.
    let up = |v: &Vigil| v.metric("vigil_registry_model_up{model=\"iris\",source=\"mlflow\"}");
    assert_eq!(up(&v), Some(1.0));
    proxy.release.store(true, Ordering::SeqCst);
    wait_for(60, "the cut download to end", || {
        (up(&v) == Some(0.0) || cache.join("iris/2").exists() || loads_failed(&v) > 0.0)
            .then_some(())
    });
    assert!(
        !cache.join("iris/2").exists(),
        "a download cut short was published: {:?}",
        in_iris()
    );
    assert_eq!(loads_failed(&v), 0.0, "a partial version was loaded");
    let (models, _) = index(&v);
    println!("cut download: {}", models["iris"]);
    assert!(models["iris"].contains("model.onnx"), "{models:?}");
    let leftovers: Vec<String> = in_iris().into_iter().filter(|n| n != "1").collect();
    assert!(
        leftovers.is_empty(),
        "partial download left behind: {leftovers:?}"
    );
    assert_eq!(loads_failed(&v), 0.0, "a partial version was loaded");
    answers(&v, "1");
    assert_eq!(rollout(&v)["stable"], json!(1));

    // The registry serves the whole file again: version 2 follows, answering right.
    proxy.cut.store(false, Ordering::SeqCst);
    wait_for(60, "champion 2 to become stable", || {
        (rollout(&v)["stable"] == json!(2)).then_some(())
    });
    answers(&v, "2");
    assert_eq!(loads_failed(&v), 0.0);
    wait_for(30, "iris followed again", || {
        (up(&v) == Some(1.0)).then_some(())
    });

    // champion back on 1: the cache now holds 1 and 2, and 1 is not the latest, so
    // keeping "the last one" cannot be mistaken for falling back to the newest cached.
    mlflow.alias("iris", "champion", Some(1));
    wait_for(30, "champion 1 stable again", || {
        (rollout(&v)["stable"] == json!(1)).then_some(())
    });
    assert!(cache.join("iris/2/model.onnx").is_file());

    // Deleting the champion alias: vigil reports it and keeps serving version 1.
    mlflow.alias("iris", "champion", None);
    wait_for(30, "the missing alias reported", || {
        (up(&v) == Some(0.0)).then_some(())
    });
    let (models, _) = index(&v);
    assert!(models["iris"].contains("no 'champion' alias"), "{models:?}");
    for _ in 0..10 {
        answers(&v, "1");
    }
    assert_eq!(v.get("/v2/health/ready").0, 200);
    assert_eq!(rollout(&v)["stable"], json!(1));

    // champion on 1 again, then version 1 deleted from MLflow (its alias goes with it):
    // version 1 keeps serving from the cache.
    mlflow.alias("iris", "champion", Some(1));
    wait_for(30, "iris followed again", || {
        (up(&v) == Some(1.0)).then_some(())
    });
    let r = mlflow
        .http
        .delete(format!(
            "{}/api/2.0/mlflow/model-versions/delete",
            mlflow.uri
        ))
        .json(&json!({"name": "iris", "version": "1"}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
    wait_for(30, "the deleted version reported", || {
        (up(&v) == Some(0.0)).then_some(())
    });
    let (models, _) = index(&v);
    println!("after deleting version 1: {}", models["iris"]);
    for _ in 0..10 {
        answers(&v, "1");
    }
    assert_eq!(v.get("/v2/health/ready").0, 200);
    assert_eq!(rollout(&v)["stable"], json!(1));
    assert_eq!(loads_failed(&v), 0.0);
    // The cache keeps it, so a restart (MLflow still without it) serves it too.
    assert!(cache.join("iris/1/model.onnx").is_file());
    drop(v);
    let v = Vigil::start(&cache, Engine::Tract, &a);
    answers(&v, "1");
    assert_eq!(rollout(&v)["stable"], json!(1));
}

impl Mlflow {
    /// A model's aliases as MLflow reports them.
    fn aliases(&self, model: &str) -> BTreeMap<String, String> {
        let r: Value = self
            .http
            .get(format!("{}/api/2.0/mlflow/registered-models/get", self.uri))
            .query(&[("name", model)])
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["registered_model"]["aliases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                (
                    a["alias"].as_str().unwrap().to_string(),
                    a["version"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// iris requests of 3 rows each from `rows`, from a thread, until the flag is set.
fn iris_traffic(
    v: &Vigil,
    rows: Vec<[f64; 4]>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (url, client) = (v.url("/v2/models/iris/infer"), v.client.clone());
    std::thread::spawn(move || {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let data: Vec<f32> = (0..3)
                .flat_map(|k| rows[(i + k * 5) % rows.len()].map(|x| x as f32))
                .collect();
            i += 1;
            let body = json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [3, 4], "data": data}]});
            let _ = client.post(&url).json(&body).send();
        }
    })
}

/// Runs the judge on the current champion and challenger under `rows` and returns its
/// decided analysis. With `frozen`, the registry hangs (SIGSTOP) from before the decision
/// until the decision has been seen pending for a while: the analysis must answer at once
/// meanwhile, and the write must land once the registry is back.
fn judged(
    v: &Vigil,
    stable: u64,
    canary: u64,
    rows: Vec<[f64; 4]>,
    frozen: Option<&Mlflow>,
) -> Value {
    let analysis = json!({"steps": [50, 100], "interval": "300ms", "min_requests": 15, "max_wait": "60s", "max_output_psi": 1.0});
    let r = v
        .client
        .put(v.url("/v2/models/iris/rollout"))
        .json(&json!({"stable": stable, "canary": canary, "analysis": analysis}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(m) = frozen {
        m.signal(libc::SIGSTOP);
        let quick = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let url = v.url("/v2/models/iris/rollout/analysis");
        let read = || -> Value {
            quick
                .get(&url)
                .send()
                .expect("the analysis answers while the registry hangs")
                .json()
                .unwrap()
        };
        let traffic = iris_traffic(v, rows.clone(), stop.clone());
        wait_for(
            90,
            "the judge's decision, pending on the hung registry",
            || {
                let a = read();
                (a["status"] != "running" && a["status"] != "none" && !a["pending"].is_null())
                    .then_some(())
            },
        );
        // Two retry periods of the writer: every read answers, the decision stays pending.
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            let a = read();
            assert!(
                !a["pending"].is_null(),
                "written while the registry hung: {a:#}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        traffic.join().unwrap();
        stop.store(false, Ordering::Relaxed);
        m.signal(libc::SIGCONT);
    }
    let traffic = iris_traffic(v, rows, stop.clone());
    let a = wait_for(90, "the judge's decision", || {
        let a = v.get("/v2/models/iris/rollout/analysis").1;
        (a["canary"] == json!(canary)
            && a["status"] != "running"
            && a["status"] != "none"
            && a["pending"].is_null())
        .then_some(a)
    });
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    a
}

#[test]
fn the_judge_writes_its_decisions_to_the_aliases() {
    let dir = TempDir::new("mlflow");
    let mlflow = Mlflow::start(dir.path());
    log_models(&mlflow, false);
    mlflow.alias("iris", "champion", Some(1));
    mlflow.alias("iris", "challenger", Some(2));
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let state = dir.path().join("state");
    let mut a = follow(&mlflow.uri, "iris", &state);
    a.push("--mlflow-write-aliases".into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let v = Vigil::start(&cache, Engine::Tract, &a);
    wait_for(30, "the challenger to become the canary", || {
        (rollout(&v)["canary"] == json!(2)).then_some(())
    });

    // On the training rows v2 answers like v1: promoted (decided while the registry hangs,
    // written once it is back), and the registry says so.
    let decided = judged(&v, 1, 2, iris_training_rows(), Some(&mlflow));
    assert_eq!(decided["status"], "promoted", "{decided:#}");
    let aliases = mlflow.aliases("iris");
    assert_eq!(
        aliases,
        BTreeMap::from([("champion".to_string(), "2".to_string())]),
        "champion moved, challenger deleted"
    );
    wait_for(30, "vigil to serve the new champion alone", || {
        let r = rollout(&v);
        (r["stable"] == json!(2) && r["canary"].is_null()).then_some(())
    });
    assert_eq!(served(&v), "2");

    // v1 as the challenger of v2, on rows where they disagree: rolled back, and the
    // challenger alias is gone while the champion stays.
    mlflow.alias("iris", "challenger", Some(1));
    wait_for(30, "v1 to become the canary", || {
        (rollout(&v)["canary"] == json!(1)).then_some(())
    });
    let decided = judged(&v, 2, 1, iris_disputed_rows(), None);
    assert_eq!(decided["status"], "rolled_back", "{decided:#}");
    assert_eq!(
        mlflow.aliases("iris"),
        BTreeMap::from([("champion".to_string(), "2".to_string())]),
    );
    wait_for(30, "the canary to be gone", || {
        rollout(&v)["canary"].is_null().then_some(())
    });
    assert_eq!(served(&v), "2")
}

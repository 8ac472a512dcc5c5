//! Versions, hot swap and canary rollouts against a real server and a real repository
//! directory that the test changes underneath it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{reference, root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};

fn model_file(name: &str) -> PathBuf {
    root().join("models").join(name)
}

/// iris v1 and v2 are trained differently: their answers tell them apart.
fn iris(version: u64) -> Vec<u8> {
    std::fs::read(model_file(&format!("iris/{version}/model.onnx"))).unwrap()
}

/// Publishes a version the safe way: write under a hidden name, rename into place.
fn publish_atomic(repo: &Path, model: &str, version: u64, bytes: &[u8]) {
    let tmp = repo.join(model).join(format!(".tmp-{version}"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("model.onnx"), bytes).unwrap();
    std::fs::rename(&tmp, repo.join(model).join(version.to_string())).unwrap();
}

/// The log filter that prints the reload loop's "waiting for the version's files to
/// settle" lines (debug), which [`publish_slowly`] waits on.
const SCAN_LOG: &str = "info,vigil::serving::reload=debug";

/// True for the reload loop's line saying that a scan found `version` still changing.
fn still_settling(line: &str, version: u64) -> bool {
    line.contains("waiting for the version's files to settle")
        && line
            .split_whitespace()
            .any(|w| w == format!("version={version}"))
}

/// Publishes a version by copying it slowly into its final directory, a chunk per scan:
/// after each chunk it waits until a scan has seen the copy unfinished (the reload
/// loop's debug line; `v` must run with [`SCAN_LOG`]) and writes the next one at once,
/// so every pair of consecutive scans sees the file change until the copy ends,
/// whatever the machine's load.
fn publish_slowly(v: &Vigil, repo: &Path, model: &str, version: u64, bytes: &[u8]) {
    use std::io::Write;
    let dir = repo.join(model).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::File::create(dir.join("model.onnx")).unwrap();
    let chunks: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(8)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        // Lines logged before this write say nothing about it.
        let _ = v.drain_logs();
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        if i + 1 < chunks.len() {
            v.wait_log(20, "a scan to see the unfinished copy", |l| {
                still_settling(l, version)
            });
        }
    }
}

fn index(v: &Vigil) -> Vec<Value> {
    let (status, body) = v.post_json("/v2/repository/index", &json!({}));
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

fn state_of(v: &Vigil, model: &str, version: u64) -> Option<(String, String)> {
    index(v)
        .into_iter()
        .find(|r| r["name"] == model && r["version"].as_str() == Some(version.to_string().as_str()))
        .map(|r| {
            (
                r["state"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
}

fn served_versions(v: &Vigil, model: &str) -> BTreeSet<u64> {
    index(v)
        .into_iter()
        .filter(|r| r["name"] == model && r["state"] == "READY")
        .filter_map(|r| r["version"].as_str().and_then(|s| s.parse().ok()))
        .collect()
}

fn wait_served(v: &Vigil, model: &str, want: &[u64]) {
    let want: BTreeSet<u64> = want.iter().copied().collect();
    wait_for(20, &format!("{model} to serve {want:?}"), || {
        (served_versions(v, model) == want).then_some(())
    });
}

fn infer_iris(v: &Vigil, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = v
        .client
        .post(v.url(path))
        .json(&json!({"inputs": reference("iris_v2")["inputs"]}));
    if let Some(k) = key {
        req = req.header("x-vigil-routing-key", k);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn iris_repo(versions: &[u64]) -> TempDir {
    let dir = TempDir::new("repo");
    for &v in versions {
        publish_atomic(dir.path(), "iris", v, &iris(if v % 2 == 1 { 1 } else { 2 }));
    }
    dir
}

#[test]
fn swap_under_load_fails_no_request() {
    let repo = iris_repo(&[1]);
    let v = Arc::new(Vigil::start_logging(
        repo.path(),
        Engine::Tract,
        &["--poll-interval", "0.1"],
        SCAN_LOG,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    // Versions whose files are valid at some point; corrupt ones never enter.
    let valid: Arc<Mutex<BTreeSet<u64>>> = Arc::new(Mutex::new(BTreeSet::from([1])));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (v, stop, valid) = (v.clone(), stop.clone(), valid.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeMap::<u64, usize>::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = infer_iris(&v, "/v2/models/iris/infer", None);
                    assert_eq!(status, 200, "request {n} failed during swaps: {body}");
                    let version: u64 = body["model_version"].as_str().unwrap().parse().unwrap();
                    assert!(
                        valid.lock().unwrap().contains(&version),
                        "answer from version {version}"
                    );
                    *seen.entry(version).or_default() += 1;
                    n += 1;
                }
                seen
            })
        })
        .collect();
    let repo_path = repo.path().to_path_buf();
    let mut latest = 1u64;
    let mut loads = 1u64;
    let load_count = |v: &Vigil| -> Option<u64> {
        let text = v.client.get(v.url("/metrics")).send().ok()?.text().ok()?;
        text.lines()
            .find(|l| l.starts_with(r#"vigil_model_load_total{model="iris",outcome="success"}"#))?
            .rsplit(' ')
            .next()?
            .parse::<u64>()
            .ok()
    };
    for round in 0..20u64 {
        let next = latest + 1;
        match round % 5 {
            // Add a new version by atomic rename.
            0 => {
                valid.lock().unwrap().insert(next);
                publish_atomic(&repo_path, "iris", next, &iris(1 + next % 2));
                wait_served(&v, "iris", &[next]);
                latest = next;
                loads += 1;
            }
            // Add a new version by a slow copy into place.
            1 => {
                valid.lock().unwrap().insert(next);
                publish_slowly(&v, &repo_path, "iris", next, &iris(1 + next % 2));
                wait_served(&v, "iris", &[next]);
                latest = next;
                loads += 1;
            }
            // Replace the served version's file in place (atomic file rename).
            2 => {
                let dir = repo_path.join("iris").join(latest.to_string());
                std::fs::write(dir.join(".model.onnx.tmp"), iris(1 + (latest + 1) % 2)).unwrap();
                std::fs::rename(dir.join(".model.onnx.tmp"), dir.join("model.onnx")).unwrap();
                loads += 1;
                wait_for(20, "the replaced version to reload", || {
                    (load_count(&v)? >= loads).then_some(())
                });
            }
            // A corrupt new version: reported, never served; the latest keeps serving.
            3 => {
                publish_atomic(&repo_path, "iris", next, b"\x08\x07garbage, not a model");
                wait_for(20, "the corrupt version to be reported", || {
                    state_of(&v, "iris", next).filter(|(s, _)| s == "UNAVAILABLE")
                });
                assert_eq!(served_versions(&v, "iris"), BTreeSet::from([latest]));
                std::fs::remove_dir_all(repo_path.join("iris").join(next.to_string())).unwrap();
            }
            // Remove the oldest version (never the one served).
            _ => {
                let oldest = std::fs::read_dir(repo_path.join("iris"))
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                    .filter(|&n| n != latest)
                    .min();
                if let Some(old) = oldest {
                    std::fs::remove_dir_all(repo_path.join("iris").join(old.to_string())).unwrap();
                    wait_for(10, "the removed version to leave the index", || {
                        state_of(&v, "iris", old).is_none().then_some(())
                    });
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = BTreeMap::<u64, usize>::new();
    for c in clients {
        for (version, n) in c.join().expect("a client saw a failed request") {
            *total.entry(version).or_default() += n;
        }
    }
    assert_eq!(
        load_count(&v),
        Some(loads),
        "no partial copy was ever loaded"
    );
    let answered: usize = total.values().sum();
    assert!(answered > 100, "only {answered} requests during the swaps");
    assert!(
        total.len() >= 5,
        "answers came from too few versions: {total:?}"
    );
    let text = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(r#"vigil_model_load_total{model="iris",outcome="failure"} 4"#),
        "{text}"
    );
}

#[test]
fn failed_version_is_reported_and_retried_when_its_files_change() {
    let repo = iris_repo(&[1]);
    let v = Vigil::start(repo.path(), Engine::Tract, &["--poll-interval", "0.1"]);
    publish_atomic(repo.path(), "iris", 2, b"truncated");
    let (_, reason) = wait_for(10, "version 2 failure", || {
        state_of(&v, "iris", 2).filter(|(s, _)| s == "UNAVAILABLE")
    });
    assert!(reason.contains("not a valid ONNX model"), "{reason}");
    assert_eq!(served_versions(&v, "iris"), BTreeSet::from([1]));
    let (status, body) = infer_iris(&v, "/v2/models/iris/infer", None);
    assert_eq!((status, body["model_version"].as_str()), (200, Some("1")));
    // Fixing the files makes vigil try again, and the fixed version goes live.
    let dir = repo.path().join("iris/2");
    std::fs::write(dir.join(".m"), iris(2)).unwrap();
    std::fs::rename(dir.join(".m"), dir.join("model.onnx")).unwrap();
    wait_served(&v, "iris", &[2]);
}

#[test]
fn version_policies_follow_config_changes() {
    let repo = iris_repo(&[1, 2, 3]);
    let v = Vigil::start(repo.path(), Engine::Tract, &["--poll-interval", "0.1"]);
    assert_eq!(served_versions(&v, "iris"), BTreeSet::from([3]));
    let cfg = repo.path().join("iris/config.toml");
    std::fs::write(&cfg, "[version_policy]\nlatest = 2\n").unwrap();
    wait_served(&v, "iris", &[2, 3]);
    std::fs::write(&cfg, "[version_policy]\nspecific = [1]\n").unwrap();
    wait_served(&v, "iris", &[1]);
    std::fs::write(&cfg, "[version_policy]\nall = true\n").unwrap();
    wait_served(&v, "iris", &[1, 2, 3]);
    // Pinned versions answer; unpinned requests go to the highest.
    for version in 1..=3u64 {
        let (status, body) = infer_iris(
            &v,
            &format!("/v2/models/iris/versions/{version}/infer"),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(body["model_version"], version.to_string());
    }
    assert_eq!(
        infer_iris(&v, "/v2/models/iris/infer", None).1["model_version"],
        "3"
    );
    // A broken config keeps the last good one serving, and says why.
    std::fs::write(&cfg, "[version_policy]\nlatest = 0\n").unwrap();
    let row = wait_for(10, "the config error in the index", || {
        index(&v).into_iter().find(|r| {
            r["name"] == "iris" && r.get("version").is_none() && r["state"] == "UNAVAILABLE"
        })
    });
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("latest must be at least 1"),
        "{row}"
    );
    assert_eq!(served_versions(&v, "iris"), BTreeSet::from([1, 2, 3]));
    // Removing a model's directory unloads it.
    std::fs::remove_dir_all(repo.path().join("iris")).unwrap();
    wait_for(10, "iris to be unloaded", || {
        (v.get("/v2/models/iris").0 == 404).then_some(())
    });
}

fn put_rollout(v: &Vigil, body: Value) -> (u16, Value) {
    let r = v
        .client
        .put(v.url("/v2/models/iris/rollout"))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

#[test]
fn canary_split_stickiness_promote_rollback_and_restart() {
    let repo = iris_repo(&[1, 2]);
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[version_policy]\nlatest = 2\n",
    )
    .unwrap();
    let state = TempDir::new("state");
    let state_arg = state.path().to_str().unwrap().to_string();
    let args = ["--poll-interval", "0", "--state-dir", state_arg.as_str()];
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    let (_, r) = v.get("/v2/models/iris/rollout");
    assert_eq!(r["stable"], 2);
    assert_eq!(r["canary"], Value::Null);

    // Bad requests are 400 and change nothing.
    for (body, want) in [
        (json!({"canary": 9, "weight": 10}), "not loaded"),
        (json!({"canary": 1, "weight": 101}), "0..=100"),
        (json!({"stable": 1, "canary": 1}), "cannot be the stable"),
        (json!({"canary": 1, "mode": "blue"}), "split"),
        (json!({"canary": 1, "colour": 3}), "unknown rollout field"),
    ] {
        let (status, got) = put_rollout(&v, body.clone());
        assert_eq!(status, 400, "{body}: {got}");
        assert!(
            got["error"].as_str().unwrap().contains(want),
            "{body}: {got}"
        );
    }
    assert_eq!(v.get("/v2/models/iris/rollout").1["canary"], Value::Null);

    // 10% canary on version 2, with 1 stable.
    let (status, got) = put_rollout(&v, json!({"stable": 1, "canary": 2, "weight": 10}));
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (
            got["stable"].clone(),
            got["canary"].clone(),
            got["weight"].clone()
        ),
        (json!(1), json!(2), json!(10))
    );
    let metrics = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains(r#"vigil_rollout_canary_weight{model="iris"} 10"#));
    assert!(metrics.contains(r#"vigil_model_loaded{model="iris",role="canary",version="2"} 1"#));
    let n = 5000;
    let canary = (0..n)
        .filter(|_| infer_iris(&v, "/v2/models/iris/infer", None).1["model_version"] == "2")
        .count();
    let share = canary as f64 * 100.0 / n as f64;
    assert!((share - 10.0).abs() <= 3.0, "canary share {share}%");
    // Sticky keys: the same key always lands on the same version.
    let mut keyed_canary = 0;
    for k in 0..200 {
        let key = format!("user-{k}");
        let first = infer_iris(&v, "/v2/models/iris/infer", Some(&key)).1["model_version"].clone();
        for _ in 0..3 {
            assert_eq!(
                infer_iris(&v, "/v2/models/iris/infer", Some(&key)).1["model_version"],
                first
            );
        }
        keyed_canary += usize::from(first == "2");
    }
    assert!(
        (5..=40).contains(&keyed_canary),
        "{keyed_canary} of 200 keys on the canary"
    );
    // A pinned request bypasses the split.
    for _ in 0..20 {
        assert_eq!(
            infer_iris(&v, "/v2/models/iris/versions/1/infer", None).1["model_version"],
            "1"
        );
    }

    // Promote: the canary becomes stable. It survives a restart.
    let r = v
        .client
        .post(v.url("/v2/models/iris/rollout/promote"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().unwrap();
    assert_eq!(
        (got["stable"].clone(), got["canary"].clone()),
        (json!(2), Value::Null)
    );
    // Roll a new canary (1) in, then back.
    assert_eq!(put_rollout(&v, json!({"canary": 1, "weight": 50})).0, 200);
    let r = v
        .client
        .post(v.url("/v2/models/iris/rollout/rollback"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().unwrap();
    assert_eq!(
        (got["stable"].clone(), got["canary"].clone()),
        (json!(2), Value::Null)
    );
    let r = v
        .client
        .post(v.url("/v2/models/iris/rollout/rollback"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "nothing left to roll back");
    assert_eq!(
        put_rollout(&v, json!({"stable": 1, "canary": 2, "weight": 30})).0,
        200
    );
    drop(v);
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    let (_, r) = v.get("/v2/models/iris/rollout");
    assert_eq!(
        (
            r["stable"].clone(),
            r["canary"].clone(),
            r["weight"].clone()
        ),
        (json!(1), json!(2), json!(30))
    );
}

#[test]
fn shadow_canary_never_changes_or_fails_the_answer() {
    let repo = iris_repo(&[1]);
    // Version 2 is a different model altogether (the MLP): as a shadow it fails on every
    // iris input, which the caller must never see.
    publish_atomic(
        repo.path(),
        "iris",
        2,
        &std::fs::read(model_file("mlp/1/model.onnx")).unwrap(),
    );
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[version_policy]\nall = true\n[rollout]\nstable = 1\ncanary = 2\nmode = \"shadow\"\n",
    )
    .unwrap();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--poll-interval", "0"]);
    // The stable's answers, every output, as onnxruntime computes them for v1.
    let want = reference("iris_v1");
    let want_outputs = want["outputs"].as_array().unwrap();
    for _ in 0..50 {
        let (status, body) =
            v.post_json("/v2/models/iris/infer", &json!({"inputs": want["inputs"]}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_version"], "1");
        common::assert_outputs_close(&body["outputs"], want_outputs, 1e-5);
    }
    // The shadow saw every request (and failed each, on its own account).
    let failures = wait_for(10, "shadow requests to be counted", || {
        let text = v.client.get(v.url("/metrics")).send().ok()?.text().ok()?;
        let line = text
            .lines()
            .find(|l| l.starts_with(r#"vigil_inference_requests_total{model="iris",outcome="bad_request",version="2"}"#))?
            .to_string();
        let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
        (n >= 45).then_some(n)
    });
    assert!(failures <= 50);
    let text = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(
            r#"vigil_inference_requests_total{model="iris",outcome="success",version="1"} 50"#
        ),
        "{text}"
    );

    // A working shadow: answers measured under its own version, never returned.
    let repo2 = iris_repo(&[1, 2]);
    std::fs::write(
        repo2.path().join("iris/config.toml"),
        "[version_policy]\nall = true\n[rollout]\nstable = 1\ncanary = 2\nmode = \"shadow\"\n",
    )
    .unwrap();
    let v = Vigil::start(repo2.path(), Engine::Tract, &["--poll-interval", "0"]);
    let want = reference("iris_v1");
    let iris1 = json!({"inputs": want["inputs"]});
    for _ in 0..30 {
        let (status, body) = v.post_json("/v2/models/iris/infer", &iris1);
        assert_eq!(status, 200);
        assert_eq!(body["model_version"], "1");
        common::assert_outputs_close(&body["outputs"], want["outputs"].as_array().unwrap(), 1e-5);
    }
    // Every copy either ran (a success under version 2) or found every shadow slot busy
    // and was counted as skipped: a fast client on a busy machine outruns a shadow on the
    // pool, and copies are bounded so that the caller never waits for one.
    let (ran, skipped) = wait_for(10, "every shadow copy run or counted as skipped", || {
        let ran = v.metric(
            r#"vigil_inference_requests_total{model="iris",outcome="success",version="2"}"#,
        )?;
        let skipped = v
            .metric(r#"vigil_shadow_skipped_total{model="iris"}"#)
            .unwrap_or(0.0);
        (ran + skipped == 30.0).then_some((ran, skipped))
    });
    assert!(ran >= 1.0, "{ran} ran, {skipped} skipped");
}

#[test]
fn admin_endpoints_need_the_token() {
    let repo = iris_repo(&[1, 2]);
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[version_policy]\nlatest = 2\n",
    )
    .unwrap();
    let v = Vigil::start(
        repo.path(),
        Engine::Tract,
        &["--admin-token", "s3cret", "--poll-interval", "0"],
    );
    let url = v.url("/v2/models/iris/rollout");
    let body = json!({"canary": 1, "weight": 5});
    let r = v.client.put(&url).json(&body).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = v
        .client
        .put(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = v
        .client
        .post(v.url("/v2/repository/models/iris/load"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = v
        .client
        .put(&url)
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Reading needs no token.
    assert_eq!(v.get("/v2/models/iris/rollout").0, 200);
}

fn repository_api_through_tritonclient(token: Option<&str>) {
    let repo = iris_repo(&[1, 2]);
    publish_atomic(
        repo.path(),
        "cnn",
        1,
        &std::fs::read(model_file("cnn/1/model.onnx")).unwrap(),
    );
    let mut args = vec![
        "--model-control",
        "explicit",
        "--load-model",
        "iris",
        "--poll-interval",
        "0",
    ];
    if let Some(t) = token {
        args.extend(["--admin-token", t]);
    }
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    let mut cmd = std::process::Command::new(common::python());
    cmd.arg(root().join("tests/python/repository_check.py"))
        .arg(&v.addr);
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("repository API checks passed"), "{stdout}");
}

#[test]
fn repository_api_with_tritonclient() {
    repository_api_through_tritonclient(None);
}

#[test]
fn repository_api_with_tritonclient_and_admin_token() {
    repository_api_through_tritonclient(Some("t0ken"));
}

/// The rollout of `model` as persisted under the state directory.
fn persisted_rollout(state: &Path, model: &str) -> Value {
    let text = std::fs::read_to_string(state.join("rollouts.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()[model].clone()
}

/// Checks that every run of consecutive answers holds floor or ceil of its share.
fn assert_every_run_exact(arms: &[bool], weight: u32, what: &str) {
    for len in 1..=arms.len() {
        for start in 0..=(arms.len() - len) {
            let got = arms[start..start + len].iter().filter(|&&c| c).count() as f64;
            let want = len as f64 * f64::from(weight) / 100.0;
            assert!(
                (got - want).abs() < 1.0 + 1e-9,
                "{what}: requests {start}..{}: {got} on the canary, want {want} ± 1 ({arms:?})",
                start + len
            );
        }
    }
}

#[test]
fn canary_share_is_exact_at_any_rate_across_scans_and_publishes() {
    // A second model in the same repository whose config the test keeps changing: each
    // change republishes the table while iris's split runs.
    let repo = iris_repo(&[1, 2]);
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[rollout]\nstable = 1\ncanary = 2\nweight = 10\n",
    )
    .unwrap();
    publish_atomic(repo.path(), "other", 1, &iris(1));
    // Scans every 50 ms (new duration syntax), requests every 120 ms: every request sees
    // several scans before it.
    let v = Vigil::start(repo.path(), Engine::Tract, &["--poll-interval", "50ms"]);
    let mut arms = Vec::new();
    for i in 0..50 {
        if i % 10 == 5 {
            // An unrelated publish: the other model's config changes.
            std::fs::write(
                repo.path().join("other/config.toml"),
                format!("[batching]\nmax_queue_delay_us = {}\n", 100 + i),
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(120));
        let (status, body) = infer_iris(&v, "/v2/models/iris/infer", None);
        assert_eq!(status, 200, "{body}");
        arms.push(body["model_version"] == "2");
    }
    assert_every_run_exact(&arms, 10, "thin traffic");
    // A burst: back to back, the same exactness.
    let burst: Vec<bool> = (0..200)
        .map(|_| infer_iris(&v, "/v2/models/iris/infer", None).1["model_version"] == "2")
        .collect();
    assert_every_run_exact(&burst, 10, "burst");
    // Thin and burst together are one run too.
    let all: Vec<bool> = arms.iter().chain(&burst).copied().collect();
    assert_every_run_exact(&all, 10, "thin then burst");
}

#[test]
fn partial_rollout_changes_change_only_what_they_name() {
    let repo = iris_repo(&[1, 2]);
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[version_policy]\nlatest = 3\n",
    )
    .unwrap();
    let state = TempDir::new("state");
    let state_arg = state.path().to_str().unwrap().to_string();
    let args = [
        "--poll-interval",
        "100ms",
        "--state-dir",
        state_arg.as_str(),
    ];
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    let get = |v: &Vigil| v.get("/v2/models/iris/rollout").1;
    assert_eq!(get(&v)["stable"], 2);
    let mut want = json!({
        "stable": null, "canary": null, "weight": 0, "mode": "split",
        "sticky_header": "x-vigil-routing-key"
    });
    let mut change = |v: &Vigil, body: Value| {
        let (status, got) = put_rollout(v, body.clone());
        assert_eq!(status, 200, "{body}: {got}");
        for (k, val) in body.as_object().unwrap() {
            want[k] = val.clone();
        }
        assert_eq!(
            persisted_rollout(state.path(), "iris"),
            want,
            "after {body}"
        );
    };
    // Naming only the sticky header leaves stable unset: a new version becomes stable.
    change(&v, json!({"sticky_header": "x-user"}));
    publish_atomic(repo.path(), "iris", 3, &iris(1));
    wait_for(20, "version 3 to become stable", || {
        (get(&v)["stable"] == 3).then_some(())
    });
    change(&v, json!({"weight": 20}));
    assert_eq!(get(&v)["stable"], 3);
    // A canary alone: the stable version stays unpinned, the highest other version.
    change(&v, json!({"canary": 3}));
    let r = get(&v);
    assert_eq!(
        (
            &r["stable"],
            &r["canary"],
            &r["weight"],
            &r["sticky_header"]
        ),
        (&json!(2), &json!(3), &json!(20), &json!("x-user")),
        "{r}"
    );
    change(&v, json!({"mode": "shadow"}));
    assert_eq!(get(&v)["mode"], "shadow");
    change(&v, json!({"mode": "split"}));
    change(&v, json!({"stable": 1}));
    assert_eq!(
        (get(&v)["stable"].clone(), get(&v)["canary"].clone()),
        (json!(1), json!(3))
    );
    change(&v, json!({"stable": null}));
    assert_eq!(get(&v)["stable"], 2);
    change(&v, json!({"canary": null}));
    assert_eq!(
        (get(&v)["stable"].clone(), get(&v)["canary"].clone()),
        (json!(3), Value::Null)
    );
    // A refused change changes nothing.
    assert_eq!(put_rollout(&v, json!({"weight": 20, "canary": 9})).0, 400);
    assert_eq!(persisted_rollout(state.path(), "iris"), want);
    // After a restart the same, and a newer version still becomes stable.
    drop(v);
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    assert_eq!(persisted_rollout(state.path(), "iris"), want);
    publish_atomic(repo.path(), "iris", 4, &iris(2));
    wait_for(20, "version 4 to become stable after the restart", || {
        (get(&v)["stable"] == 4).then_some(())
    });
    assert_eq!(get(&v)["sticky_header"], "x-user");
}

/// Requests refused as malformed (400) take no slot of the split: the canary's share of
/// the requests the two versions actually served stays exact, and the refusals are
/// counted against the stable version, not the canary.
#[test]
fn refused_requests_take_no_canary_slot() {
    let repo = iris_repo(&[1, 2]);
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[rollout]\nstable = 1\ncanary = 2\nweight = 50\n",
    )
    .unwrap();
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let good = reference("iris_v2")["inputs"].clone();
    let mut wrong_shape = good.clone();
    wrong_shape[0]["shape"] = json!([1, 3]);
    let mut wrong_type = good.clone();
    wrong_type[0]["datatype"] = json!("BOOL");
    let mut wrong_name = good.clone();
    wrong_name[0]["name"] = json!("not_an_input");
    let bad: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        serde_json::to_vec(&json!({"inputs": wrong_shape})).unwrap(),
        serde_json::to_vec(&json!({"inputs": wrong_type})).unwrap(),
        serde_json::to_vec(&json!({"inputs": wrong_name})).unwrap(),
        serde_json::to_vec(&json!({"inputs": good, "outputs": [{"name": "nope"}]})).unwrap(),
    ];
    let mut arms = Vec::new();
    for i in 0..60 {
        // One refused request between every two served ones: at weight 50, if refusals
        // took slots every served request would land on the same version.
        let body = bad[i % bad.len()].clone();
        let r = v
            .client
            .post(v.url("/v2/models/iris/infer"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "bad request {}", i % bad.len());
        let (status, answer) = infer_iris(&v, "/v2/models/iris/infer", None);
        assert_eq!(status, 200, "{answer}");
        arms.push(answer["model_version"] == "2");
    }
    assert_every_run_exact(&arms, 50, "served requests between refused ones");
    // Label order as the exposition writes it (sorted): model, outcome, version.
    let bad_on = |version: &str| {
        v.metric(&format!(
            "vigil_inference_requests_total{{model=\"iris\",outcome=\"bad_request\",version=\"{version}\"}}"
        ))
        .unwrap_or(0.0)
    };
    assert_eq!((bad_on("1"), bad_on("2")), (60.0, 0.0));
    assert_eq!(
        v.metric(
            "vigil_inference_requests_total{model=\"iris\",outcome=\"success\",version=\"2\"}"
        ),
        Some(30.0)
    );
}

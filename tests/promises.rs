//! Promises the documentation makes that no other test file holds: each test names the
//! page it checks and was seen to fail on a planted defect of its kind. A real server,
//! real HTTP; every wait is on something observable.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{iris_training_rows, root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};

/// A repository holding, for each `(name, source model dir, versions, config.toml)`, a
/// copy of the source's version 1 (with its reference.json, if any) as each version.
fn repo(models: &[(&str, &str, &[u64], &str)]) -> TempDir {
    let dir = TempDir::new("promises");
    for (name, source, versions, config) in models {
        for v in *versions {
            let to = dir.path().join(name).join(v.to_string());
            std::fs::create_dir_all(&to).unwrap();
            for f in ["model.onnx", "reference.json"] {
                let from = root().join(source).join("1").join(f);
                if from.exists() {
                    std::fs::copy(&from, to.join(f)).unwrap();
                }
            }
        }
        std::fs::write(dir.path().join(name).join("config.toml"), config).unwrap();
    }
    dir
}

fn metrics_text(v: &Vigil) -> String {
    v.client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// `body` for the `pick` model (tests/data/pick: `Y = [10, 20, 30, 40][I]`).
fn pick_body(indices: &[i64]) -> Value {
    json!({"inputs": [{"name": "I", "shape": [indices.len(), 1], "datatype": "INT64", "data": indices}]})
}

// ---------------------------------------------------------------------------------------
// docs/api.md: "engine panics are caught and answered 400".

/// tract panics on a Gather index out of range (tract-core's gather.rs indexes a slice):
/// the request is a 400 saying so, and the worker that caught it serves the next one.
#[test]
fn an_engine_panic_is_a_400_and_the_worker_serves_on() {
    let repo = repo(&[("pick", "tests/data/pick", &[1], "")]);
    let v = Vigil::start(repo.path(), Engine::Tract, &["--workers", "1"]);
    for bad in [7, -9, i64::MAX] {
        let (status, body) = v.post_json("/v2/models/pick/infer", &pick_body(&[1, bad]));
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("panicked"),
            "{body}"
        );
        // The one worker is still there.
        let (status, body) = v.post_json("/v2/models/pick/infer", &pick_body(&[3, 0]));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outputs"][0]["data"], json!([40.0, 10.0]));
    }
    v.wait_log(30, "tract's panic in gather, logged", |l| {
        l.contains("panicked at") && l.contains("gather")
    });
}

// ---------------------------------------------------------------------------------------
// docs/batching.md: "If a batched execution fails ... the requests are run again one by
// one, so a bad request fails alone."

/// Rounds of 8 concurrent requests, one of them with an index out of range, until the
/// log shows the bad one was batched with others (tract panicked twice on it: in the
/// batch and alone); in every round the 7 good ones get their own right answers.
#[test]
fn a_failed_batch_is_run_again_so_a_bad_request_fails_alone() {
    let repo = repo(&[(
        "pick",
        "tests/data/pick",
        &[1],
        "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 200000\n",
    )]);
    let v = Arc::new(Vigil::start(
        repo.path(),
        Engine::Tract,
        &["--workers", "1"],
    ));
    let clients = 8;
    let bad_at = 5;
    for round in 0..10i64 {
        // A bad index of its own per round, so its panics can be counted in the log.
        let bad = 1000 + round;
        let barrier = Arc::new(Barrier::new(clients));
        let answers: Vec<(u16, Value, Vec<i64>)> = (0..clients)
            .map(|c| {
                let (v, barrier) = (v.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let idx: Vec<i64> = if c == bad_at {
                        vec![0, bad]
                    } else {
                        vec![(c % 4) as i64, ((c + round as usize) % 4) as i64]
                    };
                    barrier.wait();
                    let (s, b) = v.post_json("/v2/models/pick/infer", &pick_body(&idx));
                    (s, b, idx)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        for (c, (status, body, idx)) in answers.iter().enumerate() {
            if c == bad_at {
                assert_eq!(*status, 400, "round {round}: {body}");
                continue;
            }
            assert_eq!(*status, 200, "round {round}, request {idx:?}: {body}");
            let want: Vec<f64> = idx.iter().map(|&i| 10.0 * (i + 1) as f64).collect();
            assert_eq!(body["outputs"][0]["data"], json!(want), "round {round}");
            assert_eq!(body["outputs"][0]["shape"], json!([2, 1]), "round {round}");
        }
        // The round's panics were logged before its answers, but reach the test through
        // the log reader's pipe: a request alone after the round panics on an index of
        // its own, and once that line is here every line of the round is too.
        let marker = 7000 + round;
        let (status, body) = v.post_json("/v2/models/pick/infer", &pick_body(&[0, marker]));
        assert_eq!(status, 400, "{body}");
        let lines = v.logs_through(30, "the marker request's panic", |l| {
            l.contains(&format!("the index is {marker}"))
        });
        let panics = lines
            .iter()
            .filter(|l| l.contains(&format!("the index is {bad}")))
            .count();
        if panics == 2 {
            println!("the bad request was batched in round {round}");
            return;
        }
        assert_eq!(panics, 1, "round {round}");
    }
    panic!("in 10 rounds the bad request was never batched with another");
}

// ---------------------------------------------------------------------------------------
// docs/security.md: "A request whose client disconnects while it waits in the queue is
// dropped before it runs."

#[test]
fn a_queued_request_whose_client_left_never_runs() {
    let repo = repo(&[("cnn", "models/cnn", &[1], "")]);
    let v = Vigil::start(repo.path(), Engine::Tract, &["--workers", "1"]);
    // A blocker of 2048 rows holds the one worker for hundreds of milliseconds while five
    // 64-row requests (a few ms each to parse, far too heavy to run inline) queue behind it.
    let send = |rows: usize| {
        let body = json!({"inputs": [{"name": "input", "shape": [rows, 1, 28, 28], "datatype": "FP32", "data": vec![0.25f32; rows * 784]}]}).to_string();
        let mut s = TcpStream::connect(&v.addr).unwrap();
        write!(
            s,
            "POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s
    };
    let executions = || {
        v.metric(r#"vigil_inference_batch_size_count{model="cnn",version="1"}"#)
            .unwrap_or(0.0)
    };
    let in_flight = || v.metric("vigil_inference_in_flight ");
    let mut conns = vec![send(2048)];
    wait_for(60, "the blocker to be in flight", || {
        (in_flight()? >= 1.0).then_some(())
    });
    conns.extend((0..5).map(|_| send(64)));
    wait_for(60, "the six requests to be in flight", || {
        (in_flight()? >= 6.0).then_some(())
    });
    let ran_before = executions();
    drop(conns);
    wait_for(60, "the queue to empty", || {
        let idle = in_flight()? == 0.0 && v.metric("vigil_inference_queue_depth ")? == 0.0;
        idle.then_some(())
    });
    // The one running when the clients left finishes; at most one more had been taken
    // by the worker between the two reads. The rest were dropped unrun.
    let ran = executions() - ran_before;
    println!("{ran_before} ran before the clients left, {ran} after");
    assert!(
        ran <= 2.0,
        "{ran} requests ran after their clients left (6 were in flight, {ran_before} done)"
    );
    // A later client is served.
    let one = json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": vec![0.25f32; 784]}]});
    assert_eq!(v.post_json("/v2/models/cnn/infer", &one).0, 200);
}

// ---------------------------------------------------------------------------------------
// docs/rollouts.md: shadow copies run "on a bounded number of slots (skipped when they
// are busy)".

#[test]
fn shadow_copies_are_skipped_while_their_slots_are_busy() {
    let repo = repo(&[(
        "cnn",
        "models/cnn",
        &[1, 2],
        "[version_policy]\nall = true\n[rollout]\nstable = 1\ncanary = 2\nmode = \"shadow\"\n",
    )]);
    // One worker: 4 shadow slots (4 per worker), held from the request's start to the
    // end of its copy, so 12 concurrent clients cannot all get one.
    let v = Arc::new(Vigil::start(
        repo.path(),
        Engine::Tract,
        &["--workers", "1"],
    ));
    let batch = 64;
    let body = Arc::new(
        json!({"inputs": [{"name": "input", "shape": [batch, 1, 28, 28], "datatype": "FP32", "data": vec![0.5f32; batch * 784]}]}),
    );
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (v, body) = (v.clone(), body.clone());
            std::thread::spawn(move || {
                for _ in 0..4 {
                    let (status, got) = v.post_json("/v2/models/cnn/infer", &body);
                    assert_eq!(status, 200, "{got}");
                    assert_eq!(got["model_version"], "1", "the stable version answers");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let count = |version: &str| {
        v.metric(&format!(
            "vigil_inference_requests_total{{model=\"cnn\",outcome=\"success\",version=\"{version}\"}}"
        ))
        .unwrap_or(0.0)
    };
    // Copies still running finish; then the canary's count stays put.
    let canary = wait_for(60, "the shadow copies to finish", || {
        if v.metric("vigil_inference_in_flight ")? != 0.0 {
            return None;
        }
        let c = count("2");
        (v.metric("vigil_inference_in_flight ")? == 0.0 && count("2") == c).then_some(c)
    });
    println!("48 requests, {canary} shadow copies");
    assert_eq!(count("1"), 48.0);
    assert!(canary >= 1.0, "the shadow got no copy at all");
    assert!(
        canary < 48.0,
        "every one of 48 concurrent requests got a shadow copy: no slot was ever busy"
    );
}

// ---------------------------------------------------------------------------------------
// docs/metrics.md: "A version's request series are removed when it stops being served."

#[test]
fn a_retired_version_leaves_no_series_behind() {
    let repo = repo(&[(
        "iris",
        "models/iris",
        &[1, 2],
        "[version_policy]\nall = true\n",
    )]);
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let body = json!({"inputs": common::reference("iris_v2")["inputs"]});
    for version in ["1", "2"] {
        let (status, got) =
            v.post_json(&format!("/v2/models/iris/versions/{version}/infer"), &body);
        assert_eq!(status, 200, "{got}");
    }
    let series_of = |text: &str, version: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                !l.starts_with('#')
                    && l.contains("model=\"iris\"")
                    && l.contains(&format!("version=\"{version}\""))
            })
            .map(String::from)
            .collect()
    };
    let before = series_of(&metrics_text(&v), "1");
    for family in [
        "vigil_inference_requests_total",
        "vigil_inference_request_duration_seconds",
        "vigil_drift_window_rows",
    ] {
        assert!(
            before.iter().any(|l| l.starts_with(family)),
            "{family} for version 1 before: {before:?}"
        );
    }
    // Gone from disk; a load re-scans the repository and retires it.
    std::fs::remove_dir_all(repo.path().join("iris/1")).unwrap();
    let (status, got) = v.post_json("/v2/repository/models/iris/load", &json!({}));
    assert_eq!(status, 200, "{got}");
    wait_for(20, "version 1 to be retired", || {
        (v.get("/v2/models/iris/rollout").1["versions"] == json!([2])).then_some(())
    });
    let text = metrics_text(&v);
    assert_eq!(series_of(&text, "1"), Vec::<String>::new());
    assert!(
        !series_of(&text, "2").is_empty(),
        "version 2 keeps its series"
    );
}

// ---------------------------------------------------------------------------------------
// docs/security.md: "vigil raises its open-files limit to fit" `--max-connections`.

fn soft_open_files(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_open_files_limit_is_raised_for_max_connections() {
    use std::os::unix::process::CommandExt;
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system call with a valid pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    let hard = hard.rlim_max;
    let max_connections: u64 = 3000;
    assert!(
        hard >= max_connections + 256,
        "the hard open-files limit ({hard}) is too low for this test"
    );
    let state = TempDir::new("nofile");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
    child
        .args(["serve", "--http-addr", "127.0.0.1:0", "--backend", "tract"])
        .arg("--repository")
        .arg(root().join("tests/data/pick"))
        .args(["--max-connections", &max_connections.to_string()])
        .arg("--state-dir")
        .arg(state.path())
        .env("VIGIL_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; runs in the child between fork and exec.
    unsafe {
        child.pre_exec(move || {
            let low = libc::rlimit {
                rlim_cur: 256,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &low) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = child.spawn().unwrap();
    let pid = child.id();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut seen = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains("listening on http://") {
            break;
        }
        seen.push(line);
        assert!(started.elapsed() < Duration::from_secs(60), "{seen:?}");
    }
    let soft = soft_open_files(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        soft >= max_connections + 256,
        "open-files limit {soft} with --max-connections {max_connections} (started at 256)"
    );
}

// ---------------------------------------------------------------------------------------
// docs/drift.md, `[drift]`: `consecutive_windows`, `method`, `max_window_sample`
// (reservoir-sampled beyond). Unseen categories: src/monitor/tests.rs
// (`categorical_drift_does_not_cry_wolf`: a few unseen rows do not flag, 10 % do).

/// `n` iris training rows, each feature shifted by `shift` of its standard deviation.
fn iris_rows(n: usize, shift: f64) -> Vec<f64> {
    let train = iris_training_rows();
    let std: Vec<f64> = (0..4)
        .map(|j| {
            let xs: Vec<f64> = train.iter().map(|r| r[j]).collect();
            vigil::monitor::stats::mean_std(&xs).1
        })
        .collect();
    // Spread evenly over the training rows (they are sorted by class).
    (0..n)
        .flat_map(|i| {
            let r = train[i * train.len() / n];
            (0..4).map(|j| r[j] + shift * std[j]).collect::<Vec<_>>()
        })
        .collect()
}

fn send_rows(v: &Vigil, model: &str, data: Vec<f64>) {
    let n = data.len() / 4;
    let body =
        json!({"inputs": [{"name": "X", "shape": [n, 4], "datatype": "FP32", "data": data}]});
    let (status, got) = v.post_json(&format!("/v2/models/{model}/infer"), &body);
    assert_eq!(status, 200, "{got}");
}

/// The report of `model`'s version 1 once it has scored `n` windows.
fn after_windows(v: &Vigil, model: &str, n: u64) -> Value {
    wait_for(60, &format!("{model}: {n} scored windows"), || {
        let (_, r) = v.get(&format!("/v2/models/{model}/drift"));
        let r = r["versions"][0].clone();
        (r["windows"].as_u64()? >= n).then_some(r)
    })
}

fn features(report: &Value) -> Vec<Value> {
    report["last_window"]["features"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn each_drift_setting_does_what_it_says() {
    let base = "[drift]\nwindow_rows = 200\ndrift_share = 0.25\n";
    let repo = repo(&[
        (
            "consecutive",
            "models/iris",
            &[1],
            &format!("{base}consecutive_windows = 2\n"),
        ),
        // PSI can never reach its threshold: a PSI-only monitor flags nothing, whatever
        // KS says.
        (
            "psi_only",
            "models/iris",
            &[1],
            &format!("{base}method = \"psi\"\npsi_threshold = 1000\n"),
        ),
        // Any PSI reaches it: a KS-only monitor still flags only what KS flags.
        (
            "ks_only",
            "models/iris",
            &[1],
            &format!("{base}method = \"ks\"\npsi_threshold = 1e-9\n"),
        ),
        // 1000 rows, 50 kept: the first 50 are the training data, the other 950 far off.
        // A reservoir holds mostly shifted values; the first 50 alone would not drift.
        (
            "sampled",
            "models/iris",
            &[1],
            "[drift]\nwindow_rows = 1000\ndrift_share = 0.25\nmethod = \"ks\"\nmax_window_sample = 50\n",
        ),
    ]);
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);

    // consecutive_windows = 2: one drifted window is not yet drifting; two are.
    send_rows(&v, "consecutive", iris_rows(200, 3.0));
    let r = after_windows(&v, "consecutive", 1);
    assert_eq!(r["last_window"]["drifted"], true, "{r}");
    assert_eq!(r["status"], "ok", "one drifted window of two: {r}");
    assert_eq!(r["windows_in_row"], 1);
    send_rows(&v, "consecutive", iris_rows(200, 3.0));
    let r = after_windows(&v, "consecutive", 2);
    assert_eq!(r["status"], "drifting", "{r}");

    // method = "psi": a 3-sigma shift KS rejects outright, yet no feature drifts.
    send_rows(&v, "psi_only", iris_rows(200, 3.0));
    let r = after_windows(&v, "psi_only", 1);
    for f in features(&r) {
        assert!(f["ks_pvalue"].as_f64().unwrap() < 1e-6, "{f}");
        assert_eq!(f["drifted"], false, "method = psi: {f}");
    }
    assert_eq!(r["last_window"]["drifted"], false);

    // method = "ks": the training rows themselves, PSI above its (tiny) threshold, KS
    // content: nothing drifts.
    send_rows(&v, "ks_only", iris_rows(200, 0.0));
    let r = after_windows(&v, "ks_only", 1);
    for f in features(&r) {
        assert!(f["psi"].as_f64().unwrap() >= 1e-9, "{f}");
        assert!(f["ks_pvalue"].as_f64().unwrap() > 0.05, "{f}");
        assert_eq!(f["drifted"], false, "method = ks: {f}");
    }

    // max_window_sample = 50 of 1000 rows: a reservoir sample, not the first 50.
    let mut data = iris_rows(50, 0.0);
    data.extend(iris_rows(950, 3.0));
    send_rows(&v, "sampled", data);
    let r = after_windows(&v, "sampled", 1);
    assert_eq!(r["last_window"]["rows"], 1000);
    for f in features(&r) {
        assert!(
            f["ks_pvalue"].as_f64().unwrap() < 1e-6,
            "KS saw the first 50 rows only? {f}"
        );
        assert_eq!(f["drifted"], true, "{f}");
    }
}

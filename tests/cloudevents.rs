//! The payload log's CloudEvents sink end to end: a real receiver gets every logged
//! request and response in KServe's inference-logger format (binary content mode); a dead
//! sink drops records and counts them while inference answers 200 and the payload files
//! keep everything.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};

/// One event as received: headers (lower-case names) and the JSON body.
#[derive(Clone, Debug)]
struct Got {
    headers: HashMap<String, String>,
    body: Value,
}

/// A CloudEvents receiver that answers 202 and keeps what it got.
fn receiver() -> (Arc<Mutex<Vec<Got>>>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                // Keep-alive: several requests per connection.
                loop {
                    let mut headers = HashMap::new();
                    let mut first = String::new();
                    if reader.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    keep.lock().unwrap().push(Got { headers, body });
                    let _ = reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (got, url)
}

fn repo(config: &str) -> TempDir {
    let dir = TempDir::new("cloudevents");
    let v = dir.path().join("iris/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(
        root().join("models/iris/1/model.onnx"),
        v.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(dir.path().join("iris/config.toml"), config).unwrap();
    dir
}

fn infer(v: &Vigil, id: &str, x: [f32; 4]) -> Value {
    let body = json!({"id": id, "inputs": [
        {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": x}]});
    let (status, got) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 200, "{got}");
    got
}

#[test]
fn a_receiver_gets_every_logged_request_and_response_in_kserve_format() {
    let (got, url) = receiver();
    let repo = repo(&format!(
        "[logging]\nsample = 1.0\ncloudevents_url = \"{url}\"\n"
    ));
    // No --payload-dir: the sink alone is a destination.
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let rows = [
        [5.1f32, 3.5, 1.4, 0.2],
        [6.7, 3.0, 5.2, 2.3],
        [5.9, 3.0, 4.2, 1.5],
    ];
    let answers: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, x)| infer(&v, &format!("ce-{i}"), *x))
        .collect();
    let events = wait_for(30, "six events", || {
        let g = got.lock().unwrap().clone();
        (g.len() >= 6).then_some(g)
    });
    assert_eq!(events.len(), 6);
    for (i, (x, answer)) in rows.iter().zip(&answers).enumerate() {
        let id = format!("ce-{i}");
        let of = |kind: &str| {
            events
                .iter()
                .find(|e| e.headers.get("ce-id") == Some(&id) && e.headers["ce-type"] == kind)
                .unwrap_or_else(|| panic!("no {kind} event for {id}: {events:?}"))
        };
        let req = of("org.kubeflow.serving.inference.request");
        let resp = of("org.kubeflow.serving.inference.response");
        for e in [req, resp] {
            let h = &e.headers;
            assert_eq!(h["ce-specversion"], "1.0");
            assert_eq!(h["ce-inferenceservicename"], "iris");
            assert_eq!(h["ce-source"], "/v2/models/iris/versions/1");
            assert_eq!(h["ce-endpoint"], "default");
            assert!(h["content-type"].starts_with("application/json"), "{h:?}");
            assert!(h["ce-time"].ends_with('Z'), "{h:?}");
        }
        // Binary mode: the body is the V2 request / response itself.
        assert_eq!(req.body["id"], id.as_str());
        assert_eq!(req.body["inputs"][0]["name"], "X");
        assert_eq!(req.body["inputs"][0]["datatype"], "FP32");
        let sent: Vec<f32> = req.body["inputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(sent, x.to_vec());
        assert_eq!(resp.body["model_name"], "iris");
        assert_eq!(resp.body["model_version"], "1");
        for out in answer["outputs"].as_array().unwrap() {
            let logged = resp.body["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == out["name"])
                .unwrap();
            assert_eq!(logged["shape"], out["shape"]);
            let (a, b) = (
                logged["data"].as_array().unwrap(),
                out["data"].as_array().unwrap(),
            );
            for (a, b) in a.iter().zip(b) {
                assert!(
                    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6,
                    "{a} {b}"
                );
            }
        }
    }
    assert_eq!(
        v.metric(r#"vigil_payload_dropped_total{model="iris",reason="no_dir"}"#),
        None
    );
}

#[test]
fn a_dead_sink_drops_and_counts_while_inference_answers_200_and_files_keep_everything() {
    // A port that refuses: bound, never listening, and kept for the whole test (a port
    // bound then closed could be taken by another test's listener meanwhile).
    let (_refusing, port) = common::Reserved::new();
    let url = format!("http://127.0.0.1:{port}/events");
    let repo = repo(&format!(
        "[logging]\nsample = 1.0\ncloudevents_url = \"{url}\"\n"
    ));
    let logs = TempDir::new("cloudevents-log");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(
        repo.path(),
        Engine::Tract,
        &["--payload-dir", &dir, "--payload-max-file-age", "1s"],
    );
    for i in 0..40 {
        infer(&v, &format!("dead-{i}"), [5.1, 3.5, 1.4, 0.2]);
    }
    let dropped = |reason: &str| {
        v.metric(&format!(
            "vigil_payload_dropped_total{{model=\"iris\",reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    wait_for(
        30,
        "every record to be counted as dropped by the sink",
        || (dropped("sink_error") + dropped("sink_full") == 40.0).then_some(()),
    );
    assert!(dropped("sink_error") >= 1.0);
    wait_for(30, "the files to hold all 40", || {
        (v.metric(r#"vigil_payload_records_total{model="iris"}"#) == Some(40.0)).then_some(())
    });
    assert_eq!(dropped("queue_full"), 0.0);
}

/// A sink URL that redirects (`303 See Other`, as a trailing-slash or http-to-https
/// redirect does): followed, the POST became a bodiless GET whose 202 counted the pair as
/// sent. Nothing is followed: every record is counted as dropped, and no GET is made.
#[test]
fn a_redirecting_sink_is_a_failing_sink() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let methods: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = methods.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut first = String::new();
                    if reader.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let method = first.split(' ').next().unwrap_or("").to_string();
                    let answer: &[u8] = if method == "POST" {
                        b"HTTP/1.1 303 See Other\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
                    };
                    seen.lock().unwrap().push(method);
                    let _ = reader.get_mut().write_all(answer);
                }
            });
        }
    });
    let repo = repo(&format!(
        "[logging]\nsample = 1.0\ncloudevents_url = \"{url}\"\n"
    ));
    let logs = TempDir::new("cloudevents-redirect");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--payload-dir", &dir]);
    for i in 0..10 {
        infer(&v, &format!("redirected-{i}"), [5.1, 3.5, 1.4, 0.2]);
    }
    let dropped = |reason: &str| {
        v.metric(&format!(
            "vigil_payload_dropped_total{{model=\"iris\",reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    wait_for(
        20,
        "every record to be counted as dropped by the sink",
        || (dropped("sink_error") + dropped("sink_full") == 10.0).then_some(()),
    );
    let methods = methods.lock().unwrap();
    assert!(!methods.is_empty());
    assert!(
        methods.iter().all(|m| m == "POST"),
        "the redirect was followed: {methods:?}"
    );
}

/// (events in flight now, most in flight at once, events answered)
type Seen = (usize, usize, usize);

/// A receiver that holds each event's answer until `target` events are in flight at once
/// (or 1 s passed), then answers 202; returns the most it saw in flight at once.
fn gated_receiver(target: usize) -> (Arc<Mutex<Seen>>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let state: Arc<(Mutex<Seen>, std::sync::Condvar)> = Arc::default();
    let seen = Arc::new(Mutex::new((0, 0, 0)));
    let (st, out) = (state.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (st, out) = (st.clone(), out.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut len = 0usize;
                    let mut first = true;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" && !first {
                            break;
                        }
                        first = false;
                        let l = line.to_ascii_lowercase();
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let (lock, cv) = &*st;
                    let mut s = lock.lock().unwrap();
                    s.0 += 1;
                    s.1 = s.1.max(s.0);
                    cv.notify_all();
                    let (mut s, _) = cv
                        .wait_timeout_while(s, std::time::Duration::from_secs(1), |s| s.1 < target)
                        .unwrap();
                    s.0 -= 1;
                    s.2 += 1;
                    *out.lock().unwrap() = *s;
                    drop(s);
                    let _ = reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (seen, url)
}

#[test]
fn the_sink_posts_up_to_its_concurrency_at_once_and_never_more() {
    let (seen, url) = gated_receiver(3);
    let repo = repo(&format!(
        "[logging]\nsample = 1.0\ncloudevents_url = \"{url}\"\n"
    ));
    let v = Vigil::start(
        repo.path(),
        Engine::Tract,
        &["--payload-sink-concurrency", "3"],
    );
    for i in 0..40 {
        infer(&v, &format!("c-{i}"), [5.1, 3.5, 1.4, 0.2]);
    }
    wait_for(30, "all 80 events", || {
        (seen.lock().unwrap().2 == 80).then_some(())
    });
    let (in_flight, most, _) = *seen.lock().unwrap();
    assert_eq!(in_flight, 0);
    assert_eq!(most, 3, "events in flight at once");
    assert_eq!(
        v.metric(r#"vigil_payload_dropped_total{model="iris",reason="sink_full"}"#),
        None
    );
    wait_for(10, "the sink's bytes back to 0", || {
        (v.metric("vigil_payload_sink_bytes") == Some(0.0)).then_some(())
    });
}

/// The names of the server's threads that start with `prefix` (from /proc).
fn threads(pid: i32, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Without the flag the sink POSTs up to 16 pairs at once (measured to deliver more than
/// 4 at a lower CPU cost per pair: benches/RESULTS.md), from one thread of its own: the
/// queue feeds the runtime that sends, with no second thread per pair.
#[test]
fn the_sink_defaults_to_16_at_once_from_one_thread() {
    let (seen, url) = gated_receiver(16);
    let repo = repo(&format!(
        "[logging]\nsample = 1.0\ncloudevents_url = \"{url}\"\n"
    ));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    for i in 0..40 {
        infer(&v, &format!("d-{i}"), [5.1, 3.5, 1.4, 0.2]);
    }
    wait_for(30, "all 80 events", || {
        (seen.lock().unwrap().2 == 80).then_some(())
    });
    let (in_flight, most, _) = *seen.lock().unwrap();
    assert_eq!(in_flight, 0);
    assert_eq!(most, 16, "events in flight at once");
    assert_eq!(threads(v.pid(), "vigil-ce"), ["vigil-ce-sink"]);
    wait_for(10, "the sink's bytes back to 0", || {
        (v.metric("vigil_payload_sink_bytes") == Some(0.0)).then_some(())
    });
}

#[test]
fn a_bad_sink_concurrency_is_refused_at_start() {
    for bad in ["0", "257", "-1", "lots", "99999999999999999999999"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "serve",
                &format!("--payload-sink-concurrency={bad}"),
                "--repository",
            ])
            .arg(root().join("models"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("--payload-sink-concurrency"), "{bad}: {text}");
        if bad == "0" || bad == "257" {
            assert!(text.contains("between 1 and 256"), "{bad}: {text}");
        }
    }
}

fn rss_anon_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_sink_that_never_answers_holds_bounded_memory_while_inference_answers_200() {
    // Accepts, reads, never answers (each POST runs into its timeout).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = vec![0; 1 << 16];
                while s.read(&mut buf).unwrap_or(0) > 0 {}
            });
        }
    });
    let repo = repo(&format!(
        "[logging]\nsample = 1.0\ncloudevents_url = \"{url}\"\n"
    ));
    let cap = 4 << 20;
    let v = Vigil::start(
        repo.path(),
        Engine::Tract,
        &["--payload-queue-bytes", &cap.to_string()],
    );
    // 2048 rows a request: a pair of events is some 150 KB of JSON.
    let rows = 2048;
    let data: Vec<f32> = (0..rows * 4).map(|i| (i % 70) as f32 / 10.0).collect();
    let body = json!({"id": "big", "inputs": [
        {"name": "X", "shape": [rows, 4], "datatype": "FP32", "data": data}]});
    let (status, _) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 200);
    let before = rss_anon_kb(v.pid());
    let mut most = 0.0f64;
    for i in 0..600 {
        let mut b = body.clone();
        b["id"] = json!(format!("big-{i}"));
        let (status, got) = v.post_json("/v2/models/iris/infer", &b);
        assert_eq!(status, 200, "{got}");
        if i % 50 == 0 {
            most = most.max(v.metric("vigil_payload_sink_bytes").unwrap_or(f64::NAN));
        }
    }
    let after = rss_anon_kb(v.pid());
    most = most.max(v.metric("vigil_payload_sink_bytes").unwrap_or(f64::NAN));
    // At most the cap, plus one pair let in whole.
    assert!(most <= (cap + (1 << 20)) as f64, "sink bytes {most}");
    let dropped = v
        .metric(r#"vigil_payload_dropped_total{model="iris",reason="sink_full"}"#)
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "the cap drops records");
    // 600 pairs are about 90 MB; held, they would show here.
    assert!(
        after < before + 48 * 1024,
        "RssAnon {before} -> {after} kB after 600 records to a silent sink"
    );
    eprintln!("RssAnon {before} -> {after} kB, sink bytes at most {most}, sink_full {dropped}");
}

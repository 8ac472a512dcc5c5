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

//! Live quality as a retrain trigger, end to end: a real server, real requests, real
//! labels, and a real webhook receiver. A full window below `[retrain] min_quality` creates
//! one `vigil.quality.degraded` event (the cooldown holds the next crossing); a bad
//! threshold key is a clear config error for its model while the others serve.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};

/// A retrain hook that answers 200 and keeps every body it was sent.
#[derive(Clone, Default)]
struct Hook {
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    fn start() -> (Hook, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hook = Hook::default();
        let me = hook.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.to_ascii_lowercase();
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                if let Ok(v) = serde_json::from_slice(&body) {
                    me.bodies.lock().unwrap().push(v);
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        (hook, url)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

fn repo(models: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("quality");
    for (name, config) in models {
        let v = dir.path().join(name).join("1");
        std::fs::create_dir_all(&v).unwrap();
        std::fs::copy(
            root().join("models/iris/1/model.onnx"),
            v.join("model.onnx"),
        )
        .unwrap();
        std::fs::write(dir.path().join(name).join("config.toml"), config).unwrap();
    }
    dir
}

/// Serves `n` one-row requests with ids `{tag}-{i}`; returns (id, predicted label, row).
fn serve(v: &Vigil, tag: &str, n: usize) -> Vec<(String, i64, [f64; 4])> {
    let rows = common::iris_training_rows();
    (0..n)
        .map(|i| {
            let x = rows[(i * 7) % rows.len()];
            let id = format!("{tag}-{i}");
            let body = json!({"id": id, "inputs": [
                {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": x}]});
            let (status, got) = v.post_json("/v2/models/iris/infer", &body);
            assert_eq!(status, 200, "{got}");
            let label = got["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"] == "label")
                .unwrap()["data"][0]
                .as_i64()
                .unwrap();
            (id, label, x)
        })
        .collect()
}

/// Labels each served request: right when `right(i)`, else another class.
fn label(v: &Vigil, served: &[(String, i64, [f64; 4])], right: impl Fn(usize) -> bool) {
    for chunk in served.chunks(10).enumerate() {
        let (c, items) = chunk;
        let body: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(j, (id, pred, _))| {
                let y = if right(c * 10 + j) {
                    *pred
                } else {
                    (pred + 1) % 3
                };
                json!({"id": id, "outputs": [{"name": "label", "data": [y]}]})
            })
            .collect();
        let (status, got) = v.post_json("/v2/models/iris/feedback", &Value::from(body));
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["joined"], items.len(), "{got}");
    }
}

fn quality_events(hook: &Hook) -> Vec<Value> {
    hook.bodies()
        .into_iter()
        .filter(|b| b["type"] == "vigil.quality.degraded")
        .collect()
}

#[test]
fn a_quality_drop_fires_one_degraded_event_and_the_cooldown_holds_the_next() {
    let (hook, url) = Hook::start();
    let config = format!(
        "[logging]\nfeedback_window = \"10m\"\nquality_window = 50\n\n\
         [retrain]\nurl = \"{url}\"\ncooldown = \"1h\"\nmin_quality = {{ accuracy = 0.9 }}\n"
    );
    let repo = repo(&[("iris", &config)]);
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);

    // A full window of right labels: no event.
    let good = serve(&v, "good", 50);
    label(&v, &good, |_| true);
    assert_eq!(
        v.metric("vigil_model_quality{metric=\"accuracy\",model=\"iris\",version=\"1\"}"),
        Some(1.0)
    );
    // Half wrong from here: the window crosses 0.9 once and stays below.
    let bad = serve(&v, "bad", 100);
    label(&v, &bad, |i| i % 2 == 0);
    let acc = v
        .metric("vigil_model_quality{metric=\"accuracy\",model=\"iris\",version=\"1\"}")
        .unwrap();
    assert!((acc - 0.5).abs() < 1e-9, "{acc}");
    let events = wait_for(30, "the quality event to be delivered", || {
        let e = quality_events(&hook);
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    let data = &ev["data"];
    assert_eq!(data["model"], "iris");
    assert_eq!(data["model_version"], "1");
    assert!(data["event_id"].as_str().unwrap().starts_with("evt_"));
    let breach = &data["quality"]["breaches"][0];
    assert_eq!(breach["metric"], "accuracy");
    assert_eq!(breach["bound"], "min");
    assert_eq!(breach["threshold"], 0.9);
    assert!(breach["value"].as_f64().unwrap() < 0.9, "{breach}");
    assert_eq!(data["quality"]["window_rows"], 50);
    assert_eq!(
        v.metric(r#"vigil_retrain_events_total{model="iris",reason="quality"}"#),
        Some(1.0)
    );

    // Back above, then below again within the cooldown: the hook is told nothing new.
    let good = serve(&v, "good2", 50);
    label(&v, &good, |_| true);
    let bad = serve(&v, "bad2", 50);
    v.drain_logs();
    label(&v, &bad, |_| false);
    let mut logs = Vec::new();
    wait_for(30, "the second crossing to meet the cooldown", || {
        logs.extend(v.drain_logs());
        logs.iter()
            .any(|l| l.contains("quality degraded during the retrain cooldown"))
            .then_some(())
    });
    assert_eq!(quality_events(&hook).len(), 1);
    assert_eq!(
        v.metric(r#"vigil_retrain_events_total{model="iris",reason="quality"}"#),
        Some(1.0)
    );
}

#[test]
fn a_bad_quality_threshold_is_a_config_error_of_its_model_only() {
    for (config, says) in [
        (
            "[retrain]\nmin_quality = { accuarcy = 0.9 }\n",
            "retrain.min_quality.accuarcy: not a quality metric",
        ),
        (
            "[retrain]\nmin_quality = { rmse = 0.9 }\n",
            "set it under retrain.max_error",
        ),
        (
            "[retrain]\nmax_error = { mae = -1 }\n",
            "retrain.max_error.mae must be a number of at least 0",
        ),
        (
            "[retrain]\nmax_error = { expected_accuracy = 0.9 }\n",
            "set it under retrain.min_quality",
        ),
        (
            "[retrain]\nmin_quality = { expected_accuracy = 85 }\n",
            "retrain.min_quality.expected_accuracy must be between 0 and 1",
        ),
    ] {
        let repo = repo(&[("iris", ""), ("broken", config)]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["check", "--backend", "tract", "--repository"])
            .arg(repo.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(says), "{says}: {text}");
        // Served: the healthy model answers, the broken one is refused with the reason.
        let v = Vigil::start(repo.path(), Engine::Tract, &[]);
        let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
            "data": [5.1, 3.5, 1.4, 0.2]}]});
        assert_eq!(v.post_json("/v2/models/iris/infer", &body).0, 200);
        let (status, _) = v.post_json("/v2/models/broken/infer", &body);
        assert_ne!(status, 200);
        let (_, index) = v.post_json("/v2/repository/index", &json!({}));
        let listed = index.to_string();
        assert!(listed.contains(says), "{says}: {listed}");
    }
}

/// The JSON lines of a gzipped payload-log file.
fn gz_lines(path: &std::path::Path) -> Vec<Value> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_quality_event_points_at_the_files_that_hold_its_requests_and_labels() {
    let (hook, url) = Hook::start();
    let config = format!(
        "[logging]\nsample = 1.0\nfeedback_window = \"10m\"\nquality_window = 50\n\n\
         [retrain]\nurl = \"{url}\"\ncooldown = \"1h\"\nmin_quality = {{ accuracy = 0.9 }}\n"
    );
    let repo = repo(&[("iris", &config)]);
    let logs = TempDir::new("quality-log");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--payload-dir", &dir]);
    let good = serve(&v, "good", 50);
    label(&v, &good, |_| true);
    let bad = serve(&v, "bad", 50);
    // Every other label wrong: the second call of ten (20 bad labels, 10 wrong: 0.8)
    // trips; the window is then good[20..50] and bad[0..20].
    label(&v, &bad, |i| i % 2 == 0);
    let ev = wait_for(30, "the quality event", || {
        quality_events(&hook).into_iter().next()
    });
    let data = &ev["data"]["data"];
    assert_eq!(data["payload_dir"], dir.as_str(), "{ev}");
    assert_eq!(data["labels_joined"], 70, "{data}");
    let (from, to) = (data["from"].as_str().unwrap(), data["to"].as_str().unwrap());
    assert!(from <= to, "{data}");
    let window: Vec<&(String, i64, [f64; 4])> = good[20..].iter().chain(&bad[..20]).collect();

    // The request files exist and hold every request of the window, in its range, with
    // its exact input and the prediction it got.
    let requests = data["requests"].as_array().unwrap();
    assert!(!requests.is_empty(), "{data}");
    let mut logged = std::collections::HashMap::new();
    for f in requests {
        let f = f.as_str().unwrap();
        assert!(f.starts_with("iris/") && f.ends_with(".jsonl.gz"), "{f}");
        for r in gz_lines(&logs.path().join(f)) {
            logged.insert(r["id"].as_str().unwrap().to_string(), r);
        }
    }
    for (id, pred, x) in &window {
        let r = logged
            .get(id)
            .unwrap_or_else(|| panic!("request {id} is not in {requests:?}"));
        let t = r["time"].as_str().unwrap();
        assert!(from <= t && t <= to, "{id} at {t} outside [{from}, {to}]");
        // Written as the shortest decimal that reads back to the same f32.
        let sent: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let got: Vec<f32> = r["inputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, sent, "{id}");
        let label = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap();
        assert_eq!(label["data"][0], *pred, "{id}");
    }
    // The label files hold the truth of every labelled request of the window.
    let mut truths = std::collections::HashMap::new();
    for f in data["labels"].as_array().unwrap() {
        let f = f.as_str().unwrap();
        assert!(f.starts_with("iris/labels/"), "{f}");
        for l in gz_lines(&logs.path().join(f)) {
            truths.insert(l["id"].as_str().unwrap().to_string(), l);
        }
    }
    for (i, (id, pred, _)) in window.iter().enumerate() {
        let l = truths
            .get(id)
            .unwrap_or_else(|| panic!("no label of {id} in {:?}", data["labels"]));
        assert_eq!(l["prediction"][0].as_f64().unwrap() as i64, *pred);
        let right = i < 30 || (i - 30) % 2 == 0;
        let want = if right { *pred } else { (pred + 1) % 3 };
        assert_eq!(l["truth"][0].as_f64().unwrap() as i64, want, "{id}");
        assert_eq!(l["model_version"], "1");
    }
}

#[test]
fn a_manual_retrain_event_points_at_what_the_payload_log_holds() {
    let (hook, url) = Hook::start();
    let config = format!("[logging]\nsample = 1.0\n\n[retrain]\nurl = \"{url}\"\n");
    let repo = repo(&[("iris", &config)]);
    let logs = TempDir::new("quality-log");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--payload-dir", &dir]);
    let served = serve(&v, "m", 10);
    let (status, body) = v.post_json("/v2/models/iris/retrain", &json!({"reason": "weekly"}));
    assert_eq!(status, 202, "{body}");
    let ev = wait_for(30, "the manual event", || {
        hook.bodies()
            .into_iter()
            .find(|b| b["type"] == "vigil.retrain.requested")
    });
    let data = &ev["data"]["data"];
    let mut ids = Vec::new();
    for f in data["requests"].as_array().unwrap() {
        for r in gz_lines(&logs.path().join(f.as_str().unwrap())) {
            ids.push(r["id"].as_str().unwrap().to_string());
        }
    }
    for (id, _, _) in &served {
        assert!(ids.contains(id), "{id} not in {data}");
    }
    assert_eq!(
        data["labels_joined"],
        Value::Null,
        "no feedback kept: {data}"
    );
}

/// Serves `rows` (ids `{tag}-{i}`) and returns (id, label, probabilities) of each.
fn serve_probs(v: &Vigil, tag: &str, rows: &[[f64; 4]]) -> Vec<(String, i64, Vec<f64>)> {
    rows.iter()
        .enumerate()
        .map(|(i, x)| {
            let id = format!("{tag}-{i}");
            let body = json!({"id": id, "inputs": [
                {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": x}]});
            let (status, got) = v.post_json("/v2/models/iris/infer", &body);
            assert_eq!(status, 200, "{got}");
            let outs = got["outputs"].as_array().unwrap();
            let label = outs.iter().find(|o| o["name"] == "label").unwrap()["data"][0]
                .as_i64()
                .unwrap();
            let probs: Vec<f64> = outs
                .iter()
                .find(|o| o["shape"] == json!([1, 3]))
                .expect("a probability output")["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect();
            (id, label, probs)
        })
        .collect()
}

/// Labels drawn from the model's own probabilities (CBPE's premise: only the inputs
/// moved); returns the measured accuracy of these labels.
fn label_from_probs(
    v: &Vigil,
    rng: &mut vigil::rng::Rng,
    served: &[(String, i64, Vec<f64>)],
) -> f64 {
    let mut right = 0;
    for chunk in served.chunks(50) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|(id, pred, p)| {
                let u = rng.below(1_000_000) as f64 / 1e6;
                let mut acc = 0.0;
                let y = p
                    .iter()
                    .position(|&q| {
                        acc += q;
                        u < acc
                    })
                    .unwrap_or(p.len() - 1) as i64;
                right += usize::from(y == *pred);
                json!({"id": id, "outputs": [{"name": "label", "data": [y]}]})
            })
            .collect();
        let (status, got) = v.post_json("/v2/models/iris/feedback", &Value::from(body));
        assert_eq!(status, 200, "{got}");
    }
    right as f64 / served.len() as f64
}

#[test]
fn expected_accuracy_without_labels_drops_with_the_measured_one_on_a_shifted_stream() {
    let repo = repo(&[(
        "iris",
        "[logging]\nfeedback_window = \"10m\"\nquality_window = 300\n",
    )]);
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let mut rng = vigil::rng::Rng::new(5);
    let train = common::iris_training_rows();
    let expected = || {
        v.metric("vigil_model_quality{metric=\"expected_accuracy\",model=\"iris\",version=\"1\"}")
    };
    // The training distribution: before any label, the estimate is the raw confidence.
    let rows: Vec<[f64; 4]> = (0..300)
        .map(|_| train[rng.below(train.len() as u64) as usize])
        .collect();
    let a = serve_probs(&v, "a", &rows);
    let (_, q) = v.get("/v2/models/iris/quality");
    assert_eq!(
        q["expected"][0]["calibrated_on"], 0,
        "uncalibrated before labels: {q}"
    );
    let acc_a = label_from_probs(&v, &mut rng, &a);
    let (_, q) = v.get("/v2/models/iris/quality");
    assert_eq!(q["expected"][0]["calibrated_on"], 300, "{q}");
    let exp_a = expected().expect("expected_accuracy");
    let measured_a = v
        .metric("vigil_model_quality{metric=\"accuracy\",model=\"iris\",version=\"1\"}")
        .unwrap();
    assert!((measured_a - acc_a).abs() < 1e-9);
    assert!(
        (exp_a - acc_a).abs() < 0.08,
        "expected {exp_a}, measured {acc_a}"
    );

    // Shifted: midpoints of a row predicted versicolor and one predicted virginica, on
    // their class boundary. The estimate drops before any of these rows is labelled...
    let of = |class: i64| -> Vec<[f64; 4]> {
        a.iter()
            .zip(&rows)
            .filter(|((_, l, _), _)| *l == class)
            .map(|(_, r)| *r)
            .collect()
    };
    let (ones, twos) = (of(1), of(2));
    let rows: Vec<[f64; 4]> = (0..300)
        .map(|_| {
            let r = ones[rng.below(ones.len() as u64) as usize];
            let s = twos[rng.below(twos.len() as u64) as usize];
            [0, 1, 2, 3].map(|j| (r[j] + s[j]) / 2.0)
        })
        .collect();
    let b = serve_probs(&v, "b", &rows);
    let exp_b = expected().unwrap();
    assert!(
        exp_b < exp_a - 0.05,
        "before labels: expected {exp_b} vs {exp_a}"
    );
    // ...and the labels, when they come, measure about what it said.
    let acc_b = label_from_probs(&v, &mut rng, &b);
    assert!(acc_b < acc_a - 0.05, "measured {acc_b} vs {acc_a}");
    assert!(
        (exp_b - acc_b).abs() < 0.1,
        "expected {exp_b}, measured {acc_b}"
    );
    eprintln!("expected/measured accuracy: {exp_a:.3}/{acc_a:.3}, shifted {exp_b:.3}/{acc_b:.3}");
}

#[test]
fn a_drop_of_the_expected_accuracy_fires_one_event_before_any_label() {
    let (hook, url) = Hook::start();
    let config = format!(
        "[logging]\nsample = 1.0\nfeedback_window = \"10m\"\nquality_window = 300\n\n\
         [retrain]\nurl = \"{url}\"\ncooldown = \"1h\"\n\
         min_quality = {{ accuracy = 0.8, expected_accuracy = 0.8 }}\n"
    );
    let repo = repo(&[("iris", &config)]);
    let logs = TempDir::new("quality-log");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--payload-dir", &dir]);
    let mut rng = vigil::rng::Rng::new(7);
    let train = common::iris_training_rows();
    // The training distribution (mean top probability about 0.9): within the floor.
    let rows: Vec<[f64; 4]> = (0..300)
        .map(|_| train[rng.below(train.len() as u64) as usize])
        .collect();
    let a = serve_probs(&v, "a", &rows);
    // Shifted onto the versicolor/virginica boundary (about 0.68): the estimate crosses
    // 0.8 on the way, before a single label exists.
    let of = |class: i64| -> Vec<[f64; 4]> {
        a.iter()
            .zip(&rows)
            .filter(|((_, l, _), _)| *l == class)
            .map(|(_, r)| *r)
            .collect()
    };
    let (ones, twos) = (of(1), of(2));
    let shifted: Vec<[f64; 4]> = (0..300)
        .map(|_| {
            let r = ones[rng.below(ones.len() as u64) as usize];
            let s = twos[rng.below(twos.len() as u64) as usize];
            [0, 1, 2, 3].map(|j| (r[j] + s[j]) / 2.0)
        })
        .collect();
    let b = serve_probs(&v, "b", &shifted);
    let ev = wait_for(30, "the expected-accuracy event", || {
        quality_events(&hook).into_iter().next()
    });
    let data = &ev["data"];
    assert_eq!(data["model_version"], "1", "{ev}");
    let q = &data["quality"];
    assert_eq!(q["breaches"].as_array().unwrap().len(), 1, "{q}");
    let breach = &q["breaches"][0];
    assert_eq!(breach["metric"], "expected_accuracy", "{q}");
    assert_eq!(breach["bound"], "min");
    assert_eq!(breach["threshold"], 0.8);
    assert!(breach["value"].as_f64().unwrap() < 0.8, "{breach}");
    assert_eq!(q["labels_received"], 0, "no label yet: {q}");
    assert_eq!(q["expected"]["rows"], 300, "{q}");
    assert_eq!(q["expected"]["calibrated_on"], 0, "{q}");
    let reason = data["reason"].as_str().unwrap();
    assert!(
        reason.contains("expected_accuracy") && reason.contains("without labels"),
        "{reason}"
    );
    // Its data points at the payload files holding the window's shifted requests.
    let refs = &data["data"];
    let (from, to) = (refs["from"].as_str().unwrap(), refs["to"].as_str().unwrap());
    let mut logged = std::collections::HashMap::new();
    for f in refs["requests"].as_array().unwrap() {
        for r in gz_lines(&logs.path().join(f.as_str().unwrap())) {
            logged.insert(r["id"].as_str().unwrap().to_string(), r);
        }
    }
    let in_window: Vec<&Value> = logged
        .values()
        .filter(|r| {
            let t = r["time"].as_str().unwrap();
            from <= t && t <= to
        })
        .collect();
    assert!(
        in_window
            .iter()
            .any(|r| r["id"].as_str().unwrap().starts_with("b-")),
        "no shifted request in [{from}, {to}] of {refs}"
    );
    assert_eq!(
        v.metric(r#"vigil_retrain_events_total{model="iris",reason="quality"}"#),
        Some(1.0)
    );

    // The labels then measure the drop too (the calibration they bring may move the
    // estimate back and forth across the floor meanwhile): the cooldown holds any
    // further crossing, so the hook has still heard once.
    let acc_b = label_from_probs(&v, &mut rng, &b);
    assert!(acc_b < 0.8, "measured {acc_b}");
    let measured = v
        .metric("vigil_model_quality{metric=\"accuracy\",model=\"iris\",version=\"1\"}")
        .unwrap();
    assert!((measured - acc_b).abs() < 1e-9);
    assert_eq!(quality_events(&hook).len(), 1);
    assert_eq!(
        v.metric(r#"vigil_retrain_events_total{model="iris",reason="quality"}"#),
        Some(1.0)
    );
}

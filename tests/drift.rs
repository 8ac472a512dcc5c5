//! Drift monitoring end to end: real server, iris's real training data, windows scored
//! and reported; the detector trips on shifted traffic and not on stationary traffic.

mod common;

use std::process::Command;

use common::{iris_training_rows, python, root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};
use vigil::rng::Rng;

fn repo_with(config: &str, reference: Option<&[u8]>) -> TempDir {
    let dir = TempDir::new("drift");
    let v = dir.path().join("iris/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(
        root().join("models/iris/1/model.onnx"),
        v.join("model.onnx"),
    )
    .unwrap();
    if let Some(r) = reference {
        std::fs::write(v.join("reference.json"), r).unwrap();
    }
    std::fs::write(dir.path().join("iris/config.toml"), config).unwrap();
    dir
}

fn sample_reference() -> Vec<u8> {
    std::fs::read(root().join("models/iris/1/reference.json")).unwrap()
}

/// Sends `rows` rows resampled from the training data, `shift` added per feature.
fn send(v: &Vigil, rng: &mut Rng, rows: usize, shift: [f64; 4]) {
    let train = iris_training_rows();
    let mut left = rows;
    while left > 0 {
        let n = left.min(500);
        let data: Vec<f64> = (0..n)
            .flat_map(|_| {
                let r = train[rng.below(train.len() as u64) as usize];
                (0..4).map(move |j| r[j] + shift[j])
            })
            .collect();
        let body =
            json!({"inputs": [{"name": "X", "shape": [n, 4], "datatype": "FP32", "data": data}]});
        let (status, got) = v.post_json("/v2/models/iris/infer", &body);
        assert_eq!(status, 200, "{got}");
        left -= n;
    }
}

fn report(v: &Vigil) -> Value {
    let (status, r) = v.get("/v2/models/iris/drift");
    assert_eq!(status, 200, "{r}");
    r["versions"][0].clone()
}

fn wait_windows(v: &Vigil, n: u64) -> Value {
    wait_for(60, &format!("{n} scored windows"), || {
        let r = report(v);
        (r["windows"].as_u64() == Some(n)).then_some(r)
    })
}

fn feature_std(j: usize) -> f64 {
    common::iris_training_std(j)
}

#[test]
fn stationary_traffic_does_not_trip_in_200_windows() {
    // A `window_rows` written: row-exact windows, however fast the rows come.
    let repo = repo_with("[drift]\nwindow_rows = 1000\n", Some(&sample_reference()));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let r = report(&v);
    assert_eq!(r["state"], "monitoring");
    assert_eq!(r["reference"]["source"], "train.npy");
    assert_eq!(r["reference"]["rows"], 150);
    let mut rng = Rng::new(11);
    for w in 1..=200u64 {
        send(&v, &mut rng, 1000, [0.0; 4]);
        if w % 50 == 0 {
            wait_windows(&v, w);
        }
    }
    let r = wait_windows(&v, 200);
    assert_eq!(r["status"], "ok", "{r}");
    let metrics = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(r#"vigil_drift_windows_total{model="iris",result="ok",version="1"} 200"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("drift_windows"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The last window's report has every field, for every feature.
    let w = &r["last_window"];
    assert_eq!(w["rows"], 1000);
    assert_eq!(w["drifted"], false);
    let f = w["features"].as_array().unwrap();
    assert_eq!(f.len(), 4);
    for key in [
        "name",
        "input",
        "index",
        "kind",
        "psi",
        "js",
        "ks_statistic",
        "ks_pvalue",
        "wasserstein",
        "mean",
        "std",
        "drifted",
    ] {
        assert!(
            f[0].get(key).is_some(),
            "feature report lacks {key}: {}",
            f[0]
        );
    }
    assert_eq!(f[0]["name"], "f0");
    assert!(f[0]["psi"].as_f64().unwrap() < 0.2);
    // Outputs are watched too: predicted classes (categorical) and scores.
    let outs = w["outputs"].as_array().unwrap();
    assert!(
        outs.iter()
            .any(|o| o["name"] == "label" && o["kind"] == "categorical"),
        "{outs:?}"
    );
    assert!(outs
        .iter()
        .any(|o| o["name"] == "probabilities.f0" && o["kind"] == "numeric"));
    for family in [
        "vigil_drift_score{",
        "vigil_drift_share{",
        "vigil_drift_status{",
        "vigil_drift_window_rows{",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
}

#[test]
fn half_sigma_shift_in_one_feature_trips_within_two_windows() {
    let repo = repo_with(
        "[drift]\nwindow_rows = 1000\ndrift_share = 0.25\n",
        Some(&sample_reference()),
    );
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let mut rng = Rng::new(5);
    let mut shift = [0.0; 4];
    shift[2] = 0.5 * feature_std(2);
    send(&v, &mut rng, 1000, shift);
    let first = wait_windows(&v, 1);
    if first["status"] != "drifting" {
        send(&v, &mut rng, 1000, shift);
        let second = wait_windows(&v, 2);
        assert_eq!(second["status"], "drifting", "{second}");
    }
    let r = report(&v);
    let f = &r["last_window"]["features"][2];
    assert_eq!(f["drifted"], true, "{f}");
    let metrics = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains(r#"vigil_drift_status{model="iris",version="1"} 1"#));
}

#[test]
fn all_features_shift_trips_in_one_window() {
    let repo = repo_with(
        "[drift]\nwindow_rows = 1000\ndrift_share = 0.25\n",
        Some(&sample_reference()),
    );
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let mut rng = Rng::new(6);
    let shift = [0, 1, 2, 3].map(|j| 0.5 * feature_std(j));
    send(&v, &mut rng, 1000, shift);
    let r = wait_windows(&v, 1);
    assert_eq!(r["status"], "drifting", "{r}");
    assert_eq!(r["windows_in_row"], 1);
    assert!(
        r["last_window"]["drift_share"].as_f64().unwrap() >= 0.75,
        "{r}"
    );
}

#[test]
fn malformed_reference_is_refused_and_the_version_still_serves() {
    let repo = repo_with("", Some(br#"{"rows": 3, "features": [{"name": "a"}]}"#));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let r = report(&v);
    let state = r["state"].as_str().unwrap();
    assert!(
        state.starts_with("unmonitored: reference.json refused"),
        "{state}"
    );
    assert!(state.contains("features[0]"), "{state}");
    send(&v, &mut Rng::new(1), 100, [0.0; 4]);
    assert_eq!(
        report(&v)["window_rows"],
        0,
        "an unmonitored version accumulates nothing"
    );
    // Wrong feature count for the model.
    let mut wrong: Value = serde_json::from_slice(&sample_reference()).unwrap();
    wrong["features"].as_array_mut().unwrap().pop();
    let repo = repo_with("", Some(wrong.to_string().as_bytes()));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let state = report(&v)["state"].as_str().unwrap().to_string();
    assert!(
        state.contains("3 features, the model's inputs give 4"),
        "{state}"
    );
}

#[test]
fn without_a_reference_the_first_rows_become_it() {
    let repo = repo_with("[drift]\nreference_rows = 1000\nwindow_rows = 500\n", None);
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let r = report(&v);
    assert!(
        r["state"]
            .as_str()
            .unwrap()
            .starts_with("collecting reference (0 of 1000 rows)"),
        "{r}"
    );
    let mut rng = Rng::new(9);
    send(&v, &mut rng, 1000, [0.0; 4]);
    let r = report(&v);
    assert_eq!(r["state"], "monitoring");
    assert_eq!(r["reference"]["source"], "first 1000 rows served");
    send(&v, &mut rng, 1000, [0.0; 4]);
    let r = wait_windows(&v, 2);
    assert_eq!(r["status"], "ok", "{r}");
}

#[test]
fn drift_can_be_switched_off_and_on_without_a_reload() {
    let repo = repo_with("[drift]\nenabled = false\n", Some(&sample_reference()));
    let v = Vigil::start(repo.path(), Engine::Tract, &["--poll-interval", "0.1"]);
    assert_eq!(report(&v)["state"], "disabled");
    send(&v, &mut Rng::new(2), 300, [0.0; 4]);
    assert_eq!(report(&v)["window_rows"], 0);
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[drift]\nenabled = true\n",
    )
    .unwrap();
    wait_for(10, "drift to be enabled", || {
        (report(&v)["state"] == "monitoring").then_some(())
    });
    send(&v, &mut Rng::new(2), 300, [0.0; 4]);
    assert_eq!(report(&v)["window_rows"], 300);
    let metrics = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(r#"vigil_model_load_total{model="iris",outcome="success"} 1"#),
        "no reload"
    );
}

fn vigil_profile(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("profile")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn profile_command_matches_numpy_and_rejects_bad_files() {
    let dir = TempDir::new("profile");
    let out = dir.path().join("ref.json");
    let model = root().join("models/iris/1");
    let train = model.join("train.npy");
    let (ok, err) = vigil_profile(&[
        "--data",
        train.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sample",
        "100",
    ]);
    assert!(ok, "{err}");
    let p: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(p["rows"], 150);
    let f = &p["features"][0];
    assert_eq!(
        (f["name"].as_str(), f["input"].as_str(), f["kind"].as_str()),
        (Some("f0"), Some("X"), Some("numeric"))
    );
    assert_eq!(f["sample"].as_array().unwrap().len(), 100);
    // Edges, proportions, mean and std as numpy computes them.
    let check = r#"
import json, sys, numpy as np
x = np.load(sys.argv[1]).astype(np.float64)
p = json.load(open(sys.argv[2]))
for j, f in enumerate(p["features"]):
    col = x[:, j]
    edges = np.unique(np.quantile(col, [i / 10 for i in range(1, 10)]))
    assert np.allclose(edges, f["edges"], rtol=0, atol=1e-9), (j, edges, f["edges"])
    counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
    assert np.allclose(counts / len(col), f["proportions"], atol=1e-12), j
    assert abs(col.mean() - f["mean"]) < 1e-9 and abs(col.std() - f["std"]) < 1e-9, j
print("numpy agrees")
"#;
    let py = Command::new(python())
        .args(["-c", check, train.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    // The same data as CSV with a header: names come from it; categorical detection.
    let csv = dir.path().join("train.csv");
    let mut text = String::from("sepal_length,sepal_width,petal_length,petal_width,species\n");
    for (i, r) in iris_training_rows().iter().enumerate() {
        text += &format!("{},{},{},{},{}\n", r[0], r[1], r[2], r[3], i / 50);
    }
    std::fs::write(&csv, &text).unwrap();
    let (ok, err) = vigil_profile(&[
        "--data",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let p: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(p["features"][2]["name"], "petal_length");
    assert_eq!(p["features"][4]["kind"], "categorical");
    assert_eq!(p["features"][4]["categories"], json!([0.0, 1.0, 2.0]));
    // Wrong column count for the model, ragged rows, non-numeric cells.
    let (ok, err) = vigil_profile(&[
        "--data",
        csv.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("5 columns") && err.contains("4 columns"),
        "{err}"
    );
    for (bad, want) in [
        ("a,b\n1,2\n3\n", "ragged"),
        ("a,b\n1,2\n3,x\n", "'x' is not a number"),
    ] {
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, bad).unwrap();
        let (ok, err) = vigil_profile(&[
            "--data",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn a_window_closes_by_time_once_it_has_min_rows() {
    let repo = repo_with(
        "[drift]\nwindow_rows = 100000\nwindow_seconds = 1\nmin_rows = 100\n",
        Some(&sample_reference()),
    );
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let mut rng = Rng::new(3);
    send(&v, &mut rng, 50, [0.0; 4]);
    send(&v, &mut rng, 150, [0.0; 4]);
    // No further request: the drift thread's clock closes the window.
    let r = wait_windows(&v, 1);
    assert_eq!(r["last_window"]["rows"], 200, "{r}");
    assert_eq!(r["window_rows"], 0);
}

/// `vigil_drift_score` series of `model`: (side, feature, method) -> value.
fn drift_scores(v: &Vigil, model: &str) -> Vec<((String, String, String), f64)> {
    let text = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("vigil_drift_score{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").unwrap();
        let label = |k: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        if label("model").as_deref() != Some(model) {
            continue;
        }
        let key = (
            label("side").unwrap_or_else(|| "<no side label>".into()),
            label("feature").unwrap(),
            label("method").unwrap(),
        );
        out.push((key, value.parse().unwrap()));
    }
    out
}

/// A model with one input matrix and one output matrix names the features of both
/// `f0, f1, ...`: the metrics keep them apart by `side`, and every series holds what
/// the drift report says for the same side and feature.
#[test]
fn input_and_output_features_never_share_a_drift_series() {
    // tests/data/repo/fixed: y = relu(x), x and y both [2, 4].
    let dir = TempDir::new("drift-io");
    let version = dir.path().join("fixed/1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(
        root().join("tests/data/repo/fixed/1/model.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
    let mut rng = Rng::new(21);
    let mut uniform = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    let csv = dir.path().join("train.csv");
    let text: String = (0..2000)
        .map(|_| format!("{},{},{},{}\n", uniform(), uniform(), uniform(), uniform()))
        .collect();
    std::fs::write(&csv, text).unwrap();
    let (ok, err) = vigil_profile(&[
        "--data",
        csv.to_str().unwrap(),
        "--model",
        version.to_str().unwrap(),
        "--out",
        version.join("reference.json").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    std::fs::write(
        dir.path().join("fixed/config.toml"),
        "[drift]\nwindow_rows = 200\n",
    )
    .unwrap();
    let v = Vigil::start(dir.path(), Engine::Tract, &[]);
    // Three windows: the first scored one is the outputs' reference, the next two score
    // inputs and outputs. f0 is shifted, so that inputs and outputs score differently.
    for _ in 0..300 {
        let data: Vec<f64> = (0..8)
            .map(|i| uniform() + if i % 4 == 0 { 0.3 } else { 0.0 })
            .collect();
        let body =
            json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": data}]});
        let (status, got) = v.post_json("/v2/models/fixed/infer", &body);
        assert_eq!(status, 200, "{got}");
    }
    let r = wait_for(60, "3 scored windows", || {
        let (_, r) = v.get("/v2/models/fixed/drift");
        let r = r["versions"][0].clone();
        (r["windows"].as_u64() == Some(3)).then_some(r)
    });
    let w = &r["last_window"];
    let mut want = Vec::new();
    for (side, list) in [("input", &w["features"]), ("output", &w["outputs"])] {
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 4, "{side}s: {list:?}");
        for f in list {
            for m in vigil::metrics::DRIFT_METHODS {
                if let Some(x) = f[m].as_f64() {
                    let key = (side.to_string(), f["name"].as_str().unwrap().to_string(), m);
                    want.push((key, x));
                }
            }
        }
    }
    // The two sides really do share names here, and score differently.
    assert_eq!(w["features"][0]["name"], w["outputs"][0]["name"]);
    assert_ne!(w["features"][0]["psi"], w["outputs"][0]["psi"]);
    let got = drift_scores(&v, "fixed");
    for ((side, name, m), x) in &want {
        let found: Vec<f64> = got
            .iter()
            .filter(|((s, n, mm), _)| s == side && n == name && mm == m)
            .map(|(_, y)| *y)
            .collect();
        assert_eq!(
            found,
            vec![*x],
            "vigil_drift_score{{side={side}, feature={name}, method={m}}}: the report says {x}; series: {got:?}"
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "one series per (side, feature, method) the report has a value for: {got:?}"
    );
}

/// Sends `rows` rows resampled from the training data, `shift` added per feature, as FP32
/// values (so that the server reads exactly what is recorded). Returns the rows and the
/// outputs the server answered, per output feature (`label`, `probabilities.f0`, ...),
/// all as the exact doubles of what was served.
fn send_recorded(
    v: &Vigil,
    rng: &mut Rng,
    rows: usize,
    shift: [f64; 4],
) -> (Vec<[f64; 4]>, std::collections::BTreeMap<String, Vec<f64>>) {
    let train = iris_training_rows();
    let mut sent = Vec::new();
    let mut outputs = std::collections::BTreeMap::<String, Vec<f64>>::new();
    let mut left = rows;
    while left > 0 {
        let n = left.min(500);
        let batch: Vec<[f64; 4]> = (0..n)
            .map(|_| {
                let r = train[rng.below(train.len() as u64) as usize];
                [0, 1, 2, 3].map(|j| (r[j] + shift[j]) as f32 as f64)
            })
            .collect();
        let data: Vec<f32> = batch.iter().flatten().map(|&x| x as f32).collect();
        let body =
            json!({"inputs": [{"name": "X", "shape": [n, 4], "datatype": "FP32", "data": data}]});
        let (status, got) = v.post_json("/v2/models/iris/infer", &body);
        assert_eq!(status, 200, "{got}");
        for o in got["outputs"].as_array().unwrap() {
            let name = o["name"].as_str().unwrap();
            let shape: Vec<usize> = o["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let width = shape[1..].iter().product::<usize>();
            let fp32 = o["datatype"] == "FP32";
            let values: Vec<f64> = o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    let x = x.as_f64().unwrap();
                    if fp32 {
                        x as f32 as f64
                    } else {
                        x
                    }
                })
                .collect();
            assert_eq!(values.len(), n * width, "{name}");
            if shape.len() == 1 {
                outputs.entry(name.to_string()).or_default().extend(values);
            } else {
                for k in 0..width {
                    outputs
                        .entry(format!("{name}.f{k}"))
                        .or_default()
                        .extend(values.iter().skip(k).step_by(width));
                }
            }
        }
        sent.extend(batch);
        left -= n;
    }
    (sent, outputs)
}

/// `got` within `rel` of `want`, relatively (absolutely below 1).
fn assert_close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1.0),
        "{what}: vigil {got:e}, scipy {want:e}"
    );
}

/// P-values agree relatively, in log space (meaningful at 1e-80 as at 0.5).
fn assert_close_p(got: f64, want: f64, tol: f64, what: &str) {
    if want == 0.0 {
        assert_eq!(got, 0.0, "{what}: vigil {got:e}, scipy 0");
        return;
    }
    let diff = (got.ln() - want.ln()).abs();
    assert!(
        diff <= tol,
        "{what}: vigil {got:e}, scipy {want:e} (|ln p − ln p_scipy| = {diff:.1e})"
    );
}

/// The drift report of each window against numpy and scipy run on exactly the rows that
/// were served (tests/python/drift_oracle.py): bin counts, PSI, JS, KS statistic and
/// p-value, Wasserstein, mean and std of every input and output feature, chi-square of
/// the predicted class, and the flags they imply. A stationary window, then one with
/// two features shifted (by numpy's standard deviations), so p-values run from ~1 to tiny.
#[test]
fn drift_report_matches_scipy_on_the_rows_served() {
    let repo = repo_with("[drift]\nwindow_rows = 1000\n", Some(&sample_reference()));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let mut rng = Rng::new(31);
    let shifts = [
        [0.0; 4],
        [0.0, 0.0, 0.3 * feature_std(2), 0.8 * feature_std(3)],
    ];
    let mut windows = Vec::new();
    let mut reports = Vec::new();
    for (w, shift) in shifts.iter().enumerate() {
        let (rows, outputs) = send_recorded(&v, &mut rng, 1000, *shift);
        let r = wait_windows(&v, w as u64 + 1);
        assert_eq!(r["last_window"]["rows"], 1000, "{r}");
        reports.push(r["last_window"].clone());
        windows.push(json!({"inputs": rows, "outputs": outputs}));
    }
    let dir = TempDir::new("drift-oracle");
    let file = dir.path().join("windows.json");
    std::fs::write(&file, serde_json::to_vec(&windows).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(root().join("tests/python/drift_oracle.py"))
        .arg(root().join("models/iris/1/train.npy"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oracle: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut p_values = Vec::new();
    let oracle = oracle.as_array().unwrap();
    assert_eq!(oracle.len(), reports.len(), "one oracle answer per window");
    for (w, (report, want)) in reports.iter().zip(oracle).enumerate() {
        for (side, key) in [("features", "features"), ("outputs", "outputs")] {
            let got = report[key].as_array().unwrap();
            let want = want[side].as_object().unwrap();
            let got_names: Vec<&str> = got.iter().map(|f| f["name"].as_str().unwrap()).collect();
            let mut want_names: Vec<&str> = want.keys().map(String::as_str).collect();
            let mut sorted = got_names.clone();
            sorted.sort_unstable();
            want_names.sort_unstable();
            assert_eq!(sorted, want_names, "window {w} {side}");
            for f in got {
                let name = f["name"].as_str().unwrap();
                let o = &want[name];
                let what = |k: &str| format!("window {w} {side} {name} {k}");
                assert_eq!(f["kind"], o["kind"], "{}", what("kind"));
                assert_eq!(f["window_counts"], o["window_counts"], "{}", what("bins"));
                assert_eq!(f["drifted"], o["drifted"], "{}: {f}", what("drifted"));
                for k in [
                    "psi",
                    "js",
                    "ks_statistic",
                    "wasserstein",
                    "mean",
                    "std",
                    "unseen_share",
                    "chi2_statistic",
                ] {
                    match (f[k].as_f64(), o[k].as_f64()) {
                        (Some(g), Some(x)) => assert_close(g, x, 1e-9, &what(k)),
                        (None, None) => {}
                        (g, x) => panic!("{}: vigil {g:?}, scipy {x:?}", what(k)),
                    }
                }
                for k in ["ks_pvalue", "chi2_pvalue"] {
                    match (f[k].as_f64(), o[k].as_f64()) {
                        (Some(g), Some(x)) => {
                            assert_close_p(g, x, 1e-9, &what(k));
                            p_values.push(x);
                        }
                        (None, None) => {}
                        (g, x) => panic!("{}: vigil {g:?}, scipy {x:?}", what(k)),
                    }
                }
            }
        }
        assert_close(
            report["drift_share"].as_f64().unwrap(),
            want["drift_share"].as_f64().unwrap(),
            0.0,
            &format!("window {w} drift share"),
        );
    }
    // The windows exercised what they were meant to: p-values from large to tiny, and a
    // categorical output tested.
    let (lo, hi) = p_values
        .iter()
        .fold((1.0f64, 0.0f64), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    assert!(lo < 1e-20 && hi > 0.1, "p-values between {lo:e} and {hi:e}");
    println!(
        "drift report = scipy on {} p-values between {lo:e} and {hi:e}",
        p_values.len()
    );
    assert!(
        reports[1]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "categorical" && o["chi2_pvalue"].is_f64()),
        "{}",
        reports[1]
    );
}

/// Sends `rows` rows resampled from the training data in requests of `per_request`
/// rows, and returns them as the server reads them (FP32).
fn send_rows_recorded(v: &Vigil, rng: &mut Rng, rows: usize, per_request: usize) -> Vec<[f32; 4]> {
    let train = iris_training_rows();
    let mut sent = Vec::with_capacity(rows);
    while sent.len() < rows {
        let n = per_request.min(rows - sent.len());
        let batch: Vec<[f32; 4]> = (0..n)
            .map(|_| train[rng.below(train.len() as u64) as usize].map(|x| x as f32))
            .collect();
        let data: Vec<f32> = batch.iter().flatten().copied().collect();
        let body =
            json!({"inputs": [{"name": "X", "shape": [n, 4], "datatype": "FP32", "data": data}]});
        let (status, got) = v.post_json("/v2/models/iris/infer", &body);
        assert_eq!(status, 200, "{got}");
        sent.extend(batch);
    }
    sent
}

/// At high rates the defaults score one window per `min_window_interval` (10 s): a
/// burst of 20 windows' worth of rows within it is one window, whose bin counts, PSI,
/// mean and std cover every row (numpy on all of them agrees), and whose KS sample is a
/// draw of `max_window_sample` (5000) of them. The interval is written out here (20 s,
/// every other setting at its default), so that a machine at load 10 still sends the
/// burst within it; the default's value is checked on its own.
#[test]
fn a_burst_within_the_interval_is_one_window_of_every_row() {
    let defaults = vigil::config::DriftConfig::default();
    assert_eq!(defaults.min_interval(), 10.0);
    assert_eq!(defaults.rows_per_window(), 1000);
    let repo = repo_with(
        "[drift]\nmin_window_interval = \"20s\"\n",
        Some(&sample_reference()),
    );
    // The window opens when the version loads: during the start.
    let started = std::time::Instant::now();
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let sent = send_rows_recorded(&v, &mut Rng::new(17), 20_000, 500);
    assert!(
        started.elapsed().as_secs_f64() < 18.0,
        "the burst took {:?}: too slow for a 20 s interval on this machine",
        started.elapsed()
    );
    let r = wait_for(60, "a scored window", || {
        let r = report(&v);
        (r["windows"].as_u64() >= Some(1)).then_some(r)
    });
    assert_eq!(r["windows"], 1, "{}", r["recent_windows"]);
    let w = &r["last_window"];
    assert_eq!(w["rows"], 20_000, "{}", r["recent_windows"]);
    assert_eq!(r["window_rows"], 0);
    let features = w["features"].as_array().unwrap();
    for f in features {
        assert_eq!(f["rows"], 20_000, "{f}");
        assert_eq!(f["sample"], 5000, "{f}");
    }
    // Every row in the counts and statistics: numpy on all rows sent.
    let dir = TempDir::new("burst");
    let rows_path = dir.path().join("rows.json");
    let report_path = dir.path().join("report.json");
    std::fs::write(&rows_path, serde_json::to_vec(&sent).unwrap()).unwrap();
    std::fs::write(&report_path, w.to_string()).unwrap();
    let check = r#"
import json, sys, numpy as np
x = np.array(json.load(open(sys.argv[1])), dtype=np.float32).astype(np.float64)
w = json.load(open(sys.argv[2]))
for j, f in enumerate(w["features"]):
    col = x[:, j]
    edges = np.array(f["edges"])
    counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
    assert list(counts) == f["window_counts"], (j, list(counts), f["window_counts"])
    cur = np.maximum(counts / len(col), 1e-4)
    ref = np.maximum(np.array(f["reference_proportions"]), 1e-4)
    psi = float(np.sum((cur - ref) * np.log(cur / ref)))
    assert abs(psi - f["psi"]) < 1e-9, (j, psi, f["psi"])
    assert abs(col.mean() - f["mean"]) < 1e-9 and abs(col.std() - f["std"]) < 1e-9, j
print("numpy agrees on all", len(x), "rows")
"#;
    let py = Command::new(python())
        .args([
            "-c",
            check,
            rows_path.to_str().unwrap(),
            report_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let scored = ["ok", "drift"]
        .map(|res| {
            v.metric(&format!(
                r#"vigil_drift_windows_total{{model="iris",result="{res}",version="1"}}"#
            ))
            .unwrap_or(0.0)
        })
        .iter()
        .sum::<f64>();
    assert_eq!(scored, 1.0);
}

/// Thin traffic still closes windows. A `window_rows` written alone gives row-exact
/// windows even when a request's rows straddle the boundary; with the default rules a
/// window closes once it has `window_rows` rows and its interval has passed.
#[test]
fn thin_traffic_closes_windows_at_window_rows() {
    let repo = repo_with("[drift]\nwindow_rows = 1000\n", Some(&sample_reference()));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let mut rng = Rng::new(23);
    send_rows_recorded(&v, &mut rng, 600, 600);
    send_rows_recorded(&v, &mut rng, 600, 600);
    let r = wait_windows(&v, 1);
    assert_eq!(r["last_window"]["rows"], 1000, "{r}");
    assert_eq!(
        r["window_rows"], 200,
        "the rest of the request opens the next window"
    );
    drop(v);

    let repo = repo_with(
        "[drift]\nmin_window_interval = \"1s\"\n",
        Some(&sample_reference()),
    );
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    // The window opened when the server started, before this.
    let opened_before = std::time::Instant::now();
    send_rows_recorded(&v, &mut rng, 600, 600);
    assert_eq!(report(&v)["window_rows"], 600);
    // Thin traffic: the interval passes before the window has its rows...
    while opened_before.elapsed() < std::time::Duration::from_millis(1200) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(report(&v)["windows"], 0, "not closed below window_rows");
    // ...and the request that brings it to window_rows closes it.
    send_rows_recorded(&v, &mut rng, 600, 600);
    let r = wait_windows(&v, 1);
    assert_eq!(r["last_window"]["rows"], 1200, "{r}");
    assert_eq!(r["window_rows"], 0);
}

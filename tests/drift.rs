//! Drift monitoring end to end: real server, iris's real training data, windows scored
//! and reported; the detector trips on shifted traffic and not on stationary traffic.

mod common;

use std::process::Command;

use common::{iris_training_rows, python, root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};
use vigil::monitor::profile::Rng;

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
    let rows = iris_training_rows();
    let xs: Vec<f64> = rows.iter().map(|r| r[j]).collect();
    vigil::monitor::stats::mean_std(&xs).1
}

#[test]
fn stationary_traffic_does_not_trip_in_200_windows() {
    let repo = repo_with("", Some(&sample_reference()));
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
    let repo = repo_with("[drift]\ndrift_share = 0.25\n", Some(&sample_reference()));
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
    let repo = repo_with("[drift]\ndrift_share = 0.25\n", Some(&sample_reference()));
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

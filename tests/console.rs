//! The built-in console in a real browser: vigil serves the sample repository (iris with
//! a canary and a broken third version), takes normal then drifted traffic and has a
//! retrain event it cannot deliver; headless Chromium loads `/` and must show every model
//! and version, the drifted feature first and flagged, no secret, and no console error
//! while the page refreshes itself. Also: the page without scripts, its size, and the
//! OpenAPI description against the routes actually served.

mod common;

use std::process::Command;

use common::{iris_training_rows, python, root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};
use vigil::rng::Rng;

const SECRET_TOKEN: &str = "querysecret123";
const SECRET_PASSWORD: &str = "hookpassword456";
const SIGNING_SECRET: &str = "whsec_c2lnbmluZ3NlY3JldDc4OQ==";

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The sample repository; iris serves v1 stable and v2 as a 20 % canary, small drift
/// windows, a retrain hook nobody answers (credentials in its URL), and a v3 that is not
/// an ONNX file.
fn repository() -> TempDir {
    let dir = TempDir::new("console");
    for model in ["iris", "mlp", "breast_cancer", "cnn"] {
        copy_dir(&root().join("models").join(model), &dir.path().join(model));
    }
    std::fs::create_dir_all(dir.path().join("iris/3")).unwrap();
    std::fs::write(dir.path().join("iris/3/model.onnx"), b"this is not onnx").unwrap();
    std::fs::write(
        dir.path().join("iris/config.toml"),
        format!(
            "[version_policy]\nspecific = [1, 2, 3]\n\n\
             [rollout]\nstable = 1\ncanary = 2\nweight = 20\n\n\
             [drift]\nwindow_rows = 300\ndrift_share = 0.25\n\n\
             [retrain]\nurl = \"http://vigil:{SECRET_PASSWORD}@127.0.0.1:9/hook?token={SECRET_TOKEN}\"\n\
             secret = \"{SIGNING_SECRET}\"\nmax_attempts = 50\n"
        ),
    )
    .unwrap();
    dir
}

/// `rows` training rows to iris v1 (pinned), `shift` added to petal length (f2).
fn send_v1(v: &Vigil, rng: &mut Rng, rows: usize, shift: f64) {
    let train = iris_training_rows();
    let data: Vec<f64> = (0..rows)
        .flat_map(|_| {
            let r = train[rng.below(train.len() as u64) as usize];
            [r[0], r[1], r[2] + shift, r[3]]
        })
        .collect();
    let body =
        json!({"inputs": [{"name": "X", "shape": [rows, 4], "datatype": "FP32", "data": data}]});
    let (status, got) = v.post_json("/v2/models/iris/versions/1/infer", &body);
    assert_eq!(status, 200, "{got}");
}

fn iris_v1_drift(v: &Vigil) -> Value {
    let (status, r) = v.get("/v2/models/iris/drift");
    assert_eq!(status, 200, "{r}");
    r["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"] == 1)
        .unwrap()
        .clone()
}

#[test]
fn console_shows_models_drift_and_events_in_chromium() {
    let repo = repository();
    // On ONNX Runtime (tract serves these models too).
    let v = Vigil::start(repo.path(), Engine::Ort, &[]);
    let mut rng = Rng::new(7);

    // Unpinned one-row traffic on iris (split between v1 and v2) and the other models.
    let one = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    for _ in 0..60 {
        assert_eq!(v.post_json("/v2/models/iris/infer", &one).0, 200);
    }
    let (status, _) = v.post_json("/v2/models/iris/infer", &json!({"inputs": []}));
    assert_eq!(status, 400);

    // Two normal windows on v1, then shifted ones until v1 drifts.
    send_v1(&v, &mut rng, 300, 0.0);
    send_v1(&v, &mut rng, 300, 0.0);
    wait_for(60, "two normal windows", || {
        (iris_v1_drift(&v)["windows"].as_u64() >= Some(2)).then_some(())
    });
    let sigma = common::iris_training_std(2);
    for _ in 0..3 {
        send_v1(&v, &mut rng, 300, 1.5 * sigma);
    }
    let report = wait_for(60, "iris v1 drifting", || {
        let r = iris_v1_drift(&v);
        (r["status"] == "drifting").then_some(r)
    });
    let last = &report["last_window"]["features"];
    let drifted: Vec<&str> = last
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["drifted"] == true)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(drifted.contains(&"f2"), "{report}");
    // The drift trip created a retrain event the hook cannot take: it stays pending.
    wait_for(30, "a failed delivery attempt", || {
        let (_, ev) = v.get("/v2/retrain/events");
        ev["pending"]
            .as_array()
            .and_then(|p| p.first())
            .filter(|e| e["attempts"].as_u64() >= Some(1))
            .cloned()
    });

    // The page without scripts: server-rendered, everything readable.
    let page = v.client.get(v.url("/")).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    // Nothing from elsewhere may be loaded: no source but the page's own (and data: images).
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    for directive in csp.split(';') {
        for source in directive.split_whitespace().skip(1) {
            assert!(
                ["'self'", "'none'", "data:"].contains(&source),
                "CSP allows {source}: {csp}"
            );
        }
    }
    let html = page.text().unwrap();
    for needle in [
        "iris",
        "mlp",
        "breast_cancer",
        "cnn",
        "UNAVAILABLE",
        "canary",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}");
    }
    for secret in [SECRET_TOKEN, SECRET_PASSWORD, SIGNING_SECRET] {
        assert!(!html.contains(secret), "the page shows a secret");
    }
    let css = v.client.get(v.url("/console.css")).send().unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let js = v.client.get(v.url("/console.js")).send().unwrap();
    let total = html.len() + css.text().unwrap().len() + js.text().unwrap().len();
    println!(
        "console: page {} bytes, with its CSS and script {total} bytes",
        html.len()
    );
    assert!(total < 200_000, "the console weighs {total} bytes");

    // In Chromium, watching two refreshes (60 s at most: a ceiling for a loaded machine).
    let shots = TempDir::new("console-shot");
    let shot = shots.path().join("console.png");
    let out = Command::new(python())
        .arg(root().join("tests/python/console_check.py"))
        .arg(v.url("/"))
        .arg(&shot)
        .arg("60")
        .output()
        .expect("run console_check.py");
    assert!(
        out.status.success(),
        "console_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let facts: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        facts["problems"],
        json!([]),
        "browser console: {}",
        facts["problems"]
    );
    assert!(
        facts["refreshes"].as_u64() >= Some(2),
        "the page did not refresh itself: {}",
        facts["refresh_text"]
    );
    assert_eq!(facts["openapi_link"], true);
    // No external request: everything the page asked for (and everything answered) is
    // vigil's own, and its stylesheet, script and periodic refreshes are among them.
    let own = format!("{}/", v.base);
    for key in ["requests", "resources"] {
        let urls: Vec<&str> = facts[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in the browser's report"))
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        for url in &urls {
            assert!(
                url.starts_with(&own) || url.starts_with("data:"),
                "the console {key} {url}, not from {own}: {urls:?}"
            );
        }
        for path in ["", "console.css", "console.js"] {
            assert!(
                urls.contains(&format!("{own}{path}").as_str()),
                "{key} lack /{path}: {urls:?}"
            );
        }
    }

    // Every model and version (iris v3 listed as unavailable, with the reason).
    let models = facts["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["breast_cancer", "cnn", "iris", "mlp"]);
    let iris = models.iter().find(|m| m["name"] == "iris").unwrap();
    let versions: Vec<(&str, &str)> = iris["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["version"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        versions,
        [("3", "UNAVAILABLE"), ("2", "READY"), ("1", "READY")]
    );
    let v1_row = iris["versions"][2]["text"].as_str().unwrap();
    assert!(
        v1_row.contains("stable") && v1_row.contains("ort"),
        "{v1_row}"
    );
    assert!(
        iris["versions"][1]["text"]
            .as_str()
            .unwrap()
            .contains("canary"),
        "{iris}"
    );
    assert!(
        iris["versions"][0]["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("onnx"),
        "the broken version's reason is missing: {iris}"
    );
    for m in models {
        assert!(!m["versions"].as_array().unwrap().is_empty(), "{m}");
    }
    // v1's recent traffic, from vigil's own counters.
    let v1_rate: f64 = iris["versions"][2]["rate"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v1_rate > 0.0, "{iris}");
    assert!(
        iris["versions"][2]["p50"].as_str().unwrap().ends_with('s'),
        "{iris}"
    );

    // iris v1: drifting, f2 first and flagged, plots drawn.
    let drift = facts["drift"].as_array().unwrap();
    let v1 = drift
        .iter()
        .find(|d| d["model"] == "iris" && d["version"] == "1")
        .expect("a drift panel for iris v1");
    assert_eq!(v1["status"], "drifting");
    assert!(v1["timeline_bars"].as_u64() >= Some(3), "{v1}");
    let features = v1["features"].as_array().unwrap();
    assert_eq!(features.len(), 4);
    assert_eq!(features[0]["name"], "f2", "{v1}");
    assert_eq!(features[0]["drifted"], true);
    let flagged = features.iter().take_while(|f| f["drifted"] == true).count();
    assert_eq!(
        flagged,
        features.iter().filter(|f| f["drifted"] == true).count(),
        "drifted features must come first: {v1}"
    );
    for f in features {
        assert!(f["histogram_bars"].as_u64() >= Some(4), "{f}");
    }
    // Every served version has a drift panel.
    assert!(drift.len() >= 5, "{drift:?}");

    // The retrain event, with its failure and no secret.
    let events = facts["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events[0].as_str().unwrap().contains("pending"),
        "{events:?}"
    );
    let text = facts["body_text"].as_str().unwrap();
    for secret in [SECRET_TOKEN, SECRET_PASSWORD, SIGNING_SECRET] {
        assert!(!text.contains(secret), "the console shows a secret");
    }
    // Request figures from vigil's own counters (the sampler runs every 5 s).
    assert!(text.contains("req/s"));

    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
    if let Ok(dir) = std::env::var("VIGIL_CONSOLE_SHOT") {
        std::fs::copy(&shot, dir).unwrap();
    }
}

/// Every operation the description lists is served (no 404 "no such endpoint", no 405),
/// and every route vigil serves is described.
#[test]
fn openapi_describes_the_routes_served() {
    let repo = TempDir::new("openapi");
    copy_dir(&root().join("models/iris"), &repo.path().join("iris"));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let (status, doc) = v.get("/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    let mut expected = vec![
        "GET /",
        "GET /console",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v2",
        "GET /v2/",
        "GET /v2/health/live",
        "GET /v2/health/ready",
        "GET /v2/models/stats",
        "GET /v2/models/{model}",
        "GET /v2/models/{model}/config",
        "GET /v2/models/{model}/drift",
        "GET /v2/models/{model}/quality",
        "GET /v2/models/{model}/ready",
        "GET /v2/models/{model}/rollout",
        "GET /v2/models/{model}/rollout/analysis",
        "GET /v2/models/{model}/stats",
        "GET /v2/models/{model}/versions/{version}",
        "GET /v2/models/{model}/versions/{version}/config",
        "GET /v2/models/{model}/versions/{version}/ready",
        "GET /v2/models/{model}/versions/{version}/stats",
        "GET /v2/retrain/events",
        "POST /v2/models/{model}/feedback",
        "POST /v2/models/{model}/infer",
        "POST /v2/models/{model}/retrain",
        "POST /v2/models/{model}/rollout/promote",
        "POST /v2/models/{model}/rollout/rollback",
        "POST /v2/models/{model}/versions/{version}/infer",
        "POST /v2/repository/index",
        "POST /v2/retrain/alertmanager",
        "POST /v2/repository/models/{model}/load",
        "POST /v2/repository/models/{model}/unload",
        "POST /v2/retrain/dead-letters/{id}/replay",
        "PUT /v2/models/{model}/rollout",
    ];
    expected.sort();
    assert_eq!(operations, expected);
    for op in &operations {
        let (method, path) = op.split_once(' ').unwrap();
        let url = v.url(
            &path
                .replace("{model}", "nosuchmodel")
                .replace("{version}", "1")
                .replace("{id}", "evt_none"),
        );
        let method: reqwest::Method = method.parse().unwrap();
        let r = v.client.request(method, url).send().unwrap();
        let status = r.status().as_u16();
        let body = r.text().unwrap();
        assert_ne!(status, 405, "{op}: {body}");
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{op} is described but not served"
        );
    }
    // A valid OpenAPI 3.1 document (openapi-spec-validator).
    let file = repo.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new(python())
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "invalid OpenAPI document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Schemas the handlers refer to are in the description.
    for schema in [
        "inference_request",
        "inference_response",
        "tensor_data",
        "metadata_model_response",
        "ErrorBody",
        "VersionReport",
        "EventRecord",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}

//! Tokens, limits, malformed input and broken models: refused clearly, nothing else
//! disturbed. Also a bounded, seeded fuzz of the decoders and parsers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{reference, root, Engine, TempDir, Vigil};
use serde_json::json;

fn iris_body() -> serde_json::Value {
    json!({"inputs": reference("iris_v2")["inputs"]})
}

#[test]
fn api_metrics_and_admin_tokens() {
    let dir = TempDir::new("tokens");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "adm1n\n").unwrap();
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &[
            "--api-token",
            "ap1",
            "--metrics-token",
            "m3t",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let infer = v.url("/v2/models/iris/infer");
    assert_eq!(
        v.client
            .post(&infer)
            .json(&iris_body())
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        v.client
            .post(&infer)
            .bearer_auth("nope")
            .json(&iris_body())
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        v.client
            .post(&infer)
            .bearer_auth("ap1")
            .json(&iris_body())
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        v.client
            .get(v.url("/v2/models/iris"))
            .send()
            .unwrap()
            .status(),
        401
    );
    // Health stays open; metrics need their own token.
    assert_eq!(
        v.client
            .get(v.url("/v2/health/ready"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        v.client.get(v.url("/metrics")).send().unwrap().status(),
        401
    );
    let text = v
        .client
        .get(v.url("/metrics"))
        .bearer_auth("m3t")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(r#"vigil_auth_failures_total{endpoint="api",status="401"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"vigil_auth_failures_total{endpoint="metrics",status="401"} 1"#));
    // The admin token (from the file) opens admin endpoints; the api token does not.
    let rollout = v.url("/v2/models/iris/rollout");
    let r = v
        .client
        .put(&rollout)
        .bearer_auth("ap1")
        .json(&json!({"weight": 0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = v
        .client
        .put(&rollout)
        .bearer_auth("adm1n")
        .json(&json!({"weight": 0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn limits_and_malformed_requests() {
    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--max-tensor-elements", "1000", "--body-timeout", "1"],
    );
    let post = |body: Vec<u8>| {
        let r = v
            .client
            .post(v.url("/v2/models/iris/infer"))
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    };
    let started = Instant::now();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (br#"{"inputs":[{"name":"X","shape":[10000000,4],"datatype":"FP32","data":[1]}]}"#.to_vec(), 400, "limit of 1000"),
        (br#"{"inputs":[{"name":"X","shape":[18446744073709551615,4],"datatype":"FP32","data":[1]}]}"#.to_vec(), 400, "too large"),
        (format!(r#"{{"inputs":[{{"name":"X","shape":[1,4],"datatype":"FP32","data":{}1{}}}]}}"#, "[".repeat(300), "]".repeat(300)).into_bytes(), 400, "invalid inference request JSON"),
        (b"{\"inputs\":[{\"name\":\"X\xff\xfe\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}".to_vec(), 400, "invalid inference request JSON"),
        (br#"{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[1,2,3,"NaN"]}]}"#.to_vec(), 200, ""),
        (br#"{"inputs":[{"name":"X","shape":[1,4],"datatype":"float32","data":[1,2,3,4]}]}"#.to_vec(), 400, "unknown datatype"),
    ];
    for (body, status, want) in cases {
        let (got, text) = post(body.clone());
        assert_eq!(
            got,
            status,
            "{}: {text}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        );
        assert!(text.contains(want), "{text} should contain {want}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "nothing allocated the claimed sizes"
    );
    // A body that never arrives in full: 408 after the body timeout.
    let mut s = TcpStream::connect(&v.addr).unwrap();
    write!(
        s,
        "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"inputs\""
    )
    .unwrap();
    let mut resp = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
}

#[test]
fn broken_models_are_reported_and_disturb_nothing() {
    let repo = TempDir::new("broken");
    let copy = |model: &str, version: u32, bytes: &[u8]| {
        let d = repo.path().join(model).join(version.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.onnx"), bytes).unwrap();
    };
    let iris = std::fs::read(root().join("models/iris/2/model.onnx")).unwrap();
    copy("iris", 1, &iris);
    copy("empty", 1, b"");
    copy("truncated", 1, &iris[..iris.len() / 2]);
    copy("garbage", 1, b"\x08\x01\x12\x04junk");
    // An operator no engine knows: "Relu" renamed in the bytes of a tiny model.
    let mut unknown = std::fs::read(root().join("tests/data/repo/fixed/1/model.onnx")).unwrap();
    let at = unknown.windows(4).position(|w| w == b"Relu").unwrap();
    unknown[at..at + 4].copy_from_slice(b"Rulu");
    copy("unknown_op", 1, &unknown);
    for engine in [Engine::Tract, Engine::Ort] {
        let v = Vigil::start(repo.path(), engine, &["--poll-interval", "0"]);
        assert_eq!(
            v.post_json("/v2/models/iris/infer", &iris_body()).0,
            200,
            "{engine:?}"
        );
        let (_, index) = v.post_json("/v2/repository/index", &json!({}));
        for model in ["empty", "truncated", "garbage", "unknown_op"] {
            let row = index
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == model && r["version"] == "1")
                .unwrap_or_else(|| panic!("{model} missing from {index}"));
            assert_eq!(row["state"], "UNAVAILABLE", "{engine:?} {model}: {row}");
            assert!(!row["reason"].as_str().unwrap().is_empty());
            let (status, body) = v.post_json(&format!("/v2/models/{model}/infer"), &iris_body());
            assert_eq!(status, 503, "{engine:?} {model}: {body}");
        }
        // A model directory that disappears: unloaded on the next scan, others untouched.
        let gone = TempDir::new("gone");
        std::fs::create_dir_all(gone.path()).unwrap();
        std::fs::rename(repo.path().join("garbage"), gone.path().join("garbage")).unwrap();
        assert_eq!(
            v.post_json("/v2/repository/models/garbage/load", &json!({}))
                .0,
            404
        );
        std::fs::rename(gone.path().join("garbage"), repo.path().join("garbage")).unwrap();
        assert_eq!(v.post_json("/v2/models/iris/infer", &iris_body()).0, 200);
    }
}

/// Seeded, bounded fuzzing of everything that parses client or operator input: random
/// byte flips, truncations and splices of valid inputs. Must never panic.
#[test]
fn decoders_and_parsers_never_panic() {
    let state = std::cell::Cell::new(0x2545_f491_4f6c_dd1du64);
    let next = || {
        let mut seed = state.get();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        state.set(seed);
        seed
    };
    let valid_json = br#"{"id":"a","inputs":[{"name":"X","shape":[2,2],"datatype":"INT8","data":[[1,2],[3,4]]},{"name":"s","shape":[1],"datatype":"BYTES","data":["x"]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#.to_vec();
    let header = br#"{"inputs":[{"name":"X","shape":[2],"datatype":"FP64","parameters":{"binary_data_size":16}},{"name":"b","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}"#;
    let mut valid_bin = header.to_vec();
    valid_bin.extend(1.5f64.to_le_bytes());
    valid_bin.extend(2.5f64.to_le_bytes());
    valid_bin.extend([1, 0, 0, 0, b'a', 0, 0, 0, 0]);
    let profile = std::fs::read(root().join("models/iris/1/reference.json")).unwrap();
    let config = b"backend = \"tract\"\n[version_policy]\nlatest = 2\n[rollout]\ncanary = 2\nweight = 10\n[drift]\nwindow_rows = 10\n[retrain]\nurl = \"http://x\"\ncooldown = \"1h\"\n".to_vec();
    let mutate = |base: &[u8]| -> Vec<u8> {
        let mut b = base.to_vec();
        match next() % 4 {
            0 => {
                for _ in 0..1 + next() % 8 {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
            }
            1 => b.truncate((next() as usize) % b.len()),
            2 => {
                let i = (next() as usize) % b.len();
                let j = (next() as usize) % b.len();
                let chunk: Vec<u8> = b[i.min(j)..i.max(j)].to_vec();
                let at = (next() as usize) % b.len();
                b.splice(at..at, chunk);
            }
            _ => {
                let i = (next() as usize) % b.len();
                b.insert(i, b"[]{}\",:-0e9"[(next() % 11) as usize]);
            }
        }
        b
    };
    let started = Instant::now();
    let mut cases = 0;
    for _ in 0..20_000 {
        let j = mutate(&valid_json);
        let _ = vigil::http::v2::decode_request_limited(&j, None, 1 << 20);
        let b = mutate(&valid_bin);
        let hl = (next() as usize) % (b.len() + 4);
        let _ = vigil::http::v2::decode_request_limited(&b, Some(hl), 1 << 20);
        let _ = vigil::http::v2::decode_request_limited(&b, Some(header.len()), 1 << 20);
        cases += 3;
    }
    for _ in 0..2_000 {
        let p = mutate(&profile);
        let _ = vigil::monitor::profile::Profile::from_json(&p);
        let c = mutate(&config);
        if let Ok(text) = std::str::from_utf8(&c) {
            if let Ok(cfg) = toml::from_str::<vigil::config::ModelConfig>(text) {
                let _ = cfg.version_policy.policy();
                let _ = cfg.rollout.validate();
                let _ = cfg.drift.validate();
                let _ = cfg.retrain.validate();
            }
        }
        cases += 2;
    }
    println!("{cases} fuzz cases in {:?}, no panic", started.elapsed());
}

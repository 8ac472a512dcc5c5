//! The payload log end to end: a real server, real requests (JSON and binary), real files.
//! A logged request is found with its exact tensors; files rotate by size and age, are
//! gzipped and held under the retention cap under load; a directory that cannot be
//! written drops and counts records while inference answers 200.

mod common;

use std::io::Read;
use std::path::Path;

use common::{root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};

/// A repository with iris served as `name` for each (name, config.toml) given.
fn repo(models: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("payload");
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

/// Every record under `dir` (gzipped files and the complete lines of active ones).
fn records(dir: &Path) -> Vec<Value> {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(e) => e.map(|e| e.unwrap().path()).collect(),
        Err(_) => return Vec::new(),
    };
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        if name.ends_with(".jsonl.gz") {
            flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            assert!(text.ends_with('\n'), "{name} ends with a whole line");
        } else if name.ends_with(".jsonl") {
            // Raced with the writer: only whole lines count.
            let Ok(t) = std::fs::read_to_string(&p) else {
                continue;
            };
            text = t[..t.rfind('\n').map_or(0, |i| i + 1)].to_string();
        } else {
            continue;
        }
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}: {line}")));
        }
    }
    out
}

fn written(v: &Vigil, model: &str) -> f64 {
    v.metric(&format!("vigil_payload_records_total{{model=\"{model}\"}}"))
        .unwrap_or(0.0)
}

fn dropped(v: &Vigil, model: &str, reason: &str) -> f64 {
    v.metric(&format!(
        "vigil_payload_dropped_total{{model=\"{model}\",reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

/// FP32 values that a lossy encoding would change: a tenth, a subnormal, negative zero,
/// the largest finite f32, and an f32 whose shortest f64 form is long.
const AWKWARD: [f32; 8] = [0.1, 1e-40, -0.0, f32::MAX, 5.1, 3.5, 1.4, 0.2];
const AWKWARD_BIN: [f32; 8] = [6.3, 3.3, 6.0, 2.5, 1.0e-7, 16_777_217.0, -1.5e-38, 0.3];

fn assert_same_f32(logged: &Value, sent: &[f32]) {
    let data = logged["data"].as_array().unwrap();
    assert_eq!(data.len(), sent.len(), "{logged}");
    for (got, want) in data.iter().zip(sent) {
        let got = got
            .as_f64()
            .unwrap_or_else(|| panic!("{got} is not a number")) as f32;
        assert_eq!(got.to_bits(), want.to_bits(), "logged {got}, sent {want}");
    }
}

#[test]
fn a_logged_request_is_found_with_its_exact_tensors_json_and_binary() {
    let repo = repo(&[
        ("iris", "[logging]\nsample = 1.0\n"),
        ("quarter", "[logging]\nsample = 0.25\n"),
        ("quiet", ""),
    ]);
    let logs = TempDir::new("payload-dir");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--payload-dir", &dir]);

    // JSON, with the client's id.
    let body = json!({"id": "json-1", "inputs": [
        {"name": "X", "shape": [2, 4], "datatype": "FP32", "data": AWKWARD}]});
    let (status, json_resp) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 200, "{json_resp}");
    assert_eq!(json_resp["id"], "json-1");

    // Binary tensors (Triton's extension), binary outputs.
    let input = json!({"name": "X", "shape": [2, 4], "datatype": "FP32", "data": AWKWARD_BIN});
    let (status, bin_resp) = common::infer_binary(&v, "/v2/models/iris/infer", &[input]);
    assert_eq!(status, 200, "{bin_resp}");
    assert_eq!(bin_resp["id"], "bin-1");

    // No id: vigil assigns one and returns it.
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
        "data": [5.0, 3.0, 1.5, 0.25]}]});
    let (status, anon) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 200, "{anon}");
    let assigned = anon["id"].as_str().expect("an assigned id").to_string();
    assert_eq!(assigned.len(), 36, "{assigned}");

    // A quarter of 40 requests, exactly; none of a model without [logging]; no ids there.
    for _ in 0..40 {
        assert_eq!(v.post_json("/v2/models/quarter/infer", &body).0, 200);
        let (status, quiet) = v.post_json("/v2/models/quiet/infer", &body);
        assert_eq!(status, 200);
        assert!(quiet.get("id").is_none(), "{quiet}");
    }

    wait_for(30, "3 iris records written", || {
        (written(&v, "iris") >= 3.0 && written(&v, "quarter") >= 10.0).then_some(())
    });
    let got = records(&logs.path().join("iris"));
    assert_eq!(got.len(), 3, "{got:?}");
    let by_id = |id: &str| {
        got.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no record {id} in {got:?}"))
    };
    let r = by_id("json-1");
    assert_eq!(r["model"], "iris");
    assert_eq!(r["model_version"], "1");
    assert_eq!(r["role"], "stable");
    assert_eq!(r["status"], "success");
    assert!(r["latency_us"].as_u64().is_some(), "{r}");
    assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    assert_eq!(r["inputs"][0]["name"], "X");
    assert_eq!(r["inputs"][0]["datatype"], "FP32");
    assert_eq!(r["inputs"][0]["shape"], json!([2, 4]));
    assert_same_f32(&r["inputs"][0], &AWKWARD);
    // The outputs logged are the ones answered.
    for out in json_resp["outputs"].as_array().unwrap() {
        let logged = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == out["name"])
            .unwrap();
        // JSON answers say null for NaN (f32::MAX overflows the softmax); the log names it.
        let (l, o) = (
            logged["data"].as_array().unwrap(),
            out["data"].as_array().unwrap(),
        );
        assert_eq!(l.len(), o.len());
        for (l, o) in l.iter().zip(o) {
            if o.is_null() {
                assert!(
                    ["NaN", "Infinity", "-Infinity"].contains(&l.as_str().unwrap()),
                    "{l}"
                );
            } else {
                assert_eq!(l, o, "{}", out["name"]);
            }
        }
        assert_eq!(logged["shape"], out["shape"]);
    }

    let r = by_id("bin-1");
    assert_same_f32(&r["inputs"][0], &AWKWARD_BIN);
    for out in bin_resp["outputs"].as_array().unwrap() {
        let logged = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == out["name"])
            .unwrap();
        if out["datatype"] == "FP32" {
            let sent: Vec<f32> = out["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_same_f32(logged, &sent);
        } else {
            assert_eq!(logged["data"], out["data"], "{}", out["name"]);
        }
    }
    by_id(&assigned);

    assert_eq!(records(&logs.path().join("quarter")).len(), 10);
    assert!(!logs.path().join("quiet").exists());
    assert_eq!(dropped(&v, "iris", "queue_full"), 0.0);
    assert_eq!(dropped(&v, "iris", "write_error"), 0.0);
}

#[test]
fn payload_files_rotate_by_size_and_age_and_stay_under_the_retention_cap_under_load() {
    let repo = repo(&[("iris", "[logging]\nsample = 1.0\n")]);
    let logs = TempDir::new("payload-dir");
    let dir = logs.path().to_str().unwrap().to_string();
    let (max_file, cap) = (20_000u64, 60_000u64);
    let v = Vigil::start(
        repo.path(),
        Engine::Tract,
        &[
            "--payload-dir",
            &dir,
            "--payload-max-file-bytes",
            &max_file.to_string(),
            "--payload-retention-bytes",
            &cap.to_string(),
            "--payload-max-file-age",
            "2s",
        ],
    );
    let (threads, per_thread) = (4, 750);
    std::thread::scope(|s| {
        for t in 0..threads {
            let v = &v;
            s.spawn(move || {
                for i in 0..per_thread {
                    let body = json!({"id": format!("t{t}-{i:04}"), "inputs": [
                        {"name": "X", "shape": [1, 4], "datatype": "FP32",
                         "data": [5.0 + i as f32 * 0.001, 3.0, 1.5, 0.25]}]});
                    let (status, got) = v.post_json("/v2/models/iris/infer", &body);
                    assert_eq!(status, 200, "{got}");
                }
            });
        }
    });
    let sent = (threads * per_thread) as f64;
    wait_for(30, "every record written or counted", || {
        (written(&v, "iris") + dropped(&v, "iris", "queue_full") == sent).then_some(())
    });
    assert!(written(&v, "iris") > sent / 2.0, "most records are written");
    // The newest records, one per thread, sent once the queue has drained: a burst's own
    // last request may have met a full queue (dropped and counted, as designed), these
    // cannot.
    let before = written(&v, "iris");
    for t in 0..threads {
        let body = json!({"id": format!("t{t}-last"), "inputs": [
            {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.0, 3.0, 1.5, 0.25]}]});
        let (status, got) = v.post_json("/v2/models/iris/infer", &body);
        assert_eq!(status, 200, "{got}");
    }
    wait_for(30, "the newest records written", || {
        (written(&v, "iris") == before + threads as f64).then_some(())
    });
    // Age: with no traffic the active file is rotated and gzipped too.
    let model_dir = logs.path().join("iris");
    wait_for(20, "the active file rotated by age", || {
        let names: Vec<String> = std::fs::read_dir(&model_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.iter().all(|n| n.ends_with(".jsonl.gz")).then_some(())
    });
    let files: Vec<(String, u64)> = std::fs::read_dir(&model_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(
        total <= cap,
        "{total} bytes on disk over the cap {cap}: {files:?}"
    );
    assert!(files.len() >= 2, "rotated by size: {files:?}");
    // What is kept is the newest, whole: each thread's last request, no duplicates, and
    // the oldest rotated files deleted (not everything fits under the cap).
    let got = records(&model_dir);
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), got.len(), "no record twice");
    assert!(
        (got.len() as f64) < written(&v, "iris"),
        "old files were deleted"
    );
    for t in 0..threads {
        assert!(
            ids.contains(format!("t{t}-last").as_str()),
            "thread {t}'s last request is kept"
        );
    }
    for r in &got {
        assert_eq!(r["inputs"][0]["shape"], json!([1, 4]));
    }
}

#[test]
fn an_unwritable_payload_dir_drops_and_counts_while_inference_answers_200() {
    let repo = repo(&[("iris", "[logging]\nsample = 1.0\n")]);
    let logs = TempDir::new("payload-dir");
    // A file where the model's directory should be: every write fails (as root, a
    // read-only directory would not).
    let blocker = logs.path().join("iris");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--payload-dir", &dir]);
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
        "data": [5.0, 3.0, 1.5, 0.25]}]});
    for _ in 0..20 {
        let (status, got) = v.post_json("/v2/models/iris/infer", &body);
        assert_eq!(status, 200, "{got}");
    }
    wait_for(30, "20 records counted as write errors", || {
        (dropped(&v, "iris", "write_error") == 20.0).then_some(())
    });
    assert_eq!(written(&v, "iris"), 0.0);
    // The operator fixes the directory: logging resumes without a restart.
    std::fs::remove_file(&blocker).unwrap();
    let (status, _) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 200);
    wait_for(30, "the next record written", || {
        (written(&v, "iris") == 1.0).then_some(())
    });
    assert_eq!(records(&blocker).len(), 1);
    assert_eq!(v.metric("vigil_payload_queue_bytes "), Some(0.0));
}

#[test]
fn sampling_without_a_payload_dir_counts_drops_and_serves() {
    let repo = repo(&[("iris", "[logging]\nsample = 0.5\n")]);
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
        "data": [5.0, 3.0, 1.5, 0.25]}]});
    for _ in 0..10 {
        assert_eq!(v.post_json("/v2/models/iris/infer", &body).0, 200);
    }
    assert_eq!(dropped(&v, "iris", "no_dir"), 5.0);
}

#[test]
fn a_bad_logging_sample_is_refused_with_the_file_named() {
    let repo = repo(&[("iris", "[logging]\nsample = 1.5\n")]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check", "--backend", "tract", "--repository"])
        .arg(repo.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("logging.sample must be between 0 and 1"),
        "{text}"
    );
}

#[test]
fn a_shadow_copy_is_logged_under_the_same_id_with_the_canary_role() {
    let repo = repo(&[(
        "iris",
        "[version_policy]\nall = true\n[rollout]\nstable = 1\ncanary = 2\nmode = \"shadow\"\n[logging]\nsample = 1.0\n",
    )]);
    let v2 = repo.path().join("iris/2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(
        root().join("models/iris/2/model.onnx"),
        v2.join("model.onnx"),
    )
    .unwrap();
    let logs = TempDir::new("payload-dir");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(repo.path(), Engine::Tract, &["--payload-dir", &dir]);
    wait_for(30, "version 2 loaded as canary", || {
        let (_, r) = v.get("/v2/models/iris/rollout");
        (r["canary"] == 2).then_some(())
    });
    let body = json!({"id": "shadowed", "inputs": [{"name": "X", "shape": [1, 4],
        "datatype": "FP32", "data": [5.0, 3.0, 1.5, 0.25]}]});
    let (status, got) = v.post_json("/v2/models/iris/infer", &body);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["model_version"], "1");
    wait_for(30, "both answers written", || {
        (written(&v, "iris") >= 2.0).then_some(())
    });
    let mut got: Vec<(String, String, String)> = records(&logs.path().join("iris"))
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["model_version"].as_str().unwrap().to_string(),
                r["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("shadowed".into(), "1".into(), "stable".into()),
            ("shadowed".into(), "2".into(), "shadow".into())
        ]
    );
}

// review: a rotated file whose compression fails (a full disk; here a directory in the
// way of its `.gz.tmp`) stays as a plain `.jsonl` for as long as the process runs: it is
// never compressed again, and the retention cap counts and deletes only `.jsonl.gz`, so
// such files pile up outside the cap and keep the disk full. Seen on 2cae950 on a 256 KB
// tmpfs with --payload-retention-bytes 200000: after the disk was freed and 3000 more
// requests, two 64 KB `.jsonl` leftovers remained and the model's directory held 250 KB.
#[test]
fn a_rotated_file_whose_compression_failed_is_compressed_or_removed_later() {
    let repo = repo(&[("iris", "[logging]\nsample = 1.0\n")]);
    let logs = TempDir::new("payload-dir");
    let dir = logs.path().to_str().unwrap().to_string();
    let v = Vigil::start(
        repo.path(),
        Engine::Tract,
        &[
            "--payload-dir",
            &dir,
            "--payload-max-file-bytes",
            "4096",
            "--payload-retention-bytes",
            "100000000",
        ],
    );
    let body = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
        "data": [5.0, 3.0, 1.5, 0.25]}]});
    let infer = || {
        let (status, got) = v.post_json("/v2/models/iris/infer", &body);
        assert_eq!(status, 200, "{got}");
    };
    let model_dir = logs.path().join("iris");
    let plain = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&model_dir)
            .map(|e| e.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        v.sort();
        v
    };
    let first = wait_for(30, "the first active file", || {
        infer();
        plain().into_iter().next()
    });
    let mut blocker = first.as_os_str().to_owned();
    blocker.push(".gz.tmp");
    std::fs::create_dir(&blocker).unwrap();
    wait_for(30, "the first file to be rotated", || {
        infer();
        (plain().len() >= 2).then_some(())
    });
    assert!(first.exists(), "its compression should have failed");
    std::fs::remove_dir(&blocker).unwrap();
    // Many rotations later, the leftover is compressed (or at least removed).
    for _ in 0..400 {
        infer();
    }
    wait_for(10, "the leftover .jsonl to be compressed", || {
        infer();
        (!first.exists()).then_some(())
    });
}

/// Two replicas on one shared --payload-dir, each with its --payload-replica: a replica
/// that restarts recovers only its own subdirectory, so the other's active file (which a
/// shared directory's start-up recovery would gzip and unlink under it) keeps every
/// record.
#[test]
fn replicas_sharing_a_payload_dir_never_touch_each_others_files() {
    let repo = repo(&[("iris", "[logging]\nsample = 1.0\n")]);
    let shared = TempDir::new("payload-shared");
    let dir = shared.path().to_str().unwrap().to_string();
    let start = |name: &str| {
        Vigil::start(
            repo.path(),
            Engine::Tract,
            &["--payload-dir", &dir, "--payload-replica", name],
        )
    };
    let serve = |v: &Vigil, tag: &str| {
        for i in 0..5 {
            let body = json!({"id": format!("{tag}-{i}"), "inputs": [{"name": "X",
                "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
            assert_eq!(v.post_json("/v2/models/iris/infer", &body).0, 200);
        }
    };
    let b = start("pod-b");
    serve(&b, "b1");
    wait_for(30, "b's first records", || {
        (written(&b, "iris") == 5.0).then_some(())
    });
    // Replica a starts (and restarts) beside it, on the same directory.
    let a = start("pod-a");
    serve(&a, "a1");
    wait_for(30, "a's records", || {
        (written(&a, "iris") == 5.0).then_some(())
    });
    drop(a);
    let a = start("pod-a");
    serve(&a, "a2");
    serve(&b, "b2");
    wait_for(30, "b's records", || {
        (written(&b, "iris") == 10.0).then_some(())
    });
    wait_for(30, "a's records", || {
        (written(&a, "iris") == 5.0).then_some(())
    });
    let ids = |replica: &str| -> Vec<String> {
        let mut ids: Vec<String> = records(&shared.path().join(replica).join("iris"))
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let want = |tags: &[&str]| -> Vec<String> {
        let mut w: Vec<String> = tags
            .iter()
            .flat_map(|t| (0..5).map(move |i| format!("{t}-{i}")))
            .collect();
        w.sort();
        w
    };
    assert_eq!(ids("pod-b"), want(&["b1", "b2"]));
    assert_eq!(ids("pod-a"), want(&["a1", "a2"]));
    // Nothing of either at the shared root.
    assert!(!shared.path().join("iris").exists());
    // A name that is not a single, visible path segment is refused (a '.r1' replica's
    // files would be missed by the fleet glob `DIR/*/<model>/`).
    for bad in ["../x", "a/b", "..", "", ".r1", "-rf"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "serve",
                "--payload-dir",
                &dir,
                &format!("--payload-replica={bad}"),
            ])
            .arg("--repository")
            .arg(repo.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("--payload-replica"), "{bad}: {text}");
    }
}

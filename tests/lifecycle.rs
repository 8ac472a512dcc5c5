//! Process life: graceful shutdown finishes the request in flight; `vigil check` reports
//! and fails as documented; bad start-up settings are refused clearly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ort_library, reference, root, Engine, Vigil};
use serde_json::json;

/// Reads one HTTP/1.1 response (with Content-Length) from the stream.
fn read_response(s: &mut TcpStream) -> String {
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&resp)
        );
        resp.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&resp);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if resp.len() >= end + 4 + len {
                return text.into_owned();
            }
        }
    }
}

#[test]
fn sigterm_finishes_the_request_in_flight() {
    let mut v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let body = json!({"inputs": reference("iris_v2")["inputs"]}).to_string();
    let request_head = format!(
        "POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // One full request proves the server has this connection.
    let mut s = TcpStream::connect(&v.addr).unwrap();
    write!(s, "{request_head}{body}").unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    // A second one stops halfway through its body: it is now in flight.
    let (head, tail) = body.split_at(body.len() / 2);
    write!(s, "{request_head}{head}").unwrap();
    s.flush().unwrap();
    // Give the server a moment to parse the head (it is then a request, not an idle connection).
    std::thread::sleep(Duration::from_millis(200));
    let rc = unsafe { libc_kill(v.pid(), 15) };
    assert_eq!(rc, 0);
    // Shutdown has begun once new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&v.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The in-flight request completes normally.
    s.write_all(tail.as_bytes()).unwrap();
    let text = read_response(&mut s);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"model_version\":\"2\""), "{text}");
    drop(s);
    let status = v.child.wait().unwrap();
    assert!(status.success(), "vigil exited with {status}");
}

#[test]
fn shutdown_grace_bounds_a_request_that_never_finishes() {
    let mut v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--shutdown-grace", "1", "--body-timeout", "120"],
    );
    // A request whose body never completes holds its connection open.
    let mut s = TcpStream::connect(&v.addr).unwrap();
    write!(
        s,
        "POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{{\"inputs\""
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    assert_eq!(unsafe { libc_kill(v.pid(), 15) }, 0);
    // Exits (with success) once the grace is over, not after the 120 s body timeout.
    let status = loop {
        if let Some(status) = v.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(60),
            "vigil still running long after --shutdown-grace"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "vigil exited with {status}");
    assert!(v
        .drain_logs()
        .iter()
        .any(|l| l.contains("end of the shutdown grace")));
    drop(s);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn vigil(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env_remove("ORT_DYLIB_PATH")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_a_table_and_fails_on_any_failure() {
    let models = root().join("models");
    let lib = ort_library();
    let (ok, out, err) = vigil(&[
        "check",
        "--repository",
        models.to_str().unwrap(),
        "--ort-library",
        lib.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("MODEL") && lines[0].contains("ENGINE") && lines[0].contains("LOAD")
    );
    for model in ["breast_cancer", "cnn", "iris", "mlp"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(model))
            .unwrap_or_else(|| panic!("{model} row in\n{out}"));
        assert!(row.contains(" ort "), "{row}");
        assert!(row.contains(" ms"), "{row}");
    }
    assert!(out.contains("X:FP32[-1, 4]"), "{out}");
    // On tract every sample model loads too, breast_cancer's two-class trees rewritten.
    let (ok, out, err) = vigil(&[
        "check",
        "--repository",
        models.to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert!(ok, "{out}\n{err}");
    for model in ["breast_cancer", "cnn", "iris", "mlp"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(model))
            .unwrap_or_else(|| panic!("{model} row in\n{out}"));
        assert!(row.contains(" tract "), "{row}");
        assert!(!row.contains("FAILED"), "{row}");
    }
    // A garbage model file fails the check with the file named.
    let dir = std::env::temp_dir().join(format!("vigil-check-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("broken/1")).unwrap();
    std::fs::write(dir.join("broken/1/model.onnx"), b"this is not onnx").unwrap();
    std::fs::create_dir_all(dir.join("conf/1")).unwrap();
    std::fs::copy(
        models.join("iris/2/model.onnx"),
        dir.join("conf/1/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        dir.join("conf/config.toml"),
        "backend = \"tract\"\nmax_batch = 3\n",
    )
    .unwrap();
    let (ok, out, err) = vigil(&[
        "check",
        "--repository",
        dir.to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert!(!ok);
    assert!(
        err.contains("broken") && err.contains("not a valid ONNX model"),
        "{err}"
    );
    assert!(
        err.contains("config.toml") && err.contains("max_batch"),
        "{err}"
    );
    assert!(out.contains("FAILED"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn startup_errors_are_clear() {
    let (ok, _, err) = vigil(&[
        "serve",
        "--repository",
        "/definitely/not/here",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(err.contains("/definitely/not/here"), "{err}");
    let (ok, _, err) = vigil(&[
        "check",
        "--backend",
        "ort",
        "--ort-library",
        "/nonexistent/libonnxruntime.so",
    ]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    let (ok, out, _) = vigil(&["serve", "--help"]);
    assert!(ok);
    for flag in [
        "--repository",
        "--http-addr",
        "--backend",
        "--ort-library",
        "--workers",
        "--max-body-bytes",
        "VIGIL_HTTP_ADDR",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

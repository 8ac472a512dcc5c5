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

/// Sends a request head with `Expect: 100-continue` and waits for the interim answer:
/// the server has parsed the head and its handler is reading the body, so the request is
/// in flight (not an idle connection) from here on.
fn start_request(s: &mut TcpStream, path: &str, content_length: usize) {
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut buf).unwrap(), 1, "closed before 100 Continue");
        got.push(buf[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn sigterm_finishes_the_request_in_flight() {
    // Idle connections would close after the header timeout anyway: far beyond the test.
    let mut v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &["--header-timeout", "120"],
    );
    let body = json!({"inputs": reference("iris_v2")["inputs"]}).to_string();
    let request_head = format!(
        "POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = TcpStream::connect(&v.addr).unwrap();
    write!(idle, "{request_head}{body}").unwrap();
    assert!(read_response(&mut idle).starts_with("HTTP/1.1 200"));
    // A request in flight: its head is read, its body not sent yet.
    let mut s = TcpStream::connect(&v.addr).unwrap();
    start_request(&mut s, "/v2/models/iris/infer", body.len());
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
    // The idle connection is closed at once, while the request in flight still holds
    // shutdown open (its body has not even been sent).
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    match idle.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the idle keep-alive connection was not closed: {other:?}"),
    }
    assert!(
        v.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    // The in-flight request completes normally.
    s.write_all(body.as_bytes()).unwrap();
    let text = read_response(&mut s);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"model_version\":\"2\""), "{text}");
    drop(s);
    let status = v.child.wait().unwrap();
    assert!(status.success(), "vigil exited with {status}");
}

/// Bytes waiting unread in the receive queue of the TCP socket from `local` to `peer`
/// (`/proc/net/tcp`), or `None` while there is no such socket.
fn unread_bytes(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u64> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(a) => {
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            )
        }
        std::net::SocketAddr::V6(_) => panic!("IPv4 loopback expected"),
    };
    let (l, p) = (hex(local), hex(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|row| {
        let f: Vec<&str> = row.split_whitespace().collect();
        (f.get(1) == Some(&l.as_str()) && f.get(2) == Some(&p.as_str()))
            .then(|| u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok())?
    })
}

/// On SIGTERM readiness turns 503 before anything else stops: a health check whose
/// request began before the signal (its first line read by vigil, so the connection is
/// not idle and shutdown waits for it) and ends after the listener has closed is told
/// 503 `{"ready": false}`, and its connection is closed after that answer.
#[test]
fn sigterm_turns_readiness_503() {
    let mut v = Vigil::start(&root().join("models"), Engine::Tract, &[]);
    let mut probe = TcpStream::connect(&v.addr).unwrap();
    probe
        .write_all(b"GET /v2/health/ready HTTP/1.1\r\n")
        .unwrap();
    // vigil has accepted the connection and read those bytes once its side of the socket
    // holds nothing unread.
    let server_side = v.addr.parse().unwrap();
    let client_side = probe.local_addr().unwrap();
    common::wait_for(10, "vigil to read the probe's first line", || {
        (unread_bytes(server_side, client_side)? == 0).then_some(())
    });
    assert_eq!(unsafe { libc_kill(v.pid(), 15) }, 0);
    // Shutdown has begun once new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&v.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    probe.write_all(b"Host: t\r\n\r\n").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let text = read_response(&mut probe);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"ready\":false"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    drop(probe);
    let status = v.child.wait().unwrap();
    assert!(status.success(), "vigil exited with {status}");
}

/// On SIGTERM the retrain delivery loop stops: an attempt the receiver holds open does
/// not hold vigil (its timeout is 60 s), nothing more is sent, and the event stays in the
/// outbox, delivered after a restart.
#[test]
fn sigterm_stops_delivery_and_the_pending_event_survives() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let repo = common::TempDir::new("lifecycle-repo");
    let version = repo.path().join("iris/1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::copy(
        root().join("models/iris/2/model.onnx"),
        version.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("iris/config.toml"),
        format!("[retrain]\nurl = \"{url}\"\ntimeout = \"60s\"\n"),
    )
    .unwrap();
    let state = common::TempDir::new("lifecycle-state");
    let args = ["--state-dir", state.path().to_str().unwrap()];
    let mut v = Vigil::start(repo.path(), Engine::Tract, &args);
    let (status, body) = v.post_json("/v2/models/iris/retrain", &json!({"reason": "term"}));
    assert_eq!(status, 202, "{body}");
    let id = body["event_id"].as_str().unwrap().to_string();
    // The receiver takes the attempt and never answers it.
    let (held, _) = listener.accept().unwrap();
    let sent = Instant::now();
    assert_eq!(unsafe { libc_kill(v.pid(), 15) }, 0);
    let status = loop {
        if let Some(status) = v.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "a delivery attempt in flight holds up the exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "vigil exited with {status}");
    drop(held);
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "an attempt after SIGTERM");
    // The restart delivers it (a plain receiver now, answering 204).
    listener.set_nonblocking(false).unwrap();
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    let (mut stream, _) = listener.accept().unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut buf).unwrap(), 1);
        head.push(buf[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains(&format!("webhook-id: {id}")), "{head}");
    write!(stream, "HTTP/1.1 204 X\r\nconnection: close\r\n\r\n").unwrap();
    common::wait_for(20, "the event delivered after the restart", || {
        let (_, e) = v.get("/v2/retrain/events");
        (e["delivered"][0]["id"] == id.as_str()).then_some(())
    });
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
    // The body is being read once the server has asked for it.
    start_request(&mut s, "/v2/models/iris/infer", 1000);
    s.write_all(b"{\"inputs\"").unwrap();
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
    // Logged before the exit; it reaches the test through the log reader's pipe.
    v.wait_log(30, "the end of the shutdown grace", |l| {
        l.contains("end of the shutdown grace")
    });
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

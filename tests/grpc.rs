//! The gRPC front (`--grpc-addr`) against a real vigil with the unmodified Python
//! `tritonclient.grpc` client and Triton's generated stubs (tests/python/grpc_check.py):
//! every RPC, raw and typed contents of every datatype, error codes and malformed
//! messages, tokens, the canary's sticky key from metadata, health and reflection, and
//! NOT_SERVING at SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{python, root, wait_for, Engine, TempDir, Vigil};
use serde_json::json;

/// Starts vigil with a gRPC listener on `grpc_addr`; returns it and the bound gRPC address.
fn start(
    repository: &std::path::Path,
    engine: Engine,
    grpc_addr: &str,
    extra: &[&str],
) -> (Vigil, String) {
    let mut args = vec!["--grpc-addr", grpc_addr];
    args.extend_from_slice(extra);
    let v = Vigil::start(repository, engine, &args);
    let line = v.wait_log(30, "the gRPC address", |l| {
        l.contains("gRPC listening on grpc://")
    });
    let rest = &line[line.find("grpc://").unwrap() + "grpc://".len()..];
    let addr = rest.split_whitespace().next().unwrap().to_string();
    // A wildcard bind is reached on loopback.
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    (v, addr)
}

fn check(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/python/grpc_check.py"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpc_check {args:?} failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    stdout
}

fn serve_check(repo: &str, engine: Engine) {
    let repository = root().join(repo);
    let (v, grpc) = start(
        &repository,
        engine,
        "127.0.0.1:0",
        &["--max-body-bytes", "1048576", "--poll-interval", "0"],
    );
    let name = match engine {
        Engine::Tract => "tract",
        Engine::Ort => "ort",
    };
    let out = check(
        &["serve", &grpc, repository.to_str().unwrap(), name],
        &[("VIGIL_CHECK_MAX_MESSAGE", "1048576")],
    );
    assert!(out.contains("inference checks passed"), "{out}");
    // Counted under the gRPC protocol, and the HTTP front still serves.
    let model = std::fs::read_dir(&repository)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .min()
        .unwrap();
    let ok = v
        .metric(&format!(
            "vigil_protocol_requests_total{{model=\"{model}\",outcome=\"success\",protocol=\"grpc\"}}"
        ))
        .unwrap_or(0.0);
    assert!(ok >= 6.0, "gRPC successes of {model}: {ok}");
    let bad = v
        .metric(&format!(
            "vigil_protocol_requests_total{{model=\"{model}\",outcome=\"bad_request\",protocol=\"grpc\"}}"
        ))
        .unwrap_or(0.0);
    assert_eq!(bad, 0.0, "bad requests counted on {model}, which got none");
    assert_eq!(v.get("/v2/health/ready").0, 200);
}

#[test]
fn grpc_tritonclient_every_rpc_on_ort() {
    serve_check("models", Engine::Ort);
}

#[test]
fn grpc_tritonclient_every_rpc_on_tract() {
    serve_check("models", Engine::Tract);
}

#[test]
fn grpc_every_datatype_raw_and_typed() {
    serve_check("tests/data/repo", Engine::Ort);
    serve_check("tests/data/repo", Engine::Tract);
}

#[test]
fn grpc_tokens_in_metadata() {
    let (v, grpc) = start(
        &root().join("models"),
        Engine::Tract,
        "127.0.0.1:0",
        &[
            "--api-token",
            "api-secret",
            "--admin-token",
            "admin-secret",
            "--model-control",
            "explicit",
            "--load-model",
            "iris",
        ],
    );
    check(&["auth", &grpc, "api-secret", "admin-secret"], &[]);
    let failures = v
        .metric("vigil_auth_failures_total{endpoint=\"api\",status=\"401\"}")
        .unwrap_or(0.0);
    // Refused: no token, a wrong one, and an inference without one (api); the api
    // token on two control-plane calls (admin).
    assert_eq!(failures, 3.0, "api auth failures counted");
    let admin = v
        .metric("vigil_auth_failures_total{endpoint=\"admin\",status=\"401\"}")
        .unwrap_or(0.0);
    assert_eq!(admin, 2.0, "admin auth failures counted");
}

#[test]
fn grpc_control_plane_needs_a_token_off_loopback() {
    let (_v, grpc) = start(&root().join("models"), Engine::Tract, "0.0.0.0:0", &[]);
    check(&["denied", &grpc], &[]);
}

#[test]
fn grpc_canary_split_follows_the_sticky_key_in_metadata() {
    let repo = TempDir::new("grpc-canary");
    for version in ["1", "2"] {
        let dir = repo.path().join("iris").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root().join("models/iris").join(version).join("model.onnx"),
            dir.join("model.onnx"),
        )
        .unwrap();
    }
    std::fs::write(
        repo.path().join("iris/config.toml"),
        "[version_policy]\nlatest = 2\n",
    )
    .unwrap();
    let (v, grpc) = start(
        repo.path(),
        Engine::Tract,
        "127.0.0.1:0",
        &["--poll-interval", "0"],
    );
    let r = v
        .client
        .put(v.url("/v2/models/iris/rollout"))
        .json(&json!({"stable": 2, "canary": 1, "weight": 50}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let out = check(&["canary", &grpc, "iris", "x-vigil-routing-key"], &[]);
    let by_key: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("key "))
        .map(|l| {
            let (k, v) = l.split_once(" version ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(by_key.len(), 40);
    let canary = by_key.iter().filter(|(_, v)| v == "1").count();
    assert!(
        (5..=35).contains(&canary),
        "a 50% split sent {canary} of 40 keys to the canary"
    );
    // The same key lands on the same version over HTTP: one routing, two fronts.
    for (key, version) in by_key.iter().take(10) {
        let r: serde_json::Value = v
            .client
            .post(v.url("/v2/models/iris/infer"))
            .header("x-vigil-routing-key", key)
            .json(&json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["model_version"], version.as_str(), "key {key}");
    }
}

/// Starts a `grpc.health.v1.Health/Watch` client (tests/python/grpc_check.py) and waits
/// until it has seen reflection and SERVING; returns it and its next output line.
fn watch(grpc: &str, extra: &[&str]) -> (std::process::Child, impl FnMut() -> String) {
    let mut watcher = Command::new(python())
        .arg(root().join("tests/python/grpc_check.py"))
        .args(["watch", grpc])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut next = move || lines.next().expect("watcher output").unwrap();
    assert!(next().starts_with("reflection lists inference.GRPCInferenceService"));
    assert_eq!(next(), "health SERVING");
    (watcher, next)
}

#[test]
fn grpc_health_turns_not_serving_at_sigterm() {
    let (mut v, grpc) = start(
        &root().join("models"),
        Engine::Tract,
        "127.0.0.1:0",
        &["--shutdown-grace", "3s"],
    );
    let (mut watcher, mut next) = watch(&grpc, &[]);
    assert_eq!(unsafe { libc::kill(v.pid(), libc::SIGTERM) }, 0);
    assert_eq!(next(), "health NOT_SERVING");
    assert!(watcher.wait().unwrap().success());
    // The server exits within its grace (the watch stream held the drain open).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = wait_for(20, "vigil to exit after SIGTERM", || {
        assert!(Instant::now() < deadline);
        v.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
}

/// A client that opens an inference stream and never sends its message holds it only
/// for `--body-timeout` (DEADLINE_EXCEEDED, naming the flag); its connection and permit
/// are freed once it goes: the gRPC connection gauge returns to 0.
#[test]
fn grpc_a_stream_that_never_sends_is_ended_and_frees_its_connection() {
    let (v, grpc) = start(
        &root().join("models"),
        Engine::Tract,
        "127.0.0.1:0",
        &["--body-timeout", "1s"],
    );
    let open = "vigil_http_connections{listener=\"grpc\"}";
    let out = check(&["stall", &grpc], &[]);
    assert!(
        out.contains("stalled stream ended: DEADLINE_EXCEEDED"),
        "{out}"
    );
    wait_for(20, "the gRPC connection gauge back to 0", || {
        (v.metric(open) == Some(0.0)).then_some(())
    });
    // The front still serves.
    check(&["canary", &grpc, "iris", "x-vigil-routing-key"], &[]);
}

/// An open `grpc.health.v1.Health/Watch` stream (a prober that keeps watching) does not
/// hold the drain until `--shutdown-grace`: at SIGTERM it is told NOT_SERVING, then the
/// server ends the stream, and vigil exits long before the grace (60 s here).
#[test]
fn grpc_health_watch_is_ended_at_shutdown_not_held_to_the_grace() {
    let (mut v, grpc) = start(
        &root().join("models"),
        Engine::Tract,
        "127.0.0.1:0",
        &["--shutdown-grace", "60s"],
    );
    let (mut watcher, mut next) = watch(&grpc, &["to-end"]);
    let signalled = Instant::now();
    assert_eq!(unsafe { libc::kill(v.pid(), libc::SIGTERM) }, 0);
    assert_eq!(next(), "health NOT_SERVING");
    assert_eq!(next(), "watch ended by the server");
    assert!(watcher.wait().unwrap().success());
    let status = wait_for(
        20,
        "vigil to exit after SIGTERM (a third of the grace)",
        || v.child.try_wait().unwrap(),
    );
    println!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status:?}");
}

/// A bare HTTP/2 client, to see the frames a connection gets (GOAWAY) and to hold a
/// connection open with no stream, as an idle client does.
mod h2raw {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    pub const DATA: u8 = 0;
    pub const GOAWAY: u8 = 7;

    pub const PING: u8 = 6;

    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len() as u32;
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Connects, says the preface and SETTINGS, and acknowledges the server's SETTINGS.
    pub fn connect(addr: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        s.write_all(&frame(4, 0, 0, &[])).unwrap();
        let first = read_frame(&mut s, Duration::from_secs(20)).expect("server SETTINGS");
        assert_eq!(first.kind, 4, "the server's first frame is SETTINGS");
        s.write_all(&frame(4, 1, 0, &[])).unwrap();
        s
    }

    /// Opens `grpc.health.v1.Health/Watch` for the server ("") on stream 1.
    pub fn watch(s: &mut TcpStream, authority: &str) {
        let mut block = Vec::new();
        for (k, v) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Watch"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            // HPACK: literal header field without indexing, new name, no Huffman.
            block.push(0);
            block.push(k.len() as u8);
            block.extend_from_slice(k.as_bytes());
            block.push(v.len() as u8);
            block.extend_from_slice(v.as_bytes());
        }
        s.write_all(&frame(1, 0x4, 1, &block)).unwrap();
        // One empty HealthCheckRequest (service ""), uncompressed; the request ends.
        s.write_all(&frame(0, 0x1, 1, &[0, 0, 0, 0, 0])).unwrap();
    }

    /// The next frame within `within`; `None` at EOF or when nothing came.
    pub fn read_frame(s: &mut TcpStream, within: Duration) -> Option<Frame> {
        s.set_read_timeout(Some(within)).unwrap();
        let mut head = [0u8; 9];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::WouldBlock
                        | ErrorKind::TimedOut
                        | ErrorKind::ConnectionReset
                ) =>
            {
                return None
            }
            Err(e) => panic!("reading a frame: {e}"),
        }
        let n = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; n];
        s.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }

    /// Answers a PING as a live client does (a server's graceful close waits for it).
    pub fn pong(s: &mut TcpStream, f: &Frame) {
        if f.kind == PING && f.flags & 1 == 0 {
            s.write_all(&frame(PING, 1, 0, &f.payload)).unwrap();
        }
    }

    /// Every frame until EOF (or `secs` passed): what the server said before it closed.
    pub fn until_closed(s: &mut TcpStream, secs: u64) -> Vec<u8> {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut kinds = Vec::new();
        while Instant::now() < end {
            match read_frame(s, Duration::from_millis(200)) {
                Some(f) => {
                    pong(s, &f);
                    kinds.push(f.kind)
                }
                None => {
                    let mut probe = [0u8; 1];
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    match s.read(&mut probe) {
                        Ok(0) => return kinds,
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => return kinds,
                        _ => {}
                    }
                }
            }
        }
        panic!("the connection was not closed within {secs} s (frames {kinds:?})");
    }
}

/// A client that connects and sits there (no stream, no traffic) is sent GOAWAY and
/// closed after `--grpc-idle-timeout`, giving back its `--max-connections` permit (the
/// gauge returns to what it was); a connection with an open `Health/Watch` stream is not
/// idle: it gets no GOAWAY and stays counted.
#[test]
fn grpc_an_idle_connection_is_closed_but_an_open_watch_stays() {
    let (v, grpc) = start(
        &root().join("models"),
        Engine::Tract,
        "127.0.0.1:0",
        &["--grpc-idle-timeout", "1s"],
    );
    let open = "vigil_http_connections{listener=\"grpc\"}";
    let mut watching = h2raw::connect(&grpc);
    h2raw::watch(&mut watching, &grpc);
    // The status arrives in DATA frames on stream 1: wait for SERVING (a message whose
    // HealthCheckResponse is `status = 1`: bytes 08 01 after the 5-byte gRPC prefix);
    // one sent before the model is ready may say otherwise first, and then changes.
    wait_for(20, "the Watch stream to say SERVING", || {
        h2raw::read_frame(&mut watching, Duration::from_secs(20))
            .filter(|f| f.kind == h2raw::DATA && f.stream == 1)
            .filter(|f| f.payload.ends_with(&[0x08, 0x01]))
    });
    let mut idle = h2raw::connect(&grpc);
    wait_for(20, "two gRPC connections open", || {
        (v.metric(open) == Some(2.0)).then_some(())
    });
    let said = h2raw::until_closed(&mut idle, 30);
    assert!(
        said.contains(&h2raw::GOAWAY),
        "the idle connection was closed without GOAWAY: frames {said:?}"
    );
    wait_for(20, "the idle connection's permit given back", || {
        (v.metric(open) == Some(1.0)).then_some(())
    });
    // The watching connection, open longer than the idle one, got no GOAWAY; nor another
    // message, since the status did not change (it was once re-sent every 100 ms).
    let mut kinds = Vec::new();
    while let Some(f) = h2raw::read_frame(&mut watching, Duration::from_millis(300)) {
        h2raw::pong(&mut watching, &f);
        kinds.push(f.kind);
        assert!(
            kinds.len() < 20,
            "the Watch connection keeps getting frames: {kinds:?}"
        );
    }
    assert!(
        !kinds.contains(&h2raw::GOAWAY),
        "a connection with an open Watch was sent GOAWAY: {kinds:?}"
    );
    assert!(
        !kinds.contains(&h2raw::DATA),
        "an unchanged status was sent again: {kinds:?}"
    );
    assert_eq!(v.metric(open), Some(1.0));
}

/// A client that connects and sends nothing (no HTTP/2 preface), or only half a preface,
/// holds no stream either: it is closed after `--grpc-idle-timeout` like any idle one.
/// hyper answers the idle GOAWAY only once the preface has come, so such connections
/// once held their `--max-connections` permits for good (shared with HTTP: enough of them
/// and no HTTP client got in either).
#[test]
fn grpc_a_connection_that_never_says_its_preface_is_closed_when_idle() {
    use std::io::Write;
    let (v, grpc) = start(
        &root().join("models"),
        Engine::Tract,
        "127.0.0.1:0",
        &["--grpc-idle-timeout", "1s"],
    );
    let open = "vigil_http_connections{listener=\"grpc\"}";
    let silent = std::net::TcpStream::connect(&grpc).unwrap();
    let mut half = std::net::TcpStream::connect(&grpc).unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    wait_for(20, "two gRPC connections open", || {
        (v.metric(open) == Some(2.0)).then_some(())
    });
    // EOF (or a reset) within the idle timeout and the wait after GOAWAY.
    for (name, s) in [("silent", silent), ("half a preface", half)] {
        assert_closed_within(name, s, 25);
    }
    wait_for(20, "the permits given back", || {
        (v.metric(open) == Some(0.0)).then_some(())
    });
}

/// A gRPC ModelInfer takes the execution decision HTTP takes on the same version (one
/// `serving` path, `Execution::inline_for`): on an inline version it never touches the
/// worker pool (no queue time, on either front), on a pooled one it does. The pool hops
/// seen in the gRPC profile (benches/RESULTS.md) were iris on the pool for both fronts.
#[test]
fn grpc_infer_takes_the_same_execution_path_as_http() {
    let repo = TempDir::new("grpc-exec");
    for (name, mode) in [("inl", "inline"), ("pooled", "pool")] {
        let dir = repo.path().join(name).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root().join("models/iris/2/model.onnx"),
            dir.join("model.onnx"),
        )
        .unwrap();
        std::fs::write(
            repo.path().join(name).join("config.toml"),
            format!("[execution]\nmode = \"{mode}\"\n"),
        )
        .unwrap();
    }
    let (v, grpc) = start(
        repo.path(),
        Engine::Tract,
        "127.0.0.1:0",
        &["--poll-interval", "0"],
    );
    let script = r#"
import sys, numpy as np, tritonclient.grpc as g
c = g.InferenceServerClient(sys.argv[1])
x = g.InferInput("X", [1, 4], "FP32")
x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
for model in ("inl", "pooled"):
    for _ in range(20):
        assert c.infer(model, [x]).as_numpy("label") is not None
print("sent")
"#;
    let out = Command::new(python())
        .args(["-c", script, &grpc])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queue = |model: &str| {
        v.metric(&format!(
            "vigil_inference_queue_duration_seconds_sum{{model=\"{model}\",version=\"1\"}}"
        ))
        .unwrap_or(f64::NAN)
    };
    let count = |model: &str| {
        v.metric(&format!(
            "vigil_protocol_requests_total{{model=\"{model}\",outcome=\"success\",protocol=\"grpc\"}}"
        ))
    };
    assert_eq!(count("inl"), Some(20.0));
    assert_eq!(count("pooled"), Some(20.0));
    assert_eq!(
        queue("inl"),
        0.0,
        "a gRPC request on an inline version was queued"
    );
    assert!(
        queue("pooled") > 0.0,
        "the pooled version's requests were not queued"
    );
    // HTTP on the same versions: the same decision.
    for model in ["inl", "pooled"] {
        let (status, body) = v.post_json(
            &format!("/v2/models/{model}/infer"),
            &json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}),
        );
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(queue("inl"), 0.0);
}

/// A connection that never says its whole HTTP/2 preface (nothing, half the magic, the
/// magic without its SETTINGS frame) is dropped after `--header-timeout` even with
/// `--grpc-idle-timeout 0`, giving back its `--max-connections` permit (shared with
/// HTTP); one that said it stays open (idle connections are kept with 0). Before, hyper
/// waited for the preface forever and, with the idle timeout off, so did vigil.
#[test]
fn grpc_a_connection_without_its_preface_is_dropped_after_the_header_timeout() {
    use std::io::Write;
    let (v, grpc) = start(
        &root().join("models"),
        Engine::Tract,
        "127.0.0.1:0",
        &["--grpc-idle-timeout", "0", "--header-timeout", "2s"],
    );
    let open = "vigil_http_connections{listener=\"grpc\"}";
    let mut talked = h2raw::connect(&grpc);
    let silent = std::net::TcpStream::connect(&grpc).unwrap();
    let mut half = std::net::TcpStream::connect(&grpc).unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut no_settings = std::net::TcpStream::connect(&grpc).unwrap();
    no_settings
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00")
        .unwrap();
    wait_for(20, "four gRPC connections open", || {
        (v.metric(open) == Some(4.0)).then_some(())
    });
    for (name, s) in [
        ("silent", silent),
        ("half a preface", half),
        ("the magic without SETTINGS", no_settings),
    ] {
        // EOF (or a reset) once the header timeout is up.
        assert_closed_within(name, s, 20);
    }
    wait_for(20, "their permits given back", || {
        (v.metric(open) == Some(1.0)).then_some(())
    });
    // The one that said its preface is still served, past the header timeout.
    talked
        .write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let answered = (0..10).any(|_| {
        let f = h2raw::read_frame(&mut talked, Duration::from_secs(10)).expect("a PING answer");
        f.kind == h2raw::PING && f.flags == 1 && f.payload == [1, 2, 3, 4, 5, 6, 7, 8]
    });
    assert!(
        answered,
        "no PING answer on the connection that said its preface"
    );
    assert_eq!(v.metric(open), Some(1.0));
}

/// Reads `s` to its end (EOF or a reset), failing unless vigil closed it within `secs`.
fn assert_closed_within(name: &str, mut s: std::net::TcpStream, secs: u64) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
    assert!(
        started.elapsed() < Duration::from_secs(secs),
        "the {name} connection was still open after {:?}",
        started.elapsed()
    );
}

/// How a raw call's request ends.
#[derive(Clone, Copy)]
enum End<'a> {
    /// END_STREAM on the last DATA frame (or on the headers when there is none).
    Data,
    /// Trailers end it.
    Trailers(&'a [(&'a str, &'a str)]),
    /// Held open: the answer must come before the request ends.
    Open,
}

/// One unary call written onto the `h2` crate, frame by frame as given: the message cut
/// into `parts` DATA frames, then ended as `end` says. Returns the answer's
/// `grpc-status`, `grpc-message` and body.
async fn h2_call(
    addr: &str,
    headers: &[(&str, &str)],
    parts: &[&[u8]],
    end: End<'_>,
) -> (String, String, Vec<u8>) {
    let trailers = match end {
        End::Trailers(t) => Some(t),
        _ => None,
    };
    let ends_on_data = matches!(end, End::Data);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let mut req = axum::http::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let empty = parts.is_empty() && ends_on_data;
    let (resp, mut stream) = send.send_request(req.body(()).unwrap(), empty).unwrap();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len() && ends_on_data;
        stream
            .send_data(bytes::Bytes::copy_from_slice(p), last)
            .unwrap();
    }
    if let Some(t) = trailers {
        let mut map = axum::http::HeaderMap::new();
        for (k, v) in t {
            map.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        stream.send_trailers(map).unwrap();
    }
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let head = resp.headers().clone();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    // A trailers-only answer carries its status in the headers.
    let tail = body.trailers().await.unwrap().unwrap_or(head);
    let get = |k: &str| {
        tail.get(k)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"), data)
}

/// ModelInfer's message is read by vigil itself, not tonic (the path that carries the
/// traffic): however the client cuts it into DATA frames, with trailers or without, it is
/// served, and every broken message, first or after the first, gets tonic's code and
/// words (INTERNAL for a missing, cut-off, compressed-without-encoding or unparsable one,
/// as soon as it is whole; RESOURCE_EXHAUSTED over
/// `--max-body-bytes`; UNIMPLEMENTED for an encoding the server does not take); a
/// token in the request's trailers counts as metadata, as tonic merged it.
#[test]
fn grpc_model_infer_reads_its_message_however_it_arrives() {
    use prost::Message;
    use vigil::grpc::proto::{model_infer_request::InferInputTensor, ModelInferRequest};
    let repository = root().join("models");
    let (v, grpc) = start(
        &repository,
        Engine::Tract,
        "127.0.0.1:0",
        &["--max-body-bytes", "4096", "--api-token", "sesame"],
    );
    let req = ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![InferInputTensor {
            name: "X".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![[5.1f32, 3.5, 1.4, 0.2]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect()],
        ..Default::default()
    };
    let msg = req.encode_to_vec();
    let frame = |flag: u8, m: &[u8]| {
        let mut f = vec![flag];
        f.extend_from_slice(&(m.len() as u32).to_be_bytes());
        f.extend_from_slice(m);
        f
    };
    let wire = frame(0, &msg);
    let auth = [("authorization", "Bearer sesame")];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let answer = |data: &[u8]| {
            vigil::grpc::proto::ModelInferResponse::decode(&data[5..]).expect("an answer")
        };
        // Whole, in one frame.
        let (code, m, data) = h2_call(&grpc, &auth, &[&wire], End::Data).await;
        assert_eq!(code, "0", "{m}");
        assert_eq!(answer(&data).outputs.len(), 2);
        // A frame per octet, then trailers that carry the token.
        let octets: Vec<&[u8]> = wire.chunks(1).collect();
        let (code, m, data) = h2_call(&grpc, &[], &octets, End::Trailers(&auth)).await;
        assert_eq!(code, "0", "{m}");
        assert_eq!(answer(&data).model_name, "iris");
        // The prefix split from the message, and an empty frame between.
        let (code, m, _) = h2_call(&grpc, &auth, &[&wire[..3], &[], &wire[3..]], End::Data).await;
        assert_eq!(code, "0", "{m}");
        // Without the token: refused by the same gate.
        let (code, _, _) = h2_call(&grpc, &[], &[&wire], End::Data).await;
        assert_eq!(code, "16", "UNAUTHENTICATED");
        let refused: [Refusal; 9] = [
            ("no message", vec![], &[], "13", "Missing request message."),
            (
                "cut short",
                vec![wire[..wire.len() - 3].to_vec()],
                &[],
                "13",
                "Unexpected EOF",
            ),
            (
                "compressed, no encoding",
                vec![frame(1, &msg)],
                &[],
                "13",
                "compressed-flag but no grpc-encoding",
            ),
            (
                "not protobuf",
                vec![frame(0, &[0xff; 9])],
                &[],
                "13",
                "failed to decode Protobuf message",
            ),
            (
                "a second message that is not protobuf",
                vec![wire.clone(), frame(0, &[0xff; 9])],
                &[],
                "13",
                "failed to decode Protobuf message",
            ),
            (
                "a second message cut short",
                vec![wire.clone(), frame(0, &msg)[..10].to_vec()],
                &[],
                "13",
                "Unexpected EOF",
            ),
            (
                "a second message over the limit",
                vec![[wire.clone(), frame(0, &[0; 5000])[..64].to_vec()].concat()],
                &[],
                "8",
                "5000 vs. 4096 bytes",
            ),
            (
                "over the limit",
                vec![frame(0, &[0; 5000])[..64].to_vec()],
                &[],
                "8",
                "5000 vs. 4096 bytes",
            ),
            (
                "gzip",
                vec![frame(1, &msg)],
                &[("grpc-encoding", "gzip")],
                "12",
                "gzip",
            ),
        ];
        for (what, parts, extra, want, needle) in refused {
            let mut headers = auth.to_vec();
            headers.extend_from_slice(extra);
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let (code, m, _) = h2_call(&grpc, &headers, &parts, End::Data).await;
            let m = percent_decode(&m);
            assert_eq!(code, want, "{what}: {m}");
            assert!(m.contains(needle), "{what}: {m}");
        }
        // A message that does not parse is refused once it is whole, not when the
        // request ends (here never: the client holds it open) or its deadline passes.
        let t = std::time::Instant::now();
        let (code, m, _) = h2_call(&grpc, &auth, &[&frame(0, &[0xff; 9])], End::Open).await;
        assert_eq!(code, "13", "{m}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    });
    // Only the three whole messages with a token reached the model.
    let ok = v
        .metric(
            "vigil_protocol_requests_total{model=\"iris\",outcome=\"success\",protocol=\"grpc\"}",
        )
        .unwrap_or(0.0);
    assert_eq!(ok, 3.0);
}

/// What is sent, extra headers, the status code expected and words of its message.
type Refusal<'a> = (
    &'a str,
    Vec<Vec<u8>>,
    &'a [(&'a str, &'a str)],
    &'a str,
    &'a str,
);

/// grpc-message is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

//! The retrain hook against real HTTP receivers (a small HTTP/1.1 server in this test),
//! signatures checked by an independent implementation (Python's hmac).

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{python, root, wait_for, Engine, Reserved, TempDir, Vigil};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
    /// When the answer was about to go out.
    at: std::time::Instant,
}

/// A receiver that answers each request with the next scripted (status, delay), then
/// `then` forever, and records what it saw. A delay of [`UNTIL_RELEASED`] holds the
/// answer until the test sets `released`.
#[derive(Clone)]
struct Receiver {
    port: u16,
    script: Arc<Mutex<VecDeque<(u16, Duration)>>>,
    then: Arc<Mutex<u16>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    released: Arc<std::sync::atomic::AtomicBool>,
}

/// A scripted delay that lasts until the test releases the receiver.
const UNTIL_RELEASED: Duration = Duration::MAX;

impl Receiver {
    fn start(script: &[(u16, u64)], then: u16) -> Receiver {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), script, then)
    }

    fn on(listener: TcpListener, script: &[(u16, u64)], then: u16) -> Receiver {
        let r = Receiver {
            port: listener.local_addr().unwrap().port(),
            script: Arc::new(Mutex::new(
                script
                    .iter()
                    .map(|&(s, ms)| (s, Duration::from_millis(ms)))
                    .collect(),
            )),
            then: Arc::new(Mutex::new(then)),
            seen: Arc::default(),
            released: Arc::default(),
        };
        let me = r.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.serve(stream));
            }
        });
        r
    }

    fn serve(&self, mut stream: TcpStream) {
        let Some((path, headers, body)) = read_request(&stream) else {
            return;
        };
        let (status, delay) = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or((*self.then.lock().unwrap(), Duration::ZERO));
        if delay == UNTIL_RELEASED {
            while !self.released.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            std::thread::sleep(delay);
        }
        self.seen.lock().unwrap().push(Seen {
            path,
            headers,
            body,
            answered: status,
            at: std::time::Instant::now(),
        });
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn wait_answered(&self, status: u16, n: usize) -> Vec<Seen> {
        wait_for(60, &format!("{n} requests answered {status}"), || {
            let s = self.seen();
            (s.iter().filter(|x| x.answered == status).count() >= n).then_some(s)
        })
    }
}

/// Reads one HTTP/1.1 request: path, headers (lower-case names) and body.
fn read_request(stream: &TcpStream) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}

/// A receiver that hands every request, unanswered, to the test: the test holds the
/// connection open as long as it likes, then answers it (or never does).
struct Held {
    url: String,
    requests: std::sync::mpsc::Receiver<(Seen, TcpStream)>,
}

impl Held {
    fn start() -> Held {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, requests) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Some((path, headers, body)) = read_request(&stream) else {
                    continue;
                };
                let seen = Seen {
                    path,
                    headers,
                    body,
                    answered: 0,
                    at: std::time::Instant::now(),
                };
                if tx.send((seen, stream)).is_err() {
                    return;
                }
            }
        });
        Held { url, requests }
    }

    fn next(&self, what: &str) -> (Seen, TcpStream) {
        self.requests
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no request from vigil: {what}"))
    }
}

/// Answers a held request with `status` and extra header lines, and closes it.
fn answer(mut stream: TcpStream, status: u16, headers: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\n{headers}content-length: 0\r\nconnection: close\r\n\r\n"
    );
}

/// Checks the Standard Webhooks signature with Python's hmac (independent of vigil).
fn verify_signature(s: &Seen) {
    let check = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, sig = sys.argv[1:5]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.removeprefix("whsec_"))
mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
expected = "v1," + base64.b64encode(mac).decode()
assert sig.split(" ") .count(expected) == 1, (sig, expected)
print("signature ok")
"#;
    let mut child = std::process::Command::new(python())
        .args([
            "-c",
            check,
            SECRET,
            &s.headers["webhook-id"],
            &s.headers["webhook-timestamp"],
            &s.headers["webhook-signature"],
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&s.body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "signature check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn repo(retrain: &str) -> TempDir {
    let dir = TempDir::new("retrain");
    let v = dir.path().join("iris/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(
        root().join("models/iris/1/model.onnx"),
        v.join("model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        root().join("models/iris/1/reference.json"),
        v.join("reference.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("iris/config.toml"),
        format!("[drift]\nwindow_rows = 1000\ndrift_share = 0.25\n\n[retrain]\n{retrain}"),
    )
    .unwrap();
    dir
}

fn trigger(v: &Vigil, reason: &str) -> String {
    let (status, body) = v.post_json("/v2/models/iris/retrain", &json!({"reason": reason}));
    assert_eq!(status, 202, "{body}");
    body["event_id"].as_str().unwrap().to_string()
}

fn events(v: &Vigil) -> Value {
    let (status, body) = v.get("/v2/retrain/events");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn signed_delivery_retries_until_acknowledged() {
    let rx = Receiver::start(&[(500, 0), (503, 0)], 200);
    let repo = repo(&format!("url = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url()));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let id = trigger(&v, "new labels arrived");
    let seen = rx.wait_answered(200, 1);
    assert_eq!(seen.len(), 3, "two failures, then the acknowledged attempt");
    for s in &seen {
        assert_eq!(
            s.headers["webhook-id"], id,
            "the id is stable across retries"
        );
        assert_eq!(s.headers["content-type"], "application/json");
        verify_signature(s);
    }
    let body: Value = serde_json::from_slice(&seen[2].body).unwrap();
    assert_eq!(body["type"], "vigil.retrain.requested");
    assert_eq!(body["data"]["event_id"], id);
    assert_eq!(body["data"]["model"], "iris");
    assert_eq!(body["data"]["model_version"], "1");
    assert_eq!(body["data"]["reason"], "new labels arrived");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(seen[2].body.len() < 20_000);
    let delivered = wait_for(30, "the event to show as delivered", || {
        let e = events(&v);
        (e["delivered"].as_array()?.len() == 1).then_some(e)
    });
    assert_eq!(delivered["delivered"][0]["attempts"], 3);
    assert_eq!(delivered["pending"].as_array().unwrap().len(), 0);
    // The delivery task counts the outcome just after it records it: wait for the count
    // (listing the event as delivered does not mean the counter has moved yet).
    wait_for(30, "the delivery counted", || {
        v.metric(r#"vigil_retrain_deliveries_total{model="iris",outcome="delivered"}"#)
            .filter(|&n| n >= 1.0)
    });
    assert_eq!(
        v.metric(r#"vigil_retrain_deliveries_total{model="iris",outcome="delivered"}"#),
        Some(1.0)
    );
    assert_eq!(
        v.metric(r#"vigil_retrain_deliveries_total{model="iris",outcome="retry"}"#),
        Some(2.0)
    );
    assert_eq!(
        v.metric(r#"vigil_retrain_events_total{model="iris",reason="manual"}"#),
        Some(1.0)
    );
    // Secrets never leak into the API, the metrics or the log.
    let text = v
        .client
        .get(v.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!text.contains("MfKQ9r8"));
    assert!(!events(&v).to_string().contains("MfKQ9r8"));
    assert!(!v.drain_logs().join("\n").contains("MfKQ9r8"));
}

#[test]
fn drift_trip_creates_one_event_and_the_cooldown_holds_the_next() {
    let rx = Receiver::start(&[], 200);
    let repo = repo(&format!(
        "url = \"{}\"\nsecret = \"{SECRET}\"\ncooldown = \"1h\"\n",
        rx.url()
    ));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let train = vigil::monitor::data::read(&root().join("models/iris/1/train.npy")).unwrap();
    let shifted: Vec<f64> = (0..1000)
        .flat_map(|i| {
            let r = &train.values[(i % 150) * 4..(i % 150) * 4 + 4];
            r.iter().map(|x| x + 1.0).collect::<Vec<_>>()
        })
        .collect();
    let body =
        json!({"inputs": [{"name": "X", "shape": [1000, 4], "datatype": "FP32", "data": shifted}]});
    assert_eq!(v.post_json("/v2/models/iris/infer", &body).0, 200);
    let seen = rx.wait_answered(200, 1);
    let ev: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(ev["type"], "vigil.drift.detected");
    assert_eq!(ev["data"]["window"]["rows"], 1000);
    assert!(ev["data"]["drift_share"].as_f64().unwrap() >= 0.25);
    assert_eq!(ev["data"]["features"].as_array().unwrap().len(), 4);
    // Where its data is: without a payload log, the window's time range.
    let refs = &ev["data"]["data"];
    assert_eq!(refs["payload_dir"], Value::Null, "{refs}");
    assert!(refs["from"].as_str().unwrap() <= refs["to"].as_str().unwrap());
    assert_eq!(refs["requests"], json!([]));
    verify_signature(&seen[0]);
    // Back to ok, then drifting again within the cooldown: no second event.
    let normal: Vec<f64> = train.values.iter().cycle().take(4000).copied().collect();
    let ok =
        json!({"inputs": [{"name": "X", "shape": [1000, 4], "datatype": "FP32", "data": normal}]});
    assert_eq!(v.post_json("/v2/models/iris/infer", &ok).0, 200);
    assert_eq!(v.post_json("/v2/models/iris/infer", &body).0, 200);
    // The second trip reaches the retrain hook, which logs that the cooldown holds it
    // (or, were the cooldown broken, creates a second event the receiver would get).
    let mut logs = Vec::new();
    wait_for(30, "the second trip to meet the cooldown", || {
        logs.extend(v.drain_logs());
        let held = logs
            .iter()
            .any(|l| l.contains("drift detected during the retrain cooldown"));
        (held || rx.seen().len() > 1).then_some(())
    });
    assert_eq!(
        v.get("/v2/models/iris/drift").1["versions"][0]["windows"],
        3,
        "the three windows were scored"
    );
    assert_eq!(
        rx.seen().len(),
        1,
        "the cooldown suppressed the second trip"
    );
    assert_eq!(
        v.metric(r#"vigil_retrain_events_total{model="iris",reason="drift"}"#),
        Some(1.0)
    );
    // A manual trigger is always accepted.
    trigger(&v, "");
    rx.wait_answered(200, 2);
}

#[test]
fn receiver_down_then_back_and_slow_receiver() {
    // Down: the port is bound, nothing listens on it yet.
    let (reserved, port) = Reserved::new();
    let url = format!("http://127.0.0.1:{port}/hook");
    let repo = repo(&format!(
        "url = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n"
    ));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let id = trigger(&v, "down");
    let failed = wait_for(20, "a failed attempt", || {
        let e = events(&v);
        let p = e["pending"].as_array()?.first()?.clone();
        (p["attempts"].as_u64()? >= 1).then_some(p)
    });
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{failed}"
    );
    // Back up, but slow on the first request (past the 1 s timeout).
    let rx = Receiver::on(reserved.listen(), &[(200, 2500)], 200);
    let seen = rx.wait_answered(200, 2);
    assert!(seen.iter().all(|s| s.headers["webhook-id"] == id));
    let e = wait_for(20, "delivery", || {
        let e = events(&v);
        (e["delivered"].as_array()?.len() == 1).then_some(e)
    });
    assert!(e["delivered"][0]["attempts"].as_u64().unwrap() >= 3, "{e}");
}

#[test]
fn sigkill_before_delivery_loses_nothing_and_delivers_once() {
    let rx = Receiver::start(&[], 503);
    let repo = repo(&format!("url = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url()));
    let state = TempDir::new("retrain-state");
    let args = ["--state-dir", state.path().to_str().unwrap()];
    let mut v = Vigil::start(repo.path(), Engine::Tract, &args);
    let id = trigger(&v, "crash test");
    rx.wait_answered(503, 1);
    // The attempt's count is on disk (a kill before that write would lose the count of
    // the attempt, not the event: the crash windows are the two tests below).
    wait_for(30, "the failed attempt in the outbox", || {
        (events(&v)["pending"][0]["attempts"] == 1).then_some(())
    });
    v.child.kill().unwrap(); // SIGKILL
    v.child.wait().unwrap();
    // The restarted vigil posts to a receiver that holds the request: while it is in
    // flight the outbox shows what was recorded before the kill. (The retry after the
    // 503 may have been in flight at the kill, unrecorded: at-least-once. Counting the
    // first receiver's requests would race the kill against it.)
    let held = Held::start();
    write_hook(&repo, &held.url);
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    let (again, stream) = held.next("the event after the restart");
    assert_eq!(
        again.headers["webhook-id"], id,
        "the same id after the restart"
    );
    verify_signature(&again);
    let before = events(&v)["pending"][0]["attempts"].as_u64().unwrap();
    let sent = rx.seen().len() as u64;
    assert!(
        (1..=sent).contains(&before),
        "{before} attempts recorded before the kill, {sent} sent"
    );
    answer(stream, 200, "");
    wait_delivered(&v, &id);
    // Attempts count what the receivers saw (the delivery included): the restart's moment
    // before the repository is loaded (no hook known yet) spends none.
    let record = &events(&v)["delivered"][0];
    assert_eq!(record["attempts"].as_u64(), Some(before + 1), "{record}");
    // Once recorded as delivered it is never sent again.
    assert_eq!(listed(&v, "delivered"), [id.as_str()]);
    assert!(
        held.requests.try_recv().is_err(),
        "sent again after its 2xx"
    );
    assert!(
        rx.seen().iter().all(|s| s.answered == 503),
        "the first receiver acknowledged nothing"
    );
}

/// Points iris's retrain hook (signed with [`SECRET`]) at `url`.
fn write_hook(repo: &TempDir, url: &str) {
    std::fs::write(
        repo.path().join("iris/config.toml"),
        format!(
            "[drift]\nwindow_rows = 1000\ndrift_share = 0.25\n\n[retrain]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
}

/// Crash window 1: the event is in the outbox (the trigger's 202 comes after the fsync)
/// and its first attempt is in flight (the receiver holds it, unanswered) when vigil is
/// SIGKILLed. After the restart the event is sent again, same id, and recorded once.
#[test]
fn sigkill_while_the_first_attempt_is_in_flight_loses_nothing() {
    let rx = Held::start();
    let repo = repo(&format!("url = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url));
    let state = TempDir::new("retrain-window1");
    let mut v = Vigil::start(repo.path(), Engine::Tract, &state_args(&state));
    let id = trigger(&v, "crash window 1");
    let (first, held) = rx.next("the first attempt");
    assert_eq!(first.headers["webhook-id"], id);
    let pending = events(&v)["pending"].clone();
    assert_eq!(pending[0]["attempts"], 0, "nothing recorded yet: {pending}");
    v.child.kill().unwrap(); // SIGKILL, the attempt unanswered
    v.child.wait().unwrap();
    drop(held);
    let v = Vigil::start(repo.path(), Engine::Tract, &state_args(&state));
    let (again, stream) = rx.next("the event after the restart");
    assert_eq!(
        again.headers["webhook-id"], id,
        "the same id after the restart"
    );
    verify_signature(&again);
    answer(stream, 200, "");
    wait_delivered(&v, &id);
    assert_eq!(listed(&v, "delivered"), [id.as_str()]);
    assert!(rx.requests.try_recv().is_err(), "sent again after its 2xx");
}

/// Crash window 2: the receiver has answered 2xx but vigil has not recorded the delivery
/// (vigil is frozen with SIGSTOP before the answer goes out and SIGKILLed after it). The
/// event was acknowledged, but vigil cannot know: after the restart it is sent again with
/// the same webhook-id (receivers deduplicate on it), recorded, and never sent a third time.
#[test]
fn sigkill_after_the_receivers_2xx_before_it_is_recorded_resends_the_same_id() {
    let rx = Held::start();
    let repo = repo(&format!("url = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url));
    let state = TempDir::new("retrain-window2");
    let mut v = Vigil::start(repo.path(), Engine::Tract, &state_args(&state));
    let id = trigger(&v, "crash window 2");
    let (first, stream) = rx.next("the first attempt");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(v.pid(), libc::SIGSTOP) }, 0);
    wait_stopped(v.pid());
    answer(stream, 200, "");
    v.child.kill().unwrap(); // SIGKILL (delivered to a stopped process too)
    v.child.wait().unwrap();
    let v = Vigil::start(repo.path(), Engine::Tract, &state_args(&state));
    let (again, stream) = rx.next("the acknowledged event, unrecorded, after the restart");
    assert_eq!(again.headers["webhook-id"], first.headers["webhook-id"]);
    assert_eq!(again.headers["webhook-id"], id);
    assert_eq!(again.body, first.body, "the same event");
    verify_signature(&again);
    answer(stream, 204, "");
    wait_delivered(&v, &id);
    assert_eq!(listed(&v, "delivered"), [id.as_str()]);
    assert!(listed(&v, "pending").is_empty());
    assert!(rx.requests.try_recv().is_err(), "sent a third time");
}

/// Waits until every thread of `pid` is stopped (SIGSTOP takes effect asynchronously).
fn wait_stopped(pid: i32) {
    wait_for(10, "vigil to stop", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for t in tasks {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next()?.split_whitespace().next()?;
            if state != "T" && state != "t" {
                return None;
            }
        }
        Some(())
    });
}

/// Every retryable answer (408, 409, 429, 5xx) is retried; a `Retry-After` longer than
/// the backoff is waited for; after `max_attempts` attempts the event is a dead letter.
#[test]
fn retryable_answers_are_retried_up_to_max_attempts_honouring_retry_after() {
    let rx = Held::start();
    let repo = repo(&format!(
        "url = \"{}\"\nsecret = \"{SECRET}\"\nmax_attempts = 4\n",
        rx.url
    ));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let id = trigger(&v, "retries");
    // The first backoff is at most 1 s: a 2 s Retry-After must win.
    let answers = [(429, "retry-after: 2\r\n"), (408, ""), (409, ""), (503, "")];
    let mut at = Vec::new();
    for (n, (status, headers)) in answers.iter().enumerate() {
        let (seen, stream) = rx.next(&format!("attempt {}, to be answered {status}", n + 1));
        assert_eq!(seen.headers["webhook-id"], id);
        at.push(seen.at);
        answer(stream, *status, headers);
    }
    let dead = wait_for(30, "the dead letter", || {
        let e = events(&v);
        e["dead_letters"].as_array()?.first().cloned()
    });
    assert_eq!(dead["id"], id.as_str());
    assert_eq!(dead["attempts"], 4, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("503"),
        "{dead}"
    );
    assert!(rx.requests.try_recv().is_err(), "a fifth attempt");
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_millis(1950),
        "Retry-After: 2 not honoured: the second attempt came {gap:?} after the first"
    );
}

/// A hook that answers `303 See Other` (a proxy's http-to-https or trailing-slash
/// redirect) has not received the event: followed, the POST became a bodiless, unsigned GET
/// whose 2xx marked the event delivered. Redirects are not followed; the event stays
/// pending, the answer in its `last_error`.
#[test]
fn a_redirect_is_not_a_delivery() {
    let rx = Held::start();
    let repo = repo(&format!(
        "url = \"{}\"\nsecret = \"{SECRET}\"\nmax_attempts = 2\n",
        rx.url
    ));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let id = trigger(&v, "redirected");
    // Each attempt is redirected; a followed redirect would come as a GET of /elsewhere.
    for n in 1..=2 {
        let (seen, stream) = rx.next(&format!("attempt {n}, to be redirected"));
        assert_eq!(seen.path, "/hook", "the redirect was followed");
        assert_eq!(seen.headers["webhook-id"], id);
        answer(stream, 303, "location: /elsewhere\r\n");
    }
    let dead = wait_for(10, "the dead letter", || {
        let e = events(&v);
        e["dead_letters"].as_array()?.first().cloned()
    });
    assert_eq!(dead["id"], id.as_str(), "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("303"),
        "{dead}"
    );
    assert!(events(&v)["delivered"].as_array().unwrap().is_empty());
}

#[test]
fn dead_letter_and_replay() {
    let rx = Receiver::start(&[(400, 0)], 200);
    let repo = repo(&format!(
        "url = \"{}\"\nsecret = \"{SECRET}\"\nmax_attempts = 3\n",
        rx.url()
    ));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let id = trigger(&v, "");
    let e = wait_for(20, "a dead letter", || {
        let e = events(&v);
        (e["dead_letters"].as_array()?.len() == 1).then_some(e)
    });
    assert_eq!(rx.seen().len(), 1, "a 400 is not retried");
    assert!(e["dead_letters"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("400"));
    // The gauge follows the outbox (exported right after the move).
    wait_for(10, "the dead-letter gauge at 1", || {
        (v.metric(r#"vigil_retrain_dead_letters{model="iris"}"#) == Some(1.0)).then_some(())
    });
    // Unknown id: 404. Replay: delivered.
    assert_eq!(
        v.post_json("/v2/retrain/dead-letters/evt_nope/replay", &json!({}))
            .0,
        404
    );
    let (status, body) = v.post_json(&format!("/v2/retrain/dead-letters/{id}/replay"), &json!({}));
    assert_eq!(status, 200, "{body}");
    rx.wait_answered(200, 1);
    wait_for(10, "the replayed event delivered", || {
        (events(&v)["delivered"].as_array()?.len() == 1).then_some(())
    });
    wait_for(10, "the dead-letter gauge back at 0", || {
        (v.metric(r#"vigil_retrain_dead_letters{model="iris"}"#) == Some(0.0)).then_some(())
    });
    // Retrain needs a hook: a model without one is a 400.
    let bare = TempDir::new("bare");
    std::fs::create_dir_all(bare.path().join("iris/1")).unwrap();
    std::fs::copy(
        root().join("models/iris/1/model.onnx"),
        bare.path().join("iris/1/model.onnx"),
    )
    .unwrap();
    let v = Vigil::start(bare.path(), Engine::Tract, &[]);
    let (status, body) = v.post_json("/v2/models/iris/retrain", &json!({}));
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("no retrain hook"),
        "{body}"
    );
}

#[test]
fn airflow_format_triggers_a_dag_run() {
    let rx = Receiver::start(&[(409, 0)], 200);
    let base = format!("http://127.0.0.1:{}", rx.port);
    let repo = repo(&format!("url = \"{base}\"\nformat = \"airflow\"\ndag_id = \"retrain_iris\"\ntoken = \"airflow-token\"\n"));
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let id = trigger(&v, "airflow");
    let seen = rx.wait_answered(409, 1);
    let s = &seen[0];
    assert_eq!(s.path, "/api/v2/dags/retrain_iris/dagRuns");
    assert_eq!(s.headers["authorization"], "Bearer airflow-token");
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(body["dag_run_id"], id);
    assert_eq!(body["logical_date"], Value::Null);
    assert_eq!(body["conf"]["model"], "iris");
    // 409 (the run exists) counts as delivered.
    wait_for(10, "delivered", || {
        (events(&v)["delivered"].as_array()?.len() == 1).then_some(())
    });
    assert_eq!(rx.seen().len(), 1);
}

/// Alertmanager's webhook (payload version 4): a firing alert becomes one drift event
/// whose id comes from the alert's fingerprint and startsAt; the same notification again
/// is a duplicate; resolved alerts, alerts without a model label and bad payloads are
/// refused or skipped with a reason; the admin token is required.
#[test]
fn alertmanager_notifications_become_one_event() {
    let rx = Receiver::start(&[], 200);
    let repo = repo(&format!(
        "url = \"{}\"\nsecret = \"{SECRET}\"\ntrigger = \"fleet\"\n",
        rx.url()
    ));
    let v = Vigil::start(repo.path(), Engine::Tract, &["--admin-token", "am-token"]);
    let alert = |status: &str, fingerprint: &str, labels: Value| {
        json!({
            "status": status,
            "labels": labels,
            "annotations": {"summary": "fleet PSI high"},
            "startsAt": "2026-12-03T17:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fingerprint,
        })
    };
    let payload = |alerts: Vec<Value>| {
        json!({
            "version": "4", "groupKey": "{}:{model=\"iris\"}", "truncatedAlerts": 0,
            "status": "firing", "receiver": "vigil", "groupLabels": {"model": "iris"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": alerts,
        })
    };
    let post = |body: &Value, token: Option<&str>| -> (u16, Value) {
        let mut r = v.client.post(v.url("/v2/retrain/alertmanager")).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    };
    let firing = payload(vec![
        alert(
            "firing",
            "a1b2c3",
            json!({"alertname": "VigilFleetDrift", "model": "iris", "version": "1"}),
        ),
        alert(
            "resolved",
            "ffff",
            json!({"alertname": "VigilFleetDrift", "model": "iris"}),
        ),
        alert("firing", "eeee", json!({"alertname": "Other"})),
        alert(
            "firing",
            "dddd",
            json!({"alertname": "VigilFleetDrift", "model": "nosuch"}),
        ),
    ]);
    assert_eq!(post(&firing, None).0, 401);
    assert_eq!(post(&firing, Some("wrong")).0, 401);
    let (status, first) = post(&firing, Some("am-token"));
    assert_eq!(status, 200, "{first}");
    let outcomes: Vec<&str> = first["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["created", "skipped", "skipped", "no_hook"],
        "{first}"
    );
    let id = first["alerts"][0]["event_id"].as_str().unwrap().to_string();
    // Alertmanager repeats the notification: the same event, not a second one.
    let (_, again) = post(&firing, Some("am-token"));
    assert_eq!(again["alerts"][0]["outcome"], "duplicate");
    assert_eq!(again["alerts"][0]["event_id"], id.as_str());
    let seen = rx.wait_answered(200, 1);
    assert_eq!(seen.len(), 1);
    verify_signature(&seen[0]);
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["type"], "vigil.drift.detected");
    assert_eq!(body["data"]["event_id"], id.as_str());
    assert_eq!(body["data"]["model_version"], "1");
    assert!(body["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("VigilFleetDrift firing since 2026-12-03T17:00:00.000Z"));
    // A new firing (another startsAt) of the same alert is a new shift: the cooldown holds it.
    let mut later = firing.clone();
    later["alerts"] = json!([alert(
        "firing",
        "a1b2c3",
        json!({"alertname": "VigilFleetDrift", "model": "iris", "version": "1"})
    )]);
    later["alerts"][0]["startsAt"] = json!("2026-12-03T18:00:00.000Z");
    let (_, held) = post(&later, Some("am-token"));
    assert_eq!(held["alerts"][0]["outcome"], "cooldown", "{held}");
    // Not Alertmanager's payload.
    let mut v3 = firing.clone();
    v3["version"] = json!("3");
    let (status, err) = post(&v3, Some("am-token"));
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("version"), "{err}");
    assert_eq!(post(&json!([1, 2]), Some("am-token")).0, 400);
    let listed: Value = v
        .client
        .get(v.url("/v2/retrain/events"))
        .bearer_auth("am-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = ["pending", "delivered"]
        .iter()
        .flat_map(|k| listed[k].as_array().unwrap())
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
}

/// With trigger = "fleet", a version without a reference.json cannot serve: the fleet's
/// bins would not agree. The repository index says why.
#[test]
fn fleet_trigger_needs_a_reference_json() {
    let rx = Receiver::start(&[], 200);
    let repo = repo(&format!("url = \"{}\"\ntrigger = \"fleet\"\n", rx.url()));
    std::fs::create_dir_all(repo.path().join("iris/2")).unwrap();
    std::fs::copy(
        root().join("models/iris/1/model.onnx"),
        repo.path().join("iris/2/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("iris/config.toml"),
        format!(
            "[version_policy]\nall = true\n\n[retrain]\nurl = \"{}\"\ntrigger = \"fleet\"\n",
            rx.url()
        ),
    )
    .unwrap();
    let v = Vigil::start(repo.path(), Engine::Tract, &[]);
    let (status, index) = v.post_json("/v2/repository/index", &json!({}));
    assert_eq!(status, 200);
    let v2 = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "2")
        .unwrap();
    assert_eq!(v2["state"], "UNAVAILABLE");
    assert!(
        v2["reason"]
            .as_str()
            .unwrap()
            .contains("needs a reference.json"),
        "{v2}"
    );
    let v1 = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "1")
        .unwrap();
    assert_eq!(v1["state"], "READY");
}

/// What a receiver answered, in order: (status, webhook id, when).
type Answered = Arc<Mutex<Vec<(u16, String, std::time::Instant)>>>;

/// A receiver whose first answer is a 503 with an absurd `Retry-After`; every later one
/// is 200. Returns its URL and the webhook ids it acknowledged.
fn absurd_retry_after_receiver(retry_after: &'static str, refusals: usize) -> (String, Answered) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let answered: Answered = Arc::default();
    let seen = answered.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut id = String::new();
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line.trim_end() != "" {
                let l = line.trim_end().to_ascii_lowercase();
                if let Some(v) = l.strip_prefix("webhook-id:") {
                    id = v.trim().to_string();
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let mut stream = stream;
            let now = std::time::Instant::now();
            if n < refusals {
                let _ = write!(
                    stream,
                    "HTTP/1.1 503 X\r\nretry-after: {retry_after}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                seen.lock().unwrap().push((503, id, now));
            } else {
                seen.lock().unwrap().push((200, id, now));
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        }
    });
    (url, answered)
}

#[test]
fn an_absurd_retry_after_never_stops_delivery() {
    for retry_after in [
        "1e20",
        "99999999999999999999999",
        "-7",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        let (url, answered) = absurd_retry_after_receiver(retry_after, 1);
        let acked = |id: &str| {
            answered
                .lock()
                .unwrap()
                .iter()
                .any(|(status, seen, _)| *status == 200 && seen == id)
        };
        let repo = repo(&format!("url = \"{url}\"\nsecret = \"{SECRET}\"\n"));
        let state = TempDir::new("state");
        let state_arg = state.path().to_str().unwrap().to_string();
        let args = ["--state-dir", state_arg.as_str()];
        let v = Vigil::start(repo.path(), Engine::Tract, &args);
        // The first event meets the absurd answer and waits at most the retry cap.
        let first = trigger(&v, "first");
        wait_for(20, "the first attempt to be answered", || {
            let a = answered.lock().unwrap();
            let (status, id, _) = a.first()?;
            (*status == 503 && *id == first).then_some(())
        });
        // The delivery task is alive: a second event is delivered.
        let second = trigger(&v, "second");
        wait_for(
            20,
            &format!("the second event delivered ({retry_after})"),
            || acked(&second).then_some(()),
        );
        // The receiver counts its acknowledgement before vigil has read it: what follows
        // reads vigil's outbox, so wait until vigil has recorded the delivery.
        wait_delivered(&v, &second);
        // The first event is either still waiting, at most the retry cap, or (for a
        // negative value, read as "now") already delivered on its retry.
        let e = events(&v);
        for p in e["pending"].as_array().unwrap() {
            assert_eq!(p["id"], first.as_str(), "{e}");
            let wait = p["next_attempt"].as_f64().unwrap() - p["created_at"].as_f64().unwrap();
            assert!(
                // The cap (300 s) from the attempt, which may come a little after
                // the event's creation on a loaded machine.
                (0.0..=330.0).contains(&wait),
                "{retry_after}: waits {wait} s"
            );
        }
        assert_eq!(
            v.metric(r#"vigil_task_panics_total{task="retrain_delivery"}"#),
            Some(0.0)
        );
        // A restart with the same event pending starts and serves.
        drop(v);
        let v = Vigil::start(repo.path(), Engine::Tract, &args);
        let third = trigger(&v, "third");
        wait_for(20, "the third event delivered after the restart", || {
            acked(&third).then_some(())
        });
    }
}

/// Reasons are free text: multi-byte characters put cut points inside a character.
const UNICODE_REASON: &str = "d\u{e9}rive \u{65e5}\u{672c} \u{1f980} after the relabelling";

fn state_args(state: &TempDir) -> [&str; 2] {
    ["--state-dir", state.path().to_str().unwrap()]
}

/// Event ids listed under `state` ("pending", "delivered", "dead_letters"), sorted.
fn listed(v: &Vigil, state: &str) -> Vec<String> {
    let mut ids: Vec<String> = events(v)[state]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn wait_delivered(v: &Vigil, id: &str) {
    wait_for(30, &format!("{id} listed as delivered"), || {
        listed(v, "delivered").iter().any(|d| d == id).then_some(())
    });
}

/// After two restarts, exactly `want` are listed, all delivered.
fn assert_listed_after_restarts(repo: &TempDir, state: &TempDir, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    for restart in 0..2 {
        let v = Vigil::start(repo.path(), Engine::Tract, &state_args(state));
        assert_eq!(listed(&v, "delivered"), want, "restart {restart}");
        assert!(listed(&v, "pending").is_empty(), "restart {restart}");
        assert!(listed(&v, "dead_letters").is_empty(), "restart {restart}");
    }
}

/// The ids of the events the receiver acknowledged, sorted, once each.
fn acknowledged(rx: &Receiver) -> Vec<String> {
    let mut sent: Vec<String> = rx
        .seen()
        .iter()
        .filter(|s| s.answered == 200)
        .map(|s| s.headers["webhook-id"].clone())
        .collect();
    sent.sort();
    sent.dedup();
    sent
}

/// A crash mid-append leaves a torn last record in `outbox.jsonl`, cut anywhere (inside a
/// multi-byte character too). vigil starts, the next event is written on a line of its
/// own, and every acknowledged event is listed and delivered across two restarts.
#[test]
fn a_torn_outbox_record_loses_no_acknowledged_event() {
    let rx = Receiver::start(&[], 200);
    let repo = repo(&format!("url = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url()));
    // The log of one acknowledged, delivered event, as vigil writes it.
    let seed = TempDir::new("retrain-seed");
    let a = {
        let v = Vigil::start(repo.path(), Engine::Tract, &state_args(&seed));
        let a = trigger(&v, UNICODE_REASON);
        wait_delivered(&v, &a);
        a
    };
    let seed_log = std::fs::read(seed.path().join("retrain/outbox.jsonl")).unwrap();
    // The torn record: another event's create record, cut by the crash.
    let create = seed_log
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(b"{\"op\":\"create\""))
        .unwrap();
    let torn = String::from_utf8(create.to_vec())
        .unwrap()
        .replace(&a, "evt_ffffffffffffffffffffffffffffffff")
        .into_bytes();
    let at = |needle: &str| {
        let n = needle.as_bytes();
        torn.windows(n.len()).position(|w| w == n).unwrap()
    };
    let cuts = [
        1,
        at("\u{e9}") + 1,    // inside é (2 bytes)
        at("\u{65e5}") + 2,  // inside 日 (3 bytes)
        at("\u{1f980}") + 3, // inside the emoji (4 bytes)
        torn.len(),          // the whole record but its newline
    ];
    let inside_a_char = cuts
        .iter()
        .filter(|&&c| std::str::from_utf8(&torn[..c]).is_err())
        .count();
    assert_eq!(inside_a_char, 3);
    let mut all = vec![a.clone()];
    for cut in cuts {
        let state = TempDir::new("retrain-torn");
        std::fs::create_dir_all(state.path().join("retrain")).unwrap();
        let mut log = seed_log.clone();
        log.extend_from_slice(&torn[..cut]);
        std::fs::write(state.path().join("retrain/outbox.jsonl"), &log).unwrap();
        let b = {
            let v = Vigil::start(repo.path(), Engine::Tract, &state_args(&state));
            let b = trigger(&v, UNICODE_REASON);
            wait_delivered(&v, &b);
            b
        };
        assert_listed_after_restarts(&repo, &state, &[&a, &b]);
        all.push(b);
    }
    all.sort();
    assert_eq!(
        acknowledged(&rx),
        all,
        "each acknowledged event reached the receiver"
    );
    let s = rx.seen().last().unwrap().clone();
    verify_signature(&s);
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(body["data"]["reason"], UNICODE_REASON);
}

/// Lowers (or lifts, with `None`) the soft file-size limit of a running process: its
/// writes past `bytes` fail with EFBIG, as on a full disk.
fn limit_file_size(pid: i32, bytes: Option<u64>) {
    let lim = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system call on a live child of this process; pointers are valid.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// An append that fails half-way (here: the file-size limit, as a full disk would) is a
/// 5xx, not a 202, and leaves nothing behind: nothing unacknowledged is listed or
/// delivered, and the next event, once the cause is gone, is kept across restarts.
#[test]
fn a_failed_outbox_append_is_a_5xx_and_leaves_nothing_behind() {
    // vigil ignores SIGXFSZ itself, so a write past the limit fails with EFBIG instead of
    // killing it: this test process leaves the signal at its default for the child.
    let rx = Receiver::start(&[], 200);
    let repo = repo(&format!("url = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url()));
    let state = TempDir::new("retrain-full");
    let log = state.path().join("retrain/outbox.jsonl");
    let (a, c, d) = {
        let v = Vigil::start(repo.path(), Engine::Tract, &state_args(&state));
        let a = trigger(&v, UNICODE_REASON);
        wait_delivered(&v, &a);
        let len = std::fs::metadata(&log).unwrap().len();
        // Room for part of the next record only.
        limit_file_size(v.pid(), Some(len + 40));
        let (status, body) = v.post_json(
            "/v2/models/iris/retrain",
            &json!({"reason": UNICODE_REASON}),
        );
        assert_eq!(status, 500, "{body}");
        assert!(body["error"].as_str().unwrap().contains("outbox"), "{body}");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), len, "rolled back");
        // Alertmanager's webhook too: a 5xx, so Alertmanager sends it again.
        let alert = json!({"version": "4", "status": "firing", "alerts": [{
            "status": "firing", "fingerprint": "f00d", "startsAt": "2026-12-03T17:00:00Z",
            "labels": {"alertname": "VigilFleetDrift", "model": "iris"}}]});
        let (status, body) = v.post_json("/v2/retrain/alertmanager", &alert);
        assert_eq!(status, 500, "{body}");
        assert_eq!(std::fs::metadata(&log).unwrap().len(), len, "rolled back");
        assert_eq!(listed(&v, "delivered"), [a.as_str()]);
        assert!(listed(&v, "pending").is_empty());
        // The cause goes away: the next event is accepted and kept.
        limit_file_size(v.pid(), None);
        let c = trigger(&v, UNICODE_REASON);
        wait_delivered(&v, &c);
        // The receiver acknowledges but the outbox cannot record it: the delivery task
        // tries again (the receiver deduplicates on webhook-id), pausing between tries,
        // and records the delivery once it can. The receiver holds the first POST until
        // the limit is in place.
        rx.script.lock().unwrap().push_back((200, UNTIL_RELEASED));
        let d = trigger(&v, "recorded late");
        limit_file_size(v.pid(), Some(std::fs::metadata(&log).unwrap().len()));
        rx.released.store(true, std::sync::atomic::Ordering::SeqCst);
        let posts = wait_for(30, "three unrecorded deliveries", || {
            let at: Vec<_> = rx
                .seen()
                .iter()
                .filter(|s| s.headers["webhook-id"] == d)
                .map(|s| s.at)
                .collect();
            (at.len() >= 3).then_some(at)
        });
        for w in posts.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_millis(900),
                "no pause between tries: {:?}",
                w[1] - w[0]
            );
        }
        assert!(!listed(&v, "delivered").contains(&d));
        limit_file_size(v.pid(), None);
        wait_delivered(&v, &d);
        (a, c, d)
    };
    assert_listed_after_restarts(&repo, &state, &[&a, &c, &d]);
    let mut want = vec![a, c, d];
    want.sort();
    assert_eq!(
        acknowledged(&rx),
        want,
        "nothing unacknowledged was delivered"
    );
}

/// A receiver that asks for no wait at all (`Retry-After: 0`, a negative value, a past
/// date) gets the backoff anyway: a blip must not burn every attempt in milliseconds.
#[test]
fn a_zero_retry_after_still_backs_off() {
    for retry_after in ["0", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let (url, answered) = absurd_retry_after_receiver(retry_after, 2);
        let repo = repo(&format!("url = \"{url}\"\nmax_attempts = 3\n"));
        let v = Vigil::start(repo.path(), Engine::Tract, &[]);
        let id = trigger(&v, "blip");
        let seen = wait_for(30, "the third attempt", || {
            let a = answered.lock().unwrap().clone();
            (a.len() >= 3).then_some(a)
        });
        assert_eq!(
            seen[2].0, 200,
            "delivered on the third attempt ({retry_after})"
        );
        assert!(seen.iter().all(|(_, seen_id, _)| *seen_id == id));
        // backoff(1) and backoff(2) are at least 0.5 s and 1 s.
        let gaps: Vec<f64> = seen
            .windows(2)
            .map(|w| (w[1].2 - w[0].2).as_secs_f64())
            .collect();
        assert!(
            gaps[0] >= 0.45 && gaps[1] >= 0.9,
            "{retry_after}: attempts {gaps:?} s apart"
        );
    }
}

/// An event whose model has no hook configured (at a restart before the repository is
/// loaded, or after its config dropped the hook) waits without spending attempts: the
/// outbox's attempt count is what the receiver saw.
#[test]
fn no_hook_configured_spends_no_attempt() {
    let rx = Receiver::start(&[], 503);
    let hook = format!("url = \"{}\"\nsecret = \"{SECRET}\"\n", rx.url());
    let repo = repo(&hook);
    let config = repo.path().join("iris/config.toml");
    let with_hook = std::fs::read_to_string(&config).unwrap();
    let state = TempDir::new("retrain-state");
    let args = [
        "--state-dir",
        state.path().to_str().unwrap(),
        "--poll-interval",
        "100ms",
    ];
    let mut v = Vigil::start(repo.path(), Engine::Tract, &args);
    trigger(&v, "no hook later");
    rx.wait_answered(503, 1);
    // The failure is on disk before the kill (a kill between the receiver's answer and
    // that write loses the count of the attempt, not the event: at-least-once).
    wait_for(30, "the failed attempt in the outbox", || {
        (events(&v)["pending"][0]["attempts"] == 1).then_some(())
    });
    v.child.kill().unwrap();
    v.child.wait().unwrap();
    // The model comes back without a hook.
    std::fs::write(&config, "").unwrap();
    let v = Vigil::start(repo.path(), Engine::Tract, &args);
    let pending = wait_for(30, "the event to meet the missing hook", || {
        let p = events(&v)["pending"][0].clone();
        (p["last_error"] == "no retrain hook configured now").then_some(p)
    });
    // What was recorded before the kill, and no more: the retry after the 503 may have
    // been in flight at the kill, sent but unrecorded (at-least-once), never recorded
    // without being sent.
    let before = pending["attempts"].as_u64().unwrap();
    let sent = rx.seen().len() as u64;
    assert!(
        (1..=sent).contains(&before),
        "{before} attempts recorded, {sent} sent: {pending}"
    );
    // The hook is back, on a receiver of its own (a request the killed process had in
    // flight can only reach the first one): delivered, and the count is what was recorded
    // before plus what this receiver saw.
    let back = Receiver::start(&[], 200);
    std::fs::write(&config, with_hook.replace(&rx.url(), &back.url())).unwrap();
    back.wait_answered(200, 1);
    let delivered = wait_for(30, "delivered", || {
        let d = events(&v)["delivered"][0].clone();
        d.is_object().then_some(d)
    });
    assert_eq!(
        delivered["attempts"].as_u64(),
        Some(before + back.seen().len() as u64),
        "{delivered}"
    );
}

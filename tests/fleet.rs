//! A fleet on loopback: three vigil replicas behind nginx (round robin), a real Prometheus
//! scraping them every second with `grafana/prometheus/vigil-fleet-rules.yml`, a real
//! Alertmanager routing `VigilFleetDrift` through nginx to `POST /v2/retrain/alertmanager`,
//! and a signed-webhook receiver in this test.
//!
//! Checks: the since-start fleet PSI equals numpy's PSI over the union of all rows sent;
//! a shift no replica's own window sees (`window_rows` far above what a replica gets)
//! trips the fleet alert; the receiver gets exactly one retrain event although
//! Alertmanager notifies repeatedly; a replica SIGKILLed while its event is still pending
//! (the receiver answering 503) delivers that event from its durable outbox after a
//! restart, and the fleet view carries on from the other two meanwhile. Every process
//! binds port 0 (or, nginx, a socket the test bound) and the test reads the port back.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{iris_training_rows, logged_port, python, root, wait_for, Engine, TempDir, Vigil};
use serde_json::{json, Value};
use vigil::rng::Rng;

const TOKEN: &str = "fleet-admin-token";
const SECRET: &str = "whsec_ZmxlZXQtd2ViaG9vay1zZWNyZXQtMTIzNDU2";

/// A child process stopped when the test ends: SIGTERM first (nginx's master then takes
/// its workers down with it; a SIGKILLed master would leave them running), SIGKILL after
/// 5 s.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(what: &'static str, cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e} (run scripts/setup-test-deps.sh)"));
    Proc(child)
}

/// Deliveries the receiver got: (webhook-id, body).
type Deliveries = Arc<Mutex<Vec<(String, Value)>>>;

/// The test's webhook receiver.
struct Hook {
    port: u16,
    /// Correctly signed deliveries it accepted (200).
    delivered: Deliveries,
    /// Correctly signed deliveries it refused (503) while `refuse` was set.
    refused: Deliveries,
    /// Down for maintenance: answer 503 to everything.
    refuse: Arc<AtomicBool>,
}

/// A webhook receiver that checks Standard Webhooks signatures and answers 200 (503
/// while its `refuse` flag is set).
fn receiver() -> Hook {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Deliveries = Arc::default();
    let refused: Deliveries = Arc::default();
    let refuse = Arc::new(AtomicBool::new(false));
    let (seen, turned_away, down) = (got.clone(), refused.clone(), refuse.clone());
    std::thread::spawn(move || {
        use base64::Engine as _;
        use hmac::Mac;
        let key = base64::engine::general_purpose::STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = std::collections::HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let header = |k: &str| headers.get(k).cloned().unwrap_or_default();
            let (id, ts) = (header("webhook-id"), header("webhook-timestamp"));
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(&body);
            let want = format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            );
            let ok = header("webhook-signature").split(' ').any(|s| s == want);
            if !ok {
                eprintln!("receiver: bad signature on {id}: {headers:?}");
            }
            let down = down.load(Ordering::SeqCst);
            let status = match (ok, down) {
                (false, _) => "401 Unauthorized",
                (true, true) => "503 Service Unavailable",
                (true, false) => "200 OK",
            };
            if ok {
                let to = if down { &turned_away } else { &seen };
                to.lock()
                    .unwrap()
                    .push((id, serde_json::from_slice(&body).unwrap()));
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    Hook {
        port,
        delivered: got,
        refused,
        refuse,
    }
}

fn repository(receiver_port: u16) -> TempDir {
    iris_with_hook(
        "fleet-repo",
        receiver_port,
        "trigger = \"fleet\"\n\n[drift]\nwindow_rows = 1000000\n",
    )
}

fn replica(repo: &Path, state: &Path) -> Vigil {
    Vigil::start(
        repo,
        Engine::Tract,
        &[
            "--admin-token",
            TOKEN,
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
}

/// nginx on `listener`, a socket the test bound on port 0 (nginx refuses `listen ...:0`):
/// the child inherits it and nginx takes it over, as in its binary upgrade, through the
/// `NGINX` variable naming the descriptor.
fn nginx(dir: &Path, listener: TcpListener, replicas: &[&str]) -> Proc {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let port = listener.local_addr().unwrap().port();
    let servers: String = replicas
        .iter()
        .map(|a| format!("    server {a} max_fails=1 fail_timeout=30s;\n"))
        .collect();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream vigil {{\n{servers}    keepalive 16;\n  }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://vigil;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_connect_timeout 1s;\n\
               proxy_next_upstream error timeout http_502 non_idempotent;\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    });
    cmd.arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .env("NGINX", format!("{fd};"));
    // SAFETY: between fork and exec the closure only calls fcntl(2), which is
    // async-signal-safe; it keeps the listening socket open across exec in this child
    // alone (the parent's copy stays close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = spawn("nginx", &mut cmd, &dir.join("nginx.log"));
    drop(listener);
    proc
}

/// The shipped rules with a 20 s window and a 2 s `for:` (the test's time scale).
fn test_rules(dir: &Path) -> PathBuf {
    let rules =
        std::fs::read_to_string(root().join("grafana/prometheus/vigil-fleet-rules.yml")).unwrap();
    assert!(
        rules.contains("[10m]")
            && rules.contains("for: 1m")
            && rules.contains("data_window: \"11m\"")
    );
    let rules = rules
        .replace("[10m]", "[20s]")
        .replace("for: 1m", "for: 2s")
        .replace("data_window: \"11m\"", "data_window: \"22s\"");
    let path = dir.join("fleet-rules.yml");
    std::fs::write(&path, rules).unwrap();
    path
}

/// Prometheus on port 0; returns it and the port it reports.
fn prometheus(dir: &Path, am_port: u16, targets: &[&str]) -> (Proc, u16) {
    let rules = test_rules(dir);
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let conf = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\n\
         scrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: [{}]\n",
        rules.display(),
        targets.join(", ")
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, conf).unwrap();
    let log = dir.join("prometheus.log");
    let proc = spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0"),
        &log,
    );
    let port = logged_port(&log, "msg=\"Listening on\" address=", 60);
    (proc, port)
}

/// Alertmanager on port 0; returns it and the port it reports.
fn alertmanager(dir: &Path, nginx_port: u16) -> (Proc, u16) {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let conf = [
        "route:".to_string(),
        "  receiver: vigil".into(),
        "  group_by: [model, version]".into(),
        "  group_wait: 1s".into(),
        "  group_interval: 1s".into(),
        "  repeat_interval: 3s".into(),
        "receivers:".into(),
        "  - name: vigil".into(),
        "    webhook_configs:".into(),
        format!("      - url: http://127.0.0.1:{nginx_port}/v2/retrain/alertmanager"),
        "        send_resolved: false".into(),
        "        http_config:".into(),
        "          authorization:".into(),
        "            type: Bearer".into(),
        format!("            credentials_file: {}", token.display()),
    ]
    .join("\n");
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, conf).unwrap();
    let log = dir.join("alertmanager.log");
    let proc = spawn(
        "alertmanager",
        Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.path={}", dir.join("am").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--cluster.listen-address="),
        &log,
    );
    let port = logged_port(&log, "msg=\"Listening on\" address=", 60);
    (proc, port)
}

/// An instant query: (labels, value) per series.
fn query(client: &reqwest::blocking::Client, port: u16, q: &str) -> Vec<(Value, f64)> {
    let r: Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null);
    r["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["metric"].clone(),
                        s["value"][1].as_str().unwrap().parse().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Input features' values by name; every series must carry `side="input"` (the rules
/// keep the side, so an output's `f0` can never be summed into an input's).
fn per_feature(series: Vec<(Value, f64)>) -> std::collections::BTreeMap<String, f64> {
    series
        .into_iter()
        .map(|(m, v)| {
            assert_eq!(m["side"], "input", "a fleet series without its side: {m}");
            (m["feature"].as_str().unwrap_or("").to_string(), v)
        })
        .collect()
}

/// iris training rows resampled, each feature shifted by `shift` standard deviations.
fn rows(rng: &mut Rng, n: usize, shift: f64) -> Vec<[f32; 4]> {
    let train = iris_training_rows();
    let std: Vec<f64> = (0..4)
        .map(|j| {
            let xs: Vec<f64> = train.iter().map(|r| r[j]).collect();
            vigil::monitor::stats::mean_std(&xs).1
        })
        .collect();
    (0..n)
        .map(|_| {
            let r = train[rng.below(train.len() as u64) as usize];
            std::array::from_fn(|j| (r[j] + shift * std[j]) as f32)
        })
        .collect()
}

fn send(client: &reqwest::blocking::Client, url: &str, batch: &[[f32; 4]]) -> u16 {
    let data: Vec<f32> = batch.iter().flatten().copied().collect();
    let body = json!({"inputs": [{"name": "X", "shape": [batch.len(), 4], "datatype": "FP32", "data": data}]});
    client
        .post(format!("{url}/v2/models/iris/infer"))
        .json(&body)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// numpy's PSI and scipy's Jensen-Shannon distance over `rows` against reference.json,
/// per feature (tests/python/fleet_psi.py).
fn oracle(dir: &Path, rows: &[[f32; 4]]) -> Value {
    let input = dir.join("rows.json");
    std::fs::write(&input, serde_json::to_vec(&rows).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(root().join("tests/python/fleet_psi.py"))
        .arg(root().join("models/iris/1/reference.json"))
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The ids of a replica's retrain events in the given states (`pending`, `delivered`,
/// `dead_letters`).
fn ids_in(v: &Vigil, states: &[&str]) -> Vec<String> {
    let r = v
        .client
        .get(v.url("/v2/retrain/events"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev: Value = r.json().unwrap();
    states
        .iter()
        .flat_map(|k| ev[k].as_array().cloned().unwrap_or_default())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn event_ids(v: &Vigil) -> Vec<String> {
    ids_in(v, &["pending", "delivered", "dead_letters"])
}

/// A counter of Alertmanager's own `/metrics` (0 when absent).
fn am_counter(client: &reqwest::blocking::Client, port: u16, line_start: &str) -> Option<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    Some(
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0),
    )
}

#[test]
fn three_replicas_one_fleet_view_one_retrain() {
    let work = TempDir::new("fleet");
    let hook = receiver();
    let deliveries = hook.delivered.clone();
    let repo = repository(hook.port);
    let states: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("fleet-state{i}")))
        .collect();
    let mut replicas: Vec<Option<Vigil>> = states
        .iter()
        .map(|s| Some(replica(repo.path(), s.path())))
        .collect();
    let addrs: Vec<String> = replicas
        .iter()
        .map(|r| r.as_ref().unwrap().addr.clone())
        .collect();
    let addr_refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let lb_socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let nginx_port = lb_socket.local_addr().unwrap().port();
    let _nginx = nginx(work.path(), lb_socket, &addr_refs);
    let (_am, am_port) = alertmanager(work.path(), nginx_port);
    let (_prom, prom_port) = prometheus(work.path(), am_port, &addr_refs);
    let lb = format!("http://127.0.0.1:{nginx_port}");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_for(60, "nginx", || {
        client
            .get(format!("{lb}/v2/health/ready"))
            .send()
            .ok()
            .filter(|r| r.status() == 200)
    });
    wait_for(60, "Alertmanager ready (its config loaded)", || {
        client
            .get(format!("http://127.0.0.1:{am_port}/-/ready"))
            .send()
            .ok()
            .filter(|r| r.status() == 200)
    });
    wait_for(60, "Prometheus scraping the three replicas", || {
        let up = query(&client, prom_port, "sum(up{job=\"vigil\"})");
        (up.first().map(|x| x.1) == Some(3.0)).then_some(())
    });

    // 1. Normal traffic through the load balancer: the since-start fleet PSI is numpy's
    //    PSI over the union of the rows, whichever replica counted them.
    let mut rng = Rng::new(11);
    let normal = rows(&mut rng, 3000, 0.0);
    for batch in normal.chunks(10) {
        assert_eq!(send(&client, &lb, batch), 200);
    }
    let per_replica: Vec<f64> = replicas
        .iter()
        .map(|r| {
            r.as_ref()
                .unwrap()
                .metric("vigil_inference_requests_total{model=\"iris\",outcome=\"success\"")
                .unwrap_or(0.0)
        })
        .collect();
    assert_eq!(per_replica.iter().sum::<f64>(), 300.0, "{per_replica:?}");
    assert!(
        per_replica.iter().all(|&n| n >= 50.0),
        "round robin spreads the load: {per_replica:?}"
    );
    wait_for(60, "all 3000 rows in the fleet counters", || {
        let rows = per_feature(query(
            &client,
            prom_port,
            "sum by (side, feature) (vigil:drift_bin_rows:fleet{model=\"iris\",version=\"1\"})",
        ));
        (rows.len() == 4 && rows.values().all(|&n| n == 3000.0)).then_some(())
    });
    // A rule group writes its series one rule after the other, so the PSI of the
    // evaluation that first saw all rows can lag the row sums by a moment: poll until the
    // two agree with the oracles (or give up after 20 s and report the last values).
    let want = oracle(work.path(), &normal);
    let read = || {
        let psi = per_feature(query(
            &client,
            prom_port,
            "vigil:drift_psi:fleet{model=\"iris\",version=\"1\"}",
        ));
        let js = per_feature(query(
            &client,
            prom_port,
            "vigil:drift_js:fleet{model=\"iris\",version=\"1\"}",
        ));
        (psi, js)
    };
    let off = |psi: &std::collections::BTreeMap<String, f64>,
               js: &std::collections::BTreeMap<String, f64>| {
        let mut worst: Vec<String> = Vec::new();
        for (feature, w) in want["psi"].as_object().unwrap() {
            let (w, wj) = (w.as_f64().unwrap(), want["js"][feature].as_f64().unwrap());
            match (psi.get(feature), js.get(feature)) {
                (Some(p), Some(j)) if (p - w).abs() < 1e-6 && (j - wj).abs() < 1e-6 => {}
                (p, j) => worst.push(format!(
                    "{feature}: Prometheus PSI {p:?} (numpy {w}), JS {j:?} (scipy {wj})"
                )),
            }
        }
        worst
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (fleet, js) = loop {
        let (psi, js) = read();
        let worst = off(&psi, &js);
        if worst.is_empty() {
            break (psi, js);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet view disagrees with the oracles: {worst:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("since-start fleet PSI (Prometheus) {fleet:?}, JS {js:?}; oracle {want}");

    // 2. A shift, spread over the fleet; no replica's window (1 000 000 rows) closes. The
    //    retrain receiver is down (503) until a replica holding the event is killed.
    hook.refuse.store(true, Ordering::SeqCst);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, lb, client) = (stop.clone(), lb.clone(), client.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(12);
            let mut failures = Vec::new();
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = rows(&mut rng, 20, 2.0);
                let status = send(&client, &lb, &batch);
                if status != 200 {
                    failures.push((status, started.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            failures
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let first = loop {
        if let Some(d) = hook.refused.lock().unwrap().first().cloned() {
            break d;
        }
        if std::time::Instant::now() > deadline {
            // What each piece saw, for whoever reads the failure.
            for q in [
                "ALERTS",
                "vigil:drift_share_window:fleet",
                "vigil:drift_rows_window:fleet",
                "vigil:drift_psi_window:fleet",
            ] {
                println!("{q}: {:?}", query(&client, prom_port, q));
            }
            for log in ["alertmanager.log", "nginx-error.log", "prometheus.log"] {
                let text = std::fs::read_to_string(work.path().join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                println!(
                    "--- {log}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            for r in replicas.iter().flatten() {
                println!("--- replica {}: {:?}", r.addr, r.drain_logs());
            }
            panic!("no retrain event from the fleet alert within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first.1["type"], "vigil.drift.detected");
    assert_eq!(first.1["data"]["model"], "iris");
    assert_eq!(first.1["data"]["model_version"], "1");
    assert!(
        first.1["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("VigilFleetDrift"),
        "{}",
        first.1
    );
    for r in replicas.iter().flatten() {
        let (_, report) = r.get("/v2/models/iris/drift");
        assert_eq!(
            report["versions"][0]["windows"], 0,
            "a replica window closed"
        );
    }
    let event_id = first.0.clone();
    assert_eq!(first.1["data"]["event_id"], event_id.as_str());
    // Alertmanager keeps notifying (repeat_interval 3 s); every notification names the
    // same event. It counts a notification request once vigil has answered it, and vigil
    // answers after the event is in its outbox (created, or known: a duplicate), so
    // after three answered requests the replicas' outboxes hold all they ever made of
    // them (the receiver has accepted nothing yet).
    let answered = || {
        let webhook = "{integration=\"webhook\"}";
        let all = am_counter(
            &client,
            am_port,
            &format!("alertmanager_notification_requests_total{webhook}"),
        )?;
        let failed = am_counter(
            &client,
            am_port,
            &format!("alertmanager_notification_requests_failed_total{webhook}"),
        )?;
        Some(all - failed)
    };
    wait_for(60, "three notifications answered by vigil", || {
        (answered()? >= 3.0).then_some(())
    });
    let held: std::collections::BTreeSet<String> =
        replicas.iter().flatten().flat_map(event_ids).collect();
    assert_eq!(
        held,
        std::collections::BTreeSet::from([event_id.clone()]),
        "one retrain event for one shift, however often Alertmanager notifies"
    );
    assert!(deliveries.lock().unwrap().is_empty());

    // 3. SIGKILL a replica whose event is still pending (the receiver answers 503):
    //    traffic goes on through the other two and the fleet view recovers from them.
    let v = replicas
        .iter()
        .position(|r| {
            r.as_ref()
                .is_some_and(|r| ids_in(r, &["pending"]).contains(&event_id))
        })
        .expect("a replica holds the event pending");
    let victim = replicas[v].take().unwrap();
    let victim_addr = victim.addr.clone();
    drop(victim); // kill -9 and wait
    let refused_attempts = hook.refused.lock().unwrap().len();
    wait_for(30, "Prometheus to see the replica down", || {
        let up = query(
            &client,
            prom_port,
            &format!("up{{instance=\"{victim_addr}\"}}"),
        );
        (up.first().map(|x| x.1) == Some(0.0)).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failures = sender.join().unwrap();
    let nginx_log =
        std::fs::read_to_string(work.path().join("nginx-error.log")).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "requests failed through the load balancer (status, when): {failures:?}; nginx:\n{nginx_log}"
    );
    for batch in rows(&mut rng, 500, 0.0).chunks(10) {
        assert_eq!(send(&client, &lb, batch), 200);
    }
    let survivors: f64 = replicas
        .iter()
        .flatten()
        .map(|r| {
            r.metric("vigil_drift_bin_rows_total{bin=\"0\",feature=\"f0\"")
                .unwrap()
        })
        .sum();
    // The survivors' counters flush within a second; then the fleet sum is theirs.
    wait_for(30, "the fleet view from the two survivors", || {
        let now: f64 = replicas
            .iter()
            .flatten()
            .map(|r| {
                r.metric("vigil_drift_bin_rows_total{bin=\"0\",feature=\"f0\"")
                    .unwrap()
            })
            .sum();
        let fleet = query(
            &client,
            prom_port,
            "vigil:drift_bin_rows:fleet{model=\"iris\",version=\"1\",feature=\"f0\",bin=\"0\"}",
        );
        let psi = per_feature(query(
            &client,
            prom_port,
            "vigil:drift_psi:fleet{model=\"iris\",version=\"1\"}",
        ));
        (fleet.first().map(|x| x.1) == Some(now) && now >= survivors && psi.len() == 4)
            .then_some(())
    });
    // The receiver is back; the victim restarts on its state directory and delivers the
    // event it held when it was killed. It creates no event of its own (a notification
    // that reached it now would count one in vigil_retrain_events_total if the outbox had
    // lost the event), so what it delivers came from its disk.
    hook.refuse.store(false, Ordering::SeqCst);
    replicas[v] = Some(replica(repo.path(), states[v].path()));
    let restarted = replicas[v].as_ref().unwrap();
    wait_for(
        60,
        "the restarted replica to deliver the event it held",
        || {
            ids_in(restarted, &["delivered"])
                .contains(&event_id)
                .then_some(())
        },
    );
    assert_eq!(
        restarted
            .metric("vigil_retrain_events_total{model=\"iris\"")
            .unwrap_or(0.0),
        0.0,
        "the restarted replica created the event anew instead of recovering it"
    );
    // The delivery is counted just after it is recorded (listed as delivered): wait for it.
    wait_for(30, "the restarted replica to count the delivery", || {
        (restarted
            .metric("vigil_retrain_deliveries_total{model=\"iris\",outcome=\"delivered\"}")
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
    println!(
        "{refused_attempts} deliveries refused with 503 before the kill; delivered after restart"
    );
    let held: Vec<String> = replicas.iter().flatten().flat_map(event_ids).collect();
    assert!(held.iter().all(|id| *id == event_id), "{held:?}");
    let ids: std::collections::BTreeSet<String> = deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.0.clone())
        .collect();
    assert_eq!(ids, std::collections::BTreeSet::from([event_id]));
}

/// The shipped Prometheus example loads both rule files; the Alertmanager example parses
/// and routes VigilFleetDrift (grouped by model and version) to vigil's endpoint, and
/// nothing else there.
#[test]
fn shipped_configs_load_the_fleet_rules_and_route_the_fleet_alert() {
    let prom = Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("grafana/prometheus/prometheus.yml"))
        .output()
        .expect("promtool");
    let said = String::from_utf8_lossy(&prom.stdout).to_string();
    assert!(prom.status.success(), "{said}");
    assert!(said.contains("vigil-fleet-rules.yml"), "{said}");
    let config = root().join("grafana/prometheus/alertmanager.yml");
    let amtool = |args: &[&str]| {
        let out = Command::new("amtool")
            .args(args)
            .output()
            .expect("amtool (Debian prometheus-alertmanager; run scripts/setup-test-deps.sh)");
        assert!(
            out.status.success(),
            "amtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let cfg = format!("--config.file={}", config.display());
    amtool(&["check-config", config.to_str().unwrap()]);
    let fleet = amtool(&[
        "config",
        "routes",
        "test",
        &cfg,
        "alertname=VigilFleetDrift",
        "model=iris",
        "version=1",
    ]);
    assert_eq!(fleet, "vigil-retrain");
    let other = amtool(&[
        "config",
        "routes",
        "test",
        &cfg,
        "alertname=VigilHighErrorRate",
    ]);
    assert_eq!(other, "null");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("/v2/retrain/alertmanager") && text.contains("group_by: [model, version]")
    );
}

/// The JSON lines of a gzipped payload-log file.
fn gz_records(path: &Path) -> Vec<Value> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `root/*/<model>/*.jsonl.gz` as a shell expands it (hidden names skipped), relative to
/// `root`.
fn expand(root: &Path, glob: &str) -> Vec<String> {
    let parts: Vec<&str> = glob.split('/').collect();
    let mut found = vec![String::new()];
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        let mut next = Vec::new();
        for base in &found {
            let dir = root.join(base);
            let join = |n: &str| {
                if base.is_empty() {
                    n.to_string()
                } else {
                    format!("{base}/{n}")
                }
            };
            if part.contains('*') {
                let (pre, post) = part.split_once('*').unwrap();
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let fits = !n.starts_with('.') && n.starts_with(pre) && n.ends_with(post);
                    if fits && (last || e.path().is_dir()) {
                        next.push(join(&n));
                    }
                }
            } else if dir.join(part).exists() {
                next.push(join(part));
            }
        }
        found = next;
    }
    found.sort();
    found
}

/// Issue #21: a fleet event (Alertmanager -> one replica -> one event) says where the
/// fleet's data for the alert is: the shared --payload-dir, the range from `startsAt`
/// less the rule's `data_window` to now, the globs of every replica's files, and the
/// files finished when it was created. Two replicas on one shared directory: pod-b's file
/// rotates by age (1 s) before the alert, pod-a's (1 h) only because the event seals it;
/// the listed files exist and hold both replicas' records, all within the range.
#[test]
fn a_fleet_event_points_at_every_replicas_payload_files_for_the_alerts_range() {
    let hook = receiver();
    let repo = TempDir::new("fleet-data-repo");
    let v1 = repo.path().join("iris/1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in ["model.onnx", "reference.json"] {
        std::fs::copy(root().join("models/iris/1").join(f), v1.join(f)).unwrap();
    }
    std::fs::write(
        repo.path().join("iris/config.toml"),
        format!(
            "[logging]\nsample = 1.0\n\n[drift]\nwindow_rows = 1000000\n\n\
             [retrain]\nurl = \"http://127.0.0.1:{}/hook\"\nsecret = \"{SECRET}\"\n\
             trigger = \"fleet\"\n",
            hook.port
        ),
    )
    .unwrap();
    let shared = TempDir::new("fleet-payload");
    let dir = shared.path().to_str().unwrap().to_string();
    let states = [TempDir::new("fleet-data-a"), TempDir::new("fleet-data-b")];
    let start = |i: usize, name: &str, age: &str| {
        Vigil::start(
            repo.path(),
            Engine::Tract,
            &[
                "--state-dir",
                states[i].path().to_str().unwrap(),
                "--payload-dir",
                &dir,
                "--payload-replica",
                name,
                "--payload-max-file-age",
                age,
            ],
        )
    };
    let a = start(0, "pod-a", "1h");
    let b = start(1, "pod-b", "1s");
    let t0 = vigil::retrain::now_unix().floor() - 60.0;
    let mut want = Vec::new();
    for (v, tag) in [(&a, "a"), (&b, "b")] {
        for i in 0..5 {
            let id = format!("{tag}-{i}");
            let body = json!({"id": id, "inputs": [{"name": "X", "shape": [1, 4],
                "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
            assert_eq!(v.post_json("/v2/models/iris/infer", &body).0, 200);
            want.push(id);
        }
    }
    want.sort();
    // pod-b's records are in a finished file; pod-a's are still in its active one.
    wait_for(30, "pod-b's rotated file", || {
        (expand(shared.path(), "pod-b/iris/*.jsonl.gz")
            .iter()
            .map(|f| gz_records(&shared.path().join(f)).len())
            .sum::<usize>()
            == 5)
            .then_some(())
    });
    assert!(expand(shared.path(), "pod-a/iris/*.jsonl.gz").is_empty());

    let alert = |fingerprint: &str, starts: &str| {
        json!({"version": "4", "status": "firing", "alerts": [{"status": "firing",
            "labels": {"alertname": "VigilFleetDrift", "model": "iris", "version": "1"},
            "annotations": {"summary": "fleet PSI high", "data_window": "2m"},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": fingerprint}]})
    };
    let starts = vigil::retrain::rfc3339(t0);
    let (status, body) = a.post_json("/v2/retrain/alertmanager", &alert("f1ee7", &starts));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alerts"][0]["outcome"], "created", "{body}");
    let id = body["alerts"][0]["event_id"].as_str().unwrap().to_string();
    let ev = wait_for(30, "the fleet event", || {
        let got = hook.delivered.lock().unwrap();
        got.iter().find(|(i, _)| *i == id).map(|(_, b)| b.clone())
    });
    let data = &ev["data"]["data"];
    assert_eq!(data["payload_dir"], dir.as_str(), "{ev}");
    assert_eq!(data["requests_glob"], "*/iris/*.jsonl.gz", "{data}");
    assert_eq!(data["labels_glob"], "*/iris/labels/*.jsonl.gz", "{data}");
    assert_eq!(data["from"], vigil::retrain::rfc3339(t0 - 120.0), "{data}");
    assert_eq!(data["labels_joined"], Value::Null, "{data}");
    let (from, to) = (data["from"].as_str().unwrap(), data["to"].as_str().unwrap());

    // The listed files exist and hold both replicas' records, all in the range; the glob
    // finds the same files.
    let listed: Vec<String> = data["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expand(shared.path(), "*/iris/*.jsonl.gz"), "{data}");
    let mut ids = Vec::new();
    for f in &listed {
        assert!(
            f.starts_with("pod-a/iris/") || f.starts_with("pod-b/iris/"),
            "{f}"
        );
        for r in gz_records(&shared.path().join(f)) {
            let t = r["time"].as_str().unwrap();
            assert!(
                from <= t && t <= to,
                "{} at {t} outside [{from}, {to}]",
                r["id"]
            );
            ids.push(r["id"].as_str().unwrap().to_string());
        }
    }
    ids.sort();
    assert_eq!(ids, want, "{data}");
    // An unreadable startsAt is refused with the reason, and creates nothing.
    let (status, body) = a.post_json("/v2/retrain/alertmanager", &alert("bad", "yesterday"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alerts"][0]["outcome"], "skipped", "{body}");
    assert!(
        body["alerts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("startsAt 'yesterday'"),
        "{body}"
    );
}

/// Issue #21: a model's name is a directory name, so it may hold glob metacharacters.
/// The fleet event's globs escape them as Python's `glob.escape` does: Python's
/// `glob.glob(os.path.join(payload_dir, requests_glob))` on the real files finds exactly
/// model `m[1]*?`'s files, not those of `m1x` beside it (which the unescaped pattern
/// matches). An alert whose `model` label is a path is skipped with the reason.
#[test]
fn a_fleet_events_globs_match_only_its_models_files_whatever_the_name() {
    let hook = receiver();
    let repo = TempDir::new("fleet-glob-repo");
    let odd = "m[1]*?";
    for model in [odd, "m1x"] {
        let v1 = repo.path().join(model).join("1");
        std::fs::create_dir_all(&v1).unwrap();
        for f in ["model.onnx", "reference.json"] {
            std::fs::copy(root().join("models/iris/1").join(f), v1.join(f)).unwrap();
        }
        std::fs::write(
            repo.path().join(model).join("config.toml"),
            format!(
                "[logging]\nsample = 1.0\n\n[retrain]\nurl = \"http://127.0.0.1:{}/hook\"\n\
                 secret = \"{SECRET}\"\ntrigger = \"fleet\"\n",
                hook.port
            ),
        )
        .unwrap();
    }
    let shared = TempDir::new("fleet-glob-payload");
    let dir = shared.path().to_str().unwrap().to_string();
    let state = TempDir::new("fleet-glob-state");
    let a = Vigil::start(
        repo.path(),
        Engine::Tract,
        &[
            "--state-dir",
            state.path().to_str().unwrap(),
            "--payload-dir",
            &dir,
            "--payload-replica",
            "pod-a",
            "--payload-max-file-age",
            "1s",
        ],
    );
    let t0 = vigil::retrain::now_unix().floor() - 60.0;
    for (path, n) in [("m%5B1%5D%2A%3F", 3), ("m1x", 4)] {
        for i in 0..n {
            let body = json!({"id": format!("{path}-{i}"), "inputs": [{"name": "X",
                "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
            let (status, got) = a.post_json(&format!("/v2/models/{path}/infer"), &body);
            assert_eq!(status, 200, "{path}: {got}");
        }
    }
    // m1x's records are in a finished file the unescaped glob would match.
    wait_for(30, "m1x's rotated file", || {
        (!expand(shared.path(), "pod-a/m1x/*.jsonl.gz").is_empty()).then_some(())
    });
    let alert = |model: &str, fingerprint: &str| {
        json!({"version": "4", "status": "firing", "alerts": [{"status": "firing",
            "labels": {"alertname": "VigilFleetDrift", "model": model, "version": "1"},
            "annotations": {"summary": "fleet PSI high", "data_window": "2m"},
            "startsAt": vigil::retrain::rfc3339(t0), "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": fingerprint}]})
    };
    let (status, body) = a.post_json("/v2/retrain/alertmanager", &alert(odd, "0dd"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alerts"][0]["outcome"], "created", "{body}");
    let id = body["alerts"][0]["event_id"].as_str().unwrap().to_string();
    let ev = wait_for(30, "the fleet event", || {
        let got = hook.delivered.lock().unwrap();
        got.iter().find(|(i, _)| *i == id).map(|(_, b)| b.clone())
    });
    let data = &ev["data"]["data"];
    assert_eq!(data["requests_glob"], "*/m[[]1][*][?]/*.jsonl.gz", "{data}");
    assert_eq!(
        data["labels_glob"], "*/m[[]1][*][?]/labels/*.jsonl.gz",
        "{data}"
    );
    let listed: Vec<String> = data["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(!listed.is_empty(), "{data}");
    let records: usize = listed
        .iter()
        .inspect(|f| assert!(f.starts_with("pod-a/m[1]*?/"), "{f}"))
        .map(|f| gz_records(&shared.path().join(f)).len())
        .sum();
    assert_eq!(records, 3, "{data}");
    // What the pipeline's first step does with the event, on the real files.
    let script = "import glob, json, os, sys\n\
        d, g, model = sys.argv[1], sys.argv[2], sys.argv[3]\n\
        found = sorted(os.path.relpath(p, d) for p in glob.glob(os.path.join(d, g)))\n\
        print(json.dumps({'found': found, 'escaped': glob.escape(model)}))\n";
    let out = Command::new(python())
        .args([
            "-c",
            script,
            &dir,
            data["requests_glob"].as_str().unwrap(),
            odd,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["found"], json!(listed), "{py}");
    assert_eq!(
        format!("*/{}/*.jsonl.gz", py["escaped"].as_str().unwrap()),
        data["requests_glob"].as_str().unwrap()
    );
    // A `model` label that is a path names no model and reaches no path.
    for bad in ["../m1x", "pod-a/m1x", ".hidden", "m1x\\x"] {
        let (status, body) = a.post_json("/v2/retrain/alertmanager", &alert(bad, "ba"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["alerts"][0]["outcome"], "skipped", "{bad}: {body}");
        assert!(
            body["alerts"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("not a model name"),
            "{body}"
        );
    }
}

/// A repository of iris version 1 (with its reference profile) whose `[retrain]` hook is
/// the receiver on `port`, plus `extra` lines in that table.
fn iris_with_hook(tag: &str, port: u16, extra: &str) -> TempDir {
    let repo = TempDir::new(tag);
    let v1 = repo.path().join("iris").join("1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in ["model.onnx", "reference.json"] {
        std::fs::copy(root().join("models/iris/1").join(f), v1.join(f)).unwrap();
    }
    std::fs::write(
        repo.path().join("iris").join("config.toml"),
        format!(
            "[retrain]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\n{extra}"
        ),
    )
    .unwrap();
    repo
}

/// A shared payload directory keeps every replaced pod's files, so a fleet event's lists
/// are bounded: the newest 10 000 files, and how many older ones were left out (the glob
/// still finds them). The event is stored in the outbox and sent on every retry.
#[test]
fn a_fleet_events_file_lists_are_bounded_and_say_what_they_leave_out() {
    let hook = receiver();
    let repo = iris_with_hook("fleet-many-repo", hook.port, "trigger = \"fleet\"\n");
    let shared = TempDir::new("fleet-many-payload");
    let dir = shared.path().to_str().unwrap().to_string();
    // Pods long gone left 10 050 finished files of the alert's range.
    let t0 = vigil::retrain::now_unix().floor() - 60.0;
    let first_ms = (t0 as u64 - 90) * 1000;
    for (pod, n) in [("pod-old1", 6000u64), ("pod-old2", 4050)] {
        let d = shared.path().join(pod).join("iris");
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            // Interleaved in time across the two pods.
            let ms = first_ms + 2 * i + u64::from(pod == "pod-old2");
            std::fs::write(d.join(format!("{ms}-0.jsonl.gz")), b"").unwrap();
        }
    }
    let state = TempDir::new("fleet-many-state");
    let a = Vigil::start(
        repo.path(),
        Engine::Tract,
        &[
            "--state-dir",
            state.path().to_str().unwrap(),
            "--payload-dir",
            &dir,
            "--payload-replica",
            "pod-a",
        ],
    );
    let alert = json!({"version": "4", "status": "firing", "alerts": [{"status": "firing",
        "labels": {"alertname": "VigilFleetDrift", "model": "iris", "version": "1"},
        "annotations": {"summary": "fleet PSI high", "data_window": "2m"},
        "startsAt": vigil::retrain::rfc3339(t0), "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "many"}]});
    let (status, body) = a.post_json("/v2/retrain/alertmanager", &alert);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alerts"][0]["outcome"], "created", "{body}");
    let id = body["alerts"][0]["event_id"].as_str().unwrap().to_string();
    let ev = wait_for(30, "the fleet event", || {
        let got = hook.delivered.lock().unwrap();
        got.iter().find(|(i, _)| *i == id).map(|(_, b)| b.clone())
    });
    let data = &ev["data"]["data"];
    let listed: Vec<&str> = data["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 10_000);
    assert_eq!(data["requests_omitted"], 50, "{}", data["requests_omitted"]);
    assert_eq!(
        data.get("labels_omitted"),
        None,
        "no label files, nothing left out"
    );
    // The 50 oldest are the ones left out, from both pods; the newest are kept.
    let oldest_kept = first_ms + 50;
    let opened = |f: &str| -> u64 {
        f.rsplit('/')
            .next()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(listed.iter().map(|f| opened(f)).min(), Some(oldest_kept));
    assert!(listed.contains(&format!("pod-old1/iris/{}-0.jsonl.gz", first_ms + 2 * 5999).as_str()));
    assert!(
        listed.contains(&format!("pod-old2/iris/{}-0.jsonl.gz", first_ms + 2 * 4049 + 1).as_str())
    );
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "in path order");
}

/// `--payload-retention-age` on a shared payload directory: every replica deletes the
/// files older than the age, its own finished ones and, in the fleet's other
/// subdirectories, a replaced pod's leftovers of every kind and then its emptied
/// directories. Recent files, a live pod's active file, names the writer never gives,
/// hidden entries (an NFS `.snapshot`) and what a symbolic link points to are kept.
#[test]
fn a_retention_age_clears_replaced_pods_directories_from_a_shared_payload_dir() {
    let shared = TempDir::new("fleet-age-payload");
    let dir = shared.path().to_str().unwrap().to_string();
    let outside = TempDir::new("fleet-age-outside");
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 3600);
    let file = |rel: &str, aged: bool| {
        let p = shared.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&p).unwrap();
        if aged {
            f.set_modified(old).unwrap();
        }
        p
    };
    let gone = [
        file("pod-a/iris/1700000000000-0.jsonl.gz", true),
        file("pod-a/iris/labels/1700000000000-1.jsonl.gz", true),
        file("pod-old/iris/1700000000000-0.jsonl.gz", true),
        file("pod-old/iris/1700000000001-1.jsonl", true),
        file("pod-old/iris/1700000000002-2.jsonl.gz.tmp", true),
        file("pod-gone/iris/labels/1700000000000-0.jsonl.gz", true),
    ];
    let kept = [
        file("pod-old/iris/1800000000000-0.jsonl.gz", false),
        file("pod-live/iris/1800000000000-0.jsonl", false),
        file("pod-live/iris/notes.txt", true),
        file("pod-old/iris/events.jsonl.gz", true),
        file(".snapshot/pod-x/iris/1700000000000-0.jsonl.gz", true),
    ];
    // A link to a directory outside, holding an old file of the right name.
    let target = outside.path().join("iris");
    std::fs::create_dir_all(&target).unwrap();
    let linked = target.join("1700000000000-0.jsonl.gz");
    std::fs::File::create(&linked)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::os::unix::fs::symlink(outside.path(), shared.path().join("pod-link")).unwrap();

    let v = Vigil::start(
        &root().join("models"),
        Engine::Tract,
        &[
            "--payload-dir",
            &dir,
            "--payload-replica",
            "pod-a",
            "--payload-max-file-age",
            "1h",
            "--payload-retention-age",
            "2h",
        ],
    );
    wait_for(30, "the expired files deleted", || {
        gone.iter().all(|p| !p.exists()).then_some(())
    });
    for p in &kept {
        assert!(p.exists(), "{} was deleted", p.display());
    }
    assert!(linked.exists(), "a file behind a symbolic link was deleted");
    assert!(
        !shared.path().join("pod-gone").exists(),
        "a replaced pod's emptied directory is removed"
    );
    assert!(
        shared.path().join("pod-a/iris").is_dir(),
        "its own directories stay"
    );
    assert_eq!(v.get("/v2/health/ready").0, 200);
    // An age no longer than the file age is refused at start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--repository", "models", "--payload-dir", &dir])
        .args([
            "--payload-retention-age",
            "1h",
            "--payload-max-file-age",
            "1h",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--payload-retention-age"), "{err}");
}

/// One replica's own payload log is capped in bytes, not files: many small files (a short
/// `--payload-max-file-age` on a quiet model) make an operator's retrain event, which
/// lists everything the log holds, as long as a fleet's. Its lists are bounded the same
/// way, and the globs then find what they leave out.
#[test]
fn a_replicas_own_event_lists_are_bounded_too() {
    let hook = receiver();
    let repo = iris_with_hook("own-many-repo", hook.port, "");
    let payload = TempDir::new("own-many-payload");
    let d = payload.path().join("iris");
    std::fs::create_dir_all(&d).unwrap();
    let first_ms = (vigil::retrain::now_unix().floor() as u64 - 3600) * 1000;
    for i in 0..10_050u64 {
        std::fs::write(d.join(format!("{:015}-000000.jsonl.gz", first_ms + i)), b"").unwrap();
    }
    let v = Vigil::start(
        repo.path(),
        Engine::Tract,
        &["--payload-dir", payload.path().to_str().unwrap()],
    );
    let (status, body) = v.post_json("/v2/models/iris/retrain", &json!({"reason": "many"}));
    assert_eq!(status, 202, "{body}");
    let id = body["event_id"].as_str().unwrap().to_string();
    let ev = wait_for(30, "the event", || {
        let got = hook.delivered.lock().unwrap();
        got.iter().find(|(i, _)| *i == id).map(|(_, b)| b.clone())
    });
    let data = &ev["data"]["data"];
    let listed = data["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 10_000);
    assert_eq!(data["requests_omitted"], 50, "{}", data["requests_omitted"]);
    assert_eq!(data["requests_glob"], "iris/*.jsonl.gz");
    assert_eq!(data["labels_glob"], "iris/labels/*.jsonl.gz");
    // The oldest are left out; the range still starts at the oldest file the log holds.
    assert_eq!(
        listed[0],
        format!("iris/{:015}-000000.jsonl.gz", first_ms + 50)
    );
    assert_eq!(
        data["from"],
        vigil::retrain::rfc3339(first_ms as f64 / 1000.0)
    );
}

//! Test harness: runs the real `vigil` binary on 127.0.0.1:0 and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ONNX Runtime library the test setup installed (scripts/setup-test-deps.sh), or
/// `$ORT_DYLIB_PATH`. Missing is a test failure, not a skip: CI must exercise ort.
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let capi = root().join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
    let found = std::fs::read_dir(&capi).ok().and_then(|entries| {
        entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "ONNX Runtime library not found in {}: run scripts/setup-test-deps.sh (or set ORT_DYLIB_PATH)",
            capi.display()
        )
    })
}

/// The Python interpreter with the test clients installed.
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup-test-deps.sh",
        p.display()
    );
    p
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Tract,
    Ort,
}

impl Engine {
    pub fn args(self) -> Vec<String> {
        match self {
            Engine::Tract => vec!["--backend".into(), "tract".into()],
            Engine::Ort => vec![
                "--backend".into(),
                "ort".into(),
                "--ort-library".into(),
                ort_library().display().to_string(),
            ],
        }
    }
}

pub struct Vigil {
    pub child: Child,
    pub base: String,
    pub addr: String,
    /// `--admin-addr`'s bound address, when the server was started with one.
    pub admin: Option<String>,
    pub client: reqwest::blocking::Client,
    logs: std::sync::Mutex<mpsc::Receiver<String>>,
    _state: Option<TempDir>,
}

impl Vigil {
    /// Starts `vigil serve` on the given repository and waits until it is ready. Unless
    /// `extra` names one, the state directory is a fresh temporary one.
    pub fn start(repository: &Path, engine: Engine, extra: &[&str]) -> Vigil {
        Vigil::start_logging(repository, engine, extra, "info")
    }

    /// [`Vigil::start`] with `VIGIL_LOG` set to `filter` (e.g. `info,vigil::serving=debug`),
    /// for tests that wait on a log line.
    pub fn start_logging(repository: &Path, engine: Engine, extra: &[&str], filter: &str) -> Vigil {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        let state = (!extra.contains(&"--state-dir")).then(|| TempDir::new("state"));
        let default_addr: &[&str] = if extra.contains(&"--http-addr") {
            &[]
        } else {
            &["--http-addr", "127.0.0.1:0"]
        };
        cmd.arg("serve")
            .arg("--repository")
            .arg(repository)
            .args(default_addr)
            .args(engine.args())
            .args(extra)
            .args(
                state
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--state-dir"), d.path().as_os_str()]),
            )
            .env_remove("ORT_DYLIB_PATH")
            .env("VIGIL_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn vigil");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let mut admin = None;
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "vigil did not report its address; log:\n{}",
                        seen.join("\n")
                    )
                });
            if let Some(i) = line.find("admin listener on http://") {
                let rest = &line[i + "admin listener on http://".len()..];
                admin = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on http://".len()..];
                break rest.split_whitespace().next().unwrap().to_string();
            }
            seen.push(line);
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let v = Vigil {
            child,
            base: format!("http://{addr}"),
            addr,
            admin,
            client,
            logs: std::sync::Mutex::new(rx),
            _state: state,
        };
        while Instant::now() < deadline {
            if let Ok(r) = v.client.get(v.url("/v2/health/ready")).send() {
                if r.status() == 200 {
                    return v;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("vigil never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(body).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Log lines printed so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().try_iter().collect()
    }

    /// Waits for the next log line that satisfies `pred` (lines before it are consumed),
    /// failing after `secs` seconds.
    pub fn wait_log(&self, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let rx = self.logs.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for a log line: {what}"),
            }
        }
    }

    /// The log lines printed so far and up to the first line that satisfies `pred`
    /// (waiting for it up to `secs` seconds), with any line already printed after it.
    /// vigil's stderr reaches the test through a reader thread: a line vigil wrote before
    /// an answer may still be on its way when the answer arrives, so a test that counts
    /// lines first waits for the one it expects.
    pub fn logs_through(&self, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let rx = self.logs.lock().unwrap();
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let found = pred(&line);
                    lines.push(line);
                    if found {
                        lines.extend(rx.try_iter());
                        return lines;
                    }
                }
                Err(_) => panic!(
                    "timed out waiting for a log line: {what}; log:\n{}",
                    lines.join("\n")
                ),
            }
        }
    }

    /// The value of the first `/metrics` line starting with `line_start`.
    pub fn metric(&self, line_start: &str) -> Option<f64> {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .ok()?
            .text()
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(line_start))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reference case written by models/make_models.py: inputs and onnxruntime's outputs.
pub fn reference(name: &str) -> Value {
    let p = root().join("tests/data/refs").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Compares a V2 output (JSON) with a reference output, numbers within `tol` (relative
/// to max(1, |expected|)), everything else exactly.
pub fn assert_output_close(got: &Value, want: &Value, tol: f64) {
    assert_eq!(got["name"], want["name"]);
    assert_eq!(got["datatype"], want["datatype"], "output {}", want["name"]);
    assert_eq!(got["shape"], want["shape"], "output {}", want["name"]);
    let g = got["data"].as_array().expect("data array");
    let w = want["data"].as_array().unwrap();
    assert_eq!(g.len(), w.len());
    let fp32 = want["datatype"] == "FP32";
    // FP32 travels as its shortest decimal: compare at f32 precision.
    let narrow = |x: f64| if fp32 { x as f32 as f64 } else { x };
    for (i, (a, b)) in g.iter().zip(w).enumerate() {
        match (a.as_f64().map(narrow), b.as_f64().map(narrow)) {
            (Some(x), Some(y)) if b.is_f64() || a.is_f64() => assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "output {} element {i}: got {x}, want {y}",
                want["name"]
            ),
            _ => assert_eq!(a, b, "output {} element {i}", want["name"]),
        }
    }
}

/// Compares a V2 answer's `outputs` with the reference outputs: the same outputs, none
/// missing and none extra, in the same order, each within `tol` ([`assert_output_close`]).
pub fn assert_outputs_close(got: &Value, want: &[Value], tol: f64) {
    let g = got
        .as_array()
        .unwrap_or_else(|| panic!("outputs is not an array: {got}"));
    let names = |v: &[Value]| -> Vec<String> { v.iter().map(|o| o["name"].to_string()).collect() };
    assert_eq!(names(g), names(want), "output names");
    for (a, b) in g.iter().zip(want) {
        assert_output_close(a, b, tol);
    }
}

/// Little-endian bytes of a reference tensor's data, for binary requests.
pub fn to_le_bytes(t: &Value) -> Vec<u8> {
    let data = t["data"].as_array().unwrap();
    let mut out = Vec::new();
    for v in data {
        match t["datatype"].as_str().unwrap() {
            "FP32" => out.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
            "FP64" => out.extend(v.as_f64().unwrap().to_le_bytes()),
            "INT8" => out.extend((v.as_i64().unwrap() as i8).to_le_bytes()),
            "INT16" => out.extend((v.as_i64().unwrap() as i16).to_le_bytes()),
            "INT32" => out.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
            "INT64" => out.extend(v.as_i64().unwrap().to_le_bytes()),
            "UINT8" => out.extend((v.as_u64().unwrap() as u8).to_le_bytes()),
            "UINT16" => out.extend((v.as_u64().unwrap() as u16).to_le_bytes()),
            "UINT32" => out.extend((v.as_u64().unwrap() as u32).to_le_bytes()),
            "UINT64" => out.extend(v.as_u64().unwrap().to_le_bytes()),
            "BOOL" => out.push(v.as_bool().unwrap() as u8),
            "BYTES" => {
                let s = v.as_str().unwrap().as_bytes();
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s);
            }
            other => panic!("datatype {other}"),
        }
    }
    out
}

/// Decodes binary output bytes back into JSON values of the given datatype.
pub fn from_le_bytes(datatype: &str, raw: &[u8]) -> Vec<Value> {
    fn chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        raw.chunks_exact(N).map(|c| c.try_into().unwrap())
    }
    match datatype {
        "FP32" => chunks::<4>(raw)
            .map(|c| Value::from(f32::from_le_bytes(c) as f64))
            .collect(),
        "FP64" => chunks::<8>(raw)
            .map(|c| Value::from(f64::from_le_bytes(c)))
            .collect(),
        "INT8" => raw.iter().map(|&b| Value::from(b as i8)).collect(),
        "INT16" => chunks::<2>(raw)
            .map(|c| Value::from(i16::from_le_bytes(c)))
            .collect(),
        "INT32" => chunks::<4>(raw)
            .map(|c| Value::from(i32::from_le_bytes(c)))
            .collect(),
        "INT64" => chunks::<8>(raw)
            .map(|c| Value::from(i64::from_le_bytes(c)))
            .collect(),
        "UINT8" => raw.iter().map(|&b| Value::from(b)).collect(),
        "UINT16" => chunks::<2>(raw)
            .map(|c| Value::from(u16::from_le_bytes(c)))
            .collect(),
        "UINT32" => chunks::<4>(raw)
            .map(|c| Value::from(u32::from_le_bytes(c)))
            .collect(),
        "UINT64" => chunks::<8>(raw)
            .map(|c| Value::from(u64::from_le_bytes(c)))
            .collect(),
        "BOOL" => raw.iter().map(|&b| Value::from(b != 0)).collect(),
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = raw;
            while rest.len() >= 4 {
                let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                out.push(Value::from(
                    String::from_utf8(rest[4..4 + n].to_vec()).unwrap(),
                ));
                rest = &rest[4 + n..];
            }
            out
        }
        other => panic!("datatype {other}"),
    }
}

/// Sends a binary-tensor request built from reference inputs, asking for binary outputs;
/// returns status and the outputs decoded back into JSON form.
pub fn infer_binary(v: &Vigil, path: &str, inputs: &[Value]) -> (u16, Value) {
    let mut header_inputs = Vec::new();
    let mut raw = Vec::new();
    for t in inputs {
        let bytes = to_le_bytes(t);
        header_inputs.push(serde_json::json!({
            "name": t["name"], "shape": t["shape"], "datatype": t["datatype"],
            "parameters": {"binary_data_size": bytes.len()}
        }));
        raw.extend(bytes);
    }
    let header = serde_json::json!({
        "id": "bin-1",
        "inputs": header_inputs,
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(raw);
    let r = v
        .client
        .post(v.url(path))
        .header("Inference-Header-Content-Length", header.len())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let hlen: Option<usize> = r
        .headers()
        .get("inference-header-content-length")
        .map(|h| h.to_str().unwrap().parse().unwrap());
    let bytes = r.bytes().unwrap();
    let Some(hlen) = hlen else {
        return (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        );
    };
    let mut doc: Value = serde_json::from_slice(&bytes[..hlen]).unwrap();
    let mut offset = hlen;
    for out in doc["outputs"].as_array_mut().unwrap() {
        let size = out["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let data = from_le_bytes(
            out["datatype"].as_str().unwrap(),
            &bytes[offset..offset + size],
        );
        offset += size;
        out["data"] = Value::from(data);
    }
    assert_eq!(
        offset,
        bytes.len(),
        "binary body length matches the sizes declared"
    );
    (status, doc)
}

/// A directory under the system temp dir, removed on drop (unless kept).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vigil-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// Leaves the directory in place (its path is returned).
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `secs` seconds.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port a process started on port 0 reports in its log file at `path`: the first
/// line holding `marker` followed by `HOST:PORT` (Prometheus and Alertmanager print
/// `msg="Listening on" address=127.0.0.1:PORT`, uvicorn `Uvicorn running on
/// http://127.0.0.1:PORT`). Waits up to `secs` seconds for the line. No port is chosen
/// by the test, so none can be taken by someone else between choosing and binding.
pub fn logged_port(path: &Path, marker: &str, secs: u64) -> u16 {
    let what = format!("'{marker}' and a port in {}", path.display());
    wait_for(secs, &what, || {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().find_map(|l| port_after(l, marker))
    })
}

/// The port of the `HOST:PORT` that follows `marker` in `line` (0 is no port).
fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let addr = rest
        .split(|c: char| c.is_whitespace() || c == '"' || c == '/')
        .find(|s| !s.is_empty())?;
    addr.rsplit(':')
        .next()?
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
}

/// The population standard deviation (ddof = 0) of column `j` of iris's training data,
/// as numpy computes it (the shifts tests apply come from numpy, not from vigil).
pub fn iris_training_std(j: usize) -> f64 {
    let out = Command::new(python())
        .arg("-c")
        .arg("import sys, numpy as np; print(repr(float(np.load(sys.argv[1]).astype(np.float64)[:, int(sys.argv[2])].std())))")
        .arg(root().join("models/iris/1/train.npy"))
        .arg(j.to_string())
        .output()
        .expect("run numpy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// iris's 150 training rows (models/iris/1/train.npy).
pub fn iris_training_rows() -> Vec<[f64; 4]> {
    let d = vigil::monitor::data::read(&root().join("models/iris/1/train.npy")).unwrap();
    d.values
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// Rows where iris v1 and v2 disagree (found by asking both about uniform random
/// inputs): v1 answers 2 for most, v2 spreads them over 0, 1 and 2. On the training
/// rows the two agree on 97%, and their class shares are within noise of each other.
#[allow(clippy::approx_constant)] // 3.14 is a measurement here, not π
pub fn iris_disputed_rows() -> Vec<[f64; 4]> {
    vec![
        [7.69, 5.8, 4.33, 2.22],
        [5.13, 6.82, 4.74, 2.08],
        [6.68, 2.26, 1.72, 5.11],
        [3.0, 2.53, 5.53, 1.43],
        [0.85, 5.07, 3.04, 5.8],
        [2.27, 2.51, 2.5, 4.61],
        [1.5, 3.14, 1.86, 6.73],
        [6.7, 0.45, 3.08, 4.48],
        [1.69, 1.1, 7.87, 0.02],
        [0.55, 0.64, 2.17, 4.61],
        [1.71, 6.23, 2.22, 7.3],
        [1.63, 2.83, 4.35, 3.42],
    ]
}

/// A TCP socket bound to a port of 127.0.0.1 and not listening: connecting to it is
/// refused (a receiver that is down), yet the port stays the test's, so nobody else can
/// take it before [`Reserved::listen`] brings the receiver up on it.
pub struct Reserved(std::os::fd::OwnedFd);

impl Reserved {
    pub fn new() -> (Reserved, u16) {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain socket calls on a descriptor this function owns from creation;
        // the address structures are fully initialised and sized as the calls expect.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(
                owned.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut blen = len;
            let rc = libc::getsockname(
                owned.as_raw_fd(),
                &mut bound as *mut _ as *mut libc::sockaddr,
                &mut blen,
            );
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            (Reserved(owned), u16::from_be(bound.sin_port))
        }
    }

    pub fn listen(self) -> std::net::TcpListener {
        use std::os::fd::AsRawFd;
        // SAFETY: listen(2) on the bound socket this value owns.
        let rc = unsafe { libc::listen(self.0.as_raw_fd(), 128) };
        assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
        std::net::TcpListener::from(self.0)
    }
}

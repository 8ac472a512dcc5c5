//! gRPC against HTTP on one model, in one run: `vigil serve` (iris, tract) with both
//! fronts, driven by this client at 1 and 64 concurrent streams (gRPC: streams on one
//! HTTP/2 connection, raw_input_contents; HTTP: keep-alive connections, JSON), rounds
//! interleaved. Reports req/s, p50 and the server's CPU per request (utime+stime of the
//! vigil process over the requests it served), the stable figure on a shared machine.
//! Catches a gRPC front that costs more per request than HTTP (issue #22's target: gRPC
//! at least as many req/s as HTTP, no worse p50 at one stream).
//!
//!     cargo bench --bench grpc_load -- [--seconds 5] [--rounds 3]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::uri::PathAndQuery;
use vigil::grpc::proto::{
    model_infer_request::InferInputTensor, ModelInferRequest, ModelInferResponse,
};

fn server_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Front {
    Grpc,
    Http,
}

struct Run {
    requests: usize,
    rps: f64,
    p50_us: f64,
    cpu_us: f64,
}

async fn drive(
    front: Front,
    streams: usize,
    seconds: f64,
    grpc: &tonic::transport::Channel,
    http: &reqwest::Client,
    http_url: &str,
    pid: u32,
) -> Run {
    let mut req = ModelInferRequest {
        model_name: "iris".into(),
        ..Default::default()
    };
    req.inputs.push(InferInputTensor {
        name: "X".into(),
        datatype: "FP32".into(),
        shape: vec![1, 4],
        ..Default::default()
    });
    let raw: Vec<u8> = [5.1f32, 3.5, 1.4, 0.2]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    req.raw_input_contents.push(raw.into());
    let body =
        r#"{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;
    let req = Arc::new(req);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu0 = server_cpu(pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (req, grpc, http, url) = (
            req.clone(),
            grpc.clone(),
            http.clone(),
            http_url.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut client = tonic::client::Grpc::new(grpc);
            while Instant::now() < deadline {
                let t = Instant::now();
                match front {
                    Front::Grpc => {
                        client.ready().await.expect("channel ready");
                        let codec = tonic_prost::ProstCodec::<ModelInferRequest, ModelInferResponse>::default();
                        let path = PathAndQuery::from_static("/inference.GRPCInferenceService/ModelInfer");
                        client
                            .unary(tonic::Request::new((*req).clone()), path, codec)
                            .await
                            .expect("ModelInfer");
                    }
                    Front::Http => {
                        let r = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                            .expect("POST infer");
                        assert!(r.status().is_success());
                        r.bytes().await.expect("body");
                    }
                }
                lat.push(t.elapsed().as_secs_f64());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client task"));
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = server_cpu(pid) - cpu0;
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    Run {
        requests: n,
        rps: n as f64 / wall,
        p50_us: lat[n / 2] * 1e6,
        cpu_us: cpu / n as f64 * 1e6,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seconds = flag("--seconds", 5.0);
    let rounds = flag("--rounds", 3.0) as usize;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "serve",
            "--repository",
            &format!("{root}/models"),
            "--backend",
            "tract",
        ])
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--poll-interval", "0"])
        .env("VIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vigil");
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut http_addr, mut grpc_addr) = (None, None);
    while http_addr.is_none() || grpc_addr.is_none() {
        let line = lines.next().expect("vigil log").unwrap();
        for (tag, slot) in [
            ("listening on http://", &mut http_addr),
            ("listening on grpc://", &mut grpc_addr),
        ] {
            if let Some(i) = line.find(tag) {
                *slot = line[i + tag.len()..]
                    .split_whitespace()
                    .next()
                    .map(str::to_string);
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (http_addr, grpc_addr) = (http_addr.unwrap(), grpc_addr.unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .unwrap();
        let ready = format!("http://{http_addr}/v2/health/ready");
        let t0 = Instant::now();
        while !http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "vigil never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let grpc = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .expect("gRPC connect");
        let url = format!("http://{http_addr}/v2/models/iris/infer");
        // Warm both paths.
        for front in [Front::Grpc, Front::Http] {
            drive(front, 4, 1.0, &grpc, &http, &url, pid).await;
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average at start: {}", load.trim());
        println!("round front streams requests req/s p50_us server_cpu_us_per_req");
        let mut table: Vec<(Front, usize, Vec<Run>)> = Vec::new();
        for round in 0..rounds {
            let mut order = vec![
                (Front::Grpc, 1),
                (Front::Http, 1),
                (Front::Grpc, 64),
                (Front::Http, 64),
            ];
            if round % 2 == 1 {
                order.reverse();
            }
            for (front, streams) in order {
                let r = drive(front, streams, seconds, &grpc, &http, &url, pid).await;
                println!(
                    "{round} {front:?} {streams} {} {:.0} {:.0} {:.1}",
                    r.requests, r.rps, r.p50_us, r.cpu_us
                );
                match table
                    .iter_mut()
                    .find(|(f, s, _)| *f == front && *s == streams)
                {
                    Some((_, _, runs)) => runs.push(r),
                    None => table.push((front, streams, vec![r])),
                }
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("median over {rounds} rounds of {seconds} s:");
        for (front, streams, runs) in &table {
            println!(
                "  {front:?} streams={streams}: {:.0} req/s, p50 {:.0} µs, server CPU {:.1} µs/req",
                median(runs.iter().map(|r| r.rps).collect()),
                median(runs.iter().map(|r| r.p50_us).collect()),
                median(runs.iter().map(|r| r.cpu_us).collect()),
            );
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average at end: {}", load.trim());
    });
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
}

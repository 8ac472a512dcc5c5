//! gRPC against HTTP on one model, in one run: `vigil serve` (iris, tract) with both
//! fronts, driven by this client at 1 and 64 concurrent streams (gRPC: streams on one
//! HTTP/2 connection, raw_input_contents; HTTP: keep-alive connections, JSON), rounds
//! interleaved. gRPC twice: with tonic's client (`grpc`), and written straight onto the
//! `h2` crate (`h2grpc`): tonic's `Channel` hands every call to a buffer task, a hop the
//! server is not to blame for and that grpcio or Triton's C++ client do not make. Reports req/s, p50 and the server's CPU per request (utime+stime of the
//! vigil process over the requests it served), the stable figure on a shared machine.
//! Catches a gRPC front that costs more per request than HTTP (issue #22's target: gRPC
//! at least as many req/s as HTTP, no worse p50 at one stream).
//!
//! The ceilings, driven by the same client in the same rounds (`--peers`): a bare tonic
//! server answering ModelInfer with a fixed response, and a bare hyper HTTP/1 server
//! answering a fixed JSON body, both in a process of their own (this binary, re-run with
//! `--serve-peers`), so their CPU per request is measured the same way as vigil's.
//!
//!     cargo bench --bench grpc_load -- [--seconds 5] [--rounds 3] [--peers]
//!         [--only grpc1,h2grpc1,http1,grpc64,h2grpc64,http64]
//!         [--vigil PATH]

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
    /// tonic's client (a `Channel`: requests reach HTTP/2 through a buffer task).
    Grpc,
    /// The same calls written straight onto the `h2` crate's client: no task between the
    /// caller and the connection, as grpcio's and Triton's C++ clients (one shared channel).
    GrpcH2,
    Http,
}

impl Front {
    fn tag(self) -> &'static str {
        match self {
            Front::Grpc => "grpc",
            Front::GrpcH2 => "h2grpc",
            Front::Http => "http",
        }
    }
}

/// One connection's `h2` client, shared by every stream.
async fn h2_connect(addr: &str) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("gRPC connect");
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .handshake(tcp)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A unary call on `h2`: the message framed (5-byte prefix), the answer's data frames read
/// and their capacity released, `grpc-status` 0 required from the trailers.
async fn h2_unary(
    send: h2::client::SendRequest<bytes::Bytes>,
    authority: &str,
    framed: bytes::Bytes,
) -> ModelInferResponse {
    use prost::Message;
    let mut send = send.ready().await.expect("h2 ready");
    let req = axum::http::Request::post(format!(
        "http://{authority}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, mut stream) = send.send_request(req, false).expect("send_request");
    stream.send_data(framed, true).expect("send_data");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers");
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(status.as_deref(), Some(&b"0"[..]), "{trailers:?}");
    ModelInferResponse::decode(&buf[5..]).expect("ModelInferResponse")
}

struct Run {
    requests: usize,
    rps: f64,
    p50_us: f64,
    cpu_us: f64,
}

/// A server under test: vigil, or the bare peers.
struct Target {
    name: &'static str,
    grpc: tonic::transport::Channel,
    h2: h2::client::SendRequest<bytes::Bytes>,
    grpc_addr: String,
    url: String,
    pid: u32,
}

impl Target {
    async fn connect(
        name: &'static str,
        grpc_addr: &str,
        http: &str,
        pid: u32,
        path: &str,
    ) -> Target {
        let grpc = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .expect("gRPC connect");
        Target {
            name,
            grpc,
            h2: h2_connect(grpc_addr).await,
            grpc_addr: grpc_addr.to_string(),
            url: format!("http://{http}{path}"),
            pid,
        }
    }
}

async fn drive(
    front: Front,
    streams: usize,
    seconds: f64,
    target: &Target,
    http: &reqwest::Client,
) -> Run {
    let (grpc, http_url, pid) = (&target.grpc, target.url.as_str(), target.pid);
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
    let framed: bytes::Bytes = {
        use prost::Message;
        let mut b = vec![0u8; 5];
        req.encode(&mut b).unwrap();
        let len = (b.len() - 5) as u32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        b.into()
    };
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
        let (h2, authority, framed) = (target.h2.clone(), target.grpc_addr.clone(), framed.clone());
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
                    Front::GrpcH2 => {
                        let r = h2_unary(h2.clone(), &authority, framed.clone()).await;
                        assert_eq!(r.raw_output_contents.len(), r.outputs.len());
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

/// The bare peers: tonic (ModelInfer answered with a fixed response) and hyper HTTP/1
/// (a fixed JSON body), on ephemeral loopback ports printed on stdout.
mod peers {
    use std::convert::Infallible;
    use std::task::{Context, Poll};

    use axum::http;
    use http_body_util::BodyExt;
    use vigil::grpc::proto::{
        model_infer_response::InferOutputTensor, ModelInferRequest, ModelInferResponse,
    };

    #[derive(Clone)]
    struct Fixed;

    impl tonic::server::UnaryService<ModelInferRequest> for Fixed {
        type Response = ModelInferResponse;
        type Future =
            std::future::Ready<Result<tonic::Response<ModelInferResponse>, tonic::Status>>;
        fn call(&mut self, req: tonic::Request<ModelInferRequest>) -> Self::Future {
            let req = req.into_inner();
            let resp = ModelInferResponse {
                model_name: req.model_name,
                model_version: "1".into(),
                outputs: vec![InferOutputTensor {
                    name: "label".into(),
                    datatype: "INT64".into(),
                    shape: vec![1],
                    ..Default::default()
                }],
                raw_output_contents: vec![0i64.to_le_bytes().to_vec().into()],
                ..Default::default()
            };
            std::future::ready(Ok(tonic::Response::new(resp)))
        }
    }

    #[derive(Clone)]
    struct Svc;

    impl tonic::server::NamedService for Svc {
        const NAME: &'static str = "inference.GRPCInferenceService";
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Svc {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
        >;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                let codec =
                    tonic_prost::ProstCodec::<ModelInferResponse, ModelInferRequest>::default();
                Ok(tonic::server::Grpc::new(codec).unary(Fixed, req).await)
            })
        }
    }

    pub fn serve() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!(
                "peers grpc={} http={}",
                grpc.local_addr().unwrap(),
                http.local_addr().unwrap()
            );
            let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(Svc)
                    .serve_with_incoming(incoming),
            );
            let body = r#"{"model_name":"iris","model_version":"1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]}"#;
            loop {
                let (tcp, _) = http.accept().await.unwrap();
                let _ = tcp.set_nodelay(true);
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
                            .unwrap(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-peers") {
        peers::serve();
        return;
    }
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
    // `--vigil PATH`: another build of vigil (an older commit's binary) in the same run.
    let vigil_bin = args
        .iter()
        .position(|a| a == "--vigil")
        .and_then(|i| args.get(i + 1))
        .map_or(env!("CARGO_BIN_EXE_vigil"), String::as_str);
    let mut child = Command::new(vigil_bin)
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
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let (peer, peer_child) = if args.iter().any(|a| a == "--peers") {
        let mut p = Command::new(std::env::current_exe().expect("this bench's path"))
            .arg("--serve-peers")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the peers");
        let mut line = String::new();
        BufReader::new(p.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("peers' addresses");
        let addr = |tag: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(tag))
                .expect("peer address")
                .to_string()
        };
        let id = p.id();
        (Some((addr("grpc="), addr("http="), id)), Some(p))
    } else {
        (None, None)
    };
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
        let mut targets = vec![
            Target::connect("vigil", &grpc_addr, &http_addr, pid, "/v2/models/iris/infer").await,
        ];
        if let Some((g, h, p)) = &peer {
            targets.push(Target::connect("peer", g, h, *p, "/").await);
        }
        // Warm every path.
        for t in &targets {
            for front in [Front::Grpc, Front::GrpcH2, Front::Http] {
                drive(front, 4, 1.0, t, &http).await;
            }
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("load average at start: {}", load.trim());
        println!("round target front streams requests req/s p50_us server_cpu_us_per_req");
        let mut table: Vec<(&str, Front, usize, Vec<Run>)> = Vec::new();
        for round in 0..rounds {
            let mut order = Vec::new();
            for t in &targets {
                for (front, streams) in [
                    (Front::Grpc, 1),
                    (Front::GrpcH2, 1),
                    (Front::Http, 1),
                    (Front::Grpc, 64),
                    (Front::GrpcH2, 64),
                    (Front::Http, 64),
                ] {
                    let tag = format!("{}{streams}", front.tag());
                    if only.as_deref().is_none_or(|o| o.split(',').any(|o| o == tag)) {
                        order.push((t, front, streams));
                    }
                }
            }
            if round % 2 == 1 {
                order.reverse();
            }
            for (t, front, streams) in order {
                let r = drive(front, streams, seconds, t, &http).await;
                println!(
                    "{round} {} {front:?} {streams} {} {:.0} {:.0} {:.1}",
                    t.name, r.requests, r.rps, r.p50_us, r.cpu_us
                );
                match table
                    .iter_mut()
                    .find(|(n, f, s, _)| *n == t.name && *f == front && *s == streams)
                {
                    Some((_, _, _, runs)) => runs.push(r),
                    None => table.push((t.name, front, streams, vec![r])),
                }
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("median over {rounds} rounds of {seconds} s:");
        for (name, front, streams, runs) in &table {
            println!(
                "  {name} {front:?} streams={streams}: {:.0} req/s, p50 {:.0} µs, server CPU {:.1} µs/req",
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
    if let Some(mut p) = peer_child {
        let _ = p.kill();
        let _ = p.wait();
    }
}

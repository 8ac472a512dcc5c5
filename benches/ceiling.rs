//! The ceiling of HTTP on this machine: a bare hyper server (tokio, HTTP/1.1, keep-alive)
//! that reads each request body and answers a fixed JSON body. `benches/load.py` runs it
//! beside vigil with the same client and request.
//!
//!     cargo bench --bench ceiling -- 127.0.0.1:9999 response.json
//!
//! Without an address (as `cargo test --all-targets` runs it) it prints how to use it and
//! exits.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary with no
    // arguments (or with the harness flags given after `--`, such as `--nocapture`), and
    // then it must not serve forever.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(addr) = args.first().cloned() else {
        println!("ceiling: the HTTP ceiling for benches/load.py; run `cargo bench --bench ceiling -- ADDR [BODY]`");
        return;
    };
    let body = match args.get(1) {
        Some(path) => std::fs::read(path).expect("reading the response body file"),
        None => br#"{"model_name":"iris","model_version":"1","outputs":[]}"#.to_vec(),
    };
    let body = Bytes::from(body);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
            eprintln!(
                "ceiling listening on http://{}",
                listener.local_addr().unwrap()
            );
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let _ = tcp.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
}

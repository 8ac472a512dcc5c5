//! The `vigil` command: `serve` and `check`. Start-up only; everything else is the library.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use vigil::backend::{BackendOptions, Backends, TensorSpec};
use vigil::config::{Cli, Command, EngineArgs, ServeArgs};
use vigil::http::HttpOptions;
use vigil::metrics::Metrics;
use vigil::serving::{Server, WorkerPool};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args.engine),
    }
}

fn build_server(engine: &EngineArgs, queue_size: usize) -> anyhow::Result<Arc<Server>> {
    let workers = engine.worker_count();
    let backends = Backends::new(BackendOptions {
        default: engine.backend,
        ort_library: engine.ort_library.as_deref(),
        parallelism: workers,
    })?;
    let pool = WorkerPool::new(workers, queue_size);
    tracing::info!(workers, queue_size, "inference worker pool started");
    Ok(Arc::new(Server::new(
        backends,
        pool,
        Arc::new(Metrics::new()),
    )))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let server = build_server(&args.engine, args.queue_size)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigil-http")
        .build()
        .context("starting the async runtime")?;
    let repository = args.engine.repository.clone();
    anyhow::ensure!(
        repository.is_dir(),
        "model repository {} is not a directory",
        repository.display()
    );
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("binding {}", args.http_addr))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "vigil listening on http://{addr}");
        // Load off the async workers; the server answers live (and ready = false) meanwhile.
        let loader = server.clone();
        tokio::task::spawn_blocking(move || match loader.load_repository(&repository) {
            Ok(reports) => {
                let ok = reports.iter().filter(|r| r.result.is_ok()).count();
                tracing::info!(
                    loaded = ok,
                    failed = reports.len() - ok,
                    "repository loaded; ready"
                );
            }
            Err(e) => tracing::error!(error = %e, "cannot read the model repository"),
        });
        let opts = HttpOptions {
            max_body_bytes: args.max_body_bytes,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        };
        vigil::http::serve(listener, server, opts, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn io_summary(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{}:{}{:?}", s.name, s.datatype, s.shape))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(engine: EngineArgs) -> anyhow::Result<()> {
    let server = build_server(&engine, 16)?;
    let reports = server.load_repository(&engine.repository)?;
    let mut rows = vec![[
        "MODEL".to_string(),
        "VERSION".into(),
        "ENGINE".into(),
        "INPUTS".into(),
        "OUTPUTS".into(),
        "LOAD".into(),
    ]];
    let mut failures = Vec::new();
    for r in &reports {
        match &r.result {
            Ok(v) => rows.push([
                v.model.clone(),
                v.version.to_string(),
                v.engine.to_string(),
                io_summary(&v.signature.inputs),
                io_summary(&v.signature.outputs),
                format!("{:.1} ms", v.load_time.as_secs_f64() * 1e3),
            ]),
            Err(reason) => {
                rows.push([
                    r.model.clone(),
                    r.version.map_or("-".into(), |v| v.to_string()),
                    "FAILED".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                failures.push(format!("{}: {reason}", r.model));
            }
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if reports.is_empty() {
        anyhow::bail!("no models found in {}", engine.repository.display());
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("error: {f}");
        }
        anyhow::bail!(
            "{} of {} models failed to load",
            failures.len(),
            reports.len()
        );
    }
    Ok(())
}

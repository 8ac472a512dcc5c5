//! The `vigil` command: `serve` and `check`. Start-up only; everything else is the library.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use vigil::backend::{BackendOptions, Backends};
use vigil::cli::{Cli, Command, EngineArgs, ProfileArgs, ServeArgs};
use vigil::config::ModelControl;
use vigil::http::HttpOptions;
use vigil::metrics::Metrics;
use vigil::serving::reload::Reloader;
use vigil::serving::{Server, ServerOptions, WorkerPool};
use vigil::tensor::spec::TensorSpec;

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
        Command::Serve(args) => serve(*args),
        Command::Check(args) => check(args.engine),
        Command::Profile(args) => profile(args),
    }
}

fn build_server(
    engine: &EngineArgs,
    queue_size: usize,
    state_dir: std::path::PathBuf,
    retrain_defaults: vigil::config::RetrainConfig,
    payload: vigil::payload::PayloadOptions,
) -> anyhow::Result<Arc<Server>> {
    let workers = engine.worker_count();
    // Inline versions run on the async threads (one per core, tokio's default) as well as
    // on the workers: ort keeps a session for each, so a run never waits for another.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let backends = Backends::new(BackendOptions {
        default: engine.backend,
        ort_library: engine.ort_library.as_deref(),
        parallelism: workers.max(cores),
    })?;
    let pool = WorkerPool::new(workers, queue_size);
    tracing::info!(workers, queue_size, "inference worker pool started");
    let options = ServerOptions {
        repository: engine.repository.clone(),
        state_dir,
        max_shadow_in_flight: workers * 4,
        retrain_defaults,
        payload,
    };
    Ok(Arc::new(Server::new(
        backends,
        pool,
        Arc::new(Metrics::new()),
        options,
    )?))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // A write past a file-size limit (`ulimit -f`, systemd's LimitFSIZE) must fail with
    // EFBIG, which the outbox rolls back and answers 5xx, not kill the server.
    // SAFETY: sets a signal disposition to SIG_IGN before any thread starts; no handler.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let repository = args.engine.repository.clone();
    let mlflow = mlflow_options(&args)?;
    if mlflow.is_some() {
        // The repository is MLflow's local cache: create it on first use.
        std::fs::create_dir_all(&repository)
            .with_context(|| format!("creating the model cache {}", repository.display()))?;
    }
    anyhow::ensure!(
        repository.is_dir(),
        "model repository {} is not a directory",
        repository.display()
    );
    for (flag, v) in [
        ("--body-timeout", args.body_timeout),
        ("--header-timeout", args.header_timeout),
    ] {
        anyhow::ensure!(!v.is_zero(), "{flag} must be more than 0");
    }
    anyhow::ensure!(args.max_connections > 0, "--max-connections must be > 0");
    anyhow::ensure!(args.grpc_max_streams > 0, "--grpc-max-streams must be > 0");
    anyhow::ensure!(
        !args.grpc_keepalive.is_zero(),
        "--grpc-keepalive must be more than 0"
    );
    raise_open_files_limit(args.max_connections);
    let admin_token = match (&args.admin_token, &args.admin_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --admin-token-file {}", path.display()))?;
            let t = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "--admin-token-file {} is empty",
                path.display()
            );
            Some(t)
        }
        (None, None) => None,
    };
    if admin_token.is_none() {
        tracing::warn!("no --admin-token: state-changing endpoints accept loopback clients only");
    }
    let retrain_defaults = args
        .retrain_defaults()
        .map_err(|e| anyhow::anyhow!("--retrain-*: {e}"))?;
    let payload = args.payload_options().map_err(|e| anyhow::anyhow!(e))?;
    let server = build_server(
        &args.engine,
        args.queue_size,
        args.state_dir.clone(),
        retrain_defaults,
        payload,
    )?;
    let reloader = Arc::new(Reloader::new(
        server.clone(),
        repository,
        args.model_control,
        &args.load_models,
    ));
    if mlflow.is_some() {
        let store = vigil::registry::AssignmentStore::new(&args.state_dir);
        vigil::registry::restore(&store, &server, &args.engine.repository);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigil-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("binding {}", args.http_addr))?;
        let addr = listener.local_addr()?;
        let admin = match args.admin_addr {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding --admin-addr {a}"))?;
                tracing::info!(admin_addr = %l.local_addr()?, "admin listener on http://{}", l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        tracing::info!(%addr, "vigil listening on http://{addr}");
        let grpc_listener = match args.grpc_addr {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding --grpc-addr {a}"))?;
                let bound = l.local_addr()?;
                tracing::info!(grpc_addr = %bound, "gRPC listening on grpc://{bound}");
                Some(l)
            }
            None => None,
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (retrain_stop_tx, retrain_stop_rx) = tokio::sync::watch::channel(false);
        {
            let (retrainer, stop) = (server.retrainer.clone(), retrain_stop_rx.clone());
            vigil::supervise::spawn_async("retrain_delivery", move || {
                retrainer.clone().run(stop.clone())
            });
        }
        vigil::serving::analysis::spawn(&server);
        vigil::memtrim::spawn();
        // Load off the async workers; the server answers live (and ready = false) meanwhile.
        let loader = reloader.clone();
        let (server2, interval) = (server.clone(), args.poll_interval);
        let poll_mode = args.model_control == ModelControl::Poll;
        let write_aliases = args.mlflow_write_aliases;
        tokio::spawn(async move {
            let first = loader.clone();
            match tokio::task::spawn_blocking(move || first.initial_load()).await {
                Ok(Ok(())) => {
                    let table = server2.table();
                    let ready = table.models.values().filter(|m| m.is_ready()).count();
                    tracing::info!(
                        models = table.models.len(),
                        ready,
                        "repository loaded; ready"
                    );
                }
                Ok(Err(e)) => tracing::error!(error = %e, "cannot read the model repository"),
                Err(e) => tracing::error!(error = %e, "initial load panicked"),
            }
            if let Some(opts) = mlflow {
                tracing::info!(uri = %opts.uri, models = ?opts.models, stable = %opts.stable_alias, canary = %opts.canary_alias, "following the MLflow Model Registry");
                let source = std::sync::Arc::new(vigil::registry::mlflow::Mlflow::new(
                    opts,
                    server2.clone(),
                    loader.clone(),
                ));
                if write_aliases {
                    server2.set_role_writer(std::sync::Arc::new(
                        vigil::registry::mlflow::AliasWriter::new(source.clone()),
                    ));
                }
                // Ready once the registry has been asked (or found unreachable: the
                // cached versions serve meanwhile).
                source.sync().await;
                vigil::supervise::spawn_async("registry_sync", move || {
                    source.clone().run(retrain_stop_rx.clone())
                });
            }
            server2.set_ready();
            if poll_mode && !interval.is_zero() {
                loader.spawn(interval, stop_rx);
            }
        });
        let opts = HttpOptions {
            max_body_bytes: args.max_body_bytes,
            max_tensor_elements: args.max_tensor_elements,
            body_timeout: args.body_timeout,
            shutdown_grace: args.shutdown_grace,
            admin_token: admin_token.clone(),
            api_token: args.api_token.clone(),
            metrics_token: args.metrics_token.clone(),
        };
        // One --max-connections budget for every listener, HTTP and gRPC.
        let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(args.max_connections));
        let listeners = vigil::http::Listeners {
            main: listener,
            admin,
            header_timeout: args.header_timeout,
            connections: connections.clone(),
        };
        // One signal, both fronts: each stops accepting and drains within the grace.
        let (down_tx, down_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = down_tx.send(true);
        });
        let stopped = move || {
            let mut rx = down_rx.clone();
            async move {
                let _ = rx.wait_for(|&down| down).await;
            }
        };
        let grpc = grpc_listener.map(|l| {
            let grpc_opts = vigil::grpc::GrpcOptions::new(
                args.max_body_bytes,
                args.max_tensor_elements,
                args.shutdown_grace,
                admin_token.clone(),
                args.api_token.clone(),
            )
            .with_limits(vigil::grpc::GrpcLimits {
                connections,
                body_timeout: args.body_timeout,
                keepalive: args.grpc_keepalive,
                max_streams: args.grpc_max_streams,
                idle_timeout: Some(args.grpc_idle_timeout).filter(|d| !d.is_zero()),
                preface_timeout: args.header_timeout,
            });
            tokio::spawn(vigil::grpc::serve(
                l,
                server.clone(),
                reloader.clone(),
                grpc_opts,
                stopped(),
            ))
        });
        vigil::http::serve(listeners, server, reloader, opts, stopped()).await?;
        if let Some(g) = grpc {
            match g.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "gRPC front failed"),
                Err(e) => tracing::error!(error = %e, "gRPC front panicked"),
            }
        }
        drop(stop_tx);
        let _ = retrain_stop_tx.send(true);
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// The MLflow source's settings, when `--registry mlflow`.
fn mlflow_options(
    args: &ServeArgs,
) -> anyhow::Result<Option<vigil::registry::mlflow::MlflowOptions>> {
    if args.registry != vigil::cli::RegistryKind::Mlflow {
        return Ok(None);
    }
    let uri = args
        .mlflow_uri
        .clone()
        .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
        .filter(|u| !u.is_empty())
        .context("--registry mlflow needs --mlflow-uri (or MLFLOW_TRACKING_URI)")?;
    anyhow::ensure!(
        uri.starts_with("http://") || uri.starts_with("https://"),
        "--mlflow-uri must be an http(s) URL of the MLflow tracking server, got '{uri}'"
    );
    anyhow::ensure!(
        args.mlflow_stable_alias != args.mlflow_canary_alias,
        "--mlflow-stable-alias and --mlflow-canary-alias must differ"
    );
    let interval = if args.poll_interval.is_zero() {
        Duration::from_secs(5)
    } else {
        args.poll_interval
    };
    Ok(Some(
        vigil::registry::mlflow::MlflowOptions {
            uri,
            models: args
                .mlflow_models
                .iter()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect(),
            stable_alias: args.mlflow_stable_alias.clone(),
            canary_alias: args.mlflow_canary_alias.clone(),
            interval,
            repository: args.engine.repository.clone(),
            state_dir: args.state_dir.clone(),
            token: None,
            basic: None,
        }
        .with_env_credentials(),
    ))
}

/// Each connection is a file descriptor: lift the soft limit towards the hard one so that
/// `--max-connections` can be reached (as Go's runtime does at start).
fn raise_open_files_limit(max_connections: usize) {
    #[cfg(unix)]
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = (max_connections as libc::rlim_t).saturating_add(256);
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::debug!(open_files = raised.rlim_cur, "raised the open-files limit");
            }
            if raised.rlim_cur < want {
                tracing::warn!(
                    open_files = raised.rlim_cur,
                    max_connections,
                    "the open-files limit is below --max-connections; accepts will fail before the limit"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
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
    let state_dir = std::env::temp_dir().join(format!("vigil-check-{}", std::process::id()));
    let server = build_server(
        &engine,
        16,
        state_dir.clone(),
        Default::default(),
        Default::default(),
    )?;
    let _cleanup = RemoveOnDrop(state_dir);
    let reloader = Reloader::new(
        server.clone(),
        engine.repository.clone(),
        ModelControl::Poll,
        &[],
    );
    reloader.initial_load()?;
    let mut rows = vec![[
        "MODEL".to_string(),
        "VERSION".into(),
        "ENGINE".into(),
        "INPUTS".into(),
        "OUTPUTS".into(),
        "LOAD".into(),
    ]];
    let mut failures = Vec::new();
    let table = server.table();
    for entry in table.models.values() {
        for v in entry.versions.values() {
            rows.push([
                v.model.clone(),
                v.version.to_string(),
                v.engine.to_string(),
                io_summary(&v.signature.inputs),
                io_summary(&v.signature.outputs),
                format!("{:.1} ms", v.load_time.as_secs_f64() * 1e3),
            ]);
        }
        for (version, reason) in &entry.failures {
            rows.push([
                entry.name.clone(),
                if *version == 0 {
                    "-".into()
                } else {
                    version.to_string()
                },
                "FAILED".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            failures.push(format!("{}: {reason}", entry.name));
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
    if table.models.is_empty() {
        anyhow::bail!("no models found in {}", engine.repository.display());
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("error: {f}");
        }
        anyhow::bail!("{} model(s) failed to load", failures.len());
    }
    Ok(())
}

fn profile(args: ProfileArgs) -> anyhow::Result<()> {
    use vigil::monitor::profile::{columns_for, Profile, ProfileOptions};
    anyhow::ensure!(args.bins >= 2, "--bins must be at least 2");
    anyhow::ensure!(
        (1..=10_000).contains(&args.sample),
        "--sample must be in 1..=10000"
    );
    let data = vigil::monitor::data::read(&args.data).map_err(anyhow::Error::msg)?;
    let defs = match &args.model {
        Some(dir) => {
            let file = vigil::backend::ModelFile::read(&dir.join("model.onnx"))?;
            Some(vigil::monitor::plan(&file.signature.inputs))
        }
        None => None,
    };
    let columns = columns_for(&data, defs.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.data.display()))?;
    let opts = ProfileOptions {
        bins: args.bins,
        sample: args.sample,
        categorical: args.categorical.clone(),
        numeric: args.numeric.clone(),
    };
    let source = args.data.file_name().map_or_else(
        || args.data.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let profile = Profile::build(columns, data.rows() as u64, source, &opts);
    let json = serde_json::to_vec(&profile)?;
    std::fs::write(&args.out, json).with_context(|| format!("writing {}", args.out.display()))?;
    for f in &profile.features {
        eprintln!(
            "{:<20} {:<11} bins {:>2}  mean {:>10.4}  std {:>10.4}",
            f.name,
            format!("{:?}", f.kind).to_lowercase(),
            f.proportions.len(),
            f.mean,
            f.std
        );
    }
    eprintln!(
        "wrote {} ({} features, {} rows)",
        args.out.display(),
        profile.features.len(),
        profile.rows
    );
    Ok(())
}

/// Removes a temporary directory when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

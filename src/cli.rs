//! The command line: `vigil serve`, `vigil check`, `vigil profile`, every flag also a
//! `VIGIL_*` environment variable. Parsed once by clap here; `main` turns the result into
//! the typed settings the rooms below take (a model's `config.toml` schema is `config`).
//! Only `main` imports this; it must never be imported by `serving`, `http` or anything
//! below them, and it imports only the ground floor (`config`, `duration`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{BackendChoice, ModelControl, RetrainConfig, RetrainTrigger};

/// vigil: a low-latency ONNX inference server (KServe V2 protocol) that watches what it serves.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model in the repository over HTTP (KServe V2 / Open Inference Protocol).
    Serve(Box<ServeArgs>),
    /// Load every model in the repository, print what was loaded, exit non-zero on any failure.
    Check(CheckArgs),
    /// Build a drift reference profile (reference.json) from training data.
    Profile(ProfileArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProfileArgs {
    /// Training data: CSV (numbers; an optional header row names the features) or .npy.
    #[arg(long)]
    pub data: PathBuf,
    /// The model version directory (DIR/N) the profile is for: checks the column count
    /// against its input and names the input.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Bins per numeric feature (inner quantile edges: bins - 1).
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
    /// Raw values kept per feature (drawn reproducibly), for KS and Wasserstein.
    #[arg(long, default_value_t = 5000)]
    pub sample: usize,
    /// Features to treat as categorical whatever their values (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub categorical: Vec<String>,
    /// Features to treat as numeric whatever their values (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub numeric: Vec<String>,
    /// Where to write the profile.
    #[arg(long)]
    pub out: PathBuf,
}

/// Where models come from and which engine runs them (shared by `serve` and `check`).
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Model repository: <DIR>/<model>/<version>/model.onnx, optional <DIR>/<model>/config.toml.
    #[arg(long, env = "VIGIL_REPOSITORY", default_value = "models")]
    pub repository: PathBuf,

    /// Inference engine: `auto` uses ONNX Runtime when its library loads, else tract.
    /// A model's own `backend` in its config.toml takes precedence.
    #[arg(long, env = "VIGIL_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendChoice,

    /// Path to libonnxruntime.so (default: $ORT_DYLIB_PATH, then libonnxruntime.so* next to the binary).
    #[arg(long, env = "VIGIL_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,

    /// Inference worker threads (default: one per CPU core).
    #[arg(long, env = "VIGIL_WORKERS")]
    pub workers: Option<usize>,
}

impl EngineArgs {
    pub fn worker_count(&self) -> usize {
        self.workers
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,

    /// Address to listen on for HTTP (port 0 picks a free port; the log says which).
    #[arg(long, env = "VIGIL_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,

    /// Address to listen on for gRPC (KServe V2 / Triton `inference.GRPCInferenceService`,
    /// grpc.health.v1, reflection); off unless given. Port 0 picks a free port; the log
    /// says which.
    #[arg(long, env = "VIGIL_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Largest request body accepted, in bytes; larger bodies get 413 (over gRPC, the
    /// largest request message: RESOURCE_EXHAUSTED).
    #[arg(long, env = "VIGIL_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most tensor elements (all inputs together) one request may carry; more is a 400
    /// before anything is allocated for them.
    #[arg(long, env = "VIGIL_MAX_TENSOR_ELEMENTS", default_value_t = 64 * 1024 * 1024)]
    pub max_tensor_elements: usize,

    /// How long a client may take to send a request body, on every route (408 after
    /// that). Durations take `250ms`, `1.5s`, `2m`, `1h30m`, `2d` or bare seconds.
    #[arg(long, env = "VIGIL_BODY_TIMEOUT", default_value = "30s", value_parser = crate::duration::parse_flag)]
    pub body_timeout: Duration,

    /// Requests waiting for a worker before new ones are refused with 503.
    #[arg(long, env = "VIGIL_QUEUE_SIZE", default_value_t = 1024)]
    pub queue_size: usize,

    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish.
    #[arg(
        long,
        alias = "shutdown-timeout",
        env = "VIGIL_SHUTDOWN_GRACE",
        default_value = "30s",
        value_parser = crate::duration::parse_flag
    )]
    pub shutdown_grace: Duration,

    /// How long a client may take to send a request's headers (the connection is closed
    /// after that: slowloris); also how long an idle keep-alive connection stays open,
    /// and how long a gRPC connection may take to say its HTTP/2 preface.
    #[arg(long, env = "VIGIL_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse_flag)]
    pub header_timeout: Duration,

    /// Connections served at once: both HTTP listeners and the gRPC listener together.
    /// At the limit vigil stops accepting until one closes (new clients wait in the
    /// kernel's accept queue).
    #[arg(long, env = "VIGIL_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// gRPC: how often an HTTP/2 keepalive PING goes to a client connection; a client
    /// that has not answered within 20 s is disconnected (a dead peer, a dropped NAT
    /// mapping), its streams and its `--max-connections` permit freed.
    #[arg(long, env = "VIGIL_GRPC_KEEPALIVE", default_value = "60s", value_parser = crate::duration::parse_flag)]
    pub grpc_keepalive: Duration,

    /// gRPC: streams (calls) one client connection may have open at once; more wait in
    /// the client (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "VIGIL_GRPC_MAX_STREAMS", default_value_t = 128)]
    pub grpc_max_streams: u32,

    /// gRPC: a client connection with no call open (a Watch stream counts as open) for
    /// this long is closed with HTTP/2 GOAWAY, giving back its `--max-connections` permit;
    /// clients reconnect on their next call. `0` keeps idle connections open; otherwise at
    /// least 1s (shorter closes connections between a client's calls).
    #[arg(long, env = "VIGIL_GRPC_IDLE_TIMEOUT", default_value = "5m", value_parser = idle_timeout_flag)]
    pub grpc_idle_timeout: Duration,

    /// Where models come from: `local` (the repository directory as it is) or `mlflow`
    /// (the MLflow Model Registry's aliases, cached in the repository directory).
    #[arg(long, env = "VIGIL_REGISTRY", value_enum, default_value = "local")]
    pub registry: RegistryKind,

    /// MLflow tracking server (with --registry mlflow); default: `MLFLOW_TRACKING_URI`.
    #[arg(long, env = "VIGIL_MLFLOW_URI")]
    pub mlflow_uri: Option<String>,

    /// Registered models to serve (comma-separated); default: every registered model
    /// carrying the stable or canary alias.
    #[arg(long, env = "VIGIL_MLFLOW_MODELS", value_delimiter = ',')]
    pub mlflow_models: Vec<String>,

    /// The MLflow alias whose version serves as stable.
    #[arg(long, env = "VIGIL_MLFLOW_STABLE_ALIAS", default_value = "champion")]
    pub mlflow_stable_alias: String,

    /// The MLflow alias whose version serves as canary.
    #[arg(long, env = "VIGIL_MLFLOW_CANARY_ALIAS", default_value = "challenger")]
    pub mlflow_canary_alias: String,

    /// Let the canary judge write its decisions to the MLflow aliases: a promotion
    /// points the stable alias at the canary's version and deletes the canary alias, a
    /// rollback deletes the canary alias. Off by default (vigil then only reads them).
    #[arg(long, env = "VIGIL_MLFLOW_WRITE_ALIASES")]
    pub mlflow_write_aliases: bool,

    /// A second listener for the control plane (repository, rollout and retrain changes,
    /// the retrain outbox) and `/metrics`, e.g. on an internal interface. When set, the
    /// main listener serves inference, metadata and health only.
    #[arg(long, env = "VIGIL_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Time between repository scans (0: scan only when asked through the repository API).
    #[arg(long, env = "VIGIL_POLL_INTERVAL", default_value = "5s", value_parser = crate::duration::parse_flag)]
    pub poll_interval: Duration,

    /// `poll`: serve what the repository holds, following changes. `explicit`: serve only
    /// models named by --load-model or loaded through POST /v2/repository/models/{m}/load.
    #[arg(long, env = "VIGIL_MODEL_CONTROL", value_enum, default_value = "poll")]
    pub model_control: ModelControl,

    /// In explicit mode, a model to load at start (repeatable; `*` for all).
    #[arg(long = "load-model", env = "VIGIL_LOAD_MODEL", value_delimiter = ',')]
    pub load_models: Vec<String>,

    /// Directory for state that must survive a restart (run-time rollout changes).
    #[arg(long, env = "VIGIL_STATE_DIR", default_value = "vigil-state")]
    pub state_dir: PathBuf,

    /// Bearer token required by endpoints that change state (repository load/unload,
    /// rollout, retrain). Without one, those endpoints accept only loopback clients.
    #[arg(long, env = "VIGIL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token (first line), instead of --admin-token.
    #[arg(long, env = "VIGIL_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// Bearer token required by inference and metadata endpoints (default: open).
    #[arg(long, env = "VIGIL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Bearer token required by /metrics (default: open). Health endpoints stay open.
    #[arg(long, env = "VIGIL_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Default retrain webhook URL for models without `[retrain] url`.
    #[arg(long, env = "VIGIL_RETRAIN_URL")]
    pub retrain_url: Option<String>,

    /// Default Standard Webhooks secret (`whsec_...`) for retrain webhooks.
    #[arg(long, env = "VIGIL_RETRAIN_SECRET", hide_env_values = true)]
    pub retrain_secret: Option<String>,

    /// Default cooldown between drift events of one model ("24h", "90s").
    #[arg(long, env = "VIGIL_RETRAIN_COOLDOWN", default_value = "24h", value_parser = crate::duration::check_flag)]
    pub retrain_cooldown: String,

    /// Default timeout of one delivery attempt.
    #[arg(long, env = "VIGIL_RETRAIN_TIMEOUT", default_value = "15s", value_parser = crate::duration::check_flag)]
    pub retrain_timeout: String,

    /// Default delivery attempts before an event is dead-lettered.
    #[arg(long, env = "VIGIL_RETRAIN_MAX_ATTEMPTS", default_value_t = 10)]
    pub retrain_max_attempts: u32,

    /// Default drift trigger: `local` (each replica's windows) or `fleet` (the
    /// VigilFleetDrift alert through Alertmanager).
    #[arg(
        long,
        env = "VIGIL_RETRAIN_TRIGGER",
        value_enum,
        default_value = "local"
    )]
    pub retrain_trigger: RetrainTrigger,

    /// Payload log directory: the requests a model's `[logging] sample` picks are written
    /// as JSON Lines under DIR/<model>/ (rotated, gzipped, capped). Without it nothing is
    /// written and sampled requests are counted as dropped.
    #[arg(long, env = "VIGIL_PAYLOAD_DIR")]
    pub payload_dir: Option<PathBuf>,

    /// A payload log file is rotated (and gzipped) before it grows past this many bytes.
    #[arg(long, env = "VIGIL_PAYLOAD_MAX_FILE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub payload_max_file_bytes: u64,

    /// ...or once it has been open this long.
    #[arg(long, env = "VIGIL_PAYLOAD_MAX_FILE_AGE", default_value = "1h", value_parser = crate::duration::parse_flag)]
    pub payload_max_file_age: Duration,

    /// Bytes a model's payload log may take on disk; the oldest rotated files are deleted
    /// first. At least --payload-max-file-bytes.
    #[arg(long, env = "VIGIL_PAYLOAD_RETENTION_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub payload_retention_bytes: u64,

    /// Finished payload log files older than this are deleted (off unless given). With
    /// --payload-replica, every replica sweeps the whole shared directory, so a replaced
    /// pod's files go too. Longer than --payload-max-file-age.
    #[arg(long, env = "VIGIL_PAYLOAD_RETENTION_AGE", value_parser = crate::duration::parse_flag)]
    pub payload_retention_age: Option<Duration>,

    /// Tensor bytes waiting for the payload writer, at most; beyond, records are dropped
    /// (counted as `queue_full`) rather than slowing inference.
    #[arg(long, env = "VIGIL_PAYLOAD_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub payload_queue_bytes: usize,

    /// CloudEvents sink: pairs of events POSTed at once over its keep-alive connections
    /// (1 to 256). Beyond them records wait in the sink's queue, then are dropped
    /// (`sink_full`); inference never waits.
    #[arg(long, env = "VIGIL_PAYLOAD_SINK_CONCURRENCY", default_value_t = 16)]
    pub payload_sink_concurrency: usize,

    /// This replica's name when several share one --payload-dir (a fleet on a shared
    /// volume): its files go under DIR/NAME/<model>/, so replicas never touch each
    /// other's files (start-up recovery, rotation and retention stay within NAME). Letters,
    /// digits, '.', '_' and '-', beginning with a letter or digit (a pod name, e.g. from the
    /// downward API). Needs --payload-dir.
    #[arg(long, env = "VIGIL_PAYLOAD_REPLICA")]
    pub payload_replica: Option<String>,
}

/// `--grpc-idle-timeout`: 0 (off) or at least a second.
fn idle_timeout_flag(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse_flag(s)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err(format!(
            "{d:?} is shorter than 1s: connections would be closed between a client's calls \
             (0 turns the idle timeout off)"
        ));
    }
    Ok(d)
}

/// Whether `name` can be a directory of its own under --payload-dir.
fn valid_replica(name: &str) -> bool {
    // A letter or digit first: a name starting with '.' is hidden from the documented
    // fleet glob (`DIR/*/<model>/`), one starting with '-' reads as a flag in scripts.
    name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ServeArgs {
    /// The payload log's settings, checked.
    pub fn payload_options(&self) -> Result<crate::payload::PayloadOptions, String> {
        if self.payload_max_file_bytes == 0 {
            return Err("--payload-max-file-bytes must be more than 0".into());
        }
        if self.payload_max_file_age.is_zero() {
            return Err("--payload-max-file-age must be more than 0".into());
        }
        if self.payload_retention_bytes < self.payload_max_file_bytes {
            return Err(format!(
                "--payload-retention-bytes ({}) must be at least --payload-max-file-bytes ({})",
                self.payload_retention_bytes, self.payload_max_file_bytes
            ));
        }
        if let Some(age) = self.payload_retention_age {
            if age <= self.payload_max_file_age {
                return Err(format!(
                    "--payload-retention-age ({age:?}) must be longer than --payload-max-file-age \
                     ({:?}): a file would be deleted as soon as it is finished",
                    self.payload_max_file_age
                ));
            }
        }
        if !(1..=256).contains(&self.payload_sink_concurrency) {
            return Err(format!(
                "--payload-sink-concurrency must be between 1 and 256, got {}",
                self.payload_sink_concurrency
            ));
        }
        if let Some(r) = &self.payload_replica {
            if !valid_replica(r) {
                return Err(format!(
                    "--payload-replica '{r}': use 1 to 253 letters, digits, '.', '_' or '-', \
                     beginning with a letter or digit"
                ));
            }
            if self.payload_dir.is_none() {
                return Err(format!(
                    "--payload-replica '{r}' names a subdirectory of --payload-dir, which is not set"
                ));
            }
        }
        // A replica's own subdirectory of a shared --payload-dir.
        let payload_dir = match (&self.payload_dir, &self.payload_replica) {
            (Some(d), Some(r)) => Some(d.join(r)),
            (d, _) => d.clone(),
        };
        if let Some(dir) = &payload_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("--payload-dir {}: {e}", dir.display()))?;
        }
        Ok(crate::payload::PayloadOptions {
            files: payload_dir.map(|dir| crate::payload::FileOptions {
                dir,
                replica: self.payload_replica.clone(),
                max_file_bytes: self.payload_max_file_bytes,
                max_file_age: self.payload_max_file_age,
                retention_bytes: self.payload_retention_bytes,
                retention_age: self.payload_retention_age,
            }),
            queue_bytes: self.payload_queue_bytes,
            sink_concurrency: self.payload_sink_concurrency,
        })
    }

    /// The server-wide `[retrain]` defaults.
    pub fn retrain_defaults(&self) -> Result<RetrainConfig, String> {
        let c = RetrainConfig {
            url: self.retrain_url.clone(),
            secret: self.retrain_secret.clone(),
            cooldown: Some(self.retrain_cooldown.clone()),
            timeout: Some(self.retrain_timeout.clone()),
            max_attempts: Some(self.retrain_max_attempts),
            trigger: Some(self.retrain_trigger),
            ..RetrainConfig::default()
        };
        c.validate()?;
        Ok(c)
    }
}

/// Where models come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    Local,
    Mlflow,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_every_flag() {
        let cli = Cli::try_parse_from([
            "vigil",
            "serve",
            "--repository",
            "/tmp/r",
            "--http-addr",
            "127.0.0.1:0",
            "--backend",
            "tract",
            "--workers",
            "3",
            "--max-body-bytes",
            "10",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.engine.backend, BackendChoice::Tract);
        assert_eq!(s.engine.worker_count(), 3);
        assert_eq!(s.max_body_bytes, 10);
        assert_eq!(s.http_addr.port(), 0);
    }

    #[test]
    fn the_grpc_idle_timeout_is_off_or_at_least_a_second() {
        assert_eq!(idle_timeout_flag("0"), Ok(Duration::ZERO));
        assert_eq!(idle_timeout_flag("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(idle_timeout_flag("5m"), Ok(Duration::from_secs(300)));
        for bad in ["1us", "0.0001", "999ms", "-1s", "abc"] {
            assert!(idle_timeout_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_replica_name_is_a_visible_directory_name() {
        for good in ["vigil-0", "r2", "pod.a_b-c", "0"] {
            assert!(valid_replica(good), "{good}");
        }
        let long = "a".repeat(254);
        for bad in [
            "", ".", "..", ".r1", "....", "-rf", "_x", "a/b", "a b", "é", &long,
        ] {
            assert!(!valid_replica(bad), "{bad}");
        }
    }
}

//! Settings: the command line (every flag also a `VIGIL_*` environment variable) and each
//! model's optional `config.toml`. Both are parsed and validated once, here; the rest of
//! the code receives typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::backend::BackendChoice;

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

    /// Largest request body accepted, in bytes; larger bodies get 413.
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
    /// after that: slowloris); also how long an idle keep-alive connection stays open.
    #[arg(long, env = "VIGIL_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse_flag)]
    pub header_timeout: Duration,

    /// HTTP connections served at once, both listeners together. At the limit vigil stops
    /// accepting until one closes (new clients wait in the kernel's accept queue).
    #[arg(long, env = "VIGIL_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

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
}

impl ServeArgs {
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

/// How the set of served models is decided (Triton's model control modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelControl {
    Poll,
    Explicit,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// A model's `config.toml`. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Engine for this model (`auto`, `tract` or `ort`); default: the server's `--backend`.
    pub backend: Option<BackendChoice>,
    /// Which versions are served.
    #[serde(default)]
    pub version_policy: VersionPolicyConfig,
    /// Stable and canary versions, and how traffic is split between them.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Drift monitoring of inputs and outputs.
    #[serde(default)]
    pub drift: DriftConfig,
    /// Where drift events go (the retraining pipeline's webhook).
    #[serde(default)]
    pub retrain: RetrainConfig,
    /// Dynamic batching of concurrent requests.
    #[serde(default)]
    pub batching: BatchingConfig,
}

/// `[batching]`: requests for the same version that queue together are concatenated
/// along the batch dimension and run once.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most rows in one execution; `1` turns batching off. Default: off when the model's
    /// first dimension is fixed, else [`BatchingConfig::DEFAULT_MAX_BATCH`].
    pub max_batch_size: Option<usize>,
    /// Longest a request waits for others to join its batch, in microseconds. Waiting
    /// happens only while other requests of the version are in flight: a lone request
    /// runs at once.
    #[serde(default = "default_queue_delay_us")]
    pub max_queue_delay_us: u64,
    /// Requests waiting to be batched before new ones get 503 (default: `--queue-size`).
    pub max_queue_size: Option<usize>,
    /// Batch sizes that are run as soon as they can be formed, without waiting longer.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
}

fn default_queue_delay_us() -> u64 {
    200
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: None,
            max_queue_delay_us: default_queue_delay_us(),
            max_queue_size: None,
            preferred_batch_sizes: Vec::new(),
        }
    }
}

impl BatchingConfig {
    pub const DEFAULT_MAX_BATCH: usize = 32;

    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == Some(0) {
            return Err(
                "[batching] max_batch_size must be at least 1 (1 turns batching off)".into(),
            );
        }
        if self.max_queue_size == Some(0) {
            return Err("[batching] max_queue_size must be at least 1".into());
        }
        if self.max_queue_delay_us > 1_000_000 {
            return Err(format!(
                "[batching] max_queue_delay_us is {} (more than a second)",
                self.max_queue_delay_us
            ));
        }
        let max = self.max_batch_size.unwrap_or(Self::DEFAULT_MAX_BATCH);
        if let Some(p) = self
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > max)
        {
            return Err(format!(
                "[batching] preferred batch size {p} is outside 1..={max} (max_batch_size)"
            ));
        }
        Ok(())
    }
}

/// `[retrain]` (and the server-wide `--retrain-*` defaults): every field optional.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    pub url: Option<String>,
    /// Standard Webhooks key (`whsec_` + base64), or...
    pub secret: Option<String>,
    /// ...the environment variable that holds it.
    pub secret_env: Option<String>,
    /// No new drift event for a model within this long of the last one ("24h").
    #[serde(default, deserialize_with = "crate::duration::serde_text::deserialize")]
    pub cooldown: Option<String>,
    /// Per delivery attempt ("15s").
    #[serde(default, deserialize_with = "crate::duration::serde_text::deserialize")]
    pub timeout: Option<String>,
    pub max_attempts: Option<u32>,
    pub format: Option<crate::retrain::Format>,
    /// Airflow: the DAG to trigger, and the API token (or the variable holding it).
    pub dag_id: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    /// What creates drift events: this replica's windows (`local`, default) or the fleet
    /// alert through Alertmanager (`fleet`).
    pub trigger: Option<RetrainTrigger>,
}

/// `[retrain] trigger`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RetrainTrigger {
    /// Each replica's own drift windows create events.
    #[default]
    Local,
    /// Only the fleet alert (`POST /v2/retrain/alertmanager`) creates drift events.
    Fleet,
}

impl std::fmt::Debug for RetrainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("RetrainConfig")
            .field("url", &self.url)
            .field("secret", &redact(&self.secret))
            .field("secret_env", &self.secret_env)
            .field("cooldown", &self.cooldown)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("format", &self.format)
            .field("dag_id", &self.dag_id)
            .field("token", &redact(&self.token))
            .field("token_env", &self.token_env)
            .field("trigger", &self.trigger)
            .finish()
    }
}

impl RetrainConfig {
    /// This config with `defaults` filling the gaps.
    pub fn or(&self, defaults: &RetrainConfig) -> RetrainConfig {
        RetrainConfig {
            url: self.url.clone().or_else(|| defaults.url.clone()),
            secret: self.secret.clone().or_else(|| defaults.secret.clone()),
            secret_env: self
                .secret_env
                .clone()
                .or_else(|| defaults.secret_env.clone()),
            cooldown: self.cooldown.clone().or_else(|| defaults.cooldown.clone()),
            timeout: self.timeout.clone().or_else(|| defaults.timeout.clone()),
            max_attempts: self.max_attempts.or(defaults.max_attempts),
            format: self.format.or(defaults.format),
            dag_id: self.dag_id.clone().or_else(|| defaults.dag_id.clone()),
            token: self.token.clone().or_else(|| defaults.token.clone()),
            token_env: self
                .token_env
                .clone()
                .or_else(|| defaults.token_env.clone()),
            trigger: self.trigger.or(defaults.trigger),
        }
    }

    pub fn trigger(&self) -> RetrainTrigger {
        self.trigger.unwrap_or_default()
    }

    pub fn cooldown(&self) -> std::time::Duration {
        self.cooldown
            .as_deref()
            .and_then(|c| crate::duration::parse(c).ok())
            .unwrap_or(std::time::Duration::from_secs(86_400))
    }

    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [("cooldown", &self.cooldown), ("timeout", &self.timeout)] {
            if let Some(v) = v {
                crate::duration::parse(v).map_err(|e| format!("retrain.{k}: {e}"))?;
            }
        }
        if let Some(s) = &self.secret {
            crate::retrain::sign::key_of(s).map_err(|e| format!("retrain.secret: {e}"))?;
        }
        if self.max_attempts == Some(0) {
            return Err("retrain.max_attempts must be at least 1".into());
        }
        if let Some(u) = &self.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "retrain.url '{u}' must start with http:// or https://"
                ));
            }
        }
        Ok(())
    }

    /// The delivery target, with secrets read now (from the config or the environment).
    pub fn target(&self) -> Option<crate::retrain::Target> {
        let url = self.url.clone()?;
        let secret = self
            .secret
            .clone()
            .or_else(|| self.secret_env.as_ref().and_then(|v| std::env::var(v).ok()))
            .and_then(|s| crate::retrain::sign::key_of(&s).ok());
        let token = self
            .token
            .clone()
            .or_else(|| self.token_env.as_ref().and_then(|v| std::env::var(v).ok()));
        Some(crate::retrain::Target {
            url,
            secret,
            timeout: self
                .timeout
                .as_deref()
                .and_then(|t| crate::duration::parse(t).ok())
                .unwrap_or(std::time::Duration::from_secs(15)),
            max_attempts: self.max_attempts.unwrap_or(10),
            format: self.format.unwrap_or_default(),
            dag_id: self.dag_id.clone(),
            token,
        })
    }
}

/// Which test decides that a numeric feature drifted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMethod {
    /// KS (Bonferroni-corrected) or PSI.
    #[default]
    Auto,
    Ks,
    Psi,
}

/// `[drift]`: windows, thresholds and the detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    pub enabled: bool,
    /// A window closes after this many rows...
    pub window_rows: u64,
    /// ...or after this long (0: off) if it holds at least `min_rows`: seconds, or a
    /// duration such as "10m".
    #[serde(with = "crate::duration::serde_secs")]
    pub window_seconds: f64,
    pub min_rows: u64,
    pub psi_threshold: f64,
    /// KS (and chi-square) significance, divided by the number of features.
    pub ks_alpha: f64,
    /// Share of drifted features that makes a window drifted.
    pub drift_share: f64,
    /// Drifted windows in a row that make the version drifting.
    pub consecutive_windows: u32,
    pub method: DriftMethod,
    /// Without a reference.json, the first this-many rows served become the reference.
    pub reference_rows: u64,
    /// Raw values kept per feature and window (reservoir-sampled beyond).
    pub max_window_sample: usize,
    /// Bins of a reference built from served rows.
    pub bins: usize,
    /// Features forced categorical / numeric.
    pub categorical: Vec<String>,
    pub numeric: Vec<String>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            window_rows: 1000,
            window_seconds: 0.0,
            min_rows: 100,
            psi_threshold: 0.2,
            ks_alpha: 0.05,
            drift_share: 0.5,
            consecutive_windows: 1,
            method: DriftMethod::Auto,
            reference_rows: 5000,
            max_window_sample: 10_000,
            bins: 10,
            categorical: Vec::new(),
            numeric: Vec::new(),
        }
    }
}

impl DriftConfig {
    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: &str| Err(format!("drift.{m}"));
        if self.window_rows == 0 {
            return bad("window_rows must be at least 1");
        }
        if !(self.window_seconds.is_finite() && self.window_seconds >= 0.0) {
            return bad("window_seconds must be >= 0");
        }
        if !(self.ks_alpha > 0.0 && self.ks_alpha < 1.0) {
            return bad("ks_alpha must be in (0, 1)");
        }
        if !(self.drift_share > 0.0 && self.drift_share <= 1.0) {
            return bad("drift_share must be in (0, 1]");
        }
        if !(self.psi_threshold.is_finite() && self.psi_threshold > 0.0) {
            return bad("psi_threshold must be > 0");
        }
        if self.consecutive_windows == 0 {
            return bad("consecutive_windows must be at least 1");
        }
        if self.reference_rows == 0 {
            return bad("reference_rows must be at least 1");
        }
        if !(1..=10_000).contains(&self.max_window_sample) {
            return bad("max_window_sample must be in 1..=10000 (KS is exact up to 10000 values)");
        }
        if !(2..=100).contains(&self.bins) {
            return bad("bins must be in 2..=100");
        }
        Ok(())
    }
}

/// `[version_policy]`: one of `latest = N`, `specific = [..]`, `all = true`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionPolicyConfig {
    pub latest: Option<usize>,
    pub specific: Option<Vec<u64>>,
    pub all: Option<bool>,
}

/// The versions a model serves, out of those on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest(usize),
    /// Exactly these versions (those that exist).
    Specific(Vec<u64>),
    All,
}

impl VersionPolicyConfig {
    pub fn policy(&self) -> Result<VersionPolicy, String> {
        match (self.latest, &self.specific, self.all) {
            (None, None, None | Some(false)) => Ok(VersionPolicy::Latest(1)),
            (Some(0), None, None) => Err("version_policy.latest must be at least 1".into()),
            (Some(n), None, None) => Ok(VersionPolicy::Latest(n)),
            (None, Some(v), None) if v.is_empty() || v.contains(&0) => {
                Err("version_policy.specific must list positive version numbers".into())
            }
            (None, Some(v), None) => Ok(VersionPolicy::Specific(v.clone())),
            (None, None, Some(true)) => Ok(VersionPolicy::All),
            _ => Err("version_policy takes one of latest, specific or all".into()),
        }
    }
}

/// How a canary shares traffic with the stable version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    /// The canary answers `weight`% of unpinned requests.
    #[default]
    Split,
    /// The canary gets a copy of every request; its answer is only measured.
    Shadow,
}

impl RolloutMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutMode::Split => "split",
            RolloutMode::Shadow => "shadow",
        }
    }
}

pub const DEFAULT_STICKY_HEADER: &str = "x-vigil-routing-key";

fn default_sticky_header() -> String {
    DEFAULT_STICKY_HEADER.to_string()
}

/// `[rollout]`: the stable version, an optional canary and its share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// The version unpinned requests go to (default: the highest served).
    pub stable: Option<u64>,
    pub canary: Option<u64>,
    /// Percent of unpinned requests the canary answers in split mode (0..=100).
    #[serde(default)]
    pub weight: u8,
    #[serde(default)]
    pub mode: RolloutMode,
    /// Requests with the same value of this header land on the same version.
    #[serde(default = "default_sticky_header")]
    pub sticky_header: String,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            stable: None,
            canary: None,
            weight: 0,
            mode: RolloutMode::Split,
            sticky_header: default_sticky_header(),
        }
    }
}

impl RolloutConfig {
    /// Checks what can be checked without knowing which versions are loaded.
    pub fn validate(&self) -> Result<(), String> {
        if self.weight > 100 {
            return Err(format!("rollout weight {} is outside 0..=100", self.weight));
        }
        if self.stable == Some(0) || self.canary == Some(0) {
            return Err("rollout versions are positive integers".into());
        }
        if self.canary.is_some() && self.canary == self.stable {
            return Err("the canary cannot be the stable version".into());
        }
        if axum::http::HeaderName::from_bytes(self.sticky_header.as_bytes()).is_err() {
            return Err(format!(
                "'{}' is not a valid header name",
                self.sticky_header
            ));
        }
        Ok(())
    }
}

/// A `config.toml` that cannot be used, with the file named.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl ModelConfig {
    /// Reads `<model dir>/config.toml`; a missing file means all defaults.
    pub fn load(model_dir: &Path) -> Result<ModelConfig, ConfigError> {
        let path = model_dir.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
            Err(e) => {
                return Err(ConfigError {
                    path,
                    message: e.to_string(),
                })
            }
        };
        let config: ModelConfig = toml::from_str(&text).map_err(|e| ConfigError {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |message| ConfigError {
            path: path.clone(),
            message,
        };
        config.version_policy.policy().map_err(invalid)?;
        config.rollout.validate().map_err(invalid)?;
        config.drift.validate().map_err(invalid)?;
        config.retrain.validate().map_err(invalid)?;
        config.batching.validate().map_err(invalid)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = std::env::temp_dir().join(format!("vigil-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "backend = \"ort\"\nbatch_size = 4\n",
        )
        .unwrap();
        let err = ModelConfig::load(&dir).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains("batch_size"), "{err}");
        std::fs::write(dir.join("config.toml"), "backend = \"tract\"\n").unwrap();
        assert_eq!(
            ModelConfig::load(&dir).unwrap().backend,
            Some(BackendChoice::Tract)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ModelConfig::load(&dir).unwrap(), ModelConfig::default());
    }

    #[test]
    fn policies_and_rollouts_validate() {
        let parse = |t: &str| toml::from_str::<ModelConfig>(t).unwrap();
        assert_eq!(
            parse("").version_policy.policy(),
            Ok(VersionPolicy::Latest(1))
        );
        assert_eq!(
            parse("[version_policy]\nlatest = 3")
                .version_policy
                .policy(),
            Ok(VersionPolicy::Latest(3))
        );
        assert_eq!(
            parse("[version_policy]\nspecific = [1, 3]")
                .version_policy
                .policy(),
            Ok(VersionPolicy::Specific(vec![1, 3]))
        );
        assert_eq!(
            parse("[version_policy]\nall = true")
                .version_policy
                .policy(),
            Ok(VersionPolicy::All)
        );
        assert!(parse("[version_policy]\nall = true\nlatest = 2")
            .version_policy
            .policy()
            .is_err());
        assert!(parse("[version_policy]\nlatest = 0")
            .version_policy
            .policy()
            .is_err());
        let r = parse("[rollout]\nstable = 1\ncanary = 2\nweight = 10\nmode = \"shadow\"").rollout;
        assert_eq!(r.mode, RolloutMode::Shadow);
        assert_eq!(r.sticky_header, DEFAULT_STICKY_HEADER);
        assert!(r.validate().is_ok());
        assert!(parse("[rollout]\ncanary = 2\nweight = 101")
            .rollout
            .validate()
            .is_err());
        assert!(parse("[rollout]\nstable = 2\ncanary = 2")
            .rollout
            .validate()
            .is_err());
        assert!(toml::from_str::<ModelConfig>("[rollout]\nweigth = 3").is_err());
    }

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
}

//! The retrain hook: a durable outbox of events and their signed delivery.
//!
//! An event counts as created once it is appended to `<state-dir>/retrain/outbox.jsonl`
//! and fsynced. A delivery task POSTs pending events (Standard Webhooks signatures, or an
//! Airflow DAG run), retrying with exponential backoff and jitter until a 2xx; after
//! `max_attempts` the event is dead-lettered and can be replayed. The event id is stable
//! across retries and restarts, so receivers can deduplicate. The outbox is a log of
//! small JSON records, replayed on start and compacted when delivered entries pile up.
//!
//! This module knows nothing of models or HTTP routes: the serving layer hands it
//! events and a resolver that says, at send time, where and how a model's events go.
//! It reads the `[retrain]` schema from `config` (and turns it into a [`Target`] here);
//! it must never import `serving`, `http` or `monitor`. Rooms: `outbox`
//! (the durable log), `sign` (Standard Webhooks signatures), this file (delivery).

mod metrics;
mod outbox;
pub mod sign;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::config::Format;
use crate::config::RetrainConfig;

pub use outbox::{EventRecord, EventState};

/// Where and how one model's events are delivered (secrets resolved at send time).
#[derive(Clone)]
pub struct Target {
    pub url: String,
    /// Standard Webhooks key bytes.
    pub secret: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub format: Format,
    pub dag_id: Option<String>,
    pub token: Option<String>,
}

impl Target {
    /// The delivery target, with secrets read now (from the config or the environment).
    pub fn from_config(config: &RetrainConfig) -> Option<Target> {
        let url = config.url.clone()?;
        let secret = config
            .secret
            .clone()
            .or_else(|| {
                config
                    .secret_env
                    .as_ref()
                    .and_then(|v| std::env::var(v).ok())
            })
            .and_then(|s| sign::key_of(&s).ok());
        let token = config.token.clone().or_else(|| {
            config
                .token_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        });
        Some(Target {
            url,
            secret,
            timeout: config
                .timeout
                .as_deref()
                .and_then(|t| crate::duration::parse(t).ok())
                .unwrap_or(std::time::Duration::from_secs(15)),
            max_attempts: config.max_attempts.unwrap_or(10),
            format: config.format.unwrap_or_default(),
            dag_id: config.dag_id.clone(),
            token,
        })
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("format", &self.format)
            .field("dag_id", &self.dag_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Resolves a model's delivery target now; `None`: no hook configured.
pub type Resolver = Arc<dyn Fn(&str) -> Option<Target> + Send + Sync>;

/// The event body's `data`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct EventData {
    pub event_id: String,
    pub model: String,
    pub model_version: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift_share: Option<f64>,
    pub features: Vec<FeatureInfo>,
    pub server: String,
    /// A canary judge's decision (`vigil.canary.*` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryInfo>,
    /// The window that went past a `[retrain]` quality threshold
    /// (`vigil.quality.degraded` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityInfo>,
    /// Where the data of a retrain trigger (drift, quality, manual) is, for the
    /// pipeline's first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataRefs>,
}

/// Where a retrain event's data is: the payload log's finished files that may hold the
/// requests of the window that tripped, and the files of the labels joined so far.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DataRefs {
    /// The server's `--payload-dir` (`null`: no payload log; only the range is known).
    /// The paths below are relative to it.
    pub payload_dir: Option<String>,
    /// The window's time range (RFC 3339): the requests in question are the records of
    /// `requests` whose `time` lies in it (a file may hold a few records outside it).
    pub from: String,
    pub to: String,
    /// Gzipped JSON Lines payload records (`<model>/<ms>-<seq>.jsonl.gz`).
    pub requests: Vec<String>,
    /// Gzipped JSON Lines of joined labels (`<model>/labels/<ms>-<seq>.jsonl.gz`), each
    /// with the request's `id`, its prediction and its truth.
    pub labels: Vec<String>,
    /// Labelled rows joined for the version so far (`null`: no feedback is kept, or a
    /// fleet event: each replica counts its own).
    pub labels_joined: Option<u64>,
    /// A fleet event's layout: the glob, relative to `payload_dir`, of every replica's
    /// finished request files of the model (`*/<model>/*.jsonl.gz`). `requests` lists those
    /// finished when the event was created; another replica's latest records reach a file
    /// the glob matches within its `--payload-max-file-age`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_glob: Option<String>,
    /// The same for the label files (`*/<model>/labels/*.jsonl.gz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_glob: Option<String>,
    /// An event whose range held more than 10 000 request files (a fleet's shared
    /// directory, or one replica's many small files): how many older ones `requests`
    /// leaves out (it keeps the newest); the glob, then always given, finds them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_omitted: Option<u64>,
    /// The same for `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_omitted: Option<u64>,
}

/// Builds an event's [`DataRefs`] once the event is sure to be created (it seals the
/// payload log's files, so it is not called for a trip that the cooldown holds).
pub type DataSource<'a> = &'a dyn Fn() -> Option<DataRefs>;

/// What a `vigil.quality.degraded` event says of the window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct QualityInfo {
    /// `stable`, `canary`, `shadow` or `standby`.
    pub role: String,
    /// Labelled rows in the rolling window (`[logging] quality_window`).
    pub window_rows: u64,
    /// Labelled rows joined for the version so far.
    pub labels_received: u64,
    pub breaches: Vec<QualityBreach>,
    /// Set when the label-free estimate tripped (`expected_accuracy`): the predictions
    /// it was judged on, labelled or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<ExpectedInfo>,
}

/// The window of predictions a `min_quality.expected_accuracy` trip was judged on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ExpectedInfo {
    /// Predictions in the window (the last `quality_window`).
    pub rows: u64,
    /// Labelled rows the calibration rests on (0: the raw mean top probability).
    pub calibrated_on: u64,
}

/// One threshold a quality window went past.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct QualityBreach {
    pub metric: String,
    pub value: f64,
    /// `min` (`min_quality`: the value is below it) or `max` (`max_error`: above it).
    pub bound: String,
    pub threshold: f64,
}

/// What a `vigil.canary.*` event says of the decision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CanaryInfo {
    pub stable_version: String,
    pub canary_version: String,
    /// `split` or `shadow`.
    pub mode: String,
    /// `step_passed`, `promoted`, `rolled_back` or `held`.
    pub decision: String,
    /// The judged step (1-based) of `steps`, and its canary weight.
    pub step: usize,
    pub steps: usize,
    pub weight: u8,
    /// The check that failed (a rollback) or `traffic` (held for too few requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The judged step's record as `GET .../rollout/analysis` shows it: both arms'
    /// figures and every check with its value, threshold and p-value.
    #[schema(value_type = Object)]
    pub figures: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WindowInfo {
    pub closed_at: String,
    pub rows: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FeatureInfo {
    pub name: String,
    pub psi: Option<f64>,
    pub ks_pvalue: Option<f64>,
    pub drifted: bool,
}

/// The whole event as POSTed (Standard Webhooks payload shape).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub data: EventData,
}

/// Why an event could not be created or replayed.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("no retrain hook is configured for model '{0}' (set [retrain] url in its config.toml or --retrain-url)")]
    NoTarget(String),
    #[error("no dead-lettered event '{0}'")]
    NoSuchEvent(String),
    #[error("cannot write the retrain outbox: {0}")]
    Io(String),
}

/// One alert of an Alertmanager notification, as [`Retrainer::fleet_alert`] needs it.
#[derive(Clone, Debug)]
pub struct FleetAlert {
    pub alertname: String,
    pub model: String,
    /// The `version` label (may be empty).
    pub version: String,
    pub fingerprint: String,
    pub starts_at: String,
    /// `endsAt`: Alertmanager's zero time, or a time to come, while the alert fires.
    pub ends_at: String,
    pub summary: String,
    /// The `data_window` annotation: how far before `startsAt` the rule's data reaches
    /// (its range plus its `for:`), so the event's range covers what tripped it.
    pub data_window: String,
}

/// Why a fleet alert cannot be turned into an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AlertError {
    #[error("startsAt '{0}' is not an RFC 3339 time")]
    StartsAt(String),
    #[error("the data_window annotation: {0}")]
    DataWindow(String),
}

/// Unix seconds of an RFC 3339 time (`Z` or a `±HH:MM` offset, as Go writes them);
/// `None` for anything else and for times before 1970 (Alertmanager's zero `endsAt`).
fn unix_of_rfc3339(t: &str) -> Option<f64> {
    let t = t.trim();
    if !t.is_ascii() || t.len() < 20 {
        return None;
    }
    let (utc, offset) = match t.as_bytes()[t.len() - 6] {
        sign @ (b'+' | b'-') if t.as_bytes()[t.len() - 3] == b':' => {
            let (h, m) = (t.get(t.len() - 5..t.len() - 3)?, t.get(t.len() - 2..)?);
            // RFC 3339's time-numoffset: hours 00-23, minutes 00-59.
            let (h, m) = (h.parse::<u8>().ok()?, m.parse::<u8>().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = f64::from(h) * 3600.0 + f64::from(m) * 60.0;
            let secs = if sign == b'+' { secs } else { -secs };
            (format!("{}Z", &t[..t.len() - 6]), secs)
        }
        _ => (t.to_string(), 0.0),
    };
    let time = humantime::parse_rfc3339_weak(&utc).ok()?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() - offset)
}

impl FleetAlert {
    /// The time range (Unix seconds) of the data behind the alert, as of `now`: from
    /// `startsAt` less `data_window` to `endsAt` when that has passed (a resolved alert),
    /// else to `now`. A `startsAt` ahead of `now` (clock skew) is taken as `now`.
    pub fn range(&self, now: f64) -> Result<(f64, f64), AlertError> {
        let start = unix_of_rfc3339(&self.starts_at)
            .ok_or_else(|| AlertError::StartsAt(self.starts_at.chars().take(100).collect()))?;
        let lookback = if self.data_window.trim().is_empty() {
            0.0
        } else {
            crate::duration::parse(self.data_window.trim())
                .map_err(|e| AlertError::DataWindow(e.to_string()))?
                .as_secs_f64()
        };
        let start = start.min(now);
        let to = unix_of_rfc3339(&self.ends_at)
            .filter(|&end| end >= start && end <= now)
            .unwrap_or(now);
        Ok(((start - lookback).max(0.0), to))
    }
}

/// What became of a drift trip or a fleet alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertOutcome {
    Created(String),
    /// The event exists already (a repeated notification).
    Duplicate(String),
    /// The model had a drift event within its cooldown.
    Cooldown,
    NoHook,
}

/// Counters the hook reports (exported by the metrics module through these callbacks).
pub trait RetrainMetrics: Send + Sync {
    fn event(&self, model: &str, reason: &str);
    fn delivery(&self, model: &str, outcome: &str);
    fn gauges(&self, pending: &HashMap<String, i64>, dead: &HashMap<String, i64>);
}

pub struct Retrainer {
    outbox: Mutex<outbox::Outbox>,
    resolver: Resolver,
    metrics: Arc<dyn RetrainMetrics>,
    server: String,
    wake: tokio::sync::Notify,
    client: reqwest::Client,
}

/// RFC 3339 in UTC with milliseconds, from a Unix time in seconds.
pub fn rfc3339(unix: f64) -> String {
    let secs = unix.floor() as i64;
    let ms = ((unix - secs as f64) * 1000.0).round().min(999.0) as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The stable id of a drift event: the same model, version and window give the same id
/// on every replica and after every restart.
pub fn drift_event_id(model: &str, version: u64, closed_at: f64, rows: u64) -> String {
    event_id(&format!("{model}\n{version}\n{closed_at:.3}\n{rows}"))
}

/// The id of a quality event: the version's window as of the labels received when it
/// tripped, and when.
pub fn quality_event_id(model: &str, version: u64, at: f64, labels_received: u64) -> String {
    event_id(&format!(
        "quality\n{model}\n{version}\n{at:.3}\n{labels_received}"
    ))
}

/// The event kinds that are retrain triggers and share a model's cooldown.
pub const DRIFT_KIND: &str = "vigil.drift.detected";
pub const QUALITY_KIND: &str = "vigil.quality.degraded";

/// `evt_` and the first 128 bits of the SHA-256 of `seed`, in hex.
fn event_id(seed: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(seed.as_bytes());
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{hex}")
}

/// How soon an event whose model has no hook configured is looked at again (no attempt
/// is spent on it).
const NO_HOOK_RECHECK: Duration = Duration::from_secs(5);

/// The longest wait between two delivery attempts, whatever the receiver asks for.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Backoff before attempt `n + 1` after `n` failures: 1 s doubling, capped at 5 min,
/// with jitter in [0.5, 1] of that.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = 2f64
        .powi(failures.saturating_sub(1).min(16) as i32)
        .min(300.0);
    Duration::from_secs_f64(base * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

impl Retrainer {
    /// Opens (and replays) the outbox under `state_dir`.
    pub fn open(
        state_dir: &Path,
        resolver: Resolver,
        metrics: Arc<dyn RetrainMetrics>,
        server: String,
    ) -> Result<Arc<Retrainer>, RetrainError> {
        let outbox = outbox::Outbox::open(&state_dir.join("retrain"))
            .map_err(|e| RetrainError::Io(e.to_string()))?;
        let r = Arc::new(Retrainer {
            outbox: Mutex::new(outbox),
            resolver,
            metrics,
            server,
            wake: tokio::sync::Notify::new(),
            client: reqwest::Client::builder()
                .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
                // A redirect is not a delivery: followed, a 301/302/303 turns the POST
                // into a bodiless, unsigned GET whose 2xx marked the event delivered.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client with default settings"),
        });
        r.export_gauges();
        Ok(r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, outbox::Outbox> {
        self.outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn export_gauges(&self) {
        let (pending, dead) = self.lock().counts_by_model();
        self.metrics.gauges(&pending, &dead);
    }

    /// A drift trip: creates an event unless the model is in its cooldown or has no hook.
    /// Returns the event id when one was created.
    pub fn drift_detected(
        &self,
        data: EventData,
        cooldown: Duration,
        refs: DataSource<'_>,
    ) -> Result<Option<String>, RetrainError> {
        match self.trigger_event(DRIFT_KIND, data, cooldown, refs)? {
            AlertOutcome::Created(id) => Ok(Some(id)),
            _ => Ok(None),
        }
    }

    /// A quality window past its threshold: a `vigil.quality.degraded` event, under the
    /// same cooldown as drift events (both are retrain triggers).
    pub fn quality_degraded(
        &self,
        data: EventData,
        cooldown: Duration,
        refs: DataSource<'_>,
    ) -> Result<AlertOutcome, RetrainError> {
        self.trigger_event(QUALITY_KIND, data, cooldown, refs)
    }

    fn trigger_event(
        &self,
        kind: &str,
        mut data: EventData,
        cooldown: Duration,
        refs: DataSource<'_>,
    ) -> Result<AlertOutcome, RetrainError> {
        let what = if kind == QUALITY_KIND {
            "quality degraded"
        } else {
            "drift detected"
        };
        if (self.resolver)(&data.model).is_none() {
            tracing::info!(model = %data.model, "{what}; no retrain hook configured");
            return Ok(AlertOutcome::NoHook);
        }
        let now = now_unix();
        let (id, model) = (data.event_id.clone(), data.model.clone());
        let gate = |ob: &outbox::Outbox| {
            if ob.knows(&id) {
                return Some(AlertOutcome::Duplicate(id.clone()));
            }
            if let Some(last) = ob.last_drift_event(&model) {
                if now - last < cooldown.as_secs_f64() {
                    tracing::info!(model = %model, cooldown_s = cooldown.as_secs(),
                        "{what} during the retrain cooldown; no new event");
                    return Some(AlertOutcome::Cooldown);
                }
            }
            None
        };
        if let Some(outcome) = gate(&self.lock()) {
            return Ok(outcome);
        }
        // Finding the data (sealing files, listing a fleet's directory) takes a while and
        // is done outside the lock: the checks are made again with the creation, under
        // one lock, or concurrent notifications of one alert (or two alerts of a model in
        // its cooldown) would each create it.
        data.data = refs();
        self.create_gated(kind, data, now, &gate)
    }

    /// A firing fleet alert (Alertmanager): one drift event per alert. Its id comes from
    /// the alert's fingerprint and `startsAt`, so every notification of the same alert, on
    /// any replica, names the same event, and this replica creates it once.
    /// `refs` gives the data pointer of the alert's range (see [`FleetAlert::range`]).
    pub fn fleet_alert(
        &self,
        alert: &FleetAlert,
        cooldown: Duration,
        refs: DataSource<'_>,
    ) -> Result<AlertOutcome, RetrainError> {
        let id = event_id(&format!(
            "alertmanager\n{}\n{}",
            alert.fingerprint, alert.starts_at
        ));
        let data = EventData {
            event_id: id,
            model: alert.model.clone(),
            model_version: alert.version.clone(),
            reason: format!(
                "fleet drift: {} firing since {}{}",
                alert.alertname,
                alert.starts_at,
                if alert.summary.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", alert.summary)
                }
            ),
            window: None,
            drift_share: None,
            features: Vec::new(),
            server: self.server.clone(),
            canary: None,
            quality: None,
            data: None,
        };
        self.trigger_event(DRIFT_KIND, data, cooldown, refs)
    }

    /// An operator's request: always accepted when a hook is configured.
    pub fn manual(
        &self,
        model: &str,
        version: Option<u64>,
        reason: &str,
        refs: DataSource<'_>,
    ) -> Result<String, RetrainError> {
        if (self.resolver)(model).is_none() {
            return Err(RetrainError::NoTarget(model.to_string()));
        }
        let now = now_unix();
        let id = event_id(&format!("manual\n{model}\n{now}\n{}", std::process::id()));
        let data = EventData {
            event_id: id.clone(),
            model: model.to_string(),
            model_version: version.map(|v| v.to_string()).unwrap_or_default(),
            reason: if reason.is_empty() {
                "manual".into()
            } else {
                reason.to_string()
            },
            window: None,
            drift_share: None,
            features: Vec::new(),
            server: self.server.clone(),
            canary: None,
            quality: None,
            data: refs(),
        };
        self.create("vigil.retrain.requested", data, now)
    }

    /// A decision of the canary judge (`kind` is `vigil.canary.step`, `.promoted`,
    /// `.rolled_back` or `.held`). The id comes from the analysis (model, versions, start)
    /// and the step, so the same decision judged again after a crash names the same event
    /// and is created once. `Ok(None)`: the model has no hook.
    pub fn canary_decision(
        &self,
        kind: &str,
        model: &str,
        analysis_started_at: f64,
        reason: String,
        info: CanaryInfo,
    ) -> Result<Option<String>, RetrainError> {
        if (self.resolver)(model).is_none() {
            tracing::debug!(
                model,
                kind,
                "canary decision; no retrain hook configured, no event"
            );
            return Ok(None);
        }
        let id = event_id(&format!(
            "canary\n{model}\n{}\n{}\n{analysis_started_at:.3}\n{}\n{kind}",
            info.stable_version, info.canary_version, info.step
        ));
        if self.lock().knows(&id) {
            return Ok(Some(id));
        }
        let data = EventData {
            event_id: id,
            model: model.to_string(),
            model_version: info.canary_version.clone(),
            reason,
            window: None,
            drift_share: None,
            features: Vec::new(),
            server: self.server.clone(),
            canary: Some(info),
            quality: None,
            data: None,
        };
        self.create(kind, data, now_unix()).map(Some)
    }

    fn create(&self, kind: &str, data: EventData, now: f64) -> Result<String, RetrainError> {
        match self.create_gated(kind, data, now, &|_| None)? {
            AlertOutcome::Created(id) => Ok(id),
            _ => unreachable!("an ungated event is created"),
        }
    }

    /// Creates the event unless `gate`, asked under the outbox's lock, says otherwise.
    fn create_gated(
        &self,
        kind: &str,
        mut data: EventData,
        now: f64,
        gate: &dyn Fn(&outbox::Outbox) -> Option<AlertOutcome>,
    ) -> Result<AlertOutcome, RetrainError> {
        data.server = self.server.clone();
        let reason_label = if kind == DRIFT_KIND {
            "drift"
        } else if kind == QUALITY_KIND {
            "quality"
        } else if kind.starts_with("vigil.canary.") {
            "canary"
        } else {
            "manual"
        };
        let event = Event {
            kind: kind.to_string(),
            timestamp: rfc3339(now),
            data,
        };
        let id = event.data.event_id.clone();
        let model = event.data.model.clone();
        {
            let mut ob = self.lock();
            if let Some(outcome) = gate(&ob) {
                return Ok(outcome);
            }
            ob.create(event, now)
                .map_err(|e| RetrainError::Io(e.to_string()))?;
        }
        tracing::info!(model = %model, event_id = %id, kind, "retrain event created");
        self.metrics.event(&model, reason_label);
        self.export_gauges();
        self.wake.notify_one();
        Ok(AlertOutcome::Created(id))
    }

    /// Pending, recently delivered and dead-lettered events.
    pub fn list(&self) -> Vec<EventRecord> {
        self.lock().list()
    }

    /// Queues a dead-lettered event again (attempts start over).
    pub fn replay(&self, id: &str) -> Result<(), RetrainError> {
        let ok = self
            .lock()
            .replay(id)
            .map_err(|e| RetrainError::Io(e.to_string()))?;
        if !ok {
            return Err(RetrainError::NoSuchEvent(id.to_string()));
        }
        self.export_gauges();
        self.wake.notify_one();
        Ok(())
    }

    /// Delivers pending events until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut rng = crate::rng::Rng::new(now_unix().to_bits());
        loop {
            let now = now_unix();
            let next = self.lock().next_due();
            let wait = match next {
                Some((_, due)) if due <= now => None,
                Some((_, due)) => Some(Duration::from_secs_f64((due - now).min(300.0))),
                None => Some(Duration::from_secs(300)),
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let Some((id, _)) = next else { continue };
            let Some(record) = self.lock().get(&id) else {
                continue;
            };
            let model = record.event.data.model.clone();
            let Some(target) = (self.resolver)(&model) else {
                // No hook for the model now: at a restart the delivery loop runs before
                // the repository is loaded, or its config dropped the hook. Nothing was
                // sent, so no attempt is spent: the event waits and is looked at again.
                tracing::debug!(model = %model, event_id = %id, "retrain event waits: no hook configured now");
                let due = now_unix() + NO_HOOK_RECHECK.as_secs_f64();
                let result =
                    self.lock()
                        .failed(&id, record.attempts, "no retrain hook configured now", due);
                if let Err(e) = result {
                    tracing::error!(error = %e, "cannot write the retrain outbox");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                continue;
            };
            let outcome = self.attempt(&record.event, &target).await;
            let jitter = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let max_attempts = (self.resolver)(&model).map_or(10, |t| t.max_attempts.max(1));
            let result = {
                let mut ob = self.lock();
                match &outcome {
                    Attempt::Delivered => ob.delivered(&id),
                    Attempt::Retry(err, retry_after) => {
                        let failures = record.attempts + 1;
                        if failures >= max_attempts {
                            ob.dead(&id, failures, err)
                        } else {
                            // A receiver may ask for a longer wait, never a shorter one
                            // than the backoff: `Retry-After: 0` (or a past date) from a
                            // blip must not burn every attempt in milliseconds.
                            let delay = retry_after
                                .unwrap_or_default()
                                .max(backoff(failures, jitter))
                                .min(MAX_RETRY_DELAY);
                            ob.failed(&id, failures, err, now_unix() + delay.as_secs_f64())
                        }
                    }
                    Attempt::GiveUp(err) => ob.dead(&id, record.attempts + 1, err),
                }
            };
            if let Err(e) = &result {
                tracing::error!(error = %e, "cannot write the retrain outbox");
            }
            let label = match &outcome {
                Attempt::Delivered => "delivered",
                Attempt::Retry(..) => "retry",
                Attempt::GiveUp(_) => "rejected",
            };
            self.metrics.delivery(&model, label);
            match &outcome {
                Attempt::Delivered => {
                    tracing::info!(model = %model, event_id = %id, "retrain event delivered")
                }
                Attempt::Retry(e, _) | Attempt::GiveUp(e) => {
                    tracing::warn!(model = %model, event_id = %id, attempts = record.attempts + 1, error = %e, "retrain delivery failed")
                }
            }
            self.export_gauges();
            if result.is_err() {
                // The outcome is not recorded (a full disk, say): the event stays due as it
                // was. Pause before trying it again rather than POST it in a tight loop.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    async fn attempt(&self, event: &Event, target: &Target) -> Attempt {
        let (url, body, headers) = match target.format {
            Format::Standard => {
                let body = serde_json::to_vec(event).expect("events serialise");
                let ts = (now_unix() as u64).to_string();
                let mut headers = vec![
                    ("webhook-id".to_string(), event.data.event_id.clone()),
                    ("webhook-timestamp".to_string(), ts.clone()),
                ];
                if let Some(key) = &target.secret {
                    headers.push((
                        "webhook-signature".into(),
                        sign::signature(key, &event.data.event_id, &ts, &body),
                    ));
                }
                (target.url.clone(), body, headers)
            }
            Format::Airflow => {
                let dag = target.dag_id.clone().unwrap_or_else(|| "retrain".into());
                let url = format!(
                    "{}/api/v2/dags/{dag}/dagRuns",
                    target.url.trim_end_matches('/')
                );
                let body = serde_json::to_vec(&serde_json::json!({
                    "dag_run_id": event.data.event_id,
                    "logical_date": null,
                    "conf": event.data,
                }))
                .expect("events serialise");
                let mut headers = Vec::new();
                if let Some(t) = &target.token {
                    headers.push(("authorization".to_string(), format!("Bearer {t}")));
                }
                (url, body, headers)
            }
        };
        let mut req = self
            .client
            .post(&url)
            .timeout(target.timeout)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let location = resp.headers().get("location").map(|l| {
                    String::from_utf8_lossy(l.as_bytes())
                        .chars()
                        .take(200)
                        .collect::<String>()
                });
                // Clamped, never trusted: a receiver's `Retry-After: 1e20` means "later".
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| crate::duration::retry_after(v.as_bytes(), MAX_RETRY_DELAY));
                match status {
                    200..=299 => Attempt::Delivered,
                    409 if target.format == Format::Airflow => Attempt::Delivered,
                    408 | 409 | 429 => Attempt::Retry(format!("HTTP {status}"), retry_after),
                    300..=399 => Attempt::Retry(
                        format!(
                            "HTTP {status}: redirects are not followed (location: {})",
                            location.as_deref().unwrap_or("none")
                        ),
                        retry_after,
                    ),
                    400..=499 => Attempt::GiveUp(format!("HTTP {status} (not retried)")),
                    _ => Attempt::Retry(format!("HTTP {status}"), retry_after),
                }
            }
            Err(e) if e.is_timeout() => {
                Attempt::Retry(format!("timed out after {:?}", target.timeout), None)
            }
            Err(e) => Attempt::Retry(format!("cannot reach the receiver: {e}"), None),
        }
    }
}

enum Attempt {
    Delivered,
    Retry(String, Option<Duration>),
    GiveUp(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(300));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(2));
    }

    struct NoMetrics;
    impl RetrainMetrics for NoMetrics {
        fn event(&self, _: &str, _: &str) {}
        fn delivery(&self, _: &str, _: &str) {}
        fn gauges(&self, _: &HashMap<String, i64>, _: &HashMap<String, i64>) {}
    }

    /// Concurrent notifications of one fleet alert, or two alerts of a model within its
    /// cooldown, find the data at the same time (slow: a fleet's directory is listed) and
    /// must still make one event: the checks are repeated under the outbox's lock.
    #[test]
    fn concurrent_alerts_make_one_event() {
        let dir = std::env::temp_dir().join(format!("vigil-retrain-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let resolver: Resolver = Arc::new(|_: &str| {
            Some(Target {
                url: "http://127.0.0.1:9/hook".into(),
                secret: None,
                timeout: Duration::from_secs(1),
                max_attempts: 1,
                format: Format::Standard,
                dag_id: None,
                token: None,
            })
        });
        let r = Retrainer::open(&dir, resolver, Arc::new(NoMetrics), "test".into()).unwrap();
        let alert = |model: &str, fingerprint: &str| FleetAlert {
            alertname: "VigilFleetDrift".into(),
            model: model.into(),
            version: "1".into(),
            fingerprint: fingerprint.into(),
            starts_at: "2026-12-03T10:00:00Z".into(),
            ends_at: String::new(),
            summary: String::new(),
            data_window: String::new(),
        };
        // Both notifications are past the first check when either looks for its data.
        for (model, a, b, cooldown) in [
            ("iris", "same", "same", Duration::ZERO),
            ("mlp", "one", "two", Duration::from_secs(3600)),
        ] {
            let met = std::sync::Barrier::new(2);
            let refs = || {
                met.wait();
                None
            };
            let outcomes: Vec<AlertOutcome> = std::thread::scope(|s| {
                let t: Vec<_> = [a, b]
                    .into_iter()
                    .map(|f| {
                        let (r, refs, alert) = (&r, &refs, alert(model, f));
                        s.spawn(move || r.fleet_alert(&alert, cooldown, refs).unwrap())
                    })
                    .collect();
                t.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let created = outcomes
                .iter()
                .filter(|o| matches!(o, AlertOutcome::Created(_)))
                .count();
            assert_eq!(created, 1, "{a}/{b}: {outcomes:?}");
            let other = if a == b {
                matches!(
                    outcomes
                        .iter()
                        .find(|o| !matches!(o, AlertOutcome::Created(_))),
                    Some(AlertOutcome::Duplicate(_))
                )
            } else {
                outcomes.contains(&AlertOutcome::Cooldown)
            };
            assert!(other, "{a}/{b}: {outcomes:?}");
        }
        assert_eq!(r.list().len(), 2);
        drop(r);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fleet_alerts_range() {
        let alert = |starts: &str, ends: &str, window: &str| FleetAlert {
            alertname: "VigilFleetDrift".into(),
            model: "iris".into(),
            version: String::new(),
            fingerprint: "f".into(),
            starts_at: starts.into(),
            ends_at: ends.into(),
            summary: String::new(),
            data_window: window.into(),
        };
        let t0 = 1_796_292_000.0; // 2026-12-03T10:00:00Z
        let now = t0 + 600.0;
        let firing = alert("2026-12-03T10:00:00Z", "0001-01-01T00:00:00Z", "11m");
        assert_eq!(firing.range(now), Ok((t0 - 660.0, now)));
        // Go's offsets, nanoseconds, no window, an endsAt to come (still firing).
        let a = alert(
            "2026-12-03T11:00:00.500000000+01:00",
            "2026-12-03T10:20:00Z",
            "",
        );
        assert_eq!(a.range(now), Ok((t0 + 0.5, now)));
        // Resolved: up to its end.
        let a = alert("2026-12-03T10:00:00Z", "2026-12-03T10:05:00.000Z", "1m");
        assert_eq!(a.range(now), Ok((t0 - 60.0, t0 + 300.0)));
        // An end before the start, or unreadable: up to now.
        for end in [
            "2026-12-03T09:00:00Z",
            "yesterday",
            "",
            "2026-12-03T10:05:00\u{e9}",
        ] {
            assert_eq!(
                alert("2026-12-03T10:00:00Z", end, "").range(now),
                Ok((t0, now))
            );
        }
        // A start ahead of the clock is now; a window past the epoch starts at it.
        assert_eq!(
            alert("2030-01-01T00:00:00Z", "", "").range(now),
            Ok((now, now))
        );
        assert_eq!(
            alert("2026-12-03T10:00:00Z", "", "60y").range(now),
            Ok((0.0, now))
        );
        for bad in [
            "",
            "1970",
            "2026-13-45T99:00:00Z",
            "2026-12-03T10:00:00+1:00",
            "2026-12-07T17:00:00+99:99",
            "2026-12-07T17:00:00-24:00",
            "2026-12-07T17:00:00+05:60",
            "\u{1F600}",
        ] {
            assert!(
                matches!(alert(bad, "", "").range(now), Err(AlertError::StartsAt(_))),
                "{bad}"
            );
        }
        for bad in ["-5m", "soon", "1e300", "NaN"] {
            assert!(
                matches!(
                    alert("2026-12-03T10:00:00Z", "", bad).range(now),
                    Err(AlertError::DataWindow(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_and_ids() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_292_000.25), "2026-12-03T10:00:00.250Z");
        let a = drift_event_id("iris", 2, 1.5, 1000);
        assert_eq!(a, drift_event_id("iris", 2, 1.5, 1000));
        assert_ne!(a, drift_event_id("iris", 3, 1.5, 1000));
        assert!(a.starts_with("evt_") && a.len() == 36);
    }
}

//! What is served now, and running a request on it.
//!
//! The routing table maps model names to their loaded versions and rollout. It is
//! immutable and lives behind one `ArcSwap`: a request does one atomic load and keeps an
//! `Arc` to the version it resolved, so a table swap never disturbs requests in flight
//! and a removed version is freed when its last request ends. Writers (the reload loop,
//! the rollout endpoints) build a new table off to the side and store it whole, one at
//! a time under a short lock that is never held across loading or I/O waits.
//!
//! This file is the face: [`Server`], [`ServedVersion`] and loading a version. The rest is
//! one room per step: `table` (the table and its writers), `route` (which version answers),
//! `infer` (checking inputs and running them), `exec` (inline or pool, decided from the
//! measured compute), `pool` (the workers and batcher), `reload` (following the
//! repository), `rollout` (split arithmetic and persisted rollouts), `analysis` (the
//! canary judge: steps, checks, decisions).
//! Serving imports `backend`, `monitor`, `retrain`, `repository` and the ground floor;
//! it must never import `http`, `grpc`, `registry` or `console`.

pub mod analysis;
pub mod exec;
mod infer;
pub mod pool;
pub mod reload;
pub mod rollout;
mod route;
mod stats;
mod table;
pub mod triton_io;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::backend::{BackendError, Backends, Engine, ModelSignature, Session};
use crate::config::{ModelConfig, RetrainConfig};
use crate::metrics::{Metrics, VersionMetrics};
use crate::monitor::{DriftEvent, Monitor, MonitorSetup, Scorer};
use crate::repository::{Fingerprint, VersionSource};
use crate::retrain::Retrainer;

pub use infer::{
    check_raw_size, order_inputs, pick_outputs, Described, InferError, InputCheck, RawField,
};
pub use pool::WorkerPool;
pub use route::{PendingRoute, Refused, Route};
pub use stats::{StatsSnapshot, VersionStats};
pub use table::{lookup_entry, ModelEntry, ModelUpdate, RolloutError, RoutingTable};

/// One loaded model version: immutable apart from its counters.
pub struct ServedVersion {
    pub model: String,
    pub version: u64,
    pub engine: Engine,
    pub signature: ModelSignature,
    pub session: Box<dyn Session>,
    pub load_time: Duration,
    /// When it finished loading (its counters start here).
    pub loaded_at: Instant,
    /// The files it was loaded from, to notice when they are replaced.
    pub fingerprint: Fingerprint,
    pub metrics: VersionMetrics,
    pub stats: VersionStats,
    /// Drift monitoring of what this version serves.
    pub monitor: Arc<Monitor>,
    /// Dynamic batching queue and settings (`[batching]`).
    pub batcher: pool::Batcher,
    /// Inline or pool (`[execution]`), and the compute measurements behind it.
    pub exec: exec::Execution,
    /// Which of its requests the payload log keeps (`[logging] sample`).
    pub sampler: crate::payload::Sampler,
}

/// Everything the serving layer needs to start.
pub struct ServerOptions {
    pub repository: PathBuf,
    pub state_dir: PathBuf,
    /// Shadow copies allowed in flight at once; beyond that they are skipped.
    pub max_shadow_in_flight: usize,
    /// `[retrain]` defaults for models that do not set them.
    pub retrain_defaults: RetrainConfig,
    /// Where sampled requests are logged (`--payload-*`).
    pub payload: crate::payload::PayloadOptions,
}

/// The versions a model registry says should serve (e.g. MLflow's `champion` and
/// `challenger` aliases). While a model has one, its version policy is not used: exactly
/// these versions are loaded, and the rollout's stable and canary are these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub stable: Option<u64>,
    pub canary: Option<u64>,
}

/// A change of roles the canary judge decided, for a registry that owns the roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleChange {
    /// The canary (this version) becomes stable; the canary role is emptied.
    Promote(u64),
    /// The canary (this version) is dropped; stable is untouched.
    Rollback(u64),
}

/// Writes the judge's decisions back to a model registry (MLflow with
/// `--mlflow-write-aliases`), so the registry says what serves.
pub trait RoleWriter: Send + Sync {
    /// Starts the change, or says whether it is done: `true` once the registry holds it,
    /// `false`: ask again later. Must not wait on the registry (the judge's state is held).
    fn write(&self, model: &str, change: RoleChange) -> bool;
}

pub struct Server {
    table: Arc<ArcSwap<RoutingTable>>,
    /// Serialises table writers; held only while a new table is built from loaded parts.
    write: Mutex<()>,
    backends: Backends,
    pool: WorkerPool,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    rollouts: rollout::RolloutStore,
    /// The canary judge's durable state.
    judge: analysis::Judge,
    /// Roles a model registry assigns (MLflow aliases), over any rollout setting.
    assignments: Mutex<HashMap<String, Assignment>>,
    shadow_slots: Arc<tokio::sync::Semaphore>,
    scorer: Scorer,
    drift_events: crossbeam_channel::Sender<DriftEvent>,
    pub retrainer: Arc<Retrainer>,
    /// The payload log's queue (its writer thread owns the files).
    payload: crate::payload::PayloadLog,
    pub options: ServerOptions,
    /// Where the judge's decisions go when a registry owns the roles.
    role_writer: std::sync::OnceLock<Arc<dyn RoleWriter>>,
}

/// A model's effective `[retrain]` settings: its own over the server's defaults.
fn retrain_config(table: &RoutingTable, defaults: &RetrainConfig, model: &str) -> RetrainConfig {
    match table.models.get(model) {
        Some(e) => e.config.retrain.or(defaults),
        None => defaults.clone(),
    }
}

/// A version's `[execution]` settings; `[batching]` counts as asking for batches only when
/// it is written and batches more than one row.
fn exec_settings(config: &ModelConfig, batching: &pool::BatchSettings) -> exec::ExecSettings {
    exec::ExecSettings::resolve(
        &config.execution,
        config.batching.explicit && batching.max_batch > 1,
    )
}

/// How long a retrain event waits for the payload log's writer to finish its files (all
/// callers are off the async threads). The writer first writes what is queued before the
/// seal (up to `--payload-queue-bytes`): under load 5 s was seen not to be enough.
const SEAL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a retrain event's data is: the payload log sealed for `[from, to]` (Unix
/// seconds), and the labels joined so far, each list bounded by [`bound_lists`].
fn data_refs(
    payload: &crate::payload::PayloadLog,
    dir: Option<&std::path::Path>,
    model: &str,
    range: (f64, f64),
    labels_joined: Option<u64>,
) -> crate::retrain::DataRefs {
    let mut r = sealed_refs(payload, dir, model, range, labels_joined);
    bound_lists(&mut r, "", model);
    r
}

/// An event's file lists cut to the newest [`crate::payload::files::EVENT_LIST_MAX`] each,
/// and how many each leaves out; when any are, the globs (relative to `payload_dir`, under
/// `prefix`) that find them all are given too. A payload log is capped in bytes, not
/// files: small or short-lived files (`--payload-max-file-age 10s` on a quiet model) add
/// up to hundreds of thousands, and an event is stored in the outbox and sent whole on
/// every retry.
fn bound_lists(r: &mut crate::retrain::DataRefs, prefix: &str, model: &str) {
    use crate::payload::files::{glob_escape, newest, EVENT_LIST_MAX};
    let (requests, requests_omitted) = newest(std::mem::take(&mut r.requests), EVENT_LIST_MAX);
    let (labels, labels_omitted) = newest(std::mem::take(&mut r.labels), EVENT_LIST_MAX);
    r.requests = requests;
    r.labels = labels;
    r.requests_omitted = (requests_omitted > 0).then_some(requests_omitted);
    r.labels_omitted = (labels_omitted > 0).then_some(labels_omitted);
    if requests_omitted > 0 || labels_omitted > 0 {
        let pattern = glob_escape(model);
        r.requests_glob
            .get_or_insert_with(|| format!("{prefix}{pattern}/*.jsonl.gz"));
        r.labels_glob
            .get_or_insert_with(|| format!("{prefix}{pattern}/labels/*.jsonl.gz"));
    }
}

/// [`data_refs`] with the lists whole.
fn sealed_refs(
    payload: &crate::payload::PayloadLog,
    dir: Option<&std::path::Path>,
    model: &str,
    (from, to): (f64, f64),
    labels_joined: Option<u64>,
) -> crate::retrain::DataRefs {
    let sealed = match payload.seal(model, from, to, SEAL_WAIT) {
        Some(sealed) => sealed,
        None => {
            if payload.has_dir() {
                tracing::warn!(
                    model,
                    wait_s = SEAL_WAIT.as_secs(),
                    "the payload log's writer did not seal the model's files in time; \
                     the retrain event carries the time range without its file list"
                );
            }
            Default::default()
        }
    };
    crate::retrain::DataRefs {
        payload_dir: dir.map(|d| d.display().to_string()),
        from: crate::retrain::rfc3339(from),
        to: crate::retrain::rfc3339(to),
        requests: sealed.requests,
        labels: sealed.labels,
        labels_joined,
        requests_glob: None,
        labels_glob: None,
        requests_omitted: None,
        labels_omitted: None,
    }
}

/// Labelled rows joined for a version so far (`None`: the model keeps no feedback).
fn labels_joined(table: &RoutingTable, model: &str, version: u64) -> Option<u64> {
    let f = &table.models.get(model)?.feedback;
    if !f.enabled() {
        return None;
    }
    let r = f.report();
    Some(
        r.versions
            .iter()
            .find(|q| q.version == version)
            .map_or(0, |q| q.labels_received),
    )
}

/// What the drift-event thread needs besides the channel.
struct DriftForwarder {
    table: Arc<ArcSwap<RoutingTable>>,
    defaults: RetrainConfig,
    retrainer: Arc<Retrainer>,
    payload: crate::payload::PayloadLog,
    payload_dir: Option<std::path::PathBuf>,
}

/// Turns drift trips into retrain events (a thread of its own: the outbox fsyncs).
fn forward_drift_events(rx: &crossbeam_channel::Receiver<DriftEvent>, f: &DriftForwarder) {
    let (table, defaults, retrainer) = (&f.table, &f.defaults, &f.retrainer);
    for ev in rx {
        let cfg = retrain_config(&table.load(), defaults, &ev.model);
        if cfg.trigger() == crate::config::RetrainTrigger::Fleet {
            tracing::info!(model = %ev.model, version = ev.version,
                "this replica's windows drift; with trigger = \"fleet\" the fleet alert decides");
            continue;
        }
        let data = crate::retrain::EventData {
            event_id: crate::retrain::drift_event_id(
                &ev.model,
                ev.version,
                ev.window.closed_at,
                ev.window.rows,
            ),
            model: ev.model.clone(),
            model_version: ev.version.to_string(),
            reason: format!(
                "drift: {:.0}% of features drifted in a window of {} rows",
                ev.window.drift_share * 100.0,
                ev.window.rows
            ),
            window: Some(crate::retrain::WindowInfo {
                closed_at: crate::retrain::rfc3339(ev.window.closed_at),
                rows: ev.window.rows,
            }),
            drift_share: Some(ev.window.drift_share),
            features: ev
                .window
                .features
                .iter()
                .map(|f| crate::retrain::FeatureInfo {
                    name: f.name.clone(),
                    psi: f.psi,
                    ks_pvalue: f.ks_pvalue,
                    drifted: f.drifted,
                })
                .collect(),
            server: String::new(),
            canary: None,
            quality: None,
            data: None,
        };
        let refs = || {
            Some(data_refs(
                &f.payload,
                f.payload_dir.as_deref(),
                &ev.model,
                (ev.window.opened_at, ev.window.closed_at),
                labels_joined(&table.load(), &ev.model, ev.version),
            ))
        };
        if let Err(e) = retrainer.drift_detected(data, cfg.cooldown(), &refs) {
            tracing::error!(model = %ev.model, error = %e, "cannot create the retrain event");
        }
    }
}

impl Server {
    pub fn new(
        backends: Backends,
        pool: WorkerPool,
        metrics: Arc<Metrics>,
        options: ServerOptions,
    ) -> Result<Server, crate::retrain::RetrainError> {
        let table: Arc<ArcSwap<RoutingTable>> =
            Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
        let resolver: crate::retrain::Resolver = {
            let (table, defaults) = (table.clone(), options.retrain_defaults.clone());
            Arc::new(move |model: &str| {
                crate::retrain::Target::from_config(&retrain_config(
                    &table.load(),
                    &defaults,
                    model,
                ))
            })
        };
        let server_name = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "vigil".into());
        let retrainer = Retrainer::open(
            &options.state_dir,
            resolver,
            Arc::new(metrics.retrain()),
            server_name,
        )?;
        let sink_of: crate::payload::SinkOf = {
            let table = table.clone();
            Arc::new(move |model: &str| {
                let t = table.load();
                let url = t
                    .models
                    .get(model)?
                    .config
                    .logging
                    .cloudevents_url
                    .as_deref()?;
                Some(Arc::from(url))
            })
        };
        let payload =
            crate::payload::PayloadLog::start(options.payload.clone(), metrics.payload(), sink_of);
        let (drift_events, rx) = crossbeam_channel::bounded(256);
        {
            let f = DriftForwarder {
                table: table.clone(),
                defaults: options.retrain_defaults.clone(),
                retrainer: retrainer.clone(),
                payload: payload.clone(),
                payload_dir: options.payload.files.as_ref().map(|o| o.dir.clone()),
            };
            crate::supervise::spawn_thread("retrain_events", "vigil-retrain-events", move || {
                forward_drift_events(&rx, &f)
            });
        }
        let judge = analysis::Judge::open(&options.state_dir, metrics.canary());
        Ok(Server {
            judge,
            table,
            write: Mutex::new(()),
            backends,
            pool,
            metrics,
            ready: AtomicBool::new(false),
            rollouts: rollout::RolloutStore::open(&options.state_dir),
            assignments: Mutex::new(HashMap::new()),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(
                options.max_shadow_in_flight.max(1),
            )),
            scorer: Scorer::start(),
            drift_events,
            retrainer,
            payload,
            options,
            role_writer: std::sync::OnceLock::new(),
        })
    }

    /// Sends the canary judge's decisions to the registry that owns the roles (once).
    pub fn set_role_writer(&self, writer: Arc<dyn RoleWriter>) {
        let _ = self.role_writer.set(writer);
    }

    /// A model's effective `[retrain]` settings.
    /// Joins truths to a model's predictions; a quality window that went past its
    /// `[retrain]` threshold becomes a `vigil.quality.degraded` event (blocking: the
    /// outbox fsyncs).
    pub fn feedback(
        &self,
        model: &str,
        feedback: &crate::payload::Feedback,
        truths: Vec<crate::payload::Truth>,
    ) -> crate::payload::JoinSummary {
        let mut lines = self.payload.has_dir().then(Vec::new);
        let (summary, trips) = feedback.join_judged(truths, lines.as_mut());
        if let Some(lines) = lines.filter(|l| !l.is_empty()) {
            self.payload.labels(model, lines, summary.joined);
        }
        for trip in trips {
            self.quality_degraded(model, trip);
        }
        summary
    }

    /// A trip found on the request path (the expected accuracy): the event is created on
    /// a blocking thread, since the outbox fsyncs. Trips are one per crossing, so rare.
    fn quality_degraded_later(
        self: &Arc<Self>,
        model: &str,
        trip: Option<crate::payload::QualityTrip>,
    ) {
        let Some(trip) = trip else {
            return;
        };
        let (server, model) = (self.clone(), model.to_string());
        tokio::task::spawn_blocking(move || server.quality_degraded(&model, trip));
    }

    fn quality_degraded(&self, model: &str, trip: crate::payload::QualityTrip) {
        let cfg = self.retrain_config(model);
        let now = crate::retrain::now_unix();
        let what: Vec<String> = trip
            .breaches
            .iter()
            .map(|b| {
                let cmp = if b.bound == "min" { "<" } else { ">" };
                format!("{} {:.4} {cmp} {}", b.metric, b.value, b.threshold)
            })
            .collect();
        let over = match &trip.expected {
            Some(e) => format!(
                "the last {} predictions (estimated without labels, calibrated on {} \
                 labelled rows)",
                e.rows, e.calibrated_on
            ),
            None => format!("the last {} labelled rows", trip.window_rows),
        };
        tracing::warn!(model, version = trip.version, breaches = %what.join(", "),
            "live quality degraded over {over}");
        let data = crate::retrain::EventData {
            event_id: crate::retrain::quality_event_id(
                model,
                trip.version,
                now,
                trip.labels_received,
            ),
            model: model.to_string(),
            model_version: trip.version.to_string(),
            reason: format!("quality: {} over {over}", what.join(", ")),
            window: None,
            drift_share: None,
            features: Vec::new(),
            server: String::new(),
            canary: None,
            quality: Some(crate::retrain::QualityInfo {
                role: trip.role.as_str().to_string(),
                window_rows: trip.window_rows,
                labels_received: trip.labels_received,
                breaches: trip.breaches.clone(),
                expected: trip.expected.clone(),
            }),
            data: None,
        };
        let refs = || {
            Some(data_refs(
                &self.payload,
                self.payload_dir(),
                model,
                (trip.from, trip.to),
                Some(trip.labels_received),
            ))
        };
        if let Err(e) = self.retrainer.quality_degraded(data, cfg.cooldown(), &refs) {
            tracing::error!(model, error = %e, "cannot create the retrain event");
        }
    }

    fn payload_dir(&self) -> Option<&std::path::Path> {
        self.options.payload.files.as_ref().map(|o| o.dir.as_path())
    }

    /// An operator's retrain request: its data is everything the payload log holds of
    /// the model now (blocking: the outbox fsyncs).
    pub fn manual_retrain(
        &self,
        model: &str,
        version: Option<u64>,
        reason: &str,
    ) -> Result<String, crate::retrain::RetrainError> {
        let refs = || {
            let now = crate::retrain::now_unix();
            let mut r = sealed_refs(
                &self.payload,
                self.payload_dir(),
                model,
                (0.0, now),
                version.and_then(|v| labels_joined(&self.table.load(), model, v)),
            );
            // The range starts at the oldest file's opening (its name's Unix ms).
            let oldest = r
                .requests
                .first()
                .and_then(|p| p.rsplit('/').next())
                .and_then(|n| n.split('-').next())
                .and_then(|ms| ms.parse::<u64>().ok())
                .map_or(now, |ms| ms as f64 / 1000.0);
            r.from = crate::retrain::rfc3339(oldest);
            bound_lists(&mut r, "", model);
            Some(r)
        };
        self.retrainer.manual(model, version, reason, &refs)
    }

    /// A firing fleet alert (Alertmanager) for `range` (Unix seconds, from
    /// [`crate::retrain::FleetAlert::range`]): its data is the fleet's payload log, every
    /// replica's files on the shared `--payload-dir` (blocking: the outbox fsyncs).
    pub fn fleet_retrain(
        &self,
        alert: &crate::retrain::FleetAlert,
        (from, to): (f64, f64),
        cooldown: std::time::Duration,
    ) -> Result<crate::retrain::AlertOutcome, crate::retrain::RetrainError> {
        let model = alert.model.as_str();
        let refs = || {
            let mut r = sealed_refs(&self.payload, self.payload_dir(), model, (from, to), None);
            let Some(files) = self.options.payload.files.as_ref() else {
                return Some(r);
            };
            // This replica's files are sealed above; the fleet's are read from the
            // shared directory, whose layout the globs state.
            let root = match (&files.replica, files.dir.parent()) {
                (Some(_), Some(root)) => root,
                _ => files.dir.as_path(),
            };
            let (requests, labels, prefix) = if files.replica.is_some() {
                let labels = format!("{model}/labels");
                (
                    crate::payload::files::fleet_finished(
                        root,
                        model,
                        from - crate::payload::SEAL_SLACK_SECONDS,
                        to,
                    ),
                    crate::payload::files::fleet_finished(root, &labels, from, f64::INFINITY),
                    "*/",
                )
            } else {
                (
                    std::mem::take(&mut r.requests),
                    std::mem::take(&mut r.labels),
                    "",
                )
            };
            r.payload_dir = Some(root.display().to_string());
            r.requests = requests;
            r.labels = labels;
            let pattern = crate::payload::files::glob_escape(model);
            r.requests_glob = Some(format!("{prefix}{pattern}/*.jsonl.gz"));
            r.labels_glob = Some(format!("{prefix}{pattern}/labels/*.jsonl.gz"));
            bound_lists(&mut r, prefix, model);
            Some(r)
        };
        self.retrainer.fleet_alert(alert, cooldown, &refs)
    }

    pub fn retrain_config(&self, model: &str) -> RetrainConfig {
        retrain_config(&self.table.load(), &self.options.retrain_defaults, model)
    }

    /// Jobs waiting for a worker now.
    pub fn queue_depth(&self) -> usize {
        self.pool.queue_len()
    }

    /// The current routing table (one atomic load).
    pub fn table(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// Whether the initial load has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Readiness off (shutdown has begun).
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Loads one version on the engine chosen for it, off the request path.
    pub fn load_version(
        &self,
        model: &str,
        config: &ModelConfig,
        version: &VersionSource,
    ) -> Result<Arc<ServedVersion>, BackendError> {
        let start = Instant::now();
        let reference_path = version.dir.join("reference.json");
        let reference_json = match std::fs::read(&reference_path) {
            Ok(bytes) => Some(Ok(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e.to_string())),
        };
        let trigger = config.retrain.or(&self.options.retrain_defaults).trigger();
        if trigger == crate::config::RetrainTrigger::Fleet && reference_json.is_none() {
            self.metrics.count_load(model, false, start.elapsed());
            return Err(BackendError::Unsupported(format!(
                "[retrain] trigger = \"fleet\" needs a reference.json beside {}: fleet drift \
                 adds up per-bin counts, so every replica must bin by the same reference",
                version.model_path.display()
            )));
        }
        // A panic inside an engine (a malformed model can trip one) costs this version only.
        let result = crate::supervise::guard("model_load", || {
            self.backends.load(&version.model_path, config.backend)
        })
        .unwrap_or_else(|panic| {
            Err(BackendError::Load(format!(
                "the engine panicked while loading: {panic}"
            )))
        })
        .and_then(|mut loaded| {
            // A Triton config.pbtxt must describe the file; its dims narrow the signature.
            if let Some(t) = &config.triton {
                loaded.signature =
                    triton_io::conform(loaded.signature, t).map_err(BackendError::Unsupported)?;
            }
            Ok(loaded)
        });
        self.metrics
            .count_load(model, result.is_ok(), start.elapsed());
        let loaded = result?;
        let monitor = Monitor::new(MonitorSetup {
            model,
            version: version.version,
            inputs: &loaded.signature.inputs,
            outputs: &loaded.signature.outputs,
            config: config.drift.clone(),
            reference_json,
            metrics: self.metrics.drift(),
            scorer: self.scorer.clone(),
            events: Some(self.drift_events.clone()),
        });
        let batching =
            pool::BatchSettings::resolve(&config.batching, &loaded.signature, self.pool.capacity());
        let exec = exec::Execution::new(exec_settings(config, &batching), loaded.warmup);
        if config.logging.sample > 0.0
            && !self.payload.has_dir()
            && config.logging.cloudevents_url.is_none()
        {
            tracing::warn!(model, "[logging] sample > 0 but no --payload-dir: sampled requests are dropped (vigil_payload_dropped_total{{reason=\"no_dir\"}})");
        }
        if let Some(w) = loaded.warmup {
            tracing::info!(
                model,
                version = version.version,
                warmup_p90_us = w.p90.as_secs_f64() * 1e6,
                mode = if exec.is_inline() { "inline" } else { "pool" },
                "execution mode"
            );
        }
        Ok(Arc::new(ServedVersion {
            monitor,
            model: model.to_string(),
            version: version.version,
            engine: loaded.engine,
            signature: loaded.signature,
            session: loaded.session,
            load_time: start.elapsed(),
            loaded_at: Instant::now(),
            fingerprint: version.fingerprint.clone(),
            metrics: self.metrics.version(model, version.version),
            stats: VersionStats::default(),
            batcher: pool::Batcher::new(batching),
            exec,
            sampler: Default::default(),
        }))
    }
}

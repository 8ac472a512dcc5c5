//! What is served now, and running a request on it.
//!
//! The routing table maps model names to their loaded versions and rollout. It is
//! immutable and lives behind one `ArcSwap`: a request does one atomic load and keeps an
//! `Arc` to the version it resolved, so a table swap never disturbs requests in flight
//! and a removed version is freed when its last request ends. Writers (the reload loop,
//! the rollout endpoints) build a new table off to the side and store it whole, one at
//! a time under a short lock that is never held across loading or I/O waits.

pub mod pool;
pub mod reload;
pub mod rollout;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::backend::{BackendError, Backends, Engine, ModelSignature, Session};
use crate::config::{ModelConfig, RetrainConfig, RolloutConfig, RolloutMode};
use crate::metrics::{Metrics, Outcome, Role, VersionMetrics};
use crate::monitor::{DriftEvent, Monitor, MonitorSetup, Scorer};
use crate::repository::{Fingerprint, VersionSource};
use crate::retrain::Retrainer;
use crate::tensor::{DataType, Tensor};

pub use pool::WorkerPool;
pub use stats::{StatsSnapshot, VersionStats};

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
}

/// A model as the routing table knows it.
pub struct ModelEntry {
    pub name: String,
    pub config: ModelConfig,
    /// Loaded and served versions.
    pub versions: BTreeMap<u64, Arc<ServedVersion>>,
    /// The rollout in force (a run-time change, else `config.toml`'s `[rollout]`).
    pub rollout: RolloutConfig,
    /// The version unpinned requests go to.
    pub stable: Option<u64>,
    /// The canary, when the rollout names one that is loaded.
    pub canary: Option<u64>,
    /// Why the model or some version is not served (version 0: the model itself).
    pub failures: BTreeMap<u64, String>,
    /// Counts unkeyed split requests; the count decides each one's arm exactly (see
    /// [`rollout::is_canary`]). Shared by every entry the model's table slot has had, so
    /// a republish (a scan, an unrelated change) never restarts the sequence.
    split_counter: Arc<AtomicU64>,
}

impl ModelEntry {
    pub fn is_ready(&self) -> bool {
        self.stable.is_some()
    }

    fn role(&self, version: u64) -> Role {
        if Some(version) == self.stable {
            Role::Stable
        } else if Some(version) == self.canary {
            Role::Canary
        } else {
            Role::Standby
        }
    }
}

/// The immutable table requests read.
#[derive(Default)]
pub struct RoutingTable {
    pub models: BTreeMap<String, Arc<ModelEntry>>,
}

/// A model's new contents, as the reload loop publishes them.
#[derive(Default)]
pub struct ModelUpdate {
    pub config: ModelConfig,
    /// The versions to serve.
    pub versions: BTreeMap<u64, Arc<ServedVersion>>,
    /// Why versions (or, under 0, the model) are not served.
    pub failures: BTreeMap<u64, String>,
}

/// Where a request goes.
pub struct Route {
    pub version: Arc<ServedVersion>,
    /// In shadow mode, the canary that gets a copy after the answer.
    pub shadow: Option<Arc<ServedVersion>>,
}

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the server is overloaded: the inference queue is full")]
    Overloaded,
    #[error("model '{model}' is not ready: {reason}")]
    NotReady { model: String, reason: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl InferError {
    fn outcome(&self) -> Outcome {
        match self {
            InferError::NotFound(_) | InferError::Invalid(_) => Outcome::BadRequest,
            InferError::Overloaded | InferError::NotReady { .. } => Outcome::Overloaded,
            InferError::Backend(BackendError::Run(_)) => Outcome::BadRequest,
            InferError::Backend(_) => Outcome::Error,
        }
    }
}

/// Why a rollout change was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot persist the rollout: {0}")]
    Persist(String),
}

/// Everything the serving layer needs to start.
pub struct ServerOptions {
    pub repository: PathBuf,
    pub state_dir: PathBuf,
    /// Shadow copies allowed in flight at once; beyond that they are skipped.
    pub max_shadow_in_flight: usize,
    /// `[retrain]` defaults for models that do not set them.
    pub retrain_defaults: RetrainConfig,
}

/// The versions a model registry says should serve (e.g. MLflow's `champion` and
/// `challenger` aliases). While a model has one, its version policy is not used: exactly
/// these versions are loaded, and the rollout's stable and canary are these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub stable: Option<u64>,
    pub canary: Option<u64>,
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
    /// Roles a model registry assigns (MLflow aliases), over any rollout setting.
    assignments: Mutex<HashMap<String, Assignment>>,
    shadow_slots: Arc<tokio::sync::Semaphore>,
    scorer: Scorer,
    drift_events: crossbeam_channel::Sender<DriftEvent>,
    pub retrainer: Arc<Retrainer>,
    pub options: ServerOptions,
}

/// A model's effective `[retrain]` settings: its own over the server's defaults.
fn retrain_config(table: &RoutingTable, defaults: &RetrainConfig, model: &str) -> RetrainConfig {
    match table.models.get(model) {
        Some(e) => e.config.retrain.or(defaults),
        None => defaults.clone(),
    }
}

/// Turns drift trips into retrain events (a thread of its own: the outbox fsyncs).
fn forward_drift_events(
    rx: &crossbeam_channel::Receiver<DriftEvent>,
    table: &ArcSwap<RoutingTable>,
    defaults: &RetrainConfig,
    retrainer: &Retrainer,
) {
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
        };
        if let Err(e) = retrainer.drift_detected(data, cfg.cooldown()) {
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
            Arc::new(move |model: &str| retrain_config(&table.load(), &defaults, model).target())
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
        let (drift_events, rx) = crossbeam_channel::bounded(256);
        {
            let (table, defaults, retrainer) = (
                table.clone(),
                options.retrain_defaults.clone(),
                retrainer.clone(),
            );
            crate::supervise::spawn_thread("retrain_events", "vigil-retrain-events", move || {
                forward_drift_events(&rx, &table, &defaults, &retrainer)
            });
        }
        Ok(Server {
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
            options,
        })
    }

    /// A model's effective `[retrain]` settings.
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
        }))
    }

    /// Replaces (or, with `None`, removes) one model's entry. Stable and canary are
    /// worked out here, under the write lock, from the versions and the rollout in force.
    pub fn publish(&self, name: &str, update: Option<ModelUpdate>) {
        let _w = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.table.load_full();
        let mut models = old.models.clone();
        let previous = models.get(name).cloned();
        match update {
            Some(ModelUpdate {
                config,
                versions,
                failures,
            }) => {
                for v in versions.values() {
                    v.monitor.set_config(config.drift.clone());
                    v.batcher.configure(pool::BatchSettings::resolve(
                        &config.batching,
                        &v.signature,
                        self.pool.capacity(),
                    ));
                }
                let rollout = self.effective_rollout(name, &config);
                if let Some(p) = &previous {
                    if p.config == config
                        && p.rollout == rollout
                        && p.failures == failures
                        && p.versions.len() == versions.len()
                        && p.versions
                            .iter()
                            .zip(&versions)
                            .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
                    {
                        // Nothing changed (a scan found the model as it was): no new
                        // table, no routing state touched.
                        return;
                    }
                }
                let counter = previous
                    .as_ref()
                    .map_or_else(Arc::default, |p| p.split_counter.clone());
                self.metrics.set_unavailable(name, Some(failures.len()));
                let entry = build_entry(name, config, versions, failures, rollout, counter);
                self.metrics.publish_roles(
                    name,
                    previous.as_ref().map(|p| roles(p)).unwrap_or_default(),
                    roles(&entry),
                    entry.canary.map(|_| entry.rollout.weight),
                );
                models.insert(name.to_string(), Arc::new(entry));
            }
            None => {
                if let Some(p) = &previous {
                    self.metrics.publish_roles(name, roles(p), Vec::new(), None);
                }
                self.metrics.set_unavailable(name, None);
                models.remove(name);
            }
        }
        self.table.store(Arc::new(RoutingTable { models }));
        // Versions that left the table take their request series with them.
        if let Some(p) = &previous {
            let now = self.table.load();
            let kept = now.models.get(name);
            for &v in p.versions.keys() {
                if !kept.is_some_and(|e| e.versions.contains_key(&v)) {
                    self.metrics.remove_version(name, v);
                }
            }
        }
    }

    /// Changes a model's rollout at run time: validated against what is loaded now,
    /// persisted under the state directory, then applied with one table swap.
    pub fn set_rollout(
        &self,
        name: &str,
        change: impl FnOnce(&ModelEntry) -> Result<RolloutConfig, String>,
    ) -> Result<RolloutConfig, RolloutError> {
        let _w = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.table.load_full();
        let entry = old
            .models
            .get(name)
            .ok_or_else(|| RolloutError::UnknownModel(name.to_string()))?;
        let next = change(entry).map_err(RolloutError::Invalid)?;
        next.validate().map_err(RolloutError::Invalid)?;
        if let Some(a) = self.assignment(name) {
            if (next.stable, next.canary) != (a.stable, a.canary) {
                let show = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
                return Err(RolloutError::Invalid(format!(
                    "the stable and canary versions of '{name}' follow its model registry \
                     aliases (now stable {}, canary {}); move the aliases in the registry \
                     (weight, mode and sticky_header can be set here)",
                    show(a.stable),
                    show(a.canary)
                )));
            }
        }
        for (what, v) in [("stable", next.stable), ("canary", next.canary)] {
            if let Some(v) = v {
                if !entry.versions.contains_key(&v) {
                    let loaded: Vec<u64> = entry.versions.keys().copied().collect();
                    return Err(RolloutError::Invalid(format!(
                        "{what} version {v} of '{name}' is not loaded (loaded: {loaded:?})"
                    )));
                }
            }
        }
        self.rollouts
            .set(name, &next)
            .map_err(|e| RolloutError::Persist(e.to_string()))?;
        let rebuilt = build_entry(
            name,
            entry.config.clone(),
            entry.versions.clone(),
            entry.failures.clone(),
            next.clone(),
            entry.split_counter.clone(),
        );
        self.metrics.publish_roles(
            name,
            roles(entry),
            roles(&rebuilt),
            rebuilt.canary.map(|_| rebuilt.rollout.weight),
        );
        let mut models = old.models.clone();
        models.insert(name.to_string(), Arc::new(rebuilt));
        self.table.store(Arc::new(RoutingTable { models }));
        Ok(next)
    }

    /// The rollout a model is served with: the run-time one if set, else `config.toml`'s,
    /// with stable and canary taken from the registry's assignment when there is one.
    pub fn effective_rollout(&self, name: &str, config: &ModelConfig) -> RolloutConfig {
        let mut rollout = self
            .rollouts
            .get(name)
            .unwrap_or_else(|| config.rollout.clone());
        if let Some(a) = self.assignment(name) {
            rollout.stable = a.stable;
            rollout.canary = a.canary;
        }
        rollout
    }

    /// The registry's assignment for a model, if a registry manages it.
    pub fn assignment(&self, name: &str) -> Option<Assignment> {
        self.assignments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .copied()
    }

    /// Sets (or, with `None`, removes) a model's registry assignment. It takes effect
    /// at the model's next reconcile (the registry asks for one right after).
    pub fn set_assignment(&self, name: &str, assignment: Option<Assignment>) {
        let mut all = self
            .assignments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match assignment {
            Some(a) => all.insert(name.to_string(), a),
            None => all.remove(name),
        };
    }

    /// The pinned version, or the stable one: what metadata and config describe.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<Arc<ServedVersion>, InferError> {
        let table = self.table.load();
        let entry = lookup_entry(&table, model)?;
        entry.version(match version {
            Some(v) => v,
            None => entry.stable_version()?,
        })
    }

    /// Finds the version a request goes to: the pinned one; else, when a canary is set,
    /// by the sticky key's hash or an even spread; else the stable version.
    pub fn route(
        &self,
        model: &str,
        version: Option<u64>,
        sticky_key: impl FnOnce(&str) -> Option<Vec<u8>>,
    ) -> Result<Route, InferError> {
        let table = self.table.load();
        let entry = lookup_entry(&table, model)?;
        let only = |v: u64| {
            Ok(Route {
                version: entry.version(v)?,
                shadow: None,
            })
        };
        if let Some(v) = version {
            return only(v);
        }
        let stable = entry.stable_version()?;
        let Some(canary) = entry.canary else {
            return only(stable);
        };
        match entry.rollout.mode {
            RolloutMode::Shadow => Ok(Route {
                version: entry.version(stable)?,
                shadow: Some(entry.version(canary)?),
            }),
            RolloutMode::Split => {
                let weight = entry.rollout.weight;
                let to_canary = match sticky_key(&entry.rollout.sticky_header) {
                    Some(key) => rollout::bucket_of_key(&key) < u32::from(weight) * 100,
                    None => rollout::is_canary(
                        entry.split_counter.fetch_add(1, Ordering::Relaxed),
                        weight,
                    ),
                };
                only(if to_canary { canary } else { stable })
            }
        }
    }

    /// Runs a routed request; in shadow mode the canary gets a copy once the stable
    /// answer exists, on a bounded number of slots, never delaying or failing the caller.
    pub async fn infer_routed(
        self: &Arc<Self>,
        route: &Route,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, InferError> {
        let shadow_copy = route.shadow.as_ref().and_then(|canary| {
            let permit = self.shadow_slots.clone().try_acquire_owned().ok()?;
            Some((canary.clone(), inputs.clone(), permit))
        });
        let result = self.infer(&route.version, inputs).await;
        if let Some((canary, copy, permit)) = shadow_copy {
            let server = self.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                if server.infer(&canary, copy).await.is_ok() {
                    canary.metrics.count(Outcome::Success);
                    canary
                        .metrics
                        .request
                        .observe(start.elapsed().as_secs_f64());
                }
                drop(permit);
            });
        }
        result
    }

    /// Validates `inputs` against the version's signature, puts them in its order, runs
    /// them on a worker and returns every declared output.
    pub async fn infer(
        &self,
        version: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, InferError> {
        // A guard, not inc/dec: a client that hangs up drops this future mid-await.
        let in_flight = crate::metrics::GaugeGuard::raise(&self.metrics.in_flight);
        let result = self.infer_inner(version, inputs).await;
        drop(in_flight);
        if let Err(e) = &result {
            version.metrics.count(e.outcome());
            version.stats.record_failure();
        }
        result
    }

    async fn infer_inner(
        &self,
        version: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, InferError> {
        let ordered = order_inputs(&version.signature, inputs)?;
        let rows = ordered
            .first()
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(1);
        let rx = self
            .pool
            .submit(version.clone(), ordered)
            .map_err(|_| InferError::Overloaded)?;
        let done = rx.await.map_err(|_| {
            InferError::Backend(BackendError::Run("the inference worker stopped".into()))
        })?;
        version.metrics.queue.observe(done.queued.as_secs_f64());
        version.metrics.compute.observe(done.compute.as_secs_f64());
        let outputs = done.outputs?;
        version
            .stats
            .record_success(rows as u64, done.queued, done.compute);
        Ok(outputs)
    }
}

/// A model's entry in the table, or 404.
pub fn lookup_entry<'t>(
    table: &'t RoutingTable,
    model: &str,
) -> Result<&'t Arc<ModelEntry>, InferError> {
    table
        .models
        .get(model)
        .ok_or_else(|| InferError::NotFound(format!("unknown model '{model}'")))
}

impl ModelEntry {
    /// A loaded version, or 404.
    fn version(&self, v: u64) -> Result<Arc<ServedVersion>, InferError> {
        self.versions.get(&v).cloned().ok_or_else(|| {
            InferError::NotFound(format!("model '{}' has no version {v} loaded", self.name))
        })
    }

    /// The stable version, or 503 with why nothing is loaded.
    fn stable_version(&self) -> Result<u64, InferError> {
        self.stable.ok_or_else(|| InferError::NotReady {
            model: self.name.clone(),
            reason: self
                .failures
                .values()
                .next()
                .cloned()
                .unwrap_or_else(|| "no version loaded".into()),
        })
    }
}

fn roles(entry: &ModelEntry) -> Vec<(u64, Role)> {
    entry.versions.keys().map(|&v| (v, entry.role(v))).collect()
}

fn build_entry(
    name: &str,
    config: ModelConfig,
    versions: BTreeMap<u64, Arc<ServedVersion>>,
    failures: BTreeMap<u64, String>,
    rollout: RolloutConfig,
    split_counter: Arc<AtomicU64>,
) -> ModelEntry {
    // Unpinned, the stable version is the highest served one that is not the canary
    // (the canary is usually the newest version), else whatever is served.
    let stable = rollout
        .stable
        .filter(|v| versions.contains_key(v))
        .or_else(|| {
            versions
                .keys()
                .rev()
                .find(|&&v| Some(v) != rollout.canary)
                .copied()
        })
        .or_else(|| versions.keys().next_back().copied());
    let canary = rollout
        .canary
        .filter(|v| versions.contains_key(v) && Some(*v) != stable);
    if let (Some(want), false) = (rollout.canary, canary.is_some()) {
        tracing::warn!(
            model = name,
            canary = want,
            "rollout canary is not loaded; no canary traffic"
        );
    }
    ModelEntry {
        name: name.to_string(),
        config,
        versions,
        rollout,
        stable,
        canary,
        failures,
        split_counter,
    }
}

/// Checks a request's inputs against a signature one descriptor at a time (name known
/// and given once, datatype, shape), before any data is decoded: the HTTP decoder runs it
/// on the header, so data that cannot be served is never turned into tensors.
pub struct InputCheck<'a> {
    signature: &'a ModelSignature,
    seen: Vec<bool>,
}

impl<'a> InputCheck<'a> {
    pub fn new(signature: &'a ModelSignature) -> InputCheck<'a> {
        InputCheck {
            signature,
            seen: vec![false; signature.inputs.len()],
        }
    }

    /// Checks one input's descriptor; returns its position in the signature.
    pub fn input(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[usize],
    ) -> Result<usize, InferError> {
        let inputs = &self.signature.inputs;
        let Some(i) = inputs.iter().position(|s| s.name == name) else {
            let expected: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(InferError::Invalid(format!(
                "unexpected input '{name}': the model's inputs are {expected:?}"
            )));
        };
        if std::mem::replace(&mut self.seen[i], true) {
            return Err(InferError::Invalid(format!(
                "input '{name}' is given twice"
            )));
        }
        let spec = &inputs[i];
        if datatype != spec.datatype {
            return Err(InferError::Invalid(format!(
                "input '{name}' has datatype {datatype}, the model expects {}",
                spec.datatype
            )));
        }
        if shape.contains(&0) {
            return Err(InferError::Invalid(format!(
                "input '{name}' has shape {shape:?}: empty tensors are not served"
            )));
        }
        if !spec.accepts_shape(shape) {
            return Err(InferError::Invalid(format!(
                "input '{name}' has shape {shape:?}, the model expects {} (-1 = any size)",
                spec.shape_str()
            )));
        }
        Ok(i)
    }

    /// Every declared input was given.
    pub fn finish(self) -> Result<(), InferError> {
        match self.seen.iter().position(|&seen| !seen) {
            Some(i) => Err(InferError::Invalid(format!(
                "missing input '{}'",
                self.signature.inputs[i].name
            ))),
            None => Ok(()),
        }
    }
}

/// Checks every input against the signature (present once, no strangers, datatype,
/// shape, element count) and returns them in signature order.
pub fn order_inputs(
    signature: &ModelSignature,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, InferError> {
    let mut check = InputCheck::new(signature);
    let mut slots: Vec<Option<Tensor>> = (0..signature.inputs.len()).map(|_| None).collect();
    for t in inputs {
        let i = check.input(&t.name, t.datatype(), &t.shape)?;
        if Tensor::shape_elements(&t.shape) != Some(t.data.len()) {
            return Err(InferError::Invalid(format!(
                "input '{}' has shape {:?} but {} elements",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        slots[i] = Some(t);
    }
    check.finish()?;
    Ok(slots.into_iter().flatten().collect())
}

//! What is served now, and running a request on it.
//!
//! The routing table maps model names to their loaded versions. It is immutable and
//! lives behind one `ArcSwap`: a request does one atomic load and keeps an `Arc` to the
//! version it resolved, so a table swap never disturbs requests in flight and a removed
//! version is freed when its last request ends.

pub mod pool;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::backend::{BackendError, Backends, Engine, ModelSignature, Session};
use crate::config::ModelConfig;
use crate::metrics::{Metrics, Outcome, VersionMetrics};
use crate::repository::{self, ModelSource};
use crate::tensor::Tensor;

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
    pub metrics: VersionMetrics,
    pub stats: VersionStats,
}

/// A model as the routing table knows it.
pub struct ModelEntry {
    pub name: String,
    pub config: ModelConfig,
    /// Loaded versions.
    pub versions: BTreeMap<u64, Arc<ServedVersion>>,
    /// The version unpinned requests go to.
    pub default_version: Option<u64>,
    /// Versions that failed to load, with the reason; or a model-level problem under 0.
    pub failures: BTreeMap<u64, String>,
}

impl ModelEntry {
    pub fn is_ready(&self) -> bool {
        self.default_version.is_some()
    }
}

/// The immutable table requests read.
#[derive(Default)]
pub struct RoutingTable {
    pub models: BTreeMap<String, Arc<ModelEntry>>,
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

/// What a load of the repository produced, for `vigil check` and the log.
pub struct LoadReport {
    pub model: String,
    pub version: Option<u64>,
    pub result: Result<Arc<ServedVersion>, String>,
}

pub struct Server {
    table: ArcSwap<RoutingTable>,
    backends: Backends,
    pool: WorkerPool,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl Server {
    pub fn new(backends: Backends, pool: WorkerPool, metrics: Arc<Metrics>) -> Server {
        Server {
            table: ArcSwap::from_pointee(RoutingTable::default()),
            backends,
            pool,
            metrics,
            ready: AtomicBool::new(false),
        }
    }

    /// The current routing table (one atomic load).
    pub fn table(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// Whether the initial load has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Loads one version on the engine chosen for it, off the request path.
    pub fn load_version(
        &self,
        model: &str,
        config: &ModelConfig,
        version: &repository::VersionSource,
    ) -> Result<Arc<ServedVersion>, BackendError> {
        let start = Instant::now();
        let loaded = self.backends.load(&version.model_path, config.backend)?;
        Ok(Arc::new(ServedVersion {
            model: model.to_string(),
            version: version.version,
            engine: loaded.engine,
            signature: loaded.signature,
            session: loaded.session,
            load_time: start.elapsed(),
            metrics: self.metrics.version(model, version.version),
            stats: VersionStats::default(),
        }))
    }

    /// Loads one model's served version (the highest) into a table entry.
    fn load_model(&self, source: &ModelSource) -> (ModelEntry, LoadReport) {
        let mut entry = ModelEntry {
            name: source.name.clone(),
            config: ModelConfig::default(),
            versions: BTreeMap::new(),
            default_version: None,
            failures: BTreeMap::new(),
        };
        let fail = |mut entry: ModelEntry, version: Option<u64>, reason: String| {
            entry.failures.insert(version.unwrap_or(0), reason.clone());
            let report = LoadReport {
                model: entry.name.clone(),
                version,
                result: Err(reason),
            };
            (entry, report)
        };
        match &source.config {
            Ok(c) => entry.config = c.clone(),
            Err(e) => return fail(entry, None, e.clone()),
        }
        let Some(version) = source.latest() else {
            return fail(entry, None, "no version directory with a model.onnx".into());
        };
        match self.load_version(&source.name, &entry.config, version) {
            Ok(v) => {
                entry.versions.insert(version.version, v.clone());
                entry.default_version = Some(version.version);
                let report = LoadReport {
                    model: source.name.clone(),
                    version: Some(version.version),
                    result: Ok(v),
                };
                (entry, report)
            }
            Err(e) => fail(entry, Some(version.version), e.to_string()),
        }
    }

    /// Scans the repository, loads every model and publishes the new table at once.
    pub fn load_repository(
        &self,
        root: &std::path::Path,
    ) -> Result<Vec<LoadReport>, repository::RepositoryError> {
        let sources = repository::scan(root)?;
        let mut models = BTreeMap::new();
        let mut reports = Vec::new();
        for source in &sources {
            let (entry, report) = self.load_model(source);
            match &report.result {
                Ok(v) => tracing::info!(
                    model = %v.model, version = v.version, engine = %v.engine,
                    load_ms = v.load_time.as_secs_f64() * 1e3, "model loaded"
                ),
                Err(reason) => {
                    tracing::error!(model = %report.model, version = ?report.version, %reason, "model failed to load")
                }
            }
            models.insert(entry.name.clone(), Arc::new(entry));
            reports.push(report);
        }
        self.table.store(Arc::new(RoutingTable { models }));
        self.ready.store(true, Ordering::Release);
        Ok(reports)
    }

    /// Finds the version a request goes to: the pinned one, or the model's default.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<Arc<ServedVersion>, InferError> {
        let table = self.table.load();
        let entry = table
            .models
            .get(model)
            .ok_or_else(|| InferError::NotFound(format!("unknown model '{model}'")))?;
        let v = match version {
            Some(v) => v,
            None => entry.default_version.ok_or_else(|| InferError::NotReady {
                model: model.to_string(),
                reason: entry
                    .failures
                    .values()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| "no version loaded".into()),
            })?,
        };
        entry.versions.get(&v).cloned().ok_or_else(|| {
            InferError::NotFound(format!("model '{model}' has no version {v} loaded"))
        })
    }

    /// Validates `inputs` against the version's signature, puts them in its order, runs
    /// them on a worker and returns every declared output.
    pub async fn infer(
        &self,
        version: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, InferError> {
        let result = self.infer_inner(version, inputs).await;
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

/// Checks every input against the signature (present once, no strangers, datatype,
/// shape, element count) and returns them in signature order.
pub fn order_inputs(
    signature: &ModelSignature,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, InferError> {
    let mut by_name: HashMap<String, Tensor> = HashMap::with_capacity(inputs.len());
    for t in inputs {
        if !signature.inputs.iter().any(|s| s.name == t.name) {
            let expected: Vec<&str> = signature.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(InferError::Invalid(format!(
                "unexpected input '{}': the model's inputs are {expected:?}",
                t.name
            )));
        }
        let name = t.name.clone();
        if by_name.insert(name.clone(), t).is_some() {
            return Err(InferError::Invalid(format!(
                "input '{name}' is given twice"
            )));
        }
    }
    let mut ordered = Vec::with_capacity(signature.inputs.len());
    for spec in &signature.inputs {
        let t = by_name
            .remove(&spec.name)
            .ok_or_else(|| InferError::Invalid(format!("missing input '{}'", spec.name)))?;
        if t.datatype() != spec.datatype {
            return Err(InferError::Invalid(format!(
                "input '{}' has datatype {}, the model expects {}",
                spec.name,
                t.datatype(),
                spec.datatype
            )));
        }
        if Tensor::shape_elements(&t.shape) != Some(t.data.len()) {
            return Err(InferError::Invalid(format!(
                "input '{}' has shape {:?} but {} elements",
                spec.name,
                t.shape,
                t.data.len()
            )));
        }
        if t.shape.contains(&0) {
            return Err(InferError::Invalid(format!(
                "input '{}' has shape {:?}: empty tensors are not served",
                spec.name, t.shape
            )));
        }
        if !spec.accepts_shape(&t.shape) {
            return Err(InferError::Invalid(format!(
                "input '{}' has shape {:?}, the model expects {} (-1 = any size)",
                spec.name,
                t.shape,
                spec.shape_str()
            )));
        }
        ordered.push(t);
    }
    Ok(ordered)
}

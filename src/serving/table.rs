//! The routing table: what each model serves now (`ModelEntry`), how an entry is built
//! from its versions and rollout (`build_entry`), and the writers that replace it whole
//! (`Server::publish`, `Server::set_rollout`, registry assignments). Requests only read it.
//! Must never import `http` or the reload loop.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::{pool, Assignment, InferError, ServedVersion, Server};
use crate::config::{ModelConfig, RolloutConfig};
use crate::metrics::Role;

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
    pub(super) split_counter: Arc<AtomicU64>,
    /// The canary judge's accumulators for the current step, shared the same way.
    pub(super) probe: Arc<super::analysis::Probe>,
    /// Predictions waiting for their ground truth, and live quality; shared the same way.
    pub feedback: Arc<crate::payload::Feedback>,
}

impl ModelEntry {
    pub fn is_ready(&self) -> bool {
        self.stable.is_some()
    }

    pub(super) fn role(&self, version: u64) -> Role {
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

/// Why a rollout change was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("Request for unknown model: '{0}' is not found")]
    UnknownModel(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot persist the rollout: {0}")]
    Persist(String),
}

impl Server {
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
                    let batching = pool::BatchSettings::resolve(
                        &config.batching,
                        &v.signature,
                        self.pool.capacity(),
                    );
                    v.exec.configure(super::exec_settings(&config, &batching));
                    v.batcher.configure(batching);
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
                let counter = previous.as_ref().map_or_else(
                    || {
                        (
                            Default::default(),
                            Default::default(),
                            Arc::new(crate::payload::Feedback::new(name, self.metrics.payload())),
                        )
                    },
                    |p| (p.split_counter.clone(), p.probe.clone(), p.feedback.clone()),
                );
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
                self.metrics.payload().clear_feedback(name);
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
            (
                entry.split_counter.clone(),
                entry.probe.clone(),
                entry.feedback.clone(),
            ),
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
}

/// A model's entry in the table, or 404.
pub fn lookup_entry<'t>(
    table: &'t RoutingTable,
    model: &str,
) -> Result<&'t Arc<ModelEntry>, InferError> {
    table.models.get(model).ok_or_else(|| {
        InferError::NotFound(format!("Request for unknown model: '{model}' is not found"))
    })
}

impl ModelEntry {
    /// A loaded version, or 404.
    pub(super) fn version(&self, v: u64) -> Result<Arc<ServedVersion>, InferError> {
        self.versions.get(&v).cloned().ok_or_else(|| {
            InferError::NotFound(format!(
                "Request for unknown model: '{}' version {v} is not found",
                self.name
            ))
        })
    }

    /// The stable version, or 503 with why nothing is loaded.
    pub(super) fn stable_version(&self) -> Result<u64, InferError> {
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
    (split_counter, probe, feedback): (
        Arc<AtomicU64>,
        Arc<super::analysis::Probe>,
        Arc<crate::payload::Feedback>,
    ),
) -> ModelEntry {
    let l = &config.logging;
    feedback.configure(l.feedback_window.map(|w| crate::payload::FeedbackSettings {
        window: std::time::Duration::from_secs_f64(w),
        capacity: l.feedback_capacity,
        quality_rows: l.quality_window,
        prediction: l.prediction.clone(),
        thresholds: config.retrain.quality_thresholds(),
    }));
    // Before the table swap and `remove_version`: a join cannot bring back the series of
    // a version that left.
    feedback.retain_versions(versions.keys().copied());
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
        probe,
        feedback,
    }
}

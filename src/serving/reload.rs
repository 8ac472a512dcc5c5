//! The reload loop: keeps the routing table in step with the repository.
//!
//! Each pass scans the repository and, per model, works out the versions its policy
//! wants; loads (and warms up) the ones not loaded yet, off the request path; then
//! publishes the model's new entry with one table swap. A version directory is loaded
//! only once its files (names, sizes, mtimes) are the same on two consecutive scans, so
//! a copy in progress is never loaded; an atomic rename is picked up one scan later.
//! A version that fails to load is remembered with its files and retried only when
//! they change; whatever was serving keeps serving meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ModelUpdate, ServedVersion, Server};
use crate::config::{ModelConfig, ModelControl, VersionPolicy};
use crate::repository::{self, Fingerprint, ModelSource};

/// Why a repository API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Triton's text for a load of a model the repository does not hold.
    #[error("failed to load '{0}', failed to poll from model repository: no model directory '{0}' in the repository")]
    NotFound(String),
    #[error("failed to unload '{0}', no model '{0}' is served or in the repository")]
    NotServed(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    NotAllowed(String),
}

/// State of one version (or, with `version: None`, of a model) for the repository index.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct IndexRow {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub state: &'static str,
    pub reason: String,
    /// Fields of the model's Triton `config.pbtxt` that vigil read but does not act on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

#[derive(Default)]
struct ReloadState {
    /// What each version directory held at the previous scan.
    seen: HashMap<String, HashMap<u64, Fingerprint>>,
    /// Versions that failed to load: the files they failed on, and why.
    failed: HashMap<String, HashMap<u64, (Fingerprint, String)>>,
    /// Versions a policy wants whose files have not settled yet.
    pending: HashMap<String, BTreeSet<u64>>,
    /// Explicit mode: the models asked for.
    wanted: BTreeSet<String>,
    /// Why a model's source (a model registry) cannot provide it now, by model.
    source_errors: BTreeMap<String, String>,
    /// Triton configurations a `load` request carried, in place of the model's
    /// `config.pbtxt` until the next `load` without one.
    overrides: HashMap<String, crate::config::TritonConfig>,
}

pub struct Reloader {
    server: Arc<Server>,
    root: PathBuf,
    control: ModelControl,
    state: Mutex<ReloadState>,
}

/// The versions a policy selects from those that can be loaded.
fn select(policy: &VersionPolicy, versions: &[u64]) -> BTreeSet<u64> {
    match policy {
        VersionPolicy::Latest(n) => versions.iter().rev().take(*n).copied().collect(),
        VersionPolicy::Specific(list) => versions
            .iter()
            .filter(|v| list.contains(v))
            .copied()
            .collect(),
        VersionPolicy::All => versions.iter().copied().collect(),
    }
}

impl Reloader {
    pub fn new(
        server: Arc<Server>,
        root: PathBuf,
        control: ModelControl,
        load_models: &[String],
    ) -> Reloader {
        let state = ReloadState {
            wanted: load_models.iter().cloned().collect(),
            ..ReloadState::default()
        };
        Reloader {
            server,
            root,
            control,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_wanted(&self, state: &ReloadState, name: &str) -> bool {
        self.control == ModelControl::Poll
            || state.wanted.contains(name)
            || state.wanted.contains("*")
    }

    /// The first pass at start-up: loads what is there without waiting for a second
    /// scan (files present before the server started are taken as complete).
    pub fn initial_load(&self) -> Result<(), repository::RepositoryError> {
        self.pass(true)
    }

    /// One scan of the repository.
    pub fn poll(&self) -> Result<(), repository::RepositoryError> {
        self.pass(false)
    }

    fn pass(&self, force: bool) -> Result<(), repository::RepositoryError> {
        let sources = repository::scan(&self.root)?;
        let mut state = self.lock();
        let mut present = BTreeSet::new();
        for source in &sources {
            if !self.is_wanted(&state, &source.name) {
                continue;
            }
            present.insert(source.name.clone());
            // One model's bug must not cost the others their pass.
            if let Err(panic) =
                crate::supervise::guard("reload", || self.reconcile(&mut state, source, force))
            {
                tracing::error!(model = %source.name, panic = %panic, "reconciling the model panicked; the other models go on");
            }
        }
        // Models whose directory is gone (or, in explicit mode, no longer wanted).
        let table = self.server.table();
        for name in table.models.keys().filter(|n| !present.contains(*n)) {
            tracing::info!(model = %name, "model removed from the repository; unloading");
            self.server.publish(name, None);
            state.seen.remove(name);
            state.failed.remove(name);
            state.pending.remove(name);
        }
        Ok(())
    }

    /// Brings one model's entry in line with its directory. `force` loads versions
    /// without waiting for their files to settle (start-up, explicit load requests).
    fn reconcile(
        &self,
        state: &mut ReloadState,
        source: &ModelSource,
        force: bool,
    ) -> Result<Vec<String>, String> {
        let name = source.name.as_str();
        let current = self.server.table().models.get(name).cloned();
        let overridden = state.overrides.get(name).map(|t| {
            ModelConfig::load_with(&source.dir, Some(t.clone())).map_err(|e| e.to_string())
        });
        let config = match overridden.as_ref().unwrap_or(&source.config) {
            Ok(c) => c.clone(),
            Err(e) => {
                // Keep serving what was served, with the last good settings.
                let mut update = current
                    .map(|c| ModelUpdate {
                        config: c.config.clone(),
                        versions: c.versions.clone(),
                        failures: c.failures.clone(),
                    })
                    .unwrap_or_default();
                update.failures.insert(0, e.clone());
                tracing::error!(model = name, error = %e, "model config rejected; keeping the last good one");
                self.server.publish(name, Some(update));
                return Err(e.clone());
            }
        };
        let policy = config
            .version_policy
            .policy()
            .expect("policy validated when config.toml was read");
        let on_disk: BTreeMap<u64, &repository::VersionSource> =
            source.versions.iter().map(|v| (v.version, v)).collect();
        let failed = state.failed.entry(name.to_string()).or_default();
        failed.retain(|v, (fp, _)| on_disk.get(v).is_some_and(|s| &s.fingerprint == fp));
        let loadable: Vec<u64> = on_disk
            .keys()
            .copied()
            .filter(|v| !failed.contains_key(v))
            .collect();
        let rollout = self.server.effective_rollout(name, &config);
        let pins: BTreeSet<u64> = [rollout.stable, rollout.canary]
            .into_iter()
            .flatten()
            .filter(|v| loadable.contains(v))
            .collect();
        // A registry-managed model serves exactly its assigned versions.
        let registry = self.server.assignment(name).is_some();
        // With the stable version unpinned, the policy picks it among the versions that
        // are not the canary (`latest = 1` with a canary on the newest version serves
        // the newest other version as stable, and the canary beside it).
        let unpinned_canary = rollout.canary.filter(|_| rollout.stable.is_none());
        let by_policy = |versions: &[u64]| {
            if registry {
                BTreeSet::new()
            } else {
                let others: Vec<u64> = versions
                    .iter()
                    .copied()
                    .filter(|&v| Some(v) != unpinned_canary)
                    .collect();
                select(&policy, &others)
            }
        };
        let desired: BTreeSet<u64> = by_policy(&loadable).union(&pins).copied().collect();

        // A loaded version is kept only if it was loaded alike: another engine or Triton
        // configuration means its session or signature are the wrong ones.
        let same_load = current
            .as_ref()
            .is_none_or(|c| loaded_alike(&c.config, &config));
        let mut available: BTreeMap<u64, Arc<ServedVersion>> = current
            .as_ref()
            .map(|c| {
                c.versions
                    .iter()
                    .filter(|(v, _)| on_disk.contains_key(v) && same_load)
                    .map(|(v, s)| (*v, s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let seen = state.seen.entry(name.to_string()).or_default();
        let mut pending = BTreeSet::new();
        let mut failed_now = Vec::new();
        for &v in &desired {
            let src = on_disk[&v];
            if available
                .get(&v)
                .is_some_and(|cur| cur.fingerprint == src.fingerprint)
            {
                continue;
            }
            let settled = force || seen.get(&v) == Some(&src.fingerprint);
            if !settled {
                tracing::debug!(
                    model = name,
                    version = v,
                    "waiting for the version's files to settle"
                );
                pending.insert(v);
                continue;
            }
            match self.server.load_version(name, &config, src) {
                Ok(sv) => {
                    tracing::info!(model = name, version = v, engine = %sv.engine,
                        load_ms = sv.load_time.as_secs_f64() * 1e3, "version loaded");
                    available.insert(v, sv);
                }
                Err(e) => {
                    tracing::error!(model = name, version = v, error = %e, "version failed to load; keeping what is served");
                    failed.insert(v, (src.fingerprint.clone(), e.to_string()));
                    failed_now.push(format!("version {v}: {e}"));
                }
            }
        }
        *seen = on_disk
            .iter()
            .map(|(v, s)| (*v, s.fingerprint.clone()))
            .collect();
        state.pending.insert(name.to_string(), pending);

        let keys: Vec<u64> = available.keys().copied().collect();
        let chosen: BTreeSet<u64> = by_policy(&keys)
            .into_iter()
            .chain(pins.iter().copied().filter(|v| available.contains_key(v)))
            .collect();
        let mut served: BTreeMap<u64, Arc<ServedVersion>> = available
            .into_iter()
            .filter(|(v, _)| chosen.contains(v))
            .collect();
        if served.is_empty() {
            if let Some(c) = current.as_ref().filter(|c| !c.versions.is_empty()) {
                tracing::warn!(
                    model = name,
                    "no version of the model can be loaded now; keeping the versions served"
                );
                served = c.versions.clone();
            }
        }
        let mut failures: BTreeMap<u64, String> =
            failed.iter().map(|(v, (_, r))| (*v, r.clone())).collect();
        if on_disk.is_empty() {
            failures.insert(0, "no version directory with a model.onnx".into());
        }
        let outcome = if served.is_empty() {
            Err(failures
                .values()
                .next()
                .cloned()
                .unwrap_or_else(|| "no version could be loaded".into()))
        } else {
            Ok(failed_now)
        };
        self.server.publish(
            name,
            Some(ModelUpdate {
                config,
                versions: served,
                failures,
            }),
        );
        outcome
    }

    /// `POST /v2/repository/models/{m}/load`: (re)loads a model now.
    pub fn load(&self, name: &str) -> Result<(), ControlError> {
        self.load_with(name, None)
    }

    /// `load` with Triton's configuration override (`{"parameters": {"config": ".."}}`):
    /// the model is served with `config` in place of its `config.pbtxt` until the next
    /// load without one (`config.toml` still wins where both set a thing).
    pub fn load_with(
        &self,
        name: &str,
        config: Option<crate::config::TritonConfig>,
    ) -> Result<(), ControlError> {
        let source = repository::scan_model(&self.root, name)
            .map_err(|e| ControlError::Failed(e.to_string()))?
            .ok_or_else(|| ControlError::NotFound(name.to_string()))?;
        let mut state = self.lock();
        let overriding = config.is_some();
        let before = match config {
            Some(c) => state.overrides.insert(name.to_string(), c),
            None => state.overrides.remove(name),
        };
        state.wanted.insert(name.to_string());
        // An explicit request retries versions that failed before.
        state.failed.remove(name);
        let reason = match self.reconcile(&mut state, &source, true) {
            Ok(failed) if !overriding || failed.is_empty() => return Ok(()),
            // An override some version does not load with is refused as a whole.
            Ok(failed) => failed.join("; "),
            Err(reason) => reason,
        };
        if overriding {
            // Refused: the model goes on as before the request (its last override, or
            // none), and the versions the refused one failed are tried again.
            match before {
                Some(b) => state.overrides.insert(name.to_string(), b),
                None => state.overrides.remove(name),
            };
            state.failed.remove(name);
            if let Err(e) = self.reconcile(&mut state, &source, true) {
                tracing::error!(model = name, error = %e, "the model cannot be restored after a refused load");
            }
        }
        // Triton's text first (clients match on it), vigil's reason after.
        Err(ControlError::Failed(format!(
            "failed to load '{name}', no version is available: {reason}"
        )))
    }

    /// `POST /v2/repository/models/{m}/unload` (explicit mode only).
    pub fn unload(&self, name: &str) -> Result<(), ControlError> {
        if self.control != ModelControl::Explicit {
            return Err(ControlError::NotAllowed(
                "unload needs --model-control explicit; in poll mode the repository decides what is served".into(),
            ));
        }
        let mut state = self.lock();
        let known = state.wanted.remove(name) | self.server.table().models.contains_key(name);
        if !known {
            return Err(ControlError::NotServed(name.to_string()));
        }
        self.server.publish(name, None);
        state.seen.remove(name);
        Ok(())
    }

    /// Records (or, with `None`, clears) why a model's source cannot provide it now, for
    /// the repository index: a model registry reports each model's failure here.
    pub fn set_source_error(&self, name: &str, error: Option<String>) {
        let mut state = self.lock();
        match error {
            Some(e) => state.source_errors.insert(name.to_string(), e),
            None => state.source_errors.remove(name),
        };
    }

    /// `POST /v2/repository/index`: every model and version on disk, and its state; and
    /// every model its source failed to provide, with why.
    pub fn index(&self) -> Vec<IndexRow> {
        let sources = repository::scan(&self.root).unwrap_or_default();
        let table = self.server.table();
        let state = self.lock();
        let mut rows = Vec::new();
        for source in &sources {
            let ignored: Vec<String> = source
                .config
                .as_ref()
                .ok()
                .and_then(|c| c.triton.as_ref())
                .map(|t| t.ignored.clone())
                .unwrap_or_default();
            let row =
                |name: &str, version: Option<u64>, st: &'static str, reason: String| IndexRow {
                    name: name.to_string(),
                    version: version.map(|v| v.to_string()),
                    state: st,
                    reason,
                    ignored: ignored.clone(),
                };
            let name = source.name.as_str();
            let entry = table.models.get(name);
            if let Some(reason) = state.source_errors.get(name) {
                rows.push(row(name, None, "UNAVAILABLE", reason.clone()));
            }
            if let Some(reason) = entry.and_then(|e| e.failures.get(&0)) {
                rows.push(row(name, None, "UNAVAILABLE", reason.clone()));
            } else if let Err(e) = &source.config {
                rows.push(row(name, None, "UNAVAILABLE", e.clone()));
            }
            if source.versions.is_empty() {
                rows.push(row(
                    name,
                    None,
                    "UNAVAILABLE",
                    "no version directory with a model.onnx".into(),
                ));
            }
            let failed = state.failed.get(name);
            for v in &source.versions {
                let (st, reason) = if entry.is_some_and(|e| e.versions.contains_key(&v.version)) {
                    ("READY", String::new())
                } else if let Some((_, r)) = failed.and_then(|f| f.get(&v.version)) {
                    ("UNAVAILABLE", r.clone())
                } else if !self.is_wanted(&state, name) {
                    ("UNAVAILABLE", "unloaded".to_string())
                } else if state
                    .pending
                    .get(name)
                    .is_some_and(|p| p.contains(&v.version))
                    || state.seen.get(name).and_then(|s| s.get(&v.version)) != Some(&v.fingerprint)
                {
                    (
                        "LOADING",
                        "waiting for the version's files to settle".to_string(),
                    )
                } else {
                    (
                        "UNAVAILABLE",
                        "not selected by the version policy".to_string(),
                    )
                };
                rows.push(row(name, Some(v.version), st, reason));
            }
        }
        for (name, reason) in &state.source_errors {
            if !sources.iter().any(|s| &s.name == name) {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: None,
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                    ignored: Vec::new(),
                });
            }
        }
        rows
    }

    /// Polls every `interval` on a thread of its own, at a lower CPU priority than the
    /// request path (loading a model is heavy work that must not push serving latency
    /// up), until `stop` is dropped or sent to.
    pub fn spawn(
        self: Arc<Self>,
        interval: Duration,
        stop: crossbeam_channel::Receiver<()>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("vigil-reload".into())
            .spawn(move || {
                lower_thread_priority();
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop.recv_timeout(interval)
                {
                    match crate::supervise::guard("reload", || self.poll()) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "repository scan failed"),
                        Err(_) => {} // logged and counted by the guard
                    }
                }
            })
            .expect("spawning the reload thread")
    }
}

/// Nice 10 for the calling thread only (Linux gives each thread its own nice value).
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; `0` is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Whether a version loaded under `a` serves as one loaded under `b` would: the same
/// engine, Triton configuration (which narrows its signature) and retrain trigger (a
/// fleet trigger needs a reference). Drift, batching and execution settings are applied
/// to loaded versions when the model is published; routing does not touch them.
fn loaded_alike(a: &ModelConfig, b: &ModelConfig) -> bool {
    a.backend == b.backend && a.triton == b.triton && a.retrain.trigger == b.retrain.trigger
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_select() {
        let v = [1, 2, 3, 5];
        assert_eq!(select(&VersionPolicy::Latest(1), &v), BTreeSet::from([5]));
        assert_eq!(
            select(&VersionPolicy::Latest(2), &v),
            BTreeSet::from([3, 5])
        );
        assert_eq!(
            select(&VersionPolicy::Latest(9), &v),
            BTreeSet::from([1, 2, 3, 5])
        );
        assert_eq!(
            select(&VersionPolicy::Specific(vec![1, 4, 5]), &v),
            BTreeSet::from([1, 5])
        );
        assert_eq!(select(&VersionPolicy::All, &v).len(), 4);
    }
}

//! Model registries as a model source: vigil follows a registry's aliases instead of (or
//! beside) a hand-filled repository.
//!
//! A registry source downloads the versions its aliases name into the local repository
//! (`<repository>/<model>/<version>/model.onnx`, published by an atomic rename so a
//! half-downloaded version is never loaded), then tells serving which versions are stable
//! and canary ([`Assignment`]) and asks the reloader to reconcile the model: one table
//! swap, as for any other change. The assignments are kept in
//! `<state-dir>/registry.json`, so a restart with the registry down serves the cached
//! versions in their last roles. Beside each cached version's files,
//! [`cache::MANIFEST`] keeps the sizes the registry listed, so that a restart can tell a
//! damaged cache (a file cut short by a crash) from a good one without asking the
//! registry.
//!
//! Rooms: this file owns the saved roles ([`AssignmentStore`]), [`restore`] at start and
//! [`apply`]; [`cache`] the on-disk cache; [`mlflow`] the MLflow source. The registry
//! imports serving (roles are applied there) and ground-floor utilities, never http.

pub mod cache;
pub mod mlflow;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::serving::reload::Reloader;
use crate::serving::{Assignment, Server};

/// The persisted roles of every registry-managed model.
pub struct AssignmentStore {
    path: PathBuf,
}

impl AssignmentStore {
    pub fn new(state_dir: &Path) -> AssignmentStore {
        AssignmentStore {
            path: state_dir.join("registry.json"),
        }
    }

    /// What was saved; an unreadable file is logged and treated as empty.
    pub fn load(&self) -> BTreeMap<String, Assignment> {
        crate::fsutil::read_state(&self.path, "registry state")
    }

    /// Writes the whole map durably.
    pub fn save(&self, all: &BTreeMap<String, Assignment>) -> std::io::Result<()> {
        crate::fsutil::write_atomic(
            &self.path,
            &serde_json::to_vec_pretty(all).expect("assignments serialise"),
        )
    }
}

/// At start, before the first load: restores the saved roles of models whose assigned
/// versions are in the cache, intact, so they serve even when the registry is
/// unreachable. A damaged version is left for the first sync to download again.
pub fn restore(store: &AssignmentStore, server: &Server, repository: &Path) {
    for (model, a) in store.load() {
        let cached = |v: Option<u64>| {
            v.is_none_or(|v| {
                let dir = repository.join(&model).join(v.to_string());
                match cache::check_cached(&dir) {
                    Ok(()) => true,
                    Err(problem) => {
                        tracing::warn!(model = %model, version = v, %problem,
                            "model registry: the cached version is damaged or missing; not serving it until it is downloaded again");
                        false
                    }
                }
            })
        };
        let a = Assignment {
            stable: a.stable.filter(|_| cached(a.stable)),
            canary: a.canary.filter(|_| cached(a.canary)),
        };
        if a.stable.is_some() {
            tracing::info!(model = %model, stable = ?a.stable, canary = ?a.canary, "restored registry roles from the cache");
            server.set_assignment(&model, Some(a));
        }
    }
}

/// Applies a new assignment: saves it, hands it to serving and reconciles the model
/// (loading newly downloaded versions at once, unloading ones no longer assigned).
/// `all` is locked only while it is updated and saved, so models apply independently.
pub async fn apply(
    server: &Arc<Server>,
    reloader: &Arc<Reloader>,
    store: &AssignmentStore,
    all: &Mutex<BTreeMap<String, Assignment>>,
    model: &str,
    assignment: Assignment,
) -> Result<(), String> {
    {
        let mut all = all
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.insert(model.to_string(), assignment);
        store
            .save(&all)
            .map_err(|e| format!("saving {}: {e}", store.path.display()))?;
    }
    server.set_assignment(model, Some(assignment));
    let (reloader, name) = (reloader.clone(), model.to_string());
    tokio::task::spawn_blocking(move || reloader.load(&name))
        .await
        .map_err(|e| format!("reload task failed: {e}"))?
        .map_err(|e| e.to_string())
}

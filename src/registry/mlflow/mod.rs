//! The MLflow Model Registry as a model source.
//!
//! Every poll interval, for each model (named by `--mlflow-models`, or every registered
//! model carrying one of the serving aliases): read its aliases
//! (`registered-models/get`), make sure the versions the stable and canary aliases name
//! are cached (`model-versions/get-download-uri`, then the `mlflow-artifacts` proxy, or
//! a local path for `file:` stores), and hand the new roles to serving. Only ONNX models
//! are served: a version whose `MLmodel` has no `onnx` flavour is refused with a message
//! saying so.
//!
//! Each model is followed on its own: its sync is a task of its own, and a model that
//! fails (refused, no alias yet, MLflow unreachable) is retried with its own growing
//! delay and reported on its own (log, repository index, `vigil_registry_model_up`),
//! while every other model keeps following its aliases every poll interval. Between
//! retries a failing model's aliases are still read each interval (one small request,
//! skipped while MLflow itself fails), so moving them retries it at once.
//!
//! The cache is only trusted as far as the registry's listing: a version is downloaded
//! to a hidden directory, every file and directory fsynced, then renamed into place; a
//! cached version is compared with the listing's file sizes before this process first
//! uses it, and downloaded again if anything differs. Paths from a listing must stay
//! inside the version's directory: `..`, absolute paths and symbolic links are refused,
//! naming the path.
//!
//! Rooms: this file owns the options, the errors and the scheduler (the run loop, one
//! task per model, its backoff and its reports); `roles.rs` one model's sync; `client.rs`
//! the REST calls and artifact listings; `download.rs` bringing a version into the
//! cache (`registry::cache`); `write.rs` the judge's decisions written back to the
//! aliases (`--mlflow-write-aliases`). Imports serving (roles are applied there), never
//! http.

mod client;
mod download;
mod roles;
#[cfg(test)]
mod tests;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::AssignmentStore;
use crate::serving::reload::Reloader;
use crate::serving::{Assignment, Server};

pub use write::AliasWriter;

/// Settings of the MLflow source.
#[derive(Clone, Debug)]
pub struct MlflowOptions {
    /// Tracking server base URL, e.g. `http://mlflow:5000`.
    pub uri: String,
    /// Models to serve; empty: every registered model with a serving alias.
    pub models: Vec<String>,
    pub stable_alias: String,
    pub canary_alias: String,
    pub interval: Duration,
    /// The local repository the versions are cached in.
    pub repository: PathBuf,
    pub state_dir: PathBuf,
    /// `MLFLOW_TRACKING_TOKEN`, or user and password, as MLflow's clients read them.
    pub token: Option<String>,
    pub basic: Option<(String, String)>,
}

impl MlflowOptions {
    /// The credentials MLflow's own clients take from the environment.
    pub fn with_env_credentials(mut self) -> MlflowOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        self.token = var("MLFLOW_TRACKING_TOKEN");
        if let (Some(u), Some(p)) = (
            var("MLFLOW_TRACKING_USERNAME"),
            var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            self.basic = Some((u, p));
        }
        self
    }
}

/// Why talking to MLflow failed.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow at {uri} is unreachable: {reason}")]
    Unreachable { uri: String, reason: String },
    #[error("MLflow answered {status} to {what}: {message}")]
    Status {
        status: u16,
        what: String,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Model(String),
    #[error("writing the cache: {0}")]
    Cache(String),
    #[error("refusing artifact '{path}' listed at {at}: {why}")]
    UnsafeArtifact {
        path: String,
        at: String,
        why: &'static str,
    },
}

impl MlflowError {
    fn is_not_found(&self) -> bool {
        matches!(self, MlflowError::Status { status: 404, .. })
            || matches!(self, MlflowError::Status { code, .. } if code == "RESOURCE_DOES_NOT_EXIST")
    }

    /// MLflow itself is failing (unreachable, overloaded, a server error), as opposed
    /// to refusing one model: only then is the registry reported down.
    fn is_registry_down(&self) -> bool {
        match self {
            MlflowError::Unreachable { .. } => true,
            MlflowError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// A model's champion and challenger versions, as read from its aliases.
type Roles = (Option<u64>, Option<u64>);

/// How one model (or, under the key `""`, the listing of models) is being followed.
#[derive(Default)]
struct Follow {
    /// A sync of it is under way; at most one runs at a time.
    running: bool,
    /// Set while it fails.
    failing: Option<Failing>,
}

/// A model's failure and its own backoff.
/// Whether a failure changes the state a log line reports (and is logged): the first
/// one, MLflow going down or coming back while the model still fails, or another problem
/// with a model while MLflow answers. While MLflow is down its errors change wording
/// (a pooled connection closed mid-request, then connections refused): the same state.
fn is_new_failure(was: Option<&Failing>, message: &str, registry_down: bool) -> bool {
    was.is_none_or(|x| x.registry_down != registry_down || (!registry_down && x.message != message))
}

struct Failing {
    /// What was logged and reported, so a repeat is not logged again.
    message: String,
    /// The wait before the next full retry: doubles with each failure, up to 60 s.
    delay: Duration,
    retry_at: Instant,
    /// The aliases it failed with (`None` if they could not be read): until `retry_at`,
    /// only a move of them retries it.
    roles: Option<Roles>,
    /// MLflow itself failed (unreachable, a 5xx): nothing is asked before `retry_at`.
    registry_down: bool,
}

/// What one sync of a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Everything: read the aliases, check or download the versions, apply the roles.
    Full,
    /// A failing model between retries: read its aliases and go on only if they moved.
    IfMoved(Option<Roles>),
}

/// How a sync ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synced {
    Done,
    /// [`Mode::IfMoved`] found the aliases where they were.
    Unchanged,
}

/// What a background task of the source finished.
enum Finished {
    Listing,
    Model,
}

/// Marks a model's sync as under way; dropping it (even by a panic) ends that.
struct Claim {
    source: Arc<Mlflow>,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(f) = self.source.follows().get_mut(&self.name) {
            f.running = false;
        }
    }
}

/// The MLflow source: a task that starts one sync task per model each poll interval.
pub struct Mlflow {
    opts: MlflowOptions,
    client: reqwest::Client,
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    store: AssignmentStore,
    /// The saved roles; locked only to read or update them, never across a request.
    assignments: Mutex<BTreeMap<String, Assignment>>,
    /// Per model (and `""` for the listing): its sync under way, its failure, its backoff.
    follows: Mutex<HashMap<String, Follow>>,
    /// Without `--mlflow-models`: the models of the last successful listing.
    listed: Mutex<Vec<String>>,
    /// Versions checked against the registry's listing (or downloaded) by this process.
    verified: Mutex<HashSet<(String, u64)>>,
}

const SOURCE: &str = "mlflow";
const MAX_DELAY: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Mlflow {
    pub fn new(opts: MlflowOptions, server: Arc<Server>, reloader: Arc<Reloader>) -> Mlflow {
        let store = AssignmentStore::new(&opts.state_dir);
        // Exported from the start, at 0, so that rate() and alerts see the series.
        server.metrics.registry_errors.with_label_values(&[SOURCE]);
        let assignments = Mutex::new(store.load());
        Mlflow {
            client: reqwest::Client::builder()
                .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(300))
                .build()
                .expect("an HTTP client with default settings"),
            opts,
            server,
            reloader,
            store,
            assignments,
            follows: Mutex::new(HashMap::new()),
            listed: Mutex::new(Vec::new()),
            verified: Mutex::new(HashSet::new()),
        }
    }

    fn follows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Follow>> {
        lock(&self.follows)
    }

    /// Follows the registry until `stop` turns true: each poll interval, every model that
    /// is due gets a sync task of its own, so a slow or failing model never holds up
    /// another's alias moves.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let interval = self.opts.interval;
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.start_due(&mut tasks, false),
                Some(done) = tasks.join_next() => match done {
                    // Models new in the listing start now, not a tick later.
                    Ok(Finished::Listing) => self.start_due(&mut tasks, true),
                    Ok(Finished::Model) => {}
                    // Logged and counted as the task's panic; the model (its claim
                    // dropped) is synced again at the next poll.
                    Err(e) if e.is_panic() => {
                        crate::supervise::panicked("registry_sync", e.into_panic().as_ref());
                    }
                    Err(_) => {}
                },
                _ = stop.changed() => {
                    tasks.abort_all();
                    return;
                }
            }
        }
    }

    /// One pass over every model at once, waiting for all (used at start, before ready);
    /// false if any part failed.
    pub async fn sync(self: &Arc<Self>) -> bool {
        let mut ok = true;
        if self.opts.models.is_empty() {
            if let Some((claim, _)) = self.claim("", false) {
                ok &= self.clone().list_models(claim).await;
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for name in self.names() {
            if let Some((claim, mode)) = self.claim(&name, false) {
                tasks.spawn(self.clone().sync_claimed(claim, mode));
            }
        }
        while let Some(r) = tasks.join_next().await {
            ok &= r.unwrap_or(false);
        }
        ok
    }

    /// The models followed: `--mlflow-models`, or the last listing.
    fn names(&self) -> Vec<String> {
        if self.opts.models.is_empty() {
            lock(&self.listed).clone()
        } else {
            self.opts.models.clone()
        }
    }

    /// Starts the listing and every model sync that is due (with `only_new`, just the
    /// models never synced yet).
    fn start_due(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<Finished>, only_new: bool) {
        if self.opts.models.is_empty() && !only_new {
            if let Some((claim, _)) = self.claim("", false) {
                let me = self.clone();
                tasks.spawn(async move {
                    me.list_models(claim).await;
                    Finished::Listing
                });
            }
            self.forget_unlisted();
        }
        for name in self.names() {
            if let Some((claim, mode)) = self.claim(&name, only_new) {
                let me = self.clone();
                tasks.spawn(async move {
                    me.sync_claimed(claim, mode).await;
                    Finished::Model
                });
            }
        }
    }

    /// Marks a model's sync as started if it is due, and says how much to do: all of it
    /// while the model is healthy or its retry is due; between retries of a failing
    /// model, a look at its aliases (none at all while MLflow itself is failing).
    fn claim(self: &Arc<Self>, name: &str, only_new: bool) -> Option<(Claim, Mode)> {
        let mut all = self.follows();
        if only_new && all.contains_key(name) {
            return None;
        }
        let f = all.entry(name.to_string()).or_default();
        if f.running {
            return None;
        }
        let mode = match &f.failing {
            None => Mode::Full,
            Some(x) if x.retry_at <= Instant::now() => Mode::Full,
            Some(x) if x.registry_down || name.is_empty() => return None,
            Some(x) => Mode::IfMoved(x.roles),
        };
        f.running = true;
        Some((
            Claim {
                source: self.clone(),
                name: name.to_string(),
            },
            mode,
        ))
    }

    /// Stops following models that left the listing (their aliases were removed): they
    /// keep serving what they have; their error and metric series go.
    fn forget_unlisted(&self) {
        let listed: HashSet<String> = lock(&self.listed).iter().cloned().collect();
        let mut all = self.follows();
        let gone: Vec<String> = all
            .iter()
            .filter(|(n, f)| !n.is_empty() && !f.running && !listed.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            all.remove(&name);
            let _ = self
                .server
                .metrics
                .registry_model_up
                .remove_label_values(&[SOURCE, &name]);
            self.reloader.set_source_error(&name, None);
        }
    }

    async fn list_models(self: Arc<Self>, claim: Claim) -> bool {
        let result = self.aliased_models().await;
        let result = result.map(|names| {
            *lock(&self.listed) = names;
            Synced::Done
        });
        let ok = self.finish("", None, result);
        drop(claim);
        ok
    }

    async fn sync_claimed(self: Arc<Self>, claim: Claim, mode: Mode) -> bool {
        let (roles, result) = self.sync_model(&claim.name, mode).await;
        let ok = self.finish(&claim.name, roles, result);
        drop(claim);
        ok
    }

    /// Records how a sync ended: a success clears the model's failure; a failure is
    /// counted, logged if it is new, reported in the repository index and
    /// `vigil_registry_model_up`, and backs off the model's own retries. True on success.
    fn finish(
        &self,
        model: &str,
        roles: Option<Roles>,
        result: Result<Synced, MlflowError>,
    ) -> bool {
        let metrics = &self.server.metrics;
        let e = match result {
            Ok(Synced::Unchanged) => return false,
            Ok(Synced::Done) => {
                let was = self.follows().get_mut(model).and_then(|f| f.failing.take());
                metrics.registry_up.with_label_values(&[SOURCE]).set(1);
                if !model.is_empty() {
                    metrics
                        .registry_model_up
                        .with_label_values(&[SOURCE, model])
                        .set(1);
                    self.reloader.set_source_error(model, None);
                }
                if was.is_some() {
                    if model.is_empty() {
                        tracing::info!("model registry: reachable again");
                    } else {
                        tracing::info!(model, "model registry: following the model again");
                    }
                }
                return true;
            }
            Err(e) => e,
        };
        metrics.registry_errors.with_label_values(&[SOURCE]).inc();
        let registry_down = e.is_registry_down();
        metrics
            .registry_up
            .with_label_values(&[SOURCE])
            .set(i64::from(!registry_down));
        let message = e.to_string();
        let (new, delay) = {
            let mut all = self.follows();
            let f = all.entry(model.to_string()).or_default();
            let delay = f
                .failing
                .as_ref()
                .map_or(self.opts.interval * 2, |x| x.delay * 2)
                .min(MAX_DELAY)
                .max(self.opts.interval);
            let new = is_new_failure(f.failing.as_ref(), &message, registry_down);
            f.failing = Some(Failing {
                message: message.clone(),
                delay,
                retry_at: Instant::now() + delay,
                roles,
                registry_down,
            });
            (new, delay)
        };
        if !model.is_empty() {
            metrics
                .registry_model_up
                .with_label_values(&[SOURCE, model])
                .set(0);
            self.reloader
                .set_source_error(model, Some(format!("MLflow: {message}")));
        }
        if new {
            let retry_in = format!("{:?}", delay);
            if model.is_empty() {
                tracing::error!(error = %message, %retry_in, "model registry: cannot list models; serving what is cached, retrying");
            } else {
                tracing::error!(model, error = %message, %retry_in, "model registry: cannot follow the model; serving what is cached, retrying");
            }
        }
        false
    }
}

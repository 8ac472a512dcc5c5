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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{AssignmentStore, Manifest, MANIFEST};
use crate::serving::reload::Reloader;
use crate::serving::{Assignment, Server};

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

/// Where a version's artifacts live.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// Through the tracking server's artifact proxy: a path under
    /// `/api/2.0/mlflow-artifacts/artifacts/`.
    Proxy(String),
    /// A directory on this machine (`file:` artifact stores on shared storage).
    Local(PathBuf),
}

/// Maps an artifact URI from MLflow to a location vigil can read.
fn location(uri: &str) -> Result<Location, String> {
    if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
        // `mlflow-artifacts:/path` or `mlflow-artifacts://host:port/path`.
        let path = match rest.strip_prefix("//") {
            Some(with_host) => with_host.split_once('/').map(|(_, p)| p).unwrap_or(""),
            None => rest,
        };
        return Ok(Location::Proxy(path.trim_matches('/').to_string()));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Location::Local(PathBuf::from(path)));
    }
    if uri.starts_with('/') {
        return Ok(Location::Local(PathBuf::from(uri)));
    }
    Err(format!(
        "artifact URI '{uri}' is not served by the MLflow server; start it with \
         --serve-artifacts (the default) and an --artifacts-destination, or use a local file store"
    ))
}

/// The ONNX file of a logged model, from its `MLmodel` file (YAML as MLflow writes it:
/// block style, two-space indent). Refuses models without an `onnx` flavour.
pub fn onnx_data_file(mlmodel: &str) -> Result<String, String> {
    let mut flavors = Vec::new();
    let mut in_flavors = false;
    let mut current = None::<String>;
    let mut onnx_data = None;
    for line in mlmodel.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if indent == 0 {
            in_flavors = text == "flavors:";
            current = None;
            continue;
        }
        if !in_flavors {
            continue;
        }
        if indent == 2 {
            if let Some(name) = text.strip_suffix(':') {
                flavors.push(name.to_string());
                current = Some(name.to_string());
            }
        } else if indent == 4 && current.as_deref() == Some("onnx") {
            if let Some(v) = text.strip_prefix("data:") {
                onnx_data = Some(v.trim().trim_matches(['\'', '"']).to_string());
            }
        }
    }
    if !flavors.iter().any(|f| f == "onnx") {
        return Err(if flavors.is_empty() {
            "its MLmodel file lists no flavors".to_string()
        } else {
            format!(
                "it is not an ONNX model (flavors: {}); vigil serves ONNX models: log it with mlflow.onnx.log_model",
                flavors.join(", ")
            )
        });
    }
    let data = onnx_data.unwrap_or_else(|| "model.onnx".to_string());
    if data.contains("..") || data.starts_with('/') {
        return Err(format!(
            "its onnx flavour names an unsafe data path '{data}'"
        ));
    }
    Ok(data)
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

/// Whether a version was already in the cache or has just been downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    Cached,
    Downloaded,
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

/// One file of a version: where it comes from, where it goes in the version's directory
/// and its size as the registry lists it.
#[derive(Debug, Clone)]
struct Wanted {
    loc: Location,
    src: String,
    dest: String,
    size: Option<u64>,
}

/// Everything a version's cache directory must hold.
struct Plan {
    uri: String,
    files: Vec<Wanted>,
}

impl Plan {
    fn manifest(&self) -> Manifest {
        Manifest {
            source: self.uri.clone(),
            files: self
                .files
                .iter()
                .map(|f| (f.dest.clone(), f.size))
                .collect(),
        }
    }
}

/// One entry of an artifact listing, its path relative to the listed root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: String,
    is_dir: bool,
    size: Option<u64>,
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
            let new = f.failing.as_ref().is_none_or(|x| x.message != message);
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

    fn url(&self, path: &str) -> String {
        format!("{}/api/2.0/{}", self.opts.uri.trim_end_matches('/'), path)
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.get(url);
        if let Some(t) = &self.opts.token {
            r.bearer_auth(t)
        } else if let Some((u, p)) = &self.opts.basic {
            r.basic_auth(u, Some(p))
        } else {
            r
        }
    }

    async fn send(&self, url: &str, what: &str) -> Result<reqwest::Response, MlflowError> {
        let resp = self
            .request(url)
            .send()
            .await
            .map_err(|e| MlflowError::Unreachable {
                uri: self.opts.uri.clone(),
                reason: error_chain(&e),
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Err(MlflowError::Status {
            status,
            what: what.to_string(),
            code: body["error_code"].as_str().unwrap_or("").to_string(),
            message: body["message"]
                .as_str()
                .unwrap_or("(no message)")
                .to_string(),
        })
    }

    async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, MlflowError> {
        let mut url =
            reqwest::Url::parse(&self.url(path)).map_err(|e| MlflowError::Unreachable {
                uri: self.opts.uri.clone(),
                reason: format!("not a URL: {e}"),
            })?;
        url.query_pairs_mut().extend_pairs(query);
        let resp = self.send(url.as_str(), path).await?;
        resp.json().await.map_err(|e| MlflowError::Status {
            status: 200,
            what: path.to_string(),
            code: String::new(),
            message: format!("not JSON: {e}"),
        })
    }

    /// Registered models carrying the stable or canary alias (all pages).
    async fn aliased_models(&self) -> Result<Vec<String>, MlflowError> {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = vec![("max_results", "1000")];
            if !token.is_empty() {
                q.push(("page_token", token.as_str()));
            }
            let page = self.get_json("mlflow/registered-models/search", &q).await?;
            for m in page["registered_models"].as_array().into_iter().flatten() {
                let aliases = parse_aliases(&m["aliases"]);
                if aliases.contains_key(&self.opts.stable_alias)
                    || aliases.contains_key(&self.opts.canary_alias)
                {
                    if let Some(n) = m["name"].as_str() {
                        names.push(n.to_string());
                    }
                }
            }
            match page["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => return Ok(names),
            }
        }
    }

    /// One sync of one model. Returns the aliases read (if they were) with the outcome.
    async fn sync_model(
        &self,
        name: &str,
        mode: Mode,
    ) -> (Option<Roles>, Result<Synced, MlflowError>) {
        if !valid_model_name(name) {
            let e = MlflowError::Model(format!(
                "'{name}' cannot be a directory name in the model repository"
            ));
            return (
                None,
                if mode == Mode::Full {
                    Err(e)
                } else {
                    Ok(Synced::Unchanged)
                },
            );
        }
        let m = match self
            .get_json("mlflow/registered-models/get", &[("name", name)])
            .await
        {
            Ok(m) => m,
            // Between retries, the same refusal is not a new failure.
            Err(e) if mode != Mode::Full && !e.is_registry_down() => {
                return (None, Ok(Synced::Unchanged))
            }
            Err(e) => return (None, Err(e)),
        };
        let aliases = parse_aliases(&m["registered_model"]["aliases"]);
        let roles = (
            aliases.get(&self.opts.stable_alias).copied(),
            aliases.get(&self.opts.canary_alias).copied(),
        );
        if mode == Mode::IfMoved(Some(roles)) {
            return (Some(roles), Ok(Synced::Unchanged));
        }
        let result = self.follow_roles(name, roles).await.map(|()| Synced::Done);
        (Some(roles), result)
    }

    /// Makes the aliased versions cached and serving in their roles.
    async fn follow_roles(
        &self,
        name: &str,
        (champion, challenger): Roles,
    ) -> Result<(), MlflowError> {
        let previous = lock(&self.assignments)
            .get(name)
            .copied()
            .unwrap_or_default();
        let mut problem = None;
        // A version downloaded again (its cache was damaged) is reloaded even if its
        // role did not change.
        let mut fresh = false;
        // The stable version: the alias's, once cached; until then (or if the alias is
        // gone) the one served before.
        let stable = match champion {
            Some(v) => match self.ensure_cached(name, v).await {
                Ok(f) => {
                    fresh |= f == Fetched::Downloaded;
                    Some(v)
                }
                Err(e) => {
                    problem = Some(e);
                    previous.stable
                }
            },
            None => {
                if previous.stable.is_some() {
                    problem = Some(MlflowError::Model(format!(
                        "'{name}' has no '{}' alias; keeping version {} as stable",
                        self.opts.stable_alias,
                        previous.stable.unwrap_or_default()
                    )));
                }
                previous.stable
            }
        };
        let canary = match challenger.filter(|&c| Some(c) != stable) {
            Some(v) => match self.ensure_cached(name, v).await {
                Ok(f) => {
                    fresh |= f == Fetched::Downloaded;
                    Some(v)
                }
                Err(e) => {
                    problem.get_or_insert(e);
                    None
                }
            },
            None => None,
        };
        let next = Assignment { stable, canary };
        if stable.is_some() && (fresh || self.server.assignment(name) != Some(next)) {
            if previous != next {
                tracing::info!(
                    model = name,
                    stable = ?next.stable,
                    canary = ?next.canary,
                    was_stable = ?previous.stable,
                    was_canary = ?previous.canary,
                    "model registry: roles changed"
                );
            }
            super::apply(
                &self.server,
                &self.reloader,
                &self.store,
                &self.assignments,
                name,
                next,
            )
            .await
            .map_err(MlflowError::Model)?;
        }
        match problem {
            Some(e) => Err(e),
            None if stable.is_none() => Err(MlflowError::Model(format!(
                "'{name}' has no '{}' alias in MLflow: nothing to serve",
                self.opts.stable_alias
            ))),
            None => Ok(()),
        }
    }

    /// Makes `<repository>/<model>/<version>/` hold the version's ONNX file (as
    /// `model.onnx`, with any other files of the logged model beside it) and, if the run
    /// logged one, its `reference.json`, all with the sizes the registry lists. A
    /// version this process has not checked yet is compared with the registry's listing
    /// first; a mismatch (a file cut short by a crash, a missing file) downloads it
    /// again. Downloads go to a temporary directory, every file and directory fsynced,
    /// renamed into place: the reloader never sees a partial copy, and a crash never
    /// leaves one behind the final name.
    async fn ensure_cached(&self, model: &str, version: u64) -> Result<Fetched, MlflowError> {
        let dir = self.opts.repository.join(model);
        let target = dir.join(version.to_string());
        let key = (model.to_string(), version);
        if lock(&self.verified).contains(&key) {
            match super::check_cached(&target) {
                Ok(()) => return Ok(Fetched::Cached),
                Err(problem) => {
                    tracing::warn!(model, version, %problem, "model registry: the cached version changed on disk; checking it against the registry");
                    lock(&self.verified).remove(&key);
                }
            }
        }
        let plan = self.plan(model, version).await?;
        let manifest = plan.manifest();
        if std::fs::symlink_metadata(&target).is_ok() {
            match super::check_files(&target, &manifest.files) {
                Ok(()) => {
                    lock(&self.verified).insert(key);
                    return Ok(Fetched::Cached);
                }
                Err(problem) => {
                    tracing::warn!(model, version, %problem, "model registry: the cached version does not match the registry's listing; downloading it again");
                }
            }
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| MlflowError::Cache(format!("{}: {e}", dir.display())))?;
        let tmp = dir.join(format!(".download-{version}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = async {
            for f in &plan.files {
                self.download(&f.loc, &f.src, &tmp.join(&f.dest), f.size)
                    .await?;
            }
            let bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
            write_synced(&tmp.join(MANIFEST), &bytes)
                .map_err(|e| MlflowError::Cache(format!("{}: {e}", tmp.display())))?;
            sync_tree(&tmp).map_err(|e| MlflowError::Cache(format!("{}: {e}", tmp.display())))?;
            publish_dir(&tmp, &target)
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(model, version, from = %plan.uri, "model registry: version downloaded");
                lock(&self.verified).insert(key);
                Ok(Fetched::Downloaded)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// The files a version's cache directory must hold, from the registry: its logged
    /// model's artifacts (the ONNX file as `model.onnx`) and its run's `reference.json`.
    async fn plan(&self, model: &str, version: u64) -> Result<Plan, MlflowError> {
        let v = version.to_string();
        let info = self
            .get_json(
                "mlflow/model-versions/get",
                &[("name", model), ("version", &v)],
            )
            .await?;
        let status = info["model_version"]["status"].as_str().unwrap_or("READY");
        if status != "READY" {
            return Err(MlflowError::Model(format!(
                "version {version} of '{model}' is {status} in MLflow, not READY yet"
            )));
        }
        let run_id = info["model_version"]["run_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let uri = self
            .get_json(
                "mlflow/model-versions/get-download-uri",
                &[("name", model), ("version", &v)],
            )
            .await?;
        let uri = uri["artifact_uri"].as_str().unwrap_or("").to_string();
        let loc = location(&uri).map_err(MlflowError::Model)?;
        let refuse =
            |why: String| MlflowError::Model(format!("version {version} of '{model}': {why}"));
        let listed = self.list(&loc, 4).await?;
        if !listed.iter().any(|f| f.path == "MLmodel") {
            return Err(refuse(format!(
                "no MLmodel file at {uri}: not a model logged with mlflow.<flavor>.log_model"
            )));
        }
        let mlmodel = self.fetch(&loc, "MLmodel").await?;
        let data = onnx_data_file(&String::from_utf8_lossy(&mlmodel)).map_err(refuse)?;
        if !listed.iter().any(|f| f.path == data) {
            return Err(refuse(format!(
                "its MLmodel names '{data}', which is not in {uri}"
            )));
        }
        let mut files: Vec<Wanted> = listed
            .iter()
            // Another file named model.onnx would be shadowed by the ONNX data file.
            .filter(|f| f.path == data || f.path != "model.onnx")
            .map(|f| Wanted {
                loc: loc.clone(),
                src: f.path.clone(),
                dest: if f.path == data {
                    "model.onnx".to_string()
                } else {
                    f.path.clone()
                },
                size: f.size,
            })
            .collect();
        if !listed.iter().any(|f| f.path == "reference.json") && !run_id.is_empty() {
            files.extend(self.run_reference(&run_id).await?);
        }
        Ok(Plan { uri, files })
    }

    /// A run's `reference.json` at the root of its artifacts, if it logged one.
    async fn run_reference(&self, run_id: &str) -> Result<Option<Wanted>, MlflowError> {
        let run = self
            .get_json("mlflow/runs/get", &[("run_id", run_id)])
            .await?;
        let Some(uri) = run["run"]["info"]["artifact_uri"].as_str() else {
            return Ok(None);
        };
        let Ok(loc) = location(uri) else {
            return Ok(None);
        };
        match self.list(&loc, 1).await {
            Ok(files) => Ok(files
                .into_iter()
                .find(|f| f.path == "reference.json")
                .map(|f| Wanted {
                    loc,
                    src: f.path.clone(),
                    dest: f.path,
                    size: f.size,
                })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Files under a location, at most `levels` directories deep, with their sizes.
    /// Refuses (naming it) any entry that could lead out of the version's directory: a
    /// `..` or absolute path, a symbolic link, anything but a file or directory.
    async fn list(&self, loc: &Location, levels: u32) -> Result<Vec<Entry>, MlflowError> {
        let mut out = Vec::new();
        let mut todo = vec![(String::new(), 0u32)];
        while let Some((rel, level)) = todo.pop() {
            let entries = match loc {
                Location::Proxy(base) => {
                    let path = join(base, &rel);
                    let v = self
                        .get_json("mlflow-artifacts/artifacts", &[("path", &path)])
                        .await?;
                    proxy_entries(&rel, &v).map_err(|(p, why)| MlflowError::UnsafeArtifact {
                        path: p,
                        at: format!("mlflow-artifacts:/{path}"),
                        why,
                    })?
                }
                Location::Local(base) => local_entries(base, &rel)?,
            };
            for e in entries {
                if e.is_dir {
                    if level + 1 < levels {
                        todo.push((e.path, level + 1));
                    }
                } else {
                    out.push(e);
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn fetch(&self, loc: &Location, file: &str) -> Result<Vec<u8>, MlflowError> {
        match loc {
            Location::Proxy(base) => {
                let url = self.url(&format!("mlflow-artifacts/artifacts/{}", join(base, file)));
                let resp = self.send(&url, file).await?;
                resp.bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| MlflowError::Unreachable {
                        uri: self.opts.uri.clone(),
                        reason: e.to_string(),
                    })
            }
            Location::Local(base) => {
                let path = base.join(file);
                let mut f = open_no_follow(&path)
                    .map_err(|e| MlflowError::Model(format!("reading {}: {e}", path.display())))?;
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut bytes)
                    .map_err(|e| MlflowError::Model(format!("reading {}: {e}", path.display())))?;
                Ok(bytes)
            }
        }
    }

    /// Writes one artifact to `dest`, fsyncs it and checks it has the size listed.
    async fn download(
        &self,
        loc: &Location,
        file: &str,
        dest: &Path,
        size: Option<u64>,
    ) -> Result<(), MlflowError> {
        use std::io::Write;
        let cache = |e: std::io::Error| MlflowError::Cache(format!("{}: {e}", dest.display()));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(cache)?;
        }
        let written = match loc {
            Location::Local(base) => {
                let (src, dest) = (base.join(file), dest.to_path_buf());
                tokio::task::spawn_blocking(move || copy_synced(&src, &dest))
                    .await
                    .map_err(|e| MlflowError::Cache(format!("copy task failed: {e}")))?
                    .map_err(|e| MlflowError::Cache(format!("copying {file}: {e}")))?
            }
            Location::Proxy(base) => {
                let url = self.url(&format!("mlflow-artifacts/artifacts/{}", join(base, file)));
                let mut resp = self.send(&url, file).await?;
                let mut out = std::fs::File::create(dest).map_err(cache)?;
                let mut n = 0u64;
                while let Some(chunk) =
                    resp.chunk().await.map_err(|e| MlflowError::Unreachable {
                        uri: self.opts.uri.clone(),
                        reason: format!("downloading {file}: {e}"),
                    })?
                {
                    out.write_all(&chunk).map_err(cache)?;
                    n += chunk.len() as u64;
                }
                out.sync_all().map_err(cache)?;
                n
            }
        };
        match size {
            Some(want) if want != written => Err(MlflowError::Model(format!(
                "downloading {file}: got {written} bytes, the registry lists {want}"
            ))),
            _ => Ok(()),
        }
    }
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{}/{}", a.trim_end_matches('/'), b.trim_start_matches('/')),
    }
}

/// MLflow's `[{"alias": "champion", "version": "3"}]` as a map.
fn parse_aliases(v: &Value) -> HashMap<String, u64> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let version = match &a["version"] {
                Value::String(s) => s.parse().ok()?,
                Value::Number(n) => n.as_u64()?,
                _ => return None,
            };
            Some((a["alias"].as_str()?.to_string(), version))
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A registered model name usable as a repository directory.
fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

/// Why a path from an artifact listing may not be used, or `None` if it may: it must be
/// relative, without `..`, `.` or empty parts, so that joined to the cache directory it
/// stays inside it.
fn unsafe_path(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("it is empty")
    } else if p.starts_with('/') {
        Some("it is an absolute path")
    } else if p.contains(['\\', '\0']) {
        Some("it contains a backslash or NUL")
    } else if p.split('/').any(|c| c == "..") {
        Some("it climbs out with '..'")
    } else if p.split('/').any(|c| c.is_empty() || c == ".") {
        Some("it has an empty or '.' part")
    } else {
        None
    }
}

/// The entries of one `mlflow-artifacts/artifacts?path=` answer for the directory `rel`
/// (MLflow answers names relative to it; a path with the directory in front is taken
/// as well). `Err` carries the first unsafe path and why.
fn proxy_entries(rel: &str, v: &Value) -> Result<Vec<Entry>, (String, &'static str)> {
    let mut out = Vec::new();
    for f in v["files"].as_array().into_iter().flatten() {
        let Some(p) = f["path"].as_str() else {
            continue;
        };
        if let Some(why) = unsafe_path(p) {
            return Err((p.to_string(), why));
        }
        let name = p.rsplit('/').next().unwrap_or(p);
        let size = match &f["file_size"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        out.push(Entry {
            path: join(rel, name),
            is_dir: f["is_dir"].as_bool().unwrap_or(false),
            size,
        });
    }
    Ok(out)
}

/// The entries of a directory of a local artifact store, without following links.
fn local_entries(base: &Path, rel: &str) -> Result<Vec<Entry>, MlflowError> {
    let d = base.join(rel);
    let read = |e: std::io::Error| {
        MlflowError::Model(format!("reading artifacts at {}: {e}", d.display()))
    };
    let refuse = |path: String, why| MlflowError::UnsafeArtifact {
        path,
        at: base.display().to_string(),
        why,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(&d).map_err(read)? {
        let e = e.map_err(read)?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Err(refuse(
                join(rel, &name.to_string_lossy()),
                "its name is not UTF-8",
            ));
        };
        let path = join(rel, name);
        // DirEntry's type and metadata describe the entry itself, not a link's target.
        let meta = e.metadata().map_err(read)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(refuse(
                path,
                "it is a symbolic link, which vigil does not follow out of the artifact store",
            ));
        }
        if !kind.is_dir() && !kind.is_file() {
            return Err(refuse(path, "it is not a regular file or directory"));
        }
        out.push(Entry {
            path,
            is_dir: kind.is_dir(),
            size: kind.is_file().then_some(meta.len()),
        });
    }
    Ok(out)
}

/// Opens a file for reading, refusing a symbolic link (and not blocking on a FIFO).
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Copies a local artifact (never through a link) and fsyncs the copy; returns its size.
fn copy_synced(src: &Path, dest: &Path) -> std::io::Result<u64> {
    let mut from = open_no_follow(src)?;
    let mut to = std::fs::File::create(dest)?;
    let n = std::io::copy(&mut from, &mut to)?;
    to.sync_all()?;
    Ok(n)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Fsyncs a directory and every directory under it (deepest first), so that the
/// entries of a finished download are durable before it is renamed into place.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Renames a finished download into place, fsyncing the parent so the rename survives.
fn publish_dir(tmp: &Path, target: &Path) -> Result<(), MlflowError> {
    let cache = |e: std::io::Error| MlflowError::Cache(format!("{}: {e}", target.display()));
    if std::fs::symlink_metadata(target).is_ok() {
        // A damaged copy, or a version directory made by hand: replace it. (A link is
        // removed, never followed.)
        match std::fs::remove_dir_all(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => std::fs::remove_file(target),
            r => r,
        }
        .map_err(cache)?;
    }
    std::fs::rename(tmp, target).map_err(cache)?;
    if let Some(parent) = target.parent() {
        crate::fsutil::sync_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_flavour_is_found_and_others_refused() {
        let onnx = "artifact_path: x\nflavors:\n  onnx:\n    code: null\n    data: net.onnx\n    providers:\n    - CPUExecutionProvider\n  python_function:\n    data: net.onnx\nmlflow_version: 3.17.2\n";
        assert_eq!(onnx_data_file(onnx).unwrap(), "net.onnx");
        let default = "flavors:\n  onnx:\n    onnx_version: 1.23.2\n";
        assert_eq!(onnx_data_file(default).unwrap(), "model.onnx");
        let sk = "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n  sklearn:\n    pickled_model: model.pkl\n";
        let e = onnx_data_file(sk).unwrap_err();
        assert!(
            e.contains("not an ONNX model") && e.contains("sklearn"),
            "{e}"
        );
        assert!(onnx_data_file("run_id: x\n")
            .unwrap_err()
            .contains("no flavors"));
        assert!(onnx_data_file("flavors:\n  onnx:\n    data: ../../etc/passwd\n").is_err());
    }

    #[test]
    fn artifact_uris_map_to_locations() {
        assert_eq!(
            location("mlflow-artifacts:/0/models/m-1/artifacts").unwrap(),
            Location::Proxy("0/models/m-1/artifacts".into())
        );
        assert_eq!(
            location("mlflow-artifacts://mlflow:5000/0/models/m-1/artifacts").unwrap(),
            Location::Proxy("0/models/m-1/artifacts".into())
        );
        assert_eq!(
            location("file:///srv/mlruns/0/x/artifacts").unwrap(),
            Location::Local("/srv/mlruns/0/x/artifacts".into())
        );
        assert!(location("s3://bucket/x")
            .unwrap_err()
            .contains("--serve-artifacts"));
    }

    #[test]
    fn aliases_and_names() {
        let v: Value = serde_json::json!([{"alias": "champion", "version": "3"}, {"alias": "challenger", "version": 4}, {"alias": "bad", "version": "x"}]);
        let a = parse_aliases(&v);
        assert_eq!(a.get("champion"), Some(&3));
        assert_eq!(a.get("challenger"), Some(&4));
        assert_eq!(a.len(), 2);
        assert!(valid_model_name("iris"));
        for bad in ["", "..", "a/b", ".hidden"] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }

    #[test]
    fn listings_that_lead_out_of_the_cache_are_refused_by_name() {
        let listing = |paths: &[&str]| serde_json::json!({"files": paths.iter().map(|p| serde_json::json!({"path": p, "is_dir": false, "file_size": 3})).collect::<Vec<_>>()});
        let ok = proxy_entries("sub", &listing(&["model.onnx", "sub/w.bin"])).unwrap();
        assert_eq!(
            ok,
            vec![
                Entry {
                    path: "sub/model.onnx".into(),
                    is_dir: false,
                    size: Some(3)
                },
                Entry {
                    path: "sub/w.bin".into(),
                    is_dir: false,
                    size: Some(3)
                },
            ]
        );
        for bad in [
            "..",
            "../../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "./x",
            "",
        ] {
            let (path, why) = proxy_entries("", &listing(&["MLmodel", bad])).unwrap_err();
            assert_eq!(path, bad, "{why}");
        }
        // Sizes as numbers or (proto int64) strings.
        let v = serde_json::json!({"files": [{"path": "a", "file_size": "12"}, {"path": "d", "is_dir": true}]});
        let e = proxy_entries("", &v).unwrap();
        assert_eq!(e[0].size, Some(12));
        assert!(e[1].is_dir && e[1].size.is_none());
    }

    #[test]
    fn local_stores_refuse_symbolic_links_and_keep_sizes() {
        let dir = std::env::temp_dir().join(format!("vigil-mlflow-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("MLmodel"), "flavors:\n").unwrap();
        std::fs::write(dir.join("sub/w.bin"), [0u8; 7]).unwrap();
        let mut e = local_entries(&dir, "").unwrap();
        e.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            e[0],
            Entry {
                path: "MLmodel".into(),
                is_dir: false,
                size: Some(9)
            }
        );
        assert_eq!(
            e[1],
            Entry {
                path: "sub".into(),
                is_dir: true,
                size: None
            }
        );
        assert_eq!(local_entries(&dir, "sub").unwrap()[0].size, Some(7));

        std::os::unix::fs::symlink("/etc/hostname", dir.join("sub/model.onnx")).unwrap();
        let err = local_entries(&dir, "sub").unwrap_err().to_string();
        assert!(
            err.contains("'sub/model.onnx'") && err.contains("symbolic link"),
            "{err}"
        );
        std::fs::remove_file(dir.join("sub/model.onnx")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("linked")).unwrap();
        let err = local_entries(&dir, "").unwrap_err().to_string();
        assert!(
            err.contains("'linked'") && err.contains("symbolic link"),
            "{err}"
        );
        // Reading through a link is refused even if one appears after the listing.
        assert!(open_no_follow(&dir.join("linked")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cached_files_are_checked_against_the_listed_sizes() {
        let dir = std::env::temp_dir().join(format!("vigil-mlflow-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("1/sub")).unwrap();
        std::fs::write(dir.join("1/model.onnx"), [1u8; 10]).unwrap();
        std::fs::write(dir.join("1/sub/w.bin"), [1u8; 4]).unwrap();
        let files = BTreeMap::from([
            ("model.onnx".to_string(), Some(10)),
            ("sub/w.bin".to_string(), Some(4)),
        ]);
        let v = dir.join("1");
        assert_eq!(super::super::check_files(&v, &files), Ok(()));
        // Cut short (a crash before the data reached the disk).
        std::fs::write(dir.join("1/model.onnx"), [1u8; 3]).unwrap();
        let e = super::super::check_files(&v, &files).unwrap_err();
        assert!(
            e.contains("model.onnx is 3 bytes, the registry lists 10"),
            "{e}"
        );
        // A manifest makes the same check possible without the registry.
        let m = Manifest {
            source: "x".into(),
            files: files.clone(),
        };
        std::fs::write(v.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(super::super::check_cached(&v)
            .unwrap_err()
            .contains("3 bytes"));
        std::fs::write(dir.join("1/model.onnx"), [1u8; 10]).unwrap();
        assert_eq!(super::super::check_cached(&v), Ok(()));
        // A link inside the cache is not followed.
        std::fs::remove_dir_all(v.join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), v.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        std::fs::write(dir.join("elsewhere/w.bin"), [1u8; 4]).unwrap();
        let e = super::super::check_cached(&v).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

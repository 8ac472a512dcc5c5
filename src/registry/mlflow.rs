//! The MLflow Model Registry as a model source.
//!
//! Every poll interval, for each model (named by `--mlflow-models`, or every registered
//! model carrying one of the serving aliases): read its aliases
//! (`registered-models/get`), download the versions the stable and canary aliases name
//! that are not cached yet (`model-versions/get-download-uri`, then the
//! `mlflow-artifacts` proxy, or a local path for `file:` stores), and hand the new roles
//! to serving. Only ONNX models are served: a version whose `MLmodel` has no `onnx`
//! flavour is refused with a message saying so. When MLflow is unreachable or answers
//! errors, vigil keeps serving what it has, counts `vigil_registry_errors_total`, logs
//! once per change of state and retries with a growing delay.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::AssignmentStore;
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
}

impl MlflowError {
    fn is_not_found(&self) -> bool {
        matches!(self, MlflowError::Status { status: 404, .. })
            || matches!(self, MlflowError::Status { code, .. } if code == "RESOURCE_DOES_NOT_EXIST")
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

/// The MLflow source, running as one task.
pub struct Mlflow {
    opts: MlflowOptions,
    client: reqwest::Client,
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    store: AssignmentStore,
    assignments: tokio::sync::Mutex<BTreeMap<String, Assignment>>,
    /// The last error logged per model ("" for the registry as a whole): a state change
    /// is logged, a repeat is not.
    last_error: Mutex<HashMap<String, String>>,
}

const SOURCE: &str = "mlflow";

impl Mlflow {
    pub fn new(opts: MlflowOptions, server: Arc<Server>, reloader: Arc<Reloader>) -> Mlflow {
        let store = AssignmentStore::new(&opts.state_dir);
        // Exported from the start, at 0, so that rate() and alerts see the series.
        server.metrics.registry_errors.with_label_values(&[SOURCE]);
        let assignments = tokio::sync::Mutex::new(store.load());
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
            last_error: Mutex::new(HashMap::new()),
        }
    }

    /// Polls until `stop` turns true: every interval while MLflow answers, with a delay
    /// doubling up to 60 s (at least the interval) while it does not.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let metrics = &self.server.metrics;
        let mut delay = self.opts.interval;
        loop {
            let ok = self.sync().await;
            metrics
                .registry_up
                .with_label_values(&[SOURCE])
                .set(i64::from(ok));
            delay = if ok {
                self.opts.interval
            } else {
                (delay * 2)
                    .min(Duration::from_secs(60))
                    .max(self.opts.interval)
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass over every model; false if any part failed.
    pub async fn sync(&self) -> bool {
        let names = if self.opts.models.is_empty() {
            match self.aliased_models().await {
                Ok(n) => n,
                Err(e) => {
                    self.failed("", &e);
                    return false;
                }
            }
        } else {
            self.opts.models.clone()
        };
        self.recovered("");
        let mut ok = true;
        for name in names {
            match self.sync_model(&name).await {
                Ok(()) => self.recovered(&name),
                Err(e) => {
                    ok = false;
                    self.failed(&name, &e);
                }
            }
        }
        ok
    }

    fn failed(&self, model: &str, e: &MlflowError) {
        self.server
            .metrics
            .registry_errors
            .with_label_values(&[SOURCE])
            .inc();
        let msg = e.to_string();
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.get(model) != Some(&msg) {
            if model.is_empty() {
                tracing::error!(error = %msg, "model registry: cannot list models; serving what is cached, retrying");
            } else {
                tracing::error!(model, error = %msg, "model registry: cannot follow the model; serving what is cached, retrying");
            }
            last.insert(model.to_string(), msg);
        }
    }

    fn recovered(&self, model: &str) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.remove(model).is_some() {
            if model.is_empty() {
                tracing::info!("model registry: reachable again");
            } else {
                tracing::info!(model, "model registry: following the model again");
            }
        }
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

    async fn sync_model(&self, name: &str) -> Result<(), MlflowError> {
        if !valid_model_name(name) {
            return Err(MlflowError::Model(format!(
                "'{name}' cannot be a directory name in the model repository"
            )));
        }
        let m = self
            .get_json("mlflow/registered-models/get", &[("name", name)])
            .await?;
        let aliases = parse_aliases(&m["registered_model"]["aliases"]);
        let champion = aliases.get(&self.opts.stable_alias).copied();
        let challenger = aliases.get(&self.opts.canary_alias).copied();
        let mut all = self.assignments.lock().await;
        let previous = all.get(name).copied().unwrap_or_default();
        let mut problem = None;
        // The stable version: the alias's, once cached; until then (or if the alias is
        // gone) the one served before.
        let stable = match champion {
            Some(v) => match self.ensure_cached(name, v).await {
                Ok(()) => Some(v),
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
                Ok(()) => Some(v),
                Err(e) => {
                    problem.get_or_insert(e);
                    None
                }
            },
            None => None,
        };
        let next = Assignment { stable, canary };
        if stable.is_some() && self.server.assignment(name) != Some(next) {
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
                &mut all,
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
    /// logged one, its `reference.json`. Published by renaming a finished temporary
    /// directory, so the reloader never sees a partial copy.
    async fn ensure_cached(&self, model: &str, version: u64) -> Result<(), MlflowError> {
        let dir = self.opts.repository.join(model);
        let target = dir.join(version.to_string());
        if target.join("model.onnx").is_file() {
            return Ok(());
        }
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
        let files = self.list(&loc, 4).await?;
        if !files.iter().any(|f| f == "MLmodel") {
            return Err(refuse(format!(
                "no MLmodel file at {uri}: not a model logged with mlflow.<flavor>.log_model"
            )));
        }
        let mlmodel = self.fetch(&loc, "MLmodel").await?;
        let data = onnx_data_file(&String::from_utf8_lossy(&mlmodel)).map_err(refuse)?;
        if !files.contains(&data) {
            return Err(refuse(format!(
                "its MLmodel names '{data}', which is not in {uri}"
            )));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| MlflowError::Cache(format!("{}: {e}", dir.display())))?;
        let tmp = dir.join(format!(".download-{version}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = async {
            for f in &files {
                let dest = if *f == data {
                    tmp.join("model.onnx")
                } else if f == "model.onnx" {
                    // Another file of that name would be shadowed by the ONNX data file.
                    continue;
                } else {
                    tmp.join(f)
                };
                self.download(&loc, f, &dest).await?;
            }
            if !files.iter().any(|f| f == "reference.json") && !run_id.is_empty() {
                self.fetch_run_reference(&run_id, &tmp).await?;
            }
            publish_dir(&tmp, &target)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            tracing::info!(model, version, from = %uri, "model registry: version downloaded");
        }
        result
    }

    /// A run's `reference.json` at the root of its artifacts, if it logged one.
    async fn fetch_run_reference(&self, run_id: &str, into: &Path) -> Result<(), MlflowError> {
        let run = self
            .get_json("mlflow/runs/get", &[("run_id", run_id)])
            .await?;
        let Some(uri) = run["run"]["info"]["artifact_uri"].as_str() else {
            return Ok(());
        };
        let Ok(loc) = location(uri) else {
            return Ok(());
        };
        match self.list(&loc, 1).await {
            Ok(files) if files.iter().any(|f| f == "reference.json") => {
                self.download(&loc, "reference.json", &into.join("reference.json"))
                    .await
            }
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Files (relative paths) under a location, at most `levels` directories deep.
    async fn list(&self, loc: &Location, levels: u32) -> Result<Vec<String>, MlflowError> {
        let mut out = Vec::new();
        let mut todo = vec![(String::new(), 0u32)];
        while let Some((rel, level)) = todo.pop() {
            let entries: Vec<(String, bool)> = match loc {
                Location::Proxy(base) => {
                    let path = join(base, &rel);
                    let v = self
                        .get_json("mlflow-artifacts/artifacts", &[("path", &path)])
                        .await?;
                    v["files"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| {
                            let p = f["path"].as_str()?;
                            // The proxy answers paths relative to the listed directory.
                            let name = p.rsplit('/').next().unwrap_or(p);
                            Some((join(&rel, name), f["is_dir"].as_bool().unwrap_or(false)))
                        })
                        .collect()
                }
                Location::Local(base) => {
                    let d = base.join(&rel);
                    let rd = std::fs::read_dir(&d).map_err(|e| {
                        MlflowError::Model(format!("reading artifacts at {}: {e}", d.display()))
                    })?;
                    rd.filter_map(Result::ok)
                        .map(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            (join(&rel, &name), e.file_type().is_ok_and(|t| t.is_dir()))
                        })
                        .collect()
                }
            };
            for (path, is_dir) in entries {
                if path.split('/').any(|c| c == ".." || c.is_empty()) {
                    continue;
                }
                if is_dir {
                    if level + 1 < levels {
                        todo.push((path, level + 1));
                    }
                } else {
                    out.push(path);
                }
            }
        }
        out.sort();
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
            Location::Local(base) => std::fs::read(base.join(file)).map_err(|e| {
                MlflowError::Model(format!("reading {}: {e}", base.join(file).display()))
            }),
        }
    }

    /// Streams one artifact to `dest` and fsyncs it.
    async fn download(&self, loc: &Location, file: &str, dest: &Path) -> Result<(), MlflowError> {
        use std::io::Write;
        let cache = |e: std::io::Error| MlflowError::Cache(format!("{}: {e}", dest.display()));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(cache)?;
        }
        match loc {
            Location::Local(base) => {
                std::fs::copy(base.join(file), dest).map_err(cache)?;
            }
            Location::Proxy(base) => {
                let url = self.url(&format!("mlflow-artifacts/artifacts/{}", join(base, file)));
                let mut resp = self.send(&url, file).await?;
                let mut out = std::fs::File::create(dest).map_err(cache)?;
                while let Some(chunk) =
                    resp.chunk().await.map_err(|e| MlflowError::Unreachable {
                        uri: self.opts.uri.clone(),
                        reason: format!("downloading {file}: {e}"),
                    })?
                {
                    out.write_all(&chunk).map_err(cache)?;
                }
                out.sync_all().map_err(cache)?;
            }
        }
        Ok(())
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

/// Renames a finished download into place, fsyncing the parent so the rename survives.
fn publish_dir(tmp: &Path, target: &Path) -> Result<(), MlflowError> {
    let cache = |e: std::io::Error| MlflowError::Cache(format!("{}: {e}", target.display()));
    if target.exists() {
        // A version directory without model.onnx (a failed copy by hand): replace it.
        std::fs::remove_dir_all(target).map_err(cache)?;
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
}

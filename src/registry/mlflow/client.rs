//! Talking to the MLflow tracking server: its REST calls (`/api/2.0/mlflow/...`, with
//! the credentials MLflow's clients use), the registered models carrying a serving
//! alias, and artifact listings and reads, through the `mlflow-artifacts` proxy or a
//! local `file:` store. A listing entry that could lead out of a version's directory is
//! refused here, naming it. Knows nothing of scheduling, roles or serving; never
//! imports http.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Mlflow, MlflowError};
use crate::registry::cache::{open_no_follow, unsafe_path};

/// Where a version's artifacts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    /// Through the tracking server's artifact proxy: a path under
    /// `/api/2.0/mlflow-artifacts/artifacts/`.
    Proxy(String),
    /// A directory on this machine (`file:` artifact stores on shared storage).
    Local(PathBuf),
}

/// Maps an artifact URI from MLflow to a location vigil can read.
pub(super) fn location(uri: &str) -> Result<Location, String> {
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

/// One entry of an artifact listing, its path relative to the listed root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) path: String,
    pub(super) is_dir: bool,
    pub(super) size: Option<u64>,
}

impl Mlflow {
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/api/2.0/{}", self.opts.uri.trim_end_matches('/'), path)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url);
        if let Some(t) = &self.opts.token {
            r.bearer_auth(t)
        } else if let Some((u, p)) = &self.opts.basic {
            r.basic_auth(u, Some(p))
        } else {
            r
        }
    }

    pub(super) async fn send(
        &self,
        url: &str,
        what: &str,
    ) -> Result<reqwest::Response, MlflowError> {
        self.execute(self.request(reqwest::Method::GET, url), what)
            .await
    }

    /// A write to the registry (`--mlflow-write-aliases`): `method` on `path` with
    /// `query` and a JSON `body`.
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(), MlflowError> {
        let mut url =
            reqwest::Url::parse(&self.url(path)).map_err(|e| MlflowError::Unreachable {
                uri: self.opts.uri.clone(),
                reason: format!("not a URL: {e}"),
            })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut r = self.request(method, url.as_str());
        if let Some(b) = body {
            r = r.json(b);
        }
        self.execute(r, path).await.map(drop)
    }

    async fn execute(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, MlflowError> {
        let resp = request.send().await.map_err(|e| MlflowError::Unreachable {
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

    pub(super) async fn get_json(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, MlflowError> {
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
    pub(super) async fn aliased_models(&self) -> Result<Vec<String>, MlflowError> {
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

    /// Files under a location, at most `levels` directories deep, with their sizes.
    /// Refuses (naming it) any entry that could lead out of the version's directory: a
    /// `..` or absolute path, a symbolic link, anything but a file or directory.
    pub(super) async fn list(
        &self,
        loc: &Location,
        levels: u32,
    ) -> Result<Vec<Entry>, MlflowError> {
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

    pub(super) async fn fetch(&self, loc: &Location, file: &str) -> Result<Vec<u8>, MlflowError> {
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

pub(super) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{}/{}", a.trim_end_matches('/'), b.trim_start_matches('/')),
    }
}

/// MLflow's `[{"alias": "champion", "version": "3"}]` as a map.
pub(super) fn parse_aliases(v: &Value) -> HashMap<String, u64> {
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

/// The entries of one `mlflow-artifacts/artifacts?path=` answer for the directory `rel`
/// (MLflow answers names relative to it; a path with the directory in front is taken
/// as well). `Err` carries the first unsafe path and why.
pub(super) fn proxy_entries(rel: &str, v: &Value) -> Result<Vec<Entry>, (String, &'static str)> {
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
pub(super) fn local_entries(base: &Path, rel: &str) -> Result<Vec<Entry>, MlflowError> {
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

//! Bringing one model version into the local cache: what its directory must hold (the
//! logged model's files, its ONNX file as `model.onnx` per the `MLmodel` onnx flavour,
//! the run's `reference.json`), a cached copy checked against that listing, or a fresh
//! download to a hidden directory, every file fsynced and size-checked, published by a
//! rename. Knows nothing of scheduling or roles; never imports serving or http.

use std::path::Path;

use super::client::{join, location, Location};
use super::{lock, Mlflow, MlflowError};
use crate::registry::cache::{self, copy_synced, publish_dir, Manifest, MANIFEST};

/// Whether a version was already in the cache or has just been downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fetched {
    Cached,
    Downloaded,
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

/// The ONNX file of a logged model, from its `MLmodel` file (YAML as MLflow writes it:
/// block style, two-space indent). Refuses models without an `onnx` flavour.
pub(super) fn onnx_data_file(mlmodel: &str) -> Result<String, String> {
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

impl Mlflow {
    /// Makes `<repository>/<model>/<version>/` hold the version's ONNX file (as
    /// `model.onnx`, with any other files of the logged model beside it) and, if the run
    /// logged one, its `reference.json`, all with the sizes the registry lists. A
    /// version this process has not checked yet is compared with the registry's listing
    /// first; a mismatch (a file cut short by a crash, a missing file) downloads it
    /// again. Downloads go to a temporary directory, every file and directory fsynced,
    /// renamed into place: the reloader never sees a partial copy, and a crash never
    /// leaves one behind the final name.
    pub(super) async fn ensure_cached(
        &self,
        model: &str,
        version: u64,
    ) -> Result<Fetched, MlflowError> {
        let dir = self.opts.repository.join(model);
        let target = dir.join(version.to_string());
        let key = (model.to_string(), version);
        if lock(&self.verified).contains(&key) {
            match cache::check_cached(&target) {
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
            match cache::check_files(&target, &manifest.files) {
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
            crate::fsutil::write_synced(&tmp.join(MANIFEST), &bytes)
                .map_err(|e| MlflowError::Cache(format!("{}: {e}", tmp.display())))?;
            crate::fsutil::sync_tree(&tmp)
                .map_err(|e| MlflowError::Cache(format!("{}: {e}", tmp.display())))?;
            publish_dir(&tmp, &target)
                .map_err(|e| MlflowError::Cache(format!("{}: {e}", target.display())))
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

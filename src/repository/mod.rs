//! Where models come from. For now a directory:
//! `<repo>/<model>/<version>/model.onnx` with an optional `<repo>/<model>/config.toml`.
//!
//! Scanning only describes what is on disk; loading is the serving layer's job. A model
//! whose config is broken or that has no version is still listed, with the reason, so
//! the operator sees it rather than a silent absence.

use std::path::{Path, PathBuf};

use crate::config::ModelConfig;

/// One model directory as found on disk.
#[derive(Debug)]
pub struct ModelSource {
    pub name: String,
    pub dir: PathBuf,
    /// The parsed `config.toml`, or why it could not be used.
    pub config: Result<ModelConfig, String>,
    /// Versions with a `model.onnx`, ascending.
    pub versions: Vec<VersionSource>,
}

#[derive(Debug, Clone)]
pub struct VersionSource {
    pub version: u64,
    pub dir: PathBuf,
    pub model_path: PathBuf,
}

impl ModelSource {
    /// The version served (the highest).
    pub fn latest(&self) -> Option<&VersionSource> {
        self.versions.last()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read model repository {}: {source}", path.display())]
pub struct RepositoryError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A version directory name: a positive integer without sign or leading zeros.
fn parse_version(name: &str) -> Option<u64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn subdirs(path: &Path) -> Result<Vec<(String, PathBuf)>, RepositoryError> {
    let err = |source| RepositoryError {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(err)? {
        let entry = entry.map_err(err)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            out.push((name, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Lists every model in `root`, sorted by name.
pub fn scan(root: &Path) -> Result<Vec<ModelSource>, RepositoryError> {
    let mut models = Vec::new();
    for (name, dir) in subdirs(root)? {
        let config = ModelConfig::load(&dir).map_err(|e| e.to_string());
        let mut versions: Vec<VersionSource> = subdirs(&dir)?
            .into_iter()
            .filter_map(|(v, vdir)| {
                let version = parse_version(&v)?;
                let model_path = vdir.join("model.onnx");
                model_path.is_file().then_some(VersionSource {
                    version,
                    dir: vdir,
                    model_path,
                })
            })
            .collect();
        versions.sort_by_key(|v| v.version);
        models.push(ModelSource {
            name,
            dir,
            config,
            versions,
        });
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("12"), Some(12));
        for bad in [
            "0",
            "01",
            "-1",
            "+1",
            "v1",
            "",
            "1.0",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn scans_the_sample_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let models = scan(&root).unwrap();
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["breast_cancer", "cnn", "iris", "mlp"]);
        let iris = models.iter().find(|m| m.name == "iris").unwrap();
        assert_eq!(
            iris.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(iris.latest().unwrap().version, 2);
    }
}

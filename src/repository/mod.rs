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
    /// Names, sizes and modification times of the files in the version directory: a
    /// version is loaded once this stays the same across two scans.
    pub fingerprint: Fingerprint,
}

/// What a version directory holds, cheaply compared between scans.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<std::time::SystemTime>)>);

impl Fingerprint {
    /// Files of `dir` and of its subdirectories (external weights may live there).
    pub fn of(dir: &Path) -> Fingerprint {
        fn walk(
            dir: &Path,
            depth: usize,
            out: &mut Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
        ) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() && depth < 3 {
                    walk(&e.path(), depth + 1, out);
                } else if meta.is_file() {
                    out.push((e.path(), meta.len(), meta.modified().ok()));
                }
            }
        }
        let mut files = Vec::new();
        walk(dir, 0, &mut files);
        files.sort();
        Fingerprint(files)
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

/// Lists every model in `root`, sorted by name. Directories starting with `.` are
/// ignored, so a version can be written under a hidden name and renamed into place.
pub fn scan(root: &Path) -> Result<Vec<ModelSource>, RepositoryError> {
    subdirs(root)?
        .into_iter()
        .map(|(name, dir)| scan_model_dir(name, dir))
        .collect()
}

/// Whether `name` can name a model: a directory name the scan does not skip (not empty,
/// no leading `.`, no `/` or `\\`). A name from outside (a URL, an alert's label) that is
/// not one names no model and must not reach a path.
pub fn is_model_name(name: &str) -> bool {
    // NAME_MAX: no file system holds a longer directory name, nor one with a NUL.
    !(name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0']))
}

/// Describes one model of the repository; `Ok(None)` if there is no such directory.
pub fn scan_model(root: &Path, name: &str) -> Result<Option<ModelSource>, RepositoryError> {
    if !is_model_name(name) {
        return Ok(None);
    }
    let dir = root.join(name);
    if !dir.is_dir() {
        return Ok(None);
    }
    scan_model_dir(name.to_string(), dir).map(Some)
}

fn scan_model_dir(name: String, dir: PathBuf) -> Result<ModelSource, RepositoryError> {
    // (Result kept for symmetry with `scan`; reading a model directory never fails it.)
    let config = ModelConfig::load(&dir).map_err(|e| e.to_string());
    // A model directory removed mid-scan simply has no versions.
    let mut versions: Vec<VersionSource> = subdirs(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(v, vdir)| {
            let version = parse_version(&v)?;
            let model_path = vdir.join("model.onnx");
            model_path.is_file().then(|| VersionSource {
                version,
                fingerprint: Fingerprint::of(&vdir),
                dir: vdir,
                model_path,
            })
        })
        .collect();
    versions.sort_by_key(|v| v.version);
    Ok(ModelSource {
        name,
        dir,
        config,
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_directory_names() {
        for good in ["iris", "m[1]*?", "a b", "\u{e9}t\u{e9}", &"x".repeat(255)] {
            assert!(is_model_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "/",
            "a\\b",
            "iris\0x",
            &"x".repeat(256),
        ] {
            assert!(!is_model_name(bad), "{bad:?}");
        }
    }

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
    }
}

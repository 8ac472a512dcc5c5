//! The local cache of registry versions, `<repository>/<model>/<version>/`: what may
//! enter it and how it is trusted. [`MANIFEST`] records the sizes the registry listed
//! beside a version's files, so a restart tells a damaged copy (a file cut short by a
//! crash) from a good one without asking the registry; paths from a listing must stay
//! inside the version's directory (no `..`, absolute path or symbolic link); a finished
//! download is published by one rename. Generic over registries: it never imports a
//! registry source (`mlflow`), serving or http.

use std::collections::BTreeMap;
use std::path::Path;

/// The file, in a cached version's directory, listing the files the registry listed for
/// it and their sizes (`{"source": "...", "files": {"model.onnx": 518, ...}}`).
pub const MANIFEST: &str = ".vigil-artifacts.json";

/// What a cached version was downloaded from, and the size of each of its files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub source: String,
    /// Paths relative to the version's directory; `None` where the registry gave no size.
    pub files: BTreeMap<String, Option<u64>>,
}

/// Checks that every file of `files` is in `dir` as a regular file (no symbolic link on
/// the way) with the size listed. `Err` names the first file that is not.
pub fn check_files(dir: &Path, files: &BTreeMap<String, Option<u64>>) -> Result<(), String> {
    for (rel, size) in files {
        let mut path = dir.to_path_buf();
        for part in rel.split('/') {
            path.push(part);
            let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{rel}: {e}"))?;
            if meta.file_type().is_symlink() {
                return Err(format!("{rel}: {} is a symbolic link", path.display()));
            }
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{rel}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{rel} is not a regular file"));
        }
        if let Some(want) = size.filter(|&s| s != meta.len()) {
            return Err(format!(
                "{rel} is {} bytes, the registry lists {want}",
                meta.len()
            ));
        }
    }
    Ok(())
}

/// Whether a cached version can be used without asking the registry: its `model.onnx` is
/// a regular file and, if it has a [`MANIFEST`], every file listed there is intact.
pub fn check_cached(dir: &Path) -> Result<(), String> {
    let mut files = BTreeMap::from([("model.onnx".to_string(), None)]);
    match std::fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => {
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{MANIFEST} is unreadable: {e}"))?;
            files.extend(m.files);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{MANIFEST}: {e}")),
    }
    check_files(dir, &files)
}

/// Why a path from an artifact listing may not be used, or `None` if it may: it must be
/// relative, without `..`, `.` or empty parts, so that joined to the cache directory it
/// stays inside it.
pub(super) fn unsafe_path(p: &str) -> Option<&'static str> {
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

/// Opens a file for reading, refusing a symbolic link (and not blocking on a FIFO).
pub(super) fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
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
pub(super) fn copy_synced(src: &Path, dest: &Path) -> std::io::Result<u64> {
    let mut from = open_no_follow(src)?;
    let mut to = std::fs::File::create(dest)?;
    let n = std::io::copy(&mut from, &mut to)?;
    to.sync_all()?;
    Ok(n)
}

/// Renames a finished download into place, fsyncing the parent so the rename survives.
pub(super) fn publish_dir(tmp: &Path, target: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(target).is_ok() {
        // A damaged copy, or a version directory made by hand: replace it. (A link is
        // removed, never followed.)
        match std::fs::remove_dir_all(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => std::fs::remove_file(target),
            r => r,
        }?;
    }
    std::fs::rename(tmp, target)?;
    if let Some(parent) = target.parent() {
        crate::fsutil::sync_dir(parent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(check_files(&v, &files), Ok(()));
        // Cut short (a crash before the data reached the disk).
        std::fs::write(dir.join("1/model.onnx"), [1u8; 3]).unwrap();
        let e = check_files(&v, &files).unwrap_err();
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
        assert!(check_cached(&v).unwrap_err().contains("3 bytes"));
        std::fs::write(dir.join("1/model.onnx"), [1u8; 10]).unwrap();
        assert_eq!(check_cached(&v), Ok(()));
        // A link inside the cache is not followed.
        std::fs::remove_dir_all(v.join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), v.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        std::fs::write(dir.join("elsewhere/w.bin"), [1u8; 4]).unwrap();
        let e = check_cached(&v).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

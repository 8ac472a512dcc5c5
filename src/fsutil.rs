//! Durable file writes shared by everything vigil keeps in `--state-dir` and the model
//! cache: a file is replaced whole or not at all, and survives a crash once written.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsynced, renamed over
/// `path`, then the directory fsynced so the rename itself is durable. Creates the
/// directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = dir {
        sync_dir(dir);
    }
    Ok(())
}

/// Makes a directory's entries (a rename, a new file) durable; best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes a file and fsyncs it (not atomic: for files in a directory published later).
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Fsyncs a directory and every directory under it (deepest first), so that the
/// entries of a finished download are durable before it is renamed into place.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Reads a JSON state file: missing → the default; unreadable (damaged, not JSON, another
/// shape) → logged, moved aside to `<name>.unreadable` (so the next save does not destroy
/// what an operator may want to read), and the default. `what` names it in the log.
pub fn read_state<T: serde::de::DeserializeOwned + Default>(path: &Path, what: &str) -> T {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return T::default(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the {what}; starting without it");
            return T::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".unreadable");
            let moved = std::fs::rename(path, &aside);
            tracing::error!(
                path = %path.display(),
                error = %e,
                moved_to = %Path::new(&aside).display(),
                moved = moved.is_ok(),
                "ignoring the unreadable {what}; the file is kept aside"
            );
            T::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("vigil-fsutil-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        super::write_atomic(&path, b"one").unwrap();
        super::write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!dir.join("sub/state.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod read_state_tests {
    use std::collections::BTreeMap;

    #[test]
    fn damaged_state_is_moved_aside_and_read_as_empty() {
        let dir = std::env::temp_dir().join(format!("vigil-read-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let none: BTreeMap<String, u32> = super::read_state(&path, "test state");
        assert!(none.is_empty());
        std::fs::write(&path, br#"{"a": 1}"#).unwrap();
        let read: BTreeMap<String, u32> = super::read_state(&path, "test state");
        assert_eq!(read.get("a"), Some(&1));
        let damaged = br#"{"a": 1, "b"#;
        std::fs::write(&path, damaged).unwrap();
        let read: BTreeMap<String, u32> = super::read_state(&path, "test state");
        assert!(read.is_empty());
        assert!(!path.exists());
        assert_eq!(
            std::fs::read(dir.join("state.json.unreadable")).unwrap(),
            damaged
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

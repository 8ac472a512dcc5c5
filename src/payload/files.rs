//! The payload log's files: `DIR/<model>/<unix ms>-<seq>.jsonl`, one active file per
//! model, appended by the writer thread. A file is rotated when the next batch would take
//! it past `max_file_bytes` or when it has been open `max_file_age`; a rotated file is
//! cut back to its last complete line, gzipped to `.jsonl.gz` (written beside, fsynced,
//! renamed) and removed. After each rotation the model's directory is held under
//! `retention_bytes`: the oldest `.jsonl.gz` files are deleted first, never the active
//! one. A `.jsonl` file left by a crash (or a kill) is treated the same way at start-up,
//! so a torn last line never reaches a reader.
//!
//! A failed write (a full disk, a directory made read-only or replaced by a file) is cut
//! back to the file's last good length and its records are counted as dropped; the next
//! batch tries again (opening a new file if the old one is gone).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;

/// Where and how the payload log is written (`--payload-*`).
#[derive(Clone, Debug)]
pub struct FileOptions {
    pub dir: PathBuf,
    /// `--payload-replica`: `dir` is then `<--payload-dir>/<replica>`, one of the fleet's
    /// subdirectories of a shared directory.
    pub replica: Option<String>,
    pub max_file_bytes: u64,
    pub max_file_age: Duration,
    pub retention_bytes: u64,
    /// `--payload-retention-age`: finished files older than this are deleted; with
    /// `replica`, in every replica's subdirectory of the shared directory (a replaced
    /// pod's are capped by no one else), whose emptied directories are removed too.
    pub retention_age: Option<Duration>,
}

/// How often the age sweep lists the directories, at most (a quarter of the age when
/// that is shorter, but not more than once a second).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The active file of one model.
struct Active {
    path: PathBuf,
    file: File,
    /// Bytes of complete records in it.
    len: u64,
    opened: Instant,
}

/// Every model's active file.
pub struct Files {
    opts: FileOptions,
    active: HashMap<String, Active>,
    seq: u64,
    last_sweep: Option<Instant>,
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
#[error("payload log {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Files {
    pub fn new(opts: FileOptions) -> Files {
        Files {
            opts,
            active: HashMap::new(),
            seq: 0,
            last_sweep: None,
        }
    }

    /// The model's directory. Model names are repository directory names (no `/`).
    fn model_dir(&self, model: &str) -> PathBuf {
        self.opts.dir.join(model)
    }

    /// Appends `bytes` (whole lines) to the model's active file, rotating whenever the
    /// next line would take it past `max_file_bytes` (a line longer than that gets a file
    /// of its own) or it has been open `max_file_age`.
    pub fn append(&mut self, model: &str, mut bytes: &[u8]) -> Result<(), WriteError> {
        while !bytes.is_empty() {
            let aged = self
                .active
                .get(model)
                .is_some_and(|a| a.opened.elapsed() >= self.opts.max_file_age);
            if aged {
                self.rotate(model);
            }
            let room = match self.active.get(model) {
                Some(a) => self.opts.max_file_bytes.saturating_sub(a.len),
                None => self.opts.max_file_bytes,
            };
            // The whole lines that fit; at least one when the file is new.
            let fit = fitting_lines(bytes, room);
            let take = match (fit, self.active.get(model).is_some_and(|a| a.len > 0)) {
                (0, true) => {
                    self.rotate(model);
                    continue;
                }
                (0, false) => bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |i| i + 1),
                (n, _) => n,
            };
            self.write(model, &bytes[..take])?;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn write(&mut self, model: &str, bytes: &[u8]) -> Result<(), WriteError> {
        if !self.active.contains_key(model) {
            let a = self.open(model)?;
            self.active.insert(model.to_string(), a);
        }
        let a = self.active.get_mut(model).expect("inserted above");
        match a.file.write_all(bytes) {
            Ok(()) => {
                a.len += bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Cut a torn batch back, and start a new file next time unless this one
                // is empty: the failure may be this file's (its size over a file-size
                // limit, EFBIG), and a torn tail that cannot be cut is cut at rotation.
                let path = a.path.clone();
                if a.file.set_len(a.len).is_err() || a.len > 0 {
                    self.rotate(model);
                }
                Err(WriteError { path, source })
            }
        }
    }

    fn open(&mut self, model: &str) -> Result<Active, WriteError> {
        let dir = self.model_dir(model);
        std::fs::create_dir_all(&dir).map_err(|source| WriteError {
            path: dir.clone(),
            source,
        })?;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // Another replica's age sweep removes directories it finds empty, this one's too
        // while it is idle: one removed between `create_dir_all` and the file is made again.
        let mut remade = 0;
        loop {
            self.seq += 1;
            let path = dir.join(format!("{ms:015}-{:06}.jsonl", self.seq));
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Active {
                        path,
                        file,
                        len: 0,
                        opened: Instant::now(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && remade < 3 => {
                    remade += 1;
                    std::fs::create_dir_all(&dir).map_err(|source| WriteError {
                        path: dir.clone(),
                        source,
                    })?;
                }
                Err(source) => return Err(WriteError { path, source }),
            }
        }
    }

    /// Closes the model's active file, compresses it and applies the retention cap.
    pub fn rotate(&mut self, model: &str) {
        if let Some(a) = self.active.remove(model) {
            drop(a.file);
            finish(&a.path);
            self.enforce_retention(&self.model_dir(model));
        }
    }

    /// The finished (`.jsonl.gz`) files of a stream that may hold records of
    /// `[from, to]` (Unix seconds), oldest first, as paths relative to the payload
    /// directory: those opened (their name's time) by `to` and finished (their mtime, no
    /// earlier than their last record) at or after `from`.
    pub fn finished(&self, stream: &str, from: f64, to: f64) -> Vec<String> {
        finished_in(&self.model_dir(stream), stream, from, to)
    }

    /// Rotates every file that has been open `max_file_age` (called when idle).
    pub fn rotate_aged(&mut self) {
        let aged: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.opened.elapsed() >= self.opts.max_file_age)
            .map(|(m, _)| m.clone())
            .collect();
        for m in aged {
            self.rotate(&m);
        }
    }

    /// Finishes what a previous run left: every `.jsonl` is cut to its last whole line
    /// and compressed, every half-written `.gz.tmp` removed.
    pub fn recover(&self) {
        let Ok(models) = std::fs::read_dir(&self.opts.dir) else {
            return;
        };
        for m in models.flatten() {
            let dir = m.path();
            if !dir.is_dir() {
                continue;
            }
            recover_dir(&dir);
            self.enforce_retention(&dir);
            // The model's joined labels.
            let labels = dir.join("labels");
            if labels.is_dir() {
                recover_dir(&labels);
                self.enforce_retention(&labels);
            }
        }
    }

    /// Keeps the model's rotated files within `retention_bytes - max_file_bytes`, so
    /// that with the active file (never larger than `max_file_bytes`, but for a single
    /// longer line) the directory stays within `retention_bytes`.
    ///
    /// First it compresses again the finished `.jsonl` files whose compression failed
    /// before (a full disk): those count against the cap too, so a failure can neither
    /// leave them plain for good nor keep the disk full.
    fn enforce_retention(&self, dir: &Path) {
        let cap = self
            .opts
            .retention_bytes
            .saturating_sub(self.opts.max_file_bytes);
        let active: Vec<&Path> = self.active.values().map(|a| a.path.as_path()).collect();
        finish_leftovers(dir, &active);
        enforce_retention(dir, cap, &active);
    }

    /// Deletes the files older than `--payload-retention-age` (at most every
    /// [`SWEEP_EVERY`]; called by the writer between batches and when idle). In this
    /// replica's directory only finished files go. In another replica's (the fleet
    /// layout), whose writer rotates any file within `--payload-max-file-age` (shorter
    /// than the age), a `.jsonl` or `.gz.tmp` that old is a dead pod's leftover and goes
    /// too, and directories left empty are removed. Hidden entries (an NFS `.snapshot`)
    /// and symbolic links are never followed.
    pub fn sweep_expired(&mut self) {
        let Some(age) = self.opts.retention_age else {
            return;
        };
        let every = SWEEP_EVERY.min(age / 4).max(Duration::from_secs(1));
        if self.last_sweep.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_sweep = Some(Instant::now());
        let Some(cutoff) = std::time::SystemTime::now().checked_sub(age) else {
            return;
        };
        let active: Vec<&Path> = self.active.values().map(|a| a.path.as_path()).collect();
        let own = self.opts.dir.as_path();
        let mut removed = expire_replica(own, cutoff, &active, false);
        if let (Some(_), Some(root)) = (&self.opts.replica, own.parent()) {
            for other in subdirs(root) {
                if other != own {
                    removed += expire_replica(&other, cutoff, &active, true);
                    let _ = std::fs::remove_dir(&other);
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                files = removed,
                age_s = age.as_secs_f64(),
                "deleted payload log files older than --payload-retention-age"
            );
        }
    }

    /// Closes and compresses every active file (shutdown).
    pub fn close_all(&mut self) {
        let models: Vec<String> = self.active.keys().cloned().collect();
        for m in models {
            self.rotate(&m);
        }
    }
}

/// Finishes the `.jsonl` files of one directory and removes half-written `.gz.tmp` ones.
fn recover_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".jsonl") {
            finish(&p);
        } else if name.ends_with(".gz.tmp") {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Compresses the `.jsonl` files of `dir` that are not being written (`active`).
fn finish_leftovers(dir: &Path, active: &[&Path]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".jsonl") && !active.contains(&p.as_path()) {
            finish(&p);
        }
    }
}

/// Compresses a finished `.jsonl` (cut to its last complete line) to `.jsonl.gz` and
/// removes it. An empty file is just removed. Failures are logged; the file stays.
fn finish(path: &Path) {
    if let Err(e) = compress(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot compress a payload log file");
    }
}

fn compress(path: &Path) -> std::io::Result<()> {
    let mut text = Vec::new();
    File::open(path)?.read_to_end(&mut text)?;
    let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole == 0 {
        return std::fs::remove_file(path);
    }
    let mut gz_path = path.as_os_str().to_owned();
    gz_path.push(".gz");
    let gz_path = PathBuf::from(gz_path);
    let mut tmp = gz_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut enc = GzEncoder::new(File::create(&tmp)?, Compression::fast());
        enc.write_all(&text[..whole])?;
        enc.finish()?.sync_all()?;
        std::fs::rename(&tmp, &gz_path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        crate::fsutil::sync_dir(dir);
    }
    std::fs::remove_file(path)
}

/// The length of the longest prefix of `bytes` made of whole lines and at most `room` long.
fn fitting_lines(bytes: &[u8], room: u64) -> usize {
    let limit = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
    if limit == bytes.len() {
        return limit;
    }
    bytes[..limit]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

/// Deletes the oldest finished files of `dir` (`.jsonl.gz`, and `.jsonl` ones not in
/// `active` that could not be compressed) until they take at most `cap` bytes together.
/// Names sort by time (they start with the Unix time in ms).
fn enforce_retention(dir: &Path, cap: u64, active: &[&Path]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut total = 0u64;
    let mut done: Vec<(String, u64)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let size = e.metadata().map_or(0, |m| m.len());
        let finished = name.ends_with(".jsonl.gz")
            || (name.ends_with(".jsonl") && !active.contains(&e.path().as_path()));
        if finished {
            done.push((name, size));
            total += size;
        }
    }
    done.sort();
    for (name, size) in done {
        if total <= cap {
            break;
        }
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => total -= size,
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "cannot delete an old payload log file")
            }
        }
    }
}

/// The directories in `dir`: not hidden, not symbolic links.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// [`Files::sweep_expired`] on one replica's directory (`<model>/` and `<model>/labels/`):
/// the number of files deleted. `gone` is another replica's directory.
fn expire_replica(
    dir: &Path,
    cutoff: std::time::SystemTime,
    active: &[&Path],
    gone: bool,
) -> usize {
    let mut removed = 0;
    for model in subdirs(dir) {
        let labels = model.join("labels");
        removed += expire_files(&labels, cutoff, active, gone);
        removed += expire_files(&model, cutoff, active, gone);
        if gone {
            // Only when empty.
            let _ = std::fs::remove_dir(&labels);
            let _ = std::fs::remove_dir(&model);
        }
    }
    removed
}

fn expire_files(dir: &Path, cutoff: std::time::SystemTime, active: &[&Path], gone: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.as_encoded_bytes();
        let ours = name.ends_with(b".jsonl.gz")
            || (gone && (name.ends_with(b".jsonl") || name.ends_with(b".gz.tmp")));
        if !ours || !named_by_vigil(name) || active.contains(&e.path().as_path()) {
            continue;
        }
        // Not following links: a link's target is not ours to delete.
        let old = e
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok());
        if old.is_some_and(|t| t < cutoff) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!(file = %e.path().display(), error = %err,
                    "cannot delete an expired payload log file"),
            }
        }
    }
    removed
}

/// Whether a file name is one the writer gives (`<ms>-<seq>.jsonl...`): a shared
/// directory set one level too high must not cost anyone else's `.jsonl` files.
fn named_by_vigil(name: &[u8]) -> bool {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let Some(stem_end) = name.windows(6).position(|w| w == b".jsonl") else {
        return false;
    };
    let mut parts = name[..stem_end].splitn(2, |&b| b == b'-');
    matches!((parts.next(), parts.next()), (Some(ms), Some(seq)) if digits(ms) && digits(seq))
}

/// The finished (`.jsonl.gz`) files in `dir` that may hold records of `[from, to]` (Unix
/// seconds), oldest first, as `<prefix>/<name>`: those opened (their name's time) by `to`
/// and finished (their mtime, no earlier than their last record) at or after `from`.
fn finished_in(dir: &Path, prefix: &str, from: f64, to: f64) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let stem = name.strip_suffix(".jsonl.gz")?;
            let opened = stem.split('-').next()?.parse::<u64>().ok()? as f64 / 1000.0;
            let finished = e
                .metadata()
                .ok()?
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs_f64();
            (opened <= to && finished >= from).then(|| format!("{prefix}/{name}"))
        })
        .collect();
    out.sort();
    out
}

/// `name` as a glob pattern that matches exactly `name`, the way Python's `glob.escape`
/// writes it: each of `*`, `?` and `[` becomes a one-character class (`[*]`, `[?]`,
/// `[[]`). A model's name is a directory name, so it may hold any of them; unescaped in
/// an event's `requests_glob`, `m[1]*?` would also match model `m1x`'s files.
pub fn glob_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The finished files of `stream` (a model, or `<model>/labels`) in every replica's
/// subdirectory of a shared `--payload-dir` (`root/*/<stream>/*.jsonl.gz`, the fleet
/// layout) that may hold records of `[from, to]`, relative to `root`: by replica name,
/// then oldest first. Hidden entries are skipped, as the shell's glob does.
pub fn fleet_finished(root: &Path, stream: &str, from: f64, to: f64) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut replicas: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    replicas.sort();
    replicas
        .iter()
        .flat_map(|r| {
            let prefix = format!("{r}/{stream}");
            finished_in(&root.join(&prefix), &prefix, from, to)
        })
        .collect()
}

/// Most files one list of a retrain event names: a fleet's shared directory keeps every
/// replaced pod's files too, and an event is stored in the outbox and sent on every retry.
pub const EVENT_LIST_MAX: usize = 10_000;

/// The newest `max` of `files` (relative paths whose file names begin with the Unix ms the
/// file was opened), in path order, and how many older ones were left out.
pub fn newest(mut files: Vec<String>, max: usize) -> (Vec<String>, u64) {
    if files.len() <= max {
        return (files, 0);
    }
    let name = |p: &String| -> (u64, String) {
        let base = p.rsplit('/').next().unwrap_or(p);
        let opened = base.split(['-', '.']).next().and_then(|n| n.parse().ok());
        (opened.unwrap_or(0), base.to_string())
    };
    files.sort_by_cached_key(name);
    let omitted = files.len() - max;
    let mut kept = files.split_off(omitted);
    kept.sort();
    (kept, omitted as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_writers_names_are_swept() {
        for ok in [
            "000001700000000-000001.jsonl.gz",
            "1700000000000-0.jsonl",
            "1-2.jsonl.gz.tmp",
        ] {
            assert!(named_by_vigil(ok.as_bytes()), "{ok}");
        }
        for other in [
            "events.jsonl.gz",
            "2024-01-02.jsonl",
            "1700000000000.jsonl.gz",
            "-1.jsonl",
            "1-.jsonl.gz",
            "a1-2.jsonl.gz",
            "1-2.json",
        ] {
            assert!(!named_by_vigil(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn an_event_keeps_the_newest_files_whichever_replica_wrote_them() {
        let files: Vec<String> = [
            "pod-b/iris/1700000000300-0.jsonl.gz",
            "pod-a/iris/1700000000100-0.jsonl.gz",
            "pod-c/iris/1700000000050-0.jsonl.gz",
            "pod-a/iris/1700000000400-3.jsonl.gz",
            "pod-b/iris/999999999999-0.jsonl.gz",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(newest(files.clone(), 5), (files.clone(), 0));
        let (kept, omitted) = newest(files, 2);
        assert_eq!(omitted, 3);
        assert_eq!(
            kept,
            [
                "pod-a/iris/1700000000400-3.jsonl.gz",
                "pod-b/iris/1700000000300-0.jsonl.gz"
            ]
        );
    }

    #[test]
    fn glob_escape_writes_what_pythons_glob_escape_writes() {
        assert_eq!(glob_escape("iris"), "iris");
        assert_eq!(glob_escape("m[1]*?"), "m[[]1][*][?]");
        assert_eq!(glob_escape("]a b\u{e9}"), "]a b\u{e9}");
        assert_eq!(glob_escape("ir*s"), "ir[*]s");
        assert_eq!(glob_escape("a?[b]"), "a[?][[]b]");
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-payload-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn gunzip(p: &Path) -> String {
        let mut s = String::new();
        flate2::read::GzDecoder::new(File::open(p).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_byte_on_recovery() {
        let line = b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n";
        for cut in 0..=line.len() {
            let dir = tmp(&format!("torn{cut}"));
            std::fs::create_dir_all(dir.join("m")).unwrap();
            std::fs::write(dir.join("m/000000000000001-000001.jsonl"), &line[..cut]).unwrap();
            std::fs::write(dir.join("m/000000000000000-000001.jsonl.gz.tmp"), b"junk").unwrap();
            Files::new(FileOptions {
                dir: dir.clone(),
                replica: None,
                max_file_bytes: 1 << 20,
                max_file_age: Duration::from_secs(3600),
                retention_bytes: 1 << 30,
                retention_age: None,
            })
            .recover();
            let left = names(&dir.join("m"));
            let whole = line[..cut]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if whole == 0 {
                assert!(left.is_empty(), "cut {cut}: {left:?}");
            } else {
                assert_eq!(left, ["000000000000001-000001.jsonl.gz"], "cut {cut}");
                let text = gunzip(&dir.join("m").join(&left[0]));
                assert_eq!(text.as_bytes(), &line[..whole], "cut {cut}");
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn retention_deletes_the_oldest_rotated_files_first() {
        let dir = tmp("retention");
        let mut f = Files::new(FileOptions {
            dir: dir.clone(),
            replica: None,
            max_file_bytes: 1000,
            max_file_age: Duration::from_secs(3600),
            retention_bytes: 3000,
            retention_age: None,
        });
        // Incompressible-ish lines so each rotated file keeps some size.
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..200 {
            let mut line: Vec<u8> = (0..99).map(|_| b'a' + rng.below(26) as u8).collect();
            line.push(b'\n');
            f.append("m", &line).unwrap();
        }
        let left = names(&dir.join("m"));
        let total: u64 = left
            .iter()
            .map(|n| std::fs::metadata(dir.join("m").join(n)).unwrap().len())
            .sum();
        assert!(total <= 3000, "{total} bytes in {left:?}");
        assert!(left.len() >= 2, "{left:?}");
        // The survivors are the newest: the active file and the last rotated ones.
        let gz: Vec<&String> = left.iter().filter(|n| n.ends_with(".gz")).collect();
        let last_seq: u64 = left.last().unwrap()[16..22].parse().unwrap();
        for n in &gz {
            let seq: u64 = n[16..22].parse().unwrap();
            assert!(
                seq + (gz.len() as u64) >= last_seq,
                "{n} is not among the newest"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

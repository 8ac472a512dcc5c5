//! The durable outbox: an append-only log of JSON records, fsynced per record, replayed
//! on start, compacted when delivered events pile up.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    Pending,
    Delivered,
    Dead,
}

/// An event and where its delivery stands.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EventRecord {
    pub id: String,
    pub state: EventState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: f64,
    pub next_attempt: f64,
    pub delivered_at: Option<f64>,
    pub event: Event,
    #[serde(skip)]
    seq: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    Create {
        event: Box<Event>,
        at: f64,
    },
    Fail {
        id: String,
        attempts: u32,
        error: String,
        next: f64,
    },
    Deliver {
        id: String,
        at: f64,
    },
    Dead {
        id: String,
        attempts: u32,
        error: String,
    },
    Replay {
        id: String,
    },
    Cooldown {
        model: String,
        at: f64,
    },
}

/// Delivered events kept for `GET /v2/retrain/events` after a compaction.
const KEEP_DELIVERED: usize = 50;
/// Delivered events in the log that trigger a compaction.
const COMPACT_AFTER: usize = 200;

pub struct Outbox {
    dir: PathBuf,
    path: PathBuf,
    /// Opened for appending: every write lands at the end, also after a truncation.
    file: File,
    /// Bytes of the log up to the end of its last complete record: where the next record
    /// starts, and what a failed append truncates back to.
    len: u64,
    /// The log may hold bytes past `len` (a failed append whose roll-back failed too, or a
    /// torn tail that could not be cut on open): cut them before the next append.
    dirty: bool,
    /// A compaction renamed a new log into place but the directory fsync failed: retried
    /// before the next record counts as written.
    dir_unsynced: bool,
    records: BTreeMap<u64, EventRecord>,
    by_id: HashMap<String, u64>,
    last_drift: HashMap<String, f64>,
    seq: u64,
    delivered_in_log: usize,
    #[cfg(test)]
    faults: Faults,
}

/// Failures a unit test plants in the next write (the real ones, a full disk or a file
/// size limit, are exercised by tests/retrain.rs).
#[cfg(test)]
#[derive(Default)]
struct Faults {
    /// The next append writes this many bytes of its record, then fails.
    write_after: Option<usize>,
    /// ... and the roll-back's truncation fails too.
    truncate: bool,
    /// The next compaction cannot open its new log.
    compact_open: bool,
}

impl Outbox {
    /// Opens the log under `dir` and replays it. The log is read as bytes, record by
    /// record: a record counts only if it ends in `\n` and parses. Whatever follows the
    /// last such record (a record torn by a crash mid-append, whatever its bytes) was
    /// never acknowledged and is cut off, then the cut is fsynced, so that the next record
    /// starts on a line of its own. A record that does not parse but is followed by good
    /// ones (damage inside the log) is skipped with an error in the log; it is gone after
    /// the next compaction. Nothing in the log's content stops the outbox from opening.
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("outbox.jsonl");
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        crate::fsutil::sync_dir(dir);
        let mut ob = Outbox {
            dir: dir.to_path_buf(),
            path,
            file,
            len: 0,
            dirty: false,
            dir_unsynced: false,
            records: BTreeMap::new(),
            by_id: HashMap::new(),
            last_drift: HashMap::new(),
            seq: 0,
            delivered_in_log: 0,
            #[cfg(test)]
            faults: Faults::default(),
        };
        let mut reader = BufReader::new(&ob.file);
        let mut line = Vec::new();
        let (mut pos, mut end, mut line_no) = (0u64, 0u64, 0u64);
        // Unparseable complete lines since the last good record: damage if a good record
        // follows, part of the torn tail otherwise.
        let mut bad: Vec<(u64, String)> = Vec::new();
        let mut skipped = 0usize;
        let mut records = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let Some(body) = line.strip_suffix(b"\n") else {
                break; // torn: no newline, so its append never finished
            };
            match serde_json::from_slice::<Record>(body) {
                Ok(r) => {
                    for (no, e) in bad.drain(..) {
                        tracing::error!(path = %ob.path.display(), line = no, error = %e,
                            "skipping a corrupt record inside the retrain outbox");
                        skipped += 1;
                    }
                    records.push(r);
                    end = pos + n as u64;
                }
                Err(e) => bad.push((line_no, e.to_string())),
            }
            pos += n as u64;
        }
        let on_disk = ob.file.metadata()?.len();
        ob.len = end;
        for r in records {
            ob.apply(r);
        }
        if skipped > 0 {
            tracing::error!(path = %ob.path.display(), skipped,
                "the retrain outbox held corrupt records; they were skipped");
        }
        if on_disk > end {
            tracing::warn!(path = %ob.path.display(), bytes = on_disk - end, at = end,
                "cutting an incomplete tail off the retrain outbox (a write torn by a crash; never acknowledged)");
            ob.dirty = true;
            if let Err(e) = ob.heal() {
                // Not fatal: the next append tries again before it writes.
                tracing::error!(path = %ob.path.display(), error = %e,
                    "cannot cut the retrain outbox's incomplete tail");
            }
        }
        Ok(ob)
    }

    /// Cuts whatever lies past the last complete record, if anything might.
    fn heal(&mut self) -> std::io::Result<()> {
        if self.dirty {
            #[cfg(test)]
            if std::mem::take(&mut self.faults.truncate) {
                return Err(std::io::Error::other("injected truncation failure"));
            }
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn apply(&mut self, r: Record) {
        match r {
            Record::Create { event, at } => {
                if self.by_id.contains_key(&event.data.event_id) {
                    return;
                }
                if event.kind == super::DRIFT_KIND || event.kind == super::QUALITY_KIND {
                    let last = self
                        .last_drift
                        .entry(event.data.model.clone())
                        .or_insert(at);
                    *last = last.max(at);
                }
                self.seq += 1;
                let id = event.data.event_id.clone();
                self.by_id.insert(id.clone(), self.seq);
                self.records.insert(
                    self.seq,
                    EventRecord {
                        id,
                        state: EventState::Pending,
                        attempts: 0,
                        last_error: None,
                        created_at: at,
                        next_attempt: at,
                        delivered_at: None,
                        event: *event,
                        seq: self.seq,
                    },
                );
            }
            Record::Fail {
                id,
                attempts,
                error,
                next,
            } => {
                if let Some(r) = self.get_mut(&id) {
                    r.attempts = attempts;
                    r.last_error = Some(error);
                    r.next_attempt = next;
                }
            }
            Record::Deliver { id, at } => {
                if let Some(r) = self.get_mut(&id) {
                    r.state = EventState::Delivered;
                    r.delivered_at = Some(at);
                    r.attempts += 1;
                    self.delivered_in_log += 1;
                }
            }
            Record::Dead {
                id,
                attempts,
                error,
            } => {
                if let Some(r) = self.get_mut(&id) {
                    r.state = EventState::Dead;
                    r.attempts = attempts;
                    r.last_error = Some(error);
                }
            }
            Record::Replay { id } => {
                if let Some(r) = self.get_mut(&id) {
                    r.state = EventState::Pending;
                    r.attempts = 0;
                    r.next_attempt = 0.0;
                }
            }
            Record::Cooldown { model, at } => {
                let last = self.last_drift.entry(model).or_insert(at);
                *last = last.max(at);
            }
        }
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut EventRecord> {
        let seq = *self.by_id.get(id)?;
        self.records.get_mut(&seq)
    }

    /// Appends and fsyncs one record, then applies it. On error nothing is applied and the
    /// log is truncated back to where the record began, so a later record never lands on
    /// the remains of this one.
    fn append(&mut self, r: Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&r).expect("records serialise");
        line.push(b'\n');
        self.heal()?;
        if let Err(e) = self.write_durably(&line) {
            self.dirty = true;
            if let Err(e2) = self.heal() {
                tracing::error!(path = %self.path.display(), error = %e2,
                    "cannot roll back a failed retrain outbox write; retried before the next one");
            }
            return Err(e);
        }
        self.len += line.len() as u64;
        self.apply(r);
        Ok(())
    }

    fn write_durably(&mut self, line: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.faults.write_after.take() {
            self.file.write_all(&line[..n.min(line.len())])?;
            return Err(std::io::Error::other("injected write failure"));
        }
        self.file.write_all(line)?;
        self.file.sync_data()?;
        if self.dir_unsynced {
            std::fs::File::open(&self.dir)?.sync_all()?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    pub fn knows(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn last_drift_event(&self, model: &str) -> Option<f64> {
        self.last_drift.get(model).copied()
    }

    pub fn create(&mut self, event: Event, at: f64) -> std::io::Result<()> {
        self.append(Record::Create {
            event: Box::new(event),
            at,
        })
    }

    pub fn get(&self, id: &str) -> Option<EventRecord> {
        self.by_id
            .get(id)
            .and_then(|s| self.records.get(s))
            .cloned()
    }

    /// The pending event to try next (earliest due; oldest first on ties).
    pub fn next_due(&self) -> Option<(String, f64)> {
        self.records
            .values()
            .filter(|r| r.state == EventState::Pending)
            .min_by(|a, b| {
                a.next_attempt
                    .total_cmp(&b.next_attempt)
                    .then(a.seq.cmp(&b.seq))
            })
            .map(|r| (r.id.clone(), r.next_attempt))
    }

    pub fn delivered(&mut self, id: &str) -> std::io::Result<()> {
        self.append(Record::Deliver {
            id: id.to_string(),
            at: super::now_unix(),
        })?;
        if self.delivered_in_log >= COMPACT_AFTER {
            // The record is written; a compaction that fails leaves the old log in place
            // and is tried again on the next delivery.
            if let Err(e) = self.compact() {
                tracing::error!(path = %self.path.display(), error = %e,
                    "cannot compact the retrain outbox; keeping the current log");
            }
        }
        Ok(())
    }

    pub fn failed(
        &mut self,
        id: &str,
        attempts: u32,
        error: &str,
        next: f64,
    ) -> std::io::Result<()> {
        self.append(Record::Fail {
            id: id.to_string(),
            attempts,
            error: error.to_string(),
            next,
        })
    }

    /// Dead-letters an event: recorded in the log and appended, readable, to
    /// `dead-letters.jsonl`.
    pub fn dead(&mut self, id: &str, attempts: u32, error: &str) -> std::io::Result<()> {
        self.append(Record::Dead {
            id: id.to_string(),
            attempts,
            error: error.to_string(),
        })?;
        if let Some(r) = self.get(id) {
            let mut line = serde_json::to_vec(&r).expect("records serialise");
            line.push(b'\n');
            append_readable(&self.dir.join("dead-letters.jsonl"), &line)?;
        }
        Ok(())
    }

    /// Puts a dead-lettered event back in the queue. `false` if there is no such event.
    pub fn replay(&mut self, id: &str) -> std::io::Result<bool> {
        if self.get(id).is_none_or(|r| r.state != EventState::Dead) {
            return Ok(false);
        }
        self.append(Record::Replay { id: id.to_string() })?;
        Ok(true)
    }

    pub fn list(&self) -> Vec<EventRecord> {
        self.records.values().cloned().collect()
    }

    pub fn counts_by_model(&self) -> (HashMap<String, i64>, HashMap<String, i64>) {
        let (mut pending, mut dead) = (HashMap::new(), HashMap::new());
        for r in self.records.values() {
            let m = r.event.data.model.clone();
            pending.entry(m.clone()).or_insert(0);
            dead.entry(m.clone()).or_insert(0);
            match r.state {
                EventState::Pending => *pending.get_mut(&m).expect("inserted") += 1,
                EventState::Dead => *dead.get_mut(&m).expect("inserted") += 1,
                EventState::Delivered => {}
            }
        }
        (pending, dead)
    }

    /// Rewrites the log with what still matters: cooldowns, pending and dead events, and
    /// the last few delivered ones. The new log is written aside and fsynced, and its
    /// handle opened, before it is renamed over the old one (then the directory is
    /// fsynced): any failure before the rename leaves the old log, its handle and the
    /// in-memory state as they were.
    fn compact(&mut self) -> std::io::Result<()> {
        let delivered: Vec<u64> = self
            .records
            .values()
            .filter(|r| r.state == EventState::Delivered)
            .map(|r| r.seq)
            .collect();
        let drop_n = delivered.len().saturating_sub(KEEP_DELIVERED);
        let dropped = &delivered[..drop_n];
        let mut lines = Vec::new();
        let mut push = |r: &Record| {
            let mut l = serde_json::to_vec(r).expect("records serialise");
            l.push(b'\n');
            lines.extend(l);
        };
        for (model, at) in &self.last_drift {
            push(&Record::Cooldown {
                model: model.clone(),
                at: *at,
            });
        }
        // `delivered` is in seq order, as are the records.
        let mut dropped_iter = dropped.iter().peekable();
        for r in self.records.values() {
            if dropped_iter.next_if_eq(&&r.seq).is_some() {
                continue;
            }
            push(&Record::Create {
                event: Box::new(r.event.clone()),
                at: r.created_at,
            });
            match r.state {
                EventState::Pending if r.attempts > 0 => push(&Record::Fail {
                    id: r.id.clone(),
                    attempts: r.attempts,
                    error: r.last_error.clone().unwrap_or_default(),
                    next: r.next_attempt,
                }),
                EventState::Pending => {}
                EventState::Delivered => push(&Record::Deliver {
                    id: r.id.clone(),
                    at: r.delivered_at.unwrap_or(0.0),
                }),
                EventState::Dead => push(&Record::Dead {
                    id: r.id.clone(),
                    attempts: r.attempts,
                    error: r.last_error.clone().unwrap_or_default(),
                }),
            }
        }
        let tmp = self.dir.join("outbox.jsonl.tmp");
        let file = match self.write_aside(&tmp, &lines) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // From here on the new log is the one under the name: write only to it.
        self.file = file;
        self.len = lines.len() as u64;
        self.dirty = false;
        if let Err(e) = std::fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::error!(path = %self.dir.display(), error = %e,
                "cannot fsync the retrain directory after a compaction; retried before the next record counts");
            self.dir_unsynced = true;
        }
        for seq in dropped {
            if let Some(r) = self.records.remove(seq) {
                self.by_id.remove(&r.id);
            }
        }
        self.delivered_in_log = self
            .records
            .values()
            .filter(|r| r.state == EventState::Delivered)
            .count();
        Ok(())
    }

    /// Creates `tmp` with `bytes`, fsynced, and returns its handle opened for appending.
    fn write_aside(&mut self, tmp: &Path, bytes: &[u8]) -> std::io::Result<File> {
        let _ = std::fs::remove_file(tmp);
        let mut f = File::create_new(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        #[cfg(test)]
        if std::mem::take(&mut self.faults.compact_open) {
            return Err(std::io::Error::other("injected open failure"));
        }
        OpenOptions::new().read(true).append(true).open(tmp)
    }
}

/// Appends one line to a file that people read (the dead letters): starts it on a line of
/// its own if a crash left the file without a final newline, and truncates back if the
/// write fails, so every complete line stays readable.
fn append_readable(path: &Path, line: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1)?;
    }
    let mut bytes = Vec::with_capacity(line.len() + 1);
    if last[0] != b'\n' {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(line);
    if let Err(e) = f.write_all(&bytes).and_then(|()| f.sync_data()) {
        let _ = f.set_len(len);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests;

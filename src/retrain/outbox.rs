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
        event: Event,
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
    file: File,
    records: BTreeMap<u64, EventRecord>,
    by_id: HashMap<String, u64>,
    last_drift: HashMap<String, f64>,
    seq: u64,
    delivered_in_log: usize,
}

impl Outbox {
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("outbox.jsonl");
        let mut ob = Outbox {
            dir: dir.to_path_buf(),
            file: OpenOptions::new().create(true).append(true).open(&path)?,
            records: BTreeMap::new(),
            by_id: HashMap::new(),
            last_drift: HashMap::new(),
            seq: 0,
            delivered_in_log: 0,
        };
        crate::fsutil::sync_dir(dir);
        let lines: Vec<String> = BufReader::new(File::open(&path)?)
            .lines()
            .collect::<Result<_, _>>()?;
        let n = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => ob.apply(r),
                // A crash can leave the last line half-written: that record never counted.
                Err(e) if i + 1 == n => {
                    tracing::warn!(error = %e, "ignoring a torn last outbox record")
                }
                Err(e) => {
                    tracing::error!(line = i + 1, error = %e, "skipping an unreadable outbox record")
                }
            }
        }
        Ok(ob)
    }

    fn apply(&mut self, r: Record) {
        match r {
            Record::Create { event, at } => {
                if self.by_id.contains_key(&event.data.event_id) {
                    return;
                }
                if event.kind == "vigil.drift.detected" {
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
                        event,
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

    /// Appends and fsyncs one record, then applies it.
    fn append(&mut self, r: Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&r).expect("records serialise");
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.apply(r);
        Ok(())
    }

    pub fn knows(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn last_drift_event(&self, model: &str) -> Option<f64> {
        self.last_drift.get(model).copied()
    }

    pub fn create(&mut self, event: Event, at: f64) -> std::io::Result<()> {
        self.append(Record::Create { event, at })
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
            self.compact()?;
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
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("dead-letters.jsonl"))?;
            let mut line = serde_json::to_vec(&r).expect("records serialise");
            line.push(b'\n');
            f.write_all(&line)?;
            f.sync_data()?;
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
    /// the last few delivered ones. Written aside, fsynced, renamed into place.
    fn compact(&mut self) -> std::io::Result<()> {
        let delivered: Vec<u64> = self
            .records
            .values()
            .filter(|r| r.state == EventState::Delivered)
            .map(|r| r.seq)
            .collect();
        let drop_n = delivered.len().saturating_sub(KEEP_DELIVERED);
        for seq in &delivered[..drop_n] {
            if let Some(r) = self.records.remove(seq) {
                self.by_id.remove(&r.id);
            }
        }
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
        for r in self.records.values() {
            push(&Record::Create {
                event: r.event.clone(),
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
        let path = self.dir.join("outbox.jsonl");
        crate::fsutil::write_atomic(&path, &lines)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.delivered_in_log = self
            .records
            .values()
            .filter(|r| r.state == EventState::Delivered)
            .count();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrain::{Event, EventData};

    fn event(id: &str) -> Event {
        Event {
            kind: "vigil.drift.detected".into(),
            timestamp: "t".into(),
            data: EventData {
                event_id: id.into(),
                model: "m".into(),
                model_version: "1".into(),
                reason: "drift".into(),
                window: None,
                drift_share: None,
                features: vec![],
                server: "s".into(),
            },
        }
    }

    #[test]
    fn replays_and_compacts() {
        let dir = std::env::temp_dir().join(format!("vigil-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ob = Outbox::open(&dir).unwrap();
        for i in 0..(COMPACT_AFTER + 10) {
            ob.create(event(&format!("e{i}")), i as f64).unwrap();
        }
        ob.failed("e0", 1, "boom", 5.0).unwrap();
        ob.dead("e1", 3, "gone").unwrap();
        for i in 2..(COMPACT_AFTER + 5) {
            ob.delivered(&format!("e{i}")).unwrap();
        }
        // A torn last line (crash mid-write) is ignored.
        OpenOptions::new()
            .append(true)
            .open(dir.join("outbox.jsonl"))
            .unwrap()
            .write_all(b"{\"op\":\"cre")
            .unwrap();
        let ob = Outbox::open(&dir).unwrap();
        let e0 = ob.get("e0").unwrap();
        assert_eq!(
            (e0.state, e0.attempts, e0.next_attempt),
            (EventState::Pending, 1, 5.0)
        );
        assert_eq!(ob.get("e1").unwrap().state, EventState::Dead);
        let pending = ob
            .list()
            .iter()
            .filter(|r| r.state == EventState::Pending)
            .count();
        assert_eq!(pending, 1 + 5, "e0 and the five never delivered");
        assert!(
            ob.list()
                .iter()
                .filter(|r| r.state == EventState::Delivered)
                .count()
                <= KEEP_DELIVERED + 5
        );
        assert_eq!(ob.last_drift_event("m"), Some((COMPACT_AFTER + 9) as f64));
        assert_eq!(ob.next_due().unwrap().0, "e0");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

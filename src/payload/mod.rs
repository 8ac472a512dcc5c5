//! The payload log: a sampled share of every model's requests (inputs, outputs, version,
//! role, latency, status) written as JSON Lines under `--payload-dir`.
//!
//! The request path only decides whether a request is sampled ([`Sampler`]) and hands the
//! [`Record`] to [`PayloadLog::submit`], which never blocks: the queue is bounded both in
//! records and in tensor bytes, and a record that does not fit is dropped and counted
//! (`vigil_payload_dropped_total{reason="queue_full"}`). One writer thread owns the files
//! ([`files`]): it encodes records, appends them in batches, rotates, compresses and
//! enforces the retention cap, so logging costs the request path a copy of its tensors and
//! a channel send, never a write.
//!
//! This room imports the ground floor (`tensor`, `metrics`, `fsutil`, `supervise`) and
//! nothing of `serving` or `http`.

mod cloudevents;
pub mod feedback;
pub mod files;
mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

pub use feedback::{
    Feedback, FeedbackSettings, JoinSummary, Predictions, QualityReport, QualityTrip, Truth,
};
pub use files::FileOptions;
pub use record::{Record, Role};

use crate::metrics::PayloadFamilies;

/// Records waiting for the writer, at most.
pub const QUEUE_RECORDS: usize = 4096;

/// Settings of the payload log (the default: no directory, nothing written).
#[derive(Clone, Debug, Default)]
pub struct PayloadOptions {
    /// `None`: no `--payload-dir`; sampled records are counted as dropped (`no_dir`).
    pub files: Option<FileOptions>,
    /// Tensor bytes waiting for the writer, at most (`--payload-queue-bytes`); the
    /// CloudEvents sink holds at most as many body bytes.
    pub queue_bytes: usize,
    /// CloudEvents pairs POSTed at once (`--payload-sink-concurrency`).
    pub sink_concurrency: usize,
}

/// Exact sampling: of n requests, floor(n * share) are taken, evenly spread.
#[derive(Default)]
pub struct Sampler(AtomicU64);

impl Sampler {
    pub fn take(&self, share: f64) -> bool {
        if share <= 0.0 {
            return false;
        }
        if share >= 1.0 {
            return true;
        }
        let n = self.0.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * share).floor() > (n * share).floor()
    }
}

/// A new request id (UUID v4 form): unique within the process, unpredictable across them.
pub fn new_request_id() -> String {
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 32)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // splitmix64 is a bijection of its state: distinct n give distinct `a`.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let b = mix(a ^ seed.rotate_left(17));
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// The handle the request path holds (cheap to clone).
#[derive(Clone)]
pub struct PayloadLog {
    inner: Arc<Inner>,
}

/// What the request path and the feedback join hand to the writer thread.
enum Msg {
    /// A sampled record, and the CloudEvents sink of its model.
    Record(Record, Option<Arc<str>>),
    /// Joined labels of a model, written to `DIR/<model>/labels/` (one JSON line each).
    Labels {
        model: String,
        lines: Vec<u8>,
        n: u64,
    },
    /// Rotate a model's files (so that everything queued before is in finished files)
    /// and list the finished files that may hold records of `[from, to]`.
    Seal {
        model: String,
        from: f64,
        to: f64,
        reply: Sender<Sealed>,
    },
}

/// The finished files a retrain event points at, relative to `--payload-dir`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sealed {
    pub requests: Vec<String>,
    pub labels: Vec<String>,
}

/// The labels stream of a model (a directory of its own under the model's).
fn labels_stream(model: &str) -> String {
    format!("{model}/labels")
}

/// A model's `[logging] cloudevents_url`, looked up when a record is submitted.
pub type SinkOf = Arc<dyn Fn(&str) -> Option<Arc<str>> + Send + Sync>;

struct Inner {
    tx: Sender<Msg>,
    /// A `--payload-dir` was given.
    has_dir: bool,
    sink_of: SinkOf,
    queued: Arc<AtomicUsize>,
    budget: usize,
    metrics: PayloadFamilies,
}

/// Why a sampled record was not kept (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropReason {
    QueueFull,
    WriteError,
    NoDir,
    SinkFull,
    SinkError,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteError => "write_error",
            DropReason::NoDir => "no_dir",
            DropReason::SinkFull => "sink_full",
            DropReason::SinkError => "sink_error",
        }
    }
}

fn count_drop(m: &PayloadFamilies, model: &str, why: DropReason, n: u64) {
    m.dropped
        .with_label_values(&[model, why.as_str()])
        .inc_by(n);
}

impl PayloadLog {
    /// Starts the writer thread.
    pub fn start(opts: PayloadOptions, metrics: PayloadFamilies, sink_of: SinkOf) -> PayloadLog {
        let queued = Arc::new(AtomicUsize::new(0));
        let has_dir = opts.files.is_some();
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(QUEUE_RECORDS);
        {
            let (queued, metrics) = (queued.clone(), metrics.clone());
            crate::supervise::spawn_thread("payload_writer", "vigil-payload", move || {
                let sink = cloudevents::SinkOptions {
                    concurrency: opts.sink_concurrency,
                    queue_bytes: opts.queue_bytes,
                };
                write_loop(&rx, opts.files.clone(), sink, &queued, &metrics)
            });
        }
        PayloadLog {
            inner: Arc::new(Inner {
                tx,
                has_dir,
                sink_of,
                queued,
                budget: opts.queue_bytes,
                metrics,
            }),
        }
    }

    /// Hands a record to the writer; never blocks. A record that does not fit the queue
    /// is dropped and counted.
    pub fn submit(&self, record: Record) {
        let inner = &self.inner;
        let sink = (inner.sink_of)(&record.model);
        if !inner.has_dir && sink.is_none() {
            count_drop(&inner.metrics, &record.model, DropReason::NoDir, 1);
            return;
        }
        let tx = &inner.tx;
        let w = record.weight();
        let before = inner.queued.fetch_add(w, Ordering::AcqRel);
        if before + w > inner.budget && before > 0 {
            inner.queued.fetch_sub(w, Ordering::AcqRel);
            count_drop(&inner.metrics, &record.model, DropReason::QueueFull, 1);
            return;
        }
        inner.metrics.queue_bytes.add(w as i64);
        if let Err(e) = tx.try_send(Msg::Record(record, sink)) {
            let (TrySendError::Full(m) | TrySendError::Disconnected(m)) = e;
            inner.queued.fetch_sub(w, Ordering::AcqRel);
            inner.metrics.queue_bytes.sub(w as i64);
            if let Msg::Record(r, _) = m {
                count_drop(&inner.metrics, &r.model, DropReason::QueueFull, 1);
            }
        }
    }

    /// Hands joined labels (JSON lines) to the writer; never blocks. Without a
    /// `--payload-dir` they are not kept (and not counted: sampling is not involved).
    pub fn labels(&self, model: &str, lines: Vec<u8>, n: u64) {
        let inner = &self.inner;
        if !inner.has_dir {
            return;
        }
        let tx = &inner.tx;
        let w = lines.len();
        let before = inner.queued.fetch_add(w, Ordering::AcqRel);
        if before + w > inner.budget && before > 0 {
            inner.queued.fetch_sub(w, Ordering::AcqRel);
            count_drop(&inner.metrics, model, DropReason::QueueFull, n);
            return;
        }
        inner.metrics.queue_bytes.add(w as i64);
        let msg = Msg::Labels {
            model: model.to_string(),
            lines,
            n,
        };
        if tx.try_send(msg).is_err() {
            inner.queued.fetch_sub(w, Ordering::AcqRel);
            inner.metrics.queue_bytes.sub(w as i64);
            count_drop(&inner.metrics, model, DropReason::QueueFull, n);
        }
    }

    /// Waits (at most `wait`) for the writer to finish the model's files, then lists the
    /// finished request and label files that may hold records of `[from, to]` (Unix
    /// seconds). `None`: no `--payload-dir`, or the writer did not answer in time.
    pub fn seal(&self, model: &str, from: f64, to: f64, wait: Duration) -> Option<Sealed> {
        if !self.inner.has_dir {
            return None;
        }
        let tx = &self.inner.tx;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let msg = Msg::Seal {
            model: model.to_string(),
            from,
            to,
            reply,
        };
        tx.send_timeout(msg, wait).ok()?;
        answer.recv_timeout(wait).ok()
    }

    /// Whether records can be written at all (a `--payload-dir` was given).
    pub fn has_dir(&self) -> bool {
        self.inner.has_dir
    }
}

/// Lines of a batch are gathered up to this many bytes per model before one write.
const BATCH_BYTES: usize = 1 << 20;

/// How long before a file was opened its records may have been run: a record is queued
/// when its request is answered, and written soon after; the file list of a sealed range
/// errs on the side of one file too many.
pub const SEAL_SLACK_SECONDS: f64 = 120.0;

/// The writer thread: takes what is queued, encodes it, appends it per model in one
/// write, rotates aged files when idle, and seals a model's files when asked.
fn write_loop(
    rx: &Receiver<Msg>,
    opts: Option<FileOptions>,
    sink_opts: cloudevents::SinkOptions,
    queued: &AtomicUsize,
    metrics: &PayloadFamilies,
) {
    let tick = opts.as_ref().map_or(Duration::from_secs(1), |o| {
        o.max_file_age
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    });
    let mut files = opts.map(files::Files::new);
    if let Some(f) = &mut files {
        f.recover();
        f.sweep_expired();
    }
    // Started with the first record whose model has a `cloudevents_url`.
    let mut sink: Option<cloudevents::Sink> = None;
    // Per stream (a model, or its labels): the bytes to append, the records in them.
    let mut batch: HashMap<String, (Vec<u8>, u64)> = HashMap::new();
    let mut failing = false;
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(f) = &mut files {
                    f.rotate_aged();
                    f.sweep_expired();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(f) = &mut files {
                    f.close_all();
                }
                return;
            }
        };
        let mut next = Some(first);
        let mut size = 0usize;
        let mut seal = None;
        while let Some(m) = next.take() {
            match m {
                Msg::Record(r, url) => {
                    let w = r.weight();
                    if let Some(url) = url {
                        sink.get_or_insert_with(|| {
                            cloudevents::Sink::start(metrics.clone(), sink_opts)
                        })
                        .offer(cloudevents::Pair::of(&r, url));
                    }
                    if files.is_some() {
                        let slot = batch.entry(r.model.clone()).or_default();
                        let before = slot.0.len();
                        r.write_line(&mut slot.0);
                        slot.1 += 1;
                        size += slot.0.len() - before;
                    }
                    drop(r);
                    queued.fetch_sub(w, Ordering::AcqRel);
                    metrics.queue_bytes.sub(w as i64);
                }
                Msg::Labels { model, lines, n } => {
                    let w = lines.len();
                    let slot = batch.entry(labels_stream(&model)).or_default();
                    slot.0.extend_from_slice(&lines);
                    slot.1 += n;
                    size += w;
                    queued.fetch_sub(w, Ordering::AcqRel);
                    metrics.queue_bytes.sub(w as i64);
                }
                Msg::Seal { .. } => {
                    // Everything queued before it is written first.
                    seal = Some(m);
                    break;
                }
            }
            if size < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let Some(files) = &mut files else {
            batch.clear();
            if let Some(Msg::Seal { reply, .. }) = seal {
                let _ = reply.try_send(Sealed::default());
            }
            continue;
        };
        for (stream, (bytes, n)) in batch.iter_mut() {
            if *n == 0 && bytes.is_empty() {
                continue;
            }
            // Label lines count under their model, and not as logged requests.
            let (model, is_labels) = match stream.strip_suffix("/labels") {
                Some(m) => (m, true),
                None => (stream.as_str(), false),
            };
            match files.append(stream, bytes) {
                Ok(()) => {
                    if !is_labels {
                        metrics.written.with_label_values(&[model]).inc_by(*n);
                    }
                    if failing {
                        tracing::info!(model = %model, "the payload log is written again");
                        failing = false;
                    }
                }
                Err(e) => {
                    count_drop(metrics, model, DropReason::WriteError, *n);
                    if !failing {
                        tracing::error!(error = %e, "cannot write the payload log; records are dropped and counted until it can");
                        failing = true;
                    }
                }
            }
            bytes.clear();
            *n = 0;
        }
        // A writer that is never idle sweeps too.
        files.sweep_expired();
        if let Some(Msg::Seal {
            model,
            from,
            to,
            reply,
        }) = seal
        {
            let labels = labels_stream(&model);
            files.rotate(&model);
            files.rotate(&labels);
            let sealed = Sealed {
                requests: files.finished(&model, from - SEAL_SLACK_SECONDS, to),
                // Labels of the window's predictions are joined after them, up to now.
                labels: files.finished(&labels, from, f64::INFINITY),
            };
            let _ = reply.try_send(sealed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_takes_exactly_the_share() {
        for share in [0.1, 0.25, 1.0 / 3.0, 0.5, 0.999] {
            let s = Sampler::default();
            let n = 10_000;
            let taken = (0..n).filter(|_| s.take(share)).count();
            assert_eq!(taken, (n as f64 * share).floor() as usize, "{share}");
        }
        let s = Sampler::default();
        assert!(!(0..100).any(|_| s.take(0.0)));
        assert!((0..100).all(|_| s.take(1.0)));
    }
}

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

pub mod feedback;
pub mod files;
mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

pub use feedback::{Feedback, FeedbackSettings, JoinSummary, Predictions, QualityReport, Truth};
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
    /// Tensor bytes waiting for the writer, at most (`--payload-queue-bytes`).
    pub queue_bytes: usize,
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

struct Inner {
    tx: Option<Sender<Record>>,
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
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteError => "write_error",
            DropReason::NoDir => "no_dir",
        }
    }
}

fn count_drop(m: &PayloadFamilies, model: &str, why: DropReason, n: u64) {
    m.dropped
        .with_label_values(&[model, why.as_str()])
        .inc_by(n);
}

impl PayloadLog {
    /// Starts the writer thread (when there is a directory).
    pub fn start(opts: PayloadOptions, metrics: PayloadFamilies) -> PayloadLog {
        let queued = Arc::new(AtomicUsize::new(0));
        let tx = opts.files.map(|fopts| {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE_RECORDS);
            let (queued, metrics) = (queued.clone(), metrics.clone());
            crate::supervise::spawn_thread("payload_writer", "vigil-payload", move || {
                write_loop(&rx, fopts.clone(), &queued, &metrics)
            });
            tx
        });
        PayloadLog {
            inner: Arc::new(Inner {
                tx,
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
        let Some(tx) = &inner.tx else {
            count_drop(&inner.metrics, &record.model, DropReason::NoDir, 1);
            return;
        };
        let w = record.weight();
        let before = inner.queued.fetch_add(w, Ordering::AcqRel);
        if before + w > inner.budget && before > 0 {
            inner.queued.fetch_sub(w, Ordering::AcqRel);
            count_drop(&inner.metrics, &record.model, DropReason::QueueFull, 1);
            return;
        }
        inner.metrics.queue_bytes.add(w as i64);
        if let Err(e) = tx.try_send(record) {
            let (TrySendError::Full(r) | TrySendError::Disconnected(r)) = e;
            inner.queued.fetch_sub(w, Ordering::AcqRel);
            inner.metrics.queue_bytes.sub(w as i64);
            count_drop(&inner.metrics, &r.model, DropReason::QueueFull, 1);
        }
    }

    /// Whether records can be written at all (a `--payload-dir` was given).
    pub fn has_dir(&self) -> bool {
        self.inner.tx.is_some()
    }
}

/// Lines of a batch are gathered up to this many bytes per model before one write.
const BATCH_BYTES: usize = 1 << 20;

/// The writer thread: takes what is queued, encodes it, appends it per model in one
/// write, and rotates aged files when idle.
fn write_loop(
    rx: &Receiver<Record>,
    opts: FileOptions,
    queued: &AtomicUsize,
    metrics: &PayloadFamilies,
) {
    let tick = opts
        .max_file_age
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut files = files::Files::new(opts);
    files.recover();
    let mut batch: HashMap<String, (Vec<u8>, u64)> = HashMap::new();
    let mut failing = false;
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                files.rotate_aged();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                files.close_all();
                return;
            }
        };
        let mut next = Some(first);
        let mut size = 0usize;
        while let Some(r) = next.take() {
            let w = r.weight();
            let slot = batch.entry(r.model.clone()).or_default();
            let before = slot.0.len();
            r.write_line(&mut slot.0);
            slot.1 += 1;
            size += slot.0.len() - before;
            drop(r);
            queued.fetch_sub(w, Ordering::AcqRel);
            metrics.queue_bytes.sub(w as i64);
            if size < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        for (model, (bytes, n)) in batch.iter_mut() {
            if *n == 0 {
                continue;
            }
            match files.append(model, bytes) {
                Ok(()) => {
                    metrics.written.with_label_values(&[model]).inc_by(*n);
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

//! Per-version counters behind Triton's statistics extension (`GET .../stats`).
//! Plain atomics: the request path only adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct VersionStats {
    success_count: AtomicU64,
    success_ns: AtomicU64,
    fail_count: AtomicU64,
    queue_ns: AtomicU64,
    compute_ns: AtomicU64,
    inference_count: AtomicU64,
    last_inference_ms: AtomicU64,
}

/// A consistent-enough copy of the counters for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub success_count: u64,
    pub success_ns: u64,
    pub fail_count: u64,
    pub queue_ns: u64,
    pub compute_ns: u64,
    pub inference_count: u64,
    pub last_inference_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl VersionStats {
    /// A request answered: `rows` inferences (batch items), its queue and compute time.
    pub fn record_success(&self, rows: u64, queued: Duration, compute: Duration) {
        self.success_count.fetch_add(1, Relaxed);
        self.success_ns
            .fetch_add((queued + compute).as_nanos() as u64, Relaxed);
        self.queue_ns.fetch_add(queued.as_nanos() as u64, Relaxed);
        self.compute_ns
            .fetch_add(compute.as_nanos() as u64, Relaxed);
        self.inference_count.fetch_add(rows, Relaxed);
        self.last_inference_ms.store(now_ms(), Relaxed);
    }

    pub fn record_failure(&self) {
        self.fail_count.fetch_add(1, Relaxed);
        self.last_inference_ms.store(now_ms(), Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            success_count: self.success_count.load(Relaxed),
            success_ns: self.success_ns.load(Relaxed),
            fail_count: self.fail_count.load(Relaxed),
            queue_ns: self.queue_ns.load(Relaxed),
            compute_ns: self.compute_ns.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            last_inference_ms: self.last_inference_ms.load(Relaxed),
        }
    }
}

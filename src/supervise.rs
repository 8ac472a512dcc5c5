//! Background tasks that survive their own bugs.
//!
//! Retrain delivery, the reload loop, the drift scorer, the console sampler and the
//! registry sync each run under a supervisor: a panic is logged with the task's name,
//! counted in `vigil_task_panics_total{task}`, and the task starts again after a backoff
//! (100 ms doubling to 30 s; back to 100 ms once a run has lasted a minute). A task that
//! returns normally (shutdown) is not restarted. Work that must not take a whole pass
//! down with it (one model's load, one scoring job) runs under [`guard`] instead.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts};

/// The supervised tasks, as they appear in the `task` label.
pub const TASKS: &[&str] = &[
    "retrain_delivery",
    "retrain_events",
    "reload",
    "drift_scorer",
    "console_sampler",
    "registry_sync",
    "model_load",
    "canary_judge",
    "memory_trim",
];

/// `vigil_task_panics_total{task}`; [`crate::metrics::Metrics`] registers it.
pub static TASK_PANICS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "vigil_task_panics_total",
            "Panics caught in background tasks (the task restarted) and in per-model work \
             (the model or version was marked unavailable), by task.",
        ),
        &["task"],
    )
    .expect("a valid metric definition");
    for t in TASKS {
        c.with_label_values(&[t]);
    }
    c
});

/// Logs and counts a caught panic.
pub fn panicked(task: &str, payload: &(dyn std::any::Any + Send)) -> String {
    let msg = panic_message(payload);
    TASK_PANICS.with_label_values(&[task]).inc();
    tracing::error!(task, panic = %msg, "a background task panicked");
    msg
}

/// The text a panic carried, if it was a string.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `f`, turning a panic into an error (logged and counted under `task`).
pub fn guard<T>(task: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panicked(task, p.as_ref()))
}

struct Backoff {
    failures: u32,
    started: Instant,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            failures: 0,
            started: Instant::now(),
        }
    }

    /// The wait before the next start; a run that lasted a minute resets it.
    fn next(&mut self) -> Duration {
        if self.started.elapsed() > Duration::from_secs(60) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let ms = 100u64.saturating_mul(1 << self.failures.min(9).saturating_sub(1));
        Duration::from_millis(ms).min(Duration::from_secs(30))
    }

    fn restarted(&mut self) {
        self.started = Instant::now();
    }
}

/// Spawns an async task that is started again (from `make`) after each panic.
pub fn spawn_async<F, Fut>(task: &'static str, mut make: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::new();
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    panicked(task, e.into_panic().as_ref());
                    tokio::time::sleep(backoff.next()).await;
                    tracing::info!(task, "restarting the task");
                    backoff.restarted();
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
        }
    })
}

/// Spawns a thread whose body runs again after each panic, until it returns.
pub fn spawn_thread<F>(
    task: &'static str,
    thread_name: &str,
    mut body: F,
) -> std::thread::JoinHandle<()>
where
    F: FnMut() + Send + 'static,
{
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            let mut backoff = Backoff::new();
            loop {
                match catch_unwind(AssertUnwindSafe(&mut body)) {
                    Ok(()) => return,
                    Err(p) => {
                        panicked(task, p.as_ref());
                        std::thread::sleep(backoff.next());
                        tracing::info!(task, "restarting the task");
                        backoff.restarted();
                    }
                }
            }
        })
        .expect("spawning a background thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_panicking_thread_restarts_and_is_counted() {
        let before = TASK_PANICS.with_label_values(&["reload"]).get();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = spawn_thread("reload", "test-supervised", move || {
            if r.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("planted");
            }
        });
        h.join().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(TASK_PANICS.with_label_values(&["reload"]).get() >= before + 2);
    }

    #[tokio::test]
    async fn a_panicking_task_restarts() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        spawn_async("console_sampler", move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("planted");
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn guard_turns_a_panic_into_an_error() {
        assert_eq!(guard("model_load", || 7), Ok(7));
        let e = guard("model_load", || -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(e, "boom 1");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..12).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(&waits[..4], &[100, 200, 400, 800]);
        assert_eq!(*waits.last().unwrap(), 25_600);
    }
}

//! Gives the heap's free memory back to the kernel when traffic stops.
//!
//! Under load every thread that allocates gets a glibc arena of its own, and what a burst
//! freed stays in those arenas (resident, counted in `RssAnon`) until something asks
//! glibc to return it: after a 10 s load the heavy MLP of benches/load.py kept ~2.5 MB of
//! free heap beyond its ONNX Runtime buffers, and 64 requests of 20 000 strings ~16 MB.
//! Once a second this task reads the process's CPU time (one system call, nothing on the
//! request path); when a quiet second (under [`QUIET`] of CPU) follows a busy one, or
//! thin traffic has added up to [`ACCUMULATED`] of CPU since the last trim, it calls
//! `malloc_trim(0)`, which unmaps the free pages of every arena. A steady load never
//! triggers it, and an idle server trims once, not every second.
//! Ground floor: imports nothing of vigil but the supervisor.

use std::time::Duration;

/// A second with less CPU than this (of all threads) counts as quiet.
pub const QUIET: Duration = Duration::from_millis(20);

/// CPU used since the last trim, in quiet seconds only, that makes the next quiet second
/// trim too (thin traffic fragments the heap as well, slowly).
pub const ACCUMULATED: Duration = Duration::from_secs(1);

/// The process's CPU time so far (all threads, user + system).
fn process_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Returns the free memory of every malloc arena to the kernel (glibc only).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Decides, from one CPU-time reading a second, when to trim.
#[derive(Debug, Default)]
pub struct Trigger {
    last: Option<Duration>,
    /// The previous second was not quiet.
    busy: bool,
    since_trim: Duration,
}

impl Trigger {
    /// The CPU time read now; true when a trim is due.
    pub fn tick(&mut self, now: Duration) -> bool {
        let Some(last) = self.last.replace(now) else {
            return false;
        };
        let used = now.saturating_sub(last);
        let quiet = used < QUIET;
        let was_busy = std::mem::replace(&mut self.busy, !quiet);
        self.since_trim += used;
        if quiet && (was_busy || self.since_trim >= ACCUMULATED) {
            self.since_trim = Duration::ZERO;
            return true;
        }
        false
    }
}

/// Starts the trimming task (supervised); it stops with the runtime.
pub fn spawn() {
    crate::supervise::spawn_async("memory_trim", || async {
        let mut trigger = Trigger::default();
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if process_cpu_time().is_some_and(|now| trigger.tick(now)) {
                trim();
                tracing::debug!("idle after a busy spell: heap trimmed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn trims_once_when_a_busy_spell_ends() {
        let mut t = Trigger::default();
        let mut cpu = ms(0);
        assert!(!t.tick(cpu), "the first reading only sets the base");
        // Busy: 900 ms of CPU a second, never trimmed while it lasts.
        for _ in 0..5 {
            cpu += ms(900);
            assert!(!t.tick(cpu));
        }
        // Quiet: trimmed once, then not again while nothing happens.
        cpu += ms(1);
        assert!(t.tick(cpu));
        for _ in 0..5 {
            cpu += ms(1);
            assert!(!t.tick(cpu));
        }
    }

    #[test]
    fn thin_traffic_does_not_trim_every_second() {
        let mut t = Trigger::default();
        let mut cpu = ms(0);
        t.tick(cpu);
        // 10 ms a second (quiet every second): one trim per ACCUMULATED of work.
        let trims = (0..300)
            .filter(|_| {
                cpu += ms(10);
                t.tick(cpu)
            })
            .count();
        assert_eq!(trims, 300 * 10 / ACCUMULATED.as_millis() as usize);
    }

    #[test]
    fn a_short_burst_is_trimmed_after() {
        let mut t = Trigger::default();
        let mut cpu = ms(0);
        t.tick(cpu);
        cpu += ms(2);
        assert!(!t.tick(cpu), "idle");
        cpu += ms(60);
        assert!(!t.tick(cpu), "a burst of 60 ms: busy");
        cpu += ms(2);
        assert!(t.tick(cpu), "quiet after it");
    }

    #[test]
    fn the_process_clock_reads_and_trim_runs() {
        let a = process_cpu_time().expect("CLOCK_PROCESS_CPUTIME_ID");
        let v: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        drop(v);
        trim();
        assert!(process_cpu_time().expect("clock") >= a);
    }
}

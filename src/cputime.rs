//! CPU time of the calling thread: what a computation cost, whatever else the machine
//! was running meanwhile (wall time grows with every preemption on a shared machine).
//! One system call (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, a few hundred ns: not in
//! the vDSO), so the request path only samples it. Ground floor: imports nothing of vigil.

use std::time::Duration;

/// The calling thread's CPU time so far (user + system); `None` where the clock is
/// missing.
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Runs `f` and returns what it took of this thread's CPU (`None`: no clock).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<Duration>) {
    let start = thread_cpu_time();
    let out = f();
    let cpu = match (start, thread_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    (out, cpu)
}

#[cfg(test)]
mod tests {
    #[test]
    fn spinning_costs_cpu_and_sleeping_does_not() {
        let ((), spin) = super::measure(|| {
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(20) {
                std::hint::black_box(0);
            }
        });
        let ((), sleep) =
            super::measure(|| std::thread::sleep(std::time::Duration::from_millis(20)));
        let (spin, sleep) = (spin.unwrap(), sleep.unwrap());
        // A loaded machine may take some of the 20 ms away from the spinner, not all.
        assert!(spin >= std::time::Duration::from_millis(2), "{spin:?}");
        assert!(sleep < std::time::Duration::from_millis(2), "{sleep:?}");
    }
}

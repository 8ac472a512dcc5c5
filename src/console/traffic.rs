//! Request rate, error rate and latency percentiles over the last minutes, for the
//! console, from vigil's own counters: a background task copies each served version's
//! cumulative counters every [`SAMPLE_EVERY`]; a view subtracts the oldest copy within
//! [`SPAN`] from the live counters. Nothing is added to the request path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::CounterSample;
use crate::serving::Server;

/// How often the counters are copied.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back the console looks.
pub const SPAN: Duration = Duration::from_secs(300);

/// What one version did over the last [`SPAN`] (or since it was first sampled).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrafficView {
    /// Seconds the figures cover.
    pub seconds: f64,
    pub requests: u64,
    /// Requests that did not succeed (bad request, overloaded, error).
    pub failed: u64,
    pub rate: f64,
    pub error_rate: f64,
    /// Latency of successful requests, estimated from the histogram buckets as
    /// Prometheus's `histogram_quantile` does; `None` without successes.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// Copies of one version's counters, oldest first.
type Series = VecDeque<(Instant, CounterSample)>;

#[derive(Default)]
pub struct Traffic {
    series: Mutex<HashMap<(String, u64), Series>>,
}

impl Traffic {
    /// Starts the sampling task (on the current tokio runtime, for the life of the process).
    pub fn start(server: Arc<Server>) -> Arc<Traffic> {
        let traffic = Arc::new(Traffic::default());
        let t = traffic.clone();
        crate::supervise::spawn_async("console_sampler", move || {
            let (t, server) = (t.clone(), server.clone());
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    t.sample(&server, Instant::now());
                }
            }
        });
        traffic
    }

    /// Copies every served version's counters; forgets versions no longer served.
    pub fn sample(&self, server: &Server, now: Instant) {
        let table = server.table();
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        series.retain(|(m, v), _| {
            table
                .models
                .get(m)
                .is_some_and(|e| e.versions.contains_key(v))
        });
        for entry in table.models.values() {
            for v in entry.versions.values() {
                let current = v.metrics.sample();
                let q = series
                    .entry((entry.name.clone(), v.version))
                    .or_insert_with(|| {
                        // First sight: the counters started at zero when it loaded.
                        VecDeque::from([(v.loaded_at.min(now), current.zeroed())])
                    });
                q.push_back((now, current));
                while q
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > SPAN + SAMPLE_EVERY)
                {
                    q.pop_front();
                }
            }
        }
    }

    /// The version's figures from the oldest copy within [`SPAN`] to `current`.
    pub fn view(
        &self,
        model: &str,
        version: u64,
        current: &CounterSample,
        now: Instant,
    ) -> Option<TrafficView> {
        let series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let q = series.get(&(model.to_string(), version))?;
        let (at, base) = q
            .iter()
            .find(|(at, _)| now.duration_since(*at) <= SPAN + SAMPLE_EVERY / 2)?;
        let seconds = now.duration_since(*at).as_secs_f64();
        if seconds < 1.0 {
            return None;
        }
        Some(difference(base, current, seconds))
    }
}

/// The figures between two copies of one version's counters, `seconds` apart.
pub fn difference(base: &CounterSample, current: &CounterSample, seconds: f64) -> TrafficView {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let ok = d(base.success, current.success);
    let failed = d(base.failed(), current.failed());
    let requests = ok + failed;
    let buckets: Vec<(f64, u64)> = current
        .buckets
        .iter()
        .zip(&base.buckets)
        .map(|(&(le, c), &(_, b))| (le, d(b, c)))
        .collect();
    let latency_count = d(base.latency_count, current.latency_count);
    TrafficView {
        seconds,
        requests,
        failed,
        rate: requests as f64 / seconds,
        error_rate: if requests == 0 {
            0.0
        } else {
            failed as f64 / requests as f64
        },
        p50: quantile(0.5, &buckets, latency_count),
        p99: quantile(0.99, &buckets, latency_count),
    }
}

/// `histogram_quantile`: linear interpolation inside the bucket holding the rank;
/// cumulative `buckets` as (upper bound, count), `total` including the +Inf bucket.
pub fn quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for &(le, count) in buckets {
        if count as f64 >= rank {
            let inside = (count - below) as f64;
            if inside == 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below as f64) / inside);
        }
        lower = le;
        below = count;
    }
    // In the +Inf bucket: the highest finite bound, as Prometheus answers.
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(success: u64, errors: u64, buckets: &[(f64, u64)]) -> CounterSample {
        CounterSample {
            success,
            bad_request: 0,
            overloaded: 0,
            error: errors,
            latency_count: success,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        // 100 observations: 50 under 1 ms, 40 more under 2 ms, the last 10 under 4 ms.
        let b = [(0.001, 50), (0.002, 90), (0.004, 100)];
        assert!((quantile(0.5, &b, 100).unwrap() - 0.001).abs() < 1e-12);
        assert!((quantile(0.7, &b, 100).unwrap() - 0.0015).abs() < 1e-12);
        assert!((quantile(0.99, &b, 100).unwrap() - 0.0038).abs() < 1e-12);
        assert_eq!(quantile(0.5, &b, 0), None);
        // Observations beyond the last bound: the last bound.
        assert_eq!(quantile(0.99, &[(0.001, 10)], 20), Some(0.001));
    }

    #[test]
    fn differences_cover_only_the_span() {
        let base = sample(100, 5, &[(0.001, 60), (0.01, 100)]);
        let now = sample(300, 15, &[(0.001, 60), (0.01, 300)]);
        let v = difference(&base, &now, 10.0);
        assert_eq!(v.requests, 210);
        assert_eq!(v.failed, 10);
        assert!((v.rate - 21.0).abs() < 1e-12);
        assert!((v.error_rate - 10.0 / 210.0).abs() < 1e-12);
        // All 200 new successes fell in (1 ms, 10 ms]: the median is that bucket's middle.
        assert!((v.p50.unwrap() - 0.0055).abs() < 1e-12);
    }
}

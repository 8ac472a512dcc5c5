//! Every Prometheus metric family vigil exports, registered in one place.
//!
//! Label values come from enums, never from client input, so a client cannot grow the
//! series count. Per-version handles are resolved once at load ([`VersionMetrics`]) so
//! the request path never looks a label up.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// How a request ended, as the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    BadRequest,
    Overloaded,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::BadRequest => "bad_request",
            Outcome::Overloaded => "overloaded",
            Outcome::Error => "error",
        }
    }
}

/// Latency buckets from 25 µs to 10 s: small models answer in tens of microseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    queue_duration: HistogramVec,
    compute_duration: HistogramVec,
    model_loaded: IntGaugeVec,
}

fn histogram(name: &str, help: &str) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        &["model", "version"],
    )
    .expect("valid histogram definition")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "vigil_inference_requests_total",
                "Inference requests by model, version and outcome (success, bad_request, overloaded, error).",
            ),
            &["model", "version", "outcome"],
        )
        .expect("valid counter definition");
        let request_duration = histogram(
            "vigil_inference_request_duration_seconds",
            "Time from a decoded inference request to its encoded answer, in seconds.",
        );
        let queue_duration = histogram(
            "vigil_inference_queue_duration_seconds",
            "Time an inference request waited for a worker, in seconds.",
        );
        let compute_duration = histogram(
            "vigil_inference_compute_duration_seconds",
            "Time the engine spent running the model for a request, in seconds.",
        );
        let model_loaded = IntGaugeVec::new(
            Opts::new(
                "vigil_model_loaded",
                "1 for each model version loaded and served.",
            ),
            &["model", "version"],
        )
        .expect("valid gauge definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(queue_duration.clone()),
            Box::new(compute_duration.clone()),
            Box::new(model_loaded.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        Metrics {
            registry,
            requests,
            request_duration,
            queue_duration,
            compute_duration,
            model_loaded,
        }
    }

    /// Resolves the per-version handles once and marks the version loaded.
    pub fn version(&self, model: &str, version: u64) -> VersionMetrics {
        let v = version.to_string();
        let labels = [model, v.as_str()];
        let outcome = |o: Outcome| self.requests.with_label_values(&[model, &v, o.as_str()]);
        self.model_loaded.with_label_values(&labels).set(1);
        VersionMetrics {
            success: outcome(Outcome::Success),
            bad_request: outcome(Outcome::BadRequest),
            overloaded: outcome(Outcome::Overloaded),
            error: outcome(Outcome::Error),
            request: self.request_duration.with_label_values(&labels),
            queue: self.queue_duration.with_label_values(&labels),
            compute: self.compute_duration.with_label_values(&labels),
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One version's metric handles, resolved once.
pub struct VersionMetrics {
    success: IntCounter,
    bad_request: IntCounter,
    overloaded: IntCounter,
    error: IntCounter,
    pub request: Histogram,
    pub queue: Histogram,
    pub compute: Histogram,
}

impl VersionMetrics {
    pub fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => &self.success,
            Outcome::BadRequest => &self.bad_request,
            Outcome::Overloaded => &self.overloaded,
            Outcome::Error => &self.error,
        }
        .inc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_labels() {
        let m = Metrics::new();
        let v = m.version("iris", 2);
        v.count(Outcome::Success);
        v.count(Outcome::BadRequest);
        v.request.observe(0.001);
        let text = m.render();
        assert!(text.contains(
            "vigil_inference_requests_total{model=\"iris\",outcome=\"success\",version=\"2\"} 1"
        ));
        assert!(text.contains("vigil_model_loaded{model=\"iris\",version=\"2\"} 1"));
        assert!(text.contains(
            "vigil_inference_request_duration_seconds_count{model=\"iris\",version=\"2\"} 1"
        ));
    }
}

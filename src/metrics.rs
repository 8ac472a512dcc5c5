//! Every Prometheus metric family vigil exports, registered in one place.
//!
//! Label values come from enums, never from client input, so a client cannot grow the
//! series count. Per-version handles are resolved once at load ([`VersionMetrics`]) so
//! the request path never looks a label up.
//!
//! Metrics receive numbers, not domain reports: this file imports nothing of vigil but
//! `supervise` (ground floor). Domains that export richer things resolve their own
//! handles from the families registered here: `monitor::metrics` (drift) and
//! `retrain::metrics` (the hook's counters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What a loaded version does, as the `role` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Answers unpinned requests.
    Stable,
    /// Gets the canary share (split) or a copy of traffic (shadow).
    Canary,
    /// Loaded by the version policy; answers only requests pinned to it.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stable => "stable",
            Role::Canary => "canary",
            Role::Standby => "standby",
        }
    }
}

/// How a request ended, as the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    BadRequest,
    Overloaded,
    Error,
}

/// The front a request came in on, as the `protocol` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
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
    batch_size: HistogramVec,
    execution_inline: IntGaugeVec,
    /// Inference requests between validation and answer.
    pub in_flight: IntGauge,
    /// Jobs waiting for a worker (set at scrape time).
    pub queue_depth: IntGauge,
    auth_failures: IntCounterVec,
    protocol_requests: IntCounterVec,
    /// Open HTTP connections by listener (`main`, `admin`).
    pub http_connections: IntGaugeVec,
    /// Times a listener stopped accepting because `--max-connections` were open.
    pub http_connection_limit_waits: IntCounterVec,
    /// Inference requests whose client closed the connection before the body arrived
    /// (not counted in `vigil_inference_requests_total`).
    pub requests_abandoned: IntCounter,
    /// Failed syncs with a model registry, by source.
    pub registry_errors: IntCounterVec,
    /// 1 while the last sync with a model registry succeeded.
    pub registry_up: IntGaugeVec,
    /// Per registry-followed model: 1 while its last sync succeeded.
    pub registry_model_up: IntGaugeVec,
    model_loads: IntCounterVec,
    model_load_duration: HistogramVec,
    /// Versions of a model that cannot be served now (failed loads, a rejected config).
    versions_unavailable: IntGaugeVec,
    canary_weight: IntGaugeVec,
    drift_score: GaugeVec,
    drift_share: GaugeVec,
    drift_status: IntGaugeVec,
    drift_windows: IntCounterVec,
    drift_window_rows: IntGaugeVec,
    /// Feature names per (model, version), to remove their series with the version.
    drift_features: FeatureNames,
    fleet: FleetFamilies,
    retrain: RetrainCounters,
    canary: CanaryFamilies,
    payload: PayloadFamilies,
}

/// The payload log's families (`payload` counts through them).
#[derive(Clone)]
pub struct PayloadFamilies {
    /// `vigil_payload_records_total{model}`: records written to the payload log.
    pub written: IntCounterVec,
    /// `vigil_payload_dropped_total{model,reason}`: sampled records not written.
    pub dropped: IntCounterVec,
    /// `vigil_payload_queue_bytes`: tensor bytes waiting for the writer.
    pub queue_bytes: IntGauge,
    /// `vigil_payload_sink_bytes`: CloudEvents body bytes queued or in flight.
    pub sink_bytes: IntGauge,
    /// `vigil_feedback_total{model,result}`: truths received, by what became of them.
    pub feedback: IntCounterVec,
    /// `vigil_feedback_pending{model}`: predicted rows waiting for their label.
    pub pending: IntGaugeVec,
    /// `vigil_model_quality{model,version,metric}`: live quality over the rolling window.
    pub quality: GaugeVec,
    /// The `metric` labels each (model, version) exported, so that
    /// [`Metrics::remove_version`] removes them with the version.
    pub quality_names: QualityNames,
}

/// Per (model, version): the `metric` labels of `vigil_model_quality` exported.
pub type QualityNames = Arc<Mutex<HashMap<(String, u64), std::collections::BTreeSet<String>>>>;

impl PayloadFamilies {
    /// Removes a model's feedback series (pending rows, every version's live quality):
    /// its feedback was turned off, so no series may keep showing a value.
    pub fn clear_feedback(&self, model: &str) {
        let _ = self.pending.remove_label_values(&[model]);
        let mut names = self
            .quality_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names.retain(|(m, version), metrics| {
            if m != model {
                return true;
            }
            let v = version.to_string();
            for metric in metrics.iter() {
                let _ = self.quality.remove_label_values(&[model, &v, metric]);
            }
            false
        });
    }
}

/// The canary judge's families (`serving::analysis` owns the series).
#[derive(Clone)]
pub struct CanaryFamilies {
    /// `vigil_canary_step{model}`: the 1-based step being judged, 0 when none.
    pub step: IntGaugeVec,
    /// `vigil_canary_decisions_total{model,decision,check}`.
    pub decisions: IntCounterVec,
    /// `vigil_shadow_agreement{model,version}`: share of rows where the shadow canary
    /// gave the stable version's label, over the step so far.
    pub agreement: GaugeVec,
    /// `vigil_shadow_skipped_total{model}`: requests whose shadow copy was not sent, every
    /// shadow slot being busy (four per inference worker).
    pub shadow_skipped: IntCounterVec,
}

/// The drift families a version's monitor exports to (`monitor::metrics` resolves its
/// handles from them). It notes the series it creates in `names` and `fleet.series`, so
/// that [`Metrics::remove_version`] removes them with the version.
#[derive(Clone)]
pub struct DriftFamilies {
    pub score: GaugeVec,
    pub share: GaugeVec,
    pub status: IntGaugeVec,
    pub windows: IntCounterVec,
    pub window_rows: IntGaugeVec,
    /// Where the feature names are noted, so the series go when the version goes.
    pub names: FeatureNames,
    pub fleet: FleetFamilies,
}

/// The per-bin families fleet drift is computed from (by Prometheus, across replicas).
#[derive(Clone)]
pub struct FleetFamilies {
    pub bin_rows: IntCounterVec,
    pub reference: GaugeVec,
    /// The (side, feature, bin) labels each version exported, to remove them with it.
    pub series: BinSeries,
}

/// Per (model, version): the (side, feature, bin) labels exported.
pub type BinSeries = Arc<Mutex<HashMap<(String, u64), Vec<(Side, String, String)>>>>;

/// Which end of the model a drift series is about: the `side` label of every drift
/// family. Input and output features are named independently (a model with one input
/// matrix and one output matrix has `f0` on both sides), so the label keeps them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Input,
    Output,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// The retrain hook's families (the hook reports through them: `retrain::metrics`).
#[derive(Clone)]
pub struct RetrainCounters {
    pub events: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub pending: IntGaugeVec,
    pub dead: IntGaugeVec,
}

/// Per (model, version): the (side, feature, method) labels of the scores exported.
pub type FeatureNames = Arc<Mutex<HashMap<(String, u64), Vec<(Side, String, &'static str)>>>>;

/// The drift methods, as the `method` label of `vigil_drift_score`.
pub const DRIFT_METHODS: [&str; 7] = [
    "psi",
    "js",
    "ks_statistic",
    "ks_pvalue",
    "wasserstein",
    "chi2_statistic",
    "chi2_pvalue",
];

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
                "1 for each model version loaded, by role (stable, canary, standby).",
            ),
            &["model", "version", "role"],
        )
        .expect("valid gauge definition");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("vigil_inference_batch_size", "Rows per model execution.").buckets(
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
            &["model", "version"],
        )
        .expect("valid histogram definition");
        let execution_inline = IntGaugeVec::new(
            Opts::new(
                "vigil_inference_inline",
                "1 when a version's compute runs inline on the async threads, 0 on the worker \
                 pool ([execution] mode).",
            ),
            &["model", "version"],
        )
        .expect("valid gauge definition");
        let in_flight = IntGauge::new(
            "vigil_inference_in_flight",
            "Inference requests being validated, queued or run.",
        )
        .expect("valid gauge definition");
        let queue_depth = IntGauge::new(
            "vigil_inference_queue_depth",
            "Inference jobs waiting for a worker.",
        )
        .expect("valid gauge definition");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "vigil_auth_failures_total",
                "Requests refused for a missing or wrong token (401) or a non-loopback peer (403), by endpoint class.",
            ),
            &["endpoint", "status"],
        )
        .expect("valid counter definition");
        let protocol_requests = IntCounterVec::new(
            Opts::new(
                "vigil_protocol_requests_total",
                "Inference requests by front (protocol: http, grpc), model and outcome; the per-version families above count both fronts together.",
            ),
            &["protocol", "model", "outcome"],
        )
        .expect("valid counter definition");
        let http_connections = IntGaugeVec::new(
            Opts::new(
                "vigil_http_connections",
                "Open connections by listener (main, admin, grpc).",
            ),
            &["listener"],
        )
        .expect("valid gauge definition");
        let http_connection_limit_waits = IntCounterVec::new(
            Opts::new(
                "vigil_http_connection_limit_waits_total",
                "Times a listener stopped accepting because --max-connections connections were open.",
            ),
            &["listener"],
        )
        .expect("valid counter definition");
        let requests_abandoned = IntCounter::new(
            "vigil_http_requests_abandoned_total",
            "Inference requests whose client closed the connection before the body arrived (not counted as requests).",
        )
        .expect("valid counter definition");
        let registry_errors = IntCounterVec::new(
            Opts::new(
                "vigil_registry_errors_total",
                "Failed syncs with a model registry (unreachable, error answers, refused versions), by source.",
            ),
            &["source"],
        )
        .expect("valid counter definition");
        let registry_up = IntGaugeVec::new(
            Opts::new(
                "vigil_registry_up",
                "1 while the model registry answers (0 after it was unreachable or answered a server error), by source.",
            ),
            &["source"],
        )
        .expect("valid gauge definition");
        let registry_model_up = IntGaugeVec::new(
            Opts::new(
                "vigil_registry_model_up",
                "1 while the last sync of a registry-followed model succeeded (0: see the log and the repository index), by source and model.",
            ),
            &["source", "model"],
        )
        .expect("valid gauge definition");
        let model_loads = IntCounterVec::new(
            Opts::new(
                "vigil_model_load_total",
                "Model version load attempts by outcome (success, failure).",
            ),
            &["model", "outcome"],
        )
        .expect("valid counter definition");
        let versions_unavailable = IntGaugeVec::new(
            Opts::new(
                "vigil_model_versions_unavailable",
                "Versions of a model that cannot be served now (failed to load, or the model's \
                 config.toml is rejected: counted as one), by model. Alerts read this gauge: \
                 it is right from a model's first failure.",
            ),
            &["model"],
        )
        .expect("valid gauge definition");
        let model_load_duration = HistogramVec::new(
            HistogramOpts::new(
                "vigil_model_load_duration_seconds",
                "Time to load and warm up a model version, in seconds.",
            )
            .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0]),
            &["model"],
        )
        .expect("valid histogram definition");
        let canary_weight = IntGaugeVec::new(
            Opts::new(
                "vigil_rollout_canary_weight",
                "Percent of unpinned requests the canary answers (0 without a canary).",
            ),
            &["model"],
        )
        .expect("valid gauge definition");
        let vv = ["model", "version"];
        let drift_score = GaugeVec::new(
            Opts::new(
                "vigil_drift_score",
                "Drift score of a feature in the last closed window, by method (side: input or output; a method the window has no value for has no series).",
            ),
            &["model", "version", "side", "feature", "method"],
        )
        .expect("valid gauge definition");
        let drift_share = GaugeVec::new(
            Opts::new(
                "vigil_drift_share",
                "Share of a version's input features that drifted in the last closed window.",
            ),
            &vv,
        )
        .expect("valid gauge definition");
        let drift_status = IntGaugeVec::new(
            Opts::new(
                "vigil_drift_status",
                "1 while a version is drifting (enough drifted windows in a row), else 0.",
            ),
            &vv,
        )
        .expect("valid gauge definition");
        let drift_windows = IntCounterVec::new(
            Opts::new(
                "vigil_drift_windows_total",
                "Closed drift windows by result: scored (ok, drift), or dropped unscored (the scorer's queue was full).",
            ),
            &["model", "version", "result"],
        )
        .expect("valid counter definition");
        let drift_window_rows = IntGaugeVec::new(
            Opts::new(
                "vigil_drift_window_rows",
                "Rows in a version's current (open) drift window.",
            ),
            &vv,
        )
        .expect("valid gauge definition");
        let retrain = RetrainCounters {
            events: IntCounterVec::new(
                Opts::new(
                    "vigil_retrain_events_total",
                    "Retrain events created, by reason (drift, quality, manual, canary).",
                ),
                &["model", "reason"],
            )
            .expect("valid counter definition"),
            deliveries: IntCounterVec::new(
                Opts::new(
                    "vigil_retrain_deliveries_total",
                    "Retrain webhook delivery attempts by outcome (delivered, retry, rejected).",
                ),
                &["model", "outcome"],
            )
            .expect("valid counter definition"),
            pending: IntGaugeVec::new(
                Opts::new(
                    "vigil_retrain_pending",
                    "Retrain events waiting for delivery.",
                ),
                &["model"],
            )
            .expect("valid gauge definition"),
            dead: IntGaugeVec::new(
                Opts::new(
                    "vigil_retrain_dead_letters",
                    "Retrain events that exhausted their attempts (dead letters).",
                ),
                &["model"],
            )
            .expect("valid gauge definition"),
        };
        for c in [
            Box::new(retrain.events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(retrain.deliveries.clone()),
            Box::new(retrain.pending.clone()),
            Box::new(retrain.dead.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        let fleet = FleetFamilies {
            bin_rows: IntCounterVec::new(
                Opts::new(
                    "vigil_drift_bin_rows_total",
                    "Rows counted since start per reference bin (side: input; bin: index into the reference edges, the category, \"other\", or \"nan\" for NaN/inf); summed over replicas by the fleet rules.",
                ),
                &["model", "version", "side", "feature", "bin"],
            )
            .expect("valid counter definition"),
            reference: GaugeVec::new(
                Opts::new(
                    "vigil_drift_reference_proportion",
                    "The reference's share of training rows per bin (same labels as vigil_drift_bin_rows_total).",
                ),
                &["model", "version", "side", "feature", "bin"],
            )
            .expect("valid gauge definition"),
            series: Arc::default(),
        };
        for c in [
            Box::new(fleet.bin_rows.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fleet.reference.clone()),
            Box::new(drift_score.clone()),
            Box::new(drift_share.clone()),
            Box::new(drift_status.clone()),
            Box::new(drift_windows.clone()),
            Box::new(drift_window_rows.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        let canary = CanaryFamilies {
            step: IntGaugeVec::new(
                Opts::new(
                    "vigil_canary_step",
                    "The canary analysis step being judged (1-based; 0 when no analysis runs).",
                ),
                &["model"],
            )
            .expect("valid gauge definition"),
            decisions: IntCounterVec::new(
                Opts::new(
                    "vigil_canary_decisions_total",
                    "Canary analysis decisions (step_passed, promoted, rolled_back, held) by the check that decided (errors, latency, output_psi, agreement; none; traffic).",
                ),
                &["model", "decision", "check"],
            )
            .expect("valid counter definition"),
            agreement: GaugeVec::new(
                Opts::new(
                    "vigil_shadow_agreement",
                    "Share of rows where a shadow canary gave the stable version's label, over the current analysis step.",
                ),
                &["model", "version"],
            )
            .expect("valid gauge definition"),
            shadow_skipped: IntCounterVec::new(
                Opts::new(
                    "vigil_shadow_skipped_total",
                    "Requests whose shadow copy was not sent because every shadow slot was busy (the shadow canary fell behind the stable version), by model.",
                ),
                &["model"],
            )
            .expect("valid counter definition"),
        };
        for c in [
            Box::new(canary.step.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(canary.decisions.clone()),
            Box::new(canary.agreement.clone()),
            Box::new(canary.shadow_skipped.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        let payload = PayloadFamilies {
            written: IntCounterVec::new(
                Opts::new(
                    "vigil_payload_records_total",
                    "Sampled requests written to the payload log, by model.",
                ),
                &["model"],
            )
            .expect("valid counter definition"),
            dropped: IntCounterVec::new(
                Opts::new(
                    "vigil_payload_dropped_total",
                    "Sampled requests the payload log did not keep, by model and reason (queue_full: the writer fell behind; write_error: the directory or disk refused the write; no_dir: sample > 0 without --payload-dir or cloudevents_url; sink_full: the CloudEvents sink fell behind; sink_error: the CloudEvents sink refused, failed or timed out).",
                ),
                &["model", "reason"],
            )
            .expect("valid counter definition"),
            queue_bytes: IntGauge::new(
                "vigil_payload_queue_bytes",
                "Tensor bytes of payload records waiting for the writer thread.",
            )
            .expect("valid gauge definition"),
            sink_bytes: IntGauge::new(
                "vigil_payload_sink_bytes",
                "Body bytes of CloudEvents queued for the sink or in flight.",
            )
            .expect("valid gauge definition"),
            feedback: IntCounterVec::new(
                Opts::new(
                    "vigil_feedback_total",
                    "Ground-truth labels received, by model and result (joined; late: the prediction aged out of feedback_window or capacity; unknown: id never seen or already labelled; invalid: row count differs).",
                ),
                &["model", "result"],
            )
            .expect("valid counter definition"),
            pending: IntGaugeVec::new(
                Opts::new(
                    "vigil_feedback_pending",
                    "Predicted rows kept for the feedback join and not yet labelled, by model.",
                ),
                &["model"],
            )
            .expect("valid gauge definition"),
            quality: GaugeVec::new(
                Opts::new(
                    "vigil_model_quality",
                    "Live quality over the version's rolling window of labelled rows (accuracy, macro_f1, precision_<class>, recall_<class>, f1_<class>, mae, rmse, window_rows, labels_received), and expected_accuracy: the calibrated mean top probability over recent predictions, labelled or not.",
                ),
                &["model", "version", "metric"],
            )
            .expect("valid gauge definition"),
            quality_names: Arc::new(Mutex::new(HashMap::new())),
        };
        for c in [
            Box::new(payload.written.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(payload.dropped.clone()),
            Box::new(payload.queue_bytes.clone()),
            Box::new(payload.sink_bytes.clone()),
            Box::new(payload.feedback.clone()),
            Box::new(payload.pending.clone()),
            Box::new(payload.quality.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(queue_duration.clone()),
            Box::new(compute_duration.clone()),
            Box::new(model_loaded.clone()),
            Box::new(batch_size.clone()),
            Box::new(execution_inline.clone()),
            Box::new(in_flight.clone()),
            Box::new(queue_depth.clone()),
            Box::new(auth_failures.clone()),
            Box::new(protocol_requests.clone()),
            Box::new(http_connections.clone()),
            Box::new(http_connection_limit_waits.clone()),
            Box::new(requests_abandoned.clone()),
            Box::new(registry_errors.clone()),
            Box::new(registry_up.clone()),
            Box::new(registry_model_up.clone()),
            Box::new(model_loads.clone()),
            Box::new(model_load_duration.clone()),
            Box::new(versions_unavailable.clone()),
            Box::new(canary_weight.clone()),
            Box::new(crate::supervise::TASK_PANICS.clone()),
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
            batch_size,
            execution_inline,
            in_flight,
            queue_depth,
            auth_failures,
            protocol_requests,
            http_connections,
            http_connection_limit_waits,
            requests_abandoned,
            registry_errors,
            registry_up,
            registry_model_up,
            model_loads,
            model_load_duration,
            versions_unavailable,
            canary_weight,
            drift_score,
            drift_share,
            drift_status,
            drift_windows,
            drift_window_rows,
            drift_features: Arc::new(Mutex::new(HashMap::new())),
            fleet,
            retrain,
            canary,
            payload,
        }
    }

    /// The payload log's families.
    pub fn payload(&self) -> PayloadFamilies {
        self.payload.clone()
    }

    /// A request whose shadow copy found no free slot.
    pub fn count_shadow_skipped(&self, model: &str) {
        self.canary.shadow_skipped.with_label_values(&[model]).inc();
    }

    /// The canary judge's families.
    pub fn canary(&self) -> CanaryFamilies {
        self.canary.clone()
    }

    /// The retrain hook's counters.
    pub fn retrain(&self) -> RetrainCounters {
        self.retrain.clone()
    }

    /// The drift families, from which the monitor resolves a version's handles.
    pub fn drift(&self) -> DriftFamilies {
        DriftFamilies {
            score: self.drift_score.clone(),
            share: self.drift_share.clone(),
            status: self.drift_status.clone(),
            windows: self.drift_windows.clone(),
            window_rows: self.drift_window_rows.clone(),
            names: self.drift_features.clone(),
            fleet: self.fleet.clone(),
        }
    }

    /// Counts a refused request (`endpoint`: admin, api, metrics; `status`: 401, 403).
    /// One answered inference request of `model` on the front `protocol`.
    pub fn count_protocol(&self, protocol: Protocol, model: &str, outcome: Outcome) {
        self.protocol_requests
            .with_label_values(&[protocol.as_str(), model, outcome.as_str()])
            .inc();
    }

    pub fn auth_failure(&self, endpoint: &str, status: u16) {
        self.auth_failures
            .with_label_values(&[endpoint, &status.to_string()])
            .inc();
    }

    /// Counts one load attempt of `model`.
    pub fn count_load(&self, model: &str, ok: bool, took: Duration) {
        let outcome = if ok { "success" } else { "failure" };
        self.model_loads.with_label_values(&[model, outcome]).inc();
        self.model_load_duration
            .with_label_values(&[model])
            .observe(took.as_secs_f64());
    }

    /// Replaces a model's loaded-version series (`old` removed, `new` set to 1) and its
    /// canary weight (`None`: no canary).
    pub fn publish_roles(
        &self,
        model: &str,
        old: Vec<(u64, Role)>,
        new: Vec<(u64, Role)>,
        canary_weight: Option<u8>,
    ) {
        // Counters that alerts read with increase() exist at 0 from the model's first
        // publish, so that a first failure is an increase.
        for outcome in ["success", "failure"] {
            self.model_loads.with_label_values(&[model, outcome]);
        }
        for outcome in ["delivered", "retry", "rejected"] {
            self.retrain.deliveries.with_label_values(&[model, outcome]);
        }
        for (v, role) in old {
            let _ = self
                .model_loaded
                .remove_label_values(&[model, &v.to_string(), role.as_str()]);
        }
        for (v, role) in new {
            self.model_loaded
                .with_label_values(&[model, &v.to_string(), role.as_str()])
                .set(1);
        }
        self.canary_weight
            .with_label_values(&[model])
            .set(i64::from(canary_weight.unwrap_or(0)));
    }

    /// How many versions of `model` cannot be served now; `None`: the model is gone.
    pub fn set_unavailable(&self, model: &str, count: Option<usize>) {
        match count {
            Some(n) => self
                .versions_unavailable
                .with_label_values(&[model])
                .set(n as i64),
            None => {
                let _ = self.versions_unavailable.remove_label_values(&[model]);
            }
        }
    }

    /// Drops a version's request series once it is no longer served, so that a long
    /// run of swaps does not grow the registry. (Requests still in flight on it count
    /// into detached handles: a handful of increments lost, not a leak.)
    pub fn remove_version(&self, model: &str, version: u64) {
        let v = version.to_string();
        for o in [
            Outcome::Success,
            Outcome::BadRequest,
            Outcome::Overloaded,
            Outcome::Error,
        ] {
            let _ = self.requests.remove_label_values(&[model, &v, o.as_str()]);
        }
        for h in [
            &self.request_duration,
            &self.queue_duration,
            &self.compute_duration,
            &self.batch_size,
        ] {
            let _ = h.remove_label_values(&[model, &v]);
        }
        let _ = self.execution_inline.remove_label_values(&[model, &v]);
        // Drift series.
        let key = (model.to_string(), version);
        let names = self
            .drift_features
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key)
            .unwrap_or_default();
        for (side, name, method) in &names {
            let _ = self
                .drift_score
                .remove_label_values(&[model, &v, side.as_str(), name, method]);
        }
        let _ = self.drift_share.remove_label_values(&[model, &v]);
        let _ = self.drift_status.remove_label_values(&[model, &v]);
        let _ = self.drift_window_rows.remove_label_values(&[model, &v]);
        for r in ["ok", "drift", "dropped"] {
            let _ = self.drift_windows.remove_label_values(&[model, &v, r]);
        }
        // Quality series (live quality, and the shadow canary's agreement).
        let quality = self
            .payload
            .quality_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key)
            .unwrap_or_default();
        for metric in &quality {
            let _ = self
                .payload
                .quality
                .remove_label_values(&[model, &v, metric]);
        }
        let _ = self.canary.agreement.remove_label_values(&[model, &v]);
        let bins = self
            .fleet
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key)
            .unwrap_or_default();
        for (side, feature, bin) in &bins {
            let l = [
                model,
                v.as_str(),
                side.as_str(),
                feature.as_str(),
                bin.as_str(),
            ];
            let _ = self.fleet.bin_rows.remove_label_values(&l);
            let _ = self.fleet.reference.remove_label_values(&l);
        }
    }

    /// Resolves the per-version handles once.
    pub fn version(&self, model: &str, version: u64) -> VersionMetrics {
        let v = version.to_string();
        let labels = [model, v.as_str()];
        let outcome = |o: Outcome| self.requests.with_label_values(&[model, &v, o.as_str()]);
        VersionMetrics {
            success: outcome(Outcome::Success),
            bad_request: outcome(Outcome::BadRequest),
            overloaded: outcome(Outcome::Overloaded),
            error: outcome(Outcome::Error),
            request: self.request_duration.with_label_values(&labels),
            queue: self.queue_duration.with_label_values(&labels),
            compute: self.compute_duration.with_label_values(&labels),
            batch: self.batch_size.with_label_values(&labels),
            inline: self.execution_inline.with_label_values(&labels),
            protocol: ProtocolCounters {
                family: self.protocol_requests.clone(),
                model: model.to_string(),
                cells: Default::default(),
            },
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
    pub batch: Histogram,
    /// Set when `/metrics` is rendered: the mode can change between scrapes.
    pub inline: IntGauge,
    protocol: ProtocolCounters,
}

/// The version's model's `vigil_protocol_requests_total` series, resolved on first use
/// (a series appears once a request was counted on it, as with `with_label_values` per
/// request, which hashed the labels and took the family's lock on every request). The
/// family is per model, and its series are never removed, so a handle kept by a
/// version that is swapped out still counts into the exposed series.
struct ProtocolCounters {
    family: IntCounterVec,
    model: String,
    /// Indexed by protocol * 4 + outcome.
    cells: [std::sync::OnceLock<IntCounter>; 8],
}

/// A copy of one version's cumulative request counters and latency histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterSample {
    pub success: u64,
    pub bad_request: u64,
    pub overloaded: u64,
    pub error: u64,
    /// Observations in the request-duration histogram.
    pub latency_count: u64,
    /// Its cumulative buckets: (upper bound in seconds, count).
    pub buckets: Vec<(f64, u64)>,
}

impl CounterSample {
    pub fn failed(&self) -> u64 {
        self.bad_request + self.overloaded + self.error
    }

    /// The same buckets with every count at zero.
    pub fn zeroed(&self) -> CounterSample {
        CounterSample {
            success: 0,
            bad_request: 0,
            overloaded: 0,
            error: 0,
            latency_count: 0,
            buckets: self.buckets.iter().map(|&(le, _)| (le, 0)).collect(),
        }
    }
}

impl VersionMetrics {
    /// The counters as they are now (for the console's recent figures).
    pub fn sample(&self) -> CounterSample {
        use prometheus::core::Metric;
        let m = self.request.metric();
        let h = m.get_histogram();
        CounterSample {
            success: self.success.get(),
            bad_request: self.bad_request.get(),
            overloaded: self.overloaded.get(),
            error: self.error.get(),
            latency_count: h.get_sample_count(),
            buckets: h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
        }
    }

    /// One answered inference request of this version's model on the front `protocol`
    /// (what [`Metrics::count_protocol`] counts, without its label lookup).
    pub fn count_protocol(&self, protocol: Protocol, outcome: Outcome) {
        let p = &self.protocol;
        let i = match protocol {
            Protocol::Http => 0,
            Protocol::Grpc => 4,
        } + match outcome {
            Outcome::Success => 0,
            Outcome::BadRequest => 1,
            Outcome::Overloaded => 2,
            Outcome::Error => 3,
        };
        p.cells[i]
            .get_or_init(|| {
                p.family
                    .with_label_values(&[protocol.as_str(), &p.model, outcome.as_str()])
            })
            .inc();
    }

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

/// Raises a gauge while it lives: the decrement runs on drop, so a future dropped
/// mid-await (a client that hung up) or a panic cannot leave the gauge raised.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn raise(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versions_protocol_counter_is_the_models_series() {
        let m = Metrics::new();
        let v1 = m.version("iris", 1);
        let v2 = m.version("iris", 2);
        let line = |protocol: &str, outcome: &str| {
            let want = format!(
                "vigil_protocol_requests_total{{model=\"iris\",outcome=\"{outcome}\",protocol=\"{protocol}\"}} "
            );
            m.render()
                .lines()
                .find_map(|l| l.strip_prefix(want.as_str()).map(str::to_string))
        };
        assert_eq!(line("http", "success"), None, "no series before a request");
        v1.count_protocol(Protocol::Http, Outcome::Success);
        v2.count_protocol(Protocol::Http, Outcome::Success);
        m.count_protocol(Protocol::Http, "iris", Outcome::Success);
        v1.count_protocol(Protocol::Grpc, Outcome::Overloaded);
        v2.count_protocol(Protocol::Http, Outcome::BadRequest);
        assert_eq!(line("http", "success").as_deref(), Some("3"));
        assert_eq!(line("grpc", "overloaded").as_deref(), Some("1"));
        assert_eq!(line("http", "bad_request").as_deref(), Some("1"));
        assert_eq!(line("grpc", "success"), None);
        // A removed version's handle still counts into the model's series.
        m.remove_version("iris", 1);
        v1.count_protocol(Protocol::Http, Outcome::Success);
        assert_eq!(line("http", "success").as_deref(), Some("4"));
    }

    #[test]
    fn families_render_with_labels() {
        let m = Metrics::new();
        let v = m.version("iris", 2);
        v.count(Outcome::Success);
        v.count(Outcome::BadRequest);
        v.request.observe(0.001);
        m.publish_roles(
            "iris",
            vec![],
            vec![(2, Role::Stable), (3, Role::Canary)],
            Some(10),
        );
        m.publish_roles(
            "iris",
            vec![(3, Role::Canary)],
            vec![(3, Role::Standby)],
            None,
        );
        let text = m.render();
        assert!(
            text.contains("vigil_model_loaded{model=\"iris\",role=\"standby\",version=\"3\"} 1")
        );
        assert!(!text.contains("role=\"canary\""));
        assert!(text.contains("vigil_rollout_canary_weight{model=\"iris\"} 0"));
        assert!(text.contains(
            "vigil_inference_requests_total{model=\"iris\",outcome=\"success\",version=\"2\"} 1"
        ));
        assert!(text.contains("vigil_model_loaded{model=\"iris\",role=\"stable\",version=\"2\"} 1"));
        assert!(text.contains(
            "vigil_inference_request_duration_seconds_count{model=\"iris\",version=\"2\"} 1"
        ));
    }
}

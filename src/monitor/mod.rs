//! Drift monitoring: every served row updates streaming statistics of the version's
//! inputs and outputs; closed windows are scored against the reference profile on the
//! scorer thread (off the request path); a detector decides when the version drifts.
//!
//! Hot path ([`Monitor::observe`]): one lock per request (never across requests), then
//! per row and feature a bin search over a handful of edges, a Welford update, min/max
//! and a push into a pre-sized sample buffer — no allocation.

pub mod data;
mod detector;
mod metrics;
mod plan;
pub mod profile;
mod report;
mod scorer;
pub mod stats;
mod window;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::DriftConfig;
use crate::metrics::DriftFamilies;
use crate::rng::Rng;
use crate::tensor::spec::TensorSpec;
use crate::tensor::Tensor;
use detector::Detector;
use metrics::{DriftMetrics, FleetBins};
use profile::{FeatureProfile, Profile, ProfileOptions};
use window::{columns_of, Side};

pub use detector::DriftEvent;
pub use plan::{plan, Extract, FeatureDef, Summary};
pub use report::{
    FeatureScore, ReferenceInfo, VersionReport, WindowPoint, WindowReport, RECENT_WINDOWS,
};
pub use scorer::Scorer;
pub use window::FeatureAcc;

/// The outputs' reference: from the profile (predictions on its training rows), or the
/// first scored window. `rows` is its sample size (the categorical test needs it).
pub(super) struct OutputReference {
    pub(super) features: Vec<FeatureProfile>,
    pub(super) rows: u64,
}

struct State {
    reference: Option<Arc<Profile>>,
    /// Per feature, the open window's bin counts (then NaN/inf) already added to the fleet
    /// counters.
    flushed: Vec<Vec<u64>>,
    /// Output reference, built from the first scored window when the profile has none.
    output_reference: Option<Arc<OutputReference>>,
    inputs: Side,
    outputs: Side,
    rows: u64,
    opened: Instant,
    rng: Rng,
}

/// Drift monitoring of one model version.
pub struct Monitor {
    model: String,
    version: u64,
    config: ArcSwap<DriftConfig>,
    state: Mutex<State>,
    detector: Mutex<Detector>,
    /// Why the version is not monitored, if it is not.
    unmonitored: Option<String>,
    metrics: DriftMetrics,
    /// Per-bin row counters for fleet drift: versions whose reference is a reference.json
    /// (every replica then has the same bins).
    fleet: Option<FleetBins>,
    scorer: Scorer,
    events: Option<crossbeam_channel::Sender<DriftEvent>>,
    /// Closed windows of this version not yet scored (see [`Pending`]).
    pending: AtomicU32,
}

/// A closed window on its way to the scorer.
struct Closed {
    reference: Arc<Profile>,
    out_ref: Option<Arc<OutputReference>>,
    inputs: Side,
    /// None, or ignored, until the outputs have a reference.
    outputs: Option<Side>,
    rows: u64,
    /// Unix time in seconds: when it closed, not when the scorer got to it.
    closed_at: f64,
    /// Unix time in seconds when it opened.
    opened_at: f64,
}

/// One closed window of a monitor waiting for (or being scored by) the scorer: counted
/// while it lives, so a job that panics or is dropped unrun cannot hold the next window
/// open for ever.
struct Pending {
    monitor: Arc<Monitor>,
}

impl Pending {
    fn new(monitor: Arc<Monitor>) -> Pending {
        monitor.pending.fetch_add(1, Ordering::AcqRel);
        Pending { monitor }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.monitor.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a monitor needs to start.
pub struct MonitorSetup<'a> {
    pub model: &'a str,
    pub version: u64,
    pub inputs: &'a [TensorSpec],
    pub outputs: &'a [TensorSpec],
    pub config: DriftConfig,
    /// The version's reference.json, if any (parsed here).
    pub reference_json: Option<Result<Vec<u8>, String>>,
    /// The drift families, from which the monitor resolves its handles.
    pub metrics: DriftFamilies,
    pub scorer: Scorer,
    pub events: Option<crossbeam_channel::Sender<DriftEvent>>,
}

/// Matches a profile's features to the plan: same count, in order.
fn check_reference(p: &Profile, defs: &[FeatureDef]) -> Result<(), String> {
    if p.features.len() != defs.len() {
        let inputs: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        return Err(format!(
            "reference.json has {} features, the model's inputs give {} ({inputs:?})",
            p.features.len(),
            defs.len()
        ));
    }
    Ok(())
}

impl Monitor {
    pub fn new(setup: MonitorSetup<'_>) -> Arc<Monitor> {
        let cfg = setup.config;
        let defs_in = plan(setup.inputs);
        let defs_out = plan(setup.outputs);
        let mut unmonitored = None;
        let reference = match setup.reference_json {
            None => None,
            Some(Err(e)) => {
                unmonitored = Some(format!("reference.json unreadable: {e}"));
                None
            }
            Some(Ok(bytes)) => match Profile::from_json(&bytes)
                .and_then(|p| check_reference(&p, &defs_in).map(|_| p))
            {
                Ok(mut p) => {
                    if p.source.is_empty() {
                        p.source = "reference.json".into();
                    }
                    // Names from the profile (CSV header) win over generated ones.
                    Some(Arc::new(p))
                }
                Err(e) => {
                    tracing::error!(model = setup.model, version = setup.version, error = %e,
                        "reference.json refused; the version serves unmonitored");
                    unmonitored = Some(format!("reference.json refused: {e}"));
                    None
                }
            },
        };
        if defs_in.is_empty() && unmonitored.is_none() {
            unmonitored = Some("no numeric inputs to monitor".into());
        }
        let mut defs_in = defs_in;
        if let Some(p) = &reference {
            for (d, f) in defs_in.iter_mut().zip(&p.features) {
                d.name = f.name.clone();
            }
        }
        let cap = cfg.max_window_sample;
        let rows_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let hint = rows_of(if reference.is_some() {
            cfg.rows_per_window()
        } else {
            cfg.reference_rows
        });
        let output_reference = reference
            .as_ref()
            .filter(|p| p.outputs.len() == defs_out.len() && !p.outputs.is_empty())
            .map(|p| {
                Arc::new(OutputReference {
                    features: p.outputs.clone(),
                    rows: p.rows,
                })
            });
        let metrics = DriftMetrics::new(setup.metrics, setup.model, setup.version);
        let fleet = reference
            .as_ref()
            .filter(|_| unmonitored.is_none())
            .map(|p| metrics.fleet_bins(crate::metrics::Side::Input, &p.features));
        let flushed = fleet
            .as_ref()
            .map(|f| f.counters.iter().map(|c| vec![0; c.len()]).collect())
            .unwrap_or_default();
        let state = State {
            flushed,
            inputs: Side::new(
                defs_in,
                reference.as_ref().map(|p| p.features.as_slice()),
                cap,
                hint,
            ),
            outputs: Side::new(
                defs_out,
                output_reference.as_ref().map(|o| o.features.as_slice()),
                cap,
                hint,
            ),
            reference,
            output_reference,
            rows: 0,
            opened: Instant::now(),
            rng: Rng::new(0x9e37_79b9 ^ setup.version),
        };
        let scorer = setup.scorer.clone();
        let monitor = Arc::new(Monitor {
            model: setup.model.to_string(),
            version: setup.version,
            config: ArcSwap::from_pointee(cfg),
            state: Mutex::new(state),
            detector: Mutex::new(Detector::new()),
            unmonitored,
            metrics,
            fleet,
            scorer: setup.scorer,
            events: setup.events,
            pending: AtomicU32::new(0),
        });
        scorer.watch(Arc::downgrade(&monitor) as std::sync::Weak<dyn scorer::Watched>);
        monitor
    }

    /// Adds what the open window counted since the last flush to the fleet counters.
    fn flush_fleet(&self, st: &mut State) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let State {
            inputs, flushed, ..
        } = st;
        for ((acc, counters), done) in inputs.accs.iter().zip(&fleet.counters).zip(flushed) {
            let counts = acc.bins.iter().copied().chain([acc.nonfinite]);
            for ((now, counter), before) in counts.zip(counters).zip(done.iter_mut()) {
                if now > *before {
                    counter.inc_by(now - *before);
                    *before = now;
                }
            }
        }
    }

    /// Once a second (scorer thread): flushes the fleet counters, and closes the open
    /// window if it is due (its rows and its interval, or `window_seconds`, have passed),
    /// so that a window does not wait for the next request to close.
    fn close_if_due(self: &Arc<Self>) {
        let cfg = self.config.load();
        if !self.is_active() {
            return;
        }
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.flush_fleet(&mut st);
        if st.reference.is_some() && st.rows > 0 && self.due(&st, &cfg) {
            self.close(&mut st, &cfg);
        }
    }

    /// Whether the open window closes now. Without a reference: at `reference_rows`.
    /// With one: at `window_rows` rows, or after `window_seconds` if it has `min_rows`;
    /// but (when the interval is not 0) not before it has been open `min_window_interval`
    /// nor while the version's previous window waits for the scorer.
    fn due(&self, st: &State, cfg: &DriftConfig) -> bool {
        if st.reference.is_none() {
            return st.rows >= cfg.reference_rows;
        }
        let by_rows = st.rows >= cfg.rows_per_window();
        let timed = cfg.window_seconds > 0.0 && st.rows >= cfg.min_rows;
        if !by_rows && !timed {
            return false;
        }
        let age = st.opened.elapsed().as_secs_f64();
        let interval = cfg.min_interval();
        if interval > 0.0 && (age < interval || self.pending.load(Ordering::Acquire) > 0) {
            return false;
        }
        by_rows || age >= cfg.window_seconds
    }

    /// New `[drift]` settings, without reloading the model.
    pub fn set_config(&self, cfg: DriftConfig) {
        if **self.config.load() != cfg {
            self.config.store(Arc::new(cfg));
        }
    }

    pub fn is_active(&self) -> bool {
        self.unmonitored.is_none() && self.config.load().enabled
    }

    /// Adds one request's rows (inputs in signature order, and the outputs).
    pub fn observe(self: &Arc<Self>, inputs: &[Tensor], outputs: &[Tensor]) {
        if !self.is_active() {
            return;
        }
        let cfg = self.config.load();
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(0);
        if rows == 0 {
            return;
        }
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut done = 0;
        while done < rows {
            // Row-exact windows (the reference's rows; `window_rows` without an interval)
            // take only the rows that fill them: a batch may straddle two windows.
            let (exact, target) = match st.reference {
                None => (true, cfg.reference_rows),
                Some(_) => (cfg.min_interval() <= 0.0, cfg.rows_per_window()),
            };
            let room = usize::try_from(target.saturating_sub(st.rows)).unwrap_or(usize::MAX);
            let take = if exact {
                room.clamp(1, rows - done)
            } else {
                rows - done
            };
            let State {
                inputs: si,
                outputs: so,
                rng,
                ..
            } = &mut *st;
            si.observe(inputs, rows, done..done + take, rng);
            so.observe(outputs, rows, done..done + take, rng);
            st.rows += take as u64;
            done += take;
            if self.due(&st, &cfg) {
                self.close(&mut st, &cfg);
            }
        }
        self.metrics.window_rows.set(st.rows as i64);
    }

    fn close(self: &Arc<Self>, st: &mut State, cfg: &DriftConfig) {
        let cap = cfg.max_window_sample;
        let rows = st.rows;
        // Room for as many values as this window held (up to the cap), so that at a
        // steady rate the request path does not grow the sample buffers.
        let hint = usize::try_from(rows.max(cfg.rows_per_window())).unwrap_or(usize::MAX);
        let closed_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let opened_at = closed_at - st.opened.elapsed().as_secs_f64();
        self.flush_fleet(st);
        for f in &mut st.flushed {
            f.fill(0);
        }
        let fresh_in = st.inputs.fresh(cap, hint);
        let fresh_out = st.outputs.fresh(cap, hint);
        let closed_in = std::mem::replace(&mut st.inputs, fresh_in);
        let closed_out = std::mem::replace(&mut st.outputs, fresh_out);
        st.rows = 0;
        st.opened = Instant::now();
        let opts = ProfileOptions {
            bins: cfg.bins,
            sample: cap,
            categorical: cfg.categorical.clone(),
            numeric: cfg.numeric.clone(),
        };
        let Some(reference) = st.reference.clone() else {
            // The first rows served become the reference.
            // Built from the window's sample (all of it below `max_window_sample` rows):
            // its size is what the reference summarises.
            let columns = columns_of(&closed_in);
            let sampled = sampled_rows(&columns, rows);
            let profile =
                Profile::build(columns, sampled, format!("first {rows} rows served"), &opts);
            tracing::info!(model = %self.model, version = self.version, rows, "drift reference built from served rows");
            let profile = Arc::new(profile);
            st.inputs = Side::new(st.inputs.defs.clone(), Some(&profile.features), cap, hint);
            st.reference = Some(profile);
            return;
        };
        let mut window = Closed {
            reference,
            out_ref: st.output_reference.clone(),
            inputs: closed_in,
            outputs: Some(closed_out),
            rows,
            closed_at,
            opened_at,
        };
        if window.out_ref.is_none() {
            // Outputs: the first scored window is their reference.
            let closed_out = window.outputs.take().expect("set above");
            let columns = columns_of(&closed_out);
            let sampled = sampled_rows(&columns, rows);
            let outs: Vec<FeatureProfile> =
                Profile::build(columns, sampled, String::new(), &opts).features;
            st.outputs = Side::new(st.outputs.defs.clone(), Some(&outs), cap, hint);
            st.output_reference = Some(Arc::new(OutputReference {
                features: outs,
                rows: sampled,
            }));
        }
        self.submit_scoring(window);
    }

    /// Hands a closed window to the scorer. While it waits there the version's next
    /// window stays open (when `min_window_interval` is not 0); if the queue is full it is
    /// dropped and counted (`vigil_drift_windows_total{result="dropped"}`).
    fn submit_scoring(self: &Arc<Self>, window: Closed) {
        let pending = Pending::new(self.clone());
        let job = Box::new(move || {
            pending.monitor.score(window);
            drop(pending);
        });
        if !self.scorer.submit(job) {
            self.metrics.windows_dropped.inc();
            tracing::warn!(model = %self.model, version = self.version, "drift scorer busy; window dropped");
        }
    }

    /// Scores a closed window (on the scorer thread) and runs the detector.
    fn score(&self, w: Closed) {
        let cfg = self.config.load();
        let mut report = scorer::score_window(
            &cfg,
            &w.reference,
            w.out_ref.as_deref(),
            w.inputs,
            w.outputs.filter(|_| w.out_ref.is_some()),
            w.rows,
        );
        report.closed_at = w.closed_at;
        report.opened_at = w.opened_at;
        self.metrics.observe_window(&report);
        let mut det = self
            .detector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tripped = det.record(&report, cfg.consecutive_windows);
        self.metrics.status.set(i64::from(det.drifting));
        if tripped {
            let share = report.drift_share;
            tracing::warn!(model = %self.model, version = self.version, share, "version is drifting");
            if let Some(tx) = &self.events {
                let _ = tx.try_send(DriftEvent {
                    model: self.model.clone(),
                    version: self.version,
                    window: report,
                });
            }
        }
    }

    /// The version's drift report.
    pub fn report(&self) -> VersionReport {
        let cfg = self.config.load();
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let det = self
            .detector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = match (&self.unmonitored, cfg.enabled, &st.reference) {
            (Some(why), _, _) => format!("unmonitored: {why}"),
            (None, false, _) => "disabled".into(),
            (None, true, None) => format!(
                "collecting reference ({} of {} rows)",
                st.rows, cfg.reference_rows
            ),
            (None, true, Some(_)) => "monitoring".into(),
        };
        VersionReport {
            version: self.version,
            state,
            reference: st.reference.as_ref().map(|p| ReferenceInfo {
                source: p.source.clone(),
                rows: p.rows,
                features: p.features.len(),
            }),
            window_rows: st.rows,
            windows: det.windows,
            last_window: det.last.clone(),
            status: if det.drifting { "drifting" } else { "ok" },
            windows_in_row: det.in_row,
            recent_windows: det.recent.iter().copied().collect(),
        }
    }
}

impl scorer::Watched for Monitor {
    fn tick(self: Arc<Self>) {
        self.close_if_due();
    }
}

#[cfg(test)]
mod tests;

/// The rows a profile built from these window columns summarises: the reservoir sample's
/// size (every row when the window is smaller than `max_window_sample`).
fn sampled_rows(columns: &[profile::Column], rows: u64) -> u64 {
    columns
        .iter()
        .map(|c| c.values.len() as u64)
        .max()
        .map_or(rows, |n| n.min(rows))
}

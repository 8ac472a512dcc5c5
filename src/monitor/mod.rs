//! Drift monitoring: every served row updates streaming statistics of the version's
//! inputs and outputs; closed windows are scored against the reference profile on the
//! scorer thread (off the request path); a detector decides when the version drifts.
//!
//! Hot path ([`Monitor::observe`]): one lock per request (never across requests), then
//! per row and feature a bin search over a handful of edges, a Welford update, min/max
//! and a push into a pre-sized sample buffer — no allocation.

pub mod data;
pub mod profile;
pub mod stats;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{DriftConfig, DriftMethod};
use crate::metrics::DriftMetrics;
use crate::rng::Rng;
use crate::tensor::spec::TensorSpec;
use crate::tensor::{DataType, Tensor};
use profile::{Column, FeatureProfile, Kind, Profile, ProfileOptions};

/// How a feature's value is read from a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extract {
    /// Column `col` of a 2-D tensor.
    Column { col: usize },
    /// The single value of a 1-D tensor's row.
    Scalar,
    /// A per-row summary of a tensor of higher rank (or of dynamic width).
    Summary(Summary),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    Mean,
    Std,
    Min,
    Max,
}

impl Summary {
    const ALL: [Summary; 4] = [Summary::Mean, Summary::Std, Summary::Min, Summary::Max];
    fn name(self) -> &'static str {
        match self {
            Summary::Mean => "mean",
            Summary::Std => "std",
            Summary::Min => "min",
            Summary::Max => "max",
        }
    }
}

/// One monitored feature: where it comes from and what it is called.
#[derive(Clone, Debug)]
pub struct FeatureDef {
    pub name: String,
    /// Index of the tensor in the signature's inputs (or outputs).
    pub tensor: usize,
    pub tensor_name: String,
    /// Column, or summary number (mean 0, std 1, min 2, max 3).
    pub index: usize,
    pub extract: Extract,
}

/// The features a signature yields: each column of a 2-D tensor, the value of a 1-D
/// one, per-row mean/std/min/max of anything else. BYTES tensors are not monitored.
pub fn plan(specs: &[TensorSpec]) -> Vec<FeatureDef> {
    let monitored: Vec<(usize, &TensorSpec)> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.datatype != DataType::Bytes && !s.shape.is_empty())
        .collect();
    let prefix = |s: &TensorSpec| {
        if monitored.len() > 1 {
            format!("{}.", s.name)
        } else {
            String::new()
        }
    };
    let mut out = Vec::new();
    for (i, s) in &monitored {
        match s.shape.len() {
            1 => out.push(FeatureDef {
                name: s.name.clone(),
                tensor: *i,
                tensor_name: s.name.clone(),
                index: 0,
                extract: Extract::Scalar,
            }),
            2 if s.shape[1] > 0 => {
                for col in 0..s.shape[1] as usize {
                    out.push(FeatureDef {
                        name: format!("{}f{col}", prefix(s)),
                        tensor: *i,
                        tensor_name: s.name.clone(),
                        index: col,
                        extract: Extract::Column { col },
                    });
                }
            }
            _ => {
                for (k, stat) in Summary::ALL.into_iter().enumerate() {
                    out.push(FeatureDef {
                        name: format!("{}.{}", s.name, stat.name()),
                        tensor: *i,
                        tensor_name: s.name.clone(),
                        index: k,
                        extract: Extract::Summary(stat),
                    });
                }
            }
        }
    }
    out
}

/// Reads values as f64, once per tensor type.
trait AsF64: Copy {
    fn f(self) -> f64;
}
macro_rules! as_f64 {
    ($($t:ty),*) => {$( impl AsF64 for $t { #[inline] fn f(self) -> f64 { self as f64 } } )*};
}
as_f64!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);
impl AsF64 for bool {
    #[inline]
    fn f(self) -> f64 {
        f64::from(u8::from(self))
    }
}

/// Streaming statistics of one feature within one window.
#[derive(Clone, Debug)]
pub struct FeatureAcc {
    /// Counts per reference bin (numeric) or category, plus one "other" bin (categorical).
    pub bins: Vec<u64>,
    pub n: u64,
    pub mean: f64,
    m2: f64,
    pub min: f64,
    pub max: f64,
    pub nonfinite: u64,
    /// Raw values (all of them up to the cap, then a reservoir sample).
    pub sample: Vec<f64>,
    cap: usize,
}

impl FeatureAcc {
    /// `hint`: the values a window is expected to hold (its rows), reserved up front so
    /// that the request path does not allocate; `cap`: the most ever kept.
    fn new(bins: usize, cap: usize, hint: usize) -> FeatureAcc {
        FeatureAcc {
            bins: vec![0; bins.max(1)],
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            nonfinite: 0,
            sample: Vec::with_capacity(cap.min(hint)),
            cap,
        }
    }

    pub fn std(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }

    #[inline]
    fn push(&mut self, x: f64, bin: usize, rng: &mut Rng) {
        if !x.is_finite() {
            self.nonfinite += 1;
            return;
        }
        self.bins[bin] += 1;
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if self.sample.len() < self.cap {
            self.sample.push(x);
        } else {
            let j = rng.below(self.n) as usize;
            if j < self.cap {
                self.sample[j] = x;
            }
        }
    }
}

/// How a feature's values map to bins in the current reference.
#[derive(Clone, Debug)]
enum Binning {
    /// No reference yet: everything in one bin.
    None,
    Edges(Vec<f64>),
    Categories(Vec<f64>),
}

impl Binning {
    fn of(f: Option<&FeatureProfile>) -> Binning {
        match f {
            None => Binning::None,
            Some(p) if p.kind == Kind::Numeric => Binning::Edges(p.edges.clone()),
            Some(p) => Binning::Categories(p.categories.clone()),
        }
    }
    fn bins(&self) -> usize {
        match self {
            Binning::None => 1,
            Binning::Edges(e) => e.len() + 1,
            Binning::Categories(c) => c.len() + 1,
        }
    }
    #[inline]
    fn bin(&self, x: f64) -> usize {
        match self {
            Binning::None => 0,
            Binning::Edges(e) => stats::bin_of(e, x),
            Binning::Categories(c) => c.iter().position(|&v| v == x).unwrap_or(c.len()),
        }
    }
}

/// One window's accumulators for a set of features.
struct Side {
    defs: Vec<FeatureDef>,
    binning: Vec<Binning>,
    accs: Vec<FeatureAcc>,
}

impl Side {
    fn new(
        defs: Vec<FeatureDef>,
        reference: Option<&[FeatureProfile]>,
        cap: usize,
        hint: usize,
    ) -> Side {
        let binning: Vec<Binning> = defs
            .iter()
            .enumerate()
            .map(|(i, _)| Binning::of(reference.and_then(|r| r.get(i))))
            .collect();
        let accs = binning
            .iter()
            .map(|b| FeatureAcc::new(b.bins(), cap, hint))
            .collect();
        Side {
            defs,
            binning,
            accs,
        }
    }

    fn fresh(&self, cap: usize, hint: usize) -> Side {
        Side {
            defs: self.defs.clone(),
            binning: self.binning.clone(),
            accs: self
                .binning
                .iter()
                .map(|b| FeatureAcc::new(b.bins(), cap, hint))
                .collect(),
        }
    }

    fn observe(&mut self, tensors: &[Tensor], rows: usize, rng: &mut Rng) {
        for ((def, binning), acc) in self
            .defs
            .iter()
            .zip(&self.binning)
            .zip(self.accs.iter_mut())
        {
            let Some(t) = tensors.get(def.tensor) else {
                continue;
            };
            crate::dispatch_numeric!(&t.data,
                v => observe_feature(v, rows, def.extract, binning, acc, rng),
                bool b => observe_feature(b, rows, def.extract, binning, acc, rng),
                bytes _s => {}
            );
        }
    }
}

#[inline]
fn observe_feature<T: AsF64>(
    data: &[T],
    rows: usize,
    extract: Extract,
    binning: &Binning,
    acc: &mut FeatureAcc,
    rng: &mut Rng,
) {
    if rows == 0 || data.len() % rows != 0 {
        return;
    }
    let width = data.len() / rows;
    for r in 0..rows {
        let row = &data[r * width..(r + 1) * width];
        let x = match extract {
            Extract::Column { col } => match row.get(col) {
                Some(v) => v.f(),
                None => continue,
            },
            Extract::Scalar => match row.first() {
                Some(v) => v.f(),
                None => continue,
            },
            Extract::Summary(s) => summarize(row, s),
        };
        acc.push(x, binning.bin(x), rng);
    }
}

fn summarize<T: AsF64>(row: &[T], s: Summary) -> f64 {
    if row.is_empty() {
        return f64::NAN;
    }
    match s {
        Summary::Mean => row.iter().map(|v| v.f()).sum::<f64>() / row.len() as f64,
        Summary::Std => {
            let n = row.len() as f64;
            let mean = row.iter().map(|v| v.f()).sum::<f64>() / n;
            (row.iter().map(|v| (v.f() - mean).powi(2)).sum::<f64>() / n).sqrt()
        }
        Summary::Min => row.iter().map(|v| v.f()).fold(f64::INFINITY, f64::min),
        Summary::Max => row.iter().map(|v| v.f()).fold(f64::NEG_INFINITY, f64::max),
    }
}

/// The scores of one feature in one closed window.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FeatureScore {
    pub name: String,
    pub input: String,
    pub index: usize,
    pub kind: Kind,
    pub rows: u64,
    pub psi: Option<f64>,
    pub js: Option<f64>,
    pub ks_statistic: Option<f64>,
    pub ks_pvalue: Option<f64>,
    pub wasserstein: Option<f64>,
    pub chi2_statistic: Option<f64>,
    pub chi2_pvalue: Option<f64>,
    /// Categorical features: the window's share of rows in no reference category. Those
    /// rows are tested in the chi-square's pooled bin (with the reference's rarest
    /// categories), so a few of them do not flag the feature, a large share does.
    pub unseen_share: Option<f64>,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub nonfinite: u64,
    pub drifted: bool,
    /// Inner edges of the reference bins (numeric features).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    /// The reference categories (categorical features); the window's last bin is "other".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<f64>,
    /// The reference's share of rows per bin (categorical: per category, then "other").
    pub reference_proportions: Vec<f64>,
    /// The window's rows per bin, on the same bins.
    pub window_counts: Vec<u64>,
}

/// One closed window, as the drift time line shows it.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct WindowPoint {
    /// Unix time in seconds.
    pub closed_at: f64,
    pub rows: u64,
    pub drift_share: f64,
    pub drifted: bool,
}

/// Windows kept for the time line.
pub const RECENT_WINDOWS: usize = 48;

/// A scored window.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WindowReport {
    /// Unix time in seconds.
    pub closed_at: f64,
    pub rows: u64,
    pub drift_share: f64,
    pub drifted: bool,
    pub features: Vec<FeatureScore>,
    pub outputs: Vec<FeatureScore>,
}

/// What `GET /v2/models/{m}/drift` shows for one version.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VersionReport {
    pub version: u64,
    /// "monitoring", "collecting reference", "disabled", or "unmonitored: <why>".
    pub state: String,
    pub reference: Option<ReferenceInfo>,
    pub window_rows: u64,
    pub windows: u64,
    pub last_window: Option<WindowReport>,
    /// "ok" or "drifting".
    pub status: &'static str,
    /// Drifted windows in a row.
    pub windows_in_row: u32,
    /// The last windows closed (at most [`RECENT_WINDOWS`]), oldest first.
    pub recent_windows: Vec<WindowPoint>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReferenceInfo {
    pub source: String,
    pub rows: u64,
    pub features: usize,
}

/// A change of drift status, for whoever acts on it (the retrain hook).
#[derive(Clone, Debug)]
pub struct DriftEvent {
    pub model: String,
    pub version: u64,
    pub window: WindowReport,
}

/// Runs scoring jobs on one background thread, fed by a bounded queue. Once a second
/// it also closes windows whose `window_seconds` have passed, so a window does not wait
/// for the next request to close.
#[derive(Clone)]
pub struct Scorer {
    tx: crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>,
    monitors: Arc<Mutex<Vec<std::sync::Weak<Monitor>>>>,
}

impl Scorer {
    pub fn start() -> Scorer {
        let (tx, rx) = crossbeam_channel::bounded::<Box<dyn FnOnce() + Send>>(256);
        let monitors: Arc<Mutex<Vec<std::sync::Weak<Monitor>>>> = Arc::default();
        let watched = monitors.clone();
        crate::supervise::spawn_thread("drift_scorer", "vigil-drift", move || loop {
            match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(job) => {
                    // One job's panic costs that window only.
                    let _ = crate::supervise::guard("drift_scorer", job);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let alive: Vec<Arc<Monitor>> = {
                        let mut list = watched
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        list.retain(|w| w.strong_count() > 0);
                        list.iter().filter_map(std::sync::Weak::upgrade).collect()
                    };
                    for m in alive {
                        m.close_if_due();
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        });
        Scorer { tx, monitors }
    }

    fn watch(&self, m: &Arc<Monitor>) {
        self.monitors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(m));
    }

    fn submit(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        self.tx.try_send(job).is_ok()
    }
}

struct State {
    reference: Option<Arc<Profile>>,
    /// Per feature, the open window's bin counts (then NaN/inf) already added to the fleet
    /// counters.
    flushed: Vec<Vec<u64>>,
    /// Output reference, built from the first scored window when the profile has none.
    output_reference: Option<Arc<Vec<FeatureProfile>>>,
    inputs: Side,
    outputs: Side,
    rows: u64,
    opened: Instant,
    rng: Rng,
}

struct Detector {
    windows: u64,
    in_row: u32,
    drifting: bool,
    last: Option<WindowReport>,
    recent: std::collections::VecDeque<WindowPoint>,
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
    fleet: Option<crate::metrics::FleetBins>,
    scorer: Scorer,
    events: Option<crossbeam_channel::Sender<DriftEvent>>,
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
    pub metrics: DriftMetrics,
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
            cfg.window_rows
        } else {
            cfg.reference_rows
        });
        let output_reference = reference
            .as_ref()
            .filter(|p| p.outputs.len() == defs_out.len() && !p.outputs.is_empty())
            .map(|p| Arc::new(p.outputs.clone()));
        let fleet = reference
            .as_ref()
            .filter(|_| unmonitored.is_none())
            .map(|p| {
                setup
                    .metrics
                    .fleet_bins(crate::metrics::Side::Input, &p.features)
            });
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
                output_reference.as_ref().map(|o| o.as_slice()),
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
            detector: Mutex::new(Detector {
                windows: 0,
                in_row: 0,
                drifting: false,
                last: None,
                recent: std::collections::VecDeque::with_capacity(RECENT_WINDOWS),
            }),
            unmonitored,
            metrics: setup.metrics,
            fleet,
            scorer: setup.scorer,
            events: setup.events,
        });
        scorer.watch(&monitor);
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
    /// window if `window_seconds` have passed and it has `min_rows`.
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
        if cfg.window_seconds <= 0.0 {
            return;
        }
        if st.reference.is_some()
            && st.rows >= cfg.min_rows
            && st.opened.elapsed().as_secs_f64() >= cfg.window_seconds
        {
            self.close(&mut st, &cfg);
        }
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
        let State {
            inputs: si,
            outputs: so,
            rng,
            ..
        } = &mut *st;
        si.observe(inputs, rows, rng);
        so.observe(outputs, rows, rng);
        st.rows += rows as u64;
        self.metrics.window_rows.set(st.rows as i64);
        let target = if st.reference.is_none() {
            cfg.reference_rows
        } else {
            cfg.window_rows
        };
        let by_time = cfg.window_seconds > 0.0
            && st.rows >= cfg.min_rows
            && st.opened.elapsed().as_secs_f64() >= cfg.window_seconds;
        if st.rows >= target || (st.reference.is_some() && by_time) {
            self.close(&mut st, &cfg);
        }
    }

    fn close(self: &Arc<Self>, st: &mut State, cfg: &DriftConfig) {
        let cap = cfg.max_window_sample;
        // The next window is a scored one (a reference exists or is built from this one).
        let hint = usize::try_from(cfg.window_rows).unwrap_or(usize::MAX);
        let rows = st.rows;
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
        self.metrics.window_rows.set(0);
        let opts = ProfileOptions {
            bins: cfg.bins,
            sample: cap,
            categorical: cfg.categorical.clone(),
            numeric: cfg.numeric.clone(),
        };
        let Some(reference) = st.reference.clone() else {
            // The first rows served become the reference.
            let profile = Profile::build(
                columns_of(&closed_in),
                rows,
                format!("first {rows} rows served"),
                &opts,
            );
            tracing::info!(model = %self.model, version = self.version, rows, "drift reference built from served rows");
            let profile = Arc::new(profile);
            st.inputs = Side::new(st.inputs.defs.clone(), Some(&profile.features), cap, hint);
            st.reference = Some(profile);
            return;
        };
        let Some(out_ref) = st.output_reference.clone() else {
            // Outputs: the first scored window is their reference.
            let outs: Vec<FeatureProfile> =
                Profile::build(columns_of(&closed_out), rows, String::new(), &opts).features;
            st.outputs = Side::new(st.outputs.defs.clone(), Some(&outs), cap, hint);
            st.output_reference = Some(Arc::new(outs));
            self.submit_scoring(reference, None, closed_in, None, rows);
            return;
        };
        self.submit_scoring(reference, Some(out_ref), closed_in, Some(closed_out), rows);
    }

    fn submit_scoring(
        self: &Arc<Self>,
        reference: Arc<Profile>,
        out_ref: Option<Arc<Vec<FeatureProfile>>>,
        inputs: Side,
        outputs: Option<Side>,
        rows: u64,
    ) {
        let me = self.clone();
        let job = Box::new(move || {
            me.score(
                &reference,
                out_ref.as_deref().map(|v| v.as_slice()),
                inputs,
                outputs,
                rows,
            )
        });
        if !self.scorer.submit(job) {
            tracing::warn!(model = %self.model, version = self.version, "drift scorer busy; window dropped");
        }
    }

    /// Scores a closed window (on the scorer thread) and runs the detector.
    fn score(
        &self,
        reference: &Profile,
        out_ref: Option<&[FeatureProfile]>,
        inputs: Side,
        outputs: Option<Side>,
        rows: u64,
    ) {
        let cfg = self.config.load();
        let n_features = inputs.defs.len().max(1) as f64;
        let alpha = cfg.ks_alpha / n_features;
        let features: Vec<FeatureScore> = inputs
            .defs
            .iter()
            .zip(inputs.accs)
            .zip(&reference.features)
            .map(|((def, acc), r)| score_feature(def, acc, r, &cfg, alpha))
            .collect();
        let out_scores: Vec<FeatureScore> = match (outputs, out_ref) {
            (Some(o), Some(r)) => o
                .defs
                .iter()
                .zip(o.accs)
                .zip(r)
                .map(|((def, acc), r)| score_feature(def, acc, r, &cfg, alpha))
                .collect(),
            _ => Vec::new(),
        };
        let drifted_n = features.iter().filter(|f| f.drifted).count() as f64;
        let share = drifted_n / n_features;
        let drifted = share >= cfg.drift_share;
        let report = WindowReport {
            closed_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            rows,
            drift_share: share,
            drifted,
            features,
            outputs: out_scores,
        };
        self.metrics.observe_window(&report);
        let mut det = self
            .detector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        det.windows += 1;
        det.in_row = if drifted { det.in_row + 1 } else { 0 };
        let was = det.drifting;
        det.drifting = det.in_row >= cfg.consecutive_windows;
        self.metrics.status.set(i64::from(det.drifting));
        if det.recent.len() == RECENT_WINDOWS {
            det.recent.pop_front();
        }
        det.recent.push_back(WindowPoint {
            closed_at: report.closed_at,
            rows: report.rows,
            drift_share: report.drift_share,
            drifted: report.drifted,
        });
        det.last = Some(report.clone());
        if det.drifting && !was {
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

fn columns_of(side: &Side) -> Vec<Column> {
    side.defs
        .iter()
        .zip(&side.accs)
        .map(|(d, a)| Column {
            name: d.name.clone(),
            input: d.tensor_name.clone(),
            index: d.index,
            values: a.sample.clone(),
        })
        .collect()
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn score_feature(
    def: &FeatureDef,
    acc: FeatureAcc,
    r: &FeatureProfile,
    cfg: &DriftConfig,
    alpha: f64,
) -> FeatureScore {
    let n = acc.n;
    let mut s = FeatureScore {
        name: def.name.clone(),
        input: def.tensor_name.clone(),
        index: def.index,
        kind: r.kind,
        rows: n,
        psi: None,
        js: None,
        ks_statistic: None,
        ks_pvalue: None,
        wasserstein: None,
        chi2_statistic: None,
        chi2_pvalue: None,
        unseen_share: None,
        mean: finite(acc.mean).filter(|_| n > 0),
        std: finite(acc.std()),
        nonfinite: acc.nonfinite,
        drifted: false,
        edges: r.edges.clone(),
        categories: r.categories.clone(),
        reference_proportions: r.proportions.clone(),
        window_counts: acc.bins.clone(),
    };
    if n == 0 {
        return s;
    }
    let cur: Vec<f64> = acc.bins.iter().map(|&c| c as f64 / n as f64).collect();
    match r.kind {
        Kind::Numeric => {
            s.psi = finite(stats::psi(&r.proportions, &cur));
            s.js = finite(stats::js_distance(&r.proportions, &cur));
            let mut reference = r.sample.clone();
            let mut window = acc.sample;
            let (d, p) = stats::ks_2samp(&mut reference, &mut window);
            s.ks_statistic = finite(d);
            s.ks_pvalue = finite(p);
            let (_, ref_std) = stats::mean_std(&reference);
            s.wasserstein =
                finite(stats::wasserstein_sorted(&reference, &window) / ref_std.max(1e-3));
            let ks_drift = s.ks_pvalue.is_some_and(|p| p < alpha);
            let psi_drift = s.psi.is_some_and(|v| v >= cfg.psi_threshold);
            s.drifted = match cfg.method {
                DriftMethod::Auto => ks_drift || psi_drift,
                DriftMethod::Ks => ks_drift,
                DriftMethod::Psi => psi_drift,
            };
        }
        Kind::Categorical => {
            // The reference's shares, then an empty "other" bin (categories it never saw).
            let ref_props: Vec<f64> = r.proportions.iter().copied().chain([0.0]).collect();
            s.psi = finite(stats::psi(&ref_props, &cur));
            s.js = finite(stats::js_distance(&ref_props, &cur));
            s.unseen_share = cur.last().copied();
            // Sparse bins and "other" are pooled until every bin can carry the test.
            if let Some(c) = stats::chisquare_pooled(&acc.bins, &ref_props) {
                s.chi2_statistic = finite(c.statistic);
                s.chi2_pvalue = finite(c.pvalue);
            }
            s.drifted = s.chi2_pvalue.is_some_and(|p| p < alpha);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn plans_for_common_shapes() {
        let p = plan(&[spec("X", DataType::Fp32, &[-1, 3])]);
        assert_eq!(
            p.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["f0", "f1", "f2"]
        );
        let p = plan(&[spec("img", DataType::Fp32, &[-1, 1, 28, 28])]);
        assert_eq!(p.len(), 4);
        assert_eq!(p[1].name, "img.std");
        let p = plan(&[
            spec("label", DataType::Int64, &[-1]),
            spec("probabilities", DataType::Fp32, &[-1, 2]),
        ]);
        assert_eq!(
            p.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["label", "probabilities.f0", "probabilities.f1"]
        );
        assert!(plan(&[spec("s", DataType::Bytes, &[-1])]).is_empty());
    }

    #[test]
    fn fleet_counters_count_every_row_per_reference_bin() {
        // A numeric feature (0..100) and a categorical one (0, 1, 2).
        let col = |index: usize, values: Vec<f64>| Column {
            name: format!("f{index}"),
            input: "X".into(),
            index,
            values,
        };
        let profile = Profile::build(
            vec![
                col(0, (0..100).map(f64::from).collect()),
                col(1, (0..99).map(|i| f64::from(i % 3)).collect()),
            ],
            100,
            "reference.json".into(),
            &ProfileOptions::default(),
        );
        assert_eq!(profile.features[1].kind, Kind::Categorical);
        let metrics = crate::metrics::Metrics::new();
        let m = Monitor::new(MonitorSetup {
            model: "m",
            version: 3,
            inputs: &[spec("X", DataType::Fp32, &[-1, 2])],
            outputs: &[],
            config: DriftConfig {
                window_rows: 40,
                ..DriftConfig::default()
            },
            reference_json: Some(Ok(serde_json::to_vec(&profile).unwrap())),
            metrics: metrics.drift("m", 3),
            scorer: Scorer::start(),
            events: None,
        });
        // 70 rows (a window closes at 40 and its counts carry over), one NaN, one unseen
        // category.
        let mut x = Vec::new();
        for i in 0..70u32 {
            let f0 = if i == 5 {
                f32::NAN
            } else {
                (i * 7 % 130) as f32
            };
            let f1 = if i == 9 { 7.0 } else { (i % 2) as f32 };
            x.extend([f0, f1]);
        }
        for chunk in x.chunks(20) {
            m.observe(
                &[Tensor {
                    name: "X".into(),
                    shape: vec![chunk.len() / 2, 2],
                    data: TensorData::Fp32(chunk.to_vec()),
                }],
                &[],
            );
        }
        m.close_if_due();
        let text = metrics.render();
        let count = |feature: &str, bin: &str| -> u64 {
            let key = format!(
                "vigil_drift_bin_rows_total{{bin=\"{bin}\",feature=\"{feature}\",model=\"m\",side=\"input\",version=\"3\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap_or_else(|| panic!("no series {key}"))
                .parse()
                .unwrap()
        };
        let edges = &profile.features[0].edges;
        let mut want = vec![0u64; edges.len() + 1];
        for i in 0..70u32 {
            if i != 5 {
                want[stats::bin_of(edges, f64::from(i * 7 % 130))] += 1;
            }
        }
        for (b, w) in want.iter().enumerate() {
            assert_eq!(count("f0", &b.to_string()), *w, "bin {b}");
        }
        assert_eq!(count("f0", "nan"), 1);
        assert_eq!(count("f1", "0"), 35);
        assert_eq!(count("f1", "1"), 34);
        assert_eq!(count("f1", "2"), 0);
        assert_eq!(count("f1", "other"), 1);
        assert!(text.contains(
            "vigil_drift_reference_proportion{bin=\"2\",feature=\"f1\",model=\"m\",side=\"input\",version=\"3\"} 0.3333"
        ));
        // The series go with the version.
        metrics.remove_version("m", 3);
        assert!(!metrics.render().contains("vigil_drift_bin_rows_total{"));
    }

    /// A monitor of one categorical input `c`, whose reference has categories 0, 1, 2
    /// (shares 0.5, 0.3, 0.198) and a rare 3 (0.002), closing a window every 1000 rows.
    fn categorical_monitor(
        metrics: &crate::metrics::Metrics,
        version: u64,
    ) -> (Arc<Monitor>, Vec<f64>) {
        let shares = vec![0.5, 0.3, 0.198, 0.002];
        let values: Vec<f64> = shares
            .iter()
            .enumerate()
            .flat_map(|(c, s)| std::iter::repeat_n(c as f64, (s * 10_000.0_f64).round() as usize))
            .collect();
        let profile = Profile::build(
            vec![Column {
                name: "c".into(),
                input: "X".into(),
                index: 0,
                values,
            }],
            10_000,
            "reference.json".into(),
            &ProfileOptions::default(),
        );
        assert_eq!(profile.features[0].kind, Kind::Categorical);
        assert_eq!(profile.features[0].proportions, shares);
        let m = Monitor::new(MonitorSetup {
            model: "cat",
            version,
            inputs: &[spec("X", DataType::Int64, &[-1, 1])],
            outputs: &[],
            config: DriftConfig {
                window_rows: 1000,
                ..DriftConfig::default()
            },
            reference_json: Some(Ok(serde_json::to_vec(&profile).unwrap())),
            metrics: metrics.drift("cat", version),
            scorer: Scorer::start(),
            events: None,
        });
        (m, shares)
    }

    /// Sends `windows` windows of 1000 rows: `unseen` rows of category 9 (which the
    /// reference never saw), the others drawn from the reference's shares. Returns the
    /// windows that drifted once all are scored.
    fn categorical_windows(
        metrics: &crate::metrics::Metrics,
        m: &Arc<Monitor>,
        shares: &[f64],
        windows: u64,
        unseen: usize,
        seed: u64,
    ) -> u64 {
        let mut rng = Rng::new(seed);
        for _ in 0..windows {
            let mut rows: Vec<i64> = (0..1000 - unseen)
                .map(|_| {
                    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    let mut c = shares.len() - 1;
                    for (i, s) in shares.iter().enumerate() {
                        if u < *s {
                            c = i;
                            break;
                        }
                        u -= s;
                    }
                    c as i64
                })
                .collect();
            rows.extend(std::iter::repeat_n(9, unseen));
            m.observe(
                &[Tensor {
                    name: "X".into(),
                    shape: vec![rows.len(), 1],
                    data: TensorData::Int64(rows),
                }],
                &[],
            );
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while m.report().windows < windows {
            assert!(
                Instant::now() < deadline,
                "windows not scored: {:?}",
                m.report().windows
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let r = m.report();
        let f = &r.last_window.as_ref().unwrap().features[0];
        assert_eq!(f.unseen_share, Some(unseen as f64 / 1000.0));
        let key = format!(
            "vigil_drift_windows_total{{model=\"cat\",result=\"drift\",version=\"{}\"}} ",
            m.version
        );
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map_or(0, |v| v.parse().unwrap())
    }

    /// Stationary categorical traffic with 2 rows in 1000 of a category the reference never
    /// saw: the chi-square (alpha 0.05, one feature) flags about 5 % of windows, not every
    /// window; 10 % of rows unseen flags every window.
    #[test]
    fn categorical_drift_does_not_cry_wolf() {
        let metrics = crate::metrics::Metrics::new();
        let (m, shares) = categorical_monitor(&metrics, 1);
        let windows = 200;
        let flagged = categorical_windows(&metrics, &m, &shares, windows, 2, 42);
        let rate = flagged as f64 / windows as f64;
        println!("stationary categorical traffic, 2 unseen rows per 1000: {flagged} of {windows} windows flagged ({rate:.3})");
        // alpha = 0.05; the margin is 3 binomial standard deviations (0.046).
        assert!(
            rate <= 0.05 + 3.0 * (0.05f64 * 0.95 / windows as f64).sqrt(),
            "{flagged} of {windows} windows flagged"
        );
        let (m, shares) = categorical_monitor(&metrics, 2);
        assert_eq!(
            categorical_windows(&metrics, &m, &shares, 5, 100, 43),
            5,
            "10 % unseen must flag"
        );
    }

    #[test]
    fn accumulates_rows_without_a_reference_then_builds_one() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let m = Monitor::new(MonitorSetup {
            model: "m",
            version: 1,
            inputs: &[spec("X", DataType::Fp32, &[-1, 2])],
            outputs: &[spec("y", DataType::Int64, &[-1])],
            config: DriftConfig {
                reference_rows: 100,
                window_rows: 50,
                ..DriftConfig::default()
            },
            reference_json: None,
            metrics: crate::metrics::Metrics::new().drift("m", 1),
            scorer: Scorer::start(),
            events: Some(tx),
        });
        let batch = |shift: f32, k: usize| {
            let x: Vec<f32> = (0..100)
                .map(|i| ((i * 37 + k * 11) % 100) as f32 / 10.0 + shift)
                .collect();
            (
                vec![Tensor {
                    name: "X".into(),
                    shape: vec![50, 2],
                    data: TensorData::Fp32(x),
                }],
                vec![Tensor {
                    name: "y".into(),
                    shape: vec![50],
                    data: TensorData::Int64((0..50).map(|i| i % 3).collect()),
                }],
            )
        };
        for k in 0..2 {
            let (i, o) = batch(0.0, k);
            m.observe(&i, &o);
        }
        let r = m.report();
        assert_eq!(r.state, "monitoring");
        assert_eq!(
            r.reference.as_ref().unwrap().source,
            "first 100 rows served"
        );
        // Far-shifted windows drift.
        for k in 0..3 {
            let (i, o) = batch(50.0, k);
            m.observe(&i, &o);
        }
        let event = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a drift event");
        assert_eq!((event.model.as_str(), event.version), ("m", 1));
        assert!(event.window.drifted);
        assert_eq!(event.window.features.len(), 2);
        assert!(event
            .window
            .features
            .iter()
            .all(|f| f.drifted && f.psi.unwrap() > 1.0));
    }
}

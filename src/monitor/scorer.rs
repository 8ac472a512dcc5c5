//! The scorer: one background thread, fed by a bounded queue, that scores closed windows
//! off the request path and ticks every watched monitor once a second; and the scoring
//! itself, each feature's tests against the reference. Knows nothing of the detector or
//! metrics, nor of the monitor but through [`Watched`].

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::plan::FeatureDef;
use super::profile::{FeatureProfile, Kind, Profile};
use super::report::{FeatureScore, WindowReport};
use super::stats;
use super::window::{FeatureAcc, Side};
use crate::config::{DriftConfig, DriftMethod};

/// What the scorer's clock ticks once a second (a monitor: it closes a window that is due).
pub(super) trait Watched: Send + Sync {
    fn tick(self: Arc<Self>);
}

/// Runs scoring jobs on one background thread, fed by a bounded queue. Once a second
/// it also closes windows that are due, so a window does not wait for the next request
/// to close. The thread runs at idle priority (`SCHED_IDLE`, else nice 19): under full
/// load it takes what the request threads leave, and scoring waits rather than slowing
/// requests down.
#[derive(Clone)]
pub struct Scorer {
    tx: crossbeam_channel::Sender<Job>,
    monitors: Arc<Mutex<Vec<Weak<dyn Watched>>>>,
}

impl Scorer {
    pub fn start() -> Scorer {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(256);
        let monitors: Arc<Mutex<Vec<Weak<dyn Watched>>>> = Arc::default();
        let watched = monitors.clone();
        crate::supervise::spawn_thread("drift_scorer", "vigil-drift", move || {
            lower_priority();
            scorer_loop(&rx, &watched);
        });
        Scorer { tx, monitors }
    }

    /// A scorer whose jobs wait in the returned queue until the test runs them.
    #[cfg(test)]
    pub(super) fn paused() -> (Scorer, crossbeam_channel::Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(16);
        (
            Scorer {
                tx,
                monitors: Arc::default(),
            },
            rx,
        )
    }

    pub(super) fn watch(&self, m: Weak<dyn Watched>) {
        self.monitors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(m);
    }

    pub(super) fn submit(&self, job: Job) -> bool {
        self.tx.try_send(job).is_ok()
    }
}

pub(super) type Job = Box<dyn FnOnce() + Send>;

/// The scorer thread: jobs as they come, and every second the monitors' ticks (even
/// while jobs keep coming).
fn scorer_loop(rx: &crossbeam_channel::Receiver<Job>, watched: &Mutex<Vec<Weak<dyn Watched>>>) {
    const TICK: Duration = Duration::from_secs(1);
    let mut next_tick = Instant::now() + TICK;
    loop {
        match rx.recv_deadline(next_tick) {
            Ok(job) => {
                // One job's panic costs that window only.
                let _ = crate::supervise::guard("drift_scorer", job);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            let alive: Vec<Arc<dyn Watched>> = {
                let mut list = watched
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            for m in alive {
                m.tick();
            }
        }
    }
}

/// Moves the calling thread to idle priority: `SCHED_IDLE` (it runs only when a
/// CPU has nothing else to run), or nice 19 where that is refused.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain system calls on the calling thread (pid 0 is the calling thread
        // for both on Linux), with a valid sched_param.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
        if !idle {
            let tid = unsafe { libc::gettid() } as libc::id_t;
            // SAFETY: as above.
            let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) } == 0;
            if !niced {
                tracing::warn!(
                    "the drift scorer could not lower its priority; it competes with requests"
                );
            }
        }
    }
}

/// Scores a closed window against the reference (on the scorer thread): each feature's
/// tests, then the share of input features that drifted.
pub(super) fn score_window(
    cfg: &DriftConfig,
    reference: &Profile,
    out_ref: Option<&super::OutputReference>,
    inputs: Side,
    outputs: Option<Side>,
    rows: u64,
) -> WindowReport {
    let n_features = inputs.defs.len().max(1) as f64;
    let alpha = cfg.ks_alpha / n_features;
    let features: Vec<FeatureScore> = inputs
        .defs
        .iter()
        .zip(inputs.accs)
        .zip(&reference.features)
        .map(|((def, acc), r)| score_feature(def, acc, r, reference.rows, cfg, alpha))
        .collect();
    let out_scores: Vec<FeatureScore> = match (outputs, out_ref) {
        (Some(o), Some(r)) => o
            .defs
            .iter()
            .zip(o.accs)
            .zip(&r.features)
            .map(|((def, acc), f)| score_feature(def, acc, f, r.rows, cfg, alpha))
            .collect(),
        _ => Vec::new(),
    };
    let drifted_n = features.iter().filter(|f| f.drifted).count() as f64;
    let share = drifted_n / n_features;
    let drifted = share >= cfg.drift_share;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    WindowReport {
        closed_at: now,
        opened_at: now,
        rows,
        drift_share: share,
        drifted,
        features,
        outputs: out_scores,
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn score_feature(
    def: &FeatureDef,
    acc: FeatureAcc,
    r: &FeatureProfile,
    reference_rows: u64,
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
        sample: acc.sample.len(),
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
            let (d, p) = stats::ks::ks_2samp(&mut reference, &mut window);
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
            // Sparse bins and "other" are pooled until every bin can carry the test. The
            // reference is a sample of `reference_rows` rows (a training set, or the first
            // rows served): two samples compared (homogeneity), unless its size is unknown.
            let test = if reference_rows > 0 {
                let counts: Vec<f64> = ref_props
                    .iter()
                    .map(|p| (p * reference_rows as f64).round())
                    .collect();
                stats::chi2_homogeneity_pooled(&acc.bins, &counts)
            } else {
                stats::chisquare_pooled(&acc.bins, &ref_props)
            };
            if let Some(c) = test {
                s.chi2_statistic = finite(c.statistic);
                s.chi2_pvalue = finite(c.pvalue);
            }
            s.drifted = s.chi2_pvalue.is_some_and(|p| p < alpha);
        }
    }
    s
}

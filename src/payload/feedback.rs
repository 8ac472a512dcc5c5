//! Ground truth joined to predictions, and the live quality it measures.
//!
//! Every answered request of a model with `[logging] feedback_window` leaves its
//! predictions here under its request id: one number per row (a class label, or a
//! regression value), not its tensors, so memory is a few dozen bytes per row, bounded by
//! `feedback_capacity` rows and by the window (older entries are swept on every call).
//! `POST /v2/models/{m}/feedback` joins truths by id: each joined row enters its
//! version's rolling quality window (`quality_window` labelled rows), from which
//! accuracy, per-class precision/recall/F1 and macro F1 (classifiers) or MAE and RMSE
//! (regressors) are computed the way scikit-learn does. A truth whose prediction aged out
//! of the window (or was evicted by the capacity) is `late`; one whose id was never seen
//! (or already joined) is `unknown`; one whose row count differs is `invalid`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Role;
use crate::metrics::PayloadFamilies;
use crate::tensor::{Tensor, TensorData};

/// Per-class series exported at most (the model's predicted classes, lowest first).
const MAX_CLASS_SERIES: usize = 64;

/// One request's predictions: one value per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    /// Class labels (compared exactly) rather than regression values.
    pub classify: bool,
    pub values: Vec<f64>,
    /// Per row, the highest predicted probability (a classifier with a probability
    /// output): what the expected accuracy is estimated from.
    pub confidence: Option<Vec<f64>>,
}

/// Confidence bins of the histogram-binning calibration.
const BINS: usize = 10;

fn bin_of(conf: f64) -> usize {
    ((conf * BINS as f64) as usize).min(BINS - 1)
}

/// Per row, the highest probability of the first output that holds probabilities: floats
/// of shape `[rows, k >= 2]`, each in [0, 1], each row summing to 1 (within 1e-3).
pub fn confidence(outputs: &[Tensor], rows: usize) -> Option<Vec<f64>> {
    outputs.iter().find_map(|t| {
        let flat: Vec<f64> = match &t.data {
            TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Fp64(v) => v.clone(),
            _ => return None,
        };
        if t.shape.len() != 2 || t.shape[0] != rows || t.shape[1] < 2 {
            return None;
        }
        let k = t.shape[1];
        if rows == 0 || flat.len() != rows * k {
            return None;
        }
        flat.chunks_exact(k)
            .map(|row| {
                let sum: f64 = row.iter().sum();
                let ok = row.iter().all(|p| (0.0..=1.0).contains(p)) && (sum - 1.0).abs() <= 1e-3;
                ok.then(|| row.iter().copied().fold(0.0, f64::max))
            })
            .collect()
    })
}

impl Predictions {
    /// The predictions in an output tensor: integers are labels, one float per row is a
    /// value, several floats per row (probabilities, scores) give the argmax's index.
    // The macro's numeric arm covers f64 too (`x as f64` is a no-op there).
    #[allow(clippy::unnecessary_cast)]
    pub fn from_output(t: &Tensor) -> Option<Predictions> {
        let rows = t.shape.first().copied().filter(|&r| r > 0)?;
        let per_row = t.data.len() / rows;
        if per_row == 0 || per_row * rows != t.data.len() {
            return None;
        }
        let (classify, flat): (bool, Vec<f64>) = match &t.data {
            TensorData::Fp32(v) => (false, v.iter().map(|&x| f64::from(x)).collect()),
            TensorData::Fp64(v) => (false, v.clone()),
            TensorData::Bool(v) => (true, v.iter().map(|&b| f64::from(u8::from(b))).collect()),
            TensorData::Bytes(_) => return None,
            other => (
                true,
                crate::dispatch_numeric!(other,
                    v => v.iter().map(|&x| x as f64).collect(),
                    bool _b => unreachable!("handled above"),
                    bytes _s => unreachable!("handled above")
                ),
            ),
        };
        if per_row == 1 {
            return Some(Predictions {
                classify,
                values: flat,
                confidence: None,
            });
        }
        let values = flat
            .chunks_exact(per_row)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0usize, f64::NEG_INFINITY), |best, (i, &x)| {
                        if x > best.1 {
                            (i, x)
                        } else {
                            best
                        }
                    })
                    .0 as f64
            })
            .collect();
        Some(Predictions {
            classify: true,
            values,
            confidence: None,
        })
    }
}

/// `[logging]`'s feedback settings, as the index uses them.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackSettings {
    pub window: Duration,
    pub capacity: usize,
    pub quality_rows: usize,
    pub prediction: Option<String>,
    /// `[retrain] min_quality` / `max_error`: a full window past one is a [`QualityTrip`].
    pub thresholds: crate::config::QualityThresholds,
}

/// A version's full quality window (labelled rows), or its full window of predictions
/// for `expected_accuracy`, went past a `[retrain]` threshold while the version was
/// within all of them (or not yet judged): one trip per crossing of the version, whichever
/// metric crossed first, not one per feedback call or per metric.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityTrip {
    pub version: u64,
    pub role: Role,
    pub breaches: Vec<Breach>,
    pub window_rows: u64,
    pub labels_received: u64,
    /// Unix times of the oldest and the newest prediction in the window.
    pub from: f64,
    pub to: f64,
    /// Set when the label-free estimate tripped: the window it was judged on.
    pub expected: Option<crate::retrain::ExpectedInfo>,
}

/// The oldest and newest of `times` (Unix seconds).
fn span(times: &VecDeque<f64>) -> (f64, f64) {
    times
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

pub use crate::retrain::QualityBreach as Breach;

/// What one feedback call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JoinSummary {
    pub joined: u64,
    pub late: u64,
    pub unknown: u64,
    pub invalid: u64,
}

/// One truth as a client sent it.
pub struct Truth {
    pub id: String,
    pub values: Vec<f64>,
}

struct Answer {
    version: u64,
    role: Role,
    preds: Predictions,
}

struct Entry {
    at: Instant,
    /// Unix time of the prediction (where the window's rows are in the payload log).
    unix: f64,
    answers: Vec<Answer>,
}

impl Entry {
    fn rows(&self) -> usize {
        self.answers.iter().map(|a| a.preds.values.len()).sum()
    }
}

/// A version's rolling window of labelled rows.
struct Quality {
    role: Role,
    classify: bool,
    ring: VecDeque<(f64, f64)>,
    /// Unix time of each ring row's prediction, in step with `ring`.
    times: VecDeque<f64>,
    /// Each ring row's confidence (when the model gives probabilities), in step.
    confs: VecDeque<Option<f64>>,
    /// Per confidence bin: (right, labelled) rows of the ring, the calibration.
    calibration: [(u64, u64); BINS],
    /// A full window was past a threshold when last judged (a trip fires on the crossing).
    degraded: bool,
    /// (predicted, true) counts over the ring (classifiers).
    confusion: HashMap<(i64, i64), u64>,
    abs: f64,
    sq: f64,
    /// Pushes since `abs`/`sq` were last summed afresh (bounds rounding drift).
    since_resum: usize,
    received: u64,
}

impl Quality {
    fn new(role: Role, classify: bool) -> Quality {
        Quality {
            role,
            classify,
            ring: VecDeque::new(),
            times: VecDeque::new(),
            confs: VecDeque::new(),
            calibration: [(0, 0); BINS],
            degraded: false,
            confusion: HashMap::new(),
            abs: 0.0,
            sq: 0.0,
            since_resum: 0,
            received: 0,
        }
    }

    fn push(&mut self, cap: usize, pred: f64, truth: f64, unix: f64, conf: Option<f64>) {
        while self.ring.len() >= cap {
            let Some((p, t)) = self.ring.pop_front() else {
                break;
            };
            self.times.pop_front();
            if let Some(Some(c)) = self.confs.pop_front() {
                let b = &mut self.calibration[bin_of(c)];
                b.0 -= u64::from(p == t);
                b.1 -= 1;
            }
            self.forget(p, t);
        }
        self.ring.push_back((pred, truth));
        self.times.push_back(unix);
        self.confs.push_back(conf);
        if let Some(c) = conf {
            let b = &mut self.calibration[bin_of(c)];
            b.0 += u64::from(pred == truth);
            b.1 += 1;
        }
        self.received += 1;
        if self.classify {
            *self
                .confusion
                .entry((pred as i64, truth as i64))
                .or_default() += 1;
        } else {
            let e = pred - truth;
            self.abs += e.abs();
            self.sq += e * e;
            self.since_resum += 1;
            if self.since_resum >= cap {
                self.abs = self.ring.iter().map(|(p, t)| (p - t).abs()).sum();
                self.sq = self.ring.iter().map(|(p, t)| (p - t) * (p - t)).sum();
                self.since_resum = 0;
            }
        }
    }

    fn forget(&mut self, p: f64, t: f64) {
        if self.classify {
            let k = (p as i64, t as i64);
            if let Some(c) = self.confusion.get_mut(&k) {
                *c -= 1;
                if *c == 0 {
                    self.confusion.remove(&k);
                }
            }
        } else {
            let e = p - t;
            self.abs -= e.abs();
            self.sq -= e * e;
        }
    }

    /// The thresholds a window's labelled metrics are past (`expected_accuracy` is judged
    /// on the predictions, by [`State::judge_estimate`]).
    fn breaches(&self, version: u64, t: &crate::config::QualityThresholds) -> Vec<Breach> {
        let r = self.report(version);
        let value = |name: &str| -> Option<f64> {
            match name {
                "accuracy" => r.accuracy,
                "macro_f1" => r.macro_f1,
                "mae" => r.mae,
                "rmse" => r.rmse,
                _ => {
                    let (what, class) = name.rsplit_once('_')?;
                    let class: i64 = class.parse().ok()?;
                    let c = r.classes.iter().find(|c| c.class == class)?;
                    match what {
                        "precision" => Some(c.precision),
                        "recall" => Some(c.recall),
                        "f1" => Some(c.f1),
                        _ => None,
                    }
                }
            }
        };
        let mut breaches = Vec::new();
        for (bound, list, past) in [
            (
                "min",
                &t.min,
                (|v: f64, th: f64| v < th) as fn(f64, f64) -> bool,
            ),
            ("max", &t.max, |v: f64, th: f64| v > th),
        ] {
            for (metric, th) in list {
                if let Some(v) = value(metric).filter(|&v| past(v, *th)) {
                    breaches.push(Breach {
                        metric: metric.clone(),
                        value: v,
                        bound: bound.to_string(),
                        threshold: *th,
                    });
                }
            }
        }
        breaches
    }

    fn report(&self, version: u64) -> VersionQuality {
        let n = self.ring.len();
        let mut q = VersionQuality {
            version,
            role: self.role.as_str(),
            kind: if self.classify {
                "classification"
            } else {
                "regression"
            },
            labels_received: self.received,
            window_rows: n as u64,
            accuracy: None,
            macro_f1: None,
            classes: Vec::new(),
            mae: None,
            rmse: None,
        };
        if n == 0 {
            return q;
        }
        if !self.classify {
            q.mae = Some(self.abs.max(0.0) / n as f64);
            q.rmse = Some((self.sq.max(0.0) / n as f64).sqrt());
            return q;
        }
        let mut tp: BTreeMap<i64, u64> = BTreeMap::new();
        let mut predicted: BTreeMap<i64, u64> = BTreeMap::new();
        let mut actual: BTreeMap<i64, u64> = BTreeMap::new();
        for (&(p, t), &c) in &self.confusion {
            *predicted.entry(p).or_default() += c;
            *actual.entry(t).or_default() += c;
            tp.entry(p).or_default();
            tp.entry(t).or_default();
            if p == t {
                *tp.entry(p).or_default() += c;
            }
        }
        let correct: u64 = tp.values().sum();
        q.accuracy = Some(correct as f64 / n as f64);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        for (&class, &hits) in &tp {
            let (pc, ac) = (
                predicted.get(&class).copied().unwrap_or(0),
                actual.get(&class).copied().unwrap_or(0),
            );
            q.classes.push(ClassQuality {
                class,
                predicted: pc,
                actual: ac,
                precision: ratio(hits, pc),
                recall: ratio(hits, ac),
                // sklearn's F1 with zero_division=0: 2tp / (2tp + fp + fn).
                f1: ratio(2 * hits, pc + ac),
            });
        }
        q.macro_f1 = Some(q.classes.iter().map(|c| c.f1).sum::<f64>() / q.classes.len() as f64);
        q
    }
}

/// Live quality of one version, over its rolling window.
#[derive(Clone, Debug, Serialize)]
pub struct VersionQuality {
    pub version: u64,
    pub role: &'static str,
    pub kind: &'static str,
    /// Labelled rows joined since the version was first labelled.
    pub labels_received: u64,
    /// Labelled rows in the rolling window now.
    pub window_rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassQuality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassQuality {
    pub class: i64,
    /// Rows predicted as this class, and rows truly of it, in the window.
    pub predicted: u64,
    pub actual: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// The model's quality report (`GET /v2/models/{m}/quality`, and the drift report's
/// `quality`).
#[derive(Clone, Debug, Serialize)]
pub struct QualityReport {
    pub enabled: bool,
    /// Predicted rows waiting for a label (within the window).
    pub labels_pending: u64,
    pub joined: u64,
    pub late: u64,
    pub unknown: u64,
    pub invalid: u64,
    pub versions: Vec<VersionQuality>,
    /// Per version with a probability output: the accuracy to expect without labels.
    pub expected: Vec<ExpectedQuality>,
}

/// A version's rolling window of predicted confidences (labelled or not), for the
/// expected accuracy (CBPE's idea: the mean calibrated confidence is the accuracy to
/// expect, as long as only the inputs moved).
struct Estimate {
    ring: VecDeque<f64>,
    /// Unix time of each ring row's prediction, in step with `ring`.
    times: VecDeque<f64>,
    /// The version's role (a shadow's only until it answers as itself).
    role: Role,
    /// Its estimate was below `min_quality.expected_accuracy` when last judged.
    degraded: bool,
    /// Per confidence bin: rows of the ring, and the sum of their confidences.
    counts: [u64; BINS],
    sums: [f64; BINS],
    /// Rows since the gauge was last set.
    since_publish: usize,
}

impl Estimate {
    fn new(role: Role) -> Estimate {
        Estimate {
            ring: VecDeque::new(),
            times: VecDeque::new(),
            role,
            degraded: false,
            counts: [0; BINS],
            sums: [0.0; BINS],
            since_publish: 0,
        }
    }

    fn push(&mut self, cap: usize, conf: f64, unix: f64) {
        while self.ring.len() >= cap {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            self.times.pop_front();
            let b = bin_of(old);
            self.counts[b] -= 1;
            self.sums[b] -= old;
            if self.counts[b] == 0 {
                self.sums[b] = 0.0;
            }
        }
        self.ring.push_back(conf);
        self.times.push_back(unix);
        let b = bin_of(conf);
        self.counts[b] += 1;
        self.sums[b] += conf;
    }

    /// The expected accuracy: per bin, the labelled accuracy of that bin when it has
    /// labelled rows (histogram binning), else the bin's mean confidence (uncalibrated);
    /// and the labelled rows the calibration rests on.
    fn expected(&self, labelled: Option<&Quality>) -> Option<(f64, u64)> {
        let n: u64 = self.counts.iter().sum();
        if n == 0 {
            return None;
        }
        let cal = labelled.map_or([(0, 0); BINS], |q| q.calibration);
        let mut total = 0.0;
        for ((&count, &sum), &(right, seen)) in self.counts.iter().zip(&self.sums).zip(&cal) {
            if count == 0 {
                continue;
            }
            let acc = if seen > 0 {
                right as f64 / seen as f64
            } else {
                sum / count as f64
            };
            total += count as f64 * acc;
        }
        Some((total / n as f64, cal.iter().map(|c| c.1).sum()))
    }
}

/// The expected accuracy of one version.
#[derive(Clone, Debug, Serialize)]
pub struct ExpectedQuality {
    pub version: u64,
    /// The mean calibrated top probability over the last `quality_window` predictions.
    pub expected_accuracy: f64,
    /// Predictions it is computed over.
    pub rows: u64,
    /// Labelled rows the calibration is fitted on (0: uncalibrated, the raw confidence).
    pub calibrated_on: u64,
}

/// A request id as the index keeps it: 128 bits of two keyed SipHashes, so an entry's
/// memory does not grow with the id a client chose (ids are as long as a body allows),
/// and nobody can aim for a collision (the keys are random per process).
type Key = u128;

#[derive(Default)]
struct State {
    settings: Option<FeedbackSettings>,
    keys: (std::hash::RandomState, std::hash::RandomState),
    map: HashMap<Key, Entry>,
    /// Insertion order for the sweep; an id whose entry was replaced or joined is skipped
    /// (and compacted away once they outnumber the live ones).
    order: VecDeque<(Instant, Key)>,
    rows: usize,
    /// Ids swept or evicted unlabelled, so that their truth is counted `late`.
    expired: HashSet<Key>,
    expired_order: VecDeque<Key>,
    quality: BTreeMap<u64, Quality>,
    estimates: BTreeMap<u64, Estimate>,
    /// The versions loaded now: a label for any other one is joined but measured nowhere,
    /// so that an unloaded version's quality series stay removed.
    live: Option<BTreeSet<u64>>,
    totals: JoinSummary,
}

impl State {
    fn key(&self, id: &str) -> Key {
        use std::hash::BuildHasher;
        ((self.keys.0.hash_one(id) as u128) << 64) | self.keys.1.hash_one(id) as u128
    }

    fn sweep(&mut self, now: Instant) {
        let Some(s) = &self.settings else {
            return;
        };
        let (window, capacity) = (s.window, s.capacity);
        while let Some((at, _)) = self.order.front() {
            let aged = now.duration_since(*at) >= window;
            if !aged && self.rows <= capacity {
                break;
            }
            let (at, id) = self.order.pop_front().expect("front exists");
            if self.map.get(&id).is_some_and(|e| e.at == at) {
                let e = self.map.remove(&id).expect("present");
                self.rows -= e.rows();
                self.expired.insert(id);
                self.expired_order.push_back(id);
                while self.expired_order.len() > capacity {
                    if let Some(old) = self.expired_order.pop_front() {
                        self.expired.remove(&old);
                    }
                }
            }
        }
        // Ids asked again or joined leave their old place in the order behind: once those
        // outnumber the live entries, drop them (amortised O(1) per request).
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(at, id)| map.get(id).is_some_and(|e| e.at == *at));
        }
    }
}

impl State {
    /// Judges version `v`'s full window of labelled rows against the thresholds; a trip
    /// when the version crosses into breach (its estimate was not in breach either).
    fn judge_labels(&mut self, v: u64) -> Option<QualityTrip> {
        let s = self.settings.as_ref()?;
        let q = self.quality.get_mut(&v)?;
        if s.thresholds.is_empty() || q.ring.len() < s.quality_rows {
            return None;
        }
        let breaches = q.breaches(v, &s.thresholds);
        let estimate = self.estimates.get(&v).is_some_and(|e| e.degraded);
        let was = std::mem::replace(&mut q.degraded, !breaches.is_empty()) || estimate;
        if was || breaches.is_empty() {
            return None;
        }
        let (from, to) = span(&q.times);
        Some(QualityTrip {
            version: v,
            role: q.role,
            breaches,
            window_rows: q.ring.len() as u64,
            labels_received: q.received,
            from,
            to,
            expected: None,
        })
    }

    /// Judges version `v`'s expected accuracy over its full window of predictions
    /// (`quality_window`, labelled or not) against `min_quality.expected_accuracy`; a
    /// trip when the version crosses into breach (its labelled window was not in breach).
    fn judge_estimate(&mut self, v: u64) -> Option<QualityTrip> {
        let s = self.settings.as_ref()?;
        let floor = s.thresholds.expected_accuracy()?;
        let e = self.estimates.get_mut(&v)?;
        if e.ring.len() < s.quality_rows {
            return None;
        }
        let q = self.quality.get(&v);
        let (x, calibrated_on) = e.expected(q)?;
        let breached = x < floor;
        let was = std::mem::replace(&mut e.degraded, breached) || q.is_some_and(|q| q.degraded);
        if was || !breached {
            return None;
        }
        let (from, to) = span(&e.times);
        Some(QualityTrip {
            version: v,
            role: e.role,
            breaches: vec![Breach {
                metric: crate::config::EXPECTED_ACCURACY.to_string(),
                value: x,
                bound: "min".to_string(),
                threshold: floor,
            }],
            window_rows: q.map_or(0, |q| q.ring.len() as u64),
            labels_received: q.map_or(0, |q| q.received),
            from,
            to,
            expected: Some(crate::retrain::ExpectedInfo {
                rows: e.ring.len() as u64,
                calibrated_on,
            }),
        })
    }
}

/// One model's join index and quality windows.
pub struct Feedback {
    model: String,
    on: AtomicBool,
    state: Mutex<State>,
    metrics: PayloadFamilies,
}

impl Feedback {
    pub fn new(model: &str, metrics: PayloadFamilies) -> Feedback {
        Feedback {
            model: model.to_string(),
            on: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves consistent-enough counters.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the model's current `[logging]` (None: feedback off, everything dropped).
    pub fn configure(&self, settings: Option<FeedbackSettings>) {
        let mut st = self.lock();
        if st.settings == settings {
            return;
        }
        self.on.store(settings.is_some(), Ordering::Release);
        if settings.is_none() {
            *st = State::default();
            self.metrics.clear_feedback(&self.model);
        } else {
            st.settings = settings;
            st.sweep(Instant::now());
        }
    }

    /// The versions loaded now: the windows of the others are dropped (their
    /// `vigil_model_quality` series go with the version, in `Metrics::remove_version`),
    /// and their pending predictions measure nothing when labelled.
    pub fn retain_versions(&self, live: impl IntoIterator<Item = u64>) {
        let live: BTreeSet<u64> = live.into_iter().collect();
        let mut st = self.lock();
        st.quality.retain(|v, _| live.contains(v));
        st.estimates.retain(|v, _| live.contains(v));
        st.live = Some(live);
    }

    /// Whether predictions are kept for feedback.
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// The output the predictions are read from.
    pub fn prediction_output(&self) -> Option<String> {
        self.lock()
            .settings
            .as_ref()
            .and_then(|s| s.prediction.clone())
    }

    /// Keeps one answer's predictions under the request's id (the shadow canary's answer
    /// joins the same entry).
    pub fn record(
        &self,
        id: &str,
        version: u64,
        role: Role,
        preds: Predictions,
    ) -> Option<QualityTrip> {
        self.record_at(id, version, role, preds, crate::retrain::now_unix())
    }

    /// [`Feedback::record`] of a request that started running at `unix` (the payload
    /// record's `time`, which a quality event's time range covers). Returns a trip when
    /// the version's expected accuracy crossed below `min_quality.expected_accuracy`
    /// (judged every 16 predictions, as the gauge is set): the caller hands it to the
    /// outbox off the request path.
    pub fn record_at(
        &self,
        id: &str,
        version: u64,
        role: Role,
        preds: Predictions,
        unix: f64,
    ) -> Option<QualityTrip> {
        let now = Instant::now();
        let mut st = self.lock();
        st.settings.as_ref()?;
        let mut trip = None;
        st.rows += preds.values.len();
        let live = st.live.as_ref().is_none_or(|l| l.contains(&version));
        if let (Some(confs), true) = (&preds.confidence, live) {
            let cap = st.settings.as_ref().map_or(1000, |s| s.quality_rows);
            let est = st
                .estimates
                .entry(version)
                .or_insert_with(|| Estimate::new(role));
            if role != Role::Shadow {
                est.role = role;
            }
            for &c in confs {
                est.push(cap, c, unix);
            }
            est.since_publish += confs.len();
            // The gauge every 16 rows (and at every join): a few bins' arithmetic.
            let due = est.since_publish >= 16;
            if due {
                est.since_publish = 0;
                self.publish_expected(&st, version);
                trip = st.judge_estimate(version);
            }
        }
        let answer = Answer {
            version,
            role,
            preds,
        };
        let id = st.key(id);
        match st.map.get_mut(&id) {
            Some(e) if role == Role::Shadow => e.answers.push(answer),
            _ => {
                if let Some(old) = st.map.insert(
                    id,
                    Entry {
                        at: now,
                        unix,
                        answers: vec![answer],
                    },
                ) {
                    st.rows -= old.rows();
                }
                st.order.push_back((now, id));
            }
        }
        st.sweep(now);
        self.metrics
            .pending
            .with_label_values(&[&self.model])
            .set(st.rows as i64);
        trip
    }

    /// Joins truths to their predictions.
    pub fn join(&self, truths: Vec<Truth>) -> JoinSummary {
        self.join_judged(truths, None).0
    }

    /// Joins truths to their predictions, and judges each version whose window they
    /// changed against `[retrain]`'s thresholds. With `lines`, each joined answer is
    /// appended there as one JSON line (id, times, version, role, prediction, truth) for
    /// the payload log's labels files.
    pub fn join_judged(
        &self,
        truths: Vec<Truth>,
        mut lines: Option<&mut Vec<u8>>,
    ) -> (JoinSummary, Vec<QualityTrip>) {
        let joined_at = crate::retrain::rfc3339(crate::retrain::now_unix());
        let now = Instant::now();
        let mut sum = JoinSummary::default();
        let mut st = self.lock();
        st.sweep(now);
        let Some(cap) = st.settings.as_ref().map(|s| s.quality_rows) else {
            sum.unknown = truths.len() as u64;
            return (self.count(&mut st, sum), Vec::new());
        };
        let mut touched = BTreeSet::new();
        for t in truths {
            let key = st.key(&t.id);
            let Some(entry) = st.map.get(&key) else {
                if st.expired.remove(&key) {
                    sum.late += 1;
                } else {
                    sum.unknown += 1;
                }
                continue;
            };
            if entry
                .answers
                .iter()
                .any(|a| a.preds.values.len() != t.values.len())
            {
                sum.invalid += 1;
                continue;
            }
            let entry = st.map.remove(&key).expect("found above");
            st.rows -= entry.rows();
            for a in entry.answers {
                if let Some(out) = lines.as_deref_mut() {
                    let line = serde_json::json!({
                        "id": t.id,
                        "time": joined_at,
                        "prediction_time": crate::retrain::rfc3339(entry.unix),
                        "model": self.model,
                        "model_version": a.version.to_string(),
                        "role": a.role.as_str(),
                        "prediction": a.preds.values,
                        "truth": t.values,
                    });
                    serde_json::to_writer(&mut *out, &line)
                        .expect("serialising plain data cannot fail");
                    out.push(b'\n');
                }
                if st.live.as_ref().is_some_and(|l| !l.contains(&a.version)) {
                    continue;
                }
                let q = st
                    .quality
                    .entry(a.version)
                    .or_insert_with(|| Quality::new(a.role, a.preds.classify));
                if a.role != Role::Shadow || q.role == Role::Shadow {
                    q.role = a.role;
                }
                for (i, (&p, &y)) in a.preds.values.iter().zip(&t.values).enumerate() {
                    let conf = a.preds.confidence.as_ref().and_then(|c| c.get(i).copied());
                    q.push(cap, p, y, entry.unix, conf);
                }
                touched.insert(a.version);
            }
            sum.joined += 1;
        }
        let mut trips = Vec::new();
        for v in touched {
            // The labels move the estimate's calibration too: both are judged.
            trips.extend(st.judge_labels(v));
            trips.extend(st.judge_estimate(v));
        }
        self.publish(&st);
        (self.count(&mut st, sum), trips)
    }

    fn count(&self, st: &mut State, sum: JoinSummary) -> JoinSummary {
        let m = &self.metrics.feedback;
        for (result, n) in [
            ("joined", sum.joined),
            ("late", sum.late),
            ("unknown", sum.unknown),
            ("invalid", sum.invalid),
        ] {
            m.with_label_values(&[&self.model, result]).inc_by(n);
        }
        st.totals.joined += sum.joined;
        st.totals.late += sum.late;
        st.totals.unknown += sum.unknown;
        st.totals.invalid += sum.invalid;
        self.metrics
            .pending
            .with_label_values(&[&self.model])
            .set(st.rows as i64);
        sum
    }

    /// Sets `vigil_model_quality{metric="expected_accuracy"}` of one version.
    fn publish_expected(&self, st: &State, version: u64) {
        let Some((x, _)) = st
            .estimates
            .get(&version)
            .and_then(|e| e.expected(st.quality.get(&version)))
        else {
            return;
        };
        let v = version.to_string();
        self.metrics
            .quality
            .with_label_values(&[&self.model, &v, "expected_accuracy"])
            .set(x);
        self.metrics
            .quality_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((self.model.clone(), version))
            .or_default()
            .insert("expected_accuracy".to_string());
    }

    /// Sets `vigil_model_quality` from the windows.
    fn publish(&self, st: &State) {
        for &version in st.estimates.keys() {
            self.publish_expected(st, version);
        }
        let g = &self.metrics.quality;
        for (&version, q) in &st.quality {
            let v = version.to_string();
            let r = q.report(version);
            let names = std::cell::RefCell::new(BTreeSet::new());
            let set = |metric: &str, x: f64| {
                g.with_label_values(&[&self.model, &v, metric]).set(x);
                names.borrow_mut().insert(metric.to_string());
            };
            set("labels_received", r.labels_received as f64);
            set("window_rows", r.window_rows as f64);
            for (name, x) in [
                ("accuracy", r.accuracy),
                ("macro_f1", r.macro_f1),
                ("mae", r.mae),
                ("rmse", r.rmse),
            ] {
                if let Some(x) = x {
                    set(name, x);
                }
            }
            for c in r
                .classes
                .iter()
                .filter(|c| c.predicted > 0)
                .take(MAX_CLASS_SERIES)
            {
                set(&format!("precision_{}", c.class), c.precision);
                set(&format!("recall_{}", c.class), c.recall);
                set(&format!("f1_{}", c.class), c.f1);
            }
            self.metrics
                .quality_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry((self.model.clone(), version))
                .or_default()
                .extend(names.into_inner());
        }
    }

    pub fn report(&self) -> QualityReport {
        let mut st = self.lock();
        st.sweep(Instant::now());
        QualityReport {
            enabled: st.settings.is_some(),
            labels_pending: st.rows as u64,
            joined: st.totals.joined,
            late: st.totals.late,
            unknown: st.totals.unknown,
            invalid: st.totals.invalid,
            versions: st.quality.iter().map(|(&v, q)| q.report(v)).collect(),
            expected: st
                .estimates
                .iter()
                .filter_map(|(&v, e)| {
                    let (x, on) = e.expected(st.quality.get(&v))?;
                    Some(ExpectedQuality {
                        version: v,
                        expected_accuracy: x,
                        rows: e.ring.len() as u64,
                        calibrated_on: on,
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(window_ms: u64, capacity: usize) -> Feedback {
        let f = Feedback::new("m", crate::metrics::Metrics::new().payload());
        f.configure(Some(FeedbackSettings {
            window: Duration::from_millis(window_ms),
            capacity,
            quality_rows: 1000,
            prediction: None,
            thresholds: Default::default(),
        }));
        f
    }

    fn class(v: &[f64]) -> Predictions {
        Predictions {
            classify: true,
            values: v.to_vec(),
            confidence: None,
        }
    }

    #[test]
    fn classification_metrics_by_hand() {
        let f = fb(60_000, 1000);
        // pred: 0 0 1 1 2 ; true: 0 1 1 1 0
        f.record("a", 1, Role::Stable, class(&[0.0, 0.0, 1.0, 1.0, 2.0]));
        let s = f.join(vec![Truth {
            id: "a".into(),
            values: vec![0.0, 1.0, 1.0, 1.0, 0.0],
        }]);
        assert_eq!(s.joined, 1);
        let r = f.report();
        let q = &r.versions[0];
        assert_eq!(q.accuracy, Some(0.6));
        let c0 = &q.classes[0];
        assert_eq!((c0.precision, c0.recall), (0.5, 0.5));
        let c1 = &q.classes[1];
        assert_eq!((c1.precision, c1.recall), (1.0, 2.0 / 3.0));
        let c2 = &q.classes[2];
        assert_eq!((c2.precision, c2.recall, c2.f1), (0.0, 0.0, 0.0));
        // A second truth for the same id is unknown; a wrong row count invalid.
        let s = f.join(vec![Truth {
            id: "a".into(),
            values: vec![0.0; 5],
        }]);
        assert_eq!(s.unknown, 1);
        f.record("b", 1, Role::Stable, class(&[1.0]));
        let s = f.join(vec![Truth {
            id: "b".into(),
            values: vec![1.0, 2.0],
        }]);
        assert_eq!(s.invalid, 1);
    }

    #[test]
    fn capacity_evicts_oldest_as_late_and_memory_stays_bounded() {
        let f = fb(60_000, 10);
        for i in 0..100 {
            f.record(&format!("r{i}"), 1, Role::Stable, class(&[1.0]));
        }
        let r = f.report();
        assert_eq!(r.labels_pending, 10);
        // r80..r89 were evicted last and are remembered as late; r0 is long forgotten
        // (the memory of expired ids is bounded by the capacity too).
        let s = f.join(vec![
            Truth {
                id: "r89".into(),
                values: vec![1.0],
            },
            Truth {
                id: "r0".into(),
                values: vec![1.0],
            },
            Truth {
                id: "r99".into(),
                values: vec![1.0],
            },
            Truth {
                id: "nope".into(),
                values: vec![1.0],
            },
        ]);
        assert_eq!((s.joined, s.late, s.unknown), (1, 1, 2));
        assert!(f.lock().expired.len() <= 10);
    }

    #[test]
    fn rolling_window_forgets_the_oldest_rows() {
        let f = Feedback::new("m", crate::metrics::Metrics::new().payload());
        f.configure(Some(FeedbackSettings {
            window: Duration::from_secs(60),
            capacity: 1000,
            quality_rows: 4,
            prediction: None,
            thresholds: Default::default(),
        }));
        let reg = |v: &[f64]| Predictions {
            classify: false,
            values: v.to_vec(),
            confidence: None,
        };
        f.record("a", 1, Role::Stable, reg(&[10.0, 10.0, 0.0, 0.0, 0.0, 0.0]));
        f.join(vec![Truth {
            id: "a".into(),
            values: vec![0.0; 6],
        }]);
        let q = &f.report().versions[0];
        assert_eq!(q.window_rows, 4);
        assert_eq!(q.mae, Some(0.0));
        assert_eq!(q.labels_received, 6);
    }

    #[test]
    fn a_full_window_below_min_quality_trips_once_per_crossing() {
        let f = Feedback::new("m", crate::metrics::Metrics::new().payload());
        f.configure(Some(FeedbackSettings {
            window: Duration::from_secs(60),
            capacity: 1000,
            quality_rows: 4,
            prediction: None,
            thresholds: crate::config::QualityThresholds {
                min: vec![("accuracy".into(), 0.75)],
                max: vec![],
            },
        }));
        let mut n = 0;
        let mut label = |truth: f64| {
            n += 1;
            let id = format!("r{n}");
            f.record(&id, 1, Role::Stable, class(&[1.0]));
            f.join_judged(
                vec![Truth {
                    id,
                    values: vec![truth],
                }],
                None,
            )
            .1
        };
        // Not judged before the window is full, however bad.
        for _ in 0..3 {
            assert_eq!(label(0.0), vec![]);
        }
        let trips = label(0.0);
        assert_eq!(trips.len(), 1, "the full window trips");
        assert_eq!(trips[0].breaches[0].metric, "accuracy");
        assert_eq!(trips[0].breaches[0].value, 0.0);
        assert!(trips[0].from <= trips[0].to);
        // Still below: no second trip; back to 0.75 (not below): re-armed; below: trips.
        assert_eq!(label(0.0), vec![]);
        for _ in 0..3 {
            label(1.0);
        }
        assert_eq!(label(1.0), vec![]);
        assert_eq!(label(0.0), vec![], "0.75 is not below 0.75");
        assert_eq!(label(0.0).len(), 1);
    }

    #[test]
    fn expected_accuracy_trips_before_labels_and_the_labels_do_not_trip_it_again() {
        let f = Feedback::new("m", crate::metrics::Metrics::new().payload());
        f.configure(Some(FeedbackSettings {
            window: Duration::from_secs(60),
            capacity: 1000,
            quality_rows: 32,
            prediction: None,
            thresholds: crate::config::QualityThresholds {
                min: vec![("accuracy".into(), 0.8), ("expected_accuracy".into(), 0.8)],
                max: vec![],
            },
        }));
        let mut n = 0;
        let mut serve = |conf: f64| {
            n += 1;
            let id = format!("r{n}");
            let preds = Predictions {
                classify: true,
                values: vec![1.0],
                confidence: Some(vec![conf]),
            };
            (
                id.clone(),
                f.record_at(&id, 1, Role::Stable, preds, n as f64),
            )
        };
        // Confident predictions fill the window: judged every 16, within the floor.
        for _ in 0..64 {
            assert_eq!(serve(0.95).1, None);
        }
        // Unsure ones: the estimate falls below 0.8 once 16 are in (0.95 * 16 + 0.5 * 16
        // over 32 = 0.725), with no label at all.
        let trips: Vec<(String, QualityTrip)> = (0..64)
            .filter_map(|_| {
                let (id, t) = serve(0.5);
                t.map(|t| (id, t))
            })
            .collect();
        assert_eq!(trips.len(), 1, "one trip per crossing: {trips:?}");
        let (id, trip) = &trips[0];
        assert_eq!(id, "r80", "judged at the 16th unsure prediction");
        let b = &trip.breaches[0];
        assert_eq!(
            (b.metric.as_str(), b.bound.as_str()),
            ("expected_accuracy", "min")
        );
        assert!((b.value - 0.725).abs() < 1e-9, "{b:?}");
        let e = trip.expected.as_ref().expect("an estimate trip says so");
        assert_eq!((e.rows, e.calibrated_on), (32, 0));
        assert_eq!((trip.from, trip.to), (49.0, 80.0));
        // The labels then measure a bad window too: the version is already degraded, so
        // no second trip.
        let truths = (97..=128)
            .map(|i| Truth {
                id: format!("r{i}"),
                values: vec![0.0],
            })
            .collect();
        let (sum, trips) = f.join_judged(truths, None);
        assert_eq!(sum.joined, 32);
        assert_eq!(trips, vec![]);
        // Both back within (right labels calibrate the 0.5 bin to 1.0), then the labels
        // alone cross: that trips again, as a labelled-window trip.
        let right: Vec<Truth> = (0..32)
            .map(|_| {
                let (id, _) = serve(0.5);
                Truth {
                    id,
                    values: vec![1.0],
                }
            })
            .collect();
        let (_, trips) = f.join_judged(right, None);
        assert_eq!(trips, vec![]);
        assert!(!f.lock().estimates[&1].degraded && !f.lock().quality[&1].degraded);
        let wrong: Vec<Truth> = (0..32)
            .map(|_| Truth {
                id: serve(0.95).0,
                values: vec![0.0],
            })
            .collect();
        let (_, trips) = f.join_judged(wrong, None);
        assert_eq!(trips.len(), 1, "{trips:?}");
        assert_eq!(trips[0].breaches[0].metric, "accuracy");
        assert_eq!(trips[0].expected, None);
    }

    #[test]
    fn argmax_of_probabilities_and_labels_of_integers() {
        let t = Tensor {
            name: "p".into(),
            shape: vec![2, 3],
            data: TensorData::Fp32(vec![0.1, 0.7, 0.2, 0.5, 0.2, 0.3]),
        };
        assert_eq!(Predictions::from_output(&t), Some(class(&[1.0, 0.0])));
        let t = Tensor {
            name: "l".into(),
            shape: vec![2],
            data: TensorData::Int64(vec![2, 0]),
        };
        assert_eq!(Predictions::from_output(&t), Some(class(&[2.0, 0.0])));
    }
}

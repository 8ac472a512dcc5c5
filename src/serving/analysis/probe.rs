//! The request path's side of the judge: one [`Probe`] per model, shared by every routing
//! entry the model has had (like the split counter), holding the current step's
//! accumulators per arm. Recording is one atomic load when no analysis runs, and
//! otherwise a short uncontended lock per arm with no allocation: the reservoirs are
//! allocated at step start, off the request path, and never grow past their capacity.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::rng::Rng;
use crate::tensor::{DataType, Tensor};

/// Latency samples kept per arm and step (reservoir-sampled beyond).
pub const LATENCY_SAMPLE: usize = 2048;
/// Regression outputs kept per arm and step (reservoir-sampled beyond).
pub const VALUE_SAMPLE: usize = 2048;
/// Class labels counted one by one; any other label (negative, larger) shares a bucket.
pub const CLASSES: usize = 32;

/// Which version of the rollout answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Stable = 0,
    Canary = 1,
}

/// A bounded uniform sample of a stream (Vitter's algorithm R).
pub struct Reservoir {
    pub values: Vec<f64>,
    /// Values offered, kept or not.
    pub seen: u64,
    cap: usize,
}

impl Reservoir {
    fn new(cap: usize) -> Reservoir {
        Reservoir {
            values: Vec::with_capacity(cap),
            seen: 0,
            cap,
        }
    }

    #[inline]
    fn push(&mut self, x: f64, rng: &mut Rng) {
        self.seen += 1;
        if self.values.len() < self.cap {
            self.values.push(x);
        } else {
            let j = rng.below(self.seen) as usize;
            if j < self.cap {
                self.values[j] = x;
            }
        }
    }
}

/// One arm's figures for the current step.
pub struct ArmData {
    pub requests: u64,
    pub errors: u64,
    /// Latency of the requests that succeeded, in seconds.
    pub latency: Reservoir,
    /// Rows per predicted class (`CLASSES` = any other label).
    pub classes: [u64; CLASSES + 1],
    /// Regression outputs.
    pub values: Reservoir,
    rng: Rng,
}

impl ArmData {
    fn new(seed: u64) -> ArmData {
        ArmData {
            requests: 0,
            errors: 0,
            latency: Reservoir::new(LATENCY_SAMPLE),
            classes: [0; CLASSES + 1],
            values: Reservoir::new(VALUE_SAMPLE),
            rng: Rng::new(seed),
        }
    }

    /// An arm known only by its counts (a step's durable record, after a restart).
    pub fn from_counts(requests: u64, errors: u64) -> ArmData {
        ArmData {
            requests,
            errors,
            ..ArmData::new(0)
        }
    }

    pub fn class_rows(&self) -> u64 {
        self.classes.iter().sum()
    }
}

/// Shadow mode: the canary's answers compared with the stable one's, request by request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShadowData {
    /// Rows compared as labels, and those where both versions agreed.
    pub label_rows: u64,
    pub agreed: u64,
    /// Rows compared as values (regressors): sum and largest absolute difference.
    pub value_rows: u64,
    pub abs_diff_sum: f64,
    pub max_abs_diff: f64,
    /// Pairs whose shapes or kinds did not match (counted as disagreement).
    pub mismatched: u64,
}

/// One step's data, taken out of the probe when the step is judged.
pub struct StepData {
    pub stable: ArmData,
    pub canary: ArmData,
    pub shadow: ShadowData,
}

/// A model's accumulators.
pub struct Probe {
    active: AtomicBool,
    arms: [Mutex<ArmData>; 2],
    shadow: Mutex<ShadowData>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            active: AtomicBool::new(false),
            arms: [Mutex::new(ArmData::new(1)), Mutex::new(ArmData::new(2))],
            shadow: Mutex::new(ShadowData::default()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the request path carries from routing to the answer: the probe and the arm.
#[derive(Clone)]
pub struct Judged {
    pub probe: Arc<Probe>,
    pub arm: Arm,
}

impl Judged {
    /// A request routed to this arm failed before it reached the model.
    pub fn record_failure(&self) {
        self.probe.record(self.arm, Duration::ZERO, Err(()));
    }

    /// A request this arm answered (its first output is judged) or failed.
    pub fn record<E>(&self, latency: Duration, result: &Result<Vec<Tensor>, E>) {
        let outcome = result
            .as_ref()
            .map(|outputs| outputs.first())
            .map_err(|_| ());
        self.probe.record(self.arm, latency, outcome);
    }
}

impl Probe {
    /// Whether a step is being measured (routing attaches the probe only then).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts a new step (or stops measuring, `active = false`) and returns what the
    /// previous one collected. The fresh accumulators are allocated before any lock.
    pub fn restart(&self, active: bool, seed: u64) -> StepData {
        let (s, c) = (
            ArmData::new(seed | 1),
            ArmData::new(seed.rotate_left(17) | 1),
        );
        let stable = std::mem::replace(&mut *lock(&self.arms[0]), s);
        let canary = std::mem::replace(&mut *lock(&self.arms[1]), c);
        let shadow = std::mem::take(&mut *lock(&self.shadow));
        self.active.store(active, Ordering::Relaxed);
        StepData {
            stable,
            canary,
            shadow,
        }
    }

    /// Requests and errors so far in this step, per arm.
    pub fn counts(&self) -> [(u64, u64); 2] {
        let a = |i: usize| {
            let d = lock(&self.arms[i]);
            (d.requests, d.errors)
        };
        [a(0), a(1)]
    }

    /// The shadow comparison so far in this step.
    pub fn shadow(&self) -> ShadowData {
        *lock(&self.shadow)
    }

    /// Records one answered (`Some(output)`, the judged output; `None` when the model
    /// has no output to judge) or failed request.
    pub fn record(&self, arm: Arm, latency: Duration, outcome: Result<Option<&Tensor>, ()>) {
        if !self.is_active() {
            return;
        }
        let mut d = lock(&self.arms[arm as usize]);
        let d = &mut *d;
        d.requests += 1;
        match outcome {
            Err(()) => d.errors += 1,
            Ok(output) => {
                d.latency.push(latency.as_secs_f64(), &mut d.rng);
                if let Some(t) = output {
                    let rows = rows_of(t);
                    for r in 0..rows {
                        match answer_at(t, r, rows) {
                            Some(Answer::Class(c)) => d.classes[class_bucket(c)] += 1,
                            Some(Answer::Value(v)) if v.is_finite() => d.values.push(v, &mut d.rng),
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    /// Shadow mode: compares the canary's answer with the stable one, row by row.
    pub fn compare(&self, stable: &Tensor, canary: &Tensor) {
        if !self.is_active() {
            return;
        }
        let rows = rows_of(stable);
        let mut acc = ShadowData::default();
        if rows != rows_of(canary) {
            acc.mismatched += rows as u64;
        } else {
            for r in 0..rows {
                match (answer_at(stable, r, rows), answer_at(canary, r, rows)) {
                    (Some(Answer::Class(a)), Some(Answer::Class(b))) => {
                        acc.label_rows += 1;
                        acc.agreed += u64::from(a == b);
                    }
                    (Some(Answer::Value(a)), Some(Answer::Value(b))) => {
                        let d = (a - b).abs();
                        acc.value_rows += 1;
                        if d.is_finite() {
                            acc.abs_diff_sum += d;
                            acc.max_abs_diff = acc.max_abs_diff.max(d);
                        } else {
                            acc.max_abs_diff = f64::INFINITY;
                        }
                    }
                    _ => acc.mismatched += 1,
                }
            }
        }
        let mut s = lock(&self.shadow);
        s.label_rows += acc.label_rows;
        s.agreed += acc.agreed;
        s.value_rows += acc.value_rows;
        s.abs_diff_sum += acc.abs_diff_sum;
        s.max_abs_diff = s.max_abs_diff.max(acc.max_abs_diff);
        s.mismatched += acc.mismatched;
    }
}

fn class_bucket(c: i64) -> usize {
    if (0..CLASSES as i64).contains(&c) {
        c as usize
    } else {
        CLASSES
    }
}

/// One row's answer: a label (integer outputs; argmax of a score vector) or a value
/// (one float per row: a regressor).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Class(i64),
    Value(f64),
}

trait AsF64: Copy {
    fn f(self) -> f64;
}
macro_rules! as_f64 {
    ($($t:ty),*) => {$( impl AsF64 for $t { #[inline] fn f(self) -> f64 { self as f64 } } )*};
}
as_f64!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

/// Rows of an output: its first dimension (1 for a scalar).
fn rows_of(t: &Tensor) -> usize {
    let rows = t.shape.first().copied().unwrap_or(1);
    if rows == 0 || t.data.len() % rows != 0 {
        0
    } else {
        rows
    }
}

fn is_integer(d: DataType) -> bool {
    !matches!(d, DataType::Fp32 | DataType::Fp64 | DataType::Bytes)
}

/// The answer in row `r` of `rows`; `None` for strings and empty rows.
pub fn answer_at(t: &Tensor, r: usize, rows: usize) -> Option<Answer> {
    let per_row = t.data.len().checked_div(rows)?;
    if per_row == 0 || r >= rows {
        return None;
    }
    let integer = is_integer(t.datatype());
    crate::dispatch_numeric!(&t.data,
        v => {
            let row = &v[r * per_row..(r + 1) * per_row];
            Some(if integer {
                Answer::Class(row[0].f() as i64)
            } else if per_row == 1 {
                Answer::Value(row[0].f())
            } else {
                // argmax, NaN never wins; the first of equal maxima (numpy's argmax).
                let mut best = 0usize;
                let mut top = f64::NEG_INFINITY;
                for (i, x) in row.iter().enumerate() {
                    let x = x.f();
                    if x > top {
                        top = x;
                        best = i;
                    }
                }
                Answer::Class(best as i64)
            })
        },
        bool b => Some(Answer::Class(i64::from(b[r * per_row]))),
        bytes _s => None
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn t(shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor {
            name: "y".into(),
            shape,
            data,
        }
    }

    #[test]
    fn answers_by_kind() {
        let labels = t(vec![3], TensorData::Int64(vec![2, -1, 40]));
        assert_eq!(answer_at(&labels, 0, 3), Some(Answer::Class(2)));
        assert_eq!(class_bucket(-1), CLASSES);
        assert_eq!(class_bucket(40), CLASSES);
        let scores = t(
            vec![2, 3],
            TensorData::Fp32(vec![0.1, 0.7, 0.2, f32::NAN, 0.1, 0.3]),
        );
        assert_eq!(answer_at(&scores, 0, 2), Some(Answer::Class(1)));
        assert_eq!(answer_at(&scores, 1, 2), Some(Answer::Class(2)));
        let reg = t(vec![2, 1], TensorData::Fp64(vec![1.5, -2.0]));
        assert_eq!(answer_at(&reg, 1, 2), Some(Answer::Value(-2.0)));
        // Nothing a model returns can make it index out of bounds.
        let odd = t(vec![4], TensorData::Fp32(vec![1.0, 2.0, 3.0]));
        assert_eq!(rows_of(&odd), 0);
        let empty = t(vec![0, 3], TensorData::Fp32(vec![]));
        assert_eq!(rows_of(&empty), 0);
        assert_eq!(answer_at(&empty, 0, 0), None);
        assert_eq!(answer_at(&reg, 5, 2), None);
    }

    #[test]
    fn records_only_while_active_and_stays_bounded() {
        let p = Probe::default();
        let y = t(vec![2], TensorData::Int64(vec![1, 2]));
        p.record(Arm::Canary, Duration::from_millis(1), Ok(Some(&y)));
        assert_eq!(p.counts(), [(0, 0), (0, 0)]);
        p.restart(true, 7);
        for i in 0..10_000u64 {
            p.record(Arm::Stable, Duration::from_micros(i), Ok(Some(&y)));
        }
        p.record(Arm::Canary, Duration::from_millis(1), Err(()));
        assert_eq!(p.counts(), [(10_000, 0), (1, 1)]);
        let step = p.restart(false, 8);
        assert_eq!(step.stable.latency.values.len(), LATENCY_SAMPLE);
        assert_eq!(step.stable.latency.values.capacity(), LATENCY_SAMPLE);
        assert_eq!(step.stable.latency.seen, 10_000);
        assert_eq!(step.stable.classes[1], 10_000);
        assert_eq!(step.canary.errors, 1);
        assert!(!p.is_active());
    }

    #[test]
    fn shadow_compares_rows() {
        let p = Probe::default();
        p.restart(true, 1);
        let a = t(vec![3], TensorData::Int64(vec![1, 2, 3]));
        let b = t(vec![3], TensorData::Int64(vec![1, 0, 3]));
        p.compare(&a, &b);
        let ra = t(vec![2], TensorData::Fp32(vec![1.0, 2.0]));
        let rb = t(vec![2], TensorData::Fp32(vec![1.5, 1.0]));
        p.compare(&ra, &rb);
        p.compare(&a, &ra);
        let s = p.restart(false, 2).shadow;
        assert_eq!((s.label_rows, s.agreed), (3, 2));
        assert_eq!(s.value_rows, 2);
        assert!((s.abs_diff_sum - 1.5).abs() < 1e-12 && s.max_abs_diff == 1.0);
        assert_eq!(s.mismatched, 3);
    }
}

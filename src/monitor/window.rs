//! The open window: per feature, streaming statistics (bin counts on the reference's
//! bins, Welford mean and variance, min and max, a reservoir sample) updated on the
//! request path without allocating. Knows nothing of scoring, detection or metrics.

use std::ops::Range;

use super::plan::{Extract, FeatureDef, Summary};
use super::profile::{Column, FeatureProfile, Kind};
use super::stats;
use crate::rng::Rng;
use crate::tensor::Tensor;

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
    /// Raw values: all of them up to the cap, then a uniform sample of every finite value
    /// of the window (Algorithm R: the n-th value replaces a random slot with probability
    /// cap/n), so that however long a window stays open its KS sample is a fair draw.
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
pub(super) struct Side {
    pub(super) defs: Vec<FeatureDef>,
    binning: Vec<Binning>,
    pub(super) accs: Vec<FeatureAcc>,
}

impl Side {
    pub(super) fn new(
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

    pub(super) fn fresh(&self, cap: usize, hint: usize) -> Side {
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

    /// Adds rows `range` of a request of `rows` rows (a batch may straddle two windows).
    pub(super) fn observe(
        &mut self,
        tensors: &[Tensor],
        rows: usize,
        range: Range<usize>,
        rng: &mut Rng,
    ) {
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
                v => observe_feature(v, rows, range.clone(), def.extract, binning, acc, rng),
                bool b => observe_feature(b, rows, range.clone(), def.extract, binning, acc, rng),
                bytes _s => {}
            );
        }
    }
}

#[inline]
fn observe_feature<T: AsF64>(
    data: &[T],
    rows: usize,
    range: Range<usize>,
    extract: Extract,
    binning: &Binning,
    acc: &mut FeatureAcc,
    rng: &mut Rng,
) {
    if rows == 0 || data.len() % rows != 0 {
        return;
    }
    let width = data.len() / rows;
    for r in range.start..range.end.min(rows) {
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

pub(super) fn columns_of(side: &Side) -> Vec<Column> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the cap every value of the window has the same chance, cap/n, to be in the
    /// sample, wherever it came in the window.
    #[test]
    fn the_sample_is_a_uniform_draw_of_the_whole_window() {
        let (cap, n, trials) = (10usize, 100usize, 20_000u32);
        let mut hits = vec![0u32; n];
        let mut rng = Rng::new(7);
        for _ in 0..trials {
            let mut acc = FeatureAcc::new(1, cap, cap);
            for i in 0..n {
                acc.push(i as f64, 0, &mut rng);
            }
            assert_eq!(acc.sample.len(), cap);
            for &x in &acc.sample {
                hits[x as usize] += 1;
            }
        }
        // Each count is Binomial(trials, cap/n): 2000 ± 42; a chi-square over the 100
        // positions (99 degrees of freedom) stays under 150 but for 1 run in 1000.
        let expected = f64::from(trials) * cap as f64 / n as f64;
        let chi2: f64 = hits
            .iter()
            .map(|&h| (f64::from(h) - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 150.0, "chi-square {chi2}: {hits:?}");
        // The first and the last tenth of the window are equally represented.
        let first: u32 = hits[..10].iter().sum();
        let last: u32 = hits[90..].iter().sum();
        assert!(
            (f64::from(first) - f64::from(last)).abs() < 400.0,
            "{first} vs {last}"
        );
    }
}

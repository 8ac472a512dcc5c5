//! Drift statistics, computed exactly as scipy computes them (the tests compare against
//! scipy 1.17: statistics to 1e-9, p-values relatively, in log space when tiny).

pub mod compare;
pub mod ks;

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Floor for bin proportions in PSI (no renormalisation afterwards).
pub const PSI_FLOOR: f64 = 1e-4;

/// numpy `searchsorted(edges, x, side="right")`: the number of edges ≤ x.
#[inline]
pub fn bin_of(edges: &[f64], x: f64) -> usize {
    // Edges are few (bins - 1); a linear scan beats binary search up to a few dozen.
    if edges.len() <= 32 {
        edges.iter().take_while(|&&e| e <= x).count()
    } else {
        edges.partition_point(|&e| e <= x)
    }
}

/// numpy `quantile(sorted, q)` with the default linear method; `sorted` must be sorted.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let h = (n - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let t = h - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    // numpy's _lerp: symmetric form for t >= 0.5.
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

/// Population Stability Index: `Σ (cur − ref) · ln(cur / ref)` with both proportions
/// floored at [`PSI_FLOOR`].
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| {
            let (r, c) = (r.max(PSI_FLOOR), c.max(PSI_FLOOR));
            (c - r) * (c / r).ln()
        })
        .sum()
}

fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// `scipy.spatial.distance.jensenshannon(p, q, base=2)`.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let sp: f64 = p.iter().sum();
    let sq: f64 = q.iter().sum();
    let mut total = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        total += rel_entr(a, m) + rel_entr(b, m);
    }
    let js = total / 2.0 / 2f64.ln();
    js.sqrt()
}

/// `scipy.stats.chisquare(observed, expected)`: statistic and p-value with k − 1 degrees
/// of freedom. `expected` must be positive and sum to the observed total.
pub fn chisquare(observed: &[f64], expected: &[f64]) -> (f64, f64) {
    let stat: f64 = observed
        .iter()
        .zip(expected)
        .map(|(&o, &e)| (o - e) * (o - e) / e)
        .sum();
    let dof = observed.len().saturating_sub(1);
    if dof == 0 {
        return (stat, f64::NAN);
    }
    let p = ChiSquared::new(dof as f64)
        .map(|d| d.sf(stat))
        .unwrap_or(f64::NAN);
    (stat, p)
}

/// Cochran's rule: the chi-square approximation needs an expected count of at least this
/// in every bin.
pub const CHI2_MIN_EXPECTED: f64 = 5.0;

/// A chi-square test on bins merged until the counts support it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PooledChiSquare {
    pub statistic: f64,
    pub pvalue: f64,
    /// Bins tested after merging (degrees of freedom + 1).
    pub bins: usize,
}

/// Pearson's chi-square goodness of fit of `observed` counts against the reference
/// `shares` (the total observed spread in proportion), on bins whose expected counts
/// support it: every bin expected below [`CHI2_MIN_EXPECTED`] rows (a rare category;
/// a bin the reference gives no share, such as unseen categories) goes into one pooled
/// bin, and while the pool itself is below that, the smallest remaining bin joins it.
/// Then `scipy.stats.chisquare` on the merged counts. `None` when fewer than two bins
/// are left (too few rows to test).
///
/// Without the pooling a bin expected at 0.1 rows that sees 2 contributes 36 to the
/// statistic: a handful of rows of a category the reference never saw would flag the
/// feature in every window.
pub fn chisquare_pooled(observed: &[u64], shares: &[f64]) -> Option<PooledChiSquare> {
    let (obs, exp) = pool_sparse_bins(observed, shares)?;
    let (statistic, pvalue) = chisquare(&obs, &exp);
    Some(PooledChiSquare {
        statistic,
        pvalue,
        bins: obs.len(),
    })
}

/// The (observed, expected) counts [`chisquare_pooled`] tests: the bins expected at
/// [`CHI2_MIN_EXPECTED`] or more as they are, then the pooled bin.
fn pool_sparse_bins(observed: &[u64], shares: &[f64]) -> Option<(Vec<f64>, Vec<f64>)> {
    let n: u64 = observed.iter().sum();
    let total_share: f64 = shares.iter().filter(|s| s.is_finite() && **s > 0.0).sum();
    if n == 0 || observed.len() != shares.len() || total_share <= 0.0 {
        return None;
    }
    let nf = n as f64;
    let columns = observed.iter().zip(shares).map(|(&o, &s)| {
        let e = if s.is_finite() && s > 0.0 {
            s / total_share * nf
        } else {
            0.0
        };
        (o as f64, e)
    });
    let kept = pool_columns(columns, |&(_, e)| e)?;
    (kept.iter().map(|c| c.1).sum::<f64>() > 0.0).then(|| kept.into_iter().unzip())
}

/// Merges the columns whose `support` (the smallest expected count the test sees in
/// that column; additive over columns) is below [`CHI2_MIN_EXPECTED`] into one pooled
/// column, and while the pool itself is below that, the least supported remaining
/// column joins it. The kept columns come first, in order, then the pool (if any).
/// `None` when fewer than two columns are left.
fn pool_columns(
    columns: impl Iterator<Item = (f64, f64)>,
    support: impl Fn(&(f64, f64)) -> f64,
) -> Option<Vec<(f64, f64)>> {
    let mut pool = (0.0, 0.0);
    let mut pooled = false;
    let mut kept: Vec<(f64, f64)> = Vec::new();
    for c in columns {
        if support(&c) < CHI2_MIN_EXPECTED {
            pool = (pool.0 + c.0, pool.1 + c.1);
            pooled = true;
        } else {
            kept.push(c);
        }
    }
    if pooled && support(&pool) < CHI2_MIN_EXPECTED {
        // Least supported first, so that the pool takes as little as it can; the order
        // of the rest is kept.
        while support(&pool) < CHI2_MIN_EXPECTED {
            let Some(i) =
                (0..kept.len()).min_by(|&a, &b| support(&kept[a]).total_cmp(&support(&kept[b])))
            else {
                break;
            };
            let c = kept.remove(i);
            pool = (pool.0 + c.0, pool.1 + c.1);
        }
    }
    if pooled && (pool.0 > 0.0 || pool.1 > 0.0) {
        kept.push(pool);
    }
    (kept.len() >= 2).then_some(kept)
}

/// Pearson's chi-square test of homogeneity of two samples' category counts:
/// `scipy.stats.chi2_contingency([reference, observed], correction=False)`, k − 1
/// degrees of freedom. The test for a reference that is itself a sample (a reference
/// learned from the first rows served, or a small training set): a goodness-of-fit test
/// takes the reference's shares as exact and, when the reference is no larger than the
/// window, flags stationary traffic far more often than its level says.
///
/// Columns are pooled as in [`chisquare_pooled`], a column's support being its smaller
/// expected count (`column total × min(row totals) / grand total`). `None` when either
/// sample is empty or fewer than two columns are left.
pub fn chi2_homogeneity_pooled(observed: &[u64], reference: &[f64]) -> Option<PooledChiSquare> {
    if observed.len() != reference.len() || reference.iter().any(|r| !r.is_finite() || *r < 0.0) {
        return None;
    }
    let n_obs: f64 = observed.iter().map(|&o| o as f64).sum();
    let n_ref: f64 = reference.iter().sum();
    if n_obs <= 0.0 || n_ref <= 0.0 {
        return None;
    }
    let grand = n_obs + n_ref;
    let smaller = n_obs.min(n_ref);
    let columns = observed.iter().zip(reference).map(|(&o, &r)| (o as f64, r));
    let kept = pool_columns(columns, |&(o, r)| (o + r) * smaller / grand)?;
    let mut statistic = 0.0;
    for &(o, r) in &kept {
        let total = o + r;
        if total <= 0.0 {
            continue;
        }
        let (e_obs, e_ref) = (total * n_obs / grand, total * n_ref / grand);
        statistic += (o - e_obs) * (o - e_obs) / e_obs + (r - e_ref) * (r - e_ref) / e_ref;
    }
    let dof = (kept.len() - 1) as f64;
    let pvalue = ChiSquared::new(dof)
        .map(|d| d.sf(statistic))
        .unwrap_or(f64::NAN);
    Some(PooledChiSquare {
        statistic,
        pvalue,
        bins: kept.len(),
    })
}

/// `scipy.stats.wasserstein_distance(u, v)`: the area between the two empirical CDFs.
/// Both slices must be sorted.
pub fn wasserstein_sorted(u: &[f64], v: &[f64]) -> f64 {
    if u.is_empty() || v.is_empty() {
        return f64::NAN;
    }
    let (nu, nv) = (u.len() as f64, v.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut total = 0.0;
    // Walk the merged values; between consecutive points the CDFs are constant.
    let mut prev = u[0].min(v[0]);
    while i < u.len() || j < v.len() {
        let next = match (u.get(i), v.get(j)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => unreachable!(),
        };
        let fu = i as f64 / nu;
        let fv = j as f64 / nv;
        total += (fu - fv).abs() * (next - prev);
        while i < u.len() && u[i] == next {
            i += 1;
        }
        while j < v.len() && v[j] == next {
            j += 1;
        }
        prev = next;
    }
    total
}

/// Population mean and standard deviation (ddof = 0).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests;

/// Every statistic against scipy's own output (tests/data/oracle/stats.json, written by
/// tests/python/make_stat_oracles.py).
#[cfg(test)]
mod scipy_oracle;

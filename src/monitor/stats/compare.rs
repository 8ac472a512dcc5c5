//! Two-sample comparisons the canary judge runs on a step's requests: the Mann-Whitney U
//! rank test (latency) and Fisher's exact test (error rates, the share of slow requests),
//! both one-sided ("is the first sample worse?"), computed as scipy computes them:
//! `scipy.stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic")` and
//! `fisher_exact(..., alternative="greater")`; the two-proportion z-test (the pooled z
//! whose square is `chi2_contingency(..., correction=False)`'s statistic, `norm.sf(z)`)
//! stands in for Fisher's when every count is in the hundreds of millions.

use statrs::function::erf::erfc;

/// `scipy.stats.norm.sf(z)`: the standard normal's upper tail.
pub fn norm_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// A Mann-Whitney U test of "x tends to be greater than y".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample (scipy's `statistic`).
    pub u: f64,
    /// The normal approximation's z (tie-corrected, with continuity correction).
    pub z: f64,
    /// One-sided p-value; NaN when either sample is empty or every value is tied.
    pub pvalue: f64,
}

/// `scipy.stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic",
/// use_continuity=True)`: ranks with ties averaged, tie-corrected variance. NaN values
/// rank last (as `total_cmp` orders them); the judge never passes any.
pub fn mann_whitney_u_greater(x: &[f64], y: &[f64]) -> MannWhitney {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return MannWhitney {
            u: f64::NAN,
            z: f64::NAN,
            pvalue: f64::NAN,
        };
    }
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let (mut rank_sum_x, mut tie_term) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        // Ranks i+1 ..= j share their mean.
        let t = (j - i) as f64;
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        let in_x = all[i..j].iter().filter(|e| e.1).count() as f64;
        rank_sum_x += mean_rank * in_x;
        tie_term += t * t * t - t;
        i = j;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_x - n1f * (n1f + 1.0) / 2.0;
    let mu = n1f * n2f / 2.0;
    let denom = if n > 1 { nf * (nf - 1.0) } else { 1.0 };
    let s = (n1f * n2f / 12.0 * ((nf + 1.0) - tie_term / denom)).sqrt();
    let z = (u - mu - 0.5) / s;
    let pvalue = if s > 0.0 && z.is_finite() {
        norm_sf(z).clamp(0.0, 1.0)
    } else {
        f64::NAN
    };
    MannWhitney { u, z, pvalue }
}

/// A two-proportion z-test of "the first sample's rate is greater".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwoProportions {
    /// `x1/n1 − x2/n2`.
    pub delta: f64,
    /// Pooled z; NaN when the pooled rate is 0 or 1 (nothing to tell apart).
    pub z: f64,
    /// One-sided p-value (`norm.sf(z)`); NaN with z.
    pub pvalue: f64,
}

/// The pooled two-proportion z-test, one-sided: `x1` events of `n1` trials against `x2`
/// of `n2`. NaN when a sample is empty or the events are none or all of the trials.
pub fn two_proportions_greater(x1: u64, n1: u64, x2: u64, n2: u64) -> TwoProportions {
    if n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2 {
        return TwoProportions {
            delta: f64::NAN,
            z: f64::NAN,
            pvalue: f64::NAN,
        };
    }
    let (x1f, n1f, x2f, n2f) = (x1 as f64, n1 as f64, x2 as f64, n2 as f64);
    let (p1, p2) = (x1f / n1f, x2f / n2f);
    let pooled = (x1f + x2f) / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    let (z, pvalue) = if se > 0.0 {
        let z = (p1 - p2) / se;
        (z, norm_sf(z))
    } else {
        (f64::NAN, f64::NAN)
    };
    TwoProportions {
        delta: p1 - p2,
        z,
        pvalue,
    }
}

/// Above this many events, non-events and trials on each side, [`fisher_exact_greater`]
/// is the z-test.
const EXACT_UP_TO: u64 = 100_000_000;

/// Fisher's exact test, one-sided: the p-value of "the first sample's rate is greater",
/// `x1` events of `n1` trials against `x2` of `n2` (scipy's `fisher_exact(...,
/// alternative="greater")`): `P(X >= x1)` for X hypergeometric, `x1 + x2` events among
/// `n1 + n2` trials of which `n1` are the first sample's. Exact where the z-test is not:
/// with a handful of events (the errors of a canary step, the requests in its tail) the
/// normal approximation called 2 slow requests in 46 against 1 in 416 p = 5e-4, where
/// the exact p is 0.03. NaN when a sample is empty or `x > n`.
///
/// The terms are walked from the distribution's mode outwards, each from its neighbour
/// by the ratio of consecutive hypergeometric terms (the mode's term counting 1), only
/// while they still count (they fall geometrically away from the mode), and the p-value
/// is the tail's share of their sum: millions of trials cost a few hundred terms, not
/// millions, and no term is the difference of log-factorials (ln n! of counts in the
/// trillions has lost the digits such a difference is made of: 3 events of 2^62 against
/// none gave p = 1, exact 0.125).
pub fn fisher_exact_greater(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2 || n1.checked_add(n2).is_none() {
        return f64::NAN;
    }
    let (n, k, draws) = (n1 + n2, x1 + x2, n1);
    if k.min(n - k).min(n1).min(n2) > EXACT_UP_TO {
        // Events and non-events in the hundreds of millions on both sides: the normal
        // approximation is exact to many digits there, and the walk would be long.
        return two_proportions_greater(x1, n1, x2, n2).pvalue;
    }
    let (lo, hi) = (draws.saturating_sub(n - k), draws.min(k));
    if x1 <= lo {
        return 1.0;
    }
    // P(X = i + 1) / P(X = i); every factor is positive for lo <= i < hi.
    let up = |i: u64| {
        let rest = (n - k) - (draws - i - 1); // >= 1 for i >= lo
        ((k - i) as f64 / (i + 1) as f64) * ((draws - i) as f64 / rest as f64)
    };
    let mode = ((draws as u128 + 1) * (k as u128 + 1) / (n as u128 + 2)) as u64;
    let mode = mode.clamp(lo, hi);
    let (mut total, mut tail) = (1.0f64, if x1 <= mode { 1.0f64 } else { 0.0 });
    // Above the mode: every term at or past x1 is the tail's; before x1 they only add to
    // the total, and the walk goes on until x1's terms stop counting or underflow.
    let (mut t, mut i) = (1.0f64, mode);
    while i < hi {
        t *= up(i);
        i += 1;
        // Not `t == 0`: a subnormal times a ratio just under 1 rounds to itself, and the
        // walk went on to `hi` (10^8 events: 0.5 s).
        if t < f64::MIN_POSITIVE {
            break;
        }
        total += t;
        if i >= x1 {
            tail += t;
            if t <= tail * 1e-17 {
                break;
            }
        }
    }
    // Below the mode: the tail's terms down to x1, then the rest of the total.
    let (mut t, mut i) = (1.0f64, mode);
    while i > lo {
        t /= up(i - 1);
        i -= 1;
        total += t;
        if i >= x1 {
            tail += t;
        }
        if t <= total * 1e-17 {
            break;
        }
    }
    (tail / total).clamp(0.0, 1.0)
}

/// The exact one-sided binomial test of "the rate is greater than `p0`": `P(X >= x)` for
/// `X ~ Binomial(n, p0)`. 1 when `x` is 0; NaN when `n` is 0, `x > n` or `p0` is outside
/// [0, 1].
pub fn binomial_greater(x: u64, n: u64, p0: f64) -> f64 {
    use statrs::distribution::{Binomial, DiscreteCDF};
    if n == 0 || x > n || !(0.0..=1.0).contains(&p0) {
        return f64::NAN;
    }
    if x == 0 {
        return 1.0;
    }
    match Binomial::new(p0, n) {
        Ok(b) => b.sf(x - 1),
        Err(_) => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against scipy: `binom.sf(k - 1, n, p)`.
    #[test]
    fn binomial_greater_matches_scipy() {
        let close = |a: f64, b: f64| ((a - b) / b).abs() < 1e-9;
        assert!(close(
            binomial_greater(5, 100, 0.01),
            0.003_432_321_587_754_520_7
        ));
        assert!(close(
            binomial_greater(33, 33, 0.01),
            1.000_000_000_000_000_6e-66
        ));
        assert!(close(
            binomial_greater(1, 200, 0.01),
            0.866_020_325_142_038_1
        ));
        assert!(close(
            binomial_greater(3, 200, 0.01),
            0.323_321_305_464_343_2
        ));
        assert_eq!(binomial_greater(0, 10, 0.5), 1.0);
        assert_eq!(binomial_greater(1, 10, 0.0), 0.0);
        assert!(binomial_greater(1, 0, 0.5).is_nan());
        assert!(binomial_greater(11, 10, 0.5).is_nan());
        assert!(binomial_greater(1, 10, f64::NAN).is_nan());
    }

    #[test]
    fn degenerate_samples_give_nan_never_panic() {
        assert!(mann_whitney_u_greater(&[], &[1.0]).pvalue.is_nan());
        assert!(mann_whitney_u_greater(&[1.0], &[]).pvalue.is_nan());
        // Every value tied: no evidence either way.
        assert!(mann_whitney_u_greater(&[2.0; 5], &[2.0; 9]).pvalue.is_nan());
        let m = mann_whitney_u_greater(&[f64::NAN, 1.0], &[0.5, f64::INFINITY]);
        assert!(m.pvalue.is_nan() || (0.0..=1.0).contains(&m.pvalue));
        assert!(two_proportions_greater(0, 100, 0, 100).pvalue.is_nan());
        assert!(two_proportions_greater(100, 100, 100, 100).pvalue.is_nan());
        assert!(two_proportions_greater(1, 0, 0, 10).pvalue.is_nan());
        assert!(two_proportions_greater(11, 10, 0, 10).pvalue.is_nan());
        assert!(two_proportions_greater(u64::MAX, u64::MAX, 0, u64::MAX).pvalue < 1e-300);
        assert_eq!(fisher_exact_greater(0, 100, 0, 100), 1.0);
        assert_eq!(fisher_exact_greater(100, 100, 100, 100), 1.0);
        assert!(fisher_exact_greater(1, 0, 0, 10).is_nan());
        assert!(fisher_exact_greater(11, 10, 0, 10).is_nan());
        assert!(fisher_exact_greater(u64::MAX, u64::MAX, 0, u64::MAX).is_nan());
        assert!(fisher_exact_greater(u64::MAX / 2, u64::MAX / 2, 0, u64::MAX / 2) < 1e-300);
    }

    /// review6: against exact values (Python's integer `comb`): ln_binomial of counts in the
    /// trillions loses the digits that the difference of three of them is made of (ln n! of
    /// 2^62 is 2.6e20, where an f64 step is 32768): 3 events of 2^62 against none gave p =
    /// 1 (exact 0.125), and 1 of 2^63 against 0 of 2^63 - 1 gave p = 0 (exact 0.5).
    #[test]
    fn fisher_exact_keeps_its_digits_on_counts_in_the_trillions() {
        for (x1, n1, x2, n2, exact) in [
            (3, 1u64 << 62, 0, 1u64 << 62, 0.125),
            (1, 1 << 63, 0, (1 << 63) - 1, 0.5),
            (
                3,
                1_000_000_000_000,
                0,
                1_000_000_000_000,
                0.1249999999998125,
            ),
            (
                10,
                1_000_000_000_000,
                5,
                1_000_000_000_000,
                0.15087890624908357,
            ),
            (1, 100, 0, 1_000_000_000_000, 9.999999999e-11),
            (60, 1_000_000_000, 40, 1_000_000_000, 0.028443963729988406),
        ] {
            let p = fisher_exact_greater(x1, n1, x2, n2);
            assert!(
                (p / exact - 1.0).abs() < 1e-6,
                "{x1}/{n1} vs {x2}/{n2}: {p}, exact {exact}"
            );
        }
        // review6: the walk to an x1 whose terms underflow ended only at the last term:
        // 10^8 of 10^8 against 0 of 10^8 took 0.48 s a call.
        let t = std::time::Instant::now();
        assert_eq!(
            fisher_exact_greater(100_000_000, 100_000_000, 0, 100_000_000),
            0.0
        );
        assert!(
            t.elapsed() < std::time::Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
    }

    /// Huge counts (the sum's length grows with the square root of the counts; the z-test
    /// takes over above `EXACT_UP_TO`): p-values in range, no jump at the switch.
    #[test]
    fn fisher_exact_on_huge_counts_is_continuous() {
        let at = |x1: u64, n1: u64, x2: u64, n2: u64| {
            let p = fisher_exact_greater(x1, n1, x2, n2);
            assert!((0.0..=1.0).contains(&p), "{x1}/{n1} vs {x2}/{n2}: {p}");
            p
        };
        let below = at(50_000_200, 99_999_999, 50_000_000, 99_999_999);
        let above = at(50_000_200, 100_000_001, 50_000_000, 100_000_001);
        assert!((below.ln() - above.ln()).abs() < 0.05, "{below} {above}");
        at(3, 1_000_000_000, 0, 1_000_000_000);
        at(500_000_000, 1_000_000_000, 499_000_000, 1_000_000_000);
    }

    #[test]
    fn direction_is_one_sided() {
        let slow: Vec<f64> = (0..100).map(|i| 2.0 + f64::from(i) / 100.0).collect();
        let fast: Vec<f64> = (0..100).map(|i| 1.0 + f64::from(i) / 100.0).collect();
        assert!(mann_whitney_u_greater(&slow, &fast).pvalue < 1e-10);
        assert!(mann_whitney_u_greater(&fast, &slow).pvalue > 1.0 - 1e-10);
        assert!(two_proportions_greater(30, 100, 1, 100).pvalue < 1e-6);
        assert!(two_proportions_greater(1, 100, 30, 100).pvalue > 0.99);
        assert!(fisher_exact_greater(30, 100, 1, 100) < 1e-6);
        assert!(fisher_exact_greater(1, 100, 30, 100) > 0.99);
    }
}

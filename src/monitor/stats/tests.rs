//! The statistics on hand-checked cases and properties.

use super::ks::ks_2samp;
use super::*;

#[test]
fn bins_match_searchsorted_right() {
    let edges = [1.0, 2.0, 2.0, 3.0];
    assert_eq!(bin_of(&edges, 0.5), 0);
    assert_eq!(bin_of(&edges, 1.0), 1);
    assert_eq!(bin_of(&edges, 2.0), 3);
    assert_eq!(bin_of(&edges, 9.0), 4);
    let many: Vec<f64> = (0..100).map(f64::from).collect();
    assert_eq!(bin_of(&many, 41.5), 42);
}

#[test]
fn quantiles_like_numpy() {
    let x = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(quantile_sorted(&x, 0.5), 2.5);
    assert_eq!(quantile_sorted(&x, 0.0), 1.0);
    assert_eq!(quantile_sorted(&x, 1.0), 4.0);
    assert!((quantile_sorted(&x, 0.1) - 1.3).abs() < 1e-12);
}

/// Multinomial counts of `n` draws with these shares.
fn draw(rng: &mut crate::rng::Rng, shares: &[f64], n: u64) -> Vec<u64> {
    let total: f64 = shares.iter().sum();
    let mut counts = vec![0u64; shares.len()];
    for _ in 0..n {
        let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut bin = shares.len() - 1;
        for (i, s) in shares.iter().enumerate() {
            if u < *s {
                bin = i;
                break;
            }
            u -= s;
        }
        counts[bin] += 1;
    }
    counts
}

#[test]
fn sparse_bins_are_pooled_until_every_bin_can_carry_the_test() {
    let mut rng = crate::rng::Rng::new(77);
    let mut tested = 0;
    for case in 0..3000 {
        // 1 to 12 categories, some rare, then "other" (share 0); 1 to 3000 rows, a
        // few of them unseen.
        let k = 1 + rng.below(12) as usize;
        let mut shares: Vec<f64> = (0..k)
            .map(|_| match rng.below(3) {
                0 => 0.001 * (1 + rng.below(10)) as f64,
                _ => (1 + rng.below(100)) as f64,
            })
            .collect();
        let total: f64 = shares.iter().sum();
        shares.iter_mut().for_each(|s| *s /= total);
        shares.push(0.0);
        let n = 1 + rng.below(3000);
        let mut observed = draw(&mut rng, &shares[..k], n);
        observed.push(rng.below(4));
        let n = n + observed[k];
        let what = format!("case {case}: shares {shares:?}, observed {observed:?}");
        let Some((obs, exp)) = pool_sparse_bins(&observed, &shares) else {
            // Only when there is not enough to test: at most one bin expected at 5.
            let big = shares.iter().filter(|s| **s * n as f64 >= 5.0).count();
            assert!(big <= 1, "{what}");
            continue;
        };
        tested += 1;
        assert!(obs.len() >= 2, "{what}");
        assert!(
            exp.iter().all(|e| *e >= CHI2_MIN_EXPECTED),
            "{what}: {exp:?}"
        );
        assert_eq!(obs.iter().sum::<f64>(), n as f64, "{what}");
        assert!(
            (exp.iter().sum::<f64>() - n as f64).abs() < 1e-9 * n as f64,
            "{what}"
        );
        // Bins are kept whole or pooled, the pool last: all but the last bin are
        // input bins as they were.
        for (o, e) in obs.iter().zip(&exp).take(obs.len() - 1) {
            assert!(
                observed
                    .iter()
                    .zip(&shares)
                    .any(|(&oo, &s)| oo as f64 == *o && (s * n as f64 - e).abs() < 1e-9),
                "{what}: bin ({o}, {e}) is not an input bin"
            );
        }
        let c = chisquare_pooled(&observed, &shares).unwrap();
        assert_eq!((c.statistic, c.pvalue), chisquare(&obs, &exp));
        assert!((0.0..=1.0).contains(&c.pvalue), "{what}");
    }
    assert!(tested > 2000, "{tested}");
}

#[test]
fn a_few_unseen_rows_do_not_flag_a_large_share_does() {
    // The reference: three common categories and a rare one; then "other".
    let shares = [0.5, 0.3, 0.198, 0.002, 0.0];
    // 2 rows of an unseen category in 1000 (the floored "other" bin expected 0.1 rows
    // and made this p ≈ 1e-8).
    let c = chisquare_pooled(&[499, 300, 197, 2, 2], &shares).unwrap();
    assert_eq!(c.bins, 3, "{c:?}");
    assert!(c.pvalue > 0.5, "{c:?}");
    // 10 % unseen.
    let c = chisquare_pooled(&[450, 270, 178, 2, 100], &shares).unwrap();
    assert!(c.pvalue < 1e-6, "{c:?}");
    // Too few rows for any test.
    assert_eq!(chisquare_pooled(&[3, 2, 1, 0, 0], &shares), None);
    // Under the null hypothesis (rare and unseen categories included) the test
    // rejects at its level: 0.05 of 4000 windows of 1000 rows, within 3.5 standard
    // deviations.
    let mut rng = crate::rng::Rng::new(5);
    let windows = 4000;
    let rejected = (0..windows)
        .filter(|_| {
            let counts = draw(&mut rng, &shares, 1000);
            chisquare_pooled(&counts, &shares).unwrap().pvalue < 0.05
        })
        .count() as f64;
    let sd = (0.05 * 0.95 * windows as f64).sqrt();
    assert!(
        (rejected - 0.05 * windows as f64).abs() < 3.5 * sd,
        "rejected {rejected} of {windows} at 0.05"
    );
}

/// The review's case: a reference learned from the first 1000 rows served, windows of
/// 1000 rows from the same distribution. Goodness of fit takes the learned shares as
/// exact, so the two samples' noise adds up and it flags far above its level; the
/// homogeneity test holds the level (rare categories and unseen rows included).
#[test]
fn a_learned_reference_does_not_flag_stationary_traffic() {
    let shares = [0.42, 0.3, 0.2, 0.05, 0.02, 0.008, 0.002];
    let mut rng = crate::rng::Rng::new(9);
    let trials = 3000;
    let (mut homogeneity, mut goodness) = (0usize, 0usize);
    for _ in 0..trials {
        let learned = draw(&mut rng, &shares, 1000);
        let window = draw(&mut rng, &shares, 1000);
        // The profile as the scorer sees it: shares of 1000 rows, then "other".
        let ref_props: Vec<f64> = learned
            .iter()
            .map(|&c| c as f64 / 1000.0)
            .chain([0.0])
            .collect();
        let counts: Vec<f64> = ref_props.iter().map(|p| (p * 1000.0).round()).collect();
        let observed: Vec<u64> = window.iter().copied().chain([0]).collect();
        let h = chi2_homogeneity_pooled(&observed, &counts).unwrap();
        assert!(h.bins >= 2 && (0.0..=1.0).contains(&h.pvalue), "{h:?}");
        homogeneity += usize::from(h.pvalue < 0.05);
        goodness += usize::from(chisquare_pooled(&observed, &ref_props).unwrap().pvalue < 0.05);
    }
    let sd = (0.05 * 0.95 * trials as f64).sqrt();
    let expect = 0.05 * trials as f64;
    assert!(
        (homogeneity as f64 - expect).abs() < 3.5 * sd,
        "homogeneity rejected {homogeneity} of {trials} at 0.05"
    );
    // What the scorer did before: about twice the level (0.05 → ~0.2 here).
    assert!(
        goodness as f64 > expect + 6.0 * sd,
        "goodness of fit rejected only {goodness} of {trials}"
    );
}

#[test]
fn homogeneity_still_flags_a_shift_and_unseen_categories() {
    let reference = [500.0, 300.0, 200.0, 0.0];
    // The same shares: no flag.
    let same = chi2_homogeneity_pooled(&[250, 150, 100, 0], &reference).unwrap();
    assert!(
        same.pvalue > 0.99 && same.statistic.abs() < 1e-9,
        "{same:?}"
    );
    // 2 unseen rows in 500: pooled with the smallest column, no flag.
    let few = chi2_homogeneity_pooled(&[249, 150, 99, 2], &reference).unwrap();
    assert_eq!(few.bins, 3, "{few:?}");
    assert!(few.pvalue > 0.05, "{few:?}");
    // 10 % unseen: its own column, flagged.
    let many = chi2_homogeneity_pooled(&[225, 135, 90, 50], &reference).unwrap();
    assert_eq!(many.bins, 4, "{many:?}");
    assert!(many.pvalue < 1e-9, "{many:?}");
    // A shift between known categories.
    let shift = chi2_homogeneity_pooled(&[150, 150, 200, 0], &reference).unwrap();
    assert!(shift.pvalue < 1e-9, "{shift:?}");
    // Nothing to test.
    assert_eq!(chi2_homogeneity_pooled(&[0, 0, 0, 0], &reference), None);
    assert_eq!(chi2_homogeneity_pooled(&[1, 1, 0, 0], &reference), None);
    assert_eq!(chi2_homogeneity_pooled(&[5, 5, 5], &reference), None);
    assert_eq!(
        chi2_homogeneity_pooled(&[5, 5, 5, 5], &[1.0, f64::NAN, 1.0, 1.0]),
        None
    );
}

#[test]
fn identical_samples_do_not_drift() {
    let mut a: Vec<f64> = (0..50).map(|i| (i as f64).sin()).collect();
    let mut b = a.clone();
    let (d, p) = ks_2samp(&mut a, &mut b);
    assert_eq!((d, p), (0.0, 1.0));
    assert_eq!(psi(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
    assert_eq!(js_distance(&[1.0, 1.0], &[2.0, 2.0]), 0.0);
    assert_eq!(wasserstein_sorted(&a, &b), 0.0);
}

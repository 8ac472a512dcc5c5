//! Every statistic against scipy's own output.

use super::ks::ks_2samp;
use super::*;
use serde_json::Value;

fn oracle() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/oracle/stats.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol || (got.is_nan() && want.is_nan()),
        "{what}: got {got:e}, scipy {want:e}"
    );
}

/// P-values agree relatively: |ln p − ln p_scipy| ≤ `tol` (the relative difference for
/// p near 1, and still a meaningful test at 1e-200, where any absolute tolerance
/// passes). Returns the difference.
fn close_p(got: f64, want: f64, tol: f64, what: &str) -> f64 {
    if want == 0.0 || got == 0.0 {
        assert_eq!(got, want, "{what}: got {got:e}, scipy {want:e}");
        return 0.0;
    }
    let diff = (got.ln() - want.ln()).abs();
    assert!(
        diff <= tol,
        "{what}: got {got:e}, scipy {want:e} (|ln p − ln p_scipy| = {diff:.1e})"
    );
    diff
}

/// P-values: scipy's within 1e-9 relatively.
const P_TOL: f64 = 1e-9;

#[test]
fn ks_2samp_matches_scipy() {
    let o = oracle();
    let cases = o["ks"].as_array().unwrap();
    assert!(cases.len() >= 80);
    let mut worst: f64 = 0.0;
    for (i, c) in cases.iter().enumerate() {
        let (mut a, mut b) = (floats(&c["a"]), floats(&c["b"]));
        let what = format!("ks case {i} ({} vs {})", a.len(), b.len());
        let (d, p) = ks_2samp(&mut a, &mut b);
        close(d, c["statistic"].as_f64().unwrap(), 1e-9, &what);
        let want = c["pvalue"].as_f64().unwrap();
        worst = worst.max(close_p(p, want, P_TOL, &what));
    }
    println!("ks p-values: largest relative difference from scipy {worst:.2e}");
}

/// A sample drawn as tests/python/make_stat_oracles.py draws it (`gen`).
fn generated(gen: &Value) -> Vec<f64> {
    let g = floats(gen);
    let (seed, n, shift, scale, ties) = (g[0] as u64, g[1] as usize, g[2], g[3], g[4]);
    let mut rng = crate::rng::Rng::new(seed);
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let v = shift + scale * u;
            if ties == 1.0 {
                v.floor()
            } else {
                v
            }
        })
        .collect()
}

/// Above scipy's exact limit (more than 10000 values on a side) scipy takes
/// `kstwo.sf(d, round(en))`; so does vigil, through every method kstwo picks.
#[test]
fn ks_2samp_matches_scipy_above_the_exact_limit() {
    let o = oracle();
    let cases = o["ks_large"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut worst: f64 = 0.0;
    let mut slowest = std::time::Duration::ZERO;
    for (i, c) in cases.iter().enumerate() {
        let (mut a, mut b) = (generated(&c["a"]), generated(&c["b"]));
        let what = format!("ks_large case {i} ({} vs {})", a.len(), b.len());
        let t = std::time::Instant::now();
        let (d, p) = ks_2samp(&mut a, &mut b);
        slowest = slowest.max(t.elapsed());
        close(d, c["statistic"].as_f64().unwrap(), 1e-9, &what);
        worst = worst.max(close_p(p, c["pvalue"].as_f64().unwrap(), P_TOL, &what));
    }
    println!(
        "ks p-values above the exact limit: largest |ln p − ln p_scipy| {worst:.2e}; slowest case {slowest:?}"
    );
}

#[test]
fn wasserstein_matches_scipy() {
    for c in oracle()["wasserstein"].as_array().unwrap() {
        let (mut u, mut v) = (floats(&c["u"]), floats(&c["v"]));
        u.sort_by(f64::total_cmp);
        v.sort_by(f64::total_cmp);
        close(
            wasserstein_sorted(&u, &v),
            c["distance"].as_f64().unwrap(),
            1e-9,
            "wasserstein",
        );
    }
}

#[test]
fn chisquare_matches_scipy() {
    for c in oracle()["chisquare"].as_array().unwrap() {
        let (s, p) = chisquare(&floats(&c["observed"]), &floats(&c["expected"]));
        close(s, c["statistic"].as_f64().unwrap(), 1e-9, "chi2 statistic");
        close_p(p, c["pvalue"].as_f64().unwrap(), P_TOL, "chi2 p-value");
    }
}

#[test]
fn chi2_homogeneity_matches_scipy_chi2_contingency() {
    let cases = oracle()["chi2_contingency"].as_array().unwrap().clone();
    assert!(cases.len() >= 100);
    let mut worst: f64 = 0.0;
    for (i, c) in cases.iter().enumerate() {
        let reference = floats(&c["reference"]);
        let observed: Vec<u64> = floats(&c["observed"]).iter().map(|&o| o as u64).collect();
        let what = format!("chi2_contingency case {i}: {reference:?} vs {observed:?}");
        // Every expected count is at least 5 in these tables: nothing is pooled.
        let got = chi2_homogeneity_pooled(&observed, &reference).expect(&what);
        assert_eq!(got.bins, reference.len(), "{what}");
        assert_eq!(got.bins - 1, c["dof"].as_u64().unwrap() as usize, "{what}");
        let want = c["statistic"].as_f64().unwrap();
        close(got.statistic, want, 1e-9 * want.max(1.0), &what);
        worst = worst.max(close_p(
            got.pvalue,
            c["pvalue"].as_f64().unwrap(),
            1e-7,
            &what,
        ));
    }
    println!("chi2_contingency p-values: largest |ln p - ln p_scipy| {worst:.2e}");
}

#[test]
fn js_psi_quantiles_match() {
    let o = oracle();
    for c in o["js"].as_array().unwrap() {
        close(
            js_distance(&floats(&c["p"]), &floats(&c["q"])),
            c["distance"].as_f64().unwrap(),
            1e-9,
            "js",
        );
    }
    for c in o["psi"].as_array().unwrap() {
        close(
            psi(&floats(&c["reference"]), &floats(&c["current"])),
            c["psi"].as_f64().unwrap(),
            1e-9,
            "psi",
        );
    }
    for c in o["quantile"].as_array().unwrap() {
        let mut x = floats(&c["x"]);
        x.sort_by(f64::total_cmp);
        for (q, want) in floats(&c["q"]).iter().zip(floats(&c["values"])) {
            close(quantile_sorted(&x, *q), want, 1e-12, "quantile");
        }
    }
}

#[test]
fn mann_whitney_u_matches_scipy() {
    use super::compare::mann_whitney_u_greater;
    let cases = oracle()["mannwhitneyu"].as_array().unwrap().clone();
    assert!(cases.len() >= 70);
    let mut worst: f64 = 0.0;
    for (i, c) in cases.iter().enumerate() {
        let (x, y) = (floats(&c["x"]), floats(&c["y"]));
        let what = format!("mannwhitneyu case {i} ({} vs {})", x.len(), y.len());
        let got = mann_whitney_u_greater(&x, &y);
        close(got.u, c["statistic"].as_f64().unwrap(), 1e-9, &what);
        worst = worst.max(close_p(
            got.pvalue,
            c["pvalue"].as_f64().unwrap(),
            P_TOL,
            &what,
        ));
    }
    println!("mannwhitneyu p-values: largest |ln p - ln p_scipy| {worst:.2e}");
}

#[test]
fn two_proportions_match_scipy() {
    use super::compare::two_proportions_greater;
    let cases = oracle()["two_proportions"].as_array().unwrap().clone();
    assert!(cases.len() >= 100);
    let mut worst: f64 = 0.0;
    for (i, c) in cases.iter().enumerate() {
        let n = |k: &str| c[k].as_u64().unwrap();
        let what = format!("two_proportions case {i}: {c}");
        let got = two_proportions_greater(n("x1"), n("n1"), n("x2"), n("n2"));
        let want = c["z"].as_f64().unwrap();
        close(got.z, want, 1e-9 * want.abs().max(1.0), &what);
        worst = worst.max(close_p(
            got.pvalue,
            c["pvalue"].as_f64().unwrap(),
            1e-7,
            &what,
        ));
    }
    println!("two-proportion p-values: largest |ln p - ln p_scipy| {worst:.2e}");
}

#[test]
fn fisher_exact_matches_scipy() {
    use super::compare::fisher_exact_greater;
    let cases = oracle()["fisher_exact"].as_array().unwrap().clone();
    assert!(cases.len() >= 150);
    let mut worst: f64 = 0.0;
    for (i, c) in cases.iter().enumerate() {
        let n = |k: &str| c[k].as_u64().unwrap();
        let what = format!("fisher_exact case {i}: {c}");
        let got = fisher_exact_greater(n("x1"), n("n1"), n("x2"), n("n2"));
        worst = worst.max(close_p(got, c["pvalue"].as_f64().unwrap(), 1e-7, &what));
    }
    println!("Fisher exact p-values: largest |ln p - ln p_scipy| {worst:.2e}");
}

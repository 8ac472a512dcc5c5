//! Judging one step: the arms' figures and each check's verdict, pure functions of the
//! step's data and the analysis settings (no clock, no I/O), so that they are tested
//! on their own.
//!
//! - errors: the canary's error rate minus stable's above `max_error_rate_delta`, and a
//!   one-sided Fisher exact test below [`ALPHA`];
//! - latency: the canary's p50 over stable's above `max_latency_ratio`, and a one-sided
//!   Mann-Whitney U test of the canary's latencies divided by that ratio against
//!   stable's below [`ALPHA`] (slower beyond the margin, not merely slower); or its tail: more than 1% of canary requests
//!   slower than `max_latency_ratio` × stable's p99, significantly more (Fisher's exact
//!   test, [`ALPHA`]) than stable's share beyond that point. A ratio that noise produces
//!   is not enough; a shift the test is sure of but under the ratio is not either;
//! - output_psi: PSI between the arms' predicted-class shares (classifiers) or their
//!   output values binned at the stable arm's deciles (regressors) above
//!   `max_output_psi`, and a chi-square test of homogeneity of the same counts below
//!   [`ALPHA`] (PSI on a few dozen rows is mostly noise: its expected value on identical
//!   answers is about (bins − 1)·(1/n₁ + 1/n₂));
//! - agreement (shadow): the share of rows where both versions gave the same label
//!   (before output_psi: when both fail, the paired comparison names the cause).

use serde::{Deserialize, Serialize};

use super::probe::{ArmData, ShadowData, CLASSES};
use crate::config::AnalysisConfig;
use crate::monitor::stats::compare::{
    binomial_greater, fisher_exact_greater, mann_whitney_u_greater,
};
use crate::monitor::stats::{bin_of, chi2_homogeneity_pooled, psi, quantile_sorted};

/// The significance level of the error and latency tests: a step of an identical canary
/// fails one of them by chance at most this often (docs/rollouts.md has the measured rate).
pub const ALPHA: f64 = 0.001;

/// The checks, as they appear in decisions and the `check` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Errors,
    Latency,
    OutputPsi,
    Agreement,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Errors => "errors",
            CheckKind::Latency => "latency",
            CheckKind::OutputPsi => "output_psi",
            CheckKind::Agreement => "agreement",
        }
    }
}

/// One check's outcome. Figures are `None` when they cannot be computed (no outputs,
/// every latency tied); such a check passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub check: CheckKind,
    pub passed: bool,
    /// The figure compared with the threshold.
    pub value: Option<f64>,
    pub threshold: f64,
    /// The test's one-sided p-value (errors, latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvalue: Option<f64>,
    /// The figures in words.
    pub detail: String,
}

/// One arm's figures over a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmFigures {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Output rows seen (labels and values).
    pub output_rows: u64,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_unstable_by(f64::total_cmp);
    s
}

pub fn figures(d: &ArmData) -> ArmFigures {
    let lat = sorted(&d.latency.values);
    let q = |p: f64| (!lat.is_empty()).then(|| quantile_sorted(&lat, p) * 1000.0);
    ArmFigures {
        requests: d.requests,
        errors: d.errors,
        error_rate: (d.requests > 0).then(|| d.errors as f64 / d.requests as f64),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        output_rows: d.class_rows() + d.values.seen,
    }
}

/// Every check of a step, in a fixed order. `concurrent`: whether the stable arm served
/// at the same time as the canary (not in a 100% step, which is compared with the step
/// before it): latency is only judged between concurrent arms, since on a shared machine
/// the time of day moves it more than any model does. `same_traffic`: whether both arms
/// answered the same stream of requests (split steps below 100%, shadow copies); in a
/// 100% step the previous step's requests may be another mix (of classes, of hours), so
/// the prediction PSI against them is shown, not judged: it would measure the traffic's
/// drift, not the canary.
pub fn judge(
    cfg: &AnalysisConfig,
    stable: &ArmData,
    canary: &ArmData,
    shadow: Option<&ShadowData>,
    concurrent: bool,
    same_traffic: bool,
) -> Vec<Check> {
    let mut lat = latency(cfg, stable, canary);
    if !concurrent && !lat.passed {
        lat.passed = true;
        lat.detail.push_str(
            " (not judged: the arms did not serve side by side: a shadow copy, or a 100% step \
             compared with the previous step's stable arm)",
        );
    }
    let mut checks = vec![errors(cfg, stable, canary), lat];
    // Shadow: the paired comparison is the sharper one and decides first.
    if let Some(s) = shadow {
        checks.push(agreement(cfg, s));
    }
    let mut psi = output_psi(cfg, stable, canary);
    if !same_traffic && !psi.passed {
        psi.passed = true;
        psi.detail.push_str(
            " (not judged: a 100% step is compared with the previous step's stable arm, \
             which answered other requests)",
        );
    }
    checks.push(psi);
    checks
}

fn errors(cfg: &AnalysisConfig, s: &ArmData, c: &ArmData) -> Check {
    let detail = format!(
        "canary {} errors in {} requests, stable {} in {}",
        c.errors, c.requests, s.errors, s.requests
    );
    if s.requests == 0 {
        // No stable figures to compare with (a lone 100% step): the canary's own error
        // rate must not exceed the delta, by the exact binomial test.
        let rate = (c.requests > 0).then(|| c.errors as f64 / c.requests as f64);
        let pvalue = finite(binomial_greater(
            c.errors,
            c.requests,
            cfg.max_error_rate_delta.clamp(0.0, 1.0),
        ));
        let failed =
            rate.is_some_and(|r| r > cfg.max_error_rate_delta) && pvalue.is_some_and(|p| p < ALPHA);
        return Check {
            check: CheckKind::Errors,
            passed: !failed,
            value: rate,
            threshold: cfg.max_error_rate_delta,
            pvalue,
            detail: format!(
                "{detail}; no stable requests to compare with: the canary's error rate is \
                 judged against max_error_rate_delta"
            ),
        };
    }
    let delta = (c.requests > 0)
        .then(|| c.errors as f64 / c.requests as f64 - s.errors as f64 / s.requests as f64);
    let pvalue = finite(fisher_exact_greater(
        c.errors, c.requests, s.errors, s.requests,
    ));
    let failed =
        delta.is_some_and(|d| d > cfg.max_error_rate_delta) && pvalue.is_some_and(|p| p < ALPHA);
    Check {
        check: CheckKind::Errors,
        passed: !failed,
        value: delta,
        threshold: cfg.max_error_rate_delta,
        pvalue,
        detail,
    }
}

fn ratio(c: f64, s: f64) -> f64 {
    if s > 0.0 {
        c / s
    } else if c > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

fn latency(cfg: &AnalysisConfig, s: &ArmData, c: &ArmData) -> Check {
    let (ls, lc) = (sorted(&s.latency.values), sorted(&c.latency.values));
    if ls.is_empty() || lc.is_empty() {
        return Check {
            check: CheckKind::Latency,
            passed: true,
            value: None,
            threshold: cfg.max_latency_ratio,
            pvalue: None,
            detail: "no successful requests on an arm: latency not compared".into(),
        };
    }
    let r50 = ratio(quantile_sorted(&lc, 0.5), quantile_sorted(&ls, 0.5));
    let r99 = ratio(quantile_sorted(&lc, 0.99), quantile_sorted(&ls, 0.99));
    // The test is of the margin, not of any slowdown: is the canary slower than stable
    // even after dividing its latencies by the ratio? (Kayenta's Mann-Whitney judge tests
    // against an allowed effect size the same way.) Against no margin, a canary a few
    // per cent slower for reasons that are not the model's (a version that answers one
    // request in ten has colder caches: 6-15 % on an idle machine, 26-31 % on a loaded
    // one, measured with identical versions) is "significant", and a point estimate of
    // the ratio just over the margin then failed it: an identical canary was rolled back.
    let margin = cfg.max_latency_ratio.max(1.0);
    let scaled: Vec<f64> = lc.iter().map(|x| x / margin).collect();
    let mw = mann_whitney_u_greater(&scaled, &ls);
    // The tail: the canary's share of requests slower than max_latency_ratio × stable's
    // p99, against stable's share beyond the same point (a p99 of a few hundred samples
    // is two or three requests: its ratio alone is noise).
    let limit = quantile_sorted(&ls, 0.99) * cfg.max_latency_ratio;
    let beyond = |v: &[f64]| v.iter().filter(|&&x| x > limit).count() as u64;
    let (bc, bs) = (beyond(&lc), beyond(&ls));
    let tail = fisher_exact_greater(bc, lc.len() as u64, bs, ls.len() as u64);
    let median_failed = r50 > cfg.max_latency_ratio && finite(mw.pvalue).is_some_and(|p| p < ALPHA);
    let tail_failed = bc as f64 > 0.01 * lc.len() as f64 && finite(tail).is_some_and(|p| p < ALPHA);
    let pvalue = if tail_failed && !median_failed {
        finite(tail)
    } else {
        finite(mw.pvalue)
    };
    let worst = r50.max(r99);
    let failed = median_failed || tail_failed;
    Check {
        check: CheckKind::Latency,
        passed: !failed,
        value: Some(if worst.is_finite() { worst } else { f64::MAX }),
        threshold: cfg.max_latency_ratio,
        pvalue,
        detail: format!(
            "canary/stable p50 ratio {r50:.3} (Mann-Whitney U of canary/{margin} against stable {:.1}, \
             p = {:.3e}), p99 ratio {r99:.3} \
             ({bc} canary and {bs} stable requests beyond {:.3} ms, p = {:.3e}); {} and {} samples",
            mw.u,
            mw.pvalue,
            limit * 1000.0,
            tail,
            lc.len(),
            ls.len()
        ),
    }
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&k| if n > 0 { k as f64 / n as f64 } else { 0.0 })
        .collect()
}

/// Both arms' sampled values counted in bins at the stable arm's deciles (duplicate
/// edges dropped).
fn value_counts(s: &ArmData, c: &ArmData) -> Option<(Vec<u64>, Vec<u64>)> {
    let (vs, vc) = (sorted(&s.values.values), sorted(&c.values.values));
    if vs.is_empty() || vc.is_empty() {
        return None;
    }
    let mut edges: Vec<f64> = (1..10)
        .map(|i| quantile_sorted(&vs, f64::from(i) / 10.0))
        .collect();
    edges.dedup();
    let count = |v: &[f64]| {
        let mut counts = vec![0u64; edges.len() + 1];
        for &x in v {
            counts[bin_of(&edges, x)] += 1;
        }
        counts
    };
    Some((count(&vs), count(&vc)))
}

fn output_psi(cfg: &AnalysisConfig, s: &ArmData, c: &ArmData) -> Check {
    let counts = if s.class_rows() > 0 && c.class_rows() > 0 {
        Some((s.classes.to_vec(), c.classes.to_vec(), true))
    } else {
        value_counts(s, c).map(|(a, b)| (a, b, false))
    };
    let pvalue = counts.as_ref().and_then(|(cs, cc, _)| {
        let reference: Vec<f64> = cs.iter().map(|&k| k as f64).collect();
        chi2_homogeneity_pooled(cc, &reference).and_then(|t| finite(t.pvalue))
    });
    let (value, detail) = match counts.map(|(cs, cc, labels)| (shares(&cs), shares(&cc), labels)) {
        Some((ps, pc, true)) => {
            let top = |p: &[f64]| {
                p.iter()
                    .enumerate()
                    .filter(|(_, &x)| x > 0.0)
                    .map(|(i, x)| {
                        let name = if i == CLASSES {
                            "other".to_string()
                        } else {
                            i.to_string()
                        };
                        format!("{name}: {:.1}%", x * 100.0)
                    })
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            (
                Some(psi(&ps, &pc)),
                format!(
                    "class shares: canary {{{}}}, stable {{{}}}",
                    top(&pc),
                    top(&ps)
                ),
            )
        }
        Some((ps, pc, false)) => (
            Some(psi(&ps, &pc)),
            format!(
                "outputs binned at stable's deciles ({} canary and {} stable values)",
                c.values.values.len(),
                s.values.values.len()
            ),
        ),
        None => (None, "no outputs to compare".to_string()),
    };
    let value = value.and_then(finite);
    let failed = value.is_some_and(|v| v > cfg.max_output_psi) && pvalue.is_some_and(|p| p < ALPHA);
    Check {
        check: CheckKind::OutputPsi,
        passed: !failed,
        value,
        threshold: cfg.max_output_psi,
        pvalue,
        detail,
    }
}

fn agreement(cfg: &AnalysisConfig, s: &ShadowData) -> Check {
    let compared = s.label_rows + s.mismatched;
    let value = (compared > 0).then(|| s.agreed as f64 / compared as f64);
    let mae = (s.value_rows > 0).then(|| s.abs_diff_sum / s.value_rows as f64);
    let mut detail = format!("{} of {} rows gave the same label", s.agreed, compared);
    if let Some(m) = mae {
        detail.push_str(&format!(
            "; regression outputs on {} rows: mean absolute difference {m:.6}, max {:.6}",
            s.value_rows, s.max_abs_diff
        ));
    }
    Check {
        check: CheckKind::Agreement,
        passed: !value.is_some_and(|v| v < cfg.min_agreement),
        value,
        threshold: cfg.min_agreement,
        pvalue: None,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::super::probe::{Arm, Probe};
    use super::*;
    use crate::tensor::{Tensor, TensorData};
    use std::time::Duration;

    fn step(
        n: u64,
        stable: impl Fn(u64) -> (Duration, Option<i64>),
        canary: impl Fn(u64) -> (Duration, Option<i64>),
    ) -> super::super::probe::StepData {
        let p = Probe::default();
        p.restart(true, 3);
        for i in 0..n {
            for (arm, f) in [
                (Arm::Stable, &stable as &dyn Fn(u64) -> _),
                (Arm::Canary, &canary),
            ] {
                let (lat, label) = f(i);
                match label {
                    Some(l) => {
                        let y = Tensor {
                            name: "label".into(),
                            shape: vec![1],
                            data: TensorData::Int64(vec![l]),
                        };
                        p.record(arm, lat, Ok(Some(&y)));
                    }
                    None => p.record(arm, lat, Err(())),
                }
            }
        }
        p.restart(false, 4)
    }

    fn noisy(i: u64) -> Duration {
        // Deterministic jitter: 1 ms ± 0.5 ms.
        Duration::from_micros(1000 + (i * 7919 % 1000) - 500)
    }

    #[test]
    fn identical_arms_pass_every_check() {
        let cfg = AnalysisConfig::default();
        let d = step(
            500,
            |i| (noisy(i), Some((i % 3) as i64)),
            |i| (noisy(i + 1), Some(((i + 1) % 3) as i64)),
        );
        let checks = judge(&cfg, &d.stable, &d.canary, None, true, true);
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
    }

    #[test]
    fn each_defect_fails_its_own_check() {
        let cfg = AnalysisConfig::default();
        let fails = |d: &super::super::probe::StepData| -> Vec<CheckKind> {
            judge(&cfg, &d.stable, &d.canary, None, true, true)
                .into_iter()
                .filter(|c| !c.passed)
                .map(|c| c.check)
                .collect()
        };
        let ok = |i: u64| (noisy(i), Some((i % 3) as i64));
        // 10% errors.
        let d = step(500, ok, |i| {
            (noisy(i), (i % 10 != 0).then_some((i % 3) as i64))
        });
        assert_eq!(fails(&d), vec![CheckKind::Errors]);
        // Twice as slow.
        let d = step(500, ok, |i| (noisy(i) * 2, Some((i % 3) as i64)));
        assert_eq!(fails(&d), vec![CheckKind::Latency]);
        // Another answer.
        let d = step(500, ok, |i| (noisy(i), Some(((i % 3) == 0) as i64)));
        assert_eq!(fails(&d), vec![CheckKind::OutputPsi]);
        // Surely slower, but within the ratio: passes (the p-value is the margin's).
        let d = step(500, ok, |i| (noisy(i) * 11 / 10, Some((i % 3) as i64)));
        assert_eq!(fails(&d), vec![]);
        let lat = judge(&cfg, &d.stable, &d.canary, None, true, true)[1].clone();
        assert!(lat.pvalue.unwrap() > 0.5, "{lat:?}");
        // A median just over the ratio (1.27 against 1.25) and no slower tail, on 500
        // requests an arm: surely slower, not surely beyond the margin. It passes.
        let d = step(500, ok, |i| {
            let slower = (noisy(i) * 127 / 100).min(Duration::from_micros(1499));
            (slower, Some((i % 3) as i64))
        });
        let lat = judge(&cfg, &d.stable, &d.canary, None, true, true)[1].clone();
        assert!(lat.passed && lat.value.unwrap() > 1.25, "{lat:?}");
        // Half again as slow: beyond the margin, surely.
        let d = step(60, ok, |i| (noisy(i) * 3 / 2, Some((i % 3) as i64)));
        assert_eq!(fails(&d), vec![CheckKind::Latency]);
        // One error in 500: above the delta? no (0.002); a few more, not significant.
        let d = step(300, ok, |i| {
            (noisy(i), (i % 60 != 0).then_some((i % 3) as i64))
        });
        let e = judge(&cfg, &d.stable, &d.canary, None, true, true)[0].clone();
        assert!(e.value.unwrap() > 0.01 && e.passed, "{e:?}");
    }

    #[test]
    fn a_100_percent_step_shows_but_does_not_judge_an_output_shift_of_other_traffic() {
        let cfg = AnalysisConfig::default();
        // The previous step's stable arm saw mostly class 0, this step mostly class 2.
        let d = step(
            500,
            |i| (noisy(i), Some(if i % 10 == 0 { 2 } else { 0 })),
            |i| (noisy(i), Some(if i % 10 == 0 { 0 } else { 2 })),
        );
        let psi = |same| judge(&cfg, &d.stable, &d.canary, None, false, same)[2].clone();
        let judged = psi(true);
        assert!(!judged.passed, "{judged:#?}");
        let shown = psi(false);
        assert!(shown.passed && shown.value == judged.value, "{shown:#?}");
        assert!(shown.detail.contains("not judged"), "{}", shown.detail);
    }

    #[test]
    fn empty_and_degenerate_steps_never_panic() {
        let cfg = AnalysisConfig::default();
        let d = step(0, |_| (Duration::ZERO, None), |_| (Duration::ZERO, None));
        let checks = judge(&cfg, &d.stable, &d.canary, Some(&d.shadow), true, true);
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
        let d = step(
            50,
            |_| (Duration::ZERO, Some(1)),
            |_| (Duration::ZERO, Some(1)),
        );
        assert!(judge(&cfg, &d.stable, &d.canary, None, true, true)
            .iter()
            .all(|c| c.passed));
        let f = figures(&d.stable);
        assert_eq!((f.requests, f.p50_ms), (50, Some(0.0)));
        serde_json::to_string(&checks).unwrap();
    }
}

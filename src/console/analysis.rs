//! The canary judge's analysis as a timeline on the console: when it started, every
//! judged step with both arms' figures and each check, the step running now with its
//! live counts, and the decision with its reason.

use maud::{html, Markup};

use crate::config::RolloutMode;
use crate::serving::analysis::LiveAnalysis;
use crate::serving::analysis::{AnalysisState, ArmFigures, Status, StepRecord, Verdict};

fn ms(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.2} ms"))
}

fn arm(name: &str, f: &ArmFigures) -> Markup {
    html! {
        span.arm {
            (name) ": " (f.requests) " req, " (f.errors) " errors, p50 " (ms(f.p50_ms))
            ", p99 " (ms(f.p99_ms))
        }
    }
}

fn verdict(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Passed => ("passed", "ok"),
        Verdict::Failed => ("failed", "bad"),
        Verdict::InsufficientTraffic => ("too little traffic", "warn"),
    }
}

fn step_item(s: &StepRecord) -> Markup {
    let (word, class) = verdict(s.verdict);
    html! {
        li.step data-step=(s.step) data-verdict=(word) {
            span.when { (s.judged_at) }
            " step " (s.step) " (" (s.weight) " %) "
            span.tag.(class) { (word) }
            div.figures { (arm("stable", &s.stable)) " · " (arm("canary", &s.canary)) }
            @if !s.checks.is_empty() {
                ul.checks {
                    @for c in &s.checks {
                        li.(if c.passed { "ok" } else { "bad" }) data-check=(c.check.as_str()) {
                            (c.check.as_str()) ": "
                            (c.value.map_or("n/a".into(), |v| format!("{v:.4}")))
                            " against " (c.threshold)
                            @if let Some(p) = c.pvalue { ", p = " (format!("{p:.2e}")) }
                            " — " (c.detail)
                        }
                    }
                }
            }
        }
    }
}

fn status_class(s: Status) -> &'static str {
    match s {
        Status::Running => "warn",
        Status::Promoted => "ok",
        Status::RolledBack => "bad",
        Status::Held | Status::Stopped | Status::Ended => "",
    }
}

/// The analysis of one model, newest last.
pub fn part((st, live, elapsed): &LiveAnalysis) -> Markup {
    let st: &AnalysisState = st;
    let steps: Vec<String> = match st.mode {
        RolloutMode::Split => st.config.steps.iter().map(|w| format!("{w} %")).collect(),
        RolloutMode::Shadow => vec!["shadow".into()],
    };
    html! {
        section.analysis data-status=(st.status.as_str()) {
            h4 {
                "Canary analysis "
                span.tag.(status_class(st.status)) { (st.status.as_str()) }
            }
            ol.analysis-timeline {
                li.start {
                    span.when { (crate::retrain::rfc3339(st.started_at)) }
                    " started: stable v" (st.stable) ", canary v" (st.canary) ", "
                    (st.mode.as_str()) ", steps " (steps.join(" → "))
                    @if st.resumed > 0 { " (resumed " (st.resumed) "× after a restart)" }
                }
                @for s in &st.steps { (step_item(s)) }
                @if st.status == Status::Running {
                    li.current {
                        "step " (st.step + 1) " of " (st.step_count()) " (" (st.weight()) " %) running"
                        @if let Some(e) = elapsed { " for " (format!("{e:.0}")) " s" }
                        ": stable " (live[0].0) " req (" (live[0].1) " failed), canary "
                        (live[1].0) " req (" (live[1].1) " failed); needs "
                        (st.config.min_requests) " per arm"
                    }
                }
                @if let Some(d) = &st.decision {
                    li.decision data-decision=(d.decision.as_str()) {
                        span.when { (d.at) } " " (d.decision.as_str()) ": " (d.reason)
                    }
                }
            }
        }
    }
}

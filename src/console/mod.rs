//! The built-in console (`GET /`): one server-rendered page that shows what this replica
//! serves, how its traffic and inputs look, and what the retrain hook did.
//!
//! [`collect`] copies what the page shows out of the server into a [`View`]; [`page`]
//! turns a view into HTML (maud templates, inline SVG plots from [`plot`]). The page reads
//! only; a small script (`console.js`) re-fetches it every few seconds, and without
//! scripts a `<noscript>` refresh keeps it current. Everything is embedded in the binary.

pub mod analysis;
pub mod plot;
pub mod traffic;

use std::collections::BTreeMap;
use std::time::Instant;

use maud::{html, Markup, DOCTYPE};

use crate::metrics::Side;
use crate::monitor::{FeatureScore, VersionReport};
use crate::retrain::{EventRecord, EventState};
use crate::serving::reload::IndexRow;
use crate::serving::Server;
use traffic::{Traffic, TrafficView};

/// The stylesheet and script the page links to (embedded).
pub const CSS: &str = include_str!("console.css");
pub const JS: &str = include_str!("console.js");
pub const ICON: &str = include_str!("favicon.svg");
/// Seconds between refreshes (the script's, and the `<noscript>` fallback's).
pub const REFRESH_SECONDS: u32 = 5;
/// Retrain events shown (the most recent).
pub const EVENTS_SHOWN: usize = 20;
/// Features drawn per version and side (drifted first); the drift report has them all.
pub const FEATURES_SHOWN: usize = 40;

/// Everything the page shows, copied out of the server at one moment.
#[derive(Clone, Debug)]
pub struct View {
    /// Unix time in seconds.
    pub generated_at: f64,
    pub ready: bool,
    pub models: Vec<ModelView>,
    /// The most recent retrain events, newest first.
    pub events: Vec<EventRecord>,
}

#[derive(Clone, Debug)]
pub struct ModelView {
    pub name: String,
    pub ready: bool,
    /// Why the model as a whole has a problem (config.toml, no version directory).
    pub problems: Vec<String>,
    pub stable: Option<u64>,
    pub canary: Option<u64>,
    pub weight: u8,
    pub mode: &'static str,
    pub versions: Vec<VersionView>,
    /// The canary judge's analysis, if the model has had one.
    pub analysis: Option<crate::serving::analysis::LiveAnalysis>,
    /// Live quality from feedback (`[logging] feedback_window`), when it is on.
    pub quality: Option<crate::payload::feedback::QualityReport>,
}

#[derive(Clone, Debug)]
pub struct VersionView {
    pub version: u64,
    /// READY, LOADING or UNAVAILABLE (the repository index's states).
    pub state: String,
    pub reason: String,
    /// stable, canary or standby (served versions only).
    pub role: Option<&'static str>,
    pub engine: Option<&'static str>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub traffic: Option<TrafficView>,
    pub drift: Option<VersionReport>,
}

fn spec_text(s: &crate::tensor::spec::TensorSpec) -> String {
    let dims: Vec<String> = s
        .shape
        .iter()
        .map(|&d| {
            if d < 0 {
                "-1".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    format!("{} {} [{}]", s.name, s.datatype.as_str(), dims.join(", "))
}

/// Copies the page's content out of the server: the routing table (served versions, roles,
/// signatures, drift), the repository index (versions on disk and why they are not served),
/// the recent traffic figures and the retrain outbox.
pub fn collect(server: &Server, index: &[IndexRow], traffic: &Traffic) -> View {
    let table = server.table();
    let now = Instant::now();
    let mut models: BTreeMap<String, ModelView> = BTreeMap::new();
    for entry in table.models.values() {
        let versions = entry
            .versions
            .values()
            .map(|v| {
                let role = if Some(v.version) == entry.stable {
                    "stable"
                } else if Some(v.version) == entry.canary {
                    "canary"
                } else {
                    "standby"
                };
                VersionView {
                    version: v.version,
                    state: "READY".into(),
                    reason: String::new(),
                    role: Some(role),
                    engine: Some(v.engine.as_str()),
                    inputs: v.signature.inputs.iter().map(spec_text).collect(),
                    outputs: v.signature.outputs.iter().map(spec_text).collect(),
                    traffic: traffic.view(&entry.name, v.version, &v.metrics.sample(), now),
                    drift: Some(v.monitor.report()),
                }
            })
            .collect();
        models.insert(
            entry.name.clone(),
            ModelView {
                name: entry.name.clone(),
                ready: entry.is_ready(),
                problems: Vec::new(),
                stable: entry.stable,
                canary: entry.canary,
                weight: if entry.canary.is_some() {
                    entry.rollout.weight
                } else {
                    0
                },
                mode: entry.rollout.mode.as_str(),
                versions,
                analysis: server.analysis(&entry.name),
                quality: Some(entry.feedback.report()).filter(|q| q.enabled),
            },
        );
    }
    for row in index {
        let model = models.entry(row.name.clone()).or_insert_with(|| ModelView {
            name: row.name.clone(),
            ready: false,
            problems: Vec::new(),
            stable: None,
            canary: None,
            weight: 0,
            mode: "split",
            versions: Vec::new(),
            analysis: None,
            quality: None,
        });
        let Some(version) = row.version.as_deref().and_then(|v| v.parse::<u64>().ok()) else {
            if !row.reason.is_empty() && !model.problems.contains(&row.reason) {
                model.problems.push(row.reason.clone());
            }
            continue;
        };
        if model.versions.iter().any(|v| v.version == version) {
            continue;
        }
        model.versions.push(VersionView {
            version,
            state: row.state.to_string(),
            reason: row.reason.clone(),
            role: None,
            engine: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            traffic: None,
            drift: None,
        });
    }
    for m in models.values_mut() {
        m.versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    }
    let mut events = server.retrainer.list();
    events.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
    events.truncate(EVENTS_SHOWN);
    View {
        generated_at: crate::retrain::now_unix(),
        ready: server.is_ready(),
        models: models.into_values().collect(),
        events,
    }
}

/// Features in the order the page lists them: drifted first, then by PSI (largest first),
/// then as the model declares them.
pub fn feature_order(features: &[FeatureScore]) -> Vec<&FeatureScore> {
    let mut out: Vec<&FeatureScore> = features.iter().collect();
    out.sort_by(|a, b| {
        b.drifted
            .cmp(&a.drifted)
            .then_with(|| {
                b.psi
                    .unwrap_or(f64::NEG_INFINITY)
                    .total_cmp(&a.psi.unwrap_or(f64::NEG_INFINITY))
            })
            .then_with(|| a.input.cmp(&b.input))
            .then_with(|| a.index.cmp(&b.index))
    });
    out
}

/// Removes what could be a secret from an error text before it is shown: credentials in
/// URLs (`scheme://user:pass@host`) and query strings.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        let url = match url.rfind('@') {
            Some(at) => format!("***@{}", &url[at + 1..]),
            None => url.to_string(),
        };
        let url = match url.find('?') {
            Some(q) => format!("{}?***", &url[..q]),
            None => url,
        };
        out.push_str(&url);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// hh:mm:ss of a Unix time, in UTC.
fn utc_time(unix: f64) -> String {
    crate::retrain::rfc3339(unix)[11..19].to_string()
}

fn ago(now: f64, then: f64) -> String {
    let d = (now - then).max(0.0);
    if d < 90.0 {
        format!("{d:.0} s ago")
    } else if d < 5400.0 {
        format!("{:.0} min ago", d / 60.0)
    } else if d < 172_800.0 {
        format!("{:.1} h ago", d / 3600.0)
    } else {
        format!("{:.0} days ago", d / 86400.0)
    }
}

fn seconds_text(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v != 0.0 && v.abs() < 10f64.powi(-(digits as i32)) => format!("{v:.1e}"),
        Some(v) => format!("{v:.digits$}"),
        None => "–".into(),
    }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "READY" => "ok",
        "LOADING" => "warn",
        _ => "bad",
    }
}

/// The whole page.
pub fn page(view: &View) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "vigil console" }
                link rel="icon" type="image/svg+xml" href="/favicon.svg";
                link rel="stylesheet" href="/console.css";
                script src="/console.js" defer {}
                noscript { meta http-equiv="refresh" content=(REFRESH_SECONDS * 2); }
            }
            body {
                header {
                    h1 { "vigil" }
                    span.tag.(if view.ready { "ok" } else { "bad" }) {
                        (if view.ready { "ready" } else { "not ready" })
                    }
                    span #refresh { "as of " (utc_time(view.generated_at)) " UTC" }
                    nav {
                        a href="#models" { "Models" }
                        a href="#drift" { "Drift" }
                        a href="#retrain" { "Retrain" }
                        a href="/openapi.json" { "OpenAPI" }
                        a href="/metrics" { "Metrics" }
                    }
                }
                (main_part(view))
            }
        }
    }
}

/// The part the script replaces on each refresh.
fn main_part(view: &View) -> Markup {
    html! {
        main data-generated-at=(format!("{:.3}", view.generated_at)) {
            section #models {
                h2 { "Models" }
                @if view.models.is_empty() {
                    p.empty { "No model in the repository." }
                }
                @for m in &view.models { (model_part(m)) }
            }
            section #drift {
                h2 { "Drift" }
                p.legend {
                    span.swatch.ref {} " reference (training) " span.swatch.win {} " last window"
                    " · features that drifted come first"
                }
                @for m in &view.models {
                    @for v in &m.versions {
                        @if let Some(d) = &v.drift { (drift_part(&m.name, v, d, view.generated_at)) }
                    }
                }
            }
            section #retrain {
                h2 { "Retrain" }
                (events_part(&view.events, view.generated_at))
            }
        }
    }
}

fn model_part(m: &ModelView) -> Markup {
    let rollout = match (m.stable, m.canary) {
        (Some(s), Some(c)) if m.mode == "shadow" => {
            format!("stable v{s}, canary v{c} in shadow (gets a copy of every request)")
        }
        (Some(s), Some(c)) => format!("stable v{s}, canary v{c} at {} %", m.weight),
        (Some(s), None) => format!("stable v{s}, no canary"),
        _ => "nothing served".into(),
    };
    html! {
        article.model data-model=(m.name) {
            h3 {
                (m.name) " "
                span.tag.(if m.ready { "ok" } else { "bad" }) { (if m.ready { "ready" } else { "not ready" }) }
            }
            p.rollout { "Rollout: " (rollout) }
            @for p in &m.problems { p.problem { (p) } }
            @if let Some(a) = &m.analysis { (analysis::part(a)) }
            @if let Some(q) = &m.quality { (quality_part(q)) }
            table.versions {
                thead { tr {
                    th { "Version" } th { "State" } th { "Role" } th { "Engine" }
                    th { "Inputs" } th { "Outputs" }
                    th.num title="requests per second over the last 5 minutes" { "req/s" }
                    th.num { "errors" } th.num { "p50" } th.num { "p99" }
                } }
                tbody {
                    @for v in &m.versions {
                        tr data-version=(v.version) {
                            td { "v" (v.version) }
                            td {
                                span.tag.(state_class(&v.state)) { (v.state) }
                                @if !v.reason.is_empty() { div.reason { (v.reason) } }
                            }
                            td { @if let Some(r) = v.role { span.role.(r) { (r) } } @else { "–" } }
                            td { (v.engine.unwrap_or("–")) }
                            td.io { @for i in &v.inputs { div { (i) } } }
                            td.io { @for o in &v.outputs { div { (o) } } }
                            @if let Some(t) = &v.traffic {
                                td.num.rate { (format!("{:.1}", t.rate)) }
                                td.num.(if t.failed > 0 { "bad" } else { "" }) {
                                    (format!("{:.1} %", t.error_rate * 100.0))
                                }
                                td.num.p50 { (t.p50.map_or("–".into(), seconds_text)) }
                                td.num { (t.p99.map_or("–".into(), seconds_text)) }
                            } @else {
                                td.num { "–" } td.num { "–" } td.num { "–" } td.num { "–" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Live quality per version (labels joined by feedback) beside the accuracy expected
/// from the predicted probabilities, which needs no labels.
fn quality_part(q: &crate::payload::feedback::QualityReport) -> Markup {
    let share = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.1} %", x * 100.0));
    html! {
        table.quality {
            caption {
                "Live quality: " (q.labels_pending) " predicted rows wait for a label; "
                (q.joined) " labels joined, " (q.late) " late, " (q.unknown) " unknown"
            }
            thead { tr {
                th { "Version" } th { "Role" } th.num { "labels (window)" }
                th.num { "accuracy" } th.num { "macro F1" } th.num { "MAE" } th.num { "RMSE" }
                th.num title="mean calibrated top probability of the latest predictions, labelled or not" { "expected accuracy" }
            } }
            tbody {
                @for v in &q.versions {
                    @let expected = q.expected.iter().find(|e| e.version == v.version);
                    tr data-version=(v.version) {
                        td { "v" (v.version) }
                        td { (v.role) }
                        td.num { (v.window_rows) " of " (v.labels_received) }
                        td.num.accuracy { (share(v.accuracy)) }
                        td.num { (opt(v.macro_f1, 3)) }
                        td.num { (opt(v.mae, 4)) }
                        td.num { (opt(v.rmse, 4)) }
                        td.num.expected { (share(expected.map(|e| e.expected_accuracy))) }
                    }
                }
                @for e in q.expected.iter().filter(|e| !q.versions.iter().any(|v| v.version == e.version)) {
                    tr data-version=(e.version) {
                        td { "v" (e.version) } td { "–" } td.num { "0" }
                        td.num.accuracy { "–" } td.num { "–" } td.num { "–" } td.num { "–" }
                        td.num.expected { (share(Some(e.expected_accuracy))) }
                    }
                }
            }
        }
    }
}

fn drift_part(model: &str, v: &VersionView, d: &VersionReport, now: f64) -> Markup {
    let status_class = if d.status == "drifting" { "bad" } else { "ok" };
    html! {
        article.drift data-model=(model) data-version=(v.version) {
            h3 {
                (model) " v" (v.version)
                @if let Some(r) = v.role { " " span.role.(r) { (r) } }
                " " span.tag.(status_class) { (d.status) }
            }
            p.meta {
                (d.state) " · " (d.windows) " windows scored · "
                (d.window_rows) " rows in the open window"
                @if d.windows_in_row > 0 { " · " (d.windows_in_row) " drifted in a row" }
                @if let Some(r) = &d.reference { " · reference: " (r.source) " (" (r.rows) " rows)" }
            }
            @if !d.recent_windows.is_empty() {
                div.timeline {
                    span.label { "drift share, last " (d.recent_windows.len()) " windows" }
                    (plot::timeline(&d.recent_windows))
                }
            }
            @if let Some(w) = &d.last_window {
                p.meta {
                    "Last window: closed " (ago(now, w.closed_at)) ", " (w.rows) " rows, drift share "
                    (format!("{:.2}", w.drift_share))
                    @if w.drifted { " — " strong.bad { "drifted" } }
                }
                (features_table(model, &w.features, Side::Input, "Input features"))
                @if !w.outputs.is_empty() {
                    details id=(format!("outputs-{model}-{}", v.version)) {
                        summary { "Outputs (reference: the first scored window unless the profile has one)" }
                        (features_table(model, &w.outputs, Side::Output, "Outputs"))
                    }
                }
            } @else {
                p.empty { "No window scored yet." }
            }
        }
    }
}

/// One side's features (inputs or outputs: the two name their features independently,
/// so each table row carries its side as well as its name).
fn features_table(model: &str, features: &[FeatureScore], side: Side, caption: &str) -> Markup {
    let ordered = feature_order(features);
    let hidden = ordered.len().saturating_sub(FEATURES_SHOWN);
    html! {
        table.features {
            caption { (caption) }
            thead { tr {
                th { "Feature" } th { "Distribution" } th.num { "PSI" } th.num { "KS p" }
                th.num { "χ² p" } th.num { "mean" } th { "Drifted" }
            } }
            tbody {
                @for f in ordered.iter().take(FEATURES_SHOWN) {
                    tr.(if f.drifted { "drifted" } else { "" }) data-side=(side.as_str()) data-feature=(f.name) data-drifted=(f.drifted) {
                        td { (f.name) @if f.nonfinite > 0 { div.reason { (f.nonfinite) " NaN/inf" } } }
                        td { (plot::histogram(f)) }
                        td.num { (opt(f.psi, 3)) }
                        td.num { (opt(f.ks_pvalue, 3)) }
                        td.num { (opt(f.chi2_pvalue, 3)) }
                        td.num { (opt(f.mean, 3)) }
                        td { @if f.drifted { strong.bad { "drifted" } } @else { "no" } }
                    }
                }
            }
        }
        @if hidden > 0 {
            p.meta {
                (hidden) " more features, further down the same order; all of them are in "
                a href=(format!("/v2/models/{model}/drift")) { "the drift report" }
            }
        }
    }
}

fn events_part(events: &[EventRecord], now: f64) -> Markup {
    html! {
        @if events.is_empty() {
            p.empty { "No retrain event yet." }
        } @else {
            table.events {
                thead { tr {
                    th { "Created" } th { "Model" } th { "Reason" } th { "State" }
                    th.num { "Attempts" } th { "Last error" } th { "Event id" }
                } }
                tbody {
                    @for e in events {
                        @let (label, class) = match e.state {
                            EventState::Pending => ("pending", "warn"),
                            EventState::Delivered => ("delivered", "ok"),
                            EventState::Dead => ("dead letter", "bad"),
                        };
                        tr data-event=(e.id) {
                            td { (ago(now, e.created_at)) }
                            td { (e.event.data.model) " v" (e.event.data.model_version) }
                            td { (e.event.data.reason) }
                            td { span.tag.(class) { (label) } }
                            td.num { (e.attempts) }
                            td.reason { (e.last_error.as_deref().map(redact).unwrap_or_default()) }
                            td.id { (e.id) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_urls_are_redacted() {
        assert_eq!(
            redact("error sending request for url (https://bob:s3cret@hooks.example/x?token=abc)"),
            "error sending request for url (https://***@hooks.example/x?***)"
        );
        assert_eq!(
            redact("status 500 from receiver"),
            "status 500 from receiver"
        );
        assert_eq!(
            redact("a http://h/p and b ftp://u@h2"),
            "a http://h/p and b ftp://***@h2"
        );
    }

    fn feature(name: &str, index: usize, psi: Option<f64>, drifted: bool) -> FeatureScore {
        FeatureScore {
            name: name.into(),
            input: "x".into(),
            index,
            kind: crate::monitor::profile::Kind::Numeric,
            rows: 10,
            sample: 10,
            psi,
            js: None,
            ks_statistic: None,
            ks_pvalue: None,
            wasserstein: None,
            chi2_statistic: None,
            chi2_pvalue: None,
            unseen_share: None,
            mean: None,
            std: None,
            nonfinite: 0,
            drifted,
            edges: vec![],
            categories: vec![],
            reference_proportions: vec![],
            window_counts: vec![],
        }
    }

    #[test]
    fn drifted_features_come_first_then_by_psi() {
        let f = feature;
        let fs = [
            f("a", 0, Some(0.5), false),
            f("b", 1, Some(0.1), true),
            f("c", 2, None, false),
            f("d", 3, Some(0.9), true),
        ];
        let names: Vec<&str> = feature_order(&fs).iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["d", "b", "a", "c"]);
    }

    #[test]
    fn times_of_day_in_utc() {
        assert_eq!(utc_time(3661.5), "01:01:01");
        assert_eq!(utc_time(1_764_750_000.0), "08:20:00");
    }

    #[test]
    fn wide_models_show_the_first_features_and_link_the_rest() {
        let fs: Vec<FeatureScore> = (0..45)
            .map(|i| feature(&format!("f{i}"), i, Some(i as f64 / 100.0), i == 44))
            .collect();
        let html = features_table("wide", &fs, Side::Input, "Input features").into_string();
        assert_eq!(html.matches("data-feature=").count(), FEATURES_SHOWN);
        assert!(html.contains("data-side=\"input\" data-feature=\"f44\" data-drifted=\"true\""));
        assert!(html.contains("5 more features"));
        assert!(html.contains("href=\"/v2/models/wide/drift\""));
    }
}

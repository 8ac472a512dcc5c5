//! The console's two plots, as inline SVG: a drift-share time line, and a feature's
//! reference and last-window distributions side by side on the reference bins.
//! Colours come from classes (`console.css`), so the page needs no inline styles.

use maud::{html, Markup};

use crate::monitor::profile::Kind;
use crate::monitor::{FeatureScore, WindowPoint};

const TIMELINE_W: f64 = 288.0;
const TIMELINE_H: f64 = 36.0;
const HIST_W: f64 = 240.0;
const HIST_H: f64 = 56.0;
const LABEL_H: f64 = 12.0;

fn n(x: f64) -> String {
    format!("{x:.1}")
}

fn short(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e6 {
        format!("{x:.0}")
    } else if x.abs() >= 1e4 || x.abs() < 1e-2 {
        format!("{x:.2e}")
    } else {
        format!("{x:.2}")
    }
}

/// One bar per closed window, its height the share of drifted features, red when the
/// window counted as drifted.
pub fn timeline(points: &[WindowPoint]) -> Markup {
    let slots = crate::monitor::RECENT_WINDOWS.max(points.len()) as f64;
    let slot = TIMELINE_W / slots;
    let offset = TIMELINE_W - slot * points.len() as f64;
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" width=(TIMELINE_W) height=(TIMELINE_H)
            viewBox=(format!("0 0 {TIMELINE_W} {TIMELINE_H}")) role="img"
            aria-label=(format!("drift share of the last {} windows", points.len())) {
            rect.frame x="0" y="0" width=(TIMELINE_W) height=(TIMELINE_H) {}
            @for (i, p) in points.iter().enumerate() {
                @let h = (p.drift_share.clamp(0.0, 1.0) * (TIMELINE_H - 2.0)).max(1.5);
                rect.(if p.drifted { "bar bad" } else { "bar ok" })
                    x=(n(offset + i as f64 * slot + 0.5)) y=(n(TIMELINE_H - h))
                    width=(n((slot - 1.0).max(1.0))) height=(n(h)) {
                    title {
                        (format!("{} rows, drift share {:.2}{}", p.rows, p.drift_share,
                            if p.drifted { ", drifted" } else { "" }))
                    }
                }
            }
        }
    }
}

/// Bin labels and the two distributions (shares) on the reference's bins.
fn bins_of(f: &FeatureScore) -> (Vec<String>, Vec<f64>, Vec<f64>) {
    let total: u64 = f.window_counts.iter().sum();
    let window: Vec<f64> = f
        .window_counts
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        })
        .collect();
    let mut reference = f.reference_proportions.clone();
    reference.resize(window.len().max(reference.len()), 0.0);
    let labels: Vec<String> = match f.kind {
        Kind::Categorical => f
            .categories
            .iter()
            .map(|&c| short(c))
            .chain(["other".to_string()])
            .collect(),
        Kind::Numeric => {
            let e = &f.edges;
            (0..reference.len())
                .map(
                    |i| match (i.checked_sub(1).and_then(|j| e.get(j)), e.get(i)) {
                        (None, Some(hi)) => format!("< {}", short(*hi)),
                        (Some(lo), Some(hi)) => format!("{} – {}", short(*lo), short(*hi)),
                        (Some(lo), None) => format!("≥ {}", short(*lo)),
                        (None, None) => "all".into(),
                    },
                )
                .collect()
        }
    };
    (labels, reference, window)
}

/// Paired bars per reference bin: the reference share and the last window's.
pub fn histogram(f: &FeatureScore) -> Markup {
    let (labels, reference, window) = bins_of(f);
    let bins = reference.len().max(1) as f64;
    let top = reference
        .iter()
        .chain(&window)
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1e-9);
    let slot = HIST_W / bins;
    let bar = ((slot - 2.0) / 2.0).max(0.5);
    let plot_h = HIST_H - LABEL_H;
    let height = |p: f64| (p / top * (plot_h - 2.0)).max(if p > 0.0 { 1.0 } else { 0.0 });
    let (first, last) = match f.kind {
        Kind::Numeric if !f.edges.is_empty() => (
            short(f.edges[0]),
            short(*f.edges.last().unwrap_or(&f.edges[0])),
        ),
        _ => (String::new(), String::new()),
    };
    html! {
        svg.hist xmlns="http://www.w3.org/2000/svg" width=(HIST_W) height=(HIST_H)
            viewBox=(format!("0 0 {HIST_W} {HIST_H}")) role="img"
            aria-label=(format!("{}: reference and last window on {} bins", f.name, reference.len())) {
            line.axis x1="0" y1=(n(plot_h)) x2=(HIST_W) y2=(n(plot_h)) {}
            @for (i, label) in labels.iter().enumerate() {
                @let r = reference.get(i).copied().unwrap_or(0.0);
                @let w = window.get(i).copied().unwrap_or(0.0);
                @let x = i as f64 * slot + 1.0;
                g {
                    title { (format!("{label}: reference {:.1} %, window {:.1} %", r * 100.0, w * 100.0)) }
                    rect.ref x=(n(x)) y=(n(plot_h - height(r))) width=(n(bar)) height=(n(height(r))) {}
                    rect.win x=(n(x + bar)) y=(n(plot_h - height(w))) width=(n(bar)) height=(n(height(w))) {}
                }
                @if f.kind == Kind::Categorical && labels.len() <= 12 {
                    text x=(n(x + bar)) y=(n(HIST_H - 2.0)) text-anchor="middle" { (label) }
                }
            }
            @if !first.is_empty() {
                text x=(n(slot)) y=(n(HIST_H - 2.0)) text-anchor="middle" { (first) }
                text x=(n(HIST_W - slot)) y=(n(HIST_H - 2.0)) text-anchor="middle" { (last) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(kind: Kind) -> FeatureScore {
        FeatureScore {
            name: "f0".into(),
            input: "x".into(),
            index: 0,
            kind,
            rows: 4,
            sample: 4,
            psi: Some(0.3),
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
            drifted: true,
            edges: vec![],
            categories: vec![],
            reference_proportions: vec![],
            window_counts: vec![],
        }
    }

    #[test]
    fn numeric_bins_are_labelled_by_their_edges() {
        let mut f = feature(Kind::Numeric);
        f.edges = vec![1.0, 2.5];
        f.reference_proportions = vec![0.25, 0.5, 0.25];
        f.window_counts = vec![0, 1, 3];
        let (labels, r, w) = bins_of(&f);
        assert_eq!(labels, ["< 1", "1 – 2.50", "≥ 2.50"]);
        assert_eq!(r, [0.25, 0.5, 0.25]);
        assert_eq!(w, [0.0, 0.25, 0.75]);
        let svg = histogram(&f).into_string();
        // Three bins, two bars each.
        assert_eq!(svg.matches("<rect class=\"ref\"").count(), 3);
        assert_eq!(svg.matches("<rect class=\"win\"").count(), 3);
    }

    #[test]
    fn categories_get_an_other_bin() {
        let mut f = feature(Kind::Categorical);
        f.categories = vec![0.0, 1.0];
        f.reference_proportions = vec![0.5, 0.5];
        f.window_counts = vec![1, 1, 2];
        let (labels, r, w) = bins_of(&f);
        assert_eq!(labels, ["0", "1", "other"]);
        assert_eq!(r, [0.5, 0.5, 0.0]);
        assert_eq!(w, [0.25, 0.25, 0.5]);
        assert!(histogram(&f).into_string().contains(">other</text>"));
    }

    #[test]
    fn timeline_marks_drifted_windows() {
        let p = |share: f64, drifted: bool| WindowPoint {
            closed_at: 0.0,
            rows: 100,
            drift_share: share,
            drifted,
        };
        let svg = timeline(&[p(0.0, false), p(0.5, true), p(0.25, true)]).into_string();
        assert_eq!(svg.matches("class=\"bar bad\"").count(), 2);
        assert_eq!(svg.matches("class=\"bar ok\"").count(), 1);
    }
}

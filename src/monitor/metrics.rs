//! The drift monitor's metric handles: one version's drift gauges and counters, resolved
//! once from the families that `crate::metrics` registers, and how a scored window and a
//! reference's bins become series. The metrics module only registers the families; it
//! never sees a window report. Imports the ground floor and this folder's reports.

use prometheus::{Gauge, GaugeVec, IntCounter, IntGauge};

use super::profile::{FeatureProfile, Kind};
use super::report::WindowReport;
use crate::metrics::{DriftFamilies, FeatureNames, FleetFamilies, Side, DRIFT_METHODS};

/// One version's drift metrics.
pub struct DriftMetrics {
    model: String,
    version: String,
    version_n: u64,
    score: GaugeVec,
    share: Gauge,
    pub status: IntGauge,
    windows_ok: IntCounter,
    windows_drift: IntCounter,
    /// Closed windows the scorer's full queue turned away.
    pub windows_dropped: IntCounter,
    pub window_rows: IntGauge,
    /// Where the feature names are noted, so the series go when the version goes.
    names: FeatureNames,
    fleet: FleetFamilies,
}

impl DriftMetrics {
    /// Resolves a version's handles from the drift families.
    pub fn new(families: DriftFamilies, model: &str, version: u64) -> DriftMetrics {
        let v = version.to_string();
        DriftMetrics {
            model: model.to_string(),
            version: v.clone(),
            version_n: version,
            score: families.score.clone(),
            share: families.share.with_label_values(&[model, &v]),
            status: families.status.with_label_values(&[model, &v]),
            windows_ok: families.windows.with_label_values(&[model, &v, "ok"]),
            windows_drift: families.windows.with_label_values(&[model, &v, "drift"]),
            windows_dropped: families.windows.with_label_values(&[model, &v, "dropped"]),
            window_rows: families.window_rows.with_label_values(&[model, &v]),
            names: families.names.clone(),
            fleet: families.fleet.clone(),
        }
    }

    /// Creates the version's per-bin counters of one side's features (at zero, so that
    /// every bin has a series from the start) and sets the reference shares.
    pub fn fleet_bins(&self, side: Side, features: &[FeatureProfile]) -> FleetBins {
        let mut noted = Vec::new();
        let counters = features
            .iter()
            .map(|f| {
                let labels = bin_labels(f);
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, bin)| {
                        let l = [
                            self.model.as_str(),
                            &self.version,
                            side.as_str(),
                            &f.name,
                            bin,
                        ];
                        if bin != "nan" {
                            let share = f.proportions.get(i).copied().unwrap_or(0.0);
                            self.fleet.reference.with_label_values(&l).set(share);
                        }
                        noted.push((side, f.name.clone(), bin.clone()));
                        self.fleet.bin_rows.with_label_values(&l)
                    })
                    .collect()
            })
            .collect();
        self.fleet
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((self.model.clone(), self.version_n))
            .or_default()
            .extend(noted);
        FleetBins { counters }
    }

    /// Exports a scored window (scorer thread, once per window: label lookups are fine).
    /// Every series then holds this window's value: a method the window has no value
    /// for (no rows, a numeric-only method on a categorical feature) loses its series
    /// rather than keep an older window's.
    pub fn observe_window(&self, w: &WindowReport) {
        let mut names = Vec::new();
        let sides = w
            .features
            .iter()
            .map(|f| (Side::Input, f))
            .chain(w.outputs.iter().map(|f| (Side::Output, f)));
        for (side, f) in sides {
            let values = [
                f.psi,
                f.js,
                f.ks_statistic,
                f.ks_pvalue,
                f.wasserstein,
                f.chi2_statistic,
                f.chi2_pvalue,
            ];
            for (m, v) in DRIFT_METHODS.iter().zip(values) {
                let l = [
                    self.model.as_str(),
                    &self.version,
                    side.as_str(),
                    &f.name,
                    m,
                ];
                match v {
                    Some(v) => {
                        self.score.with_label_values(&l).set(v);
                        names.push((side, f.name.clone(), *m));
                    }
                    None => {
                        let _ = self.score.remove_label_values(&l);
                    }
                }
            }
        }
        let mut noted = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (self.model.clone(), self.version_n);
        noted.insert(key, names);
        self.share.set(w.drift_share);
        if w.drifted {
            self.windows_drift.inc();
        } else {
            self.windows_ok.inc();
        }
    }
}

/// One version's per-bin row counters: `counters[feature][bin]`, the last bin of each
/// feature being "nan" (NaN and infinite values).
pub struct FleetBins {
    pub counters: Vec<Vec<IntCounter>>,
}

/// The `bin` label values of a reference feature, in the order of the window's bins
/// (numeric: bin indexes; categorical: the categories and "other"), then "nan".
fn bin_labels(f: &FeatureProfile) -> Vec<String> {
    let mut out: Vec<String> = match f.kind {
        Kind::Numeric => (0..=f.edges.len()).map(|i| i.to_string()).collect(),
        Kind::Categorical => f
            .categories
            .iter()
            .map(|c| {
                if c.fract() == 0.0 && c.abs() < 1e15 {
                    format!("{c:.0}")
                } else {
                    c.to_string()
                }
            })
            .chain(["other".to_string()])
            .collect(),
    };
    out.push("nan".into());
    out
}

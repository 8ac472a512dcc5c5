//! `[drift]` of a model's `config.toml`: windows, thresholds and the detector's settings,
//! validated at load. Part of the ground floor: imports nothing above `duration`.

use serde::Deserialize;

/// Which test decides that a numeric feature drifted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMethod {
    /// KS (Bonferroni-corrected) or PSI.
    #[default]
    Auto,
    Ks,
    Psi,
}

/// `[drift]`: windows, thresholds and the detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    pub enabled: bool,
    /// A window closes after this many rows...
    pub window_rows: u64,
    /// ...or after this long (0: off) if it holds at least `min_rows`: seconds, or a
    /// duration such as "10m".
    #[serde(with = "crate::duration::serde_secs")]
    pub window_seconds: f64,
    pub min_rows: u64,
    pub psi_threshold: f64,
    /// KS (and chi-square) significance, divided by the number of features.
    pub ks_alpha: f64,
    /// Share of drifted features that makes a window drifted.
    pub drift_share: f64,
    /// Drifted windows in a row that make the version drifting.
    pub consecutive_windows: u32,
    pub method: DriftMethod,
    /// Without a reference.json, the first this-many rows served become the reference.
    pub reference_rows: u64,
    /// Raw values kept per feature and window (reservoir-sampled beyond).
    pub max_window_sample: usize,
    /// Bins of a reference built from served rows.
    pub bins: usize,
    /// Features forced categorical / numeric.
    pub categorical: Vec<String>,
    pub numeric: Vec<String>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            window_rows: 1000,
            window_seconds: 0.0,
            min_rows: 100,
            psi_threshold: 0.2,
            ks_alpha: 0.05,
            drift_share: 0.5,
            consecutive_windows: 1,
            method: DriftMethod::Auto,
            reference_rows: 5000,
            max_window_sample: 10_000,
            bins: 10,
            categorical: Vec::new(),
            numeric: Vec::new(),
        }
    }
}

impl DriftConfig {
    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: &str| Err(format!("drift.{m}"));
        if self.window_rows == 0 {
            return bad("window_rows must be at least 1");
        }
        if !(self.window_seconds.is_finite() && self.window_seconds >= 0.0) {
            return bad("window_seconds must be >= 0");
        }
        if !(self.ks_alpha > 0.0 && self.ks_alpha < 1.0) {
            return bad("ks_alpha must be in (0, 1)");
        }
        if !(self.drift_share > 0.0 && self.drift_share <= 1.0) {
            return bad("drift_share must be in (0, 1]");
        }
        if !(self.psi_threshold.is_finite() && self.psi_threshold > 0.0) {
            return bad("psi_threshold must be > 0");
        }
        if self.consecutive_windows == 0 {
            return bad("consecutive_windows must be at least 1");
        }
        if self.reference_rows == 0 {
            return bad("reference_rows must be at least 1");
        }
        if !(1..=10_000).contains(&self.max_window_sample) {
            return bad("max_window_sample must be in 1..=10000 (KS is exact up to 10000 values)");
        }
        if !(2..=100).contains(&self.bins) {
            return bad("bins must be in 2..=100");
        }
        Ok(())
    }
}

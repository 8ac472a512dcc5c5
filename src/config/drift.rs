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
    /// A window closes after this many rows ([`DEFAULT_WINDOW_ROWS`] when not written; see
    /// [`DriftConfig::rows_per_window`])...
    pub window_rows: Option<u64>,
    /// ...but is scored at most once per this long: at high rates a window keeps
    /// accumulating until it has been open this long (and the version's previous window
    /// is scored). Not written: [`DEFAULT_MIN_WINDOW_INTERVAL`] seconds, or 0 when
    /// `window_rows` is written (row-exact windows); see [`DriftConfig::min_interval`].
    #[serde(deserialize_with = "some_secs")]
    pub min_window_interval: Option<f64>,
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

/// Rows per window when `window_rows` is not written.
pub const DEFAULT_WINDOW_ROWS: u64 = 1000;

/// Seconds between scored windows when neither `window_rows` nor `min_window_interval` is
/// written. At 36 k rows/s (a 2-core machine at full load) a window then holds 360 k rows
/// and its scoring costs a few milliseconds of the drift thread every 10 s (about 0.5 ms
/// per numeric feature, `cargo bench --bench drift -- drift_ks`); below 100 rows/s
/// windows close at `window_rows` as they always did.
pub const DEFAULT_MIN_WINDOW_INTERVAL: f64 = 10.0;

fn some_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    crate::duration::serde_secs::deserialize(d).map(Some)
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            window_rows: None,
            min_window_interval: None,
            window_seconds: 0.0,
            min_rows: 100,
            psi_threshold: 0.2,
            ks_alpha: 0.05,
            drift_share: 0.5,
            consecutive_windows: 1,
            method: DriftMethod::Auto,
            reference_rows: 5000,
            // The size of `vigil profile`'s reference sample: two samples of one size
            // take scipy's O(n) exact KS p-value instead of the O(n1·n2) lattice count.
            max_window_sample: 5000,
            bins: 10,
            categorical: Vec::new(),
            numeric: Vec::new(),
        }
    }
}

impl DriftConfig {
    /// Rows after which a window closes (once [`DriftConfig::min_interval`] has passed).
    pub fn rows_per_window(&self) -> u64 {
        self.window_rows.unwrap_or(DEFAULT_WINDOW_ROWS)
    }

    /// Seconds a window stays open at least. A `window_rows` written without a
    /// `min_window_interval` keeps its windows row-exact (0): users and tests rely on it.
    pub fn min_interval(&self) -> f64 {
        self.min_window_interval
            .unwrap_or(if self.window_rows.is_some() {
                0.0
            } else {
                DEFAULT_MIN_WINDOW_INTERVAL
            })
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: &str| Err(format!("drift.{m}"));
        if self.window_rows == Some(0) {
            return bad("window_rows must be at least 1");
        }
        if !(self.window_seconds.is_finite() && self.window_seconds >= 0.0) {
            return bad("window_seconds must be >= 0");
        }
        if self
            .min_window_interval
            .is_some_and(|s| !(s.is_finite() && s >= 0.0))
        {
            return bad("min_window_interval must be >= 0");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<DriftConfig, String> {
        let c: DriftConfig = toml::from_str(t).map_err(|e| e.to_string())?;
        c.validate().map(|_| c)
    }

    /// Defaults bound how often windows are scored; a `window_rows` written alone keeps
    /// windows row-exact; both written, both apply.
    #[test]
    fn the_interval_applies_unless_window_rows_is_written_alone() {
        let d = parse("").unwrap();
        assert_eq!(
            (d.rows_per_window(), d.min_interval()),
            (1000, DEFAULT_MIN_WINDOW_INTERVAL)
        );
        let d = parse("window_rows = 1000").unwrap();
        assert_eq!((d.rows_per_window(), d.min_interval()), (1000, 0.0));
        let d = parse("window_rows = 50\nmin_window_interval = \"2m\"").unwrap();
        assert_eq!((d.rows_per_window(), d.min_interval()), (50, 120.0));
        let d = parse("min_window_interval = 0").unwrap();
        assert_eq!((d.rows_per_window(), d.min_interval()), (1000, 0.0));
        let d = parse("min_window_interval = \"250ms\"").unwrap();
        assert_eq!(d.min_interval(), 0.25);
    }

    #[test]
    fn absurd_intervals_are_refused_with_the_value() {
        for (t, want) in [
            ("min_window_interval = \"-5s\"", "negative"),
            ("min_window_interval = -1", "negative"),
            ("min_window_interval = \"1e20\"", "too long"),
            ("min_window_interval = \"soon\"", "not a duration"),
            ("min_window_interval = true", "min_window_interval"),
            ("window_rows = 0", "window_rows"),
            ("window_rows = -3", "window_rows"),
        ] {
            let e = parse(t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
        let c = DriftConfig {
            min_window_interval: Some(f64::NAN),
            ..DriftConfig::default()
        };
        assert!(c.validate().is_err());
    }
}

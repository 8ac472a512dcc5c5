//! What the monitor shows: a scored window ([`WindowReport`], its features'
//! [`FeatureScore`]s), the time line's points and a version's drift report (the JSON of
//! `GET /v2/models/{m}/drift` and the console's plots). Plain data; imports only the
//! profile's feature kind.

use serde::Serialize;

use super::profile::Kind;

/// The scores of one feature in one closed window.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FeatureScore {
    pub name: String,
    pub input: String,
    pub index: usize,
    pub kind: Kind,
    /// Finite values in the window: every one is in the bin counts, PSI, JS, chi-square,
    /// mean and std.
    pub rows: u64,
    /// Values in the window's sample (at most `max_window_sample`, drawn uniformly from
    /// all `rows`): what KS and Wasserstein compare with the reference's sample.
    pub sample: usize,
    pub psi: Option<f64>,
    pub js: Option<f64>,
    pub ks_statistic: Option<f64>,
    pub ks_pvalue: Option<f64>,
    pub wasserstein: Option<f64>,
    pub chi2_statistic: Option<f64>,
    pub chi2_pvalue: Option<f64>,
    /// Categorical features: the window's share of rows in no reference category. Those
    /// rows are tested in the chi-square's pooled bin (with the reference's rarest
    /// categories), so a few of them do not flag the feature, a large share does.
    pub unseen_share: Option<f64>,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub nonfinite: u64,
    pub drifted: bool,
    /// Inner edges of the reference bins (numeric features).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    /// The reference categories (categorical features); the window's last bin is "other".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<f64>,
    /// The reference's share of rows per bin (categorical: per category, then "other").
    pub reference_proportions: Vec<f64>,
    /// The window's rows per bin, on the same bins.
    pub window_counts: Vec<u64>,
}

/// One closed window, as the drift time line shows it.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct WindowPoint {
    /// Unix time in seconds.
    pub closed_at: f64,
    pub rows: u64,
    pub drift_share: f64,
    pub drifted: bool,
}

/// Windows kept for the time line.
pub const RECENT_WINDOWS: usize = 48;

/// A scored window.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WindowReport {
    /// Unix time in seconds.
    pub closed_at: f64,
    /// Unix time in seconds when the window opened (where its rows start in the payload
    /// log).
    pub opened_at: f64,
    pub rows: u64,
    pub drift_share: f64,
    pub drifted: bool,
    pub features: Vec<FeatureScore>,
    pub outputs: Vec<FeatureScore>,
}

/// What `GET /v2/models/{m}/drift` shows for one version.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VersionReport {
    pub version: u64,
    /// "monitoring", "collecting reference", "disabled", or "unmonitored: <why>".
    pub state: String,
    pub reference: Option<ReferenceInfo>,
    pub window_rows: u64,
    pub windows: u64,
    pub last_window: Option<WindowReport>,
    /// "ok" or "drifting".
    pub status: &'static str,
    /// Drifted windows in a row.
    pub windows_in_row: u32,
    /// The last windows closed (at most [`RECENT_WINDOWS`]), oldest first.
    pub recent_windows: Vec<WindowPoint>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReferenceInfo {
    pub source: String,
    pub rows: u64,
    pub features: usize,
}

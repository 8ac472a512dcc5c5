//! `[rollout]` of a model's `config.toml`: stable, canary and how traffic is split,
//! checked as far as possible without knowing what is loaded. Part of the ground floor:
//! imports nothing of vigil.

use serde::Deserialize;

/// How a canary shares traffic with the stable version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    /// The canary answers `weight`% of unpinned requests.
    #[default]
    Split,
    /// The canary gets a copy of every request; its answer is only measured.
    Shadow,
}

impl RolloutMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutMode::Split => "split",
            RolloutMode::Shadow => "shadow",
        }
    }
}

pub const DEFAULT_STICKY_HEADER: &str = "x-vigil-routing-key";

fn default_sticky_header() -> String {
    DEFAULT_STICKY_HEADER.to_string()
}

/// `[rollout]`: the stable version, an optional canary and its share.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// The version unpinned requests go to (default: the highest served).
    pub stable: Option<u64>,
    pub canary: Option<u64>,
    /// Percent of unpinned requests the canary answers in split mode (0..=100).
    #[serde(default)]
    pub weight: u8,
    #[serde(default)]
    pub mode: RolloutMode,
    /// Requests with the same value of this header land on the same version.
    #[serde(default = "default_sticky_header")]
    pub sticky_header: String,
    /// `[rollout.analysis]`: vigil walks the canary through steps and judges each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisConfig>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            stable: None,
            canary: None,
            weight: 0,
            mode: RolloutMode::Split,
            sticky_header: default_sticky_header(),
            analysis: None,
        }
    }
}

impl RolloutConfig {
    /// Checks what can be checked without knowing which versions are loaded.
    pub fn validate(&self) -> Result<(), String> {
        if self.weight > 100 {
            return Err(format!("rollout weight {} is outside 0..=100", self.weight));
        }
        if self.stable == Some(0) || self.canary == Some(0) {
            return Err("rollout versions are positive integers".into());
        }
        if self.canary.is_some() && self.canary == self.stable {
            return Err("the canary cannot be the stable version".into());
        }
        if axum::http::HeaderName::from_bytes(self.sticky_header.as_bytes()).is_err() {
            return Err(format!(
                "'{}' is not a valid header name",
                self.sticky_header
            ));
        }
        if let Some(a) = &self.analysis {
            a.validate()
                .map_err(|e| format!("[rollout.analysis] {e}"))?;
        }
        Ok(())
    }
}

/// What the judge does after the last step passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSuccess {
    /// The canary becomes stable.
    #[default]
    Promote,
    /// The canary stays at the last step's weight; an operator promotes it.
    Hold,
}

/// At most this many steps (the analysis state keeps every step's figures).
pub const MAX_ANALYSIS_STEPS: usize = 20;

/// `[rollout.analysis]`: the canary's steps and the checks each step must pass.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Canary weight per step (split mode); a shadow canary is judged in one step.
    #[serde(default = "default_steps")]
    pub steps: Vec<u8>,
    /// Time per step (and at least `min_requests` per arm); default 2m.
    #[serde(
        default,
        deserialize_with = "crate::duration::serde_text::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<String>,
    /// Requests per arm and step before the step is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// How long a step waits for `min_requests` before the analysis holds; default 30m.
    #[serde(
        default,
        deserialize_with = "crate::duration::serde_text::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<String>,
    /// Largest tolerated canary error rate minus stable's.
    #[serde(default = "default_error_delta")]
    pub max_error_rate_delta: f64,
    /// Largest tolerated canary/stable ratio of p50 and p99 latency.
    #[serde(default = "default_latency_ratio")]
    pub max_latency_ratio: f64,
    /// Largest tolerated PSI between the arms' output distributions.
    #[serde(default = "default_output_psi")]
    pub max_output_psi: f64,
    /// Shadow mode: smallest share of rows where both versions give the same label.
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    #[serde(default)]
    pub on_success: OnSuccess,
}

fn default_steps() -> Vec<u8> {
    vec![5, 25, 50, 100]
}
fn default_min_requests() -> u64 {
    200
}
fn default_error_delta() -> f64 {
    0.01
}
fn default_latency_ratio() -> f64 {
    1.25
}
fn default_output_psi() -> f64 {
    0.2
}
fn default_min_agreement() -> f64 {
    0.98
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            steps: default_steps(),
            interval: None,
            min_requests: default_min_requests(),
            max_wait: None,
            max_error_rate_delta: default_error_delta(),
            max_latency_ratio: default_latency_ratio(),
            max_output_psi: default_output_psi(),
            min_agreement: default_min_agreement(),
            on_success: OnSuccess::Promote,
        }
    }
}

impl AnalysisConfig {
    /// Time per step.
    pub fn interval(&self) -> std::time::Duration {
        self.interval
            .as_deref()
            .and_then(|s| crate::duration::parse(s).ok())
            .unwrap_or(std::time::Duration::from_secs(120))
    }

    /// How long a step may wait for its requests.
    pub fn max_wait(&self) -> std::time::Duration {
        self.max_wait
            .as_deref()
            .and_then(|s| crate::duration::parse(s).ok())
            .unwrap_or(std::time::Duration::from_secs(1800))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.len() > MAX_ANALYSIS_STEPS {
            return Err(format!(
                "steps must list 1 to {MAX_ANALYSIS_STEPS} weights, got {}",
                self.steps.len()
            ));
        }
        if let Some(w) = self.steps.iter().find(|&&w| w == 0 || w > 100) {
            return Err(format!("step weight {w} is outside 1..=100"));
        }
        for (key, value) in [("interval", &self.interval), ("max_wait", &self.max_wait)] {
            if let Some(v) = value {
                let d = crate::duration::parse(v).map_err(|e| format!("{key}: {e}"))?;
                if d.is_zero() {
                    return Err(format!("{key} must be longer than 0"));
                }
            }
        }
        if self.min_requests == 0 || self.min_requests > 100_000_000 {
            return Err(format!(
                "min_requests must be in 1..=100000000, got {}",
                self.min_requests
            ));
        }
        let share = |key: &str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{key} must be a number in 0..=1, got {v}"))
            }
        };
        share("max_error_rate_delta", self.max_error_rate_delta)?;
        share("min_agreement", self.min_agreement)?;
        if !(self.max_latency_ratio.is_finite() && self.max_latency_ratio >= 1.0) {
            return Err(format!(
                "max_latency_ratio must be a number of at least 1, got {}",
                self.max_latency_ratio
            ));
        }
        if !(self.max_output_psi.is_finite() && self.max_output_psi >= 0.0) {
            return Err(format!(
                "max_output_psi must be a number of at least 0, got {}",
                self.max_output_psi
            ));
        }
        Ok(())
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
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
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            stable: None,
            canary: None,
            weight: 0,
            mode: RolloutMode::Split,
            sticky_header: default_sticky_header(),
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
        Ok(())
    }
}

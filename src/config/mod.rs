//! A model's `config.toml`: its schema, one file per section, parsed and validated once
//! at load so the rest of the code receives typed values. Also the small vocabulary of
//! settings that rooms below the command line share (`BackendChoice`, `ModelControl`).
//! The command line itself is `cli`. This is the ground floor: it must never import
//! `backend`, `serving`, `retrain` or anything above; only `duration`.

mod batching;
mod drift;
mod execution;
mod logging;
mod retrain;
mod rollout;
mod version_policy;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use batching::BatchingConfig;
pub use drift::{DriftConfig, DriftMethod};
pub use execution::{ExecutionConfig, ExecutionMode};
pub use logging::LoggingConfig;
pub use retrain::{key_of, Format, RetrainConfig, RetrainTrigger};
pub use rollout::{
    AnalysisConfig, OnSuccess, RolloutConfig, RolloutMode, DEFAULT_STICKY_HEADER,
    MAX_ANALYSIS_STEPS,
};
pub use version_policy::{VersionPolicy, VersionPolicyConfig};

/// Which engine to use: a fixed one, or `auto` (ort when its library loaded, else tract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Tract,
    Ort,
}

/// How the set of served models is decided (Triton's model control modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelControl {
    Poll,
    Explicit,
}

/// A model's `config.toml`. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Engine for this model (`auto`, `tract` or `ort`); default: the server's `--backend`.
    pub backend: Option<BackendChoice>,
    /// Which versions are served.
    #[serde(default)]
    pub version_policy: VersionPolicyConfig,
    /// Stable and canary versions, and how traffic is split between them.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Drift monitoring of inputs and outputs.
    #[serde(default)]
    pub drift: DriftConfig,
    /// Where drift events go (the retraining pipeline's webhook).
    #[serde(default)]
    pub retrain: RetrainConfig,
    /// Dynamic batching of concurrent requests.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Where compute runs: inline on the async thread, on the worker pool, or `auto`.
    #[serde(default)]
    pub execution: ExecutionConfig,
    /// Payload logging: the share of requests written to `--payload-dir`.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// A `config.toml` that cannot be used, with the file named.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl ModelConfig {
    /// Reads `<model dir>/config.toml`; a missing file means all defaults.
    pub fn load(model_dir: &Path) -> Result<ModelConfig, ConfigError> {
        let path = model_dir.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
            Err(e) => {
                return Err(ConfigError {
                    path,
                    message: e.to_string(),
                })
            }
        };
        let mut config: ModelConfig = toml::from_str(&text).map_err(|e| ConfigError {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        // Whether `[batching]` is written at all (serde's defaults cannot tell).
        config.batching.explicit =
            toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.contains_key("batching"));
        let invalid = |message| ConfigError {
            path: path.clone(),
            message,
        };
        config.version_policy.policy().map_err(invalid)?;
        config.rollout.validate().map_err(invalid)?;
        config.drift.validate().map_err(invalid)?;
        config.retrain.validate().map_err(invalid)?;
        config.batching.validate().map_err(invalid)?;
        config.execution.validate().map_err(invalid)?;
        config.logging.validate().map_err(invalid)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;

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
pub mod triton;
mod version_policy;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use batching::BatchingConfig;
pub use drift::{DriftConfig, DriftMethod};
pub use execution::{ExecutionConfig, ExecutionMode};
pub use logging::LoggingConfig;
pub use retrain::{
    key_of, Format, QualityThresholds, RetrainConfig, RetrainTrigger, EXPECTED_ACCURACY,
};
pub use rollout::{
    AnalysisConfig, OnSuccess, RolloutConfig, RolloutMode, DEFAULT_STICKY_HEADER,
    MAX_ANALYSIS_STEPS,
};
pub use triton::TritonConfig;
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

/// A model's settings: its `config.toml` (every key optional; unknown keys are errors),
/// merged over its Triton `config.pbtxt` when there is one (config.toml wins where both
/// set a thing).
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
    /// The model's Triton `config.pbtxt` (or the configuration a `load` request carried).
    #[serde(skip)]
    pub triton: Option<TritonConfig>,
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
    /// Reads `<model dir>/config.pbtxt` (Triton's) and `<model dir>/config.toml`; a
    /// missing file means all defaults.
    pub fn load(model_dir: &Path) -> Result<ModelConfig, ConfigError> {
        let pbtxt = model_dir.join("config.pbtxt");
        let triton = match std::fs::read(&pbtxt) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| ConfigError {
                    path: pbtxt.clone(),
                    message: "not UTF-8 text".into(),
                })?;
                Some(TritonConfig::from_text(&text).map_err(|e| ConfigError {
                    path: pbtxt.clone(),
                    message: e.to_string(),
                })?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ConfigError {
                    path: pbtxt,
                    message: e.to_string(),
                })
            }
        };
        ModelConfig::load_with(model_dir, triton)
    }

    /// Reads `<model dir>/config.toml` over `triton`, a Triton configuration (from
    /// `config.pbtxt`, or the override a `load` request carried).
    pub fn load_with(
        model_dir: &Path,
        triton: Option<TritonConfig>,
    ) -> Result<ModelConfig, ConfigError> {
        if let Some(t) = &triton {
            let dir_name = model_dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !t.name.is_empty() && t.name != dir_name {
                return Err(ConfigError {
                    path: model_dir.join("config.pbtxt"),
                    message: format!(
                        "name '{}' does not match the model directory '{dir_name}'",
                        t.name
                    ),
                });
            }
        }
        let path = model_dir.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
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
        let table = toml::from_str::<toml::Table>(&text).unwrap_or_default();
        config.batching.explicit = table.contains_key("batching");
        if let Some(t) = triton {
            config.apply_triton(t, &table);
        }
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

    /// Takes from a Triton configuration what `config.toml` (`table`) does not set.
    fn apply_triton(&mut self, t: TritonConfig, table: &toml::Table) {
        if !table.contains_key("version_policy") {
            if let Some(p) = &t.version_policy {
                self.version_policy = p.clone();
            }
        }
        if !table.contains_key("batching") {
            match &t.dynamic_batching {
                Some(b) => {
                    self.batching = BatchingConfig {
                        max_batch_size: Some(t.max_batch_size.max(1)),
                        max_queue_delay_us: b.max_queue_delay_us,
                        max_queue_size: b.max_queue_size,
                        preferred_batch_sizes: b.preferred_batch_sizes.clone(),
                        explicit: true,
                    }
                }
                // Triton batches on the server only with dynamic_batching.
                None => self.batching.max_batch_size = Some(1),
            }
        }
        self.triton = Some(t);
    }
}

#[cfg(test)]
mod tests;

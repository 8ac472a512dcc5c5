//! `[retrain]` of a model's `config.toml` (and the `--retrain-*` defaults): where drift
//! events go, validated at load. Only the schema and its checks live here; turning it into
//! a delivery target (reading secrets from the environment) belongs to `retrain`, which
//! imports this. Part of the ground floor: imports nothing above `duration`.

use base64::Engine;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[retrain] format`: how an event is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Standard,
    Airflow,
}

/// The key of a `whsec_<base64>` secret; any other string is used as raw bytes.
pub fn key_of(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the webhook secret after 'whsec_' is not valid base64".to_string()),
        None if secret.is_empty() => Err("the webhook secret is empty".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `[retrain]` (and the server-wide `--retrain-*` defaults): every field optional.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    pub url: Option<String>,
    /// Standard Webhooks key (`whsec_` + base64), or...
    pub secret: Option<String>,
    /// ...the environment variable that holds it.
    pub secret_env: Option<String>,
    /// No new drift event for a model within this long of the last one ("24h").
    #[serde(default, deserialize_with = "crate::duration::serde_text::deserialize")]
    pub cooldown: Option<String>,
    /// Per delivery attempt ("15s").
    #[serde(default, deserialize_with = "crate::duration::serde_text::deserialize")]
    pub timeout: Option<String>,
    pub max_attempts: Option<u32>,
    pub format: Option<Format>,
    /// Airflow: the DAG to trigger, and the API token (or the variable holding it).
    pub dag_id: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    /// What creates drift events: this replica's windows (`local`, default) or the fleet
    /// alert through Alertmanager (`fleet`).
    pub trigger: Option<RetrainTrigger>,
    /// Live quality (higher is better) below which a full rolling window of labelled rows
    /// (or, for `expected_accuracy`, of predictions) creates a `vigil.quality.degraded`
    /// event: `{ accuracy = 0.9, macro_f1 = 0.8, expected_accuracy = 0.85 }`.
    pub min_quality: Option<BTreeMap<String, f64>>,
    /// Live error (lower is better) above which it does: `{ mae = 0.5, rmse = 1.0 }`.
    pub max_error: Option<BTreeMap<String, f64>>,
}

/// The quality thresholds of `[retrain] min_quality` and `max_error`, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QualityThresholds {
    /// (metric, floor): a window below the floor has degraded.
    pub min: Vec<(String, f64)>,
    /// (metric, ceiling): a window above the ceiling has degraded.
    pub max: Vec<(String, f64)>,
}

impl QualityThresholds {
    pub fn is_empty(&self) -> bool {
        self.min.is_empty() && self.max.is_empty()
    }

    /// The floor of the label-free estimate (`min_quality.expected_accuracy`).
    pub fn expected_accuracy(&self) -> Option<f64> {
        self.min
            .iter()
            .find(|(name, _)| name == EXPECTED_ACCURACY)
            .map(|&(_, floor)| floor)
    }
}

/// Error metrics (lower is better): the keys of `max_error`.
pub const ERROR_METRICS: [&str; 2] = ["mae", "rmse"];

/// The label-free estimate (`min_quality` only): judged on the last `quality_window`
/// predictions, labelled or not.
pub const EXPECTED_ACCURACY: &str = "expected_accuracy";

/// Whether `name` is a higher-is-better metric vigil measures: `accuracy`, `macro_f1`,
/// `precision_<class>`, `recall_<class>`, `f1_<class>` on labelled rows, or
/// `expected_accuracy` on predictions alone.
fn is_score_metric(name: &str) -> bool {
    if matches!(name, "accuracy" | "macro_f1" | EXPECTED_ACCURACY) {
        return true;
    }
    ["precision_", "recall_", "f1_"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|c| c.parse::<i64>().is_ok())
    })
}

/// `[retrain] trigger`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RetrainTrigger {
    /// Each replica's own drift windows create events.
    #[default]
    Local,
    /// Only the fleet alert (`POST /v2/retrain/alertmanager`) creates drift events.
    Fleet,
}

impl std::fmt::Debug for RetrainConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("RetrainConfig")
            .field("url", &self.url)
            .field("secret", &redact(&self.secret))
            .field("secret_env", &self.secret_env)
            .field("cooldown", &self.cooldown)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("format", &self.format)
            .field("dag_id", &self.dag_id)
            .field("token", &redact(&self.token))
            .field("token_env", &self.token_env)
            .field("trigger", &self.trigger)
            .field("min_quality", &self.min_quality)
            .field("max_error", &self.max_error)
            .finish()
    }
}

impl RetrainConfig {
    /// This config with `defaults` filling the gaps.
    pub fn or(&self, defaults: &RetrainConfig) -> RetrainConfig {
        RetrainConfig {
            url: self.url.clone().or_else(|| defaults.url.clone()),
            secret: self.secret.clone().or_else(|| defaults.secret.clone()),
            secret_env: self
                .secret_env
                .clone()
                .or_else(|| defaults.secret_env.clone()),
            cooldown: self.cooldown.clone().or_else(|| defaults.cooldown.clone()),
            timeout: self.timeout.clone().or_else(|| defaults.timeout.clone()),
            max_attempts: self.max_attempts.or(defaults.max_attempts),
            format: self.format.or(defaults.format),
            dag_id: self.dag_id.clone().or_else(|| defaults.dag_id.clone()),
            token: self.token.clone().or_else(|| defaults.token.clone()),
            token_env: self
                .token_env
                .clone()
                .or_else(|| defaults.token_env.clone()),
            trigger: self.trigger.or(defaults.trigger),
            min_quality: self
                .min_quality
                .clone()
                .or_else(|| defaults.min_quality.clone()),
            max_error: self
                .max_error
                .clone()
                .or_else(|| defaults.max_error.clone()),
        }
    }

    /// The checked thresholds (empty when neither key is written, or when they do not
    /// validate: [`RetrainConfig::validate`] refuses such a config at load).
    pub fn quality_thresholds(&self) -> QualityThresholds {
        if self.validate_quality().is_err() {
            return QualityThresholds::default();
        }
        let pairs = |m: &Option<BTreeMap<String, f64>>| {
            m.iter()
                .flatten()
                .map(|(k, &v)| (k.clone(), v))
                .collect::<Vec<_>>()
        };
        QualityThresholds {
            min: pairs(&self.min_quality),
            max: pairs(&self.max_error),
        }
    }

    fn validate_quality(&self) -> Result<(), String> {
        for (name, &floor) in self.min_quality.iter().flatten() {
            if ERROR_METRICS.contains(&name.as_str()) {
                return Err(format!(
                    "retrain.min_quality.{name}: {name} is an error metric (lower is better); \
                     set it under retrain.max_error"
                ));
            }
            if !is_score_metric(name) {
                let hint = if name == "f1_macro" {
                    " (did you mean macro_f1?)"
                } else {
                    ""
                };
                return Err(format!(
                    "retrain.min_quality.{name}: not a quality metric vigil measures{hint}; \
                     one of accuracy, macro_f1, expected_accuracy, precision_<class>, \
                     recall_<class>, f1_<class>"
                ));
            }
            if !(floor.is_finite() && (0.0..=1.0).contains(&floor)) {
                return Err(format!(
                    "retrain.min_quality.{name} must be between 0 and 1, got {floor}"
                ));
            }
        }
        for (name, &ceiling) in self.max_error.iter().flatten() {
            if !ERROR_METRICS.contains(&name.as_str()) {
                let hint = if is_score_metric(name) {
                    format!(" ({name} is higher-is-better: set it under retrain.min_quality)")
                } else {
                    String::new()
                };
                return Err(format!(
                    "retrain.max_error.{name}: not an error metric vigil measures{hint}; \
                     one of mae, rmse"
                ));
            }
            if !(ceiling.is_finite() && ceiling >= 0.0) {
                return Err(format!(
                    "retrain.max_error.{name} must be a number of at least 0, got {ceiling}"
                ));
            }
        }
        Ok(())
    }

    pub fn trigger(&self) -> RetrainTrigger {
        self.trigger.unwrap_or_default()
    }

    pub fn cooldown(&self) -> std::time::Duration {
        self.cooldown
            .as_deref()
            .and_then(|c| crate::duration::parse(c).ok())
            .unwrap_or(std::time::Duration::from_secs(86_400))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.validate_quality()?;
        for (k, v) in [("cooldown", &self.cooldown), ("timeout", &self.timeout)] {
            if let Some(v) = v {
                crate::duration::parse(v).map_err(|e| format!("retrain.{k}: {e}"))?;
            }
        }
        if let Some(t) = &self.timeout {
            // A zero timeout fails every attempt before it starts (the event retries
            // forever).
            let t = crate::duration::parse(t).map_err(|e| format!("retrain.timeout: {e}"))?;
            if t.is_zero() {
                return Err("retrain.timeout must be above 0".into());
            }
        }
        if let Some(s) = &self.secret {
            key_of(s).map_err(|e| format!("retrain.secret: {e}"))?;
        }
        if self.max_attempts == Some(0) {
            return Err("retrain.max_attempts must be at least 1".into());
        }
        if let Some(u) = &self.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "retrain.url '{u}' must start with http:// or https://"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(min: &[(&str, f64)], max: &[(&str, f64)]) -> RetrainConfig {
        let m = |p: &[(&str, f64)]| {
            (!p.is_empty()).then(|| p.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        };
        RetrainConfig {
            min_quality: m(min),
            max_error: m(max),
            ..Default::default()
        }
    }

    #[test]
    fn quality_thresholds_name_what_vigil_measures_on_the_right_side() {
        for ok in [
            with(&[("accuracy", 0.9), ("macro_f1", 0.5), ("f1_2", 0.1)], &[]),
            with(&[("recall_0", 1.0), ("precision_-1", 0.0)], &[("mae", 0.5)]),
            with(&[("expected_accuracy", 0.85)], &[]),
            with(&[], &[("rmse", 0.0)]),
        ] {
            assert_eq!(ok.validate(), Ok(()), "{ok:?}");
            assert!(!ok.quality_thresholds().is_empty());
        }
        for (bad, says) in [
            (with(&[("accuarcy", 0.9)], &[]), "not a quality metric"),
            (with(&[("f1_macro", 0.9)], &[]), "did you mean macro_f1"),
            (with(&[("mae", 0.9)], &[]), "set it under retrain.max_error"),
            (with(&[("accuracy", 1.5)], &[]), "between 0 and 1"),
            (with(&[("accuracy", f64::NAN)], &[]), "between 0 and 1"),
            (with(&[("expected_accuracy", -0.1)], &[]), "between 0 and 1"),
            (
                with(&[], &[("expected_accuracy", 0.9)]),
                "set it under retrain.min_quality",
            ),
            (
                with(&[], &[("accuracy", 0.1)]),
                "set it under retrain.min_quality",
            ),
            (with(&[], &[("rmse", -1.0)]), "at least 0"),
            (with(&[], &[("rmse", f64::INFINITY)]), "at least 0"),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(bad.quality_thresholds().is_empty());
        }
    }
}

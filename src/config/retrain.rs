//! `[retrain]` of a model's `config.toml` (and the `--retrain-*` defaults): where drift
//! events go, validated at load. Only the schema and its checks live here; turning it into
//! a delivery target (reading secrets from the environment) belongs to `retrain`, which
//! imports this. Part of the ground floor: imports nothing above `duration`.

use base64::Engine;
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
        }
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

//! `[logging]` of a model's `config.toml`: which share of its requests the payload log
//! keeps, and how long predictions wait for their ground truth (feedback) and over how
//! many labelled rows live quality is measured. Where the log goes (`--payload-dir`,
//! rotation, retention) is the server's command line. Part of the ground floor: imports
//! nothing above `duration`.

use serde::Deserialize;

/// `[logging]`: payload logging of this model's requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Share of requests logged, 0 (off, the default) to 1 (every request). Exact per
    /// version: of n requests, floor(n * sample) are logged, spread evenly.
    pub sample: f64,
    /// How long a prediction waits for its label (`POST .../feedback`), seconds or a
    /// duration such as "1h". Not written: no feedback is kept for this model.
    #[serde(deserialize_with = "some_secs")]
    pub feedback_window: Option<f64>,
    /// Predicted rows kept for the join at most (the oldest go first, counted late).
    pub feedback_capacity: usize,
    /// Labelled rows per version in the rolling quality window.
    pub quality_window: usize,
    /// The output whose values are the prediction (default: the model's first output).
    /// Integer outputs are class labels, float outputs with one value per row are
    /// regression values, float outputs with several (probabilities) give the argmax.
    pub prediction: Option<String>,
    /// Where each logged request and response is also POSTed as a CloudEvent (KServe's
    /// inference-logger format, binary mode): `http://...` or `https://...`.
    pub cloudevents_url: Option<String>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            sample: 0.0,
            feedback_window: None,
            feedback_capacity: 1_000_000,
            quality_window: 1000,
            prediction: None,
            cloudevents_url: None,
        }
    }
}

fn some_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    crate::duration::serde_secs::deserialize(d).map(Some)
}

impl LoggingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.sample.is_finite() && (0.0..=1.0).contains(&self.sample)) {
            return Err(format!(
                "logging.sample must be between 0 and 1, got {}",
                self.sample
            ));
        }
        if self.feedback_window.is_some_and(|w| w <= 0.0) {
            return Err("logging.feedback_window must be more than 0".into());
        }
        if !(1..=100_000_000).contains(&self.feedback_capacity) {
            return Err("logging.feedback_capacity must be between 1 and 100000000".into());
        }
        if let Some(u) = &self.cloudevents_url {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.chars().any(char::is_whitespace)) {
                return Err(format!(
                    "logging.cloudevents_url '{u}' must be an http:// or https:// URL"
                ));
            }
        }
        if !(1..=10_000_000).contains(&self.quality_window) {
            return Err("logging.quality_window must be between 1 and 10000000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_outside_zero_to_one_is_refused() {
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let c = LoggingConfig {
                sample: bad,
                ..Default::default()
            };
            assert!(c.validate().is_err(), "{bad}");
        }
        for ok in [0.0, 0.25, 1.0] {
            let c = LoggingConfig {
                sample: ok,
                ..Default::default()
            };
            assert!(c.validate().is_ok(), "{ok}");
        }
    }
}

//! `[logging]` of a model's `config.toml`: which share of its requests the payload log
//! keeps. Where the log goes (`--payload-dir`, rotation, retention) is the server's
//! command line. Part of the ground floor: imports nothing above `duration`.

use serde::Deserialize;

/// `[logging]`: payload logging of this model's requests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Share of requests logged, 0 (off, the default) to 1 (every request). Exact per
    /// version: of n requests, floor(n * sample) are logged, spread evenly.
    pub sample: f64,
}

impl LoggingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.sample.is_finite() && (0.0..=1.0).contains(&self.sample)) {
            return Err(format!(
                "logging.sample must be between 0 and 1, got {}",
                self.sample
            ));
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
            assert!(LoggingConfig { sample: bad }.validate().is_err(), "{bad}");
        }
        for ok in [0.0, 0.25, 1.0] {
            assert!(LoggingConfig { sample: ok }.validate().is_ok(), "{ok}");
        }
    }
}

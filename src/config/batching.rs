//! `[batching]` of a model's `config.toml`: dynamic batching limits, validated at load.
//! Part of the ground floor: imports nothing of vigil.

use serde::Deserialize;

/// `[batching]`: requests for the same version that queue together are concatenated
/// along the batch dimension and run once.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most rows in one execution; `1` turns batching off. Default: off when the model's
    /// first dimension is fixed, else [`BatchingConfig::DEFAULT_MAX_BATCH`].
    pub max_batch_size: Option<usize>,
    /// Longest a request waits for others to join its batch, in microseconds. Waiting
    /// happens only while other requests of the version are in flight: a lone request
    /// runs at once.
    #[serde(default = "default_queue_delay_us")]
    pub max_queue_delay_us: u64,
    /// Requests waiting to be batched before new ones get 503 (default: `--queue-size`).
    pub max_queue_size: Option<usize>,
    /// Batch sizes that are run as soon as they can be formed, without waiting longer.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    /// The model's config.toml has a `[batching]` section: batching was asked for, so
    /// `[execution] mode = "auto"` keeps the version on the pool (where batches form).
    #[serde(skip)]
    pub explicit: bool,
}

fn default_queue_delay_us() -> u64 {
    200
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: None,
            max_queue_delay_us: default_queue_delay_us(),
            max_queue_size: None,
            preferred_batch_sizes: Vec::new(),
            explicit: false,
        }
    }
}

impl BatchingConfig {
    pub const DEFAULT_MAX_BATCH: usize = 32;

    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == Some(0) {
            return Err(
                "[batching] max_batch_size must be at least 1 (1 turns batching off)".into(),
            );
        }
        if self.max_queue_size == Some(0) {
            return Err("[batching] max_queue_size must be at least 1".into());
        }
        if self.max_queue_delay_us > 1_000_000 {
            return Err(format!(
                "[batching] max_queue_delay_us is {} (more than a second)",
                self.max_queue_delay_us
            ));
        }
        let max = self.max_batch_size.unwrap_or(Self::DEFAULT_MAX_BATCH);
        if let Some(p) = self
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > max)
        {
            return Err(format!(
                "[batching] preferred batch size {p} is outside 1..={max} (max_batch_size)"
            ));
        }
        Ok(())
    }
}

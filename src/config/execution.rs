//! `[execution]` of a model's `config.toml`: where a version's compute runs, on the async
//! thread that decoded the request (`inline`) or on the worker pool (`pool`), or decided
//! from the version's measured compute (`auto`). Part of the ground floor: imports nothing
//! of vigil.

use serde::Deserialize;

/// Where a version's compute runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// Inline while the measured compute stays below `inline_max_compute_us` (and no
    /// `[batching]` asks for batches), else the pool.
    #[default]
    Auto,
    /// Always the worker pool (and its batcher).
    Pool,
    /// Always on the async thread: no hop, no queue, no batching.
    Inline,
}

impl ExecutionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionMode::Auto => "auto",
            ExecutionMode::Pool => "pool",
            ExecutionMode::Inline => "inline",
        }
    }
}

/// `[execution]`: the mode and, for `auto`, the compute time below which a request runs
/// without the hop to a worker thread.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    pub mode: ExecutionMode,
    /// `auto` runs a version inline while the 90th percentile of its compute (warm-up
    /// runs, then served requests, in CPU time) stays under this many microseconds (and
    /// the 99th under five times it).
    pub inline_max_compute_us: u64,
}

impl ExecutionConfig {
    pub const DEFAULT_INLINE_MAX_COMPUTE_US: u64 = 10;
    /// Above this, an inline request would hold an async thread (and every connection on
    /// it) for too long: use `mode = "inline"` to insist.
    pub const MAX_INLINE_MAX_COMPUTE_US: u64 = 10_000;

    pub fn validate(&self) -> Result<(), String> {
        if self.inline_max_compute_us > Self::MAX_INLINE_MAX_COMPUTE_US {
            return Err(format!(
                "[execution] inline_max_compute_us is {} (at most {}: longer inline runs stall \
                 every connection on that thread; set mode = \"inline\" to insist)",
                self.inline_max_compute_us,
                Self::MAX_INLINE_MAX_COMPUTE_US
            ));
        }
        Ok(())
    }
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            mode: ExecutionMode::Auto,
            inline_max_compute_us: Self::DEFAULT_INLINE_MAX_COMPUTE_US,
        }
    }
}

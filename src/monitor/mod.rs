//! Drift monitoring: reference profiles, streaming window statistics, scores, detector.

pub mod stats;

//! Canary rollouts: where traffic goes, and the run-time changes that survive a restart.
//!
//! A split sends `weight`% of unpinned requests to the canary. With a sticky key the
//! choice is a hash of the key, so the same key always lands on the same version for a
//! given weight; without one, the n-th unkeyed request goes to the canary exactly when
//! `floor((n+1)·w/100)` grows (a Bresenham line), so any run of N consecutive requests
//! holds `floor` or `ceil` of `N·w/100` canary answers: exact at any request rate, with
//! no RNG and no lock (one atomic increment).
//! Run-time rollout changes are written to `<state-dir>/rollouts.json` (write, fsync,
//! rename) before they take effect, and win over `config.toml`'s `[rollout]`.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::RolloutConfig;

/// A key's bucket in 0..10000 (basis points), stable across processes and restarts.
pub fn bucket_of_key(key: &[u8]) -> u32 {
    // FNV-1a: fixed, portable, good enough spread for routing (not for security).
    let mut h = Fnv(0xcbf29ce484222325);
    h.write(key);
    (h.finish() % 10_000) as u32
}

/// Whether the n-th unkeyed request (counting from 0) goes to a canary of `weight`%.
pub fn is_canary(n: u64, weight: u8) -> bool {
    let w = u128::from(weight.min(100));
    let n = u128::from(n);
    // u128: no overflow for any n; the sequence restarts only after 2^64 requests.
    (n + 1) * w / 100 > n * w / 100
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // Final avalanche so that nearby keys do not share low digits.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        x
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// Run-time rollouts, persisted.
pub struct RolloutStore {
    path: PathBuf,
    rollouts: Mutex<BTreeMap<String, RolloutConfig>>,
}

impl RolloutStore {
    /// Reads `<state_dir>/rollouts.json` if it exists. An unreadable file is logged and
    /// ignored (the config files still describe a safe rollout), never fatal.
    pub fn open(state_dir: &Path) -> RolloutStore {
        let path = state_dir.join("rollouts.json");
        let rollouts = crate::fsutil::read_state(&path, "rollout state");
        RolloutStore {
            path,
            rollouts: Mutex::new(rollouts),
        }
    }

    pub fn get(&self, model: &str) -> Option<RolloutConfig> {
        self.lock().get(model).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RolloutConfig>> {
        self.rollouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a model's rollout durably; on error nothing changes.
    pub fn set(&self, model: &str, rollout: &RolloutConfig) -> std::io::Result<()> {
        let mut map = self.lock();
        let mut next = map.clone();
        next.insert(model.to_string(), rollout.clone());
        crate::fsutil::write_atomic(
            &self.path,
            &serde_json::to_vec_pretty(&next).expect("rollouts serialise"),
        )?;
        *map = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_of_requests_is_exact_within_one() {
        for weight in 0u8..=100 {
            let arm: Vec<u64> = (0..1_000u64)
                .map(|n| u64::from(is_canary(n, weight)))
                .collect();
            // Every window [start, start + len): count within ±1 of len·w/100.
            for len in [1usize, 2, 3, 7, 10, 19, 60, 100, 333] {
                for start in 0..(1_000 - len) {
                    let got = arm[start..start + len].iter().sum::<u64>() as f64;
                    let want = len as f64 * f64::from(weight) / 100.0;
                    assert!(
                        (got - want).abs() < 1.0 + 1e-9,
                        "weight {weight}, run {start}+{len}: {got} vs {want}"
                    );
                }
            }
        }
        // Far along the sequence too (no overflow, same exactness).
        let far = u64::MAX - 10_000;
        let hits = (far..far + 1_000).filter(|&n| is_canary(n, 10)).count();
        assert_eq!(hits, 100);
        assert!(!is_canary(5, 0) && is_canary(5, 100) && is_canary(5, 250));
    }

    #[test]
    fn keys_are_sticky_and_spread() {
        assert_eq!(bucket_of_key(b"user-42"), bucket_of_key(b"user-42"));
        let hits = (0..10_000)
            .filter(|i| bucket_of_key(format!("user-{i}").as_bytes()) < 2_000)
            .count() as f64;
        assert!((hits / 100.0 - 20.0).abs() < 2.0, "{hits}");
    }

    #[test]
    fn store_persists() {
        let dir = std::env::temp_dir().join(format!("vigil-rollouts-{}", std::process::id()));
        let store = RolloutStore::open(&dir);
        assert!(store.get("m").is_none());
        let r = RolloutConfig {
            stable: Some(1),
            canary: Some(2),
            weight: 25,
            ..RolloutConfig::default()
        };
        store.set("m", &r).unwrap();
        assert_eq!(RolloutStore::open(&dir).get("m"), Some(r));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

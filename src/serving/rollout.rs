//! Canary rollouts: where traffic goes, and the run-time changes that survive a restart.
//!
//! A split sends `weight`% of unpinned requests to the canary. With a sticky key the
//! choice is a hash of the key, so the same key always lands on the same version for a
//! given weight; without one, a Weyl sequence spreads requests evenly (no RNG, no lock).
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

/// The n-th unkeyed request's bucket in 0..10000: consecutive requests are spread evenly.
pub fn bucket_of_counter(n: u64) -> u32 {
    let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 32) % 10_000) as u32
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
        let rollouts = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "ignoring unreadable rollout state");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
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
    fn counter_spread_is_even() {
        for weight in [1u32, 10, 33, 50, 90] {
            let hits = (0..10_000u64)
                .filter(|&n| bucket_of_counter(n) < weight * 100)
                .count() as f64;
            assert!(
                (hits / 100.0 - weight as f64).abs() < 1.0,
                "weight {weight}: {hits}"
            );
        }
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

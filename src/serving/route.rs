//! Where a request goes: the pinned version, else the stable one, or the canary by the
//! rollout's split (sticky key hash or an exact even spread) or as a shadow copy.
//! Reads the routing table only; must never import `http` or the reload loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::table::lookup_entry;
use super::{rollout, InferError, ServedVersion, Server};
use crate::config::RolloutMode;

/// Where a request goes.
pub struct Route {
    pub version: Arc<ServedVersion>,
    /// In shadow mode, the canary that gets a copy after the answer.
    pub shadow: Option<Arc<ServedVersion>>,
}

impl Server {
    /// The pinned version, or the stable one: what metadata and config describe.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<Arc<ServedVersion>, InferError> {
        let table = self.table.load();
        let entry = lookup_entry(&table, model)?;
        entry.version(match version {
            Some(v) => v,
            None => entry.stable_version()?,
        })
    }

    /// Finds the version a request goes to: the pinned one; else, when a canary is set,
    /// by the sticky key's hash or an even spread; else the stable version.
    pub fn route(
        &self,
        model: &str,
        version: Option<u64>,
        sticky_key: impl FnOnce(&str) -> Option<Vec<u8>>,
    ) -> Result<Route, InferError> {
        let table = self.table.load();
        let entry = lookup_entry(&table, model)?;
        let only = |v: u64| {
            Ok(Route {
                version: entry.version(v)?,
                shadow: None,
            })
        };
        if let Some(v) = version {
            return only(v);
        }
        let stable = entry.stable_version()?;
        let Some(canary) = entry.canary else {
            return only(stable);
        };
        match entry.rollout.mode {
            RolloutMode::Shadow => Ok(Route {
                version: entry.version(stable)?,
                shadow: Some(entry.version(canary)?),
            }),
            RolloutMode::Split => {
                let weight = entry.rollout.weight;
                let to_canary = match sticky_key(&entry.rollout.sticky_header) {
                    Some(key) => rollout::bucket_of_key(&key) < u32::from(weight) * 100,
                    None => rollout::is_canary(
                        entry.split_counter.fetch_add(1, Ordering::Relaxed),
                        weight,
                    ),
                };
                only(if to_canary { canary } else { stable })
            }
        }
    }
}

//! Where a request goes: the pinned version, else the stable one, or the canary by the
//! rollout's split (sticky key hash or an exact even spread) or as a shadow copy.
//! Reads the routing table only; must never import `http` or the reload loop.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// A route whose even split is not yet decided: the request's body is checked first, so
/// that a request refused as malformed takes no slot of the split (the canary's share of
/// the requests it served stays exact).
pub enum PendingRoute {
    Decided(Route),
    Split {
        stable: Arc<ServedVersion>,
        /// The canary, or why it cannot serve (answered to the requests it gets).
        canary: Result<Arc<ServedVersion>, InferError>,
        counter: Arc<AtomicU64>,
        weight: u8,
    },
}

impl PendingRoute {
    /// The version the request goes to, or, while the split is open, the stable one.
    pub fn primary(&self) -> &Arc<ServedVersion> {
        match self {
            PendingRoute::Decided(r) => &r.version,
            PendingRoute::Split { stable, .. } => stable,
        }
    }

    /// The other version an open split may send the request to (a servable canary).
    pub fn alternative(&self) -> Option<&Arc<ServedVersion>> {
        match self {
            PendingRoute::Decided(_) => None,
            PendingRoute::Split { canary, .. } => canary.as_ref().ok(),
        }
    }

    /// Takes the next slot of the split (if it is still open) and returns the route.
    pub fn decide(self) -> Result<Route, InferError> {
        match self {
            PendingRoute::Decided(r) => Ok(r),
            PendingRoute::Split {
                stable,
                canary,
                counter,
                weight,
            } => {
                let to_canary = rollout::is_canary(counter.fetch_add(1, Ordering::Relaxed), weight);
                Ok(Route {
                    version: if to_canary { canary? } else { stable },
                    shadow: None,
                })
            }
        }
    }
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
        self.plan_route(model, version, sticky_key)?.decide()
    }

    /// As [`Server::route`], but an unkeyed request of an even split is left pending
    /// ([`PendingRoute::decide`] takes its slot).
    pub fn plan_route(
        &self,
        model: &str,
        version: Option<u64>,
        sticky_key: impl FnOnce(&str) -> Option<Vec<u8>>,
    ) -> Result<PendingRoute, InferError> {
        let table = self.table.load();
        let entry = lookup_entry(&table, model)?;
        let only = |v: u64| {
            Ok(PendingRoute::Decided(Route {
                version: entry.version(v)?,
                shadow: None,
            }))
        };
        if let Some(v) = version {
            return only(v);
        }
        let stable = entry.stable_version()?;
        let Some(canary) = entry.canary else {
            return only(stable);
        };
        match entry.rollout.mode {
            RolloutMode::Shadow => Ok(PendingRoute::Decided(Route {
                version: entry.version(stable)?,
                shadow: Some(entry.version(canary)?),
            })),
            RolloutMode::Split => {
                let weight = entry.rollout.weight;
                match sticky_key(&entry.rollout.sticky_header) {
                    Some(key) => only(if rollout::bucket_of_key(&key) < u32::from(weight) * 100 {
                        canary
                    } else {
                        stable
                    }),
                    None => Ok(PendingRoute::Split {
                        stable: entry.version(stable)?,
                        canary: entry.version(canary),
                        counter: entry.split_counter.clone(),
                        weight,
                    }),
                }
            }
        }
    }
}

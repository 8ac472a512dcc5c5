//! Where a request goes: the pinned version, else the stable one, or the canary by the
//! rollout's split (sticky key hash or an exact even spread) or as a shadow copy.
//! Reads the routing table only; must never import `http` or the reload loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::analysis::{Arm, Judged, Probe};
use super::table::lookup_entry;
use super::{rollout, InferError, ServedVersion, Server};
use crate::config::RolloutMode;
use crate::metrics::Role;
use crate::payload::Role as PayloadRole;

/// Where a request goes.
pub struct Route {
    pub version: Arc<ServedVersion>,
    /// In shadow mode, the canary that gets a copy after the answer.
    pub shadow: Option<Arc<ServedVersion>>,
    /// While a canary analysis measures a step: where the answer is recorded.
    pub judged: Option<Judged>,
    /// The model's `[logging] sample`: the share of requests the payload log keeps.
    pub sample: f64,
    /// The role of `version` for this request, as the payload log records it.
    pub role: PayloadRole,
    /// Where its predictions wait for feedback, when the model keeps them.
    pub feedback: Option<Arc<crate::payload::Feedback>>,
}

impl Route {
    /// Whether the request needs an id (it is logged or kept for feedback).
    pub fn wants_id(&self) -> bool {
        self.sample > 0.0 || self.feedback.is_some()
    }
}

/// The model's probe and the arm, when an analysis is measuring.
fn judged(probe: &Arc<Probe>, arm: Arm) -> Option<Judged> {
    probe.is_active().then(|| Judged {
        probe: probe.clone(),
        arm,
    })
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
        /// The model's probe while an analysis measures.
        probe: Option<Arc<Probe>>,
        sample: f64,
        feedback: Option<Arc<crate::payload::Feedback>>,
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
                probe,
                sample,
                feedback,
            } => {
                let to_canary = rollout::is_canary(counter.fetch_add(1, Ordering::Relaxed), weight);
                let arm = if to_canary { Arm::Canary } else { Arm::Stable };
                let judged = probe.map(|probe| Judged { probe, arm });
                let version = match (to_canary, canary) {
                    (false, _) => stable,
                    (true, Ok(c)) => c,
                    (true, Err(e)) => {
                        if let Some(j) = &judged {
                            j.record_failure();
                        }
                        return Err(e);
                    }
                };
                Ok(Route {
                    version,
                    shadow: None,
                    judged,
                    sample,
                    feedback,
                    role: if to_canary {
                        PayloadRole::Canary
                    } else {
                        PayloadRole::Stable
                    },
                })
            }
        }
    }
}

/// What [`PendingRoute::settle`] gives a front: the version the request is counted on,
/// and the route with the front's accepted request, or why not.
pub type Settled<A, E> = (Arc<ServedVersion>, Result<(Route, A), Refused<E>>);

/// Why [`PendingRoute::settle`] did not give a request a route to run on.
pub enum Refused<E> {
    /// The front's check refused the request for the version it goes to.
    Request(E),
    /// The split sent it to a canary that cannot serve.
    Serving(InferError),
}

impl PendingRoute {
    /// The one way both fronts route a request: checks it with `accept` against the
    /// version it goes to, decides an open split only for a request some candidate
    /// accepts (a malformed request takes no slot of the canary's share, so the share of
    /// requests served stays exact), and checks again when the split chose a version
    /// with another signature. A request the chosen version refuses is that version's
    /// failure in a running analysis. Returns the version the request is counted on.
    pub fn settle<A, E>(self, accept: impl Fn(&ServedVersion) -> Result<A, E>) -> Settled<A, E> {
        let primary = self.primary().clone();
        let accepted = match accept(&primary) {
            Err(e)
                if !self
                    .alternative()
                    .is_some_and(|c| c.signature != primary.signature && accept(c).is_ok()) =>
            {
                return (primary, Err(Refused::Request(e)));
            }
            other => other,
        };
        let route = match self.decide() {
            Ok(r) => r,
            Err(e) => return (primary, Err(Refused::Serving(e))),
        };
        let served = route.version.clone();
        let accepted = if served.signature == primary.signature {
            accepted
        } else {
            drop(accepted);
            accept(&served)
        };
        match accepted {
            Ok(a) => (served, Ok((route, a))),
            Err(e) => {
                // Routed to a version that cannot take it: that version's failure.
                if let Some(j) = &route.judged {
                    j.record_failure();
                }
                (served, Err(Refused::Request(e)))
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
        let sample = entry.config.logging.sample;
        let feedback = entry.feedback.enabled().then(|| entry.feedback.clone());
        let role = |v: u64| match entry.role(v) {
            Role::Stable => PayloadRole::Stable,
            Role::Canary => PayloadRole::Canary,
            Role::Standby => PayloadRole::Standby,
        };
        let only = |v: u64| {
            Ok(PendingRoute::Decided(Route {
                version: entry.version(v)?,
                shadow: None,
                judged: None,
                sample,
                role: role(v),
                feedback: feedback.clone(),
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
                judged: judged(&entry.probe, Arm::Stable),
                sample,
                role: PayloadRole::Stable,
                feedback,
            })),
            RolloutMode::Split => {
                let weight = entry.rollout.weight;
                match sticky_key(&entry.rollout.sticky_header) {
                    Some(key) => {
                        let (v, arm, r) = if rollout::bucket_of_key(&key) < u32::from(weight) * 100
                        {
                            (canary, Arm::Canary, PayloadRole::Canary)
                        } else {
                            (stable, Arm::Stable, PayloadRole::Stable)
                        };
                        Ok(PendingRoute::Decided(Route {
                            version: entry.version(v)?,
                            shadow: None,
                            judged: judged(&entry.probe, arm),
                            sample,
                            role: r,
                            feedback,
                        }))
                    }
                    None => Ok(PendingRoute::Split {
                        stable: entry.version(stable)?,
                        canary: entry.version(canary),
                        counter: entry.split_counter.clone(),
                        weight,
                        probe: entry.probe.is_active().then(|| entry.probe.clone()),
                        sample,
                        feedback,
                    }),
                }
            }
        }
    }
}

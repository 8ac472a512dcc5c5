//! `--mlflow-write-aliases`: the canary judge's decisions written back to the registry.
//! A promotion points the stable alias at the canary's version and deletes the canary
//! alias; a rollback deletes the canary alias. Then the model is synced at once, so the
//! roles served are the registry's again. The judge keeps the decision pending (durable)
//! and asks on each pass; the write runs on the runtime, never on the judge's thread. A
//! failed write is tried again no sooner than [`RETRY`] later, so a registry that is down
//! is not hammered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Mlflow, MlflowError, SOURCE};
use crate::serving::{RoleChange, RoleWriter};

/// The least time between two attempts at one model's write.
pub const RETRY: Duration = Duration::from_secs(5);
/// How long one write may take.
const TIMEOUT: Duration = Duration::from_secs(20);

pub struct AliasWriter {
    source: Arc<Mlflow>,
    runtime: tokio::runtime::Handle,
    /// Each model's write: in flight, written (until the judge asks again), or failed.
    writes: Arc<Mutex<HashMap<String, Write>>>,
}

/// Where one model's write stands.
#[derive(Clone, Copy, Debug)]
enum Write {
    InFlight,
    Done(RoleChange),
    Failed(RoleChange, Instant),
}

impl AliasWriter {
    /// Must be made inside the runtime the source runs on.
    pub fn new(source: Arc<Mlflow>) -> AliasWriter {
        AliasWriter {
            source,
            runtime: tokio::runtime::Handle::current(),
            writes: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl RoleWriter for AliasWriter {
    /// Never waits on the registry: the first call starts the write on the runtime, later
    /// calls see how it went. The judge holds its state while it calls, and request
    /// handlers read that state, so a registry that hangs must not hold the judge.
    fn write(&self, model: &str, change: RoleChange) -> bool {
        let mut writes = lock(&self.writes);
        match writes.get(model) {
            Some(Write::Done(c)) if *c == change => {
                writes.remove(model);
                return true;
            }
            Some(Write::InFlight) => return false,
            Some(Write::Failed(c, at)) if *c == change && at.elapsed() < RETRY => return false,
            _ => {}
        }
        writes.insert(model.to_string(), Write::InFlight);
        drop(writes);
        let (source, writes) = (self.source.clone(), self.writes.clone());
        let name = model.to_string();
        self.runtime.spawn(async move {
            let result = tokio::time::timeout(TIMEOUT, source.write_roles(&name, change))
                .await
                .unwrap_or_else(|_| {
                    Err(MlflowError::Unreachable {
                        uri: source.opts.uri.clone(),
                        reason: format!("no answer within {}s", TIMEOUT.as_secs()),
                    })
                });
            let state = match result {
                Ok(()) => {
                    tracing::info!(
                        model = name,
                        ?change,
                        "the canary decision was written to the MLflow aliases"
                    );
                    Write::Done(change)
                }
                Err(e) => {
                    source
                        .server
                        .metrics
                        .registry_errors
                        .with_label_values(&[SOURCE])
                        .inc();
                    tracing::error!(model = name, ?change, error = %e, "cannot write the canary decision to the MLflow aliases; retrying");
                    Write::Failed(change, Instant::now())
                }
            };
            lock(&writes).insert(name, state);
        });
        false
    }
}

impl Mlflow {
    /// Moves the aliases for `change`, then syncs the model.
    async fn write_roles(
        self: &Arc<Self>,
        name: &str,
        change: RoleChange,
    ) -> Result<(), MlflowError> {
        let (stable, canary) = (&self.opts.stable_alias, &self.opts.canary_alias);
        let version = match change {
            RoleChange::Promote(v) => {
                let body =
                    serde_json::json!({"name": name, "alias": stable, "version": v.to_string()});
                self.call(
                    reqwest::Method::POST,
                    "mlflow/registered-models/alias",
                    &[],
                    Some(&body),
                )
                .await?;
                v
            }
            RoleChange::Rollback(v) => v,
        };
        // The canary alias goes, unless someone moved it to another version meanwhile.
        let m = self
            .get_json("mlflow/registered-models/get", &[("name", name)])
            .await?;
        let aliases = super::client::parse_aliases(&m["registered_model"]["aliases"]);
        if aliases.get(canary) == Some(&version) {
            // MLflow reads a DELETE's message from its JSON body (query arguments are
            // ignored, and the call still answers 200).
            let body = serde_json::json!({"name": name, "alias": canary});
            self.call(
                reqwest::Method::DELETE,
                "mlflow/registered-models/alias",
                &[],
                Some(&body),
            )
            .await?;
        }
        if let Some((claim, _)) = self.claim(name, false) {
            self.clone().sync_claimed(claim, super::Mode::Full).await;
        }
        Ok(())
    }
}

//! `--mlflow-write-aliases`: the canary judge's decisions written back to the registry.
//! A promotion points the stable alias at the canary's version and deletes the canary
//! alias; a rollback deletes the canary alias. Then the model is synced at once, so the
//! roles served are the registry's again. The judge calls from its own thread and keeps
//! the decision pending (durable) until a write succeeds; a failed write is tried again
//! no sooner than [`RETRY`] later, so a registry that is down is not hammered.

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
    /// When each model's last failed write was tried.
    failed: Mutex<HashMap<String, Instant>>,
}

impl AliasWriter {
    /// Must be made inside the runtime the source runs on.
    pub fn new(source: Arc<Mlflow>) -> AliasWriter {
        AliasWriter {
            source,
            runtime: tokio::runtime::Handle::current(),
            failed: Mutex::new(HashMap::new()),
        }
    }
}

impl RoleWriter for AliasWriter {
    fn write(&self, model: &str, change: RoleChange) -> bool {
        if let Some(at) = lock(&self.failed).get(model) {
            if at.elapsed() < RETRY {
                return false;
            }
        }
        let source = self.source.clone();
        let name = model.to_string();
        let result = self.runtime.block_on(async move {
            tokio::time::timeout(TIMEOUT, source.write_roles(&name, change))
                .await
                .unwrap_or_else(|_| {
                    Err(MlflowError::Unreachable {
                        uri: source.opts.uri.clone(),
                        reason: format!("no answer within {}s", TIMEOUT.as_secs()),
                    })
                })
        });
        match result {
            Ok(()) => {
                lock(&self.failed).remove(model);
                tracing::info!(
                    model,
                    ?change,
                    "the canary decision was written to the MLflow aliases"
                );
                true
            }
            Err(e) => {
                lock(&self.failed).insert(model.to_string(), Instant::now());
                self.source
                    .server
                    .metrics
                    .registry_errors
                    .with_label_values(&[SOURCE])
                    .inc();
                tracing::error!(model, ?change, error = %e, "cannot write the canary decision to the MLflow aliases; retrying");
                false
            }
        }
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

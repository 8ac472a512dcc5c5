//! One sync of one model: read its aliases, make the versions the stable and canary
//! aliases name cached, and hand the roles to serving (saved, then one reload). Between
//! retries of a failing model, only a move of its aliases goes further. When syncs run
//! is the scheduler's business (`mod.rs`); never imports http.

use super::client::parse_aliases;
use super::download::Fetched;
use super::{lock, Mlflow, MlflowError, Mode, Roles, Synced};
use crate::serving::Assignment;

impl Mlflow {
    /// One sync of one model. Returns the aliases read (if they were) with the outcome.
    pub(super) async fn sync_model(
        &self,
        name: &str,
        mode: Mode,
    ) -> (Option<Roles>, Result<Synced, MlflowError>) {
        if !valid_model_name(name) {
            let e = MlflowError::Model(format!(
                "'{name}' cannot be a directory name in the model repository"
            ));
            return (
                None,
                if mode == Mode::Full {
                    Err(e)
                } else {
                    Ok(Synced::Unchanged)
                },
            );
        }
        let m = match self
            .get_json("mlflow/registered-models/get", &[("name", name)])
            .await
        {
            Ok(m) => m,
            // Between retries, the same refusal is not a new failure.
            Err(e) if mode != Mode::Full && !e.is_registry_down() => {
                return (None, Ok(Synced::Unchanged))
            }
            Err(e) => return (None, Err(e)),
        };
        let aliases = parse_aliases(&m["registered_model"]["aliases"]);
        let roles = (
            aliases.get(&self.opts.stable_alias).copied(),
            aliases.get(&self.opts.canary_alias).copied(),
        );
        if mode == Mode::IfMoved(Some(roles)) {
            return (Some(roles), Ok(Synced::Unchanged));
        }
        let result = self.follow_roles(name, roles).await.map(|()| Synced::Done);
        (Some(roles), result)
    }

    /// Makes the aliased versions cached and serving in their roles.
    async fn follow_roles(
        &self,
        name: &str,
        (champion, challenger): Roles,
    ) -> Result<(), MlflowError> {
        let previous = lock(&self.assignments)
            .get(name)
            .copied()
            .unwrap_or_default();
        let mut problem = None;
        // A version downloaded again (its cache was damaged) is reloaded even if its
        // role did not change.
        let mut fresh = false;
        // The stable version: the alias's, once cached; until then (or if the alias is
        // gone) the one served before.
        let stable = match champion {
            Some(v) => match self.ensure_cached(name, v).await {
                Ok(f) => {
                    fresh |= f == Fetched::Downloaded;
                    Some(v)
                }
                Err(e) => {
                    problem = Some(e);
                    previous.stable
                }
            },
            None => {
                if previous.stable.is_some() {
                    problem = Some(MlflowError::Model(format!(
                        "'{name}' has no '{}' alias; keeping version {} as stable",
                        self.opts.stable_alias,
                        previous.stable.unwrap_or_default()
                    )));
                }
                previous.stable
            }
        };
        let canary = match challenger.filter(|&c| Some(c) != stable) {
            Some(v) => match self.ensure_cached(name, v).await {
                Ok(f) => {
                    fresh |= f == Fetched::Downloaded;
                    Some(v)
                }
                Err(e) => {
                    problem.get_or_insert(e);
                    None
                }
            },
            None => None,
        };
        let next = Assignment { stable, canary };
        if stable.is_some() && (fresh || self.server.assignment(name) != Some(next)) {
            if previous != next {
                tracing::info!(
                    model = name,
                    stable = ?next.stable,
                    canary = ?next.canary,
                    was_stable = ?previous.stable,
                    was_canary = ?previous.canary,
                    "model registry: roles changed"
                );
            }
            crate::registry::apply(
                &self.server,
                &self.reloader,
                &self.store,
                &self.assignments,
                name,
                next,
            )
            .await
            .map_err(MlflowError::Model)?;
        }
        match problem {
            Some(e) => Err(e),
            None if stable.is_none() => Err(MlflowError::Model(format!(
                "'{name}' has no '{}' alias in MLflow: nothing to serve",
                self.opts.stable_alias
            ))),
            None => Ok(()),
        }
    }
}

/// A registered model name usable as a repository directory.
pub(super) fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

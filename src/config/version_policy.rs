//! `[version_policy]` of a model's `config.toml`: which versions on disk are served.
//! Part of the ground floor: imports nothing of vigil.

use serde::Deserialize;

/// `[version_policy]`: one of `latest = N`, `specific = [..]`, `all = true`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionPolicyConfig {
    pub latest: Option<usize>,
    pub specific: Option<Vec<u64>>,
    pub all: Option<bool>,
}

/// The versions a model serves, out of those on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest(usize),
    /// Exactly these versions (those that exist).
    Specific(Vec<u64>),
    All,
}

impl VersionPolicyConfig {
    pub fn policy(&self) -> Result<VersionPolicy, String> {
        match (self.latest, &self.specific, self.all) {
            (None, None, None | Some(false)) => Ok(VersionPolicy::Latest(1)),
            (Some(0), None, None) => Err("version_policy.latest must be at least 1".into()),
            (Some(n), None, None) => Ok(VersionPolicy::Latest(n)),
            (None, Some(v), None) if v.is_empty() || v.contains(&0) => {
                Err("version_policy.specific must list positive version numbers".into())
            }
            (None, Some(v), None) => Ok(VersionPolicy::Specific(v.clone())),
            (None, None, Some(true)) => Ok(VersionPolicy::All),
            _ => Err("version_policy takes one of latest, specific or all".into()),
        }
    }
}

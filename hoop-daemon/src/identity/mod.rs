//! Who a job is: an identity verified from an OIDC token (`hoop run
//! --token-file`, or the explicit proxy's credentials), or a static
//! identity the config gives to trusted host-local cgroups.
pub mod oidc;

use serde::{Deserialize, Serialize};

pub use oidc::{Issuers, TokenError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// What policy matches on, e.g. `ci:repo:acme/scraper:ref:refs/heads/main`.
    pub name: String,
    #[serde(flatten)]
    pub source: Source,
    /// The token's other claims (strings and numbers), for approvers to see
    /// who and what started the job, and to know its actor. Not recorded
    /// with every request: the job's start names them once.
    /// Shared: every connection's record clones its identity.
    #[serde(skip)]
    pub claims: std::sync::Arc<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    /// Verified from a token of this issuer.
    Oidc {
        issuer: String,
        subject: String,
        /// The token's `exp` (unix seconds).
        expires: i64,
    },
    /// Given by `[[identity.static]]` to this cgroup.
    Static { cgroup: String },
}

impl Identity {
    pub fn local(name: &str, cgroup: &str) -> Self {
        Self {
            name: name.to_string(),
            source: Source::Static {
                cgroup: cgroup.to_string(),
            },
            claims: Default::default(),
        }
    }
}

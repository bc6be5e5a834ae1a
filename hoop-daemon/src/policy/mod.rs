//! The compiled policy: static identities, connections (who may reach
//! which hosts) and their credentials. Built from a `Config` in one go, so
//! a reload either yields a whole new policy or an error and no change.
pub mod approvers;
pub mod canary;
pub mod credential;
pub mod enforce;
pub mod fields;
mod host;
pub mod mask;
pub mod observe;
pub mod phases;
pub mod readings;
pub mod rules;

use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

pub use host::HostPattern;

use crate::{
    config::{Config, ConfigError},
    identity::{Identity, Issuers},
    tls::UpstreamTls,
};
use credential::{Credential, CredentialError};

pub struct Connection {
    pub name: String,
    hosts: Vec<HostPattern>,
    allow: GlobSet,
    pub credential: Option<Credential>,
    /// Its upstream trust and rules: shared with observe mode's stand-in
    /// for an identity the connection does not allow.
    pub guard: Arc<Guardrails>,
    /// Bytes of each body the audit log keeps (0: none).
    pub record_body: usize,
    /// Observe mode's stand-in for a connection that does not exist: why
    /// the request would have been refused.
    pub observed: Option<String>,
}

/// What a connection enforces whoever goes through it.
#[derive(Default)]
pub struct Guardrails {
    /// Trust for the upstreams, when the connection names extra CAs.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    /// Guardrails, in config order.
    pub deny: Vec<rules::Rule>,
    pub mask: Option<mask::Masker>,
    /// Approval rules: the matcher and the rule.
    pub approve: Vec<(rules::Rule, Arc<approvers::ApprovalRule>)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// What observe mode forwards a request with no connection through:
    /// never a credential, no bodies kept (its method, URL and headers are
    /// what `hoop policy suggest` needs). A host nobody configured gets no
    /// rule; a host a connection covers for other identities keeps that
    /// connection's upstream trust, guardrails, masking and approvals
    /// (`covering`, the first in config order). The upstream is still
    /// verified and still inside `egress.allow`.
    pub fn observing(why: &NoRoute, covering: Option<&Connection>) -> Self {
        Self {
            name: OBSERVED.into(),
            hosts: Vec::new(),
            allow: GlobSet::empty(),
            credential: None,
            guard: covering.map_or_else(Default::default, |c| c.guard.clone()),
            record_body: 0,
            observed: Some(format!("no-connection: {why}")),
        }
    }

    pub fn covers(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|h| h.matches(host, port))
    }

    pub fn allows(&self, identity: &str) -> bool {
        self.allow.is_match(identity)
    }
}

/// Why a request has no connection to go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoute {
    pub host: String,
    pub identity: String,
    /// Connections that cover the host but not this identity.
    pub covered_by: Vec<String>,
}

impl std::fmt::Display for NoRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.covered_by.is_empty() {
            write!(
                f,
                "no connection allows {} for identity {}",
                self.host, self.identity
            )
        } else {
            write!(
                f,
                "no connection allows {} for identity {} (connection {} covers the host but not this identity)",
                self.host,
                self.identity,
                self.covered_by.join(", ")
            )
        }
    }
}

/// The name observe mode's stand-in connection goes by.
pub const OBSERVED: &str = "(observed)";

pub struct Policy {
    pub connections: Vec<Arc<Connection>>,
    /// Observe mode: whose requests no connection covers are forwarded
    /// and recorded instead of refused.
    pub observe: observe::Observe,
    statics: Vec<(GlobMatcher, String)>,
    /// OIDC issuers (with their cached keys).
    pub issuers: Issuers,
}

impl Policy {
    /// Compiles the policy sections of `cfg`, reading every secret. Errors
    /// are located in the config file. Issuers unchanged since `previous`
    /// keep their cached keys.
    pub fn compile(cfg: &Config, previous: Option<&Policy>) -> Result<Self, ConfigError> {
        let issuers = Issuers::new(
            &cfg.identity.oidc,
            &cfg.tls.upstream_ca_files,
            previous.map(|p| &p.issuers),
        )
        .map_err(|e| cfg.invalid("identity.oidc", e))?;
        let mut statics = Vec::new();
        for (i, s) in cfg.identity.statics.iter().enumerate() {
            let g = GlobBuilder::new(&s.cgroup)
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    cfg.invalid(
                        &format!("identity.static[{i}].cgroup"),
                        format!("is not a valid glob: {e}"),
                    )
                })?;
            statics.push((g.compile_matcher(), s.name.clone()));
        }
        let mut connections = Vec::new();
        for (i, c) in cfg.connections.iter().enumerate() {
            let hosts = c
                .hosts
                .iter()
                .enumerate()
                .map(|(j, h)| {
                    HostPattern::parse(h)
                        .map_err(|e| cfg.invalid(&format!("connection[{i}].hosts[{j}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut allow = GlobSetBuilder::new();
            for (j, a) in c.allow.iter().enumerate() {
                let g = GlobBuilder::new(a)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| {
                        cfg.invalid(
                            &format!("connection[{i}].allow[{j}]"),
                            format!("is not a valid glob: {e}"),
                        )
                    })?;
                allow.add(g);
            }
            let allow = allow
                .build()
                .map_err(|e| cfg.invalid(&format!("connection[{i}].allow"), e.to_string()))?;
            let credential = c
                .credential
                .as_ref()
                .map(|cc| {
                    Credential::new(cc).map_err(|e| {
                        let key = match e {
                            CredentialError::Secret(_) => {
                                format!("connection[{i}].credential.secret")
                            }
                            _ => format!("connection[{i}].credential"),
                        };
                        cfg.invalid(&key, e.to_string())
                    })
                })
                .transpose()?;
            let upstream_tls = if c.upstream_ca_files.is_empty() {
                None
            } else {
                let mut files = cfg.tls.upstream_ca_files.clone();
                files.extend(c.upstream_ca_files.iter().cloned());
                Some(Arc::new(UpstreamTls::new(&files).map_err(|e| {
                    cfg.invalid(
                        &format!("connection[{i}].upstream_ca_files"),
                        format!("{e:#}"),
                    )
                })?))
            };
            let deny = c
                .deny
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    rules::Rule::compile(r).map_err(|p| {
                        cfg.invalid(&format!("connection[{i}].deny[{j}].{}", p.key), p.problem)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mask = c
                .mask
                .as_ref()
                .map(|m| {
                    mask::Masker::compile(m).map_err(|p| {
                        cfg.invalid(&format!("connection[{i}].mask.{}", p.key), p.problem)
                    })
                })
                .transpose()?;
            let mut approve = Vec::new();
            for (j, a) in c.approve.iter().enumerate() {
                let key = |k: &str| format!("connection[{i}].approve[{j}].{k}");
                let matcher = rules::Rule::compile(&a.matcher())
                    .map_err(|p| cfg.invalid(&key(&p.key), p.problem))?;
                if a.approvers.is_empty() {
                    return Err(cfg.invalid(
                        &key("approvers"),
                        "must name who may approve: uid:N, user:NAME or group:NAME",
                    ));
                }
                let approvers = a
                    .approvers
                    .iter()
                    .enumerate()
                    .map(|(n, x)| {
                        approvers::Approver::parse(x)
                            .map_err(|e| cfg.invalid(&key(&format!("approvers[{n}]")), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let timeout = a
                    .timeout
                    .map_or(std::time::Duration::from_secs(600), Into::into);
                approve.push((
                    matcher,
                    Arc::new(approvers::ApprovalRule {
                        name: a.name.clone(),
                        approvers,
                        timeout,
                        message: a.message.clone(),
                    }),
                ));
            }
            connections.push(Arc::new(Connection {
                name: c.name.clone(),
                hosts,
                allow,
                credential,
                guard: Arc::new(Guardrails {
                    upstream_tls,
                    deny,
                    mask,
                    approve,
                }),
                record_body: c.record.cap(),
                observed: None,
            }));
        }
        Ok(Self {
            observe: observe::Observe::compile(cfg)?,
            connections,
            statics,
            issuers,
        })
    }

    /// The connection `identity` may use to reach `host:port`: the first
    /// in config order that covers the host and allows the identity.
    /// Default deny.
    pub fn route(
        &self,
        identity: &Identity,
        host: &str,
        port: u16,
    ) -> Result<Arc<Connection>, NoRoute> {
        let mut covered_by = Vec::new();
        for c in &self.connections {
            if c.covers(host, port) {
                if c.allows(&identity.name) {
                    return Ok(c.clone());
                }
                covered_by.push(c.name.clone());
            }
        }
        Err(NoRoute {
            host: format!("{host}:{port}"),
            identity: identity.name.clone(),
            covered_by,
        })
    }

    /// Observe mode's stand-in for a request `route` refused with `why`:
    /// with the guardrails of the first connection that covers the host
    /// for others, if one does ([`Connection::observing`]).
    pub fn observing(&self, why: &NoRoute) -> Connection {
        let covering = why
            .covered_by
            .first()
            .and_then(|n| self.connections.iter().find(|c| &c.name == n));
        Connection::observing(why, covering.map(|c| &**c))
    }

    /// The static identity of a cgroup (path relative to the cgroup2
    /// mount), if a `[[identity.static]]` glob matches it.
    pub fn static_identity(&self, cgroup: &str) -> Option<Identity> {
        self.statics
            .iter()
            .find(|(g, _)| g.is_match(cgroup))
            .map(|(_, name)| Identity::local(name, cgroup))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        let cfg = Config::parse(text, Path::new("/etc/hoop/p.toml"))?;
        Policy::compile(&cfg, None)
    }

    fn id(name: &str) -> Identity {
        Identity::local(name, "test")
    }

    /// The config `cargo xtask install` puts in /etc/hoop compiles.
    #[test]
    fn the_installed_starter_config_compiles() {
        policy(include_str!("../../../systemd/hoop.toml")).unwrap();
    }

    const TWO: &str = r#"
[[connection]]
name = "partner"
hosts = ["api.partner.example", "*.partner.example:8443"]
allow = ["ci:repo:acme/*"]

[[connection]]
name = "open"
hosts = ["*.open.example"]
allow = ["*"]
"#;

    #[test]
    fn routes_by_host_and_identity_and_denies_by_default() {
        let p = policy(TWO).unwrap();
        let ci = id("ci:repo:acme/scraper:ref:refs/heads/main");
        assert_eq!(
            p.route(&ci, "api.partner.example", 443).unwrap().name,
            "partner"
        );
        assert_eq!(
            p.route(&ci, "x.partner.example", 8443).unwrap().name,
            "partner"
        );
        assert!(p.route(&ci, "x.partner.example", 443).is_err());
        let other = id("ci:repo:evil/x");
        let e = p.route(&other, "api.partner.example", 443).unwrap_err();
        assert_eq!(e.covered_by, ["partner"]);
        assert!(
            e.to_string().contains("api.partner.example:443")
                && e.to_string().contains("ci:repo:evil/x"),
            "{e}"
        );
        assert_eq!(p.route(&other, "a.open.example", 443).unwrap().name, "open");
        assert!(
            p.route(&ci, "elsewhere.example", 443)
                .unwrap_err()
                .covered_by
                .is_empty()
        );
        assert!(
            policy("")
                .unwrap()
                .route(&ci, "api.partner.example", 443)
                .is_err()
        );
    }

    #[test]
    fn static_identities_match_cgroup_globs_level_by_level() {
        let p = policy(
            "[[identity.static]]\ncgroup = \"hoop.slice/scraper-*.service\"\nname = \"local:scraper\"\n\
             [[identity.static]]\ncgroup = \"hoop.slice/**\"\nname = \"local:any\"\n",
        )
        .unwrap();
        assert_eq!(
            p.static_identity("hoop.slice/scraper-1.service")
                .unwrap()
                .name,
            "local:scraper"
        );
        assert_eq!(
            p.static_identity("hoop.slice/scraper-1.service/sub")
                .unwrap()
                .name,
            "local:any"
        );
        assert!(p.static_identity("other.slice/x").is_none());
    }

    #[test]
    fn bad_policy_is_located() {
        let e = policy("[[connection]]\nname = \"a\"\nhosts = [\"ok.example\", \"bad*.example\"]\nallow = [\"*\"]\n")
            .err().unwrap().to_string();
        assert!(
            e.contains("p.toml:3:") && e.contains("connection[0].hosts[1]"),
            "{e}"
        );
        let e = policy("[[connection]]\nname = \"a\"\nhosts = [\"a.example\"]\nallow = [\"x[\"]\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("connection[0].allow[0]") && e.contains("p.toml:4:"),
            "{e}"
        );
        let e = policy("[[connection]]\nname = \"a\"\nhosts = [\"a.example\"]\nallow = [\"*\"]\ncredential = { secret = { file = \"/nonexistent/hoop-secret\" } }\n")
            .err().unwrap().to_string();
        assert!(
            e.contains("connection[0].credential.secret") && e.contains("/nonexistent/hoop-secret"),
            "{e}"
        );
        let e = policy("[[identity.oidc]]\nname = \"ci\"\nissuer = \"https://i.example\"\naudience = \"hoop\"\nalgorithms = [\"HS256\"]\n")
            .err().unwrap().to_string();
        assert!(
            e.contains("identity.oidc[0].algorithms[0]")
                && e.contains("p.toml:5:")
                && e.contains("HMAC"),
            "{e}"
        );
        let e = policy("[[identity.oidc]]\nname = \"ci\"\nissuer = \"http://i.example\"\naudience = \"hoop\"\n")
            .err().unwrap().to_string();
        assert!(e.contains("https"), "{e}");
    }
}

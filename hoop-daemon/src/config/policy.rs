//! The policy part of the config: who jobs are (`[[identity.oidc]]`,
//! `[[identity.static]]`) and where they may go with which credential
//! (`[[connection]]`). Only the shapes and their syntax live here; the
//! daemon compiles them into `policy::Policy`.
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// OIDC issuers whose tokens `hoop run --token-file` and the explicit
    /// proxy accept.
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
    /// Trusted host-local jobs: a cgroup path glob maps to an identity.
    #[serde(default, rename = "static")]
    pub statics: Vec<StaticIdentityConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Prefix of the identity names this issuer yields (`name:claim…`).
    pub name: String,
    /// The issuer URL, exactly as tokens carry it in `iss` (https only).
    pub issuer: String,
    /// The `aud` tokens must carry (one of them, when `aud` is a list).
    pub audience: String,
    /// Refuse tokens whose `aud` lists audiences besides `audience` (the
    /// OpenID Connect ID-token rule). Off by default: CI providers mint
    /// one token for several audiences (GitLab `id_tokens`), and a token
    /// that names hoop among others is still meant for hoop, as HashiCorp
    /// Vault's `bound_audiences` reads it.
    #[serde(default)]
    pub strict_audience: bool,
    /// Signature algorithms accepted (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Claims joined with ':' after the name form the identity.
    #[serde(default = "default_claims")]
    pub claims: Vec<String>,
    /// Extra CA files (PEM) for the issuer's HTTPS endpoints.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    /// Clock skew tolerated on exp and nbf.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// An unknown `kid` refetches the JWKS at most this often.
    #[serde(default = "default_refresh")]
    pub jwks_min_refresh_secs: u64,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_claims() -> Vec<String> {
    vec!["sub".into()]
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    30
}

/// Algorithms an issuer may be configured with: asymmetric signatures.
/// `none` and HMAC are never accepted.
pub const ASYMMETRIC_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticIdentityConfig {
    /// Glob over cgroup paths relative to the cgroup2 mount, e.g.
    /// `hoop.slice/scraper-*.service` (`*` stays within one level, `**`
    /// crosses levels).
    pub cgroup: String,
    /// The identity jobs in matching cgroups get.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub name: String,
    /// `api.partner.example`, `*.partner.example`, optionally `:port`;
    /// `*` alone matches any host.
    pub hosts: Vec<String>,
    /// Identity globs allowed to use this connection (`ci:repo:acme/*`).
    pub allow: Vec<String>,
    /// Extra CA files (PEM) trusted for this connection's upstreams.
    #[serde(default)]
    pub upstream_ca_files: Vec<PathBuf>,
    /// The service credential the daemon injects; the job never sees it.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Guardrails: requests matching any of these are refused (403).
    #[serde(default)]
    pub deny: Vec<super::rules::RuleConfig>,
    /// Response masking: JSON paths, detectors, custom regexes.
    #[serde(default)]
    pub mask: Option<super::mask::MaskConfig>,
    /// Requests matching these wait for a human's approval.
    #[serde(default)]
    pub approve: Vec<ApproveConfig>,
    /// What the audit log keeps of this connection's bodies.
    #[serde(default)]
    pub record: RecordConfig,
}

/// `record = { bodies = true, max_body = 65536 }`: bodies are kept (as the
/// job saw them, masked) up to `max_body` bytes each, compressed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    pub bodies: bool,
    pub max_body: usize,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            bodies: true,
            max_body: 64 << 10,
        }
    }
}

impl RecordConfig {
    /// Bytes of each body to keep.
    pub fn cap(&self) -> usize {
        if self.bodies { self.max_body } else { 0 }
    }
}

/// An approval rule: a request matcher plus who may approve and how long
/// the request may wait.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveConfig {
    pub name: String,
    #[serde(default)]
    pub method: super::rules::OneOrMany,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<super::rules::BodyConfig>,
    /// `uid:N`, `user:NAME`, `group:NAME` (on the host); `oidc:email:…`,
    /// `oidc:group:…`, `oidc:sub:…` (in the console).
    pub approvers: Vec<String>,
    /// Shown to approvers beside the held request.
    #[serde(default)]
    pub message: Option<String>,
    /// How long a held request waits (`90s`, `10m`, `1h`); default 10m.
    #[serde(default)]
    pub timeout: Option<super::duration::Human>,
}

impl ApproveConfig {
    pub fn matcher(&self) -> super::rules::RuleConfig {
        super::rules::RuleConfig {
            name: self.name.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            message: None,
        }
    }
}

/// `[approvals]`: where approvers are told that a request waits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// A URL receiving a JSON POST per pending approval.
    #[serde(default)]
    pub webhook: Option<String>,
    /// `slack = true`: send the webhook a Slack-compatible `{"text": …}`
    /// instead. `[approvals.slack]`: post to Slack with Approve and Deny
    /// buttons, whose clicks come back to the console.
    #[serde(default)]
    pub slack: SlackSetting,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SlackSetting {
    Text(bool),
    Buttons(SlackConfig),
}

impl Default for SlackSetting {
    fn default() -> Self {
        Self::Text(false)
    }
}

/// `[approvals.slack]`: held requests posted to a Slack incoming webhook
/// with buttons; Slack's interaction callbacks reach the console's
/// `/slack/interactions`, signed with the app's signing secret.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub webhook_url: String,
    pub signing_secret: SecretSource,
    /// Slack user id → the e-mail the approvers list names (`oidc:email:`).
    /// A Slack user not in this table (nor carrying an e-mail in the
    /// callback) can't decide.
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, String>,
    /// The Slack workspace (team id) callbacks must come from.
    #[serde(default)]
    pub team_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Header to set (default `authorization`) with `format`.
    #[serde(default)]
    pub header: Option<String>,
    /// Header value; `{secret}` is replaced (default `Bearer {secret}`).
    #[serde(default)]
    pub format: Option<String>,
    /// `Authorization: Basic base64(basic_user:secret)` instead.
    #[serde(default)]
    pub basic_user: Option<String>,
    /// A query parameter carrying the secret instead of a header.
    #[serde(default)]
    pub query: Option<String>,
    pub secret: SecretSource,
}

/// Where a secret is read from, at load and at every reload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`
    /// (`LoadCredential=` in the unit).
    #[serde(default)]
    pub credential: Option<String>,
}

/// A located problem: the key path (relative to where it was found, until
/// the caller places it), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct Problem {
    pub key: String,
    pub problem: String,
}

impl Problem {
    pub fn at(key: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        Self {
            key: key.into(),
            problem: problem.to_string(),
        }
    }
}

fn problem(key: String, problem: impl std::fmt::Display) -> Problem {
    Problem::at(key, problem)
}

/// Syntax checks that need no IO (secrets are read when compiling).
pub fn check(identity: &IdentityConfig, connections: &[ConnectionConfig]) -> Result<(), Problem> {
    let mut names = std::collections::HashSet::new();
    for (i, o) in identity.oidc.iter().enumerate() {
        let key = |k: &str| format!("identity.oidc[{i}].{k}");
        check_name(&o.name).map_err(|p| problem(key("name"), p))?;
        if !names.insert(o.name.as_str()) {
            return Err(problem(
                key("name"),
                "is used by another issuer; names must be unique",
            ));
        }
        let url = http::Uri::try_from(o.issuer.as_str())
            .map_err(|e| problem(key("issuer"), format!("is not a URL ({e})")))?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(problem(
                key("issuer"),
                "must be an https:// URL, exactly as tokens carry it in `iss`",
            ));
        }
        if o.audience.is_empty() {
            return Err(problem(key("audience"), "must not be empty"));
        }
        if o.algorithms.is_empty() {
            return Err(problem(
                key("algorithms"),
                "must name at least one algorithm",
            ));
        }
        for (j, a) in o.algorithms.iter().enumerate() {
            if !ASYMMETRIC_ALGS.contains(&a.as_str()) {
                return Err(problem(
                    format!("identity.oidc[{i}].algorithms[{j}]"),
                    format!(
                        "{a:?} is not accepted; use asymmetric algorithms only ({}): `none` and HMAC never are",
                        ASYMMETRIC_ALGS.join(", ")
                    ),
                ));
            }
        }
        if o.claims.is_empty() {
            return Err(problem(
                key("claims"),
                "must name at least one claim, like [\"sub\"]",
            ));
        }
    }
    for (i, s) in identity.statics.iter().enumerate() {
        let key = |k: &str| format!("identity.static[{i}].{k}");
        if s.cgroup.is_empty()
            || s.cgroup.starts_with('/')
            || s.cgroup.split('/').any(|c| c == "..")
        {
            return Err(problem(
                key("cgroup"),
                "must be a glob relative to the cgroup2 mount, like \"hoop.slice/*.service\"",
            ));
        }
        if s.name.is_empty() {
            return Err(problem(key("name"), "must not be empty"));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, c) in connections.iter().enumerate() {
        let key = |k: &str| format!("connection[{i}].{k}");
        check_name(&c.name).map_err(|p| problem(key("name"), p))?;
        if !names.insert(c.name.as_str()) {
            return Err(problem(
                key("name"),
                "is used by another connection; names must be unique",
            ));
        }
        if c.hosts.is_empty() {
            return Err(problem(key("hosts"), "must list at least one host pattern"));
        }
        if c.allow.is_empty() {
            return Err(problem(
                key("allow"),
                "must list the identities (globs) that may use this connection",
            ));
        }
        if let Some(cred) = &c.credential {
            let modes = [
                cred.header.is_some() || cred.format.is_some(),
                cred.basic_user.is_some(),
                cred.query.is_some(),
            ];
            if modes.iter().filter(|m| **m).count() > 1 {
                return Err(problem(
                    key("credential"),
                    "set one of `header`/`format`, `basic_user` or `query`, not several",
                ));
            }
            if let Some(f) = &cred.format
                && f.matches("{secret}").count() != 1
            {
                return Err(problem(
                    key("credential.format"),
                    "must contain `{secret}` exactly once, like \"Bearer {secret}\"",
                ));
            }
            if let Some(h) = &cred.header
                && http::HeaderName::try_from(h.as_str()).is_err()
            {
                return Err(problem(
                    key("credential.header"),
                    "is not a valid header name",
                ));
            }
            let s = &cred.secret;
            let n = [s.file.is_some(), s.env.is_some(), s.credential.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if n != 1 {
                return Err(problem(
                    key("credential.secret"),
                    "needs exactly one source: { file = \"…\" }, { env = \"VAR\" } or { credential = \"name\" } (systemd LoadCredential)",
                ));
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} must be non-empty and use only letters, digits, '-', '_' and '.'")]
struct BadName(String);

fn check_name(n: &str) -> Result<(), BadName> {
    if n.is_empty()
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(BadName(n.into()));
    }
    Ok(())
}

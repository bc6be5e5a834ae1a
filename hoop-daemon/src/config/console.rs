//! `[console]`: the approvers' web console, served by the daemon over
//! HTTPS, with sign-in through the company's OpenID provider. Off unless
//! `listen` is set.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{
    duration::Human,
    policy::{Problem, SecretSource},
};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the console listens (HTTPS). None: no console.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The console's own certificate chain and key (PEM). Without them it
    /// serves a leaf from hoop's CA for `names`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// DNS names (or IPs) of the leaf from hoop's CA; default "localhost"
    /// and the listen address.
    #[serde(default)]
    pub names: Vec<String>,
    /// How long a sign-in lasts (default 1h).
    #[serde(default)]
    pub session_ttl: Option<Human>,
    /// The job token's claim that names the person who started the job
    /// (GitHub `actor`, GitLab `user_email`): that person can never
    /// approve the job's requests, whichever identity they sign in with.
    #[serde(default)]
    pub job_actor_claim: Option<String>,
    /// That claim's value → the e-mail of the person it names, where the
    /// claim is a login (GitHub's `actor`) rather than an e-mail.
    #[serde(default)]
    pub job_actors: std::collections::BTreeMap<String, String>,
    /// Who may read the recorded sessions in the console (approver syntax:
    /// `oidc:group:security`, …); nobody when empty.
    #[serde(default)]
    pub auditors: Vec<String>,
    #[serde(default)]
    pub oidc: Option<ConsoleOidcConfig>,
}

/// `[console.oidc]`: the approvers' identity provider (authorization code
/// flow with PKCE).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleOidcConfig {
    /// The issuer URL, as its ID tokens carry it in `iss` (https only).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretSource,
    /// The console's `/callback`, as registered with the provider.
    pub redirect_url: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Extra CA files (PEM) for the provider's HTTPS endpoints.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_groups_claim() -> String {
    "groups".into()
}

const DEFAULT_TTL: Duration = Duration::from_secs(3600);

impl ConsoleConfig {
    /// Who started a job, by its token's claims: the claim
    /// `job_actor_claim` names, mapped through `job_actors` where it is a
    /// login. That person can't approve the job's requests.
    pub fn job_actor(&self, claims: &std::collections::BTreeMap<String, String>) -> Option<String> {
        let v = claims.get(self.job_actor_claim.as_deref()?)?;
        Some(self.job_actors.get(v).cloned().unwrap_or_else(|| v.clone()))
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl.map_or(DEFAULT_TTL, |h| h.0)
    }

    /// What is wrong, if anything.
    pub fn check(&self) -> Result<(), Problem> {
        let Some(_) = self.listen else {
            return Ok(());
        };
        let Some(o) = &self.oidc else {
            return Err(Problem::at(
                "console.oidc",
                "the console needs an identity provider for sign-in ([console.oidc] issuer, client_id, client_secret, redirect_url)",
            ));
        };
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Problem::at(
                "console.cert_file",
                "cert_file and key_file go together",
            ));
        }
        if !o.issuer.starts_with("https://") {
            return Err(Problem::at(
                "console.oidc.issuer",
                "must be an https:// URL",
            ));
        }
        match o.redirect_url.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.path() == "/callback" => {}
            _ => {
                return Err(Problem::at(
                    "console.oidc.redirect_url",
                    "must be the console's https://HOST:PORT/callback",
                ));
            }
        }
        if !o.scopes.iter().any(|s| s == "openid") {
            return Err(Problem::at(
                "console.oidc.scopes",
                "must include \"openid\"",
            ));
        }
        if self.session_ttl() < Duration::from_secs(60)
            || self.session_ttl() > Duration::from_secs(86400)
        {
            return Err(Problem::at(
                "console.session_ttl",
                "must be between 1m and 1d",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_job_actor_is_the_claim_mapped_where_it_is_a_login() {
        let c: ConsoleConfig = toml::from_str(
            "job_actor_claim = \"actor\"\n[job_actors]\ncarol = \"carol.m@acme.example\"\n",
        )
        .unwrap();
        let claims = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // A login in the table: the e-mail it maps to.
        assert_eq!(
            c.job_actor(&claims(&[("actor", "carol")])).as_deref(),
            Some("carol.m@acme.example")
        );
        // One not in it: as the claim says.
        assert_eq!(
            c.job_actor(&claims(&[("actor", "dave")])).as_deref(),
            Some("dave")
        );
        // No such claim on the token, or no claim configured: nobody.
        assert_eq!(c.job_actor(&claims(&[("sub", "carol")])), None);
        let none: ConsoleConfig = toml::from_str("").unwrap();
        assert_eq!(none.job_actor(&claims(&[("actor", "carol")])), None);
    }
}

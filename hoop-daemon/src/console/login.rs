//! Sign-in with the approvers' OpenID provider: the authorization code
//! flow with PKCE (openidconnect does the protocol and the ID token's
//! JOSE checks). The provider's metadata and keys are fetched over
//! verified TLS when first needed and again when they are an hour old or
//! a token's key is unknown, so a provider that is down at daemon start
//! only delays sign-in.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
    core::{CoreClient, CoreJsonWebKeySet, CoreProviderMetadata, CoreResponseType},
};
use rustls::ClientConfig;
use serde_json::{Map, Value};

use super::session::{Pending, Sessions};
use crate::{
    approval::Person, config::console::ConsoleOidcConfig, outbound, policy::credential::Secret,
};

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointMaybeSet,
>;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const REFRESH: Duration = Duration::from_secs(3600);
/// Clock skew tolerated on the ID token's expiry.
const LEEWAY: i64 = 30;

/// Why a sign-in failed; `reason()` is what the page and the record say.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider is unreachable or misconfigured: {0}")]
    Provider(String),
    #[error(
        "this sign-in was not started in this browser, was already used, or took over 10 minutes"
    )]
    State,
    #[error("too many sign-ins are under way; try again in a minute")]
    Busy,
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    #[error("the sign-in code could not be exchanged: {0}")]
    Exchange(String),
    #[error("the ID token was not accepted: {0}")]
    Token(String),
}

impl LoginError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Provider(_) => "provider-unavailable",
            Self::State => "sign-in-state",
            Self::Busy => "sign-in-busy",
            Self::Refused(_) => "sign-in-refused",
            Self::Exchange(_) => "code-exchange",
            Self::Token(_) => "id-token",
        }
    }
}

pub struct Provider {
    cfg: ConsoleOidcConfig,
    secret: Secret,
    tls: Arc<ClientConfig>,
    client: tokio::sync::Mutex<Option<(Client, Instant)>>,
}

impl Provider {
    pub fn new(cfg: ConsoleOidcConfig, secret: Secret, tls: Arc<ClientConfig>) -> Self {
        Self {
            cfg,
            secret,
            tls,
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn client(&self, fresh: bool) -> Result<Client, LoginError> {
        let mut c = self.client.lock().await;
        if let Some((client, at)) = c.as_ref()
            && !fresh
            && at.elapsed() < REFRESH
        {
            return Ok(client.clone());
        }
        let client = self.discover().await?;
        *c = Some((client.clone(), Instant::now()));
        Ok(client)
    }

    async fn discover(&self) -> Result<Client, LoginError> {
        let bad = |e: &dyn std::fmt::Display| LoginError::Provider(e.to_string());
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.cfg.issuer.trim_end_matches('/')
        );
        let doc = outbound::get(&url, &self.tls, FETCH_TIMEOUT)
            .await
            .map_err(|e| bad(&e))?;
        let meta: CoreProviderMetadata =
            serde_json::from_slice(&doc).map_err(|e| bad(&format!("{url}: {e}")))?;
        if meta.issuer().as_str() != self.cfg.issuer {
            return Err(bad(&format!(
                "{url} names issuer {}, not {}",
                meta.issuer().as_str(),
                self.cfg.issuer
            )));
        }
        let jwks_url = meta.jwks_uri().url().to_string();
        let keys = outbound::get(&jwks_url, &self.tls, FETCH_TIMEOUT)
            .await
            .map_err(|e| bad(&e))?;
        let keys: CoreJsonWebKeySet =
            serde_json::from_slice(&keys).map_err(|e| bad(&format!("{jwks_url}: {e}")))?;
        let token_url = meta
            .token_endpoint()
            .cloned()
            .ok_or_else(|| bad(&"the provider has no token endpoint"))?;
        let redirect = RedirectUrl::new(self.cfg.redirect_url.clone()).map_err(|e| bad(&e))?;
        Ok(CoreClient::from_provider_metadata(
            meta.set_jwks(keys),
            ClientId::new(self.cfg.client_id.clone()),
            Some(ClientSecret::new(self.secret.expose().to_string())),
        )
        .set_redirect_uri(redirect)
        .set_token_uri(token_url))
    }

    /// Where to send the browser to sign in, and the attempt's `state`
    /// (remembered, and to be bound to the browser by a cookie).
    pub async fn begin(&self, sessions: &Sessions) -> Result<(String, String), LoginError> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = Nonce::new_random();
        let state = sessions
            .begin(verifier.into_secret(), nonce.secret().clone())
            .ok_or(LoginError::Busy)?;
        let bound = state.clone();
        let mut req = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                move || nonce,
            )
            .set_pkce_challenge(challenge);
        for s in self.cfg.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        Ok((req.url().0.to_string(), bound))
    }

    /// The provider sent the browser back: the code becomes tokens, the ID
    /// token is verified, and its claims name the person.
    pub async fn finish(&self, code: &str, pending: Pending) -> Result<Person, LoginError> {
        let client = self.client(false).await?;
        let tls = self.tls.clone();
        let http = move |req: openidconnect::HttpRequest| {
            let tls = tls.clone();
            async move { outbound::exchange(req, &tls, FETCH_TIMEOUT).await }
        };
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
            .request_async(&http)
            .await
            .map_err(|e| LoginError::Exchange(describe(&e)))?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| LoginError::Token("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce);
        let verify = |client: &Client| {
            let verifier = client
                .id_token_verifier()
                .set_time_fn(|| chrono::Utc::now() - chrono::Duration::seconds(LEEWAY));
            id_token.claims(&verifier, &nonce).map(|_| ())
        };
        if let Err(e) = verify(&client) {
            // A rotated key: fetch the keys again, once.
            let fresh = self.client(true).await?;
            verify(&fresh).map_err(|_| LoginError::Token(e.to_string()))?;
        }
        // The signature covers these payload bytes: the claims are the
        // verified ones, read by the names the config gives.
        let payload = payload(&id_token.to_string())
            .ok_or_else(|| LoginError::Token("unreadable payload".into()))?;
        person(&payload, &self.cfg)
    }
}

fn describe<E: std::error::Error>(e: &E) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn payload(jws: &str) -> Option<Map<String, Value>> {
    let b = URL_SAFE_NO_PAD.decode(jws.split('.').nth(1)?).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Who the verified claims name. An e-mail counts only if the provider
/// says it is verified (`email_verified`): where it is missing, the
/// address may be one its owner typed.
fn person(p: &Map<String, Value>, cfg: &ConsoleOidcConfig) -> Result<Person, LoginError> {
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let sub = text("sub")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LoginError::Token("no sub".into()))?;
    let verified = matches!(p.get("email_verified"), Some(Value::Bool(true)))
        || matches!(p.get("email_verified"), Some(Value::String(v)) if v == "true");
    let groups = match p.get(&cfg.groups_claim) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    Ok(Person {
        issuer: cfg.issuer.clone(),
        sub,
        email: text("email").filter(|_| verified).map(|e| e.to_lowercase()),
        name: text("name").or_else(|| text("preferred_username")),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ConsoleOidcConfig {
        ConsoleOidcConfig {
            issuer: "https://idp.example".into(),
            client_id: "c".into(),
            client_secret: crate::config::policy::SecretSource {
                file: None,
                env: None,
                credential: None,
            },
            redirect_url: "https://127.0.0.1:8443/callback".into(),
            scopes: vec!["openid".into()],
            groups_claim: "roles".into(),
            ca_files: vec![],
        }
    }

    #[test]
    fn claims_name_the_person_and_unverified_mail_does_not_count() {
        let p = |v: Value| person(v.as_object().unwrap(), &cfg());
        let a = p(serde_json::json!({"sub": "u1", "email": "Alice@Acme.example", "email_verified": true, "roles": ["leads", 7], "name": "Alice"})).unwrap();
        assert_eq!(a.email.as_deref(), Some("alice@acme.example"));
        assert_eq!(a.groups, ["leads"]);
        let b = p(serde_json::json!({"sub": "u2", "email": "bob@acme.example", "email_verified": false, "roles": "ops"})).unwrap();
        assert_eq!((b.email, b.groups), (None, vec!["ops".to_string()]));
        assert!(matches!(
            p(serde_json::json!({"email": "x@y"})),
            Err(LoginError::Token(_))
        ));
    }
}

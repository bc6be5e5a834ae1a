//! OIDC token verification for machine identities (openidconnect does the
//! JOSE work). Per configured issuer: discovery and JWKS fetched over
//! verified TLS and cached; an unknown `kid` refetches the JWKS (key
//! rotation), at most once per `jwks_min_refresh_secs`. Checked: size,
//! issuer, algorithm allow-list (asymmetric only), signature, audience,
//! exp and nbf with a small leeway.
use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use openidconnect::{
    ClaimsVerificationError, ClientId, IssuerUrl, JsonWebTokenType, Nonce,
    SignatureVerificationError,
    core::{CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm},
};
use rustls::ClientConfig;
use serde_json::{Map, Value};

use super::{Identity, Source};
use crate::config::policy::OidcConfig;
use crate::outbound as fetch;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too large: {len} bytes (limit {MAX_TOKEN_BYTES})")]
    TooLarge { len: usize },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("issuer {0:?} is not configured ([[identity.oidc]])")]
    UnknownIssuer(String),
    #[error("algorithm {alg} is not accepted for issuer {issuer} (allowed: {allowed})")]
    Algorithm {
        alg: String,
        issuer: String,
        allowed: String,
    },
    #[error("no key {kid:?} in the issuer's JWKS{}", if *.refreshed { " (even after refreshing it)" } else { " (JWKS refreshed too recently to refetch)" })]
    UnknownKey { kid: String, refreshed: bool },
    #[error("bad signature: {0}")]
    Signature(String),
    #[error("token expired: {0}")]
    Expired(String),
    #[error("token not valid yet: nbf is {nbf}, now is {now} (leeway {leeway} s)")]
    NotYetValid { nbf: i64, now: i64, leeway: u64 },
    #[error("wrong audience: {0}")]
    Audience(String),
    #[error("wrong issuer: {0}")]
    Issuer(String),
    #[error("claim {0:?}, needed for the identity name, is missing or not a string")]
    Claim(String),
    #[error("cannot fetch the issuer's keys: {0}")]
    Fetch(String),
}

impl TokenError {
    /// A stable reason name, for headers and tests.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "token-too-large",
            Self::Malformed(_) => "token-malformed",
            Self::UnknownIssuer(_) => "token-issuer-unknown",
            Self::Algorithm { .. } => "token-algorithm-refused",
            Self::UnknownKey { .. } => "token-key-unknown",
            Self::Signature(_) => "token-signature-invalid",
            Self::Expired(_) => "token-expired",
            Self::NotYetValid { .. } => "token-not-yet-valid",
            Self::Audience(_) => "token-audience-wrong",
            Self::Issuer(_) => "token-issuer-wrong",
            Self::Claim(_) => "token-claim-missing",
            Self::Fetch(_) => "token-keys-unavailable",
        }
    }
}

/// All configured issuers, by issuer URL.
pub struct Issuers {
    by_url: HashMap<String, Arc<Issuer>>,
}

struct Issuer {
    cfg: OidcConfig,
    tls: Arc<ClientConfig>,
    keys: RwLock<Option<Arc<CoreJsonWebKeySet>>>,
    /// The last fetch; held while fetching, so concurrent verifications
    /// wait for one fetch instead of stampeding.
    last_fetch: tokio::sync::Mutex<Option<Fetched>>,
}

/// Why an issuer's keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Call(#[from] fetch::CallError),
    #[error("discovery document {url}: {source}")]
    Discovery {
        url: String,
        source: serde_json::Error,
    },
    #[error("discovery at {url} names issuer {found:?}, not {expected:?}")]
    IssuerMismatch {
        url: String,
        found: String,
        expected: String,
    },
    #[error("JWKS {url}: {source}")]
    Jwks {
        url: String,
        source: serde_json::Error,
    },
}

/// When the keys were last fetched, and why that failed if it did.
struct Fetched {
    at: Instant,
    error: Option<String>,
}

impl Issuers {
    /// Issuers for `cfgs`. An issuer whose config is unchanged keeps its
    /// cached keys from `previous` (reload).
    pub fn new(
        cfgs: &[OidcConfig],
        upstream_ca_files: &[std::path::PathBuf],
        previous: Option<&Issuers>,
    ) -> Result<Self, crate::tls::TlsError> {
        let mut by_url = HashMap::new();
        for c in cfgs {
            if let Some(old) = previous
                .and_then(|p| p.by_url.get(&c.issuer))
                .filter(|o| o.cfg == *c)
            {
                by_url.insert(c.issuer.clone(), old.clone());
                continue;
            }
            let mut files = upstream_ca_files.to_vec();
            files.extend(c.ca_files.iter().cloned());
            let tls = crate::tls::UpstreamTls::new(&files)?.config_for(&[b"http/1.1".to_vec()]);
            by_url.insert(
                c.issuer.clone(),
                Arc::new(Issuer {
                    cfg: c.clone(),
                    tls,
                    keys: RwLock::new(None),
                    last_fetch: tokio::sync::Mutex::new(None),
                }),
            );
        }
        Ok(Self { by_url })
    }

    pub fn is_empty(&self) -> bool {
        self.by_url.is_empty()
    }

    /// Verifies `token` and names the identity it proves.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge { len: token.len() });
        }
        let (header, payload) = peek(token)?;
        let iss = payload
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::Malformed("no `iss` claim".into()))?;
        let issuer = self
            .by_url
            .get(iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.to_string()))?;
        issuer.verify(token, &header, &payload).await
    }
}

impl Issuer {
    async fn verify(
        &self,
        token: &str,
        header: &Map<String, Value>,
        payload: &Map<String, Value>,
    ) -> Result<Identity, TokenError> {
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if !self.cfg.algorithms.iter().any(|a| a == alg) {
            return Err(TokenError::Algorithm {
                alg: format!("{alg:?}"),
                issuer: self.cfg.issuer.clone(),
                allowed: self.cfg.algorithms.join(", "),
            });
        }
        let parsed =
            CoreIdToken::from_str(token).map_err(|e| TokenError::Malformed(format!("{e}")))?;
        let mut refreshed = false;
        let keys = match self.cached() {
            Some(k) => k,
            None => {
                refreshed = true;
                self.refresh(true).await?
            }
        };
        let claims = match self.check(&parsed, keys) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if !refreshed => {
                // Key rotation: fetch the JWKS again, if not done just now.
                let (keys, fetched) = match self.refresh(false).await {
                    Ok(k) => (k, true),
                    Err(TokenError::UnknownKey { .. }) => {
                        return Err(unknown_key(header, false));
                    }
                    Err(e) => return Err(e),
                };
                refreshed = fetched;
                self.check(&parsed, keys)
            }
            r => r,
        };
        claims.map_err(|e| self.map_err(e, header, refreshed))?;
        // The signature covers these exact payload bytes, so the claims
        // peeked at above are now the verified ones.
        let now = now();
        if let Some(nbf) = payload.get("nbf").and_then(Value::as_i64)
            && nbf > now + self.cfg.leeway_secs as i64
        {
            return Err(TokenError::NotYetValid {
                nbf,
                now,
                leeway: self.cfg.leeway_secs,
            });
        }
        let mut name = self.cfg.name.clone();
        for c in &self.cfg.claims {
            let v = match payload.get(c) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(TokenError::Claim(c.clone())),
            };
            name.push(':');
            name.push_str(&v);
        }
        Ok(Identity {
            name,
            source: Source::Oidc {
                issuer: self.cfg.issuer.clone(),
                subject: payload
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                expires: payload.get("exp").and_then(Value::as_i64).unwrap_or(0),
            },
            claims: std::sync::Arc::new(shown_claims(payload)),
        })
    }

    fn check(
        &self,
        token: &CoreIdToken,
        keys: Arc<CoreJsonWebKeySet>,
    ) -> Result<(), ClaimsVerificationError> {
        let algs = self.cfg.algorithms.iter().filter_map(|a| {
            serde_json::from_value::<CoreJwsSigningAlgorithm>(Value::String(a.clone())).ok()
        });
        let leeway = chrono::Duration::seconds(self.cfg.leeway_secs as i64);
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.cfg.audience.clone()),
            IssuerUrl::new(self.cfg.issuer.clone())
                .map_err(|e| ClaimsVerificationError::Other(e.to_string()))?,
            (*keys).clone(),
        )
        .set_allowed_algs(algs)
        // ID tokens ("JWT") and RFC 9068 access tokens ("at+jwt"), which
        // client-credentials machine identities get.
        .set_allowed_jose_types(
            ["application/jwt", "application/jose", "application/at+jwt"]
                .into_iter()
                .filter_map(|t| JsonWebTokenType::new(t.into()).normalize().ok()),
        )
        // exp is checked against now minus the leeway.
        .set_time_fn(move || chrono::Utc::now() - leeway);
        // Our audience must be among them; others are fine unless strict.
        let verifier = if self.cfg.strict_audience {
            verifier
        } else {
            verifier.set_other_audience_verifier_fn(|_| true)
        };
        token
            .claims(&verifier, |_: Option<&Nonce>| Ok(()))
            .map(|_| ())
    }

    fn map_err(
        &self,
        e: ClaimsVerificationError,
        header: &Map<String, Value>,
        refreshed: bool,
    ) -> TokenError {
        use ClaimsVerificationError as C;
        use SignatureVerificationError as S;
        match e {
            C::Expired(m) => TokenError::Expired(m),
            C::InvalidAudience(m) => TokenError::Audience(m),
            C::InvalidIssuer(m) => TokenError::Issuer(m),
            C::SignatureVerification(S::NoMatchingKey) => unknown_key(header, refreshed),
            C::SignatureVerification(S::DisallowedAlg(a) | S::UnsupportedAlg(a)) => {
                TokenError::Algorithm {
                    alg: a,
                    issuer: self.cfg.issuer.clone(),
                    allowed: self.cfg.algorithms.join(", "),
                }
            }
            C::SignatureVerification(s) => TokenError::Signature(s.to_string()),
            other => TokenError::Malformed(other.to_string()),
        }
    }

    fn cached(&self) -> Option<Arc<CoreJsonWebKeySet>> {
        self.keys.read().unwrap().clone()
    }

    /// Fetches discovery and the JWKS. Unless `force`, refuses (with
    /// UnknownKey) when the last fetch is more recent than the minimum
    /// refresh interval.
    /// No keys cached (`force`) is rate-limited the same way: an issuer
    /// that fails is asked again once per interval, not once per token.
    async fn refresh(&self, force: bool) -> Result<Arc<CoreJsonWebKeySet>, TokenError> {
        let mut last = self.last_fetch.lock().await;
        let min = Duration::from_secs(self.cfg.jwks_min_refresh_secs);
        if let Some(f) = &*last
            && f.at.elapsed() < min
        {
            // Someone else fetched while we waited, or it's too soon.
            if force && let Some(k) = self.cached() {
                return Ok(k);
            }
            if force {
                return Err(TokenError::Fetch(format!(
                    "{} (fetched {} s ago; not again before {} s, jwks_min_refresh_secs)",
                    f.error.as_deref().unwrap_or("no keys"),
                    f.at.elapsed().as_secs(),
                    min.as_secs()
                )));
            }
            return Err(TokenError::UnknownKey {
                kid: String::new(),
                refreshed: false,
            });
        }
        let fetched = self.fetch().await;
        *last = Some(Fetched {
            at: Instant::now(),
            error: fetched.as_ref().err().map(ToString::to_string),
        });
        let keys = Arc::new(fetched.map_err(|e| TokenError::Fetch(e.to_string()))?);
        tracing::info!(issuer = %self.cfg.issuer, keys = keys.keys().len(), "OIDC keys fetched");
        *self.keys.write().unwrap() = Some(keys.clone());
        Ok(keys)
    }

    async fn fetch(&self) -> Result<CoreJsonWebKeySet, KeysError> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let base = self.cfg.issuer.trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let body = fetch::get(&url, &self.tls, FETCH_TIMEOUT).await?;
        let d: Discovery =
            serde_json::from_slice(&body).map_err(|source| KeysError::Discovery {
                url: url.clone(),
                source,
            })?;
        if d.issuer != self.cfg.issuer {
            return Err(KeysError::IssuerMismatch {
                url,
                found: d.issuer,
                expected: self.cfg.issuer.clone(),
            });
        }
        let body = fetch::get(&d.jwks_uri, &self.tls, FETCH_TIMEOUT).await?;
        serde_json::from_slice(&body).map_err(|source| KeysError::Jwks {
            url: d.jwks_uri,
            source,
        })
    }
}

fn unknown_key(header: &Map<String, Value>, refreshed: bool) -> TokenError {
    TokenError::UnknownKey {
        kid: header
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        refreshed,
    }
}

/// The unverified header and payload, to pick the issuer and algorithm.
type Json = Map<String, Value>;

fn peek(token: &str) -> Result<(Json, Json), TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not a JWS compact token (header.payload.signature)".into(),
        ));
    };
    let json = |part: &str, what: &str| -> Result<Json, TokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Malformed(format!("{what} is not a JSON object: {e}")))
    };
    Ok((json(h, "header")?, json(p, "payload")?))
}

/// A token's claims as approvers are shown them: strings and numbers, not
/// the ones every token has, bounded in count and length.
fn shown_claims(payload: &Map<String, Value>) -> std::collections::BTreeMap<String, String> {
    const SKIP: [&str; 6] = ["iss", "aud", "exp", "nbf", "iat", "jti"];
    payload
        .iter()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()))
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k.clone(), s.clone())),
            Value::Number(n) => Some((k.clone(), n.to_string())),
            Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .filter(|(k, v)| k.len() <= 64 && v.len() <= 256)
        .take(48)
        .collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

//! A local OIDC issuer: discovery and JWKS over HTTPS on loopback, tokens
//! signed with test keys (ES256 and RS256), key rotation, and the malformed
//! and malicious tokens the attack tests need. Tokens are built here by
//! hand on purpose: a JWT library would refuse to make most of the attacks.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use rsa::{
    RsaPrivateKey,
    pkcs1v15::SigningKey as RsaSigner,
    signature::{SignatureEncoding, Signer},
    traits::PublicKeyParts,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::TestCa;

/// The audience tokens carry unless a test says otherwise.
pub const AUDIENCE: &str = "hoop";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Es256,
    Rs256,
}

enum KeyMaterial {
    Ec(Box<EcdsaKeyPair>),
    Rsa(Box<(RsaSigner<sha2::Sha256>, rsa::RsaPublicKey)>),
}

/// A signing key with its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Alg,
    key: KeyMaterial,
}

impl SigningKey {
    pub fn generate(kid: &str, alg: Alg) -> Self {
        let key = match alg {
            Alg::Es256 => {
                let rng = SystemRandom::new();
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
                KeyMaterial::Ec(Box::new(
                    EcdsaKeyPair::from_pkcs8(
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        pkcs8.as_ref(),
                        &rng,
                    )
                    .unwrap(),
                ))
            }
            Alg::Rs256 => {
                let private = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
                let public = private.to_public_key();
                KeyMaterial::Rsa(Box::new((RsaSigner::<sha2::Sha256>::new(private), public)))
            }
        };
        Self {
            kid: kid.into(),
            alg,
            key,
        }
    }

    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        match &self.key {
            KeyMaterial::Ec(k) => {
                // Uncompressed point: 0x04 || x || y.
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
                       "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
            }
            KeyMaterial::Rsa(k) => {
                let public = &k.1;
                json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                       "n": B64.encode(public.n().to_bytes_be()), "e": B64.encode(public.e().to_bytes_be())})
            }
        }
    }

    /// Bytes of the public key an attacker would use as an HMAC secret.
    pub fn public_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.jwk()).unwrap()
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match &self.key {
            KeyMaterial::Ec(k) => k
                .sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec(),
            KeyMaterial::Rsa(k) => k.0.sign(input).to_vec(),
        }
    }
}

/// `header.payload.signature`, signed by `key` with its own alg and kid.
pub fn sign(key: &SigningKey, claims: &Value) -> String {
    let header = json!({"alg": key.alg_name(), "typ": "JWT", "kid": key.kid});
    sign_with_header(key, &header, claims)
}

/// Signed by `key`, with whatever header the test wants (lying `kid`, …).
pub fn sign_with_header(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

/// `alg: none`, no signature.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!("{}.", signing_input(&header, claims))
}

/// HS256 with `secret` as the key: the algorithm-confusion attack when
/// `secret` is the issuer's public key.
pub fn hs256(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let input = signing_input(&header, claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    )
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct State {
    url: String,
    /// Keys published in the JWKS.
    published: Mutex<Vec<Arc<SigningKey>>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// An OIDC issuer on loopback, serving `/.well-known/openid-configuration`
/// and `/jwks` over HTTPS with its own test CA.
pub struct Issuer {
    pub url: String,
    pub addr: SocketAddr,
    pub ca: TestCa,
    /// The key tokens are signed with (rotate() replaces it).
    current: Mutex<Arc<SigningKey>>,
    state: Arc<State>,
    _rt: Option<tokio::runtime::Runtime>,
}

impl Issuer {
    /// Starts on a runtime of its own, on `ip` (port picked), with an ES256
    /// key published.
    pub fn start_background(ip: &str, alg: Alg) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut me = rt.block_on(Self::start(ip, alg));
        me._rt = Some(rt);
        me
    }

    /// Starts on the current tokio runtime.
    pub async fn start(ip: &str, alg: Alg) -> Self {
        let ca = TestCa::new("hoop test OIDC issuer CA");
        let tls = TlsAcceptor::from(ca.server_config(&[ip], &[b"http/1.1"]));
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let url = format!("https://{addr}");
        let key = Arc::new(SigningKey::generate("key-1", alg));
        let state = Arc::new(State {
            url: url.clone(),
            published: Mutex::new(vec![key.clone()]),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (tls, st) = (tls.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(s) = tls.accept(s).await else { return };
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(route(req, &st)) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Self {
            url,
            addr,
            ca,
            current: Mutex::new(key),
            state,
            _rt: None,
        }
    }

    /// Valid claims for `sub`: this issuer, audience "hoop", valid now for
    /// ten minutes.
    pub fn claims(&self, sub: &str) -> Value {
        let t = now();
        json!({"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": t, "nbf": t - 5, "exp": t + 600})
    }

    pub fn key(&self) -> Arc<SigningKey> {
        self.current.lock().unwrap().clone()
    }

    /// A valid token for `sub`.
    pub fn token(&self, sub: &str) -> String {
        sign(&self.key(), &self.claims(sub))
    }

    /// A token with these claims, signed by the current key.
    pub fn token_with(&self, claims: &Value) -> String {
        sign(&self.key(), claims)
    }

    /// Key rotation: a new key signs from now on and is published next to
    /// the old one (as real issuers do during a rollover).
    pub fn rotate(&self, kid: &str) {
        let alg = self.key().alg;
        let key = Arc::new(SigningKey::generate(kid, alg));
        self.state.published.lock().unwrap().push(key.clone());
        *self.current.lock().unwrap() = key;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }
}

fn route(req: Request<Incoming>, st: &State) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/.well-known/openid-configuration" => {
            st.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            json!({
                "issuer": st.url,
                "jwks_uri": format!("{}/jwks", st.url),
                "authorization_endpoint": format!("{}/authorize", st.url),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256", "RS256"],
            })
        }
        "/jwks" => {
            st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = st
                .published
                .lock()
                .unwrap()
                .iter()
                .map(|k| k.jwk())
                .collect();
            json!({ "keys": keys })
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

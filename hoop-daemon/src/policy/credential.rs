//! Service credentials: read from their source, injected into requests
//! toward the upstream, and never shown: not in logs, errors or status
//! (`Secret` prints as `[hoop:credential]`), and not to the job (the
//! canary masks the secret and its encodings in responses).
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use http::{HeaderName, HeaderValue, Uri, request};

use super::canary::Canary;
use crate::config::policy::{CredentialConfig, SecretSource};

/// What stands in for a secret wherever one would be shown.
pub const REDACTED: &str = "[hoop:credential]";
/// Shorter secrets can't be told apart from ordinary text, so the leak
/// canary could not work; they are refused at load.
pub const MIN_SECRET_LEN: usize = 8;

/// Why a secret could not be loaded. Names the source, never the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set (or not UTF-8)")]
    EnvUnset(String),
    #[error(
        "systemd credential {0:?}: $CREDENTIALS_DIRECTORY is not set (add LoadCredential={0}:… to hoop.service)"
    )]
    NoCredentialsDirectory(String),
    #[error("cannot read secret file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no secret source")]
    NoSource,
    #[error(
        "the secret is shorter than {MIN_SECRET_LEN} bytes; too short to keep out of responses reliably"
    )]
    TooShort,
    #[error("the secret contains control characters")]
    ControlCharacters,
}

/// Why a credential could not be built: its secret, or where it goes.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("header name: {0}")]
    HeaderName(#[from] http::header::InvalidHeaderName),
    #[error("the credential is not a valid header value")]
    HeaderValue,
}

/// A secret value. Its Debug and Display never show it.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads `src`; errors name the source, never the content.
    pub fn load(src: &SecretSource) -> Result<Self, SecretError> {
        let raw = if let Some(f) = &src.file {
            read_file(f)?
        } else if let Some(var) = &src.env {
            std::env::var(var).map_err(|_| SecretError::EnvUnset(var.clone()))?
        } else if let Some(name) = &src.credential {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
            read_file(&Path::new(&dir).join(name))?
        } else {
            return Err(SecretError::NoSource);
        };
        // Files usually end with a newline that is not part of the secret.
        let s = raw.trim_end_matches(['\n', '\r']);
        if s.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort);
        }
        if s.bytes().any(|b| b.is_ascii_control()) {
            return Err(SecretError::ControlCharacters);
        }
        Ok(Self(s.into()))
    }
}

fn read_file(p: &Path) -> Result<String, SecretError> {
    std::fs::read_to_string(p).map_err(|source| SecretError::File {
        path: p.to_path_buf(),
        source,
    })
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

enum Mode {
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    Query {
        param: String,
        encoded: String,
    },
}

/// A connection's credential, ready to inject.
pub struct Credential {
    mode: Mode,
    pub canary: Arc<Canary>,
}

impl Credential {
    /// The header the credential goes in, if it goes in one.
    pub fn header(&self) -> Option<&str> {
        match &self.mode {
            Mode::Header { name, .. } => Some(name.as_str()),
            Mode::Query { .. } => None,
        }
    }
}

/// Names where the credential goes, never what it is.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Header { name, .. } => write!(f, "Credential(header {name}: {REDACTED})"),
            Mode::Query { param, .. } => write!(f, "Credential(query {param}={REDACTED})"),
        }
    }
}

impl Credential {
    pub fn new(c: &CredentialConfig) -> Result<Self, CredentialError> {
        let secret = Secret::load(&c.secret)?;
        let s = secret.expose();
        // Percent-encoded and escaped forms are found by decoding (the
        // canary's views), so needles are only what decoding can't undo.
        let mut needles = Vec::new();
        let mode = if let Some(param) = &c.query {
            let encoded: String = form_urlencoded::byte_serialize(s.as_bytes()).collect();
            Mode::Query {
                param: param.clone(),
                encoded,
            }
        } else if let Some(user) = &c.basic_user {
            let b64 = STANDARD.encode(format!("{user}:{s}"));
            needles.push(b64.clone().into_bytes());
            Mode::Header {
                name: http::header::AUTHORIZATION,
                value: header_value(format!("Basic {b64}"))?,
            }
        } else {
            let name = c.header.as_deref().unwrap_or("authorization");
            let format = c.format.as_deref().unwrap_or("Bearer {secret}");
            Mode::Header {
                name: HeaderName::try_from(name)?,
                value: header_value(format.replace("{secret}", s))?,
            }
        };
        needles.extend(base64_forms(s.as_bytes()));
        Ok(Self {
            mode,
            canary: Arc::new(Canary::new(s.as_bytes(), needles)),
        })
    }

    /// Removes whatever the job sent in the credential's place, then adds
    /// the credential.
    pub fn inject(&self, parts: &mut request::Parts) {
        match &self.mode {
            Mode::Header { name, value } => {
                parts.headers.remove(name);
                parts.headers.insert(name.clone(), value.clone());
            }
            Mode::Query { param, encoded } => {
                let pq = parts.uri.path_and_query();
                let path = pq.map(|p| p.path()).unwrap_or("/");
                let kept: Vec<&str> = pq
                    .and_then(|p| p.query())
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .filter(|pair| {
                        let name = pair.split('=').next().unwrap_or("");
                        !name.is_empty() && decode(name) != *param
                    })
                    .collect();
                let mut q = kept.join("&");
                if !q.is_empty() {
                    q.push('&');
                }
                let name: String = form_urlencoded::byte_serialize(param.as_bytes()).collect();
                let new = format!("{path}?{q}{name}={encoded}");
                let mut uri = parts.uri.clone().into_parts();
                uri.path_and_query = new.parse().ok();
                if let Ok(u) = Uri::from_parts(uri) {
                    parts.uri = u;
                }
            }
        }
    }
}

fn decode(s: &str) -> String {
    form_urlencoded::parse(format!("{s}=").as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

fn header_value(v: String) -> Result<HeaderValue, CredentialError> {
    let mut v = HeaderValue::try_from(v).map_err(|_| CredentialError::HeaderValue)?;
    // hyper and h2 keep sensitive values out of HPACK's dynamic table.
    v.set_sensitive(true);
    Ok(v)
}

/// The secret's base64 forms, standard and URL-safe, at each of the three
/// alignments it can take inside a longer encoded text: only the 4-char
/// groups made purely of secret bytes, so they match wherever it sits.
pub(crate) fn base64_forms(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for engine in [&STANDARD, &URL_SAFE] {
        for lead in 0..3usize {
            let mut buf = vec![0u8; lead];
            buf.extend_from_slice(s);
            let enc = engine.encode(&buf);
            // Groups (3 input bytes → 4 chars) wholly inside the secret.
            let first = lead.div_ceil(3);
            let last = (lead + s.len()) / 3;
            if last > first {
                let core = &enc.as_bytes()[first * 4..last * 4];
                if core.len() >= MIN_SECRET_LEN {
                    out.push(core.to_vec());
                }
            }
        }
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(s).into_bytes());
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(extra: &str, secret_file: &Path) -> Credential {
        let text = format!(
            "{extra}\nsecret = {{ file = \"{}\" }}\n",
            secret_file.display()
        );
        let c: CredentialConfig = toml::from_str(&text).unwrap();
        Credential::new(&c).unwrap()
    }

    fn secret_file(s: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), format!("{s}\n")).unwrap();
        f
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn secrets_never_print() {
        let f = secret_file("s3cr3t-value-123");
        let s = Secret::load(&SecretSource {
            file: Some(f.path().into()),
            env: None,
            credential: None,
        })
        .unwrap();
        assert_eq!(s.expose(), "s3cr3t-value-123");
        assert_eq!(format!("{s} {s:?}"), "[hoop:credential] [hoop:credential]");
        let c = cred("", f.path());
        assert!(!format!("{c:?}").contains("s3cr3t"), "{c:?}");
    }

    #[test]
    fn short_or_missing_secrets_are_refused_without_showing_them() {
        let f = secret_file("abc");
        let e = Secret::load(&SecretSource {
            file: Some(f.path().into()),
            env: None,
            credential: None,
        })
        .unwrap_err();
        assert!(matches!(e, SecretError::TooShort), "{e}");
        let e = e.to_string();
        assert!(e.contains("shorter") && !e.contains("abc"), "{e}");
        let e = Secret::load(&SecretSource {
            file: None,
            env: Some("HOOP_NO_SUCH_VAR".into()),
            credential: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("HOOP_NO_SUCH_VAR"), "{e}");
    }

    #[test]
    fn header_injection_replaces_what_the_job_sent() {
        let f = secret_file("s3cr3t-value-123");
        let c = cred("", f.path());
        let mut p = parts(
            "/x",
            &[
                ("authorization", "Bearer stolen"),
                ("authorization", "Basic x"),
            ],
        );
        c.inject(&mut p);
        let v: Vec<_> = p.headers.get_all("authorization").iter().collect();
        assert_eq!(v, ["Bearer s3cr3t-value-123"]);

        let c = cred("header = \"x-api-key\"\nformat = \"{secret}\"", f.path());
        let mut p = parts("/x", &[("X-Api-Key", "mine")]);
        c.inject(&mut p);
        assert_eq!(p.headers["x-api-key"], "s3cr3t-value-123");

        let c = cred("basic_user = \"svc\"", f.path());
        let mut p = parts("/x", &[]);
        c.inject(&mut p);
        assert_eq!(
            p.headers["authorization"],
            format!("Basic {}", STANDARD.encode("svc:s3cr3t-value-123"))
        );
    }

    #[test]
    fn query_injection_replaces_the_parameter() {
        let f = secret_file("s3cr3t+value/123");
        let c = cred("query = \"api_key\"", f.path());
        let mut p = parts(
            "https://a.test/v1/x?a=1&api_key=stolen&api%5Fkey=2&b=2",
            &[],
        );
        c.inject(&mut p);
        assert_eq!(p.uri.path(), "/v1/x");
        assert_eq!(p.uri.query(), Some("a=1&b=2&api_key=s3cr3t%2Bvalue%2F123"));
        assert_eq!(p.uri.authority().unwrap(), "a.test");
    }

    #[test]
    fn the_canary_masks_raw_and_encoded_forms_at_any_alignment() {
        let f = secret_file("s3cr3t-value-123");
        let c = cred("", f.path());
        let secret = b"s3cr3t-value-123";
        for prefix in ["", "x", "xy", "xyz"] {
            let mut text = prefix.as_bytes().to_vec();
            text.extend_from_slice(secret);
            text.extend_from_slice(b"tail");
            for enc in [STANDARD.encode(&text), URL_SAFE_NO_PAD.encode(&text)] {
                let mut buf = format!("{{\"echo\":\"{enc}\"}}").into_bytes();
                assert!(c.canary.mask(&mut buf) >= 1, "not found in {enc}");
                // What is left can't be decoded back to the secret.
                let s = String::from_utf8(buf).unwrap();
                let rest = s.trim_start_matches("{\"echo\":\"").trim_end_matches("\"}");
                let back = STANDARD
                    .decode(rest.replace(['-', '_'], "A"))
                    .unwrap_or_default();
                assert!(!back.windows(secret.len()).any(|w| w == secret), "{s}");
            }
        }
        let mut raw = b"Authorization: Bearer s3cr3t-value-123\r\n".to_vec();
        assert_eq!(c.canary.mask(&mut raw), 1);
        // 16 bytes: shorter than the tag, so stars of the same length.
        assert_eq!(raw, b"Authorization: Bearer ****************\r\n");
        let f = secret_file("a-much-longer-secret-value-0001");
        let c = cred("", f.path());
        let mut raw = b"k=a-much-longer-secret-value-0001;".to_vec();
        c.canary.mask(&mut raw);
        assert_eq!(raw, b"k=[hoop:credential]**************;");
    }
}

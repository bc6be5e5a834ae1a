//! The approvers' console: held requests reach people who never had a
//! shell on the host. Served by the daemon over HTTPS (`[console]`), with
//! sign-in through the company's OpenID provider ([`login`]), sessions
//! kept in memory ([`session`]), a server-rendered page ([`page`]) that
//! updates live over server-sent events, and decisions that go through
//! the same approval service as the control socket's. Every sign-in, view
//! of a held body and decision (or refusal) is an audit record.
mod login;
mod page;
mod routes;
mod session;
mod sessions;
mod slack;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::TcpListener;

use crate::{
    approval::{Approvals, Approver, Caller},
    audit::Audit,
    config::{Config, console::ConsoleConfig},
    pipeline::Gateway,
    policy::credential::Secret,
    tls::{Ca, Leaves, leaf::LeafName},
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open console connections (live inboxes hold one each); more are closed
/// at once, so a flood can't starve the daemon.
const MAX_CONNECTIONS: usize = 512;

/// Why the console could not start (the daemon then does not).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("console: listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("console: client_secret: {0}")]
    Secret(#[from] crate::policy::credential::SecretError),
    #[error("approvals.slack.signing_secret: {0}")]
    SlackSecret(crate::policy::credential::SecretError),
    #[error("console: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("console.auditors: {0}")]
    Auditor(#[from] crate::policy::approvers::BadApprover),
    #[error("console: certificate {}: {detail}", path.display())]
    Cert {
        path: std::path::PathBuf,
        detail: String,
    },
}

/// What the console's handlers share.
pub struct Console {
    cfg: ConsoleConfig,
    /// `https://host:port` of the console, as the browser sees it: what
    /// a state-changing request's Origin must be.
    origin: String,
    provider: login::Provider,
    sessions: Arc<session::Sessions>,
    approvals: Arc<Approvals>,
    audit: Audit,
    /// Slack's button callbacks, when `[approvals.slack]` is set.
    slack: Option<slack::Slack>,
    /// Who may read the recorded sessions.
    auditors: Vec<Approver>,
    /// The fleet's shared approval queue, when `[fleet]` is set.
    fleet: Option<Arc<crate::fleet::approvals::FleetApprovals>>,
}

impl Console {
    /// Who may read the recorded sessions: `[console] auditors` only. The
    /// sessions hold every recorded body of every job; approving one rule
    /// is no reason to read them all.
    fn may_read_sessions(&self, c: &Caller) -> bool {
        self.auditors.iter().any(|a| a.admits(c))
    }

    /// The held requests `caller` may decide, here and on the fleet's
    /// other hosts, newest first.
    fn pending_for(&self, caller: &Caller) -> Vec<crate::approval::Row> {
        let mut rows = self.approvals.pending_for(caller).unwrap_or_default();
        if let Some(f) = &self.fleet {
            rows.extend(f.pending_for(caller));
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        rows
    }

    /// A held request's row, here or on another host.
    fn row(&self, id: &str) -> Option<crate::approval::Row> {
        match self.approvals.get(id) {
            Ok(Some(r)) => Some(r),
            _ => self.fleet.as_ref()?.get(id).map(|(r, _)| r),
        }
    }

    fn may_decide(&self, id: &str, caller: &Caller) -> bool {
        self.approvals.may_decide(id, caller)
            || self
                .fleet
                .as_ref()
                .is_some_and(|f| f.may_decide(id, caller))
    }

    /// A person's decision: here, or written for the host that holds it.
    async fn decide(
        &self,
        id: &str,
        person: &crate::approval::Person,
        d: crate::approval::Decision,
    ) -> Result<String, crate::approval::ApprovalError> {
        if let (Ok(None), Some(f)) = (self.approvals.get(id), &self.fleet)
            && f.get(id).is_some()
        {
            return f.decide(id, person, d).await;
        }
        self.approvals
            .decide(id, &Caller::Person(person.clone()), d)
    }

    /// Why the fleet's queue is away, when this host is in a fleet.
    fn fleet_away(&self) -> Option<String> {
        self.fleet.as_ref()?.error()
    }
}

/// Binds the console if `[console] listen` is set, and serves it.
pub async fn start(cfg: &Config, gw: Arc<Gateway>) -> Result<bool, StartError> {
    let c = &cfg.console;
    let (Some(addr), Some(oidc)) = (c.listen, c.oidc.clone()) else {
        return Ok(false);
    };
    let tls = server_tls(c, addr, &gw.ca)?;
    let auditors = c
        .auditors
        .iter()
        .map(|a| Approver::parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    let secret = Secret::load(&oidc.client_secret)?;
    let slack = match &cfg.approvals.slack {
        crate::config::policy::SlackSetting::Buttons(s) => Some(slack::Slack::new(
            Secret::load(&s.signing_secret).map_err(StartError::SlackSecret)?,
            s.users.clone(),
            s.team_id.clone(),
        )),
        crate::config::policy::SlackSetting::Text(_) => None,
    };
    let provider_tls =
        crate::tls::UpstreamTls::new(&oidc.ca_files)?.config_for(&[crate::tls::HTTP11.to_vec()]);
    let origin = origin_of(&oidc.redirect_url).unwrap_or_default();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let console = Arc::new(Console {
        cfg: c.clone(),
        origin,
        provider: login::Provider::new(oidc, secret, provider_tls),
        sessions: Arc::default(),
        approvals: gw.approvals.clone(),
        audit: gw.audit.clone(),
        slack,
        auditors,
        fleet: gw.fleet.as_ref().map(|f| f.approvals.clone()),
    });
    tracing::info!(listen = %addr, "approver console");
    tokio::spawn(accept_loop(listener, tls, console));
    Ok(true)
}

async fn accept_loop(l: TcpListener, tls: Arc<ServerConfig>, console: Arc<Console>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "console: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, limit = MAX_CONNECTIONS, "console: too many connections; closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let console = console.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "console: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let console = console.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(routes::handle(&console, peer, req).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A URL's origin as browsers send it in `Origin`, normalised: scheme and
/// host lower-cased, the default port left out.
fn origin_of(url: &str) -> Option<String> {
    let u: http::Uri = url.parse().ok()?;
    let scheme = u.scheme_str()?.to_ascii_lowercase();
    let host = u.host()?.to_ascii_lowercase();
    Some(match u.port_u16() {
        Some(p) if !(scheme == "https" && p == 443 || scheme == "http" && p == 80) => {
            format!("{scheme}://{host}:{p}")
        }
        _ => format!("{scheme}://{host}"),
    })
}

/// The console's own certificate, or leaves from hoop's CA for its names.
fn server_tls(
    c: &ConsoleConfig,
    addr: SocketAddr,
    ca: &Arc<Ca>,
) -> Result<Arc<ServerConfig>, StartError> {
    let builder = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(crate::tls::TlsError::from)?
        .with_no_client_auth();
    let mut cfg = match (&c.cert_file, &c.key_file) {
        (Some(cert), Some(key)) => {
            let bad = |path: &Path, e: &dyn std::fmt::Display| StartError::Cert {
                path: path.into(),
                detail: e.to_string(),
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
            builder
                .with_single_cert(chain, key)
                .map_err(|e| bad(cert, &e))?
        }
        _ => {
            let mut names: Vec<LeafName> = c
                .names
                .iter()
                .map(|n| match n.parse() {
                    Ok(ip) => LeafName::Ip(ip),
                    Err(_) => LeafName::Dns(n.to_lowercase()),
                })
                .collect();
            if names.is_empty() {
                names = vec![LeafName::Dns("localhost".into()), LeafName::Ip(addr.ip())];
            }
            builder.with_cert_resolver(Arc::new(OwnNames {
                leaves: Leaves::new(ca.clone())?,
                names,
            }))
        }
    };
    cfg.alpn_protocols = vec![crate::tls::HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// Leaves for the console's names only: another SNI gets no certificate.
struct OwnNames {
    leaves: Leaves,
    names: Vec<LeafName>,
}

impl std::fmt::Debug for OwnNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnNames")
            .field("names", &self.names)
            .finish()
    }
}

impl ResolvesServerCert for OwnNames {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            Some(sni) => LeafName::Dns(sni.to_lowercase()),
            // Connected by IP: the first IP name.
            None => self
                .names
                .iter()
                .find(|n| matches!(n, LeafName::Ip(_)))?
                .clone(),
        };
        if !self.names.contains(&name) {
            return None;
        }
        self.leaves.get(&name).ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn origins_compare_as_browsers_mean_them() {
        let o = |s| super::origin_of(s);
        assert_eq!(
            o("https://Hoop.Example:443/callback"),
            o("https://hoop.example")
        );
        assert_eq!(
            o("https://127.0.0.1:8443/callback").as_deref(),
            Some("https://127.0.0.1:8443")
        );
        assert_ne!(o("https://hoop.example:8443"), o("https://hoop.example"));
        assert_ne!(o("http://hoop.example"), o("https://hoop.example"));
        assert_eq!(o("null"), None);
    }

    /// `cert_file` and `key_file`: the console serves that chain (a client
    /// trusting only its issuer completes a handshake and sees the file's
    /// leaf), and a key that is not the certificate's is a start error
    /// naming the file.
    #[tokio::test]
    async fn the_console_serves_its_own_certificate_from_files() {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        use std::{net::SocketAddr, sync::Arc};
        let dir = tempfile::tempdir().unwrap();
        let issuer = hoop_testkit::TestCa::new("Acme console CA");
        let (chain, key) = issuer.leaf_pem(&["approve.acme.test"]);
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, &chain).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let c = super::ConsoleConfig {
            cert_file: Some(cert_file.clone()),
            key_file: Some(key_file.clone()),
            ..Default::default()
        };
        let ca = Arc::new(crate::tls::ca::Ca::load_or_create(&dir.path().join("ca")).unwrap());
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let server = super::server_tls(&c, addr, &ca).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(issuer.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 << 10);
        let accept = tokio::spawn(async move {
            tokio_rustls::TlsAcceptor::from(server)
                .accept(b)
                .await
                .map(|_| ())
        });
        let name = ServerName::try_from("approve.acme.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, a)
            .await
            .expect("a client trusting the file's issuer completes the handshake");
        let seen = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(seen, leaf);
        accept.await.unwrap().unwrap();

        // Another key than the certificate's.
        let (_, other_key) = issuer.leaf_pem(&["approve.acme.test"]);
        std::fs::write(&key_file, &other_key).unwrap();
        match super::server_tls(&c, addr, &ca) {
            Err(super::StartError::Cert { path, .. }) => assert_eq!(path, cert_file),
            other => panic!("a mismatched key was accepted: {other:?}"),
        }
    }
}

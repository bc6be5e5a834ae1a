//! Fleet mode: many hosts, one record on a shared PostgreSQL.
//!
//! The local SQLite log stays the store the request path waits on; the
//! [`ship`] task sends its committed batches to the server in order,
//! idempotently (keyed by host and first seq), after checking that each
//! continues the host's chain. [`read`] brings a host's shipped batches
//! back into a scratch SQLite file, so that every local reader (sessions,
//! timelines, exports, `verify`) works on the fleet unchanged.
pub mod approvals;
pub mod read;
pub mod schema;
pub mod ship;

use std::{path::Path, str::FromStr, sync::Arc};

use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};
use tokio_postgres::{NoTls, config::Host};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{
    config::fleet::{FleetConfig, PgUrl, check_host_id},
    policy::credential::Secret,
};

/// Fleet mode's parts on this host: the record's shipper and the shared
/// approval queue.
pub struct Fleet {
    pub shipping: Arc<ship::Shipping>,
    pub approvals: Arc<approvals::FleetApprovals>,
    /// The server's addresses: the daemon's own, never a job's upstream.
    pub server: Vec<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("[fleet] postgres: {0}")]
    Url(String),
    #[error("[fleet] host_id: {0}")]
    HostId(String),
    #[error("[fleet] ca_file {path}: {detail}")]
    Ca { path: String, detail: String },
    #[error("PostgreSQL: {}", chain(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error(
        "the server's hoop schema is version {server}, newer than this hoop's {ours}; upgrade hoop on this host"
    )]
    SchemaNewer { server: i64, ours: usize },
    #[error("{0}")]
    Refused(String),
    #[error("local audit log: {0}")]
    Local(String),
}

/// Where the fleet's server is and who this host is in it.
#[derive(Clone)]
pub struct Target {
    pub host_id: String,
    pg: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// For messages: `user@host:port/dbname`, no password.
    pub display: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host_id", &self.host_id)
            .field("server", &self.display)
            .finish()
    }
}

impl Target {
    /// Resolves `[fleet]`: reads the URL's source, the host id and the CA.
    pub fn of(cfg: &FleetConfig) -> Result<Self, FleetError> {
        let url = match &cfg.postgres {
            None => return Err(FleetError::Url("not set".into())),
            Some(PgUrl::Inline(u)) => u.clone(),
            Some(PgUrl::Secret(src)) => Secret::load(src)
                .map_err(|e| FleetError::Url(e.to_string()))?
                .expose()
                .to_string(),
        };
        let host_id = match &cfg.host_id {
            Some(id) => id.clone(),
            None => machine_id()?,
        };
        Self::from_url(&url, host_id, cfg.ca_file.as_deref())
    }

    fn from_url(url: &str, host_id: String, ca_file: Option<&Path>) -> Result<Self, FleetError> {
        check_host_id(&host_id).map_err(FleetError::HostId)?;
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut sslmode = None;
        let mut rootcert = None;
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "sslmode" => sslmode = Some(v.into_owned()),
                "sslrootcert" => rootcert = Some(v.into_owned()),
                _ => {
                    rest.append_pair(&k, &v);
                }
            }
        }
        let rest = rest.finish();
        let cleaned = match rest.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{rest}"),
        };
        let mut pg = tokio_postgres::Config::from_str(&cleaned)
            .map_err(|e| FleetError::Url(format!("not a PostgreSQL URL: {e}")))?;
        pg.application_name(format!("hoop {host_id}"));
        let hosts = pg.get_hosts();
        if hosts.is_empty()
            || hosts
                .iter()
                .any(|h| matches!(h, Host::Tcp(n) if n.is_empty()))
        {
            return Err(FleetError::Url("names no host".into()));
        }
        let local = hosts.iter().all(|h| match h {
            Host::Tcp(name) => is_loopback(name),
            Host::Unix(_) => true,
        });
        let unix = hosts.iter().all(|h| matches!(h, Host::Unix(_)));
        let display = format!(
            "{}@{}/{}",
            pg.get_user().unwrap_or("-"),
            hosts
                .iter()
                .map(|h| match h {
                    Host::Tcp(n) => n.clone(),
                    Host::Unix(p) => p.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            pg.get_dbname().unwrap_or("-")
        );
        // hoop verifies the server whenever it speaks TLS: every mode but
        // `disable` is verify-full here (libpq's `prefer` and `require`
        // would take any certificate, and its `prefer` even plain text).
        let tls = match sslmode.as_deref() {
            Some("disable") if !local => {
                return Err(FleetError::Url(
                    "sslmode=disable would send the record in clear over the network; it is allowed only to loopback or a Unix socket".into(),
                ));
            }
            Some("disable") => None,
            _ if unix => None,
            None | Some("prefer" | "require" | "verify-ca" | "verify-full") => {
                let ca = rootcert
                    .as_deref()
                    .filter(|r| *r != "system")
                    .map(Path::new)
                    .or(ca_file);
                Some(MakeRustlsConnect::new(client_config(ca)?))
            }
            Some(other) => {
                return Err(FleetError::Url(format!(
                    "sslmode={other:?}: use verify-full (the default) or disable (loopback only)"
                )));
            }
        };
        pg.ssl_mode(match tls {
            Some(_) => tokio_postgres::config::SslMode::Require,
            None => tokio_postgres::config::SslMode::Disable,
        });
        pg.connect_timeout(std::time::Duration::from_secs(10));
        Ok(Self {
            host_id,
            pg,
            tls,
            display,
        })
    }

    /// The server's addresses (names resolved once, now): the daemon's
    /// own service, which no job may be dialled to.
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        let ports = self.pg.get_ports();
        self.pg
            .get_hosts()
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match h {
                Host::Tcp(name) => Some((name.trim_matches(['[', ']']), i)),
                Host::Unix(_) => None,
            })
            .flat_map(|(name, i)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                (name, port).to_socket_addrs().into_iter().flatten()
            })
            .collect()
    }

    /// A connection; its driver runs on a task of its own and logs how it
    /// ended.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, FleetError> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = self.pg.connect(tls.clone()).await?;
                tokio::spawn(drive(conn));
                client
            }
            None => {
                let (client, conn) = self.pg.connect(NoTls).await?;
                tokio::spawn(drive(conn));
                client
            }
        };
        Ok(client)
    }
}

/// Notifications (LISTEN) arrive on the receiver; it closes when the
/// connection ends.
pub type Notes = tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>;

impl Target {
    /// A connection whose notifications are passed on.
    pub async fn connect_listening(&self) -> Result<(tokio_postgres::Client, Notes), FleetError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = self.pg.connect(tls.clone()).await?;
                tokio::spawn(pass_on(conn, tx));
                client
            }
            None => {
                let (client, conn) = self.pg.connect(NoTls).await?;
                tokio::spawn(pass_on(conn, tx));
                client
            }
        };
        Ok((client, rx))
    }
}

async fn pass_on<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if tx.send(n).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "fleet: PostgreSQL connection ended");
                return;
            }
        }
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "fleet: PostgreSQL connection ended");
    }
}

/// The driver's error with its causes ("error connecting to server" says
/// little without "Connection refused").
fn chain(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

fn is_loopback(name: &str) -> bool {
    name == "localhost"
        || name
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The server's certificate must chain to `ca` (or, without it, to the
/// system's trust store) and name the host hoop dialled.
fn client_config(ca: Option<&Path>) -> Result<ClientConfig, FleetError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let bad = |detail: String| FleetError::Ca {
                path: path.display().to_string(),
                detail,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect())
                .map_err(|e| bad(format!("{e:?}")))?;
            if certs.is_empty() {
                return Err(bad("holds no certificate".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    Ok(ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FleetError::Url(e.to_string()))?
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth())
}

/// `/etc/machine-id`: stable for the life of the installation.
fn machine_id() -> Result<String, FleetError> {
    let id = std::fs::read_to_string("/etc/machine-id").map_err(|e| {
        FleetError::HostId(format!(
            "not set, and /etc/machine-id cannot be read ({e}); set [fleet] host_id"
        ))
    })?;
    Ok(id.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, FleetError> {
        Target::from_url(url, "h1".into(), None)
    }

    #[test]
    fn tls_is_verified_unless_disabled_on_loopback() {
        for url in [
            "postgres://hoop@db.example/hoop",
            "postgres://hoop@db.example/hoop?sslmode=require",
            "postgres://hoop@db.example/hoop?sslmode=verify-full&connect_timeout=5",
            "postgres://hoop@db.example/hoop?sslmode=prefer",
        ] {
            let t = target(url).unwrap();
            assert!(t.tls.is_some(), "{url}");
            assert_eq!(t.display, "hoop@db.example/hoop");
        }
        for url in [
            "postgres://hoop@127.0.0.1:5433/hoop?sslmode=disable",
            "postgres://hoop@[::1]/hoop?sslmode=disable",
            "postgres://hoop@localhost/hoop?sslmode=disable",
            "postgres://hoop@%2Frun%2Fpostgresql/hoop",
        ] {
            assert!(target(url).unwrap().tls.is_none(), "{url}");
        }
        for (url, why) in [
            (
                "postgres://hoop@db.example/hoop?sslmode=disable",
                "in clear",
            ),
            ("postgres://hoop@db.example/hoop?sslmode=allow", "allow"),
            ("postgres://hoop@/hoop?host=", "names no host"),
            ("postgres://hoop@db:port/hoop", "not a PostgreSQL URL"),
        ] {
            let e = target(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        let e = Target::from_url("postgres://db/hoop", "a b".into(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_id"), "{e}");
    }
}

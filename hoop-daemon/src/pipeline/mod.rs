//! The pipeline every job connection goes through, however it arrived
//! (transparent capture, CONNECT, SOCKS5): sniff the first bytes, terminate
//! TLS with a leaf for the name the job asked for, and serve HTTP with an
//! upstream connection to the original destination in between.
pub mod authority;
pub mod body;
pub mod classify;
pub mod error;
pub mod headers;
mod http;
mod linger;
mod record;
mod rewind;
pub mod timeouts;
pub mod upgrade;
pub mod upstream;
pub mod websocket;

use std::{sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    pki_types::{DnsName, ServerName},
    server::{Acceptor, ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

pub use crate::policy::phases::{Phases, SharedPhases};
pub use error::PipelineError;
pub use http::forward_plain;
pub use rewind::Rewind;

use crate::{
    config::Config,
    flow::{self, Flow},
    policy::{Connection, Policy},
    tls::{self, Ca, Leaves, UpstreamTls, leaf::LeafName},
};
use classify::{Kind, MAX_SNIFF, classify};
use upstream::{Limits, Negotiated, TlsTarget, UpstreamConn};

/// Everything a connection needs, shared by all of them.
pub struct Gateway {
    pub cfg: Arc<Config>,
    pub ca: Arc<Ca>,
    pub leaves: Arc<Leaves>,
    pub upstream_tls: UpstreamTls,
    pub phases: SharedPhases,
    /// Requests waiting for a human.
    pub approvals: Arc<crate::approval::Approvals>,
    /// The audit log's writer.
    pub audit: crate::audit::Audit,
    /// Fleet mode's shipper and shared approval queue, when `[fleet]` is set.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Identities, connections and credentials; swapped whole on reload.
    policy: arc_swap::ArcSwap<Policy>,
    limits: Limits,
    /// What upstreams negotiated lately, so most job handshakes need no
    /// upstream connection.
    negotiated: upstream::Negotiations,
    /// Server configs by the ALPN protocol mirrored from the upstream.
    server_h2: Arc<ServerConfig>,
    server_h1: Arc<ServerConfig>,
    server_none: Arc<ServerConfig>,
}

#[derive(Debug)]
struct SniResolver(Arc<Leaves>, Option<LeafName>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = match hello.server_name() {
            Some(sni) => LeafName::Dns(sni.to_string()),
            None => self.1.clone()?,
        };
        self.0
            .get(&name)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot mint a leaf"))
            .ok()
    }
}

/// What the gateway uses but does not own: the services beside the data
/// path and the CA, started by the daemon.
pub struct Services {
    pub ca: Arc<Ca>,
    pub approvals: Arc<crate::approval::Approvals>,
    pub audit: crate::audit::Audit,
    /// Fleet mode's parts, when `[fleet]` is set.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl Gateway {
    pub fn new(
        cfg: Arc<Config>,
        phases: SharedPhases,
        policy: Policy,
        services: Services,
    ) -> Result<Self, crate::tls::TlsError> {
        let Services {
            ca,
            approvals,
            audit,
            fleet,
        } = services;
        let leaves = Arc::new(Leaves::new(ca.clone())?);
        let upstream_tls = UpstreamTls::new(&cfg.tls.upstream_ca_files)?;
        let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, crate::tls::TlsError> {
            let mut c = ServerConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(SniResolver(leaves.clone(), None)));
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(c))
        };
        let mut own = own_services(&cfg);
        if let Some(f) = &fleet {
            own.extend(f.server.iter().map(|a| (*a, "fleet database")));
        }
        let limits = Limits {
            egress: crate::egress::Egress::new(&cfg.egress.allow, own, crate::addr::local_ips()),
            connect_timeout: cfg.connect_timeout(),
            response_timeout: Duration::from_millis(cfg.daemon.response_timeout_ms),
        };
        Ok(Self {
            limits,
            negotiated: upstream::Negotiations::new(),
            server_h2: server(&[tls::H2])?,
            server_h1: server(&[tls::HTTP11])?,
            server_none: server(&[])?,
            cfg,
            ca,
            leaves,
            upstream_tls,
            phases,
            approvals,
            audit,
            fleet,
            metrics: Default::default(),
            policy: arc_swap::ArcSwap::from_pointee(policy),
        })
    }

    /// The policy in force now. Requests keep the one they started with.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Replaces the policy (reload); in-flight requests finish on the old.
    pub fn set_policy(&self, p: Policy) {
        self.policy.store(Arc::new(p));
    }

    /// The connection `flow`'s identity may use for `host:port`.
    pub fn route(
        &self,
        flow: &Flow,
        host: &str,
        port: u16,
    ) -> Result<Arc<Connection>, PipelineError> {
        let Some(identity) = &flow.identity else {
            return Err(PipelineError::NoIdentity {
                detail: match flow.via {
                    flow::Via::Transparent => format!(
                        "cgroup {} is neither a job started with a verified token nor matched by [[identity.static]]",
                        flow.cgroup_id
                    ),
                    _ => "the proxy client presented no valid token".into(),
                },
            });
        };
        let policy = self.policy();
        match policy.route(identity, host, port) {
            Ok(c) => Ok(c),
            // Observe mode: forwarded as it is, and recorded so.
            Err(why)
                if policy.observe.applies(
                    &identity.name,
                    flow.job.as_ref().is_some_and(|j| j.observe),
                    crate::jobs::Jobs::now_ms(),
                ) =>
            {
                Ok(Arc::new(policy.observing(&why)))
            }
            Err(why) => Err(PipelineError::NoRoute(why)),
        }
    }

    fn server_config(&self, alpn: Option<&[u8]>, no_sni_ip: Option<LeafName>) -> Arc<ServerConfig> {
        let shared = match alpn {
            Some(p) if p == tls::H2 => &self.server_h2,
            Some(_) => &self.server_h1,
            None => &self.server_none,
        };
        let Some(ip) = no_sni_ip else {
            return shared.clone();
        };
        // No SNI: the leaf is for the original IP, which the shared resolver
        // can't know; a per-connection config is rare and cheap enough.
        let mut c = (**shared).clone();
        c.cert_resolver = Arc::new(SniResolver(self.leaves.clone(), Some(ip)));
        Arc::new(c)
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where this daemon may dial.
    pub fn egress(&self) -> &crate::egress::Egress {
        &self.limits.egress
    }
}

/// Serves one job connection to its end, on record: the one path for the
/// transparent listener and the explicit proxy's tunnels. The connection is
/// live for `hoop status` while it runs; one that ends before or instead of
/// a request (raw TCP, a broken handshake, the job hanging up) is logged
/// and written to the audit log, with who ended it.
/// `live` is what [`admit`] gave it, and is held to the end.
pub async fn serve_recorded<IO>(
    gw: Arc<Gateway>,
    live: crate::jobs::ConnectionGuard,
    io: IO,
    flow: Arc<Flow>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _live = live;
    if let Err(e) = serve(gw.clone(), io, flow.clone()).await {
        record_refusal(&gw, &flow, Some(flow.orig_dst), &e);
    }
}

/// The daemon's own listeners: never dialled for a job.
fn own_services(cfg: &Config) -> Vec<(std::net::SocketAddr, &'static str)> {
    let c = &cfg.capture;
    let mut own = vec![
        ((c.listen4, c.listen_port).into(), "transparent listener"),
        ((c.listen6, c.listen_port).into(), "transparent listener"),
    ];
    own.extend(cfg.proxy.listen.iter().map(|l| (*l, "explicit proxy")));
    own.extend(cfg.console.listen.map(|l| (l, "approver console")));
    own.extend(cfg.metrics.addr().map(|l| (l, "metrics endpoint")));
    own
}

/// Counts a job connection against `[limits]` before it is served. One over
/// a cap is refused, logged and on record (reason `connection-limit`); the
/// caller closes it or answers. Other jobs' connections are not affected.
pub fn admit(
    gw: &Gateway,
    jobs: &Arc<crate::jobs::Jobs>,
    flow: &Flow,
) -> Result<crate::jobs::ConnectionGuard, PipelineError> {
    jobs.open_connection(
        crate::jobs::LiveConnection::of(flow),
        crate::jobs::owner_of(flow),
    )
    .map_err(|e| {
        let e = PipelineError::ConnectionLimit(e);
        record_refusal(gw, flow, Some(flow.orig_dst), &e);
        e
    })
}

/// A connection refused (or ended) before any request: logged, counted
/// when hoop refused it, and on record.
pub fn record_refusal(
    gw: &Gateway,
    flow: &Flow,
    dst: Option<std::net::SocketAddr>,
    e: &PipelineError,
) {
    let by = e.log_connection_end(flow.id);
    if by == error::EndedBy::Gateway {
        gw.metrics.connection_refused(e.reason());
    }
    gw.audit.record(crate::audit::Entry::of(
        &crate::audit::entry::ConnectDeniedData {
            session: crate::audit::entry::session_of(flow),
            job: flow.job_id().map(str::to_owned),
            cgroup_id: flow.cgroup_id,
            pid: flow.pid,
            dst: dst.map(|d| d.to_string()),
            reason: format!("{}: {e}", e.reason()),
            by: by.as_str().into(),
        },
    ));
}

/// Serves one job connection to its end. Errors toward the job have already
/// become responses; what returns here is for the log.
pub async fn serve<IO>(gw: Arc<Gateway>, io: IO, flow: Arc<Flow>) -> Result<(), PipelineError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    gw.metrics.connections.inc();
    let (kind, io) = sniff(io, gw.cfg.handshake_timeout()).await?;
    match kind {
        Kind::Tls => serve_tls(gw, io, flow).await,
        Kind::Http => {
            let up = UpstreamConn::new(flow.orig_dst, None, gw.limits());
            http::serve(gw, io, flow, up, false, http::Tls::Plain, None).await
        }
        Kind::H2c | Kind::Other | Kind::NeedMore => Err(PipelineError::BadRequest {
            detail: format!("not TLS or HTTP/1 (first bytes {kind:?}); raw TCP is refused"),
        }),
    }
}

/// Reads just enough to classify the connection, then rewinds.
async fn sniff<IO: AsyncRead + Unpin>(
    mut io: IO,
    timeout: Duration,
) -> Result<(Kind, Rewind<IO>), PipelineError> {
    let mut buf = Vec::with_capacity(MAX_SNIFF);
    let read = async {
        loop {
            let mut chunk = [0u8; MAX_SNIFF];
            let want = MAX_SNIFF - buf.len();
            let n = io.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Kind::NeedMore);
            }
            buf.extend_from_slice(&chunk[..n]);
            match classify(&buf) {
                Kind::NeedMore if buf.len() < MAX_SNIFF => continue,
                k => return Ok(k),
            }
        }
    };
    let kind = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| PipelineError::BadRequest {
            detail: "client sent nothing in time".into(),
        })?
        .map_err(|e| PipelineError::BadRequest {
            detail: e.to_string(),
        })?;
    Ok((kind, Rewind::new(buf.into(), io)))
}

async fn serve_tls<IO>(
    gw: Arc<Gateway>,
    io: Rewind<IO>,
    flow: Arc<Flow>,
) -> Result<(), PipelineError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let bad = |detail: String| PipelineError::BadRequest { detail };
    let start = tokio::time::timeout(
        gw.cfg.handshake_timeout(),
        LazyConfigAcceptor::new(Acceptor::default(), io),
    )
    .await
    .map_err(|_| bad("TLS ClientHello timed out".into()))?
    .map_err(|e| bad(format!("malformed TLS ClientHello: {e}")))?;
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let alpn: Vec<Vec<u8>> = hello
        .alpn()
        .map(|i| i.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();

    // The name the upstream must prove: the SNI, else the original IP.
    let tls_name = sni
        .clone()
        .unwrap_or_else(|| flow.orig_dst.ip().to_string());
    let (name, no_sni_leaf) = match &sni {
        Some(s) => {
            let dns = DnsName::try_from(s.as_str())
                .map_err(|_| bad(format!("invalid SNI {s:?}")))?
                .to_owned();
            (ServerName::DnsName(dns), None)
        }
        None => (
            ServerName::IpAddress(flow.orig_dst.ip().into()),
            Some(LeafName::Ip(flow.orig_dst.ip())),
        ),
    };
    // Policy first: nothing is dialled for a host the job may not reach;
    // the job still gets a TLS handshake, to read why.
    let route = gw.route(&flow, &tls_name, flow.orig_dst.port());
    let trust = match &route {
        Ok(c) => c.guard.upstream_tls.as_deref().unwrap_or(&gw.upstream_tls),
        Err(_) => &gw.upstream_tls,
    };
    let target = TlsTarget {
        name,
        config: trust.config_for(&alpn),
    };
    let up = UpstreamConn::new(flow.orig_dst, Some(target), gw.limits());
    // Upstream first: the job gets the protocol the upstream chose, as it
    // chose it lately for this offer (no upstream connection until a
    // request needs one), else as it chooses now. The dial at the first
    // request verifies the upstream's certificate either way.
    let seen = (flow.orig_dst, tls_name.clone(), alpn.clone());
    let pre = match &route {
        Ok(_) => match gw.negotiated.get(&seen) {
            Some(n) => Ok(n),
            None => up
                .predial()
                .await
                .inspect(|n| gw.negotiated.insert(seen, *n)),
        },
        Err(e) => Err(e.clone()),
    };
    let offered = |p: &[u8]| alpn.iter().any(|a| a == p);
    let job_alpn: Option<&[u8]> = match &pre {
        Ok(Negotiated::H2) => Some(tls::H2),
        Ok(Negotiated::H1 { alpn: true }) => Some(tls::HTTP11),
        Ok(Negotiated::H1 { alpn: false }) => None,
        // Still finish the handshake so the job reads why.
        Err(_) if offered(tls::HTTP11) => Some(tls::HTTP11),
        Err(_) if offered(tls::H2) => Some(tls::H2),
        Err(_) => None,
    };
    let config = gw.server_config(job_alpn, no_sni_leaf);
    let stream = tokio::time::timeout(gw.cfg.handshake_timeout(), start.into_stream(config))
        .await
        .map_err(|_| bad("TLS handshake with the job timed out".into()))?
        .map_err(|e| bad(format!("TLS handshake with the job failed: {e}")))?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(tls::H2);
    let tls = http::Tls::Verified {
        name: tls_name,
        route: route.ok(),
    };
    http::serve(gw, stream, flow, up, h2, tls, pre.err()).await
}

//! The no-op peer of `cargo xtask bench`: a TLS-intercepting proxy that does
//! what hoop's data path does, minus policy, identity and audit. Per job
//! connection it reads the ClientHello, dials the upstream with the job's
//! ALPN offer (h2, http/1.1) and verified TLS (against --upstream-ca), then
//! finishes the job's handshake with a leaf minted by its own CA (ECDSA
//! P-256, cached per name, as hoop's) for the protocol the upstream chose,
//! and relays HTTP/1.1 keep-alive or HTTP/2 over that one upstream
//! connection. hyper + rustls + rcgen: the crates hoop itself is built on.
//!
//!   hoop-noop-proxy --bind 127.0.0.1:0 --upstream-ca ca.pem [--reverse 127.0.0.2:8443]
//!
//! With --reverse it is the TLS server itself and relays every connection
//! to that upstream (for load tools that take no proxy: wrk, h2load);
//! without, it is an explicit proxy (CONNECT). Prints `listening ADDR` once
//! ready. Upstreams on loopback only.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::{body::Incoming, client, server, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    SanType,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, pem::PemObject},
    server::Acceptor,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A leaf name and the one ALPN protocol a job-side config offers.
type ServerKey = (String, Option<Vec<u8>>);

struct Peer {
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// One leaf key for the run, as hoop's.
    leaf_key: KeyPair,
    /// Job-side configs per (leaf name, ALPN), so each is minted once.
    servers: Mutex<HashMap<ServerKey, Arc<ServerConfig>>>,
    /// Upstream configs per ALPN offer, so session resumption is shared.
    clients: HashMap<Vec<Vec<u8>>, Arc<ClientConfig>>,
}

impl Peer {
    fn new(upstream_ca: &str) -> Result<Self> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "hoop-noop-proxy CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key)?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(upstream_ca)
            .with_context(|| format!("reading {upstream_ca}"))?
        {
            roots.add(c?)?;
        }
        let roots = Arc::new(roots);
        let mut clients = HashMap::new();
        for offer in [&[][..], &[H2], &[HTTP11], &[H2, HTTP11], &[HTTP11, H2]] {
            let mut c = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
            clients.insert(c.alpn_protocols.clone(), Arc::new(c));
        }
        Ok(Self {
            ca_der: ca.der().clone(),
            issuer: Issuer::new(p, ca_key),
            leaf_key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
            servers: Mutex::new(HashMap::new()),
            clients,
        })
    }

    /// The job-side config for `name`, offering only `alpn` (what the
    /// upstream chose).
    fn server(&self, name: &str, alpn: Option<&[u8]>) -> Result<Arc<ServerConfig>> {
        let key: ServerKey = (name.to_string(), alpn.map(<[u8]>::to_vec));
        if let Some(c) = self.servers.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = vec![match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.to_string().try_into()?),
        }];
        let leaf = p.signed_by(&self.leaf_key, &self.issuer)?;
        let chain = vec![leaf.der().clone(), self.ca_der.clone()];
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, der)?;
        c.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
        let c = Arc::new(c);
        self.servers.lock().unwrap().insert(key, c.clone());
        Ok(c)
    }

    /// One intercepted connection to `dst`: upstream first (its protocol is
    /// what the job gets), then the job's handshake, then the relay.
    async fn mitm<IO>(&self, io: IO, dst: SocketAddr) -> Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_owned);
        let mut offer: Vec<Vec<u8>> = Vec::new();
        for p in hello.alpn().into_iter().flatten() {
            if (p == H2 || p == HTTP11) && !offer.iter().any(|o| o == p) {
                offer.push(p.to_vec());
            }
        }
        let (name, leaf) = match sni {
            Some(s) => (ServerName::try_from(s.clone())?, s),
            None => (ServerName::IpAddress(dst.ip().into()), dst.ip().to_string()),
        };
        let tcp = TcpStream::connect(dst).await?;
        tcp.set_nodelay(true)?;
        let up = TlsConnector::from(self.clients[&offer].clone())
            .connect(name, tcp)
            .await
            .context("upstream TLS")?;
        let alpn = up.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let job = start
            .into_stream(self.server(&leaf, alpn.as_deref())?)
            .await?;
        let (job, up) = (TokioIo::new(job), TokioIo::new(up));
        if alpn.as_deref() == Some(H2) {
            let (send, conn) = client::conn::http2::handshake(TokioExecutor::new(), up).await?;
            tokio::spawn(conn);
            let svc = service_fn(move |req: Request<Incoming>| {
                let mut s = send.clone();
                async move { s.send_request(req).await }
            });
            server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(job, svc)
                .await?;
        } else {
            let (send, conn) = client::conn::http1::handshake(up).await?;
            tokio::spawn(conn);
            // HTTP/1.1 requests on one connection come one at a time.
            let send = Arc::new(tokio::sync::Mutex::new(send));
            let svc = service_fn(move |req: Request<Incoming>| {
                let s = send.clone();
                async move {
                    let mut s = s.lock().await;
                    s.ready().await?;
                    s.send_request(req).await
                }
            });
            server::conn::http1::Builder::new()
                .serve_connection(job, svc)
                .await?;
        }
        Ok(())
    }

    /// An explicit proxy connection: CONNECT, then the tunnel intercepted.
    async fn explicit(self: Arc<Self>, tcp: TcpStream) -> Result<()> {
        let svc = service_fn(move |req: Request<Incoming>| {
            let peer = self.clone();
            async move {
                let status = match connect_target(&req).await {
                    Ok(dst) => {
                        tokio::spawn(async move {
                            let r = match hyper::upgrade::on(req).await {
                                Ok(u) => peer.mitm(TokioIo::new(u), dst).await,
                                Err(e) => Err(e.into()),
                            };
                            if let Err(e) = r {
                                eprintln!("hoop-noop-proxy: {dst}: {e:#}");
                            }
                        });
                        StatusCode::OK
                    }
                    Err(e) => {
                        eprintln!("hoop-noop-proxy: refused {}: {e:#}", req.uri());
                        StatusCode::BAD_REQUEST
                    }
                };
                let mut r = Response::new(Empty::<Bytes>::new());
                *r.status_mut() = status;
                Ok::<_, hyper::Error>(r)
            }
        });
        server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades()
            .await?;
        Ok(())
    }
}

/// Where a CONNECT goes: resolved, and only to loopback.
async fn connect_target(req: &Request<Incoming>) -> Result<SocketAddr> {
    if req.method() != Method::CONNECT {
        bail!("only CONNECT is served");
    }
    let auth = req.uri().authority().context("CONNECT without host:port")?;
    let dst = tokio::net::lookup_host(auth.as_str())
        .await?
        .next()
        .context("no address")?;
    if !dst.ip().is_loopback() {
        bail!("{dst} is not loopback");
    }
    Ok(dst)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bind = get("--bind").unwrap_or_else(|| "127.0.0.1:0".into());
    let ca = get("--upstream-ca").context("--upstream-ca FILE is required")?;
    let reverse: Option<SocketAddr> = get("--reverse")
        .map(|r| r.parse().context("--reverse IP:PORT"))
        .transpose()?;
    if let Some(r) = reverse
        && !r.ip().is_loopback()
    {
        bail!("--reverse {r}: loopback only");
    }
    let peer = Arc::new(Peer::new(&ca)?);
    let listener = TcpListener::bind(&bind).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let peer = peer.clone();
        tokio::spawn(async move {
            let r = match reverse {
                Some(dst) => peer.mitm(tcp, dst).await,
                None => peer.explicit(tcp).await,
            };
            if let Err(e) = r {
                eprintln!("hoop-noop-proxy: {e:#}");
            }
        });
    }
}

//! The upstream side of one job connection: dialled to the original
//! destination (never re-resolved), TLS verified against the name the job
//! asked for, HTTP/1.1 or HTTP/2 as the upstream chose. Dialled when a
//! request needs it (or at the job's handshake, to learn the upstream's
//! protocol); kept for the job connection's next request until it closes
//! or the job connection is idle for `limits.upstream_idle_timeout_ms`.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderValue, Request, Response, Uri, Version, header, uri::PathAndQuery};
use hyper::{body::Incoming, client::conn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{PipelineError, body::Body};

/// Where and how long the daemon may dial.
pub struct Limits {
    pub egress: crate::egress::Egress,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

#[derive(Clone)]
pub struct TlsTarget {
    pub name: ServerName<'static>,
    pub config: Arc<ClientConfig>,
}

enum Sender {
    H1(conn::http1::SendRequest<Body>),
    H2(conn::http2::SendRequest<Body>),
}

impl Sender {
    fn usable(&self) -> bool {
        match self {
            Self::H1(s) => !s.is_closed(),
            Self::H2(s) => !s.is_closed(),
        }
    }
}

/// What a dial negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    H1 { alpn: bool },
    H2,
}

/// What an upstream negotiated for a job's ALPN offer, by destination, TLS
/// name and offer; kept a while and bounded. An upstream that changed its
/// mind meanwhile still works: requests are translated between HTTP/1.1
/// and HTTP/2 whichever side speaks which.
pub struct Negotiations(moka::sync::Cache<NegotiationKey, Negotiated>);

type NegotiationKey = (SocketAddr, String, Vec<Vec<u8>>);

impl Negotiations {
    pub fn new() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(300))
                .build(),
        )
    }

    pub fn get(&self, k: &NegotiationKey) -> Option<Negotiated> {
        self.0.get(k)
    }

    pub fn insert(&self, k: NegotiationKey, n: Negotiated) {
        self.0.insert(k, n)
    }
}

impl Default for Negotiations {
    fn default() -> Self {
        Self::new()
    }
}

pub struct UpstreamConn {
    pub dst: SocketAddr,
    pub tls: Option<TlsTarget>,
    idle: Mutex<Option<Sender>>,
    egress: crate::egress::Egress,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl UpstreamConn {
    pub fn new(dst: SocketAddr, tls: Option<TlsTarget>, limits: &Limits) -> Self {
        Self {
            dst,
            tls,
            idle: Mutex::new(None),
            egress: limits.egress.clone(),
            connect_timeout: limits.connect_timeout,
            response_timeout: limits.response_timeout,
        }
    }

    /// Dials now and keeps the connection for the first request; returns
    /// what was negotiated (the job side mirrors it).
    pub async fn predial(&self) -> Result<Negotiated, PipelineError> {
        let (sender, negotiated) = self.dial().await?;
        *self.idle.lock().unwrap() = Some(sender);
        Ok(negotiated)
    }

    /// Lets the kept upstream connection go (the job connection is idle);
    /// the next request dials anew.
    pub fn release(&self) {
        self.idle.lock().unwrap().take();
    }

    async fn dial(&self) -> Result<(Sender, Negotiated), PipelineError> {
        let dst = self.dst;
        self.egress.check(dst)?;
        let ms = self.connect_timeout.as_millis() as u64;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(dst))
            .await
            .map_err(|_| PipelineError::UpstreamConnectTimeout { dst, ms })?
            .map_err(|e| PipelineError::UpstreamConnect {
                dst,
                detail: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok((
                self.h1(TokioIo::new(tcp)).await?,
                Negotiated::H1 { alpn: false },
            ));
        };
        let name = server_name_str(&tls.name);
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(tls.config.clone()).connect(tls.name.clone(), tcp),
        )
        .await
        .map_err(|_| PipelineError::UpstreamConnectTimeout { dst, ms })?
        .map_err(|e| PipelineError::from_tls(dst, &name, &e))?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() == Some(crate::tls::H2) {
            let (s, c) = conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| PipelineError::UpstreamProtocol {
                    detail: e.to_string(),
                })?;
            tokio::spawn(async move {
                if let Err(e) = c.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
            });
            return Ok((Sender::H2(s), Negotiated::H2));
        }
        Ok((
            self.h1(TokioIo::new(stream)).await?,
            Negotiated::H1 {
                alpn: alpn.is_some(),
            },
        ))
    }

    async fn h1<IO>(&self, io: TokioIo<IO>) -> Result<Sender, PipelineError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (s, c) = conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| PipelineError::UpstreamProtocol {
                detail: e.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = c.with_upgrades().await {
                tracing::debug!(error = %e, "upstream h1 connection ended");
            }
        });
        Ok(Sender::H1(s))
    }

    /// Sends one request; the response head must arrive within the
    /// response timeout. `authority` is what the job addressed.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        authority: &str,
    ) -> Result<Response<Incoming>, PipelineError> {
        let idle = self.idle.lock().unwrap().take().filter(Sender::usable);
        let sender = match idle {
            Some(s) => s,
            None => self.dial().await?.0,
        };
        let timeout = self.response_timeout;
        let ms = timeout.as_millis() as u64;
        let proto = |e: hyper::Error| PipelineError::UpstreamProtocol {
            detail: e.to_string(),
        };
        match sender {
            Sender::H1(mut s) => {
                to_h1(&mut req, authority)?;
                let sent = async {
                    s.ready().await.map_err(proto)?;
                    s.send_request(req).await.map_err(proto)
                };
                let resp = tokio::time::timeout(timeout, sent)
                    .await
                    .map_err(|_| PipelineError::UpstreamResponseTimeout { ms })??;
                // Reusable once this response's body is done; `ready()` waits.
                if !s.is_closed() {
                    *self.idle.lock().unwrap() = Some(Sender::H1(s));
                }
                Ok(resp)
            }
            Sender::H2(s) => {
                let mut s2 = s.clone();
                *self.idle.lock().unwrap() = Some(Sender::H2(s));
                to_h2(&mut req, authority, self.tls.is_some())?;
                let sent = async {
                    s2.ready().await.map_err(proto)?;
                    s2.send_request(req).await.map_err(proto)
                };
                tokio::time::timeout(timeout, sent)
                    .await
                    .map_err(|_| PipelineError::UpstreamResponseTimeout { ms })?
            }
        }
    }
}

fn server_name_str(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "?".into(),
    }
}

fn bad(detail: impl Into<String>) -> PipelineError {
    PipelineError::BadRequest {
        detail: detail.into(),
    }
}

/// HTTP/1.1 upstream: origin-form target and exactly one Host header, the
/// request's canonical authority (whatever the job wrote was checked
/// against it, and is replaced).
fn to_h1(req: &mut Request<Body>, authority: &str) -> Result<(), PipelineError> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
    let v = HeaderValue::from_str(authority).map_err(|_| bad("invalid authority"))?;
    req.headers_mut().insert(header::HOST, v);
    Ok(())
}

/// HTTP/2 upstream: absolute target (becomes :scheme/:authority), no Host.
fn to_h2(req: &mut Request<Body>, authority: &str, tls: bool) -> Result<(), PipelineError> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri = format!(
        "{}://{}{}",
        if tls { "https" } else { "http" },
        authority,
        pq
    );
    *req.uri_mut() = uri.parse().map_err(|_| bad("invalid request target"))?;
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut().remove(header::HOST);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::body::empty;

    #[test]
    fn targets_are_rewritten_for_the_upstream_protocol() {
        let mut r = Request::get("https://api.test/v1?x=1")
            .version(Version::HTTP_2)
            .body(empty())
            .unwrap();
        to_h1(&mut r, "api.test").unwrap();
        assert_eq!(r.uri(), "/v1?x=1");
        assert_eq!(r.headers()[header::HOST], "api.test");

        let mut r = Request::get("https://api.test/v1")
            .header(header::HOST, "Other.Test")
            .body(empty())
            .unwrap();
        to_h1(&mut r, "api.test").unwrap();
        assert_eq!(r.headers().get_all(header::HOST).iter().count(), 1);
        assert_eq!(r.headers()[header::HOST], "api.test");

        let mut r = Request::get("/v1")
            .header(header::HOST, "api.test:8443")
            .body(empty())
            .unwrap();
        to_h2(&mut r, "api.test:8443", true).unwrap();
        assert_eq!(r.uri(), "https://api.test:8443/v1");
        assert!(!r.headers().contains_key(header::HOST));
    }
}

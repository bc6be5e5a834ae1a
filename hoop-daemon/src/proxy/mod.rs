//! The explicit proxy listener, for clients configured with a proxy and for
//! hosts without eBPF: HTTP CONNECT, absolute-URI HTTP, and SOCKS5. Each
//! feeds the same pipeline as a captured connection.
pub mod socks5;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{Method, Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    flow::{Flow, Via},
    identity::Identity,
    jobs::Jobs,
    pipeline::{
        self, Gateway, PipelineError, Rewind,
        body::Body,
        error::respond,
        timeouts::{Expired, GRACE, Timeouts, Watch},
    },
};
use socks5::{Reply, Socks5Error, Target};

/// Why a SOCKS5 client got no tunnel.
#[derive(Debug, thiserror::Error)]
enum SocksFailure {
    #[error("SOCKS5: {0}")]
    Protocol(#[from] Socks5Error),
    #[error("SOCKS5 handshake too long")]
    TooLong,
    #[error("client closed during the SOCKS5 handshake")]
    Closed,
    #[error("SOCKS5 handshake timed out")]
    TimedOut,
    #[error("SOCKS5: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "no acceptable authentication method offered: use username/password with the OIDC token as password"
    )]
    NoAcceptableMethod,
    /// Refused by hoop (identity, resolution, egress): the job's answer.
    #[error(transparent)]
    Refused(#[from] PipelineError),
    /// Refused by admission, already on record.
    #[error("over a connection limit")]
    Admitted,
}

/// Who is on the other end of a proxy connection, as far as we know.
#[derive(Clone)]
pub struct Client {
    pub peer: SocketAddr,
    /// Set when a captured job used the proxy (its kernel record).
    pub captured: Option<Arc<Flow>>,
}

pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut v = Vec::new();
    for a in addrs {
        v.push(crate::addr::bind("proxy", *a).await?);
    }
    Ok(v)
}

pub fn spawn(listeners: Vec<TcpListener>, gw: Arc<Gateway>, jobs: Arc<Jobs>) {
    for l in listeners {
        let (gw, jobs) = (gw.clone(), jobs.clone());
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, peer)) => {
                        let _ = s.set_nodelay(true);
                        let (gw, jobs) = (gw.clone(), jobs.clone());
                        tokio::spawn(serve(
                            gw,
                            jobs,
                            s,
                            Client {
                                peer,
                                captured: None,
                            },
                        ));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "proxy accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
}

/// Serves one proxy client connection: SOCKS5 if it starts with version 5,
/// else HTTP.
pub async fn serve<IO>(gw: Arc<Gateway>, jobs: Arc<Jobs>, mut io: IO, client: Client)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    let Ok(Ok(1)) = tokio::time::timeout(gw.cfg.handshake_timeout(), io.read(&mut first)).await
    else {
        return;
    };
    let io = Rewind::new(bytes::Bytes::copy_from_slice(&first), io);
    let client_peer = client.peer;
    if first[0] == socks5::VERSION {
        match serve_socks5(gw.clone(), jobs, io, client.clone()).await {
            Ok(()) | Err(SocksFailure::Admitted) => {}
            Err(e) => {
                tracing::warn!(peer = %client.peer, error = %e, "SOCKS5 client refused");
                let e = match e {
                    SocksFailure::Refused(e) => e,
                    other => PipelineError::BadRequest {
                        detail: other.to_string(),
                    },
                };
                refuse(&gw, &client, Via::Socks5, None, e);
            }
        }
        return;
    }
    // The proxy's own requests (CONNECT, absolute-URI) get the same head
    // and idle limits as the job connections behind them.
    let t = Timeouts::of(&gw.cfg);
    let watch = Watch::new(true);
    let svc = {
        let watch = watch.clone();
        service_fn(move |req| {
            let (gw, jobs, client) = (gw.clone(), jobs.clone(), client.clone());
            let active = watch.enter();
            async move {
                let resp = http_proxy(gw, jobs, client, req).await;
                Ok::<_, Infallible>(resp.map(|b| active.hold(b)))
            }
        })
    };
    let c = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(watch.io(io)), svc)
        .with_upgrades();
    tokio::pin!(c);
    let r = tokio::select! {
        r = c.as_mut() => r,
        e = watch.expired(t, || {}) => {
            if e == Expired::Idle {
                c.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GRACE, c).await;
            } else {
                tracing::info!(peer = %client_peer, "proxy client sent no whole request head in time; closed");
            }
            return;
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "proxy client connection ended");
    }
}

/// Who a proxy client is: a captured job is who its cgroup says; anyone
/// else proves it with an OIDC token: Proxy-Authorization Bearer, or
/// username and password concatenated (Basic, SOCKS5: RFC 1929 caps each
/// at 255 bytes, so a long token is split across the two).
async fn identify(
    gw: &Gateway,
    client: &Client,
    token: Option<&str>,
) -> Result<Option<Arc<Identity>>, PipelineError> {
    if let Some(f) = &client.captured {
        return Ok(f.identity.clone());
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(PipelineError::ProxyAuth {
            detail: "send an OIDC token: Proxy-Authorization: Bearer <token>, or as username+password (Basic, SOCKS5)".into(),
        });
    };
    match gw.policy().issuers.verify(token).await {
        Ok(id) => Ok(Some(Arc::new(id))),
        Err(e) => {
            tracing::warn!(peer = %client.peer, reason = e.reason(), error = %e, "proxy token rejected");
            Err(PipelineError::ProxyAuth {
                detail: format!("token rejected: {e}"),
            })
        }
    }
}

/// The token in a Proxy-Authorization header.
fn proxy_token(req: &Request<Incoming>) -> Option<String> {
    use base64::Engine;
    let v = req
        .headers()
        .get(http::header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        // Username and password concatenated, as for SOCKS5.
        return s
            .split_once(':')
            .map(|(user, pass)| format!("{user}{pass}"));
    }
    None
}

fn new_flow(
    via: Via,
    dst: SocketAddr,
    host: Option<String>,
    client: &Client,
    identity: Option<Arc<Identity>>,
) -> Flow {
    let cap = client.captured.as_deref();
    Flow {
        id: Flow::next_id(),
        via,
        orig_dst: dst,
        target_host: host,
        peer: client.peer,
        pid: cap.map(|f| f.pid).unwrap_or(0),
        cgroup_id: cap.map(|f| f.cgroup_id).unwrap_or(0),
        exe: cap.and_then(|f| f.exe.clone()),
        job: cap.and_then(|f| f.job.clone()),
        identity,
    }
}

/// Resolves a proxy target. A literal IP is used as is.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, PipelineError> {
    if let Some(ip) = crate::addr::ip_literal(host) {
        return Ok(SocketAddr::new(ip, port));
    }
    let bare = crate::addr::unbracket(host);
    let err = |detail: String| PipelineError::Resolve {
        host: host.to_string(),
        detail,
    };
    tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

fn host_name(host: &str) -> Option<String> {
    crate::addr::ip_literal(host)
        .is_none()
        .then(|| crate::addr::unbracket(host).to_string())
}

async fn run_flow<IO>(gw: Arc<Gateway>, live: crate::jobs::ConnectionGuard, io: IO, flow: Arc<Flow>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::info!(
        flow = flow.id, via = flow.via.as_str(), orig_dst = %flow.orig_dst,
        host = flow.target_host.as_deref().unwrap_or("-"), peer = %flow.peer,
        identity = flow.identity_name(), "connection"
    );
    pipeline::serve_recorded(gw, live, io, flow).await;
}

/// A proxy client refused before it had a tunnel (no or a bad token, a
/// bad or unresolvable target, egress): logged, on record, and answered.
fn refuse(
    gw: &Gateway,
    client: &Client,
    via: Via,
    dst: Option<SocketAddr>,
    e: PipelineError,
) -> PipelineError {
    let flow = new_flow(
        via,
        dst.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        None,
        client,
        client.captured.as_ref().and_then(|f| f.identity.clone()),
    );
    pipeline::record_refusal(gw, &flow, dst, &e);
    e
}

async fn http_proxy(
    gw: Arc<Gateway>,
    jobs: Arc<Jobs>,
    client: Client,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let via = if req.method() == Method::CONNECT {
        Via::Connect
    } else {
        Via::ProxyHttp
    };
    let refused = |dst, e| respond(&refuse(&gw, &client, via, dst, e));
    let identity = match identify(&gw, &client, proxy_token(&req).as_deref()).await {
        Ok(i) => i,
        Err(e) => return refused(None, e),
    };
    if req.method() == Method::CONNECT {
        let Some(auth) = req.uri().authority().cloned() else {
            return refused(
                None,
                PipelineError::BadRequest {
                    detail: "CONNECT without host:port".into(),
                },
            );
        };
        let Some(port) = auth.port_u16() else {
            return refused(
                None,
                PipelineError::BadRequest {
                    detail: "CONNECT target needs a port".into(),
                },
            );
        };
        let dst = match resolve(auth.host(), port).await {
            Ok(d) => d,
            Err(e) => return refused(None, e),
        };
        if let Err(e) = gw.egress().check(dst) {
            return refused(Some(dst), e.into());
        }
        let flow = Arc::new(new_flow(
            Via::Connect,
            dst,
            host_name(auth.host()),
            &client,
            identity,
        ));
        // Over a cap: a 503 (connection-limit) instead of a tunnel.
        let live = match pipeline::admit(&gw, &jobs, &flow) {
            Ok(l) => l,
            Err(e) => return respond(&e),
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(up) => run_flow(gw, live, TokioIo::new(up), flow).await,
                Err(e) => tracing::debug!(error = %e, "CONNECT tunnel never opened"),
            }
        });
        return Response::new(pipeline::body::empty());
    }
    // Absolute-URI proxying of plain HTTP.
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("http") {
        let detail = format!(
            "not a proxy request: {} {} (use CONNECT for https)",
            req.method(),
            uri
        );
        return refused(None, PipelineError::BadRequest { detail });
    }
    let Some(auth) = uri.authority().cloned() else {
        return refused(
            None,
            PipelineError::BadRequest {
                detail: "absolute URI without a host".into(),
            },
        );
    };
    let dst = match resolve(auth.host(), auth.port_u16().unwrap_or(80)).await {
        Ok(d) => d,
        Err(e) => return refused(None, e),
    };
    let flow = Arc::new(new_flow(
        Via::ProxyHttp,
        dst,
        host_name(auth.host()),
        &client,
        identity,
    ));
    let _live = match pipeline::admit(&gw, &jobs, &flow) {
        Ok(l) => l,
        Err(e) => return respond(&e),
    };
    pipeline::forward_plain(gw, flow, req).await
}

async fn serve_socks5<IO>(
    gw: Arc<Gateway>,
    jobs: Arc<Jobs>,
    mut io: IO,
    client: Client,
) -> Result<(), SocksFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = gw.cfg.handshake_timeout();
    let mut buf = Vec::new();
    let (methods, used) = read_parsed(&mut io, &mut buf, socks5::parse_greeting, timeout).await?;
    buf.drain(..used);
    let identity = if client.captured.is_some() && methods.contains(&socks5::NO_AUTH) {
        io.write_all(&[socks5::VERSION, socks5::NO_AUTH]).await?;
        identify(&gw, &client, None).await?
    } else if methods.contains(&socks5::USER_PASS) {
        io.write_all(&[socks5::VERSION, socks5::USER_PASS]).await?;
        // RFC 1929 caps each field at 255 bytes, shorter than most JWTs:
        // the token is username and password concatenated (a short token
        // may sit in the password alone).
        let ((user, pass), used) =
            read_parsed(&mut io, &mut buf, socks5::parse_user_pass, timeout).await?;
        buf.drain(..used);
        let token = format!("{user}{pass}");
        match identify(&gw, &client, Some(&token)).await {
            Ok(i) => {
                io.write_all(&[1, 0]).await?;
                i
            }
            Err(e) => {
                io.write_all(&[1, 1]).await?;
                return Err(e.into());
            }
        }
    } else {
        io.write_all(&[socks5::VERSION, socks5::NO_ACCEPTABLE])
            .await?;
        return Err(SocksFailure::NoAcceptableMethod);
    };
    let (target, used) = match read_parsed(&mut io, &mut buf, socks5::parse_request, timeout).await
    {
        Ok(x) => x,
        Err(e) => {
            let r = match &e {
                SocksFailure::Protocol(p) => p.reply(),
                _ => Reply::GeneralFailure,
            };
            let _ = io.write_all(&socks5::reply(r)).await;
            return Err(e);
        }
    };
    buf.drain(..used);
    let (dst, host) = match target {
        Target::Ip(a) => (a, None),
        Target::Domain(h, p) => match resolve(&h, p).await {
            Ok(a) => (a, Some(h)),
            Err(e) => {
                io.write_all(&socks5::reply(Reply::HostUnreachable)).await?;
                return Err(e.into());
            }
        },
    };
    if let Err(e) = gw.egress().check(dst) {
        io.write_all(&socks5::reply(Reply::NotAllowed)).await?;
        return Err(PipelineError::from(e).into());
    }
    let flow = Arc::new(new_flow(Via::Socks5, dst, host, &client, identity));
    let Ok(live) = pipeline::admit(&gw, &jobs, &flow) else {
        io.write_all(&socks5::reply(Reply::GeneralFailure)).await?;
        return Err(SocksFailure::Admitted);
    };
    io.write_all(&socks5::reply(Reply::Succeeded)).await?;
    // Bytes the client pipelined after the request belong to the tunnel.
    run_flow(gw, live, Rewind::new(buf.into(), io), flow).await;
    Ok(())
}

async fn read_parsed<IO, T>(
    io: &mut IO,
    buf: &mut Vec<u8>,
    parse: fn(&[u8]) -> socks5::Parsed<T>,
    timeout: std::time::Duration,
) -> Result<(T, usize), SocksFailure>
where
    IO: AsyncRead + Unpin,
{
    let read = async {
        loop {
            if let Some(x) = parse(buf)? {
                return Ok(x);
            }
            if buf.len() > 1024 {
                return Err(SocksFailure::TooLong);
            }
            let mut chunk = [0u8; 512];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(SocksFailure::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| SocksFailure::TimedOut)?
}

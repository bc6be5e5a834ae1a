//! The daemon's own outbound HTTP calls: OIDC discovery and JWKS (GET,
//! https only) and approval webhooks (POST). Verified TLS, a deadline and
//! a size cap, nothing else. The daemon runs outside the job cgroups, so
//! these requests are not redirected back into itself.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const MAX_BODY: usize = 1 << 20;

/// GET over https only (OIDC documents must come over verified TLS).
pub async fn get(url: &str, tls: &Arc<ClientConfig>, timeout: Duration) -> Result<Bytes, String> {
    if !url.starts_with("https://") {
        return Err(format!("GET {url}: only https:// is fetched"));
    }
    call(url, tls, timeout, None).await
}

/// POST a JSON body (http:// allowed: a webhook on loopback carries no
/// secret).
pub async fn post_json(
    url: &str,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
    body: Vec<u8>,
) -> Result<Bytes, String> {
    call(url, tls, timeout, Some(body)).await
}

async fn call(
    url: &str,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
    body: Option<Vec<u8>>,
) -> Result<Bytes, String> {
    let what = if body.is_some() { "POST" } else { "GET" };
    tokio::time::timeout(timeout, call_inner(url, tls, body))
        .await
        .map_err(|_| format!("{what} {url}: no answer within {} ms", timeout.as_millis()))?
        .map_err(|e| format!("{what} {url}: {e}"))
}

async fn call_inner(
    url: &str,
    tls: &Arc<ClientConfig>,
    body: Option<Vec<u8>>,
) -> Result<Bytes, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("only http:// and https:// URLs".into()),
    };
    let host = uri.host().map(crate::addr::unbracket).ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let builder = match &body {
        Some(_) => Request::post(path).header(header::CONTENT_TYPE, "application/json"),
        None => Request::get(path).header(header::ACCEPT, "application/json"),
    }
    .header(header::HOST, authority)
    .header(
        header::USER_AGENT,
        concat!("hoop/", env!("CARGO_PKG_VERSION")),
    );
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let stream = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(stream, req).await?
    } else {
        send(tcp, req).await?
    };
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("body: {e} (limit {MAX_BODY} bytes)"))
}

async fn send<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    send.send_request(req).await.map_err(|e| e.to_string())
}

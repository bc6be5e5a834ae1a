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

/// A call that failed, with its method and URL.
#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {failure}")]
pub struct CallError {
    pub method: &'static str,
    pub url: String,
    pub failure: Failure,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("only https:// is fetched")]
    NotHttps,
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("bad URL: {0}")]
    Url(#[from] http::uri::InvalidUri),
    #[error("only http:// and https:// URLs")]
    Scheme,
    #[error("no host")]
    NoHost,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("not a TLS server name: {0}")]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("body: {0} (limit {MAX_BODY} bytes)")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// GET over https only (OIDC documents must come over verified TLS).
pub async fn get(
    url: &str,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Bytes, CallError> {
    if !url.starts_with("https://") {
        return Err(CallError {
            method: "GET",
            url: url.into(),
            failure: Failure::NotHttps,
        });
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
) -> Result<Bytes, CallError> {
    call(url, tls, timeout, Some(body)).await
}

async fn call(
    url: &str,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
    body: Option<Vec<u8>>,
) -> Result<Bytes, CallError> {
    let method = if body.is_some() { "POST" } else { "GET" };
    tokio::time::timeout(timeout, call_inner(url, tls, body))
        .await
        .unwrap_or(Err(Failure::Timeout(timeout.as_millis())))
        .map_err(|failure| CallError {
            method,
            url: url.into(),
            failure,
        })
}

async fn call_inner(
    url: &str,
    tls: &Arc<ClientConfig>,
    body: Option<Vec<u8>>,
) -> Result<Bytes, Failure> {
    let uri: Uri = url.parse()?;
    let builder = match &body {
        Some(_) => Request::post("/").header(header::CONTENT_TYPE, "application/json"),
        None => Request::get("/").header(header::ACCEPT, "application/json"),
    };
    let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = roundtrip(&uri, req, tls).await?;
    if !resp.status().is_success() {
        return Err(Failure::Status(resp.status()));
    }
    collect(resp).await
}

/// Sends `req` as it is (https only) and returns the answer whatever its
/// status: for a library that reads error bodies itself (the console's
/// OAuth token exchange).
pub async fn exchange(
    req: Request<Vec<u8>>,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<http::Response<Vec<u8>>, CallError> {
    let url = req.uri().to_string();
    let method = if req.method() == http::Method::POST {
        "POST"
    } else {
        "GET"
    };
    let fail = |failure| CallError {
        method,
        url: url.clone(),
        failure,
    };
    if req.uri().scheme_str() != Some("https") {
        return Err(fail(Failure::NotHttps));
    }
    let uri = req.uri().clone();
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, Full::new(Bytes::from(body)));
    let run = async {
        let resp = roundtrip(&uri, req, tls).await?;
        let (parts, body) = resp.into_parts();
        let body = collect(http::Response::new(body)).await?;
        Ok(http::Response::from_parts(parts, body.to_vec()))
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(Failure::Timeout(timeout.as_millis())))
        .map_err(fail)
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes, Failure> {
    Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(Failure::Body)
}

/// Connects to `uri`'s host (TLS for https, verified with `tls`) and sends
/// `req` there, its target rewritten to origin form with a Host header.
async fn roundtrip(
    uri: &Uri,
    mut req: Request<Full<Bytes>>,
    tls: &Arc<ClientConfig>,
) -> Result<http::Response<hyper::body::Incoming>, Failure> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(Failure::Scheme),
    };
    let host = uri
        .host()
        .map(crate::addr::unbracket)
        .ok_or(Failure::NoHost)?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(Failure::Connect)?;
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = path.parse()?;
    let h = req.headers_mut();
    h.insert(
        header::HOST,
        http::HeaderValue::from_str(&authority).map_err(|_| Failure::NoHost)?,
    );
    h.insert(
        header::USER_AGENT,
        http::HeaderValue::from_static(concat!("hoop/", env!("CARGO_PKG_VERSION"))),
    );
    if https {
        let name = ServerName::try_from(host.to_string())?;
        let stream = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(Failure::Tls)?;
        send(stream, req).await
    } else {
        send(tcp, req).await
    }
}

async fn send<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, Failure>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send.send_request(req).await?)
}

//! A real origin server: TLS (or plain), h1 and h2, and these routes:
//!
//! | route | answers |
//! |---|---|
//! | `/hello` | `hello from origin <addr>` |
//! | `/echo` | JSON of the request: method, path, headers, body |
//! | `/reflect` | the request's Authorization in a response header |
//! | `/reflect-encoded` | its Authorization (or `?h=` header) in every [`crate::leak::forms`] encoding: headers, JSON body, trailers |
//! | `/stacked?ce=…` | the request's Authorization, gzipped per `ce` (`gzip,gzip`; `;` separates fields), labelled `ce` |
//! | `/bytes/N` | N bytes streamed in 64 KiB chunks (chunked in h1) |
//! | `/chunked` | three chunks with pauses between them |
//! | `/hang` | never answers |
//! | `/ws` | WebSocket echo |
//! | `/ws/leak` | WebSocket: first the upgrade's Authorization (text, fragmented text, binary) and a card number in JSON, then echo |
//! | `/ws/deflate` | a WebSocket switch that names `permessage-deflate` whatever was offered |
//! | `/ws/rsv` | WebSocket: a first frame with RSV1 set (as a compressed one is), then echo |
//! | `/switch?to=P` | `101 Switching Protocols` to `P` (default h2c), whatever was asked |
//! | `/page` | an HTML page that fetch()es `/data.json` into the DOM |
//! | `/data.json` | a small JSON document |
//! | `/cards.json?enc=…` | JSON with cards, e-mail, a secret; optionally compressed |
//! | `/big.json/N` | about N MiB of JSON records with card numbers |
//! | `/console`, `/v1/…` | the seed scenario's partner, see [`crate::seed`] |
//! | `/learn`, `/assets/logo.png`, `/assets/font.ttf` | the learn suite's page and the assets it loads from a second host |
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone, Default)]
pub struct OriginOpts {
    /// TLS config; None serves plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// IPv4 address to bind (port 0 picks one).
    pub bind: Option<SocketAddr>,
    /// Also listen on [::1] with the same port.
    pub also_v6: bool,
}

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    hits: AtomicUsize,
    connections: AtomicUsize,
    /// Connections open now.
    open: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    _rt: Option<tokio::runtime::Runtime>,
}

impl Origin {
    /// Starts on the current tokio runtime.
    pub async fn start(opts: OriginOpts) -> Self {
        let state = Arc::new(State::default());
        let addr = listen(&opts, state.clone()).await;
        Self {
            addr,
            state,
            _rt: None,
        }
    }

    /// Starts on a runtime of its own (for synchronous tests), one worker.
    pub fn start_background(opts: OriginOpts) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(State::default());
        let addr = rt.block_on(listen(&opts, state.clone()));
        Self {
            addr,
            state,
            _rt: Some(rt),
        }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now (accepted and not yet ended).
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn listen(opts: &OriginOpts, state: Arc<State>) -> SocketAddr {
    let bind = opts.bind.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    let (l4, l6) = loop {
        let l4 = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        if !opts.also_v6 {
            break (l4, None);
        }
        let port = l4.local_addr().unwrap().port();
        match TcpListener::bind(("::1", port)).await {
            Ok(l6) => break (l4, Some(l6)),
            Err(_) if bind.port() == 0 => continue,
            Err(e) => panic!("bind [::1]:{port}: {e}"),
        }
    };
    let addr = l4.local_addr().unwrap();
    for l in std::iter::once(l4).chain(l6) {
        let (tls, state) = (opts.tls.clone().map(TlsAcceptor::from), state.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                state.connections.fetch_add(1, Ordering::SeqCst);
                state.open.fetch_add(1, Ordering::SeqCst);
                let (tls, state) = (tls.clone(), state.clone());
                tokio::spawn(async move {
                    let _open = Open(state.clone());
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(s).await {
                                serve(TokioIo::new(s), state, addr).await
                            }
                        }
                        None => serve(TokioIo::new(s), state, addr).await,
                    }
                });
            }
        });
    }
    addr
}

/// Counts a connection open until it ends.
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve<IO>(io: IO, state: Arc<State>, addr: SocketAddr)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, state, addr).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, svc)
        .await;
}

/// The whole request body (empty if it broke off).
async fn body_of(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn text(status: StatusCode, b: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(b));
    *r.status_mut() = status;
    r
}

async fn route(mut req: Request<Incoming>, state: Arc<State>, addr: SocketAddr) -> Response<Body> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    state.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.uri().to_string(),
        version: format!("{:?}", req.version()),
        headers: headers.clone(),
    });
    if path == "/console" || path.starts_with("/v1/") {
        let method = req.method().clone();
        let body = body_of(req).await;
        return match crate::seed::route(&method, &path, &headers, &body) {
            Some((status, content_type, b)) => {
                let mut r = text(status, b);
                crate::seed::decorate(r.headers_mut(), content_type);
                r
            }
            None => text(StatusCode::NOT_FOUND, "no such route\n"),
        };
    }
    match path.as_str() {
        "/hello" => text(StatusCode::OK, format!("hello from origin {addr}\n")),
        "/echo" => {
            let method = req.method().to_string();
            let version = format!("{:?}", req.version());
            let body = body_of(req).await;
            let h: serde_json::Map<String, serde_json::Value> = headers
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let j = serde_json::json!({
                "method": method, "path": path, "version": version, "headers": h,
                "body": String::from_utf8_lossy(&body),
            });
            let mut r = text(StatusCode::OK, j.to_string());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        // Hands the request's Authorization back in a response header.
        "/reflect" => {
            let auth = headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let mut r = text(StatusCode::OK, "reflected\n");
            if let Ok(v) = HeaderValue::from_str(&auth) {
                r.headers_mut().insert("x-reflected-authorization", v);
            }
            r
        }
        "/reflect-encoded" => reflect_encoded(req.uri().query().unwrap_or(""), &headers),
        "/stacked" => stacked(req.uri().query().unwrap_or(""), &headers),
        "/chunked" => {
            let s = stream::iter(0..3).then(|i| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!(
                    "chunk {i}\n"
                ))))
            });
            Response::new(StreamBody::new(s).boxed_unsync())
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            text(StatusCode::OK, "too late")
        }
        "/ws" => websocket(&mut req, Ws::Echo),
        "/ws/leak" => websocket(&mut req, Ws::Leak),
        "/ws/deflate" => websocket(&mut req, Ws::Deflate),
        "/ws/rsv" => websocket(&mut req, Ws::Rsv),
        "/switch" => switch(req.uri().query().unwrap_or("")),
        // The learn suite: a page, and the assets it loads from a second
        // host (the font cross-origin, so with CORS).
        "/learn" => {
            let mut r = text(StatusCode::OK, crate::seed::LEARN);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        }
        "/assets/logo.png" => {
            let mut r = text(StatusCode::OK, &crate::seed::LOGO_PNG[..]);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
            r
        }
        "/assets/font.ttf" => match std::fs::read(crate::seed::FONT_FILE) {
            Ok(font) => {
                let mut r = text(StatusCode::OK, font);
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("font/ttf"));
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                r
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: {e}\n", crate::seed::FONT_FILE),
            ),
        },
        "/page" => {
            let mut r = text(StatusCode::OK, PAGE);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        }
        "/data.json" => {
            let mut r = text(StatusCode::OK, r#"{"partner":"acme","items":[1,2,3]}"#);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        "/cards.json" => cards(req.uri().query().unwrap_or("")),
        p if p.starts_with("/big.json/") => match p[10..].parse::<usize>() {
            Ok(mib) => big_json(mib),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad size"),
        },
        p if p.starts_with("/bytes/") => match p[7..].parse::<u64>() {
            Ok(n) => stream_bytes(n),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad size"),
        },
        _ => text(StatusCode::NOT_FOUND, "no such route\n"),
    }
}

/// The value of the request header `?h=` names (Authorization if none).
fn header_of(query: &str, headers: &[(String, String)]) -> String {
    let name = query
        .split('&')
        .find_map(|p| p.strip_prefix("h="))
        .unwrap_or("authorization")
        .to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The forms the encoded echo hands back: of the whole header value, and of
/// what follows its first space (an `Authorization` value's token).
pub fn reflected_forms(value: &str) -> Vec<(String, String)> {
    let token = value.split_once(' ').map_or(value, |(_, t)| t);
    let mut forms = crate::leak::forms(value);
    forms.extend(
        crate::leak::forms(token)
            .into_iter()
            .map(|(n, f)| (format!("token-{n}"), f)),
    );
    forms
}

/// An echo that hands a credential back in every encoding, in response
/// headers (`x-echo-<form>`), in a JSON body (`{"<form>":"…"}`, written
/// as is, in two chunks) and in trailers (`x-trailer-<form>`; HTTP/2, or
/// HTTP/1.1 when the request said `TE: trailers`).
fn reflect_encoded(query: &str, headers: &[(String, String)]) -> Response<Body> {
    let forms = reflected_forms(&header_of(query, headers));
    let body: Vec<String> = forms
        .iter()
        .map(|(n, f)| format!("\"{n}\":\"{f}\""))
        .collect();
    let body = format!("{{{}}}", body.join(",\n"));
    let mut trailers = http::HeaderMap::new();
    for (n, f) in &forms {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(format!("x-trailer-{n}")),
            HeaderValue::from_str(f),
        ) {
            trailers.insert(k, v);
        }
    }
    // HTTP/1.1 sends only the trailers the head announces.
    let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
    let announce = HeaderValue::from_str(&names.join(", ")).unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    let frames = vec![
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(a.to_string()))),
        Ok(hyper::body::Frame::data(Bytes::from(b.to_string()))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let mut r = Response::new(StreamBody::new(stream::iter(frames)).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::TRAILER, announce);
    for (n, f) in &forms {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(format!("x-echo-{n}")),
            HeaderValue::from_str(f),
        ) {
            h.insert(k, v);
        }
    }
    r
}

/// The request's credential header gzipped once per `gzip` in `ce`, and
/// labelled with `ce` as given: commas within one Content-Encoding field,
/// `;` between fields (`identity;gzip` is two fields).
fn stacked(query: &str, headers: &[(String, String)]) -> Response<Body> {
    let ce = query
        .split('&')
        .find_map(|p| p.strip_prefix("ce="))
        .unwrap_or("gzip");
    let mut body = header_of(query, headers).into_bytes();
    for c in ce.split([';', ',']).map(str::trim) {
        if c == "gzip" {
            body = crate::encode("gzip", &body);
        }
    }
    let mut r = text(StatusCode::OK, body);
    // `te=1` names the codings as transfer codings instead (hyper adds
    // the final `chunked`).
    let field = match query.split('&').any(|p| p == "te=1") {
        true => header::TRANSFER_ENCODING,
        false => header::CONTENT_ENCODING,
    };
    for value in ce.split(';') {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().append(&field, v);
        }
    }
    r
}

/// A partner API answer full of sensitive fields; `?enc=gzip|deflate|br|zstd`
/// compresses it, and a header carries an AWS key.
pub const CARDS_JSON: &str = r#"{"customer":{"name":"Ann Lee","email":"ann@example.com","api_secret":"s3cr3t-value"},"cards":[{"number":"4111111111111111","exp":"12/29"},{"number":"5500 0000 0000 0004","exp":"01/30"}],"order":"4111111111111112","note":"call 555 0100"}"#;

fn cards(query: &str) -> Response<Body> {
    let enc = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("enc="))
        .unwrap_or("identity");
    let body = crate::encode(enc, CARDS_JSON.as_bytes());
    let mut r = text(StatusCode::OK, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if enc != "identity" {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_str(enc).unwrap(),
        );
    }
    h.insert(
        "x-debug-key",
        HeaderValue::from_static("AKIAIOSFODNN7EXAMPLE"),
    );
    r
}

/// About `mib` MiB of JSON records with card numbers, streamed.
fn big_json(mib: usize) -> Response<Body> {
    // Each record is padded to 128 bytes (with its comma): 8192 make a MiB.
    let chunk = |first: bool| {
        let mut s = String::with_capacity(1 << 20);
        for i in 0..8192 {
            let start = s.len();
            if !(first && i == 0) {
                s.push(',');
            }
            s.push_str(&format!(
                r#"{{"id":{i},"holder":"Customer {i:05}","card":"4111111111111111","email":"c{i}@example.com","amount":{}.{:02},"pad":""#,
                i * 7 % 1000,
                i % 100
            ));
            while s.len() - start < 126 {
                s.push('x');
            }
            s.push_str("\"}");
        }
        Bytes::from(s)
    };
    let frames = std::iter::once(Bytes::from_static(b"["))
        .chain((0..mib).map(move |n| chunk(n == 0)))
        .chain(std::iter::once(Bytes::from_static(b"]")))
        .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
    let mut r = Response::new(StreamBody::new(stream::iter(frames)).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

const PAGE: &str = r#"<!doctype html>
<html><head><title>partner</title></head><body>
<div id="status">loading</div>
<script>
fetch('/data.json').then(r => r.json()).then(j => {
  document.getElementById('status').textContent = 'partner=' + j.partner + ' items=' + j.items.length;
}).catch(e => { document.getElementById('status').textContent = 'error ' + e; });
</script>
</body></html>
"#;

static ZEROES: [u8; 65536] = [b'x'; 65536];

fn stream_bytes(n: u64) -> Response<Body> {
    let s = stream::unfold(n, |left| async move {
        if left == 0 {
            return None;
        }
        let k = left.min(ZEROES.len() as u64);
        let frame = hyper::body::Frame::data(Bytes::from_static(&ZEROES[..k as usize]));
        Some((Ok::<_, Infallible>(frame), left - k))
    });
    Response::new(StreamBody::new(s).boxed_unsync())
}

/// What a WebSocket route does once switched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ws {
    Echo,
    /// Hands the upgrade's Authorization back, several ways, first.
    Leak,
    /// Claims permessage-deflate in its switch.
    Deflate,
    /// Sends a frame with RSV1 set first.
    Rsv,
}

/// A card number in JSON, as `/ws/leak` sends it.
pub const WS_CARD_JSON: &str = r#"{"card":"4111111111111111","note":"card on file"}"#;

fn websocket(req: &mut Request<Incoming>, kind: Ws) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket request");
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let mut io = TokioIo::new(up);
        if kind == Ws::Rsv {
            use tokio::io::AsyncWriteExt;
            // FIN, RSV1, text; "hello": what a deflated frame looks like.
            let _ = io.write_all(b"\xc1\x05hello").await;
        }
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        if kind == Ws::Leak && leak(&mut ws, &auth).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).unwrap(),
    );
    if kind == Ws::Deflate {
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
    }
    r
}

/// `/ws/leak`'s opening: the Authorization as text, a card in JSON, the
/// Authorization again in a text message fragmented through its middle,
/// and as binary.
async fn leak<S>(
    ws: &mut WebSocketStream<S>,
    auth: &str,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::{
        Message,
        protocol::frame::{
            Frame,
            coding::{Data, OpCode},
        },
    };
    ws.send(Message::text(format!("authorization: {auth}")))
        .await?;
    ws.send(Message::text(WS_CARD_JSON)).await?;
    let whole = format!("fragmented: {auth}");
    let cut = whole.len() - auth.len() / 2;
    let (a, b) = whole.split_at(cut);
    let (b, c) = b.split_at(b.len() / 2);
    let frames = [
        Frame::message(a.to_owned(), OpCode::Data(Data::Text), false),
        Frame::message(b.to_owned(), OpCode::Data(Data::Continue), false),
        Frame::message(c.to_owned(), OpCode::Data(Data::Continue), true),
    ];
    for f in frames {
        ws.send(Message::Frame(f)).await?;
    }
    ws.send(Message::binary(auth.as_bytes().to_vec())).await
}

/// A switch to `to` (default h2c) whatever the request asked for.
fn switch(query: &str) -> Response<Body> {
    let to = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("to="))
        .unwrap_or("h2c");
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::UPGRADE,
        HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("h2c")),
    );
    r
}

//! A WebSocket client as a job runs one: blocking, over TLS that trusts a
//! given CA, for the privileged suites' probe (curl on the test machines
//! may not speak WebSocket).
use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio_tungstenite::tungstenite::{self, Message};

/// Dials `addr` (TLS for `host`, trusting the PEM CA at `ca`), opens a
/// WebSocket to `path`, sends each of `send` as a text message, and
/// returns the first `expect` data messages that come back (binary ones
/// as `binary:` and their text), then closes.
pub fn session(
    addr: SocketAddr,
    host: &str,
    ca: &Path,
    path: &str,
    send: &[String],
    expect: usize,
) -> Result<Vec<String>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tls = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let stream = rustls::StreamOwned::new(tls, tcp);
    let url = format!("wss://{host}:{}{path}", addr.port());
    let (mut ws, _) = tungstenite::client(url, stream).map_err(|e| format!("handshake: {e}"))?;
    for m in send {
        ws.send(Message::text(m.clone()))
            .map_err(|e| format!("send: {e}"))?;
    }
    let mut got = Vec::new();
    while got.len() < expect {
        match ws.read().map_err(|e| format!("read: {e}"))? {
            Message::Text(t) => got.push(t.to_string()),
            Message::Binary(b) => got.push(format!("binary:{}", String::from_utf8_lossy(&b))),
            Message::Close(f) => return Err(format!("closed by the other side: {f:?}")),
            _ => {}
        }
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(got)
}

//! Many idle HTTPS connections, for the idle-memory benchmark: each is
//! opened (through the explicit proxy with CONNECT when --proxy is given,
//! else straight to the target), TLS-handshaken with ALPN http/1.1, used
//! for one GET, then held idle.
//!
//!   hoop-idlers --target 127.0.0.2:443 --name 127.0.0.2 --ca ca.pem --n 10000 \
//!       [--proxy 127.0.0.1:3128 --token-file token]
//!
//! Prints `holding N` once all are open (or `failed K: <first error>`), then
//! holds them until stdin closes.
use std::{io::Read, sync::Arc};

use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

struct Opts {
    target: String,
    name: String,
    proxy: Option<String>,
    token: Option<String>,
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .context("reading a response head")?;
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str) -> Result<()> {
    s.write_all(format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let head = read_head(s).await?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /hello: {}", head.lines().next().unwrap_or(""));
    }
    let len: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .context("no content-length")?
        .parse()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(())
}

async fn open(o: &Opts, tls: &TlsConnector) -> Result<TlsStream<TcpStream>> {
    let mut s = TcpStream::connect(o.proxy.as_deref().unwrap_or(&o.target)).await?;
    if o.proxy.is_some() {
        let t = &o.target;
        let auth = o.token.as_deref().unwrap_or("");
        s.write_all(
            format!(
                "CONNECT {t} HTTP/1.1\r\nHost: {t}\r\nProxy-Authorization: Bearer {auth}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let head = read_head(&mut s).await?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("CONNECT: {}", head.lines().next().unwrap_or(""));
        }
    }
    let mut t = tls
        .connect(ServerName::try_from(o.name.clone())?, s)
        .await
        .context("TLS handshake")?;
    get(&mut t, &o.target).await?;
    Ok(t)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get_arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let need = |k: &str| get_arg(k).with_context(|| format!("{k} is required"));
    let n: usize = need("--n")?.parse()?;
    let o = Arc::new(Opts {
        target: need("--target")?,
        name: need("--name")?,
        proxy: get_arg("--proxy"),
        token: get_arg("--token-file")
            .map(|f| std::fs::read_to_string(f).map(|t| t.trim().to_string()))
            .transpose()?,
    });
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(need("--ca")?)? {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = TlsConnector::from(Arc::new(cfg));

    // A few at a time: the point is many held, not a connect storm.
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (o, tls, gate) = (o.clone(), tls.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await;
            open(&o, &tls).await
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(s) => held.push(s),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if let Some(first) = failed.first() {
        println!("failed {}: {first}", failed.len());
    } else {
        println!("holding {}", held.len());
    }
    // Hold them until told to stop.
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await?;
    drop(held);
    Ok(())
}

//! An in-process gateway (no eBPF, no root): the explicit proxy listener on
//! loopback in front of the real pipeline, with a test CA for upstreams.
#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, process::Output, sync::Arc};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use hoop::{
    config::Config,
    jobs::{ConnectionLimits, Jobs},
    pipeline::Gateway,
    policy::{Policy, enforce::Enforce},
    proxy,
};
use hoop_testkit::{
    Origin, OriginOpts, TestCa,
    oidc::{Alg, Issuer},
};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub gw: Arc<Gateway>,
    pub proxy: SocketAddr,
    /// hoop's CA, which clients must trust.
    pub hoop_ca: PathBuf,
    pub test_ca: TestCa,
    pub issuer: Issuer,
    /// A valid token of `issuer` (identity `test:proxy-client`).
    pub token: String,
    /// The config's text before its policy part.
    base: String,
}

pub async fn env(response_timeout_ms: u64) -> Env {
    env_with(response_timeout_ms, "").await
}

/// `policy` (TOML) replaces the default: every host for every identity. It
/// is appended to the config, so it may also carry tables such as
/// `[limits]`.
pub async fn env_with(response_timeout_ms: u64, policy: &str) -> Env {
    env_full(response_timeout_ms, policy, Alg::Es256).await
}

/// Like `env_with`, with an issuer signing with `alg`.
pub async fn env_full(response_timeout_ms: u64, policy: &str, alg: Alg) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start("127.0.0.1", alg).await;
    let issuer_ca = dir.path().join("issuer-ca.pem");
    std::fs::write(&issuer_ca, &issuer.ca.cert_pem).unwrap();
    let policy = if policy.is_empty() {
        "[[connection]]\nname = \"any\"\nhosts = [\"*\"]\nallow = [\"*\"]\n"
    } else {
        policy
    };
    let test_ca = TestCa::default();
    let upstream_ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca, &test_ca.cert_pem).unwrap();
    let base = format!(
        "[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\nresponse_timeout_ms = {response_timeout_ms}\n\
         connect_timeout_ms = 2000\nhandshake_timeout_ms = 2000\n\
         [capture]\nenabled = false\n[proxy]\nlisten = []\n\
         [egress]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n[tls]\nupstream_ca_files = [\"{ca}\"]\n\
         [[identity.oidc]]\nname = \"test\"\nissuer = \"{iss}\"\naudience = \"hoop\"\nca_files = [\"{issuer_ca}\"]\n",
        d = dir.path().display(),
        ca = upstream_ca.display(),
        iss = issuer.url,
        issuer_ca = issuer_ca.display(),
    );
    let cfg = Config::parse(&format!("{base}{policy}"), &dir.path().join("hoop.toml")).unwrap();
    let policy = Policy::compile(&cfg, None).unwrap();
    let jobs = Jobs::new(dir.path().join("jobs")).with_limits(ConnectionLimits::of(&cfg.limits));
    let services = hoop::daemon::start_services(&cfg).unwrap();
    let gw = Arc::new(Gateway::new(Arc::new(cfg), Arc::new(Enforce), policy, services).unwrap());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    proxy::spawn(vec![l], gw.clone(), Arc::new(jobs));
    let hoop_ca = dir.path().join("state/ca.pem");
    let token = issuer.token("proxy-client");
    Env {
        dir,
        gw,
        proxy,
        hoop_ca,
        test_ca,
        issuer,
        token,
        base,
    }
}

impl Env {
    /// An HTTPS origin for `localhost` and 127.0.0.1 (and ::1), h2 + h1.
    pub async fn origin(&self) -> Origin {
        self.origin_with(&self.test_ca, &["localhost", "127.0.0.1", "::1"])
            .await
    }

    pub async fn origin_with(&self, ca: &TestCa, names: &[&str]) -> Origin {
        let tls = ca.server_config(names, &[b"h2", b"http/1.1"]);
        Origin::start(OriginOpts {
            tls: Some(tls),
            bind: None,
            also_v6: true,
        })
        .await
    }

    /// curl through the proxy with the test token, trusting hoop's CA.
    /// Returns the output; `-w` appends "\n<code> <http_version>".
    pub async fn curl(&self, args: &[&str]) -> Output {
        self.curl_as(&self.token, args).await
    }

    /// curl with `token` as proxy credentials (split into username and
    /// password: SOCKS5 caps each at 255 bytes).
    pub async fn curl_as(&self, token: &str, args: &[&str]) -> Output {
        let (user, pass) = token.split_at(token.len() / 2);
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--proxy-user"])
            .arg(format!("{user}:{pass}"))
            .arg("--cacert")
            .arg(&self.hoop_ca)
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(args)
            .output()
            .await
            .expect("curl is installed")
    }

    /// Swaps `policy` in, as a reload does.
    pub fn reload(&self, policy: &str) {
        let path = self.dir.path().join("hoop.toml");
        let cfg = Config::parse(&format!("{}{policy}", self.base), &path).unwrap();
        self.gw.set_policy(Policy::compile(&cfg, None).unwrap());
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// CONNECT by hand, then TLS to `localhost` trusting hoop's CA.
    pub async fn tunnel(
        &self,
        port: u16,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut s = TcpStream::connect(self.proxy).await.unwrap();
        s.write_all(
            format!(
                "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n{}\r\n",
                self.proxy_auth()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&std::fs::read(&self.hoop_ca).unwrap()).unwrap())
            .unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), s)
            .await
            .expect("client trusts the leaf hoop minted for localhost")
    }

    /// The header a hand-written CONNECT needs.
    pub fn proxy_auth(&self) -> String {
        format!("Proxy-Authorization: Bearer {}\r\n", self.token)
    }
}

/// (body, status, http version) from a `curl -w` output.
pub fn parse_curl(out: &Output) -> (String, u16, String) {
    let s = String::from_utf8_lossy(&out.stdout);
    let (body, tail) = s.rsplit_once('\n').unwrap_or(("", &s));
    let mut t = tail.split_whitespace();
    let code = t.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    (body.to_string(), code, t.next().unwrap_or("").to_string())
}

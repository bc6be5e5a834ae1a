//! The bench's no-op peer (`hoop-noop-proxy`) relays for real: HTTP/1.1
//! keep-alive over one upstream connection and HTTP/2 in reverse mode,
//! CONNECT in explicit mode, upstream TLS verified against the CA it is
//! given, loopback only. Driven with curl against the testkit origin.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

use hoop_testkit::{Origin, OriginOpts, TestCa};

struct Peer {
    child: Child,
    addr: String,
}

impl Peer {
    fn start(upstream_ca: &Path, reverse: Option<SocketAddr>) -> Self {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hoop-noop-proxy"));
        c.args(["--bind", "127.0.0.1:0", "--upstream-ca"])
            .arg(upstream_ca)
            .stdout(Stdio::piped());
        if let Some(r) = reverse {
            c.args(["--reverse", &r.to_string()]);
        }
        let mut child = c.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().strip_prefix("listening ").unwrap().to_string();
        Self { child, addr }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl's output: `-w` lines after the bodies.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn origin(ca: &TestCa) -> Origin {
    Origin::start_background(OriginOpts {
        tls: Some(ca.server_config(&["127.0.0.1"], &[b"h2", b"http/1.1"])),
        ..Default::default()
    })
}

fn ca_file(ca: &TestCa) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &ca.cert_pem).unwrap();
    f
}

#[test]
fn reverse_mode_relays_h1_keep_alive_on_one_upstream_connection_and_h2() {
    let ca = TestCa::default();
    let o = origin(&ca);
    let f = ca_file(&ca);
    let p = Peer::start(f.path(), Some(o.addr));
    let url = format!("https://{}/hello", p.addr);
    let w = "%{http_code} %{http_version} %{num_connects}\n";
    let out = curl(&["--http1.1", &url, &url, "-w", w]);
    let want = format!("hello from origin {}\n", o.addr);
    assert_eq!(out, format!("{want}200 1.1 1\n{want}200 1.1 0\n"));
    assert_eq!(
        (o.hits(), o.connections()),
        (2, 1),
        "two requests, one upstream connection"
    );

    let out = curl(&["--http2", &url, "-w", w]);
    assert_eq!(out, format!("{want}200 2 1\n"), "h2 on the job side");
    assert_eq!(o.hits(), 3);
    let seen = o.seen();
    assert_eq!(
        seen.last().map(|s| s.version.as_str()),
        Some("HTTP/2.0"),
        "{seen:?}"
    );
}

#[test]
fn connect_mode_relays_to_loopback_only() {
    let ca = TestCa::default();
    let o = origin(&ca);
    let f = ca_file(&ca);
    let p = Peer::start(f.path(), None);
    let proxy = format!("http://{}", p.addr);
    let w = "%{http_connect} %{http_code}\n";
    let url = format!("https://{}/hello", o.addr);
    let out = curl(&["-x", &proxy, &url, "-w", w]);
    assert_eq!(out, format!("hello from origin {}\n200 200\n", o.addr));
    // TEST-NET-1: never dialled, refused at the CONNECT.
    let out = curl(&["-x", &proxy, "https://192.0.2.1/", "-w", w]);
    assert_eq!(out, "400 000\n");
    assert_eq!(o.hits(), 1);
}

#[test]
fn the_upstream_must_prove_itself_against_the_given_ca() {
    let ca = TestCa::default();
    let o = origin(&ca);
    let other = ca_file(&TestCa::new("another CA"));
    let p = Peer::start(other.path(), Some(o.addr));
    let out = curl(&[&format!("https://{}/hello", p.addr), "-w", "%{http_code}\n"]);
    assert_eq!(
        out, "000\n",
        "an upstream the CA did not sign is not relayed to"
    );
    assert_eq!(o.hits(), 0);
    // Positive control: the same origin through a peer given its CA.
    let f = ca_file(&ca);
    let p = Peer::start(f.path(), Some(o.addr));
    let out = curl(&[&format!("https://{}/hello", p.addr), "-w", "%{http_code}\n"]);
    assert!(out.ends_with("200\n"), "{out}");
}

//! The TLS/HTTP pipeline through the transparent path: `hoop run -- curl`
//! with no proxy settings, trusting hoop's CA, against loopback origins with
//! real-looking names.
use std::time::{Duration, Instant};

use hoop_testkit::{Origin, OriginOpts, TestCa, peak_rss_kib};
use hoop_tests::{TestEnv, Upstream};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

struct Tls {
    env: TestEnv,
    ca: TestCa,
}

fn setup(name: &str, daemon_extra: &str) -> Tls {
    let ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let mut env = TestEnv::with(
        name,
        PROBE,
        daemon_extra,
        &format!("[tls]\nupstream_ca_files = [\"{}\"]\n", ca_file.display()),
    );
    env.start_daemon();
    Tls { env, ca }
}

fn origin(ca: &TestCa, ip: &str) -> Origin {
    let tls = ca.server_config(&["partner.test", ip], &[b"h2", b"http/1.1"]);
    Origin::start_background(OriginOpts {
        tls: Some(tls),
        bind: Some(format!("{ip}:0").parse().unwrap()),
        also_v6: false,
    })
}

/// curl in a job; returns (status, http version, headers+body text).
fn curl(t: &Tls, o: &Origin, path: &str, extra: &[&str]) -> (u16, String, String) {
    let port = o.addr.port();
    let resolve = format!("partner.test:{port}:{}", o.addr.ip());
    let url = format!("https://partner.test:{port}{path}");
    let (code, text) = t.env.curl_job(&resolve, &url, extra);
    assert!(code != 0, "curl failed:\n{text}");
    let tail = text.lines().last().unwrap_or("").to_string();
    let mut w = tail.split_whitespace();
    w.next();
    (code, w.next().unwrap_or("").to_string(), text)
}

#[test]
fn https_through_the_transparent_path_in_h1_and_h2() {
    let t = setup("tls", "");
    let o = origin(&t.ca, "127.0.0.2");
    let (code, v, text) = curl(&t, &o, "/hello", &["--http1.1"]);
    assert_eq!((code, v.as_str()), (200, "1.1"), "{text}");
    assert!(text.contains("hello from origin"));
    let (code, v, text) = curl(&t, &o, "/hello", &["--http2"]);
    assert_eq!((code, v.as_str()), (200, "2"), "{text}");
    let seen: Vec<String> = o.seen().iter().map(|s| s.version.clone()).collect();
    assert_eq!(seen, ["HTTP/1.1", "HTTP/2.0"]);
    // The daemon verified the upstream for the SNI and logged the exchange.
    assert!(
        t.env
            .wait_log(
                &["exchange", "partner.test", "status=200"],
                Duration::from_secs(2)
            )
            .is_some(),
        "{}",
        t.env.log()
    );
}

#[test]
fn upstream_failures_reach_the_job_as_502_and_504() {
    let t = setup("tlsfail", "response_timeout_ms = 800");
    let rogue = origin(&TestCa::new("rogue"), "127.0.0.3");
    let good = origin(&t.ca, "127.0.0.2");
    let (code, _, text) = curl(&t, &rogue, "/hello", &[]);
    assert_eq!(code, 502, "{text}");
    assert!(
        text.contains("x-hoop-reason: upstream-certificate-invalid"),
        "{text}"
    );
    let started = Instant::now();
    let (code, _, text) = curl(&t, &good, "/hang", &[]);
    assert_eq!(code, 504, "{text}");
    assert!(
        text.contains("x-hoop-reason: upstream-response-timeout"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, _, _) = curl(&t, &good, "/hello", &[]);
    assert_eq!(code, 200, "daemon stopped serving");
}

#[test]
fn raw_tcp_is_refused_and_never_reaches_the_upstream() {
    let t = setup("rawtcp", "handshake_timeout_ms = 2000");
    let up = Upstream::start("127.0.0.2:0");
    let (ok, line) = t.env.probe(true, &["rawtcp", &up.addr.to_string()]);
    assert!(!ok, "raw TCP got an answer: {line}");
    assert_eq!(up.hits(), 0, "raw bytes reached the upstream");
    assert!(
        t.env
            .wait_log(&["raw TCP is refused"], Duration::from_secs(3))
            .is_some(),
        "{}",
        t.env.log()
    );
}

#[test]
fn a_1_gib_download_does_not_grow_the_daemon() {
    const GIB: u64 = 1 << 30;
    let t = setup("stream", "");
    let o = origin(&t.ca, "127.0.0.2");
    let (code, _, _) = curl(&t, &o, "/bytes/1048576", &["-o", "/dev/null"]);
    assert_eq!(code, 200);
    let pid = t.env.daemon_pid().to_string();
    let before = peak_rss_kib(&pid);
    let (code, _, text) = curl(
        &t,
        &o,
        &format!("/bytes/{GIB}"),
        &["-o", "/dev/null", "--http1.1"],
    );
    assert_eq!(code, 200, "{text}");
    let grown = (peak_rss_kib(&pid) - before) as f64 / 1024.0;
    eprintln!(
        "daemon peak RSS: {} MiB before, grew {grown:.1} MiB over a 1 GiB download",
        before / 1024
    );
    assert!(
        grown < 8.0,
        "the daemon grew {grown:.1} MiB: the body was buffered"
    );
    assert!(
        t.env
            .wait_log(
                &["exchange", &format!("bytes={GIB}")],
                Duration::from_secs(2)
            )
            .is_some()
    );
}

#[test]
fn destinations_outside_egress_allow_get_403_before_any_dial() {
    let ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let extra = format!("[tls]\nupstream_ca_files = [\"{}\"]\n", ca_file.display());
    let mut env = TestEnv::build("egress", PROBE, "", &extra, "\"127.0.0.2/32\"");
    env.start_daemon();
    let t = Tls { env, ca };
    let outside = origin(&t.ca, "127.0.0.3");
    let (code, _, text) = curl(&t, &outside, "/hello", &[]);
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("x-hoop-reason: destination-not-allowed"),
        "{text}"
    );
    assert_eq!(
        outside.connections(),
        0,
        "the daemon dialled a forbidden destination"
    );
    let inside = origin(&t.ca, "127.0.0.2");
    assert_eq!(curl(&t, &inside, "/hello", &[]).0, 200);
}

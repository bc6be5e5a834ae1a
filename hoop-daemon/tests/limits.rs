//! One job cannot starve the others (`[limits]`), through the explicit
//! proxy in front of the real pipeline: a slow request head and an idle
//! connection are closed by their timeouts, an idle job connection holds no
//! upstream socket, and a job over its connection cap is refused on record
//! while another job still gets through.
mod support;

use std::time::{Duration, Instant};

use hoop::audit::{
    DB_FILE,
    entry::{ConnectDeniedData, kind},
    query::{self, Select},
    store,
};
use support::Env;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

const ANY: &str = "[[connection]]\nname = \"any\"\nhosts = [\"*\"]\nallow = [\"*\"]\n";

async fn env(limits: &str, response_timeout_ms: u64) -> Env {
    support::env_with(response_timeout_ms, &format!("[limits]\n{limits}\n{ANY}")).await
}

/// Writes one GET on an HTTP/1.1 connection and reads its response head
/// and body (Content-Length); returns the status.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, port: u16, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("a response head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

/// How long until `s` is closed by the other side (EOF or reset), if
/// within `max`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, max: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(max.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// A CONNECT with `token`; the response head and the stream.
async fn connect(env: &Env, token: &str, port: u16) -> (String, TcpStream) {
    let mut s = TcpStream::connect(env.proxy).await.unwrap();
    s.write_all(
        format!(
            "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\
             Proxy-Authorization: Bearer {token}\r\n\r\n"
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
    (String::from_utf8_lossy(&head).into_owned(), s)
}

fn connect_denied(env: &Env) -> Vec<ConnectDeniedData> {
    env.gw.audit.shutdown();
    let db = store::open_reader(&env.dir.path().join("state").join(DB_FILE)).unwrap();
    query::records(&db, &Select::default())
        .unwrap()
        .iter()
        .filter(|r| r.kind == kind::CONNECT_DENIED)
        .map(|r| r.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off_and_a_prompt_one_is_served() {
    let env = env(
        "header_read_timeout_ms = 600\nidle_timeout_ms = 10000",
        5000,
    )
    .await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    // Positive control, same setup: idle longer than the head timeout
    // (its clock starts at a head's first byte), then a whole request.
    let mut ok = env.tunnel(port, b"http/1.1").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(get(&mut ok, port, "/hello").await, 200);
    assert_eq!(get(&mut ok, port, "/hello").await, 200);

    // Slowloris: a head begun and never finished.
    let mut slow = env.tunnel(port, b"http/1.1").await;
    slow.write_all(format!("GET /hello HTTP/1.1\r\nHost: localhost:{port}\r\nX-A: ").as_bytes())
        .await
        .unwrap();
    let t = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("a slow head is cut off");
    assert!(t >= Duration::from_millis(500), "closed too early: {t:?}");
    assert_eq!(origin.hits(), 2, "the slow request went upstream");
    let denied = connect_denied(&env);
    assert!(
        denied
            .iter()
            .any(|d| d.reason.starts_with("header-read-timeout") && d.by == "gateway"),
        "{denied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let env = env(
        "idle_timeout_ms = 800\nupstream_idle_timeout_ms = 200",
        2500,
    )
    .await;
    let origin = env.origin().await;
    let port = origin.addr.port();

    // HTTP/1 keep-alive: served, then idle, then closed.
    let mut h1 = env.tunnel(port, b"http/1.1").await;
    assert_eq!(get(&mut h1, port, "/hello").await, 200);
    let t = closed_within(&mut h1, Duration::from_secs(5))
        .await
        .expect("an idle HTTP/1 connection is closed");
    assert!(t >= Duration::from_millis(700), "closed too early: {t:?}");

    // HTTP/2: the connection ends (GOAWAY, then close) once idle.
    let (client, conn) = h2::client::handshake(env.tunnel(port, b"h2").await)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("https://localhost:{port}/hello"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap()
        .ok();
    assert!(start.elapsed() >= Duration::from_millis(600));

    // Positive controls: a connection used more often than the idle
    // timeout lives on, and one waiting on a slow upstream (longer than
    // the idle timeout) gets its answer.
    let mut busy = env.tunnel(port, b"http/1.1").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(get(&mut busy, port, "/hello").await, 200);
    }
    let mut waiting = env.tunnel(port, b"http/1.1").await;
    assert_eq!(
        get(&mut waiting, port, "/hang").await,
        504,
        "a request in flight is not idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_job_connections_hold_no_upstream_socket() {
    let env = env(
        "idle_timeout_ms = 30000\nupstream_idle_timeout_ms = 300",
        5000,
    )
    .await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    let mut first = env.tunnel(port, b"http/1.1").await;
    assert_eq!(get(&mut first, port, "/hello").await, 200);
    assert_eq!(origin.open_connections(), 1, "the request's upstream");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(origin.open_connections(), 0, "kept past upstream_idle");
    // More job connections, handshaken and idle: no upstream dialled.
    let accepted = origin.connections();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(env.tunnel(port, b"http/1.1").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.connections(), accepted, "an idle handshake dialled");
    assert_eq!(origin.open_connections(), 0);
    // Positive control: each still works, dialling when asked.
    assert_eq!(get(&mut first, port, "/hello").await, 200);
    assert_eq!(get(&mut idle[7], port, "/hello").await, 200);
    assert_eq!(origin.connections(), accepted + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_cap_is_refused_and_another_job_gets_through() {
    let env = env("max_connections_per_job = 3\nmax_connections = 5", 5000).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    let (a, b, c) = (
        env.issuer.token("job-a"),
        env.issuer.token("job-b"),
        env.issuer.token("job-c"),
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let (head, s) = connect(&env, &a, port).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(s);
    }
    let (head, _) = connect(&env, &a, port).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-hoop-reason: connection-limit"),
        "{head}"
    );
    // Another job gets through, up to the daemon's total.
    let (head, s) = connect(&env, &b, port).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    held.push(s);
    let (head, s) = connect(&env, &b, port).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    held.push(s);
    let (head, _) = connect(&env, &c, port).await;
    assert!(head.starts_with("HTTP/1.1 503"), "total cap: {head}");
    // A connection closed frees its place.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (head, s) = connect(&env, &a, port).await;
        if head.starts_with("HTTP/1.1 200") {
            held.push(s);
            break;
        }
        assert!(Instant::now() < deadline, "the place was not freed: {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted for the operator, by reason.
    let scraped = env.gw.metrics.render(&Default::default());
    let refused = scraped
        .lines()
        .find(|l| l.starts_with("hoop_connections_refused_total{reason=\"connection-limit\"}"))
        .unwrap_or_else(|| panic!("no connection-limit counter:\n{scraped}"));
    let n: u64 = refused.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2, "{refused}");
    assert!(
        !scraped.contains("reason=\"destination-not-allowed\""),
        "only what happened is counted:\n{scraped}"
    );
    let denied = connect_denied(&env);
    let limited: Vec<&str> = denied
        .iter()
        .filter(|d| d.reason.starts_with("connection-limit"))
        .map(|d| d.reason.as_str())
        .collect();
    assert!(
        limited
            .iter()
            .any(|r| r.contains("job-a") && r.contains("already holds 3")),
        "{limited:?}"
    );
    assert!(
        limited
            .iter()
            .any(|r| r.contains("limits.max_connections)")),
        "{limited:?}"
    );
}

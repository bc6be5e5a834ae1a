//! The explicit proxy in front of the real pipeline, in-process on loopback:
//! curl and a Rust client, h1 and h2, streaming, WebSocket, and every way an
//! upstream can fail becoming a clear response.
mod support;

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use hoop_testkit::{Origin, OriginOpts, TestCa};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{env, parse_curl};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_h1_and_h2_through_connect() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let url = format!("https://localhost:{}/hello", origin.addr.port());
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = env.curl(&["-x", &env.proxy_url(), flag, &url]).await;
        let (body, code, version) = parse_curl(&out);
        assert_eq!(
            code,
            200,
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(body.starts_with("hello from origin"), "{body}");
        assert_eq!(version, want, "{flag}: job got the wrong protocol");
    }
    let versions: Vec<String> = origin.seen().iter().map(|s| s.version.clone()).collect();
    assert_eq!(
        versions,
        ["HTTP/1.1", "HTTP/2.0"],
        "upstream protocol should mirror the job's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_and_plain_http_proxying_feed_the_same_pipeline() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let socks = format!("socks5h://{}", env.proxy);
    let out = env
        .curl(&[
            "-x",
            &socks,
            &format!("https://localhost:{}/hello", origin.addr.port()),
        ])
        .await;
    assert_eq!(
        parse_curl(&out).1,
        200,
        "socks5h: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let socks_ip = format!("socks5://{}", env.proxy);
    let out = env
        .curl(&[
            "-x",
            &socks_ip,
            &format!("https://127.0.0.1:{}/hello", origin.addr.port()),
        ])
        .await;
    assert_eq!(
        parse_curl(&out).1,
        200,
        "socks5 by IP: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let plain = Origin::start(OriginOpts::default()).await;
    let url = format!("http://127.0.0.1:{}/hello", plain.addr.port());
    let out = env.curl(&["-x", &env.proxy_url(), &url]).await;
    let (body, code, _) = parse_curl(&out);
    assert_eq!(
        code,
        200,
        "absolute-URI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.starts_with("hello from origin"));
    // Plain HTTP inside a CONNECT tunnel goes through the HTTP sniff path.
    let out = env.curl(&["-p", "-x", &env.proxy_url(), &url]).await;
    assert_eq!(
        parse_curl(&out).1,
        200,
        "tunnelled plain HTTP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(plain.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_stream_through() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let out = env
        .curl(&[
            "-x",
            &env.proxy_url(),
            "--http1.1",
            &format!("https://localhost:{}/chunked", origin.addr.port()),
        ])
        .await;
    let (body, code, _) = parse_curl(&out);
    assert_eq!(code, 200);
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
    // And a request body going up, chunked.
    let out = env
        .curl(&[
            "-x",
            &env.proxy_url(),
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "payload-123",
            &format!("https://localhost:{}/echo", origin.addr.port()),
        ])
        .await;
    let (body, code, _) = parse_curl(&out);
    assert_eq!(code, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["body"], "payload-123");
    assert_eq!(j["method"], "POST");
}

/// A Rust client: CONNECT by hand, TLS trusting hoop's CA, hyper on top.
async fn rust_client_get(
    env: &support::Env,
    port: u16,
    alpn: &[u8],
) -> (http::StatusCode, String, String) {
    let tls = env.tunnel(port, alpn).await;
    let negotiated =
        String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or(b"")).into_owned();
    let req = http::Request::get(format!("https://localhost:{port}/hello"))
        .header("host", format!("localhost:{port}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = if alpn == b"h2" {
        let (mut s, c) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        let (mut parts, body) = req.into_parts();
        parts.uri = "/hello".parse().unwrap();
        s.send_request(http::Request::from_parts(parts, body))
            .await
            .unwrap()
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        negotiated,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_client_speaks_h1_and_h2_through_the_proxy() {
    let env = env(5000).await;
    let origin = env.origin().await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (status, body, negotiated) = rust_client_get(&env, origin.addr.port(), alpn).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("hello from origin"), "{body}");
        assert_eq!(negotiated.as_bytes(), alpn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    let tls = env.tunnel(port, b"http/1.1").await;
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for msg in ["one", "two"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
}

fn reason(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("x-hoop-reason: "))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_502_and_504_with_a_reason() {
    let env = env(700).await;
    // A certificate from a CA hoop does not trust.
    let rogue = env
        .origin_with(&TestCa::new("rogue CA"), &["localhost", "127.0.0.1"])
        .await;
    // A trusted CA, but a certificate for another name.
    let wrong_name = env.origin_with(&env.test_ca, &["other.test"]).await;
    let good = env.origin().await;
    let cases = [
        (
            format!("https://localhost:{}/hello", rogue.addr.port()),
            502,
            "upstream-certificate-invalid",
        ),
        (
            format!("https://localhost:{}/hello", wrong_name.addr.port()),
            502,
            "upstream-certificate-invalid",
        ),
        (
            format!("https://localhost:{}/hang", good.addr.port()),
            504,
            "upstream-response-timeout",
        ),
        (
            "https://127.0.0.1:1/hello".to_string(),
            502,
            "upstream-connect-failed",
        ),
    ];
    for (url, status, want) in cases {
        let t = Instant::now();
        let out = env.curl(&["-x", &env.proxy_url(), "-D", "-", &url]).await;
        let (_, code, _) = parse_curl(&out);
        assert_eq!(
            code,
            status,
            "{url}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(reason(&out), want, "{url}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("hoop: "),
            "no explanation in the body"
        );
        assert!(t.elapsed().as_secs() < 5, "{url} took {:?}", t.elapsed());
    }
    // The daemon kept serving.
    let out = env
        .curl(&[
            "-x",
            &env.proxy_url(),
            &format!("https://localhost:{}/hello", good.addr.port()),
        ])
        .await;
    assert_eq!(parse_curl(&out).1, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_client_is_refused_and_the_proxy_keeps_serving() {
    let env = env(5000).await;
    let origin = env.origin().await;
    // Garbage instead of a proxy request.
    let mut s = TcpStream::connect(env.proxy).await.unwrap();
    s.write_all(b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // Garbage inside a tunnel: neither TLS nor HTTP.
    let mut s = TcpStream::connect(env.proxy).await.unwrap();
    let port = origin.addr.port();
    s.write_all(
        format!(
            "CONNECT localhost:{port} HTTP/1.1\r\n{}\r\n",
            env.proxy_auth()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "tunnel should open, then close"
    );
    assert_eq!(origin.connections(), 0, "raw bytes reached the upstream");
    // A malformed ClientHello.
    let mut s = TcpStream::connect(env.proxy).await.unwrap();
    s.write_all(
        format!(
            "CONNECT localhost:{port} HTTP/1.1\r\n{}\r\n",
            env.proxy_auth()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        s.read_to_end(&mut Vec::new()),
    )
    .await;
    // Still serving.
    let out = env
        .curl(&[
            "-x",
            &env.proxy_url(),
            &format!("https://localhost:{port}/hello"),
        ])
        .await;
    assert_eq!(parse_curl(&out).1, 200);
}

//! Who an explicit-proxy client is: an OIDC token as Proxy-Authorization
//! (Bearer, or Basic/SOCKS5 username+password). No token or a bad one gets
//! 407 with the reason; a good one is routed by policy for its identity.
mod support;

use hoop_testkit::oidc::{self, Alg};
use support::{env_full, env_with, parse_curl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_a_bad_token_gets_407_with_the_reason() {
    let env = env_with(5000, "").await;
    let origin = env.origin().await;
    let url = format!("https://localhost:{}/hello", origin.addr.port());

    // No credentials at all.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-x",
            &env.proxy_url(),
            "-D",
            "-",
            &url,
        ])
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("407"), "{text}");

    // Expired token, as Bearer in a hand-made CONNECT.
    let mut claims = env.issuer.claims("proxy-client");
    claims["exp"] = (oidc::now() - 3600).into();
    let expired = env.issuer.token_with(&claims);
    let resp = raw_connect(&env, origin.addr.port(), &expired).await;
    assert!(resp.starts_with("HTTP/1.1 407"), "{resp}");
    assert!(
        resp.contains("x-hoop-reason: proxy-auth-required"),
        "{resp}"
    );
    assert!(
        resp.to_ascii_lowercase()
            .contains("proxy-authenticate: bearer"),
        "{resp}"
    );
    assert!(resp.contains("token expired"), "{resp}");

    // A forged token over SOCKS5 is refused at the sub-negotiation.
    let forged = oidc::unsigned(&env.issuer.key().kid, &env.issuer.claims("x"));
    let out = env
        .curl_as(&forged, &["-x", &format!("socks5h://{}", env.proxy), &url])
        .await;
    assert_eq!(parse_curl(&out).1, 0, "SOCKS5 accepted a forged token");
    assert_eq!(origin.hits(), 0, "the upstream was reached");

    // The genuine token works over all three.
    let (body, code, _) = parse_curl(&env.curl(&["-x", &env.proxy_url(), &url]).await);
    assert_eq!(code, 200, "{body}");
    let socks = env
        .curl(&["-x", &format!("socks5h://{}", env.proxy), &url])
        .await;
    assert_eq!(parse_curl(&socks).1, 200);
    let resp = raw_connect(&env, origin.addr.port(), &env.token).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_routes_by_the_tokens_identity_and_denies_the_rest() {
    let policy = "[[connection]]\nname = \"mine\"\nhosts = [\"localhost\"]\nallow = [\"test:proxy-client\"]\n";
    let env = env_full(5000, policy, Alg::Rs256).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    // RS256 tokens verify too; localhost is allowed for this identity.
    let ok = env
        .curl(&[
            "-x",
            &env.proxy_url(),
            &format!("https://localhost:{port}/hello"),
        ])
        .await;
    assert_eq!(parse_curl(&ok).1, 200, "{ok:?}");
    // Another identity: 403 naming host and identity, upstream untouched.
    let other = env.issuer.token("someone-else");
    let before = origin.connections();
    let out = env
        .curl_as(
            &other,
            &[
                "-D",
                "-",
                "-x",
                &env.proxy_url(),
                &format!("https://localhost:{port}/hello"),
            ],
        )
        .await;
    let (text, code, _) = parse_curl(&out);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-hoop-reason: no-connection"), "{text}");
    assert!(
        text.contains("localhost:") && text.contains("test:someone-else"),
        "{text}"
    );
    // A host no connection covers, for the allowed identity.
    let out = env
        .curl(&[
            "-x",
            &env.proxy_url(),
            &format!("https://127.0.0.1:{port}/hello"),
        ])
        .await;
    assert_eq!(parse_curl(&out).1, 403);
    assert_eq!(origin.connections(), before, "a refused host was dialled");
}

/// CONNECT with a Bearer token; returns the response head.
async fn raw_connect(env: &support::Env, port: u16, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(env.proxy).await.unwrap();
    s.write_all(
        format!(
            "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\nProxy-Authorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The head, then as much body as Content-Length announces.
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            if n == 0 {
                break;
            }
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("the proxy answered");
    String::from_utf8_lossy(&buf).into_owned()
}

//! The leak canary through the real pipeline (explicit proxy, in-process,
//! real TLS and SQLite): an upstream that hands the injected credential
//! back in every encoding, in headers, body and trailers, over h1 and h2,
//! streamed and buffered for masking; and responses whose encoding hoop
//! can't read, refused.
mod support;

use hoop::audit::{
    DB_FILE,
    entry::{ResponseData, kind},
    query::{self, Select},
    store,
};
use hoop_testkit::{Origin, OriginOpts, leak, reflected_forms};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Env, env_with, parse_curl};

/// `/`, `+`, a space and `%`: each has an escaped form. No `"`, so the
/// echo's body stays JSON once masked.
const SECRET: &str = "sk-live/5f2d+9c0e 7b1a%4f";

fn policy(dir: &std::path::Path, extra: &str) -> String {
    let file = dir.join("partner.secret");
    std::fs::write(&file, SECRET).unwrap();
    format!(
        "[[connection]]\nname = \"partner\"\nhosts = [\"localhost\"]\nallow = [\"*\"]\n\
         credential = {{ secret = {{ file = \"{}\" }} }}\n{extra}",
        file.display()
    )
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

/// GET `path` through the proxy as a Rust client (CONNECT, TLS trusting
/// hoop's CA) over `alpn`, asking for trailers; everything it received.
async fn get(env: &Env, port: u16, path: &str, alpn: &[u8]) -> Got {
    let tls = env.tunnel(port, alpn).await;
    let req = |uri: String| {
        http::Request::get(uri)
            .header("host", format!("localhost:{port}"))
            .header("te", "trailers")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let resp = if alpn == b"h2" {
        let (mut s, c) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(c);
        s.send_request(req(format!("https://localhost:{port}{path}")))
            .await
            .unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        s.send_request(req(path.to_string())).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let all = body.collect().await.unwrap();
    let trailers = all.trailers().cloned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: all.to_bytes().to_vec(),
        trailers,
    }
}

fn assert_no_leak(what: &str, b: &[u8]) {
    if let Some(how) = leak::leaks(b, SECRET.as_bytes()) {
        panic!(
            "{what} reads back as the secret ({how}):\n{}",
            String::from_utf8_lossy(b)
        );
    }
}

/// Each echoed form that survived, masked, in a header map: how many.
fn masked_echoes(h: &HeaderMap, prefix: &str, what: &str) -> usize {
    let mut n = 0;
    for (k, v) in h {
        if k.as_str().starts_with(prefix) {
            assert_no_leak(&format!("{what} {k}"), v.as_bytes());
            assert!(
                v.as_bytes().starts_with(b"[hoop:credential]")
                    || v.as_bytes().windows(17).any(|w| w == b"[hoop:credential]")
                    || v.as_bytes().contains(&b'*'),
                "{what} {k}: {v:?}"
            );
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_of_an_echoed_credential_is_masked_for_the_job_and_the_record() {
    let forms = reflected_forms(&format!("Bearer {SECRET}"));
    let n = forms.len();
    for (mask, alpn) in [
        (false, &b"h2"[..]),
        (false, b"http/1.1"),
        (true, b"h2"),
        (true, b"http/1.1"),
    ] {
        let what = format!(
            "{} over {}",
            if mask {
                "buffered for masking"
            } else {
                "streamed"
            },
            String::from_utf8_lossy(alpn)
        );
        let secrets = tempfile::tempdir().unwrap();
        let extra = if mask {
            "[connection.mask]\ndetectors = [\"email\"]\n"
        } else {
            ""
        };
        let env = env_with(5000, &policy(secrets.path(), extra)).await;
        let origin = env.origin().await;
        let got = get(&env, origin.addr.port(), "/reflect-encoded", alpn).await;
        assert_eq!(got.status, 200, "{what}");
        // Positive control: the upstream got the secret, injected.
        let seen = origin.seen();
        let auth = seen
            .last()
            .unwrap()
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        assert_eq!(auth, Some(format!("Bearer {SECRET}")), "{what}");

        assert_eq!(masked_echoes(&got.headers, "x-echo-", &what), n, "{what}");
        assert_no_leak(&format!("{what}: body"), &got.body);
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&got.body)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&got.body)));
        assert_eq!(body.len(), n, "{what}");
        // Streamed, trailers pass (masked); buffered, hoop sends none.
        let trailed = match &got.trailers {
            Some(t) => masked_echoes(t, "x-trailer-", &what),
            None => 0,
        };
        assert_eq!(trailed, if mask { 0 } else { n }, "{what}");
        let all_headers = format!("{:?}", got.headers);
        assert_no_leak(&format!("{what}: headers"), all_headers.as_bytes());

        // The record: each form masked once in headers, body and trailers,
        // and nothing on it reads back as the secret.
        env.gw.audit.shutdown();
        let db = store::open_reader(&env.dir.path().join("state").join(DB_FILE)).unwrap();
        let recs = query::records(&db, &Select::default()).unwrap();
        let resps: Vec<ResponseData> = recs
            .iter()
            .filter(|r| r.kind == kind::RESPONSE)
            .map(|r| r.parse().unwrap())
            .collect();
        assert_eq!(resps.len(), 1, "{what}");
        assert_eq!(
            resps[0].masked.get("credential"),
            Some(&((2 * n + trailed) as u64)),
            "{what}: {:?}",
            resps[0].masked
        );
        for r in &recs {
            assert_no_leak(&format!("{what}: record"), query::jsonl_line(r).as_bytes());
            if let Some(b) = &r.resp_body {
                assert_no_leak(&format!("{what}: recorded body"), b);
            }
        }
        let recorded = recs
            .iter()
            .find_map(|r| r.resp_body.clone())
            .expect("the body is on record");
        assert_eq!(recorded, got.body, "{what}: the record is what the job got");
    }
}

/// Content codings hoop can't undo, or more than one (hoop asked for
/// none): on a credentialed connection the response is refused, streamed
/// or buffered for masking, and the job sees no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_or_unknown_content_encodings_fail_closed_with_a_credential() {
    for extra in ["", "[connection.mask]\ndetectors = [\"email\"]\n"] {
        let secrets = tempfile::tempdir().unwrap();
        let env = env_with(5000, &policy(secrets.path(), extra)).await;
        let origin = env.origin().await;
        let buffered = !extra.is_empty();
        for ce in [
            "gzip,gzip",
            "gzip,br",
            "x-foo",
            "gzip;gzip",
            "identity;gzip",
            "gzip",
        ] {
            let url = format!("https://localhost:{}/stacked?ce={ce}", origin.addr.port());
            let out = env.curl(&["-x", &env.proxy_url(), "-D", "-", &url]).await;
            let (text, code, _) = parse_curl(&out);
            // One gzip layer (in whichever field) is undone and checked
            // when buffering for masking; streamed, it is refused.
            if buffered && matches!(ce, "identity;gzip" | "gzip") {
                assert_eq!(code, 200, "{ce}: {text}");
                assert!(
                    text.ends_with("\r\n\r\nBearer [hoop:credential]********"),
                    "{ce}: {text}"
                );
                continue;
            }
            assert_eq!(code, 502, "{extra:?} {ce}: {text}");
            assert!(
                text.contains("x-hoop-reason: response-not-inspectable"),
                "{extra:?} {ce}: {text}"
            );
            assert_no_leak(ce, text.as_bytes());
        }
    }
}

/// A transfer coding hoop never offered (`Transfer-Encoding: gzip,
/// chunked` from an HTTP/1 upstream) is refused on every connection,
/// streamed or buffered: once the hop-by-hop header is gone nothing would
/// tell the canary, masking or the job that the bytes are compressed.
#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    for extra in ["", "[connection.mask]\ndetectors = [\"email\"]\n"] {
        let secrets = tempfile::tempdir().unwrap();
        let env = env_with(5000, &policy(secrets.path(), extra)).await;
        // HTTP/1 only: HTTP/2 has no transfer codings.
        let origin = Origin::start(OriginOpts {
            tls: Some(env.test_ca.server_config(&["localhost"], &[b"http/1.1"])),
            bind: None,
            also_v6: true,
        })
        .await;
        let port = origin.addr.port();
        // Positive control: plain chunked passes, its echo masked.
        let url = format!("https://localhost:{port}/stacked?ce=chunked&te=1");
        let out = env.curl(&["-x", &env.proxy_url(), "-D", "-", &url]).await;
        let (text, code, _) = parse_curl(&out);
        assert_eq!(code, 200, "{extra:?}: {text}");
        assert!(text.ends_with("Bearer [hoop:credential]********"), "{text}");
        for te in ["gzip", "GZIP", "x-foo", "gzip;chunked"] {
            let url = format!("https://localhost:{port}/stacked?ce={te}&te=1");
            let out = env.curl(&["-x", &env.proxy_url(), "-D", "-", &url]).await;
            let (text, code, _) = parse_curl(&out);
            assert_eq!(code, 502, "{extra:?} {te}: {text}");
            assert!(
                text.contains("x-hoop-reason: upstream-protocol-error"),
                "{extra:?} {te}: {text}"
            );
            assert!(text.contains("transfer coding"), "{te}: {text}");
            assert_no_leak(te, text.as_bytes());
        }
    }
}

/// The job's side of the same: a request body in a transfer coding other
/// than chunked is refused with 400, never forwarded as if plain (a
/// guardrail reading it would see compressed bytes).
#[tokio::test]
async fn a_request_in_another_transfer_coding_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let secrets = tempfile::tempdir().unwrap();
    let env = env_with(5000, &policy(secrets.path(), "")).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    for (te, want) in [
        ("chunked", "HTTP/1.1 200"),
        ("gzip, chunked", "HTTP/1.1 400"),
        ("x-foo,chunked", "HTTP/1.1 400"),
    ] {
        let mut tls = env.tunnel(port, b"http/1.1").await;
        let req = format!(
            "POST /echo HTTP/1.1\r\nHost: localhost:{port}\r\nTransfer-Encoding: {te}\r\n\
             Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(want), "{te}: {text}");
        if want.ends_with("400") {
            assert!(text.contains("x-hoop-reason: bad-request"), "{te}: {text}");
            assert!(text.contains("transfer coding"), "{te}: {text}");
        }
    }
}

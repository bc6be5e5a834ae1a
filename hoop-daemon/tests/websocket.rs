//! Protocol upgrades through the real pipeline (explicit proxy, in-process,
//! real TLS and SQLite): `h2c` and every other upgrade refused before
//! anything goes up, no tunnel over HTTP/2, an upstream's bad switch a 502,
//! and a WebSocket whose every message is parsed, masked, canary-checked
//! and recorded, failing closed on frames hoop can't read.
mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hoop::audit::{
    DB_FILE,
    entry::{MessagesData, RequestData, kind},
    query::{self, Select, Stored},
    store, verify,
};
use hoop_testkit::{Origin, OriginOpts};
use support::{Env, env, env_with, parse_curl};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};

const SECRET: &str = "partner-secret-0123456789";

fn reason(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("x-hoop-reason: "))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_every_other_upgrade_are_refused_and_never_reach_the_upstream() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let url = format!("https://localhost:{}/echo", origin.addr.port());
    let proxy = env.proxy_url();
    let settings = "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA";
    let cases: [&[&str]; 7] = [
        &[
            "-H",
            "Connection: Upgrade, HTTP2-Settings",
            "-H",
            "Upgrade: h2c",
            "-H",
            settings,
        ],
        &["-H", "Connection: Upgrade", "-H", "Upgrade: h2c"],
        &["-H", "Connection: upgrade", "-H", "Upgrade: H2C"],
        &["-H", "Connection: Upgrade", "-H", "Upgrade: websocket, h2c"],
        &["-H", "Connection: Upgrade", "-H", "Upgrade: TLS/1.0"],
        &["-H", "Connection: Upgrade", "-H", "Upgrade: x-raw-tunnel"],
        // A WebSocket handshake that is not one (no key, no version).
        &["-H", "Connection: Upgrade", "-H", "Upgrade: WebSocket"],
    ];
    for extra in cases {
        let mut args = vec!["-x", &proxy, "--http1.1", "-D", "-"];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = env.curl(&args).await;
        let (text, code, _) = parse_curl(&out);
        assert_eq!(code, 400, "{extra:?}: {text}");
        assert_eq!(reason(&text), "upgrade-refused", "{extra:?}: {text}");
    }
    // The real thing: curl's own h2c upgrade, over plaintext.
    let plain = Origin::start(OriginOpts::default()).await;
    let plain_url = format!("http://localhost:{}/echo", plain.addr.port());
    let out = env
        .curl(&["-x", &proxy, "-p", "--http2", "-D", "-", &plain_url])
        .await;
    let (text, code, _) = parse_curl(&out);
    assert_eq!(code, 400, "{text}");
    assert_eq!(reason(&text), "upgrade-refused", "{text}");
    assert_eq!(
        origin.hits() + plain.hits(),
        0,
        "an upgrade reached the upstream"
    );
    // `Upgrade` without `Connection: upgrade` is no upgrade: the header is
    // hop-by-hop, dropped, and the request goes up as a plain one.
    let out = env
        .curl(&["-x", &proxy, "--http1.1", "-H", "Upgrade: h2c", &url])
        .await;
    let (body, code, _) = parse_curl(&out);
    assert_eq!(code, 200, "{body}");
    let seen = &origin.seen()[0];
    assert!(
        !seen
            .headers
            .iter()
            .any(|(k, _)| k == "upgrade" || k == "connection"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_offers_no_extended_connect_and_refuses_connect() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    let (client, conn) = h2::client::handshake(env.tunnel(port, b"h2").await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // RFC 8441's WebSocket over HTTP/2 needs the server's setting: hoop
    // never sends it, so a client can't even ask.
    assert!(!client.is_extended_connect_protocol_enabled());
    let req = http::Request::connect(format!("localhost:{port}"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-hoop-reason"], "upgrade-refused");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_switch_that_was_not_asked_for_is_a_502() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    // 101 to a request that asked for no upgrade.
    let url = format!("https://localhost:{port}/switch");
    let out = env
        .curl(&["-x", &env.proxy_url(), "--http1.1", "-D", "-", &url])
        .await;
    let (text, code, _) = parse_curl(&out);
    assert_eq!(code, 502, "{text}");
    assert_eq!(reason(&text), "upstream-protocol-error");
    // A WebSocket asked for, another protocol given.
    let err = ws_connect(&env, port, "/switch?to=h2c", &[])
        .await
        .unwrap_err();
    assert_http(err, 502, "upstream-protocol-error");
    // Extensions hoop stripped from the request, named in the switch.
    let err = ws_connect(&env, port, "/ws/deflate", &[])
        .await
        .unwrap_err();
    assert_http(err, 502, "response-not-inspectable");
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A WebSocket through hoop to `path` on the origin, with extra headers.
async fn ws_connect(
    env: &Env,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let tls = env.tunnel(port, b"http/1.1").await;
    let mut req = format!("wss://localhost:{port}{path}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, resp)| {
            assert_eq!(resp.status(), 101);
            ws
        })
}

fn assert_http(e: tokio_tungstenite::tungstenite::Error, status: u16, why: &str) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()["x-hoop-reason"], why);
        }
        e => panic!("not an HTTP answer: {e}"),
    }
}

/// The next data message as text (skipping pongs).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.next().await.expect("a message").expect("readable") {
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            Message::Pong(_) | Message::Ping(_) => continue,
            m => panic!("unexpected {m:?}"),
        }
    }
}

/// The close frame hoop sent (skipping anything before it).
async fn close_of(ws: &mut Ws) -> (u16, String) {
    let close = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (f.code.into(), f.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => panic!("closed without a reason"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), close)
        .await
        .expect("no close frame within 10 s")
}

/// The log once `n` WebSockets have ended (their last batch is written).
async fn records_after(env: &Env, n: usize) -> Vec<Stored> {
    let path = env.dir.path().join("state").join(DB_FILE);
    let t = Instant::now();
    loop {
        let db = store::open_reader(&path).unwrap();
        let recs = query::records(&db, &Select::default()).unwrap();
        let ended = batches(&recs).iter().filter(|m| m.end.is_some()).count();
        if ended >= n {
            env.gw.audit.shutdown();
            let db = store::open_reader(&path).unwrap();
            return query::records(&db, &Select::default()).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{ended} of {n} ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn batches(recs: &[Stored]) -> Vec<MessagesData> {
    recs.iter()
        .filter(|r| r.kind == kind::MESSAGES)
        .map(|r| r.parse().expect("messages parse"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_pings_and_closes_and_is_recorded() {
    let env = env(5000).await;
    let origin = env.origin().await;
    let mut ws = ws_connect(
        &env,
        origin.addr.port(),
        "/ws",
        &[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await
    .unwrap();
    // hoop offered no extension on the job's behalf.
    assert!(
        !origin.seen()[0]
            .headers
            .iter()
            .any(|(k, _)| k == "sec-websocket-extensions"),
        "{:?}",
        origin.seen()[0].headers
    );
    for msg in ["one", "two"] {
        ws.send(Message::text(msg)).await.unwrap();
        assert_eq!(next_text(&mut ws).await, msg);
    }
    ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2])
    );
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let pong = loop {
        if let Message::Pong(p) = ws.next().await.unwrap().unwrap() {
            break p;
        }
    };
    assert_eq!(&pong[..], b"are you there");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let recs = records_after(&env, 1).await;
    let b = batches(&recs);
    let req = recs.iter().find(|r| r.kind == kind::REQUEST).unwrap();
    assert!(b.iter().all(|m| m.request_seq == req.seq));
    let msgs: Vec<_> = b.iter().flat_map(|m| m.messages.clone()).collect();
    let texts: Vec<(&str, &str)> = msgs
        .iter()
        .filter(|m| m.opcode == 1)
        .map(|m| (m.dir.as_str(), m.data.as_deref().unwrap()))
        .collect();
    assert_eq!(
        texts,
        [
            ("send", "one"),
            ("receive", "one"),
            ("send", "two"),
            ("receive", "two")
        ]
    );
    let bin = msgs.iter().find(|m| m.opcode == 2).unwrap();
    assert_eq!(
        (bin.size, bin.base64, bin.data.as_deref()),
        (3, true, Some("AAEC"))
    );
    assert!(msgs.iter().any(|m| m.opcode == 9 && m.dir == "send"));
    // The switch itself is a complete response, not a broken body.
    let resp: hoop::audit::entry::ResponseData = recs
        .iter()
        .find(|r| r.kind == kind::RESPONSE)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        (resp.status, resp.reason, resp.complete),
        (Some(101), None, true)
    );
    let end = b.last().unwrap().end.clone().unwrap();
    assert_eq!(end.by, "job", "{end:?}");
    assert_eq!(end.reason, None);
    // The log still verifies, and the HAR carries the messages.
    let r = verify::verify_file(&env.dir.path().join("state").join(DB_FILE), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    let har = hoop::audit::har::har(&recs);
    let entry = &har["log"]["entries"][0];
    let ws_msgs = entry["_webSocketMessages"].as_array().unwrap();
    assert!(
        ws_msgs
            .iter()
            .any(|m| m["type"] == "receive" && m["opcode"] == 1 && m["data"] == "two"),
        "{ws_msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_upstream_sends_over_a_websocket_is_masked_and_recorded_masked() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("partner");
    std::fs::write(&file, SECRET).unwrap();
    let policy = format!(
        "[[connection]]\nname = \"partner\"\nhosts = [\"localhost\"]\nallow = [\"*\"]\n\
         credential = {{ secret = {{ file = \"{}\" }} }}\n\
         [connection.mask]\njson = [\"$..card\"]\ndetectors = [\"credit_card\"]\nkeep_last = 4\n",
        file.display()
    );
    let env = env_with(5000, &policy).await;
    let origin = env.origin().await;
    let mut ws = ws_connect(&env, origin.addr.port(), "/ws/leak", &[])
        .await
        .unwrap();
    // Positive control: the upstream got the injected credential.
    let auth = origin.seen()[0]
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone());
    assert_eq!(auth.as_deref(), Some(&*format!("Bearer {SECRET}")));
    let echoed = next_text(&mut ws).await;
    assert!(
        echoed.starts_with("authorization: Bearer [hoop:credential]"),
        "{echoed}"
    );
    assert_eq!(
        echoed.len(),
        format!("authorization: Bearer {SECRET}").len()
    );
    let card: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(card["card"], "************1111");
    let fragmented = next_text(&mut ws).await;
    assert!(
        fragmented.starts_with("fragmented: Bearer [hoop:credential]"),
        "{fragmented}"
    );
    let binary = ws.next().await.unwrap().unwrap();
    assert!(binary.is_binary());
    let binary = String::from_utf8_lossy(&binary.into_data()).into_owned();
    assert!(binary.starts_with("Bearer [hoop:credential]"), "{binary}");
    for got in [&echoed, &fragmented, &binary] {
        assert!(
            !got.contains(SECRET) && !got.contains("0123456789"),
            "{got}"
        );
    }
    // The echo still works after all that.
    ws.send(Message::text("plain")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "plain");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let recs = records_after(&env, 1).await;
    let msgs: Vec<_> = batches(&recs)
        .into_iter()
        .flat_map(|m| m.messages)
        .collect();
    let received: Vec<_> = msgs.iter().filter(|m| m.dir == "receive").collect();
    // Sizes always, payloads as the job got them.
    assert_eq!(received[0].size, echoed.len() as u64);
    assert_eq!(received[0].data.as_deref(), Some(&*echoed));
    assert_eq!(received[0].masked.get("credential"), Some(&1));
    assert!(
        received[1]
            .data
            .as_deref()
            .unwrap()
            .contains("************1111")
    );
    assert_eq!(
        received[1].masked.get("json:$..card"),
        Some(&1),
        "{:?}",
        received[1].masked
    );
    assert_eq!(received[2].data.as_deref(), Some(&*fragmented));
    let all = recs.iter().map(query::jsonl_line).collect::<String>();
    assert!(!all.contains(SECRET), "the record holds the secret");
    assert!(
        !all.contains("4111111111111111"),
        "the record holds the card"
    );
    // The request on record names the upgrade, credential redacted.
    let q: RequestData = recs
        .iter()
        .find(|r| r.kind == kind::REQUEST)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        q.headers
            .iter()
            .any(|[k, v]| k == "upgrade" && v == "websocket")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_hoop_cannot_read_close_both_sides_with_a_reason() {
    // A small bound, to test it without megabytes.
    let policy = "[[connection]]\nname = \"any\"\nhosts = [\"*\"]\nallow = [\"*\"]\n\
                  [connection.mask]\ndetectors = [\"credit_card\"]\nmax_body = 1000\n";
    let env = env_with(5000, policy).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    // The upstream sends a compressed-looking frame (RSV1).
    let mut ws = ws_connect(&env, port, "/ws/rsv", &[]).await.unwrap();
    assert_eq!(
        close_of(&mut ws).await,
        (1003, "hoop: frame-not-inspectable".into())
    );
    // The job sends an unmasked frame: clients must mask.
    let mut ws = ws_connect(&env, port, "/ws", &[]).await.unwrap();
    ws.get_mut().write_all(b"\x81\x02hi").await.unwrap();
    assert_eq!(
        close_of(&mut ws).await,
        (1002, "hoop: websocket-protocol-error".into())
    );
    // The job sets RSV1 on a (masked) frame.
    let mut ws = ws_connect(&env, port, "/ws", &[]).await.unwrap();
    ws.get_mut()
        .write_all(b"\xc1\x82\x00\x00\x00\x00hi")
        .await
        .unwrap();
    assert_eq!(
        close_of(&mut ws).await,
        (1003, "hoop: frame-not-inspectable".into())
    );
    // A message over the connection's bound.
    let mut ws = ws_connect(&env, port, "/ws", &[]).await.unwrap();
    ws.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(
        close_of(&mut ws).await,
        (1009, "hoop: message-too-big".into())
    );
    drop(ws);

    let recs = records_after(&env, 4).await;
    let mut reasons: Vec<String> = batches(&recs)
        .into_iter()
        .filter_map(|m| m.end)
        .map(|e| {
            assert_eq!(e.by, "gateway");
            e.reason.unwrap()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "frame-not-inspectable",
            "frame-not-inspectable",
            "message-too-big",
            "websocket-protocol-error"
        ]
    );
}

/// A WebSocket opened in observe mode lasts as long as observe mode does:
/// it stays open across the checks while the entry stands (the control:
/// an echo after two of them), and once a reload removes the entry both
/// sides get a close frame naming `no-connection`, on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_websocket_ends_with_observe_mode() {
    let until = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let elsewhere =
        "[[connection]]\nname = \"elsewhere\"\nhosts = [\"elsewhere.test\"]\nallow = [\"*\"]\n";
    let env = env_with(
        5000,
        &format!(
            "[[observe]]\nidentities = [\"test:proxy-client\"]\nuntil = \"{until}\"\n\n{elsewhere}"
        ),
    )
    .await;
    let origin = env.origin().await;
    let mut ws = ws_connect(&env, origin.addr.port(), "/ws", &[])
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "one");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::text("two")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "two");

    env.reload(elsewhere);
    assert_eq!(
        close_of(&mut ws).await,
        (1008, "hoop: no-connection".into())
    );
    let recs = records_after(&env, 1).await;
    let end = batches(&recs)
        .into_iter()
        .find_map(|m| m.end)
        .expect("the WebSocket's end is on record");
    assert_eq!(end.reason.as_deref(), Some("no-connection"), "{end:?}");
    assert!(end.detail.contains("no connection allows"), "{end:?}");
    let reqs: Vec<RequestData> = recs
        .iter()
        .filter(|r| r.kind == kind::REQUEST)
        .map(|r| r.parse().unwrap())
        .collect();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].decision, "observed");
}

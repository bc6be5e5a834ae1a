//! An answer before the body. When hoop refuses a request whose body it has
//! not read, the job still gets the answer whole, and what it goes on
//! sending is read and discarded: its HTTP/2 stream ends cleanly instead of
//! with RST_STREAM right behind the answer (which curl can take for a
//! failure and drop the answer with).
mod support;

use std::{future::poll_fn, time::Duration};

use bytes::Bytes;

const POLICY: &str = "[[connection]]\nname = \"partner\"\nhosts = [\"localhost\"]\nallow = [\"*\"]\n\
    [[connection.deny]]\nname = \"no-admin\"\npath = \"/admin/**\"\nmessage = \"admin is off limits\"\n";

const BODY: usize = 256 << 10;
const CHUNK: usize = 16 << 10;

/// Sends `n` bytes as flow control allows; `end` ends the stream with them.
async fn send(up: &mut h2::SendStream<Bytes>, mut n: usize, end: bool) -> Result<(), String> {
    while n > 0 {
        up.reserve_capacity(n);
        let cap = match poll_fn(|cx| up.poll_capacity(cx)).await {
            Some(Ok(c)) => c.min(n),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the stream no longer takes data".into()),
        };
        n -= cap;
        up.send_data(Bytes::from(vec![b'x'; cap]), end && n == 0)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_gets_its_answer_and_its_h2_stream_ends_cleanly() {
    let env = support::env_with(5000, POLICY).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    let (client, conn) = h2::client::handshake(env.tunnel(port, b"h2").await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post(format!("https://localhost:{port}/admin/upload"))
        .header("content-length", BODY.to_string())
        .body(())
        .unwrap();
    let (resp, mut up) = client.send_request(req, false).unwrap();
    send(&mut up, CHUNK, false).await.expect("the first chunk");
    // hoop refuses on the head, before the body is in.
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-hoop-reason"], "policy-denied");
    let mut sent = CHUNK;
    while sent < BODY {
        let n = CHUNK.min(BODY - sent);
        send(&mut up, n, sent + n == BODY)
            .await
            .unwrap_or_else(|e| panic!("the upload broke off after {sent} bytes: {e}"));
        sent += n;
    }
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(d) = body.data().await {
        let d = d.unwrap();
        let _ = body.flow_control().release_capacity(d.len());
        text.extend_from_slice(&d);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("admin is off limits"), "{text}");
    // Longer than a drain may last: a reset at its end would show too.
    let reset =
        tokio::time::timeout(Duration::from_millis(2500), poll_fn(|cx| up.poll_reset(cx))).await;
    assert!(
        !matches!(reset, Ok(Ok(_))),
        "the stream was reset: {reset:?}"
    );
    assert_eq!(origin.hits(), 0, "a refused request reached the upstream");
}

/// Over HTTP/1 the connection outlives the refusal: the rest of the upload
/// is read, so the next request on it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_h1_upload_leaves_the_connection_usable() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let env = support::env_with(5000, POLICY).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    let (mut client, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(env.tunnel(port, b"http/1.1").await))
            .await
            .unwrap();
    tokio::spawn(conn);
    let host = format!("localhost:{port}");
    let upload = http::Request::post("/admin/upload")
        .header("host", &host)
        .body(Full::new(Bytes::from(vec![b'x'; BODY])))
        .unwrap();
    let resp = client.send_request(upload).await.unwrap();
    assert_eq!(resp.status(), 403);
    let _ = resp.into_body().collect().await.unwrap();
    client.ready().await.expect("the connection is still open");
    let hello = http::Request::get("/hello")
        .header("host", &host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.send_request(hello).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(origin.hits(), 1);
}

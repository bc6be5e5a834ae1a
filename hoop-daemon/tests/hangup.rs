//! A job that goes away is not a refusal. Browsers open spare connections
//! and drop them unused; the pipeline reports those as the job closing
//! (logged at info, on record as such), while a job that speaks broken
//! HTTP is still refused with the parser's reason.
mod support;

use std::{sync::Arc, time::Duration};

use hoop::{
    flow::{Flow, Via},
    pipeline::{self, PipelineError},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Serves one connection from a client that sends `bytes`, then either
/// resets the connection (`reset`) or reads the answer.
async fn serve_one(bytes: &'static [u8], reset: bool) -> Result<(), PipelineError> {
    let env = support::env(2000).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        if reset {
            // Let the server read what was sent and wait for the rest.
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.set_zero_linger().unwrap();
            drop(s);
        } else {
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
        }
    });
    let (io, peer) = l.accept().await.unwrap();
    let flow = Arc::new(Flow {
        id: Flow::next_id(),
        via: Via::Transparent,
        orig_dst: "127.0.0.1:9".parse().unwrap(),
        target_host: None,
        peer,
        pid: 0,
        cgroup_id: 0,
        exe: None,
        job: None,
        identity: None,
    });
    let r = pipeline::serve(env.gw.clone(), io, flow).await;
    client.await.unwrap();
    r
}

#[tokio::test]
async fn a_job_resetting_mid_request_is_a_close_not_a_refusal() {
    let r = serve_one(b"GET / HTTP/1.1\r\nHost: example.test\r\n", true).await;
    match r {
        Err(PipelineError::JobClosed { detail }) => {
            assert!(detail.contains("reset"), "{detail}")
        }
        other => panic!("a reset was reported as {other:?}"),
    }
}

/// A browser that exits with a request in flight ends TLS without
/// close_notify: an unexpected EOF under hyper, which is the job closing.
#[tokio::test]
async fn a_job_ending_tls_without_close_notify_is_a_close_not_a_refusal() {
    let env = support::env(2000).await;
    let origin = env.origin().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let ca = std::fs::read(&env.hoop_ca);
    let client = tokio::spawn(async move {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&ca.unwrap()).unwrap())
            .unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("the job trusts hoop's leaf");
        tls.write_all(b"GET /hang HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The TCP connection closes under TLS (a FIN): no close_notify.
        let (mut tcp, _) = tls.into_inner();
        tcp.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let (io, peer) = l.accept().await.unwrap();
    // Routed (the default policy lets anyone reach any host), so the
    // request is in flight, waiting for the origin, at the EOF.
    let flow = Arc::new(Flow {
        id: Flow::next_id(),
        via: Via::Transparent,
        orig_dst: origin.addr,
        target_host: None,
        peer,
        pid: 0,
        cgroup_id: 0,
        exe: None,
        job: None,
        identity: Some(Arc::new(hoop::identity::Identity::local(
            "test:job", "/test",
        ))),
    });
    let r = pipeline::serve(env.gw.clone(), io, flow).await;
    client.await.unwrap();
    match r {
        Err(PipelineError::JobClosed { detail }) => {
            assert!(
                detail.contains("close_notify") || detail.contains("closed"),
                "{detail}"
            )
        }
        other => panic!("an unexpected EOF was reported as {other:?}"),
    }
}

#[tokio::test]
async fn broken_http_is_still_refused_with_the_parsers_reason() {
    let r = serve_one(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", false).await;
    match r {
        Err(PipelineError::BadRequest { detail }) => {
            assert!(detail.contains("job-side HTTP"), "{detail}")
        }
        other => panic!("broken HTTP was {other:?}"),
    }
}

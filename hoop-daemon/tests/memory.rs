//! Bodies stream: a large download through the proxy must not grow the
//! process's memory by more than a few MiB. Alone in its own test binary so
//! no other test's allocations blur the measurement.
mod support;

use hoop_testkit::peak_rss_kib;
use support::{env, parse_curl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_streams_in_constant_memory() {
    const SIZE: u64 = 512 << 20;
    let env = env(10_000).await;
    let origin = env.origin().await;
    // Warm up: TLS configs, leaf minting, connection setup.
    let url = |n: u64| format!("https://localhost:{}/bytes/{n}", origin.addr.port());
    let out = env
        .curl(&["-x", &env.proxy_url(), "-o", "/dev/null", &url(1 << 20)])
        .await;
    assert_eq!(parse_curl(&out).1, 200);
    let before = peak_rss_kib("self");
    for proto in ["--http1.1", "--http2"] {
        let out = env
            .curl(&[
                "-x",
                &env.proxy_url(),
                proto,
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &url(SIZE),
            ])
            .await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&SIZE.to_string()),
            "{proto}: incomplete download: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let grown_mib = (peak_rss_kib("self") - before) as f64 / 1024.0;
    eprintln!(
        "peak RSS grew by {grown_mib:.1} MiB over 2 × {} MiB downloads",
        SIZE >> 20
    );
    // Origin, gateway and client buffers together; a buffered body would
    // add hundreds of MiB.
    assert!(
        grown_mib < 16.0,
        "memory grew by {grown_mib:.1} MiB: a body is being buffered"
    );
}

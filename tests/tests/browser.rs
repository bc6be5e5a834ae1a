//! End to end with a real browser: Debian's Chromium, headless, started with
//! `hoop run` and no proxy settings, trusts the hoop CA through an NSS
//! database made by `hoop ca install-nss`, loads a page from a loopback
//! "partner" under a real-looking name, and the page's fetch() lands in the
//! DOM.
use std::{process::Command, time::Duration};

use hoop_testkit::{Origin, OriginOpts, TestCa};
use hoop_tests::TestEnv;

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

#[test]
fn chromium_loads_a_partner_page_through_the_gateway() {
    let ca = TestCa::default();
    let mut env = {
        let dir = tempfile::tempdir().unwrap().keep();
        let ca_file = dir.join("upstream-ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        TestEnv::new(
            "browser",
            PROBE,
            &format!("[tls]\nupstream_ca_files = [\"{}\"]\n", ca_file.display()),
        )
    };
    env.start_daemon();
    let tls = ca.server_config(&["partner.test"], &[b"h2", b"http/1.1"]);
    let origin = Origin::start_background(OriginOpts {
        tls: Some(tls),
        bind: Some("127.0.0.3:0".parse().unwrap()),
        also_v6: false,
    });

    // The job's own HOME, with an NSS db that trusts the hoop CA.
    let home = env.dir.path().join("home");
    let nssdb = home.join(".pki/nssdb");
    env.hoop_ok(&[
        std::ffi::OsStr::new("ca"),
        "install-nss".as_ref(),
        "--dir".as_ref(),
        nssdb.as_os_str(),
    ]);
    let listed = Command::new("certutil")
        .arg("-d")
        .arg(format!("sql:{}", nssdb.display()))
        .arg("-L")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("hoop local CA"));

    let url = format!("https://partner.test:{}/page", origin.addr.port());
    let out = env
        .hoop()
        .args(["run", "--", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP partner.test 127.0.0.3",
            "--virtual-time-budget=10000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            env.dir.path().join("profile").display()
        ))
        .args(["--dump-dom", &url])
        .env("HOME", &home)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("partner=acme items=3"),
        "the fetched JSON did not reach the DOM:\n{dom}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Vec<String> = origin.seen().iter().map(|s| s.path.clone()).collect();
    assert!(
        paths.iter().any(|p| p.ends_with("/page"))
            && paths.iter().any(|p| p.ends_with("/data.json")),
        "{paths:?}"
    );
    // Both requests went through the daemon, for the right name.
    for path in ["/page", "/data.json"] {
        assert!(
            env.wait_log(
                &[
                    "exchange",
                    &format!("partner.test:{}{path}", origin.addr.port()),
                    "status=200"
                ],
                Duration::from_secs(2)
            )
            .is_some(),
            "no exchange logged for {path}:\n{}",
            env.log()
        );
    }
}

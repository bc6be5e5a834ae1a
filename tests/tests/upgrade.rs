//! Protocol upgrades attacked by the threat model's job: non-root (nobody),
//! under `hoop run`, its traffic captured by the kernel programs. An `h2c`
//! upgrade (curl's own, and by hand over TLS) is refused with its reason
//! and never reaches the upstream; a WebSocket to a partner whose
//! connection injects a credential works, and the upstream's echo of that
//! credential reaches the job masked, in every form, and is on record
//! masked, with a HAR that validates.
use std::time::Duration;

use hoop_tests::{Partner, TestEnv, Upstream, Value};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");
const SECRET: &str = "sk-ws-7d1e4b9a2c5f8e03";

/// A partner on 127.0.0.3 whose connection injects SECRET, and a plain
/// connection to 127.0.0.1 (for plaintext h2c).
fn env(name: &str) -> (TestEnv, Partner) {
    let dir = tempfile::tempdir().unwrap().keep();
    let partner = Partner::start(&dir, "ws.partner.test");
    let secret = dir.join("partner.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let policy = partner
        .policy(
            "[[connection]]\nname = \"loopback\"\nhosts = [\"127.0.0.1\"]\nallow = [\"test:*\"]\n",
        )
        .replace(
            "upstream_ca_files",
            &format!(
                "credential = {{ secret = {{ file = \"{}\" }} }}\nupstream_ca_files",
                secret.display()
            ),
        );
    let mut env = TestEnv::custom(name, PROBE, "", "", "\"127.0.0.0/8\"", Some(&policy));
    env.start_daemon();
    (env, partner)
}

#[test]
fn h2c_is_refused_and_never_reaches_the_upstream() {
    let (env, partner) = env("upgrade-h2c");
    let up = Upstream::start("127.0.0.1:0");
    // curl's own h2c upgrade (with HTTP2-Settings), plaintext.
    let url = format!("http://127.0.0.1:{}/", up.addr.port());
    let (code, text) = env.curl_as_nobody(&["--http2", &url]);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("x-hoop-reason: upgrade-refused"), "{text}");
    // By hand, without HTTP2-Settings, and hidden behind websocket.
    for upgrade in ["Upgrade: h2c", "Upgrade: websocket, h2c", "Upgrade: H2C"] {
        let (code, text) = env.curl_as_nobody(&[
            "--http1.1",
            "-H",
            "Connection: Upgrade",
            "-H",
            upgrade,
            &url,
        ]);
        assert_eq!(code, 400, "{upgrade}: {text}");
        assert!(text.contains("x-hoop-reason: upgrade-refused"), "{text}");
    }
    assert_eq!(up.hits(), 0, "an h2c upgrade reached the upstream");
    // Over TLS to the credentialed partner too.
    let hits = partner.origin.hits();
    let (code, text) = env.curl_as_nobody(&[
        "--http1.1",
        "--resolve",
        &partner.resolve(),
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: h2c",
        &partner.url("/echo"),
    ]);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("x-hoop-reason: upgrade-refused"), "{text}");
    assert_eq!(partner.origin.hits(), hits);
    // Positive control: the same upstreams answer a plain request.
    let (code, text) = env.curl_as_nobody(&["--http1.1", &url]);
    assert_eq!(code, 200, "{text}");
    assert_eq!(up.hits(), 1);
}

#[test]
fn a_websocket_to_a_credentialed_partner_gets_the_credential_masked() {
    let (mut env, partner) = env("upgrade-ws");
    let ca = env.job_ca();
    let addr = format!("127.0.0.3:{}", partner.origin.addr.port());
    let probe = env.probe.display().to_string();
    let out = env.run_as_nobody(&[
        &probe,
        "ws",
        &addr,
        &partner.host,
        &ca,
        "/ws/leak",
        "5",
        "plain message",
    ]);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        line.contains(" ok "),
        "{line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = serde_json::from_str(line.split_once(" ok ").unwrap().1).unwrap();
    // Positive controls: the upstream saw the injected credential, and a
    // plain message echoes.
    let seen = partner.origin.seen();
    let auth = seen[0]
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str());
    assert_eq!(auth, Some(&*format!("Bearer {SECRET}")));
    assert_eq!(got[4], "plain message", "{got:?}");
    // The echoes of the credential reached the job masked, whole,
    // fragmented and as binary.
    assert!(
        got[0].starts_with("authorization: Bearer [hoop:credential]"),
        "{got:?}"
    );
    assert!(
        got[2].starts_with("fragmented: Bearer [hoop:credential]"),
        "{got:?}"
    );
    assert!(
        got[3].starts_with("binary:Bearer [hoop:credential]"),
        "{got:?}"
    );
    assert!(got.iter().all(|m| !m.contains(SECRET)), "{got:?}");

    // On record, masked: the messages, the timeline, a valid HAR.
    std::thread::sleep(Duration::from_millis(1500));
    env.stop_daemon();
    let record = env.hoop_ok(&["export", "jsonl"]);
    let record = String::from_utf8_lossy(&record.stdout);
    assert!(record.contains("\"kind\":\"messages\""), "{record}");
    assert!(record.contains("plain message"), "{record}");
    assert!(!record.contains(SECRET), "the audit log holds the secret");
    let list = env.hoop_ok(&["sessions", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    let session = list[0]["session"].as_str().unwrap().to_string();
    let timeline = env.hoop_ok(&["sessions", "show", &session]);
    let timeline = String::from_utf8_lossy(&timeline.stdout);
    assert!(timeline.contains("websocket of #"), "{timeline}");
    assert!(timeline.contains("credential×"), "{timeline}");
    let har = env.hoop_ok(&["export", "har", &session]);
    let file = env.dir.path().join("ws.har");
    std::fs::write(&file, &har.stdout).unwrap();
    let v: Value = serde_json::from_slice(&har.stdout).unwrap();
    let msgs = v["log"]["entries"][0]["_webSocketMessages"]
        .as_array()
        .unwrap();
    assert!(msgs.len() >= 6, "{msgs:?}");
    hoop_tests::validate_har(&file);
    let verify = env.hoop().args(["audit", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

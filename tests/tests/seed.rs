//! The seed scenario, end to end: a CI job's headless Chromium, started with
//! `hoop run` and an OIDC token, as an unprivileged user, with no proxy
//! settings, drives a partner's console (testkit's `seed`) over DevTools.
//! Every outcome must come from the gateway:
//! - the service credential is injected upstream but never reaches anything
//!   the browser can read (DOM, fetch bodies, response headers, an echo);
//! - card numbers and e-mail addresses arrive masked in the DOM;
//! - a DELETE on production is refused with the gateway's reason;
//! - a payout POST waits until root approves it; a second one is denied and
//!   the browser sees the denial;
//! - QUIC (forced for one name, offered by Alt-Svc for the other) and
//!   direct-IP requests do not get around the gateway;
//! - the session's audit record verifies, names the OIDC identity and
//!   Chromium's pid, and exports to a valid HAR.
use std::{path::Path, time::Duration};

use base64::Engine;
use hoop_testkit::{
    Origin, OriginOpts, TestCa,
    oidc::{Alg, Issuer},
    seed,
};
use hoop_tests::{TestEnv, UdpCounter, Value, write_file};
use serde_json::json;

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");
/// The partner's address: port 443 as the real thing, on an address no
/// other suite uses.
const PARTNER_IP: &str = "127.0.0.9";

fn hoop_json(env: &TestEnv, args: &[&str]) -> Value {
    let out = env.hoop().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "hoop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn approvals(env: &TestEnv, args: &[&str]) {
    let out = env.hoop().arg("approvals").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "hoop approvals {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_ci_browser_job_gets_only_what_the_gateway_allows() {
    // The partner, its QUIC port, and the CI provider's issuer.
    let partner_ca = TestCa::new("Acme partner CA");
    let origin = Origin::start_background(OriginOpts {
        tls: Some(partner_ca.server_config(
            &[seed::PARTNER_HOST, seed::QUIC_HOST, PARTNER_IP],
            &[b"h2", b"http/1.1"],
        )),
        bind: Some(format!("{PARTNER_IP}:443").parse().unwrap()),
        also_v6: false,
    });
    let quic = UdpCounter::start(&format!("{PARTNER_IP}:443"));
    let issuer = Issuer::start_background("127.0.0.4", Alg::Es256);

    let dir = tempfile::tempdir().unwrap();
    let secret = format!("sk_live_{:032x}", rand_u128());
    let parts = |d: &Path| {
        (
            write_file(d, "issuer-ca.pem", &issuer.ca.cert_pem, 0o644),
            write_file(d, "partner-ca.pem", &partner_ca.cert_pem, 0o644),
            write_file(d, "partner.key", &secret, 0o600),
        )
    };
    let (issuer_ca, partner_ca_file, secret_file) = parts(dir.path());
    let policy = seed::policy(&seed::PolicyParts {
        issuer_url: &issuer.url,
        issuer_ca: &issuer_ca,
        partner_ca: &partner_ca_file,
        secret_file: &secret_file,
    });
    let mut env = TestEnv::custom(
        "seed",
        PROBE,
        // The job runs as nobody and may use the control socket; root
        // approves.
        "control_group = \"nogroup\"",
        "",
        "\"127.0.0.0/8\"",
        Some(&policy),
    );
    env.start_daemon();

    // The job's token and home (an NSS db trusting the hoop CA), owned by
    // the job's user.
    let token = issuer.token(seed::JOB_SUBJECT);
    let token_file = write_file(env.dir.path(), "job-token", &token, 0o644);
    let home = env.dir.path().join("home");
    let hoop = hoop_tests::hoop_bin();
    let mut b = seed::launch_browser(&seed::Job {
        hoop: &hoop,
        config: &env.config,
        token: &token_file,
        home: &home,
        partner_ip: PARTNER_IP,
    })
    .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", env.log()));
    let console = format!("https://{}/console", seed::PARTNER_HOST);
    b.open(&console)
        .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", env.log()));

    // Masked fields arrive masked in the DOM.
    let r = b.eval("console_app.customers()").unwrap();
    assert_eq!(r["status"], 200, "{r}");
    let dom = b.dom().unwrap();
    for card in seed::CARD_NUMBERS {
        assert!(!dom.contains(card), "a full card number in the DOM:\n{dom}");
        let last4 = format!("************{}", &card[12..]);
        assert!(dom.contains(&last4), "{last4} not in the DOM:\n{dom}");
    }
    assert!(!dom.contains("ann.lee@example.com"), "{dom}");

    // The echo: the partner got the credential; the browser did not.
    let r = b.eval("console_app.whoami()").unwrap();
    assert_eq!(r["status"], 200, "{r}");
    let seen = origin.seen();
    let whoami = seen
        .iter()
        .find(|s| s.path.ends_with("/v1/whoami"))
        .unwrap();
    assert!(
        whoami
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && *v == format!("Bearer {secret}")),
        "the credential was not injected: {:?}",
        whoami.headers
    );
    // It echoed the header back, masked by the leak canary.
    let echoed = r["text"].as_str().unwrap();
    assert!(
        echoed.contains("\"authorization\":\"Bearer [hoop:credential]"),
        "{r}"
    );

    // DELETE on production: refused by the gateway, never sent.
    let r = b.eval("console_app.remove(41)").unwrap();
    assert_eq!(r["status"], 403, "{r}");
    assert_eq!(r["reason"], "policy-denied", "{r}");
    assert_eq!(r["rule"], "no-prod-delete", "{r}");
    assert!(r["text"].as_str().unwrap().contains("not allowed"), "{r}");
    assert!(
        !origin.seen().iter().any(|s| s.method == "DELETE"),
        "the DELETE reached the partner"
    );

    // A payout waits for a human; the upstream sees nothing until then.
    let call = b.start("console_app.payout(250)").unwrap();
    let id = env.wait_pending(0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !origin.seen().iter().any(|s| s.method == "POST"),
        "a held payout reached the partner"
    );
    approvals(&env, &["approve", &id]);
    let r = b.value(call).unwrap();
    assert_eq!(r["status"], 201, "{r}");
    assert!(r["text"].as_str().unwrap().contains("po_"), "{r}");

    // A second one is denied, and the browser sees why.
    let call = b.start("console_app.payout(990000)").unwrap();
    let id = env.wait_pending(0);
    approvals(&env, &["deny", &id, "--reason", "payouts are frozen today"]);
    let r = b.value(call).unwrap();
    assert_eq!(r["status"], 403, "{r}");
    assert!(
        r["text"]
            .as_str()
            .unwrap()
            .contains("payouts are frozen today"),
        "{r}"
    );
    assert_eq!(
        origin.seen().iter().filter(|s| s.method == "POST").count(),
        1,
        "only the approved payout may reach the partner"
    );

    // Escapes: QUIC forced for one name, and the partner's bare address.
    let hits = origin.hits();
    let r = b
        .eval(&format!(
            "console_app.reach('https://{}/v1/whoami')",
            seed::QUIC_HOST
        ))
        .unwrap();
    assert!(r.get("error").is_some(), "QUIC-only fetch succeeded: {r}");
    // Refused in the kernel: the UDP send itself fails (EPERM).
    assert!(
        b.failures()
            .iter()
            .any(|(url, e)| url.contains(seed::QUIC_HOST) && e == "net::ERR_ACCESS_DENIED"),
        "{:?}",
        b.failures()
    );
    let direct = format!("https://{PARTNER_IP}/v1/whoami");
    b.eval(&format!("console_app.reach('{direct}')")).unwrap();
    assert_eq!(
        origin.hits(),
        hits,
        "an escape attempt reached the partner: {:?}",
        origin.seen().last()
    );
    // What the browser got so far, bodies included, before another load
    // can make Chromium drop them.
    let mut responses = b.responses().unwrap();
    // Alt-Svc offered h3 on every answer; one more load gives Chromium the
    // chance to use it.
    let seen = b.events.len();
    b.open(&console).unwrap();
    b.eval("console_app.customers()").unwrap();
    assert_eq!(quic.hits(), 0, "a QUIC datagram reached the partner");
    responses.extend(b.responses_since(seen).unwrap());

    // Whatever the browser received, the credential is in none of it.
    let forms = [
        secret.clone(),
        base64::engine::general_purpose::STANDARD.encode(&secret),
        base64::engine::general_purpose::STANDARD.encode(format!("Bearer {secret}")),
    ];
    assert!(responses.len() >= 8, "{responses:?}");
    // Every body was read: a leak can't hide in one that wasn't. (The
    // page's no-cors request to the bare address got an opaque answer,
    // whose body neither the page nor DevTools can read.)
    for r in responses.iter().filter(|r| !r.url.starts_with(&direct)) {
        assert!(r.body.is_some() || r.status == 204, "no body for {r:?}");
    }
    let mut read = vec![b.dom().unwrap()];
    for r in &responses {
        read.push(r.headers.to_string());
        read.extend(r.raw_headers.iter().map(|h| h.to_string()));
        read.extend(r.body.clone());
    }
    for text in &read {
        for f in &forms {
            assert!(
                !text.contains(f.as_str()),
                "the credential reached the browser: {text}"
            );
        }
    }
    // The direct-IP request got the gateway's answer: a bypass would have
    // met the partner's own certificate, which the browser doesn't trust,
    // and got no answer at all.
    let ip = responses
        .iter()
        .find(|r| r.url.starts_with(&direct))
        .unwrap_or_else(|| panic!("no answer to {direct}: {:?}", b.failures()));
    assert_eq!(ip.status, 403, "{ip:?}");
    assert_eq!(ip.headers["x-hoop-reason"], "no-connection", "{ip:?}");
    // `hoop status` sums up the same.
    let t = env.status()["traffic"].clone();
    let outcome = |o: &str| {
        t["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == o)
            .map(|p| p[1].as_u64().unwrap())
    };
    assert_eq!(outcome("approved"), Some(1), "{t}");
    assert_eq!(outcome("denied"), Some(2), "{t}");
    assert!(outcome("forwarded") >= Some(6), "{t}");
    assert!(outcome("refused") >= Some(1), "{t}");
    assert!(t["masked"].as_u64() >= Some(9), "{t}");
    let processes = b.processes().unwrap();
    let chromium_pid = b.pid();
    b.close();

    // The record: the session of the OIDC identity, Chromium's pid.
    std::thread::sleep(Duration::from_millis(300));
    env.stop_daemon();
    let sessions = hoop_json(&env, &["sessions", "list", "--json"]);
    let want = format!("ci:{}", seed::JOB_SUBJECT);
    let session = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["identity"].as_str() == Some(want.as_str()))
        .unwrap_or_else(|| panic!("no session of {want}: {sessions}"));
    let id = session["session"].as_str().unwrap();
    let out = env
        .hoop()
        .args(["export", "jsonl", "--session", id])
        .output()
        .unwrap();
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let start = records
        .iter()
        .find(|r| r["kind"] == "session-start")
        .unwrap();
    assert_eq!(start["data"]["pid"], json!(chromium_pid), "{start}");
    let pids: Vec<Value> = processes.iter().map(|p| p["id"].clone()).collect();
    let requests: Vec<&Value> = records.iter().filter(|r| r["kind"] == "request").collect();
    assert!(requests.len() >= 4, "{records:?}");
    for r in &requests {
        assert!(
            pids.contains(&r["data"]["pid"]),
            "{r} not from {processes:?}"
        );
        assert!(
            r["data"]["exe"]
                .as_str()
                .unwrap_or_default()
                .contains("chromium"),
            "{r}"
        );
    }
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(&secret), "the credential is on record");
    let out = env.hoop().args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = env.hoop().args(["export", "har", id]).output().unwrap();
    assert!(out.status.success());
    let har = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(har.contains("no-prod-delete") && har.contains("/v1/prod/payouts"));
    for card in seed::CARD_NUMBERS {
        assert!(!har.contains(card), "a full card number in the HAR");
    }
    let file = env.dir.path().join("seed.har");
    std::fs::write(&file, &har).unwrap();
    hoop_tests::validate_har(&file);
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u128::from_le_bytes(b)
}

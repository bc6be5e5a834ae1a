//! The approvers' console, end to end, with real parts: the seed
//! scenario's CI job (a headless Chromium under `hoop run`, as nobody,
//! with an OIDC token naming carol as its actor) makes a payout that is
//! held; approvers sign in to hoop's console in their own Chromium through
//! a real OpenID provider's login form (npm `oidc-provider`, authorization
//! code flow with PKCE) and decide there. Checked:
//! - the held POST appears on an approver's page without a reload, with
//!   its masked body, and a second approver sees the decision live;
//! - carol (the job's actor) is refused as a self-approver, dave (not in
//!   the approvers' group) sees no held request and gets 403 for its body
//!   and a decision; both refusals are recorded and the request stays held;
//! - a POST without the CSRF token, with a wrong one, or from another
//!   Origin is refused; a tampered session cookie is refused;
//! - approve reaches the job's Chromium as 201, deny with a reason as 403
//!   with that reason;
//! - the job cannot reach the console, even through the gateway;
//! - sign-ins, the body view and the decisions are in the verified audit
//!   log with the approver's identity.
//!
//! A screenshot of the inbox is saved to target/test-artifacts/.
use std::{path::Path, process::Command, time::Duration};

use hoop_testkit::{
    Origin, OriginOpts, TestCa,
    cdp::Browser,
    idp,
    oidc::{Alg, Issuer},
    seed,
};
use hoop_tests::{TestEnv, Value, free_port, write_file};
use serde_json::json;

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");
const PARTNER_IP: &str = "127.0.0.19";
const PROVIDER_IP: &str = "127.0.0.17";

/// Waits until `cond` holds in the page, or fails the test with `what`.
fn wait(b: &mut Browser, cond: &str, what: &str) {
    if let Err(e) = b.wait_js(cond, Duration::from_secs(30)) {
        panic!("{what}: {e:#}");
    }
}

/// The console's session cookie in this browser (HttpOnly: read over
/// DevTools, as only the test can), after checking how it was set.
fn session_cookie(b: &mut Browser) -> String {
    let c = b.call("Network.getAllCookies", json!({})).unwrap();
    let c = c["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "__Host-hoop-console")
        .cloned()
        .expect("no console session cookie");
    assert_eq!(
        (&c["httpOnly"], &c["secure"], &c["sameSite"], &c["path"]),
        (&json!(true), &json!(true), &json!("Strict"), &json!("/")),
        "{c}"
    );
    assert!(c["value"].as_str().unwrap().len() >= 43, "{c}");
    c["value"].as_str().unwrap().to_string()
}

/// A POST from the page's own origin (fetch), answered as JSON.
fn page_post(b: &mut Browser, path: &str, headers: Value, body: &str) -> Value {
    b.eval(&format!(
        "fetch('{path}', {{method: 'POST', headers: Object.assign({{accept: 'application/json', \
         'content-type': 'application/x-www-form-urlencoded'}}, {headers}), body: {body:?}}})\
         .then(async r => ({{status: r.status, reason: r.headers.get('x-hoop-reason'), text: await r.text()}}))"
    ))
    .unwrap()
}

/// curl to the console, outside any browser: what a forger could send.
fn curl(console: &str, ca: &Path, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-o", "-", "-D", "/dev/stderr", "-w", "\n%{http_code}"])
        .args(args)
        .arg(console)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).to_lowercase(),
    )
}

#[test]
fn approvers_decide_in_the_console_and_nobody_else_can() {
    let partner_ca = TestCa::new("Acme partner CA");
    let origin = Origin::start_background(OriginOpts {
        tls: Some(partner_ca.server_config(
            &[seed::PARTNER_HOST, seed::QUIC_HOST, PARTNER_IP],
            &[b"h2", b"http/1.1"],
        )),
        bind: Some(format!("{PARTNER_IP}:443").parse().unwrap()),
        also_v6: false,
    });
    let issuer = Issuer::start_background("127.0.0.18", Alg::Es256);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let console = format!("https://127.0.0.1:{port}");
    let provider =
        idp::Provider::start(dir.path(), PROVIDER_IP, &format!("{console}/callback")).unwrap();
    let (idp_url, idp_ca) = (provider.issuer.clone(), provider.ca_file.clone());
    let console_secret = write_file(dir.path(), "console-secret", idp::CLIENT_SECRET, 0o600);
    let issuer_ca = write_file(dir.path(), "issuer-ca.pem", &issuer.ca.cert_pem, 0o644);
    let partner_ca_file = write_file(dir.path(), "partner-ca.pem", &partner_ca.cert_pem, 0o644);
    let secret_file = write_file(
        dir.path(),
        "partner.key",
        "sk_live_console_0123456789abcdef",
        0o600,
    );
    let policy = seed::policy(&seed::PolicyParts {
        issuer_url: &issuer.url,
        issuer_ca: &issuer_ca,
        partner_ca: &partner_ca_file,
        secret_file: &secret_file,
    })
    .replace(
        "approvers = [\"uid:0\"]",
        "approvers = [\"oidc:group:payments-leads\"]\nmessage = \"Payouts need a payments lead\"",
    );
    assert!(policy.contains("oidc:group:payments-leads"), "{policy}");
    let policy = format!(
        "{policy}\n[[connection.approve]]\nname = \"refunds\"\nmethod = \"POST\"\n\
         path = \"/v1/prod/refunds\"\napprovers = [\"oidc:group:payments-leads\"]\ntimeout = \"2s\"\n"
    );
    let console_cfg = format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\njob_actor_claim = \"actor\"\n\
         auditors = [\"oidc:email:alice@example.test\"]\n\n\
         [console.oidc]\nissuer = \"{idp_url}\"\nclient_id = \"hoop-console\"\n\
         client_secret = {{ file = \"{}\" }}\nredirect_url = \"{console}/callback\"\n\
         scopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nca_files = [\"{}\"]\n",
        console_secret.display(),
        idp_ca.display()
    );
    let mut env = TestEnv::custom(
        "console",
        PROBE,
        "control_group = \"nogroup\"",
        &console_cfg,
        "\"127.0.0.0/8\"",
        Some(&policy),
    );
    env.start_daemon();
    let hoop_ca = env.hoop_ca();

    // The job: the seed's Chromium, with a token saying carol started it.
    let mut claims = issuer.claims(seed::JOB_SUBJECT);
    claims["actor"] = json!("carol");
    claims["repository"] = json!("acme/scraper");
    let token_file = write_file(
        env.dir.path(),
        "job-token",
        &issuer.token_with(&claims),
        0o644,
    );
    let hoop = hoop_tests::hoop_bin();
    let mut job = seed::launch_browser(&seed::Job {
        hoop: &hoop,
        config: &env.config,
        token: &token_file,
        home: &env.dir.path().join("home"),
        partner_ip: PARTNER_IP,
    })
    .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", env.log()));
    job.open(&format!("https://{}/console", seed::PARTNER_HOST))
        .unwrap();

    // The job can't reach the console: not directly (its connect goes to
    // the gateway, which refuses the daemon's own services) ...
    let r = job
        .eval(&format!(
            "fetch('{console}/').then(r => 'reached ' + r.status, e => 'failed: ' + e)"
        ))
        .unwrap();
    assert_eq!(r, json!("failed: TypeError: Failed to fetch"), "{r}");
    assert!(
        env.wait_log(
            &["is the daemon's approver console"],
            Duration::from_secs(5)
        )
        .is_some(),
        "{}",
        env.log()
    );

    // A sign-in's state is bound to the browser it was given to: the
    // callback URL of a sign-in started elsewhere is refused (login CSRF).
    let (code, _, head) = curl(&format!("{console}/login"), &hoop_ca, &[]);
    assert_eq!(code, 303, "{head}");
    assert!(head.contains("set-cookie: __host-hoop-login="), "{head}");
    let state = head
        .split("state=")
        .nth(1)
        .and_then(|r| r.split(['&', '\r', '\n']).next())
        .expect("a state in the redirect")
        .to_string();
    let (code, _, head) = curl(
        &format!("{console}/callback?state={state}&code=anything"),
        &hoop_ca,
        &[],
    );
    assert_eq!(code, 400, "{head}");
    assert!(head.contains("x-hoop-reason: sign-in-state"), "{head}");

    // Approvers sign in: alice and bob are payments leads.
    let approver = |who: &str| {
        let home = env.dir.path().join(format!("approver-{who}"));
        idp::approver_browser(&hoop, &env.config, &idp_ca, &home).unwrap()
    };
    let mut alice = approver("alice");
    idp::sign_in(&mut alice, &console, "alice").unwrap();
    wait(
        &mut alice,
        "document.getElementById('empty') && !document.getElementById('empty').hidden",
        "an empty inbox",
    );
    alice.eval("window.__loaded_once = 42").unwrap();
    let mut other = approver("other");

    // The payout is held; it appears on alice's page without a reload.
    let payout = job
        .start(
            "fetch('/v1/prod/payouts', {method: 'POST', headers: {'content-type': 'application/json'}, \
             body: JSON.stringify({amount: 250, currency: 'EUR', beneficiary: 'ann.lee@example.com'})})\
             .then(async r => ({status: r.status, text: await r.text()}))",
        )
        .unwrap();
    let id = env.wait_pending(0);
    wait(
        &mut alice,
        &format!("document.getElementById('a-{id}')"),
        "the held payout on alice's page",
    );
    assert_eq!(
        alice.eval("window.__loaded_once").unwrap(),
        json!(42),
        "the page reloaded"
    );
    let item = alice
        .eval(&format!("document.getElementById('a-{id}').innerText"))
        .unwrap();
    let item = item.as_str().unwrap();
    for want in [
        "POST",
        "/v1/prod/payouts",
        "carol",
        "acme/scraper",
        "chromium",
        "Payouts need a payments lead",
    ] {
        assert!(item.contains(want), "{want:?} not shown:\n{item}");
    }
    // Its body, masked, on request (and recorded as viewed).
    alice
        .eval(&format!(
            "document.querySelector('#a-{id} button.show-body').click(); true"
        ))
        .unwrap();
    wait(
        &mut alice,
        &format!(
            "document.querySelector('#a-{id} pre.body:not([hidden])')?.textContent.length > 0"
        ),
        "the held body",
    );
    let body = alice
        .eval(&format!(
            "document.querySelector('#a-{id} pre.body').textContent"
        ))
        .unwrap();
    let body = body.as_str().unwrap();
    assert!(body.contains("\"amount\":250"), "{body}");
    assert!(
        !body.contains("ann.lee@example.com"),
        "the e-mail was not masked: {body}"
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    alice
        .screenshot(&artifacts.join("console-inbox.png"), 1100, 1000)
        .unwrap();

    // carol started the job: she is a payments lead, and still refused.
    idp::sign_in(&mut other, &console, "carol").unwrap();
    wait(
        &mut other,
        &format!("document.getElementById('a-{id}')"),
        "the payout on carol's page",
    );
    let csrf = other
        .eval("document.querySelector('meta[name=csrf]').content")
        .unwrap();
    let csrf = csrf.as_str().unwrap().to_string();
    let r = page_post(
        &mut other,
        &format!("/approvals/{id}/approve"),
        json!({"x-hoop-csrf": csrf}),
        "",
    );
    assert_eq!(
        (r["status"].clone(), r["reason"].clone()),
        (json!(403), json!("self-approval")),
        "{r}"
    );
    assert!(
        r["text"]
            .as_str()
            .unwrap()
            .contains("can't approve their own job"),
        "{r}"
    );

    // CSRF: no token, a wrong token, another origin; all refused.
    for (headers, body, why) in [
        (json!({}), "", "the CSRF token is missing"),
        (
            json!({"x-hoop-csrf": "forged"}),
            "",
            "the CSRF token is wrong",
        ),
        (json!({}), "csrf=forged", "the CSRF token is wrong"),
    ] {
        let r = page_post(
            &mut other,
            &format!("/approvals/{id}/deny"),
            headers,
            &format!("{body}&reason=x"),
        );
        assert_eq!(
            (r["status"].clone(), r["reason"].clone()),
            (json!(403), json!("csrf")),
            "{r}"
        );
        assert!(r["text"].as_str().unwrap().contains(why), "{why}: {r}");
    }
    let carol_cookie = session_cookie(&mut other);
    let (code, body, head) = curl(
        &format!("{console}/approvals/{id}/deny"),
        &hoop_ca,
        &[
            "-H",
            &format!("cookie: __Host-hoop-console={carol_cookie}"),
            "-H",
            "origin: https://evil.example",
            "-d",
            &format!("csrf={csrf}&reason=forged"),
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        head.contains("x-hoop-reason: csrf") && body.contains("another origin"),
        "{head}{body}"
    );

    // dave is not an approver: nothing shown, body and decision refused.
    idp::sign_in(&mut other, &console, "dave").unwrap();
    assert_eq!(
        other
            .eval("document.querySelectorAll('#inbox li').length")
            .unwrap(),
        json!(0)
    );
    let r = other
        .eval(&format!(
            "fetch('/approvals/{id}/body').then(async r => ({{status: r.status, reason: r.headers.get('x-hoop-reason'), text: await r.text()}}))"
        ))
        .unwrap();
    assert_eq!(
        (r["status"].clone(), r["reason"].clone()),
        (json!(403), json!("not-approver")),
        "{r}"
    );
    assert!(!r["text"].as_str().unwrap().contains("amount"), "{r}");
    let csrf = other
        .eval("document.querySelector('meta[name=csrf]').content")
        .unwrap();
    let r = page_post(
        &mut other,
        &format!("/approvals/{id}/approve"),
        json!({"x-hoop-csrf": csrf}),
        "",
    );
    assert_eq!(
        (r["status"].clone(), r["reason"].clone()),
        (json!(403), json!("not-approver")),
        "{r}"
    );

    // A tampered session cookie is no session; the real one is (control).
    let alice_cookie = session_cookie(&mut alice);
    let mut tampered = alice_cookie.clone().into_bytes();
    tampered[5] = if tampered[5] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (cookie, want) in [(&tampered, 401), (&alice_cookie, 200)] {
        let (code, body, head) = curl(
            &format!("{console}/approvals/{id}/body"),
            &hoop_ca,
            &["-H", &format!("cookie: __Host-hoop-console={cookie}")],
        );
        assert_eq!(code, want, "{head}{body}");
        if want == 401 {
            assert!(head.contains("x-hoop-reason: not-signed-in"), "{head}");
        }
    }
    // The live stream opens with what is pending for her now, so a
    // request held while her page loaded is not missed.
    let out = Command::new("curl")
        .args(["-sSN", "--max-time", "2", "--cacert"])
        .arg(&hoop_ca)
        .args(["-H", &format!("cookie: __Host-hoop-console={alice_cookie}")])
        .arg(format!("{console}/events"))
        .output()
        .unwrap();
    let stream = String::from_utf8_lossy(&out.stdout);
    let events: Vec<(&str, Value)> = stream
        .split("\n\n")
        .filter_map(|block| {
            let event = block.strip_prefix("event: ")?.lines().next()?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event, serde_json::from_str(data).ok()?))
        })
        .collect();
    let held_at = events
        .iter()
        .position(|(e, d)| *e == "held" && d["id"] == json!(id));
    let synced_at = events.iter().position(|(e, d)| {
        *e == "synced"
            && d["pending"]
                .as_array()
                .is_some_and(|p| p.contains(&json!(id)))
    });
    assert!(
        matches!((held_at, synced_at), (Some(h), Some(s)) if h < s),
        "{stream}"
    );
    // Still held through all of that.
    assert!(
        !origin.seen().iter().any(|s| s.method == "POST"),
        "a held payout reached the partner"
    );

    // A grant of no time is no grant: refused, still held.
    let alice_csrf = alice
        .eval("document.querySelector('meta[name=csrf]').content")
        .unwrap();
    let r = page_post(
        &mut alice,
        &format!("/approvals/{id}/approve"),
        json!({"x-hoop-csrf": alice_csrf}),
        "for=0",
    );
    assert_eq!(
        (r["status"].clone(), r["reason"].clone()),
        (json!(400), json!("bad-grant")),
        "{r}"
    );

    // bob watches; alice approves; bob sees it live, the job gets 201.
    idp::sign_in(&mut other, &console, "bob").unwrap();
    wait(
        &mut other,
        &format!("document.getElementById('a-{id}')"),
        "the payout on bob's page",
    );
    other.eval("window.__loaded_once = 7").unwrap();
    alice
        .eval(&format!(
            "document.querySelector('#a-{id} form.decide button.approve').click(); true"
        ))
        .unwrap();
    let r = job.value(payout).unwrap();
    assert_eq!(r["status"], 201, "{r}");
    wait(
        &mut other,
        &format!("document.querySelector('#d-{id}[data-status=approved]')"),
        "the decision on bob's page",
    );
    assert_eq!(
        other.eval("window.__loaded_once").unwrap(),
        json!(7),
        "bob's page reloaded"
    );
    let done = other
        .eval(&format!("document.getElementById('d-{id}').innerText"))
        .unwrap();
    assert!(
        done.as_str().unwrap().contains("oidc:alice@example.test"),
        "{done}"
    );

    // Deny with a reason: the job's Chromium reads it.
    let payout = job
        .start(
            "fetch('/v1/prod/payouts', {method: 'POST', headers: {'content-type': 'application/json'}, \
             body: JSON.stringify({amount: 990000, currency: 'EUR'})}).then(async r => ({status: r.status, text: await r.text()}))",
        )
        .unwrap();
    let id2 = env.wait_pending(0);
    wait(
        &mut other,
        &format!("document.getElementById('a-{id2}')"),
        "the second payout",
    );
    other
        .eval(&format!(
            "const f = document.querySelector('#a-{id2} form[action$=deny]');\
             f.querySelector('input[name=reason]').value = 'payouts are frozen today';\
             f.querySelector('button.deny').click(); true"
        ))
        .unwrap();
    let r = job.value(payout).unwrap();
    assert_eq!(r["status"], 403, "{r}");
    assert!(
        r["text"]
            .as_str()
            .unwrap()
            .contains("payouts are frozen today"),
        "{r}"
    );
    wait(
        &mut alice,
        &format!("document.querySelector('#d-{id2}[data-status=denied]')"),
        "the denial on alice's page",
    );
    // dave watches too, but is no approver: nothing of the next one may
    // reach his page, while alice's (the control) shows it all.
    idp::sign_in(&mut other, &console, "dave").unwrap();
    other.eval("window.__loaded_once = 9").unwrap();

    // Nobody decides: the expiry reaches the job and shows on the page.
    let refund = job
        .start(
            "fetch('/v1/prod/refunds', {method: 'POST', body: 'r=1'})\
             .then(async r => ({status: r.status, text: await r.text()}))",
        )
        .unwrap();
    let id3 = env.wait_pending(0);
    wait(
        &mut alice,
        &format!("document.getElementById('a-{id3}')"),
        "the refund",
    );
    let r = job.value(refund).unwrap();
    assert_eq!(r["status"], 403, "{r}");
    assert!(r["text"].as_str().unwrap().contains("expired"), "{r}");
    wait(
        &mut alice,
        &format!(
            "document.querySelector('#d-{id3}[data-status=expired]') && !document.getElementById('a-{id3}')"
        ),
        "the expiry on alice's page",
    );
    assert_eq!(
        origin.seen().iter().filter(|s| s.method == "POST").count(),
        1,
        "only the approved payout may reach the partner"
    );

    // Approved for a window: this payout, and the job's next one under
    // the same rule without a hold (nothing pending, straight to 201).
    let pay = "fetch('/v1/prod/payouts', {method: 'POST', headers: {'content-type': 'application/json'}, \
               body: JSON.stringify({amount: 120, currency: 'EUR'})}).then(async r => ({status: r.status, text: await r.text()}))";
    let payout = job.start(pay).unwrap();
    let id4 = env.wait_pending(0);
    wait(
        &mut alice,
        &format!("document.getElementById('a-{id4}')"),
        "the payout to approve for 10 minutes",
    );
    alice
        .eval(&format!(
            "const g = document.querySelector('#a-{id4} form.decide');\
             g.querySelector('select[name=for]').value = '600';\
             g.querySelector('button.approve').click(); true"
        ))
        .unwrap();
    let r = job.value(payout).unwrap();
    assert_eq!(r["status"], 201, "{r}");
    let r = job.eval(pay).unwrap();
    assert_eq!(r["status"], 201, "within the window: {r}");
    assert!(
        !env.approvals().iter().any(|a| a["status"] == "pending"),
        "the payout inside the window was held"
    );
    assert_eq!(
        origin.seen().iter().filter(|s| s.method == "POST").count(),
        3,
        "the approved payout and the one inside its window"
    );
    assert_eq!(
        other
            .eval(
                "[window.__loaded_once, document.querySelectorAll('#inbox li, #decided li').length]"
            )
            .unwrap(),
        json!([9, 0]),
        "dave's page got events of a request he may not decide"
    );

    // The recorded sessions, read-only, for approvers: filtered, the
    // job's timeline (with the decisions in it), and its HAR.
    let job_session = env
        .approvals()
        .iter()
        .find(|a| a["id"] == json!(id))
        .and_then(|a| a["job"].as_str().map(str::to_string))
        .expect("the approval names its job");
    alice
        .open(&format!("{console}/sessions?identity=nobody:*"))
        .unwrap();
    wait(
        &mut alice,
        "document.getElementById('no-sessions')",
        "an empty filter",
    );
    alice
        .open(&format!("{console}/sessions?identity=ci:*"))
        .unwrap();
    wait(
        &mut alice,
        &format!("document.querySelector('a[href=\"/sessions/{job_session}\"]')"),
        "the job's session in the list",
    );
    // By upstream host too: one the job never reached lists nothing.
    alice
        .open(&format!("{console}/sessions?host=nowhere.example"))
        .unwrap();
    wait(
        &mut alice,
        "document.getElementById('no-sessions')",
        "a host the job never reached",
    );
    alice
        .open(&format!("{console}/sessions?host=api.partner.*"))
        .unwrap();
    wait(
        &mut alice,
        &format!("document.querySelector('a[href=\"/sessions/{job_session}\"]')"),
        "the job's session under its upstream host",
    );
    alice
        .open(&format!("{console}/sessions/{job_session}"))
        .unwrap();
    let timeline = alice
        .eval("document.getElementById('timeline').textContent")
        .unwrap();
    let timeline = timeline.as_str().unwrap();
    for want in [
        "console decision by alice@example.test",
        "approved by oidc:alice@example.test",
        "denied by oidc:bob@example.test",
        "POST https://api.partner.example/v1/prod/payouts",
    ] {
        assert!(
            timeline.contains(want),
            "{want:?} not in the timeline:\n{timeline}"
        );
    }
    let har = alice
        .eval(&format!(
            "fetch('/sessions/{job_session}/har').then(async r => ({{disposition: r.headers.get('content-disposition'), har: await r.json()}}))"
        ))
        .unwrap();
    assert!(
        har["disposition"].as_str().unwrap().contains(".har"),
        "{har}"
    );
    assert!(
        har["har"]["log"]["entries"]
            .as_array()
            .is_some_and(|e| e.len() >= 3),
        "{har}"
    );
    // dave is no auditor: no sessions for him (control: alice above).
    let r = other
        .eval("fetch('/sessions').then(r => ({status: r.status, reason: r.headers.get('x-hoop-reason')}))")
        .unwrap();
    assert_eq!(r, json!({"status": 403, "reason": "not-auditor"}));

    // Sign-out: the page's button ends the session; the old cookie reads
    // nothing more (the control: the same request with it, just before).
    let cookie = session_cookie(&mut alice);
    let with_cookie = || {
        curl(
            &format!("{console}/sessions"),
            &hoop_ca,
            &["-H", &format!("cookie: __Host-hoop-console={cookie}")],
        )
    };
    let (code, body, head) = with_cookie();
    assert_eq!(code, 200, "{head}{body}");
    alice.open(&format!("{console}/")).unwrap();
    let _ = alice.eval("document.querySelector('form[action=\"/logout\"] button').click()");
    wait(
        &mut alice,
        "location.pathname === '/' && !document.getElementById('who')",
        "the page after signing out",
    );
    let (code, body, head) = with_cookie();
    assert_eq!(code, 401, "the old cookie still reads: {head}{body}");
    assert!(head.contains("x-hoop-reason: not-signed-in"), "{head}");

    // Everything is on record, with the approvers' identities.
    job.close();
    let out = env.hoop().args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.hoop().args(["export", "jsonl"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    let console_events: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "console")
        .map(|r| r["data"].clone())
        .collect();
    let has = |event: &str, email: &str, detail: &str| {
        console_events.iter().any(|e| {
            e["event"] == event
                && e["email"] == email
                && e["detail"].as_str().unwrap_or("").contains(detail)
        })
    };
    for (event, who, detail) in [
        ("sign-in", "alice@example.test", "payments-leads"),
        ("sign-in", "dave@example.test", "marketing"),
        ("sign-out", "alice@example.test", "signed out"),
        ("view", "alice@example.test", "viewed the held body"),
        (
            "refused",
            "carol@example.test",
            "can't approve their own job",
        ),
        ("refused", "dave@example.test", "not an approver"),
        (
            "decision",
            "alice@example.test",
            "approved by oidc:alice@example.test",
        ),
        (
            "decision",
            "bob@example.test",
            "denied by oidc:bob@example.test",
        ),
    ] {
        assert!(
            has(event, who, detail),
            "no {event} by {who} ({detail}) in:\n{console_events:#?}\n{}",
            &lines[lines.len().saturating_sub(3000)..]
        );
    }
    alice.close();
    other.close();
}

/// `v0=` HMAC-SHA256 as Slack signs a callback (computed here with ring,
/// outside hoop's code).
fn slack_sign(secret: &str, ts: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(tag.as_ref()))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Slack's buttons: the held request is posted with Approve and Deny; a
/// click decides only when Slack signed it, recently, once, and for a
/// mapped user who may approve. Every refusal is recorded.
#[test]
fn slack_buttons_decide_only_when_signed_fresh_and_once() {
    let up_ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap();
    let up_ca_file = write_file(dir.path(), "upstream-ca.pem", &up_ca.cert_pem, 0o644);
    let signing = "test-only-slack-signing-secret";
    let signing_file = write_file(dir.path(), "slack-secret", signing, 0o600);
    let console_secret = write_file(dir.path(), "console-secret", idp::CLIENT_SECRET, 0o600);
    let (hook, hooks) = hoop_tests::webhook();
    let port = free_port();
    let console = format!("https://127.0.0.1:{port}");
    let policy = format!(
        r#"[approvals.slack]
webhook_url = "{hook}"
signing_secret = {{ file = "{signing}" }}
users = {{ U1ALICE = "alice@acme.example", U2MALLORY = "mallory@acme.example" }}

[[identity.static]]
cgroup = "{{cgroup}}/**"
name = "test:local"

[[connection]]
name = "partner"
hosts = ["api.partner.test"]
allow = ["test:*"]
upstream_ca_files = ["{up}"]

[[connection.approve]]
name = "prod-writes"
method = "POST"
path = "/echo"
approvers = ["oidc:email:alice@acme.example"]
timeout = "30s"
"#,
        signing = signing_file.display(),
        up = up_ca_file.display(),
    );
    // The provider is never asked here: only Slack's callbacks are.
    let console_cfg = format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\n\n[console.oidc]\n\
         issuer = \"https://{PROVIDER_IP}:9\"\nclient_id = \"hoop-console\"\n\
         client_secret = {{ file = \"{}\" }}\nredirect_url = \"{console}/callback\"\n",
        console_secret.display()
    );
    let mut env = TestEnv::custom(
        "slack",
        PROBE,
        "control_group = \"nogroup\"",
        &console_cfg,
        "\"127.0.0.0/8\"",
        Some(&policy),
    );
    env.start_daemon();
    let origin = Origin::start_background(OriginOpts {
        tls: Some(up_ca.server_config(&["api.partner.test"], &[b"http/1.1"])),
        bind: Some("127.0.0.3:0".parse().unwrap()),
        also_v6: false,
    });
    let hoop_ca = env.dir.path().join("hoop-ca.pem");
    std::fs::copy(env.hoop_ca(), &hoop_ca).unwrap();
    let port_up = origin.addr.port();
    let job = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(hoop_tests::hoop_bin())
        .arg("--config")
        .arg(&env.config)
        .args(["run", "--", "curl", "-sS", "--max-time", "30", "--cacert"])
        .arg(&hoop_ca)
        .args([
            "--resolve",
            &format!("api.partner.test:{port_up}:127.0.0.3"),
            "-X",
            "POST",
            "-d",
            "payload",
            "-w",
            "\n%{http_code}\n",
            &format!("https://api.partner.test:{port_up}/echo"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = env.wait_pending(0);

    // Slack got the message, with both buttons carrying the approval.
    assert!(
        hoop_tests::eventually(Duration::from_secs(5), || hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.contains(&id))),
        "no Slack message: {:?}",
        hooks.lock().unwrap()
    );
    let msg: Value = serde_json::from_str(
        hooks
            .lock()
            .unwrap()
            .iter()
            .find(|h| h.contains(&id))
            .unwrap(),
    )
    .unwrap();
    let buttons = &msg["blocks"][1]["elements"];
    assert_eq!(
        (buttons[0]["action_id"].clone(), buttons[0]["value"].clone()),
        (json!("hoop_approve"), json!(id)),
        "{msg}"
    );
    assert_eq!(buttons[1]["action_id"], "hoop_deny", "{msg}");

    let click = |user: &str, action: &str| {
        let payload = json!({"type": "block_actions", "user": {"id": user, "username": user},
            "actions": [{"action_id": action, "value": id, "type": "button"}]});
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
    };
    let post = |body: &str, ts: Option<&str>, sig: Option<&str>| {
        let mut args = vec![
            "-X".to_string(),
            "POST".into(),
            "--data-binary".into(),
            body.into(),
        ];
        if let Some(ts) = ts {
            args.extend(["-H".into(), format!("x-slack-request-timestamp: {ts}")]);
        }
        if let Some(sig) = sig {
            args.extend(["-H".into(), format!("x-slack-signature: {sig}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&format!("{console}/slack/interactions"), &hoop_ca, &args)
    };
    let now = unix_now().to_string();
    let good = click("U1ALICE", "hoop_approve");
    let good_sig = slack_sign(signing, &now, &good);
    let old = (unix_now() - 400).to_string();
    let refusals = [
        ("unsigned", post(&good, None, None), 401, "slack-signature"),
        (
            "wrong secret",
            post(
                &good,
                Some(&now),
                Some(&slack_sign("another-secret-entirely", &now, &good)),
            ),
            401,
            "slack-signature",
        ),
        (
            "edited body",
            post(&click("U1ALICE", "hoop_deny"), Some(&now), Some(&good_sig)),
            401,
            "slack-signature",
        ),
        (
            "old timestamp",
            post(&good, Some(&old), Some(&slack_sign(signing, &old, &good))),
            401,
            "slack-stale",
        ),
        (
            "unmapped user",
            {
                let b = click("U9UNKNOWN", "hoop_approve");
                post(&b, Some(&now), Some(&slack_sign(signing, &now, &b)))
            },
            403,
            "slack-user-unmapped",
        ),
        (
            "mapped, not an approver",
            {
                let b = click("U2MALLORY", "hoop_approve");
                post(&b, Some(&now), Some(&slack_sign(signing, &now, &b)))
            },
            403,
            "not-approver",
        ),
    ];
    for (what, (code, body, head), want, reason) in refusals {
        assert_eq!(code, want, "{what}: {head}{body}");
        assert!(
            head.contains(&format!("x-hoop-reason: {reason}")),
            "{what}: {head}"
        );
    }
    assert_eq!(
        env.approvals()
            .iter()
            .find(|a| a["id"] == json!(id))
            .map(|a| a["status"].clone()),
        Some(json!("pending")),
        "a refused callback decided"
    );

    // The control: Slack's own, signed and fresh, approves.
    let (code, body, head) = post(&good, Some(&now), Some(&good_sig));
    assert_eq!(code, 200, "{head}{body}");
    assert!(
        body.contains("approved by oidc:alice@acme.example"),
        "{body}"
    );
    let out = job.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim_end().ends_with("200"), "{stdout}");
    // And once only: the same callback again is a replay.
    let (code, _, head) = post(&good, Some(&now), Some(&good_sig));
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("x-hoop-reason: slack-replay"), "{head}");

    let console_events = || -> Vec<Value> {
        let out = env.hoop().args(["export", "jsonl"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["kind"] == "console")
            .map(|r| r["data"].clone())
            .collect()
    };
    let refusals = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["event"] == "slack-refused")
            .count()
    };
    // Refusals are recorded without a durable wait (with the next commit,
    // or within 10 ms): the replay's may land just after its 401.
    hoop_tests::eventually(Duration::from_secs(10), || refusals(&console_events()) >= 6);
    let events = console_events();
    let count = |event: &str| events.iter().filter(|e| e["event"] == event).count();
    // Five refusals above and the replay.
    assert_eq!(count("slack-refused"), 6, "{events:#?}");
    assert_eq!(count("refused"), 1, "{events:#?}");
    assert!(
        events.iter().any(|e| e["event"] == "decision"
            && e["email"] == "alice@acme.example"
            && e["detail"].as_str().unwrap().contains("in Slack")),
        "{events:#?}"
    );
}

/// curl in a job, as nobody: the status (0 when none) and what it printed.
fn job_curl(env: &TestEnv, args: &[&str]) -> (u16, String) {
    let mut cmd = vec![
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-D",
        "-",
        "-w",
        "\n%{http_code}",
    ];
    cmd.extend_from_slice(args);
    let out = env.run_as_nobody(&cmd);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let code = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// A job can't reach the console: its direct connect is refused at the
/// transparent listener, and through the explicit proxy (CONNECT or an
/// absolute URI) the gateway refuses to dial the daemon's own service,
/// even with a policy that allows every host. Controls: the console
/// answers from outside the job, and the same job reaches an ordinary
/// loopback server by both paths.
#[test]
fn a_job_reaches_the_console_by_no_path() {
    let dir = tempfile::tempdir().unwrap();
    let console_secret = write_file(dir.path(), "console-secret", idp::CLIENT_SECRET, 0o600);
    let port = free_port();
    let console = format!("https://127.0.0.1:{port}");
    let console_cfg = format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\n\n[console.oidc]\n\
         issuer = \"https://{PROVIDER_IP}:9\"\nclient_id = \"hoop-console\"\n\
         client_secret = {{ file = \"{}\" }}\nredirect_url = \"{console}/callback\"\n",
        console_secret.display()
    );
    let mut env = TestEnv::custom(
        "console-reach",
        PROBE,
        "",
        &console_cfg,
        "\"127.0.0.0/8\"",
        None,
    );
    env.start_daemon();
    let hoop_ca = env.dir.path().join("hoop-ca.pem");
    std::fs::copy(env.hoop_ca(), &hoop_ca).unwrap();
    let ca = hoop_ca.to_str().unwrap();
    let plain = Origin::start_background(OriginOpts {
        tls: None,
        bind: Some("127.0.0.2:0".parse().unwrap()),
        also_v6: false,
    });
    let proxy = format!("http://127.0.0.1:{}", env.proxy_port);

    // Control: from outside a job, the console answers, with its headers.
    let (code, body, head) = curl(&format!("{console}/"), &hoop_ca, &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Sign in"), "{body}");
    for h in [
        "content-security-policy: default-src 'none'; script-src 'self';",
        "frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "referrer-policy: same-origin",
        "cache-control: no-store",
    ] {
        assert!(head.contains(h), "{h:?} missing:\n{head}");
    }
    // A sign-in the console did not start (a forged or replayed state) is
    // refused before the provider is asked, and recorded.
    let (code, body, head) = curl(
        &format!("{console}/callback?state=forged&code=stolen"),
        &hoop_ca,
        &[],
    );
    assert_eq!(code, 400, "{body}");
    assert!(head.contains("x-hoop-reason: sign-in-state"), "{head}");
    // Control: the job reaches an ordinary loopback server, both paths.
    let hello = format!("http://{}/hello", plain.addr);
    let (code, out) = job_curl(&env, &[&hello]);
    assert_eq!(code, 200, "{out}");
    let (code, out) = job_curl(&env, &["-x", &proxy, &hello]);
    assert_eq!(code, 200, "{out}");

    // Direct: the connection is closed before a byte.
    let (code, out) = job_curl(&env, &["--cacert", ca, &format!("{console}/")]);
    assert_eq!(code, 0, "{out}");
    // curl sees the close during its TLS handshake (exit 35), or a reset.
    assert!(
        out.contains("SSL_ERROR_SYSCALL") || out.contains("Connection reset by peer"),
        "{out}"
    );
    assert!(
        env.wait_log(
            &["is the daemon's approver console"],
            Duration::from_secs(5)
        )
        .is_some(),
        "{}",
        env.log()
    );
    // Through the proxy, both spellings: refused with the reason.
    let (code, out) = job_curl(&env, &["-x", &proxy, &format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, 403, "{out}");
    assert!(
        out.to_lowercase().contains("x-hoop-reason: daemon-service"),
        "{out}"
    );
    let (code, out) = job_curl(
        &env,
        &["-x", &proxy, "--cacert", ca, &format!("{console}/")],
    );
    assert!(
        code == 0 && out.contains("CONNECT tunnel failed, response 403"),
        "{code} {out}"
    );
    // SOCKS5, by address and by name: reply 2, "connection not allowed by
    // ruleset" (curl prints the code).
    for target in [format!("{console}/"), format!("https://localhost:{port}/")] {
        let socks = format!("socks5h://127.0.0.1:{}", env.proxy_port);
        let (code, out) = job_curl(&env, &["-x", &socks, "--cacert", ca, &target]);
        assert!(
            code == 0 && out.contains("Can't complete SOCKS5 connection") && out.contains(". (2)"),
            "{target}: {code} {out}"
        );
    }
    // The control for SOCKS5: the same job reaches an ordinary server.
    let socks = format!("socks5h://127.0.0.1:{}", env.proxy_port);
    let (code, out) = job_curl(&env, &["-x", &socks, &hello]);
    assert_eq!(code, 200, "{out}");
}

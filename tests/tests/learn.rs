//! Learn mode: a new user goes from nothing configured to a least-privilege
//! policy in two commands. A headless Chromium job (a page on the partner,
//! and a font and an image from a second host nobody configured) runs in
//! observe mode: the page loads whole, every request is on record as
//! `observed` with the refusal it would have had; `hoop policy suggest`
//! proposes both hosts; with the proposal in force (observe mode off) the
//! same job loads the same page with no `no-connection` refusal.
//!
//! And observe mode keeps its bounds, each attacked with its control: it
//! never dials outside `egress.allow`, never injects a credential, does
//! not apply to an identity no entry names, and `hoop run --observe` is
//! refused to a job and to an identity no entry names.
use std::path::Path;

use hoop_testkit::{
    Origin, OriginOpts, TestCa,
    oidc::{Alg, Issuer},
    seed,
};
use hoop_tests::{TestEnv, Value, write_file};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");
/// Addresses no other suite uses: the partner, the assets host, a host
/// outside `egress.allow`, the token issuer.
const PARTNER_IP: &str = "127.0.0.21";
const ASSETS_IP: &str = "127.0.0.22";
const OUTSIDE_IP: &str = "127.0.0.23";
const ISSUER_IP: &str = "127.0.0.24";
const OUTSIDE_HOST: &str = "outside.example";
const SCRAPER: &str = "repo:acme/scraper:ref:refs/heads/main";

/// The hosts, their CA, and the issuer of the jobs' tokens.
struct World {
    ca: TestCa,
    partner: Origin,
    assets: Origin,
    outside: Origin,
    issuer: Issuer,
}

impl World {
    fn start() -> Self {
        let ca = TestCa::new("Acme partner CA");
        let origin = |names: &[&str], ip: &str| {
            Origin::start_background(OriginOpts {
                tls: Some(ca.server_config(names, &[b"h2", b"http/1.1"])),
                bind: Some(format!("{ip}:443").parse().unwrap()),
                also_v6: false,
            })
        };
        let partner = origin(&[seed::PARTNER_HOST], PARTNER_IP);
        let assets = origin(&[seed::ASSETS_HOST], ASSETS_IP);
        let outside = origin(&[OUTSIDE_HOST], OUTSIDE_IP);
        Self {
            issuer: Issuer::start_background(ISSUER_IP, Alg::Es256),
            ca,
            partner,
            assets,
            outside,
        }
    }

    /// The config's parts before any connection: the CI issuer, the
    /// partners' CA for every upstream, and `extra` (observe entries,
    /// connections).
    fn config(&self, dir: &Path, extra: &str) -> String {
        let issuer_ca = write_file(dir, "issuer-ca.pem", &self.issuer.ca.cert_pem, 0o644);
        let hosts_ca = write_file(dir, "hosts-ca.pem", &self.ca.cert_pem, 0o644);
        format!(
            "[tls]\nupstream_ca_files = [\"{}\"]\n\n[[identity.oidc]]\nname = \"ci\"\nissuer = \"{}\"\naudience = \"{}\"\nalgorithms = [\"ES256\"]\nca_files = [\"{}\"]\n\n{extra}",
            hosts_ca.display(),
            self.issuer.url,
            hoop_testkit::oidc::AUDIENCE,
            issuer_ca.display(),
        )
    }

    fn env(&self, name: &str, extra: &str) -> TestEnv {
        let dir = tempfile::tempdir().unwrap().keep();
        let policy = self.config(&dir, extra);
        // The job runs as nobody and may use the control socket.
        TestEnv::custom(
            name,
            PROBE,
            "control_group = \"nogroup\"",
            "",
            &format!("\"{PARTNER_IP}/32\", \"{ASSETS_IP}/32\", \"{ISSUER_IP}/32\""),
            Some(&policy),
        )
    }

    /// A token file for a job of this subject (readable by nobody).
    fn token(&self, env: &TestEnv, sub: &str) -> String {
        let name = format!("token-{}", sub.replace(['/', ':'], "-"));
        write_file(env.dir.path(), &name, &self.issuer.token(sub), 0o644)
            .display()
            .to_string()
    }
}

/// Observe mode for `ci:repo:acme/*` until tomorrow; `flagged` too for
/// `ci:repo:acme/flagged*`, only with `hoop run --observe`.
fn observe_entries() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", "tomorrow", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    let until = String::from_utf8(out.stdout).unwrap().trim().to_string();
    format!(
        "[[observe]]\nidentities = [\"ci:repo:acme/scraper*\", \"ci:repo:acme/billing*\"]\nuntil = \"{until}\"\n\n\
         [[observe]]\nidentities = [\"ci:repo:acme/flagged*\"]\nuntil = \"{until}\"\nflagged_only = true\n\n"
    )
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The session of the newest job of `identity`.
fn session_of(env: &TestEnv, identity: &str) -> String {
    let out = env.hoop_ok(&["sessions", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .rev()
        .find(|s| s["identity"] == identity)
        .unwrap_or_else(|| panic!("no session of {identity}: {list:?}"))["session"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The browser job loads the learn page: how the font, the image and the
/// API call went.
fn load_page(env: &TestEnv, token: &str, home: &str) -> Value {
    let args = vec![format!(
        "--host-resolver-rules=MAP {} {PARTNER_IP}, MAP {} {ASSETS_IP}",
        seed::PARTNER_HOST,
        seed::ASSETS_HOST
    )];
    let hoop = hoop_tests::hoop_bin();
    let home = env.dir.path().join(home);
    let mut b = seed::launch_browser_with(
        &seed::Job {
            hoop: &hoop,
            config: &env.config,
            token: Path::new(token),
            home: &home,
            partner_ip: PARTNER_IP,
        },
        &args,
    )
    .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", env.log()));
    b.open(&format!("https://{}/learn", seed::PARTNER_HOST))
        .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", env.log()));
    let v = b
        .eval("learn.loaded()")
        .unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", env.log()));
    b.close();
    v
}

#[test]
fn an_observed_browser_job_teaches_a_policy_that_then_holds() {
    let w = World::start();
    let mut env = w.env("learn", &observe_entries());
    env.start_daemon();
    let token = w.token(&env, SCRAPER);
    let identity = format!("ci:{SCRAPER}");

    // Nothing configured, observe mode on: the page loads whole.
    let loaded = load_page(&env, &token, "home1");
    assert_eq!(
        (&loaded["font"], &loaded["image"], &loaded["api"]),
        (&Value::from("loaded"), &Value::from(4), &Value::from(200)),
        "{loaded}\n{}",
        env.log()
    );
    let st = env.status();
    assert_eq!(st["observe"][0]["active"], true, "{st}");

    // Every request on record as observed, with its would-be refusal.
    let session = session_of(&env, &identity);
    let recs = json_lines(
        &env.hoop_ok(&["export", "jsonl", "--session", &session])
            .stdout,
    );
    let requests: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "request").collect();
    let urls: Vec<&str> = requests
        .iter()
        .filter_map(|r| r["data"]["url"].as_str())
        .collect();
    for want in [
        "https://api.partner.example/learn",
        "https://api.partner.example/v1/prod/customers",
        "https://assets.cdn.example/assets/logo.png",
        "https://assets.cdn.example/assets/font.ttf",
    ] {
        assert!(urls.contains(&want), "{want} not recorded: {urls:?}");
    }
    for r in &requests {
        let d = &r["data"];
        assert_eq!(d["decision"], "observed", "{r}");
        assert!(
            d["would_be"]
                .as_str()
                .is_some_and(|w| w.starts_with("no-connection: no connection allows")),
            "{r}"
        );
        assert_eq!(d["connection"], Value::Null, "{r}");
    }
    assert!(
        !recs.iter().any(|r| r["kind"] == "refused"),
        "something was refused while observing: {recs:?}"
    );
    let show =
        String::from_utf8_lossy(&env.hoop_ok(&["sessions", "show", &session]).stdout).into_owned();
    assert!(
        show.contains("OBSERVE MODE") && show.contains("[observed; would be no-connection"),
        "{show}"
    );

    // The proposal: both hosts, this identity, no credential, observe
    // mode gone; it loads, and replays with nothing refused.
    let proposal = env.dir.path().join("proposal.toml");
    let out = env.hoop_ok(&[
        "policy",
        "suggest",
        "--session",
        &session,
        "--out",
        proposal.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(": 0 refused"), "{said}");
    let text = std::fs::read_to_string(&proposal).unwrap();
    for want in [
        "hosts = [\"api.partner.example:443\"]",
        "hosts = [\"assets.cdn.example:443\"]",
        &format!("allow = [\"{identity}\"]"),
        "#   GET /assets/font.ttf (",
    ] {
        assert!(text.contains(want), "{want:?} not in the proposal:\n{text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("credential")),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("[[observe]]")),
        "{text}"
    );
    let out = env.hoop_ok(&["check-config", proposal.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (2 connection(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = std::process::Command::new(hoop_tests::hoop_bin())
        .args(["--config", proposal.to_str().unwrap()])
        .args(["policy", "test", "--session", &session])
        .output()
        .unwrap();
    let test = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && test.contains("(0 now refused)"),
        "{test}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A session that never wrote: --tight denies every write method.
    let out = env.hoop_ok(&["policy", "suggest", "--session", &session, "--tight"]);
    let tight = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        tight
            .matches("[[connection.deny]]\nname = \"unseen-writes\"\nmethod = [\"DELETE\", \"PATCH\", \"POST\", \"PUT\"]")
            .count(),
        2,
        "{tight}"
    );

    // The proposal in force, observe mode off: the same job, the same
    // page, no refusal, each request through its proposed connection.
    env.stop_daemon();
    std::fs::copy(&proposal, &env.config).unwrap();
    // The proposal was written 0600 (it holds the operator's config); the
    // job (nobody) reads the config for `hoop run`.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.start_daemon();
    assert_eq!(env.status()["observe"], Value::Array(vec![]));
    let loaded = load_page(&env, &token, "home2");
    assert_eq!(
        (&loaded["font"], &loaded["image"], &loaded["api"]),
        (&Value::from("loaded"), &Value::from(4), &Value::from(200)),
        "{loaded}\n{}",
        env.log()
    );
    let again = session_of(&env, &identity);
    assert_ne!(again, session);
    let recs = json_lines(
        &env.hoop_ok(&["export", "jsonl", "--session", &again])
            .stdout,
    );
    assert!(!recs.iter().any(|r| r["kind"] == "refused"), "{recs:?}");
    let conns: std::collections::BTreeSet<&str> = recs
        .iter()
        .filter(|r| r["kind"] == "request")
        .map(|r| {
            assert_eq!(r["data"]["decision"], "allow", "{r}");
            r["data"]["connection"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        conns,
        ["cdn.example", "partner.example"].into_iter().collect()
    );
    // The control: an identity the proposal does not name is refused.
    let stranger = w.token(&env, "repo:acme/other:ref:refs/heads/main");
    let (code, text) = logo(&env, &stranger, &[]);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-hoop-reason: no-connection"), "{text}");
}

/// `hoop run --user nobody --token-file T [FLAGS] -- curl …` to
/// `https://host/path` (resolved to `ip`), trusting hoop's CA: the status,
/// and what curl (or `hoop run`) printed.
fn curl_with_token(
    env: &TestEnv,
    token: &str,
    run_flags: &[&str],
    host: &str,
    ip: &str,
    path: &str,
) -> (u16, String) {
    let flags = [&["--user", "nobody", "--token-file", token], run_flags].concat();
    env.curl_in_job(
        &flags,
        &[
            "--resolve",
            &format!("{host}:443:{ip}"),
            &format!("https://{host}{path}"),
        ],
    )
}

/// [`curl_with_token`] for `path` on the partner.
fn partner(env: &TestEnv, token: &str, path: &str) -> (u16, String) {
    curl_with_token(env, token, &[], seed::PARTNER_HOST, PARTNER_IP, path)
}

/// [`curl_with_token`] for the learn page's image on the assets host.
fn logo(env: &TestEnv, token: &str, run_flags: &[&str]) -> (u16, String) {
    curl_with_token(
        env,
        token,
        run_flags,
        seed::ASSETS_HOST,
        ASSETS_IP,
        "/assets/logo.png",
    )
}

#[test]
fn observe_mode_keeps_its_bounds() {
    let w = World::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let secret = format!("sk_live_learn_{}", std::process::id());
    let secret_file = write_file(&dir, "partner.key", &secret, 0o600);
    // The partner has a connection, with a credential, for billing jobs.
    let billing = format!(
        "[[connection]]\nname = \"partner-billing\"\nhosts = [\"{}\"]\nallow = [\"ci:repo:acme/billing*\"]\n\
         credential = {{ header = \"authorization\", format = \"Bearer {{secret}}\", secret = {{ file = \"{}\" }} }}\n\
         [[connection.deny]]\nname = \"no-refunds\"\npath = \"/v1/refunds/**\"\nmessage = \"refunds are not automated\"\n\n",
        seed::PARTNER_HOST,
        secret_file.display()
    );
    let mut env = w.env("learn-bounds", &format!("{}{billing}", observe_entries()));
    env.start_daemon();
    let scraper = w.token(&env, SCRAPER);
    let authorization = |origin: &Origin, path: &str| -> Option<String> {
        origin
            .seen()
            .iter()
            .rev()
            .find(|s| s.path.ends_with(path))
            .unwrap_or_else(|| panic!("{path} never reached the origin"))
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
    };

    // Never a credential: an observed job reaches a host whose connection
    // is another identity's without it; the control, a billing job,
    // gets it injected.
    let (code, text) = partner(&env, &scraper, "/v1/whoami?as=scraper");
    assert_eq!(code, 200, "{text}");
    assert_eq!(authorization(&w.partner, "/v1/whoami?as=scraper"), None);
    assert!(!text.contains(&secret), "{text}");
    let billing_token = w.token(&env, "repo:acme/billing:ref:refs/heads/main");
    let (code, text) = partner(&env, &billing_token, "/v1/whoami?as=billing");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        authorization(&w.partner, "/v1/whoami?as=billing"),
        Some(format!("Bearer {secret}"))
    );
    let session = session_of(&env, &format!("ci:{SCRAPER}"));
    let recs = json_lines(
        &env.hoop_ok(&["export", "jsonl", "--session", &session])
            .stdout,
    );
    let observed = recs
        .iter()
        .find(|r| r["kind"] == "request")
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(observed["data"]["decision"], "observed");
    assert!(
        observed["data"]["would_be"]
            .as_str()
            .unwrap()
            .contains("connection partner-billing covers the host but not this identity"),
        "{observed}"
    );

    // The connection's guardrails still hold for the observed job (only
    // its credential stays behind): refused before the partner.
    let (code, text) = partner(&env, &scraper, "/v1/refunds/77");
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-hoop-reason: policy-denied"), "{text}");
    assert!(
        !w.partner
            .seen()
            .iter()
            .any(|s| s.path.starts_with("/v1/refunds")),
        "the denied request reached the partner"
    );

    // Never outside egress.allow: refused before a dial, the host never
    // reached. The control: the assets host, inside it, is reached.
    let (code, text) = curl_with_token(&env, &scraper, &[], OUTSIDE_HOST, OUTSIDE_IP, "/hello");
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains("x-hoop-reason: destination-not-allowed"),
        "{text}"
    );
    assert_eq!(w.outside.hits(), 0);
    let (code, text) = logo(&env, &scraper, &[]);
    assert_eq!(code, 200, "{text}");

    // Not for an identity no entry names: 403 no-connection, nothing
    // dialled.
    let before = w.assets.hits();
    let other = w.token(&env, "repo:evil/x:ref:refs/heads/main");
    let (code, text) = logo(&env, &other, &[]);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-hoop-reason: no-connection"), "{text}");
    assert_eq!(w.assets.hits(), before);

    // flagged_only: without --observe, refused; with it (root, outside any
    // job), observed.
    let flagged = w.token(&env, "repo:acme/flagged:ref:refs/heads/main");
    let (code, text) = logo(&env, &flagged, &[]);
    assert_eq!(code, 403, "{text}");
    let (code, text) = logo(&env, &flagged, &["--observe"]);
    assert_eq!(code, 200, "{text}");
    // --observe for an identity no entry names: refused, no job.
    let (code, text) = logo(&env, &other, &["--observe"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("--observe refused: no [[observe]] entry names identity ci:repo:evil/x"),
        "{text}"
    );
    // A job may not start a job in observe mode, even of an identity an
    // entry names; the control, the same nested `hoop run` without
    // --observe, starts.
    let hoop = hoop_tests::hoop_bin();
    let nested = |observe: bool| {
        let mut cmd = vec![
            hoop.to_str().unwrap().to_string(),
            "--config".into(),
            env.config.to_str().unwrap().to_string(),
            "run".into(),
            "--token-file".into(),
            flagged.clone(),
        ];
        if observe {
            cmd.push("--observe".into());
        }
        cmd.extend(["--".into(), "true".into()]);
        let out = env
            .hoop()
            .args(["run", "--user", "nobody", "--token-file", &scraper, "--"])
            .args(&cmd)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = nested(false);
    assert!(ok, "the control: a nested hoop run: {err}");
    let (ok, err) = nested(true);
    assert!(
        !ok && err.contains("--observe refused: the caller runs inside a job"),
        "{err}"
    );
    // Status names both entries as on.
    let st = env.status();
    let entries = st["observe"].as_array().unwrap();
    assert!(
        entries.len() == 2 && entries.iter().all(|e| e["active"] == true),
        "{st}"
    );
}

//! The data path under attack, as the threat model's job: curl running as
//! `nobody` under `hoop run`, against a partner API on loopback that
//! records what it really received. Each attack asserts the specific
//! refusal (status and `x-hoop-reason`) and that the upstream never saw
//! it; each has a positive control that does reach the upstream.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use hoop_tests::{Partner, TestEnv, Value, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");
const SECRET: &str = "sk-attack-0123456789abcdef";

/// A scratch directory `nobody` can read (request bodies, hoop's CA).
fn shared_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

struct Setup {
    env: TestEnv,
    partner: Partner,
    dir: PathBuf,
}

/// The partner connection with an injected credential and `rules`.
fn setup(name: &str, rules: &str) -> Setup {
    let dir = shared_dir();
    let partner = Partner::start(&dir, "api.partner.test");
    let secret = dir.join("partner.secret");
    std::fs::write(&secret, SECRET).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = partner.policy(&format!(
        "credential = {{ secret = {{ file = \"{}\" }} }}\n{rules}",
        secret.display()
    ));
    let mut env = TestEnv::custom(
        name,
        PROBE,
        "control_group = \"nogroup\"",
        "",
        "\"127.0.0.0/8\"",
        Some(&policy),
    );
    env.start_daemon();
    Setup { env, partner, dir }
}

impl Setup {
    /// What follows curl's own options: `method` on the partner's `path`.
    fn request(&self, method: &str, path: &str, extra: &[&str]) -> Vec<String> {
        let mut a = vec!["--resolve".to_string(), self.partner.resolve()];
        a.extend(["-X", method].iter().chain(extra).map(|s| s.to_string()));
        a.push(self.partner.url(path));
        a
    }

    fn curl_args(&self, method: &str, path: &str, extra: &[&str]) -> Vec<String> {
        let r = self.request(method, path, extra);
        self.env
            .job_curl_args(&r.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// curl as nobody in a job: (status, everything it printed).
    fn curl(&self, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let r = self.request(method, path, extra);
        self.env
            .curl_as_nobody(&r.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The same in the background, started by nobody (a member of the
    /// control group here), so that root may approve it.
    fn spawn_curl(&self, method: &str, path: &str, extra: &[&str]) -> Child {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(hoop_tests::hoop_bin())
            .arg("--config")
            .arg(&self.env.config)
            .args(["run", "--"])
            .args(self.curl_args(method, path, extra))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        format!("@{}", p.display())
    }

    fn hits(&self) -> usize {
        self.partner.origin.hits()
    }
}

fn refused(code: u16, text: &str, want: &[(u16, &str)], what: &str) {
    assert!(
        want.iter()
            .any(|(c, r)| code == *c && text.contains(&format!("x-hoop-reason: {r}"))),
        "{what}: got {code}, want one of {want:?}:\n{text}"
    );
}

/// Item 1: the request that leaves hoop names exactly the host that was
/// routed, checked against the TLS name, recorded and credentialed.
#[test]
fn the_credential_goes_only_to_the_host_that_was_checked() {
    let s = setup("atk-host", "");
    let host = format!("api.partner.test:{}", s.partner.origin.addr.port());
    // Positive control: the upstream sees one Host, ours, and the secret.
    let hits = s.hits();
    // Over HTTP/1.1 the authority is the one Host header; over HTTP/2 the
    // :authority, with no Host.
    for (version, host_header, target) in [
        ("--http1.1", vec![host.as_str()], "/echo".to_string()),
        ("--http2", vec![], format!("https://{host}/echo")),
    ] {
        let (code, text) = s.curl("GET", "/echo", &[version]);
        assert_eq!(code, 200, "{text}");
        let seen = s.partner.origin.seen().last().cloned().unwrap();
        let header = |n: &str| -> Vec<&str> {
            seen.headers
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(header("host"), host_header, "{seen:?}");
        assert_eq!(seen.path, target, "{seen:?}");
        assert_eq!(header("authorization"), [format!("Bearer {SECRET}")]);
        assert!(!text.contains(SECRET), "the job saw the secret: {text}");
    }

    let url = s.partner.url("/echo");
    let attacks: Vec<(&str, Vec<&str>)> = vec![
        (
            "absolute form, other Host",
            vec![
                "--http1.1",
                "--request-target",
                &url,
                "-H",
                "Host: other.test",
            ],
        ),
        (
            "origin form, other Host",
            vec!["--http1.1", "-H", "Host: other.test"],
        ),
        (
            "HTTP/2, other Host",
            vec!["--http2", "-H", "Host: other.test"],
        ),
        (
            "other port",
            vec!["--http1.1", "-H", "Host: api.partner.test:1"],
        ),
        (
            "user info",
            vec!["--http1.1", "-H", "Host: evil@api.partner.test"],
        ),
        (
            "percent-encoded host",
            vec!["--http1.1", "-H", "Host: api%2epartner.test"],
        ),
    ];
    for (what, extra) in attacks {
        let (code, text) = s.curl("GET", "/echo", &extra);
        refused(
            code,
            &text,
            &[(421, "misdirected-request"), (400, "bad-request")],
            what,
        );
    }
    assert_eq!(
        s.hits(),
        hits + 2,
        "a misdirected request reached the upstream"
    );
}

/// Item 5: guardrails see the request as the upstream will read it; an
/// ambiguous request is refused.
#[test]
fn every_spelling_of_a_denied_request_is_refused() {
    let s = setup(
        "atk-guard",
        r#"[[connection.deny]]
name = "no-prod-delete"
method = "DELETE"
path = "/v1/prod/**"

[[connection.deny]]
name = "no-big-transfers"
method = "POST"
path = "/v1/transfers"
body = { json = { "$.amount" = ">= 100000" } }
"#,
    );
    let json = ["-H", "Content-Type: application/json", "--data-binary"];
    let gz = s.file(
        "big.json.gz",
        &hoop_testkit::encode("gzip", br#"{"to":"x","amount":2500000}"#),
    );
    let denied = [(403, "policy-denied"), (400, "ambiguous-request")];
    let hits = s.hits();
    let deletes: Vec<(&str, &str, Vec<&str>)> = vec![
        ("DELETE", "/v1/prod/users/7", vec![]),
        ("delete", "/v1/prod/users/7", vec![]),
        (
            "POST",
            "/v1/prod/users/7",
            vec!["-H", "X-HTTP-Method-Override: DELETE"],
        ),
        (
            "POST",
            "/v1/prod/users/7",
            vec!["-H", "X-HTTP-Method: delete"],
        ),
        (
            "PUT",
            "/v1/prod/users/7",
            vec!["-H", "X-Method-Override: DELETE"],
        ),
        ("POST", "/v1/prod/users/7?_method=DELETE", vec![]),
        ("POST", "/v1/prod/users/7", vec!["-d", "_method=delete"]),
        ("POST", "/v1/prod/users/7", vec!["-F", "_method=DELETE"]),
        (
            "POST",
            "/v1/prod/users/7",
            vec!["-F", "a=1", "-F", "_method=delete"],
        ),
        (
            "POST",
            "/v1/prod/users/7",
            vec![
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"_method":"DELETE"}"#,
            ],
        ),
        ("DELETE", "/v1%2Fprod/users/7", vec!["--path-as-is"]),
        ("DELETE", "/v1/%2570rod/users/7", vec!["--path-as-is"]),
        ("DELETE", "/v1/prod;x=1/users/7", vec!["--path-as-is"]),
        (
            "DELETE",
            "/v1/staging/..;/prod/users/7",
            vec!["--path-as-is"],
        ),
        ("DELETE", "/v1\\prod\\users\\7", vec!["--path-as-is"]),
        ("DELETE", "/V1/PROD/users/7", vec![]),
        (
            "DELETE",
            "/v1/staging/../prod/users/7",
            vec!["--path-as-is"],
        ),
    ];
    for (m, p, extra) in &deletes {
        let (code, text) = s.curl(m, p, extra);
        refused(code, &text, &denied, &format!("{m} {p} {extra:?}"));
    }
    let transfers: Vec<Vec<&str>> = vec![
        [&json[..], &[r#"{"to":"x","amount" :1000000}"#]].concat(),
        [&json[..], &[r#"{"to":"x","\u0061mount":1000000}"#]].concat(),
        [&json[..], &[r#"{"to":"x","amount":1e6}"#]].concat(),
        [&json[..], &[r#"{"to":"x","amount":"1000000"}"#]].concat(),
        [&json[..], &[r#"{"amount":1,"amount":1000000}"#]].concat(),
        [&json[..], &[r#"{"amount":1000000"#]].concat(),
        vec![
            "-H",
            "Content-Type: application/json",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            &gz,
        ],
        vec!["-d", "to=x&amount=1000000"],
        vec![
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            r#"{"amount":1000000}"#,
        ],
    ];
    for extra in &transfers {
        let (code, text) = s.curl("POST", "/v1/transfers", extra);
        refused(
            code,
            &text,
            &[
                (403, "policy-denied"),
                (400, "ambiguous-request"),
                (400, "request-not-inspectable"),
            ],
            &format!("POST /v1/transfers {extra:?}"),
        );
    }
    let (code, text) = s.curl(
        "POST",
        "/v1/transfers?amount=1000000",
        &[&json[..], &[r#"{"to":"x"}"#]].concat(),
    );
    refused(code, &text, &denied, "the amount in the query");
    assert_eq!(s.hits(), hits, "a denied spelling reached the upstream");

    // Positive controls: neighbours reach the upstream (it has no such
    // routes, so 404 is its own answer).
    for (m, p, extra) in [
        ("DELETE", "/v1/staging/users/7", vec![]),
        ("GET", "/v1/prod/users/7", vec![]),
        (
            "POST",
            "/v1/prod/users/7",
            vec!["-H", "X-HTTP-Method-Override: PATCH"],
        ),
        (
            "POST",
            "/v1/transfers",
            [&json[..], &[r#"{"to":"x","amount":25}"#]].concat(),
        ),
        ("POST", "/v1/transfers", vec!["-d", "to=x&amount=25"]),
    ] {
        let (code, text) = s.curl(m, p, &extra);
        assert_eq!(code, 404, "{m} {p} should reach the upstream:\n{text}");
        assert!(!text.contains("x-hoop-reason"), "{text}");
    }
    assert_eq!(s.hits(), hits + 5);
}

fn sha256_hex(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Item 6: the approver approves the request that is sent: its body is
/// read before anyone is asked, shown masked with its hash, and exactly
/// those bytes go upstream; a held request whose job went away is
/// abandoned and can no longer be approved.
#[test]
fn the_approver_approves_the_bytes_that_are_sent() {
    let s = setup(
        "atk-approve",
        r#"mask = { detectors = ["email"] }

[[connection.approve]]
name = "payouts"
method = "POST"
path = "/echo"
approvers = ["uid:0"]
timeout = "30s"
"#,
    );
    let body = br#"{"amount":99999999,"to":"ann@example.com"}"#;
    let at = s.file("payout.json", body);
    let hash = sha256_hex(&s.dir.join("payout.json"));
    let hits = s.hits();
    // With Expect: 100-continue, the job must send the body before anyone
    // is asked, so it can't learn the moment of approval.
    let job = s.spawn_curl(
        "POST",
        "/echo",
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &at,
        ],
    );
    let id = s.env.wait_pending(0);
    let row = s
        .env
        .approvals()
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["body_sha256"], hash.as_str(), "{row}");
    let shown = row["body"].as_str().unwrap();
    assert!(shown.contains("99999999"), "{row}");
    assert!(!shown.contains("ann@example.com"), "unmasked: {row}");
    assert_eq!(s.hits(), hits, "a held request reached the upstream");
    s.env.hoop_ok(&["approvals", "approve", id.as_str()]);
    let out = job.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("200"), "{text}");
    assert!(
        text.contains(r#"\"amount\":99999999"#),
        "the upstream did not echo the approved body: {text}"
    );
    assert_eq!(s.hits(), hits + 1);
    // The record ties the approval to that hash.
    let out = s.env.hoop_ok(&["export", "jsonl"]);
    let records = String::from_utf8_lossy(&out.stdout);
    assert!(
        records
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| r.to_string().contains(&hash) && r.to_string().contains("approved")),
        "no approval record with the body's hash"
    );

    // The job goes away while held: abandoned at once, never approvable.
    let job = s.spawn_curl(
        "POST",
        "/echo?abandon-marker",
        &["-H", "Content-Type: application/json", "--data-binary", &at],
    );
    let id = s.env.wait_pending(0);
    let killed = Command::new("pkill")
        .args(["-KILL", "-f", "abandon-marker"])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = job.wait_with_output();
    assert!(
        eventually(Duration::from_secs(5), || s
            .env
            .approvals()
            .iter()
            .any(|r| r["id"] == id.as_str() && r["status"] == "abandoned")),
        "{:?}",
        s.env.approvals()
    );
    let out = s
        .env
        .hoop()
        .args(["approvals", "approve", &id])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an abandoned request was approved");
    assert!(err.contains("abandoned"), "{err}");
    assert_eq!(s.hits(), hits + 1);
}

/// Item 4: masking can't be sidestepped by asking for part of a body.
#[test]
fn a_range_request_gets_the_whole_masked_body() {
    let s = setup(
        "atk-range",
        "mask = { json = [\"$..number\"], detectors = [\"credit_card\"] }\n",
    );
    for extra in [
        vec![],
        vec!["-H", "Range: bytes=40-70"],
        vec!["-H", "Range: bytes=0-10,40-70", "-H", "If-Range: x"],
    ] {
        let (code, text) = s.curl("GET", "/cards.json", &extra);
        assert_eq!(code, 200, "{extra:?}: {text}");
        assert!(!text.contains("4111111111111111"), "{extra:?}: {text}");
        assert!(text.contains("\"customer\""), "not the whole body: {text}");
        let seen = s.partner.origin.seen().last().cloned().unwrap();
        assert!(
            !seen
                .headers
                .iter()
                .any(|(k, _)| k == "range" || k == "if-range"),
            "the upstream saw a Range: {seen:?}"
        );
    }
}

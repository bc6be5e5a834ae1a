//! Guardrails end to end through `hoop run`: a denied request never reaches
//! the upstream (its own counter says so), and the job reads the rule and
//! its message; allowed requests pass.
use hoop_tests::{Partner, TestEnv};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

#[test]
fn denied_requests_never_reach_the_upstream_and_the_job_reads_why() {
    let dir = tempfile::tempdir().unwrap().keep();
    let partner = Partner::start(&dir, "api.partner.test");
    let policy = partner.policy(
        r#"[[connection.deny]]
name = "no-prod-delete"
method = "DELETE"
path = "/v1/prod/**"
message = "DELETE on production is not allowed"

[[connection.deny]]
name = "no-big-transfers"
method = "POST"
path = "/v1/transfers"
body = { regex = '"amount":\s*[0-9]{6,}' }
message = "transfers of 100000 or more need a human"
"#,
    );
    let mut env = TestEnv::custom("guard", PROBE, "", "", "\"127.0.0.0/8\"", Some(&policy));
    env.start_daemon();
    let origin = &partner.origin;
    let curl =
        |method: &str, path: &str, extra: &[&str]| env.curl_partner(&partner, method, path, extra);

    let hits = origin.hits();
    let (code, text) = curl("DELETE", "/v1/prod/users/7", &[]);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-hoop-reason: policy-denied"), "{text}");
    assert!(text.contains("x-hoop-rule: no-prod-delete"), "{text}");
    assert!(
        text.contains("DELETE on production is not allowed"),
        "{text}"
    );
    // An evasion by dot segments is the same request.
    let (code, _) = curl("DELETE", "/v1/staging/../prod/users/7", &["--path-as-is"]);
    assert_eq!(code, 403);
    // JSON when the job asks for it.
    let (code, text) = curl(
        "DELETE",
        "/v1/prod/users/7",
        &["-H", "Accept: application/json"],
    );
    assert_eq!(code, 403);
    assert!(text.contains(r#""rule":"no-prod-delete""#), "{text}");
    // A body rule.
    let (code, text) = curl(
        "POST",
        "/v1/transfers",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"to":"x","amount": 2500000}"#,
        ],
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-hoop-rule: no-big-transfers"), "{text}");
    assert_eq!(origin.hits(), hits, "a denied request reached the upstream");

    // Allowed neighbours pass, bodies intact.
    assert_eq!(curl("DELETE", "/v1/staging/users/7", &[]).0, 404);
    let (code, text) = curl("POST", "/echo", &["-d", r#"{"to":"x","amount": 25}"#]);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("amount"), "{text}");
    let (code, _) = curl("POST", "/v1/transfers", &["-d", r#"{"amount": 25}"#]);
    assert_eq!(
        code, 404,
        "the small transfer should reach the upstream (which has no such route)"
    );
    assert_eq!(origin.hits(), hits + 3);
}

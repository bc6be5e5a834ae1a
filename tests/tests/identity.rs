//! Identity and credentials through the real `hoop run`: OIDC tokens from a
//! local issuer (HTTPS discovery and JWKS on loopback), the attack set, key
//! rotation, credential injection with the leak canary, and reload.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use hoop_testkit::{
    Origin, OriginOpts, TestCa,
    oidc::{self, Alg, Issuer, SigningKey},
};
use hoop_tests::{TestEnv, Value};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

/// A daemon trusting `issuer` (no static identities: jobs need a token),
/// with `connections` as its policy.
fn env_with_issuer(name: &str, issuer: &Issuer, connections: &str) -> TestEnv {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = dir.join("issuer-ca.pem");
    std::fs::write(&ca, &issuer.ca.cert_pem).unwrap();
    let policy = format!(
        "[[identity.oidc]]\nname = \"ci\"\nissuer = \"{}\"\naudience = \"hoop\"\n\
         algorithms = [\"ES256\", \"RS256\"]\nca_files = [\"{}\"]\njwks_min_refresh_secs = 0\n\n{connections}",
        issuer.url,
        ca.display()
    );
    TestEnv::custom(name, PROBE, "", "", "\"127.0.0.0/8\"", Some(&policy))
}

fn job_cgroups(env: &TestEnv) -> usize {
    std::fs::read_dir(env.root_cgroup())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("job-"))
                .count()
        })
        .unwrap_or(0)
}

/// `hoop run --token-file F -- true`: (succeeded, stderr).
fn run_with_token(env: &TestEnv, token: &str) -> (bool, String) {
    let f = env.dir.path().join("token");
    std::fs::write(&f, token).unwrap();
    let out = env
        .hoop()
        .args(["run", "--token-file"])
        .arg(&f)
        .args(["--", "true"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn forged_and_invalid_tokens_are_refused_with_their_reason_and_bind_nothing() {
    let issuer = Issuer::start_background("127.0.0.5", Alg::Es256);
    let mut env = env_with_issuer("attacks", &issuer, "");
    env.start_daemon();
    let key = issuer.key();
    let t = oidc::now();
    let claims = issuer.claims("repo:acme/scraper");
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let valid = issuer.token_with(&claims);
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let forged = with("sub", "repo:evil/x".into());
        let payload = base64_url(&serde_json::to_vec(&forged).unwrap());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let rogue = SigningKey::generate("rogue-key", Alg::Es256);
    let other = Issuer::start_background("127.0.0.6", Alg::Es256);
    let mut big = claims.clone();
    big["padding"] = "x".repeat(20_000).into();

    let attacks: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            oidc::unsigned(&key.kid, &claims),
            "token-algorithm-refused",
        ),
        (
            "HS256 keyed with the issuer's public key",
            oidc::hs256(&key.kid, &claims, &key.public_bytes()),
            "token-algorithm-refused",
        ),
        (
            "expired",
            issuer.token_with(&with("exp", (t - 3600).into())),
            "token-expired",
        ),
        (
            "not yet valid",
            issuer.token_with(&with("nbf", (t + 3600).into())),
            "token-not-yet-valid",
        ),
        (
            "wrong issuer",
            issuer.token_with(&with("iss", format!("{}/", issuer.url).into())),
            "token-issuer-unknown",
        ),
        (
            "wrong audience",
            issuer.token_with(&with("aud", "someone-else".into())),
            "token-audience-wrong",
        ),
        (
            "an audience list without hoop",
            issuer.token_with(&with("aud", serde_json::json!(["vault", "someone-else"]))),
            "token-audience-wrong",
        ),
        (
            "unknown kid",
            oidc::sign(&rogue, &claims),
            "token-key-unknown",
        ),
        ("tampered payload", tampered, "token-signature-invalid"),
        (
            "an issuer that is not configured",
            other.token("repo:acme/scraper"),
            "token-issuer-unknown",
        ),
        ("oversized", issuer.token_with(&big), "token-too-large"),
        ("not a JWT", "not-a-token".into(), "token-malformed"),
    ];
    for (what, token, reason) in &attacks {
        let fetches = issuer.jwks_fetches();
        let (ok, err) = run_with_token(&env, token);
        assert!(!ok, "{what}: the job ran");
        assert!(
            err.contains(reason),
            "{what}: expected {reason}, got: {err}"
        );
        assert_eq!(job_cgroups(&env), 0, "{what}: a job cgroup was created");
        if *what == "unknown kid" {
            assert!(err.contains("even after refreshing"), "{err}");
            assert!(
                issuer.jwks_fetches() > fetches,
                "an unknown kid did not refetch the JWKS"
            );
        }
    }
    assert_eq!(env.status()["jobs"].as_array().unwrap().len(), 0);

    // The genuine token works, and binds its identity to the job.
    let out = env
        .hoop()
        .args(["run", "--token-env", "HOOP_TEST_TOKEN", "--", "sh", "-c"])
        .arg("cat /proc/self/cgroup; echo token-var=${HOOP_TEST_TOKEN:-unset}")
        .env("HOOP_TEST_TOKEN", &valid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/job-"), "{stdout}");
    assert!(
        stdout.contains("token-var=unset"),
        "the job inherited the token variable: {stdout}"
    );
    let started = env
        .wait_log(
            &["job started", "identity=ci:repo:acme/scraper"],
            Duration::from_secs(10),
        )
        .expect("job started with the token's identity");
    assert!(!started.contains(&valid), "the token was logged");

    // GitLab `id_tokens` may mint one token for several audiences: one
    // of them being hoop's is enough (strict_audience is off).
    let (ok, err) = run_with_token(
        &env,
        &issuer.token_with(&with("aud", serde_json::json!(["vault", "hoop"]))),
    );
    assert!(
        ok,
        "a token whose aud list includes hoop was refused: {err}"
    );

    // Key rotation at the issuer: a new kid, no daemon restart.
    issuer.rotate("key-2");
    let (ok, err) = run_with_token(&env, &issuer.token("repo:acme/scraper"));
    assert!(ok, "a token of the rotated key was refused: {err}");
}

fn base64_url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

const SECRET: &str = "sk-live-5f2d9c0e7b1a4f3c";

struct Partner {
    env: TestEnv,
    origin: Origin,
}

/// A partner API over HTTPS as `partner.test` on 127.0.0.3, a connection
/// that injects SECRET as a bearer token, and jobs of identity test:local.
fn partner(name: &str) -> Partner {
    partner_with(name, SECRET)
}

/// [`partner`] injecting `secret`.
fn partner_with(name: &str, secret_value: &str) -> Partner {
    let ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let secret = dir.join("partner.secret");
    std::fs::write(&secret, format!("{secret_value}\n")).unwrap();
    let policy = format!(
        "[[identity.static]]\ncgroup = \"{{cgroup}}/**\"\nname = \"test:local\"\n\n\
         [[connection]]\nname = \"partner\"\nhosts = [\"partner.test\"]\nallow = [\"test:*\"]\n\
         upstream_ca_files = [\"{}\"]\ncredential = {{ secret = {{ file = \"{}\" }} }}\n",
        ca_file.display(),
        secret.display()
    );
    let mut env = TestEnv::custom(name, PROBE, "", "", "\"127.0.0.0/8\"", Some(&policy));
    env.start_daemon();
    let origin = Origin::start_background(OriginOpts {
        tls: Some(ca.server_config(&["partner.test", "other.test"], &[b"h2", b"http/1.1"])),
        bind: Some("127.0.0.3:0".parse().unwrap()),
        also_v6: false,
    });
    Partner { env, origin }
}

/// curl in a job to `https://<host>:<origin port><path>`; returns
/// (status, everything the job received: headers and body).
fn job_curl(p: &Partner, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let port = p.origin.addr.port();
    let resolve = format!("{host}:{port}:127.0.0.3");
    p.env
        .curl_job(&resolve, &format!("https://{host}:{port}{path}"), extra)
}

fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if std::fs::read(&p)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            hits.push(p);
        }
    }
    hits
}

#[test]
fn the_credential_is_injected_upstream_and_never_reaches_the_job() {
    let p = partner("inject");
    // The job brings its own Authorization header, and asks to have it
    // echoed back, raw and in the body.
    let (code, got) = job_curl(
        &p,
        "partner.test",
        "/echo",
        &[
            "-H",
            "Authorization: Bearer job-supplied-token",
            "-d",
            "hello",
        ],
    );
    assert_eq!(code, 200, "{got}");
    let seen = p.origin.seen();
    let last = seen.last().expect("the upstream saw the request");
    let auth: Vec<&str> = last
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        auth,
        [format!("Bearer {SECRET}")],
        "upstream headers: {:?}",
        last.headers
    );
    // The echo reflects the injected header: the job gets it masked.
    assert!(!got.contains(SECRET), "the job received the secret:\n{got}");
    assert!(got.contains("[hoop:credential]"), "no mask in:\n{got}");
    assert!(
        !got.contains("job-supplied-token"),
        "the job's own header was forwarded:\n{got}"
    );
    p.env
        .wait_log(
            &["credential leak masked", "connection=partner"],
            Duration::from_secs(10),
        )
        .expect("the leak was reported");

    // A host no connection covers: 403 naming host and identity, no dial.
    let before = p.origin.connections();
    let (code, got) = job_curl(&p, "other.test", "/echo", &[]);
    assert_eq!(code, 403, "{got}");
    assert!(got.contains("x-hoop-reason: no-connection"), "{got}");
    assert!(
        got.contains("other.test") && got.contains("test:local"),
        "{got}"
    );
    assert_eq!(
        p.origin.connections(),
        before,
        "hoop dialled a host it refused"
    );

    // Domain fronting: TLS for partner.test, Host for another name.
    let (code, got) = job_curl(&p, "partner.test", "/echo", &["-H", "Host: other.test"]);
    assert_eq!(code, 421, "{got}");
    assert!(!got.contains(SECRET));

    // Nowhere else either: not the daemon's log, not its state.
    assert!(
        !p.env.log().contains(SECRET),
        "the daemon logged the secret"
    );
    let leaked = files_containing(&p.env.dir.path().join("state"), SECRET);
    assert!(leaked.is_empty(), "state files hold the secret: {leaked:?}");
    // The audit log compresses bodies: read it back whole, decompressed.
    let record = p.env.hoop().args(["export", "jsonl"]).output().unwrap();
    let record = String::from_utf8_lossy(&record.stdout);
    assert!(record.contains("/echo"), "the exchange is on record");
    assert!(!record.contains(SECRET), "the audit log holds the secret");
    assert!(
        !record.contains("job-supplied-token"),
        "the job's own credential is on record unredacted"
    );
    let status = p.env.hoop().args(["status", "--json"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&status.stdout).contains(SECRET));
}

/// The threat model's job (nobody, under `hoop run`) fetches an endpoint
/// that echoes the injected credential in every encoding a decoder could
/// undo (base64 at each alignment, percent-encoding, JSON escapes, mixes),
/// in headers, a JSON body and HTTP/2 trailers: it gets 200 with every one
/// masked, and the record counts each mask and holds none of them.
#[test]
fn a_job_as_nobody_gets_every_encoded_echo_of_the_credential_masked() {
    const ESCAPABLE: &str = "sk-live/5f2d+9c0e 7b1a%4f";
    let p = partner_with("canary-encoded", ESCAPABLE);
    // hoop's CA where nobody can read it (the state dir's path is closed).
    let public = tempfile::tempdir().unwrap();
    let ca = public.path().join("ca.pem");
    std::fs::copy(p.env.hoop_ca(), &ca).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let port = p.origin.addr.port();
    let script = format!(
        "id -u; curl -sS --max-time 20 --http2 -D - --cacert {} --resolve partner.test:{port}:127.0.0.3 \
         -w '\n%{{http_code}} %{{http_version}}' https://partner.test:{port}/reflect-encoded",
        ca.display()
    );
    let out = p.env.run_as_nobody(&["sh", "-c", &script]);
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(got.starts_with("65534\n"), "not nobody: {got}{stderr}");
    assert!(got.trim_end().ends_with("200 2"), "{got}{stderr}");

    // Positive control: the upstream got the secret, injected.
    let last = p.origin.seen().pop().expect("the upstream saw the request");
    assert!(
        last.headers
            .iter()
            .any(|(k, v)| k == "authorization" && *v == format!("Bearer {ESCAPABLE}")),
        "{:?}",
        last.headers
    );
    let forms = hoop_testkit::reflected_forms(&format!("Bearer {ESCAPABLE}"));
    let n = forms.len();
    // Every form arrived, masked: the headers, and each key of the body.
    let echoed = got.lines().filter(|l| l.starts_with("x-echo-")).count();
    assert_eq!(echoed, n, "{got}");
    assert!(got.contains("[hoop:credential]"), "{got}");
    for (name, _) in &forms {
        assert!(
            got.contains(&format!("\"{name}\":\"")),
            "{name} missing: {got}"
        );
    }
    if let Some(how) = hoop_testkit::leak::leaks(got.as_bytes(), ESCAPABLE.as_bytes()) {
        panic!("the job can read the secret back ({how}):\n{got}");
    }

    // The record: one response, each echo masked (headers, body, trailers).
    // The response's record is written after the body went back to the
    // job, without a durable wait: read until it is there.
    let export = || {
        let out = p.env.hoop().args(["export", "jsonl"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut record = String::new();
    hoop_tests::eventually(Duration::from_secs(10), || {
        record = export();
        record.contains("\"kind\":\"response\"")
    });
    let masked: Vec<u64> = record
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "response")
        .filter_map(|r| r["data"]["masked"]["credential"].as_u64())
        .collect();
    assert_eq!(masked, [3 * n as u64], "{record}");
    assert!(
        record.contains("/reflect-encoded"),
        "the exchange is on record"
    );
    if let Some(how) = hoop_testkit::leak::leaks(record.as_bytes(), ESCAPABLE.as_bytes()) {
        panic!("the audit log holds the secret ({how})");
    }
    let leaked = files_containing(&p.env.dir.path().join("state"), ESCAPABLE);
    assert!(leaked.is_empty(), "state files hold the secret: {leaked:?}");
    p.env
        .wait_log(
            &["credential leak masked", "connection=partner"],
            Duration::from_secs(2),
        )
        .expect("the leak was reported");
    assert!(
        !p.env.log().contains(ESCAPABLE),
        "the daemon logged the secret"
    );
}

#[test]
fn a_broken_reload_keeps_the_old_policy_and_a_good_one_applies() {
    let p = partner("reload");
    let ok = || job_curl(&p, "partner.test", "/hello", &[]).0;
    assert_eq!(ok(), 200);
    let good = std::fs::read_to_string(&p.env.config).unwrap();

    // A broken file: refused with its location, and requests still work.
    std::fs::write(
        &p.env.config,
        good.replace("hosts = [\"partner.test\"]", "hosts = [\"partner.*.test\"]"),
    )
    .unwrap();
    let out = p.env.hoop().arg("reload").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("connection[0].hosts[0]") && err.contains("line"),
        "{err}"
    );
    assert_eq!(ok(), 200, "a refused reload changed the policy");
    // SIGHUP with the same broken file: logged, nothing changes.
    sighup(p.env.daemon_pid());
    p.env
        .wait_log(&["reload refused"], Duration::from_secs(3))
        .expect("SIGHUP reload of a broken file is logged");
    assert_eq!(ok(), 200);

    // A valid file without the connection: applied at once. Its new
    // approval notices are read only at start, and the answer says so.
    std::fs::write(
        &p.env.config,
        good.replace("hosts = [\"partner.test\"]", "hosts = [\"elsewhere.test\"]")
            + "\n[approvals]\nwebhook = \"https://127.0.0.1:9/hook\"\n",
    )
    .unwrap();
    let out = p.env.hoop().arg("reload").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("changes to [approvals] take effect at the next restart"),
        "{said}"
    );
    assert_eq!(ok(), 403);
}

fn sighup(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// The same verifier against a real, widely used OpenID provider (panva's
/// oidc-provider, from npm): discovery, JWKS and an RFC 9068 access token
/// from the client-credentials grant, as a CI runner would get one.
#[test]
fn a_token_from_a_real_oidc_provider_binds_a_job() {
    let ca = TestCa::new("hoop test oidc-provider CA");
    let dir = tempfile::tempdir().unwrap().keep();
    let (cert, key) = ca.leaf_pem(&["127.0.0.7"]);
    let (cert_file, key_file, ca_file) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let server_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider");
    assert!(
        server_dir.join("node_modules/oidc-provider").exists(),
        "oidc-provider is not installed in {}: `cargo xtask test` runs npm ci there",
        server_dir.display()
    );
    let mut node = std::process::Command::new("node")
        .arg(server_dir.join("server.mjs"))
        .args(["127.0.0.7"])
        .arg(&cert_file)
        .arg(&key_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node is installed");
    let issuer = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(node.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("oidc-provider: {line:?}"))
            .to_string()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _node = Kill(node);

    // The runner's token, from the provider's token endpoint.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .args(["-u", "ci-runner:test-only-client-secret"])
        .args([
            "-d",
            "grant_type=client_credentials",
            "-d",
            "resource=https://hoop.local/",
            "-d",
            "scope=hoop",
        ])
        .arg(format!("{issuer}/token"))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("token endpoint: {}", String::from_utf8_lossy(&out.stdout)));
    let token = answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_string();

    let policy = format!(
        "[[identity.oidc]]\nname = \"real\"\nissuer = \"{issuer}\"\naudience = \"hoop\"\n\
         algorithms = [\"ES256\"]\nclaims = [\"client_id\"]\nca_files = [\"{}\"]\n",
        ca_file.display()
    );
    let mut env = TestEnv::custom("realoidc", PROBE, "", "", "\"127.0.0.0/8\"", Some(&policy));
    env.start_daemon();
    let (ok, err) = run_with_token(&env, &token);
    assert!(ok, "a real provider's token was refused: {err}");
    env.wait_log(
        &["job started", "identity=real:ci-runner"],
        Duration::from_secs(2),
    )
    .expect("the job carries the provider's identity");
    // The same token, tampered, is not.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = base64_url(br#"{"iss":"x","client_id":"admin"}"#);
    let (ok, err) = run_with_token(&env, &parts.join("."));
    assert!(!ok && err.contains("token-"), "{err}");
}

/// Units placed in the hoop slice by something other than `hoop run`
/// (systemd-run --slice, say) are who `[[identity.static]]` says, by path;
/// a cgroup no glob matches gets nothing through.
#[test]
fn cgroups_outside_hoop_run_get_their_static_identity_or_nothing() {
    let policy = "[[identity.static]]\ncgroup = \"{cgroup}/unit-*.service\"\nname = \"local:unit\"\n\n\
                  [[connection]]\nname = \"loopback\"\nhosts = [\"127.0.0.2\"]\nallow = [\"local:*\"]\n";
    let mut env = TestEnv::custom("static", PROBE, "", "", "\"127.0.0.0/8\"", Some(policy));
    env.start_daemon();
    let up = hoop_tests::Upstream::start("127.0.0.2:0");
    for (unit, allowed) in [("unit-a.service", true), ("other.scope", false)] {
        let cg = env.root_cgroup().join(unit);
        std::fs::create_dir_all(&cg).unwrap();
        let before = up.hits();
        // The shell moves itself into the cgroup, then becomes curl.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec curl -sS --max-time 5 -w '\\n%{{http_code}}' http://{}/",
                cg.display(),
                up.addr
            ))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if allowed {
            assert!(text.ends_with("200"), "{unit}: {text}");
            assert_eq!(up.hits(), before + 1);
            env.wait_log(&["connection", "local:unit"], Duration::from_secs(2))
                .expect("the flow carries the static identity");
        } else {
            assert!(text.ends_with("403"), "{unit}: {text}");
            assert!(text.contains("no identity"), "{text}");
            assert_eq!(up.hits(), before, "a cgroup without identity got through");
        }
        let _ = std::fs::remove_dir(&cg);
    }
}

/// Secrets from a file, an environment variable and a systemd credential
/// are injected; a reload re-reads them.
#[test]
fn secrets_come_from_files_env_and_systemd_credentials_and_reload_rereads_them() {
    let ca = TestCa::default();
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let file = dir.join("a.secret");
    std::fs::write(&file, "file-secret-0001\n").unwrap();
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("partner"), "systemd-secret-0003").unwrap();
    let conn = |name: &str, cred: &str| {
        format!(
            "[[connection]]\nname = \"{name}\"\nhosts = [\"{name}.test\"]\nallow = [\"test:*\"]\n\
             upstream_ca_files = [\"{}\"]\ncredential = {cred}\n\n",
            ca_file.display()
        )
    };
    let policy = format!(
        "[[identity.static]]\ncgroup = \"{{cgroup}}/**\"\nname = \"test:local\"\n\n{}{}{}",
        conn(
            "a",
            &format!("{{ secret = {{ file = \"{}\" }} }}", file.display())
        ),
        conn(
            "b",
            "{ header = \"x-api-key\", format = \"{secret}\", secret = { env = \"HOOP_TEST_PARTNER_KEY\" } }"
        ),
        conn(
            "c",
            "{ query = \"api_key\", secret = { credential = \"partner\" } }"
        ),
    );
    let mut env = TestEnv::custom("sources", PROBE, "", "", "\"127.0.0.0/8\"", Some(&policy));
    env.start_daemon_env(&[
        ("HOOP_TEST_PARTNER_KEY", "env-secret-0002"),
        ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
    ]);
    let origin = Origin::start_background(OriginOpts {
        tls: Some(ca.server_config(&["a.test", "b.test", "c.test"], &[b"http/1.1"])),
        bind: Some("127.0.0.3:0".parse().unwrap()),
        also_v6: false,
    });
    let fetch = |host: &str| -> hoop_testkit::Seen {
        let port = origin.addr.port();
        let resolve = format!("{host}:{port}:127.0.0.3");
        let url = format!("https://{host}:{port}/hello?x=1");
        let ca = env.hoop_ca();
        let out = env.run(&[
            "curl",
            "-fsS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
        ]);
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        origin.seen().last().cloned().unwrap()
    };
    let header = |s: &hoop_testkit::Seen, k: &str| {
        s.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header(&fetch("a.test"), "authorization").as_deref(),
        Some("Bearer file-secret-0001")
    );
    assert_eq!(
        header(&fetch("b.test"), "x-api-key").as_deref(),
        Some("env-secret-0002")
    );
    assert!(
        fetch("c.test")
            .path
            .ends_with("?x=1&api_key=systemd-secret-0003"),
        "{:?}",
        origin.seen().last()
    );

    std::fs::write(&file, "file-secret-rotated\n").unwrap();
    let out = env.hoop().arg("reload").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        header(&fetch("a.test"), "authorization").as_deref(),
        Some("Bearer file-secret-rotated")
    );
    for s in [
        "file-secret-0001",
        "env-secret-0002",
        "systemd-secret-0003",
        "file-secret-rotated",
    ] {
        assert!(!env.log().contains(s), "the daemon logged {s}");
    }
}

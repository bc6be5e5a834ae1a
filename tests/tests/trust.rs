//! Nothing to set: a job under `hoop run` trusts hoop's CA in the common
//! runtimes without a certificate flag. As nobody, with no flag, curl,
//! node (`https`), python3 (`urllib` and `requests`), git and java (`java.net.http`)
//! fetch an HTTPS upstream through hoop with verification on; with
//! `--no-trust-env` (the control) the same curl fails verification. The
//! caller's own SSL_CERT_FILE is kept in the job's bundle; the bundle and
//! Java's store beside it are the job's uid's alone, and go when the job
//! ends.
use std::{path::Path, time::Duration};

use hoop_testkit::{Origin, OriginOpts, TestCa};
use hoop_tests::{TestEnv, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");
const UP: &str = "127.0.0.3";

fn sh(env: &TestEnv, extra: &[&str], script: &str) -> (bool, String) {
    let mut args: Vec<&str> = vec!["run", "--user", "nobody"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = env.hoop().args(&args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A daemon trusting a fresh upstream CA, and an HTTPS origin on UP with a
/// certificate from it for `names`.
fn setup(name: &str, names: &[&str]) -> (TestEnv, Origin) {
    let up_ca = TestCa::new("trust suite upstream CA");
    let up_ca_file = tempfile::tempdir().unwrap().keep().join("upstream-ca.pem");
    std::fs::write(&up_ca_file, &up_ca.cert_pem).unwrap();
    let mut env = TestEnv::new(
        name,
        PROBE,
        &format!(
            "[tls]\nupstream_ca_files = [\"{}\"]\n",
            up_ca_file.display()
        ),
    );
    env.start_daemon();
    let origin = Origin::start_background(OriginOpts {
        tls: Some(up_ca.server_config(names, &[b"h2", b"http/1.1"])),
        bind: Some(format!("{UP}:0").parse().unwrap()),
        also_v6: false,
    });
    (env, origin)
}

#[test]
fn every_common_runtime_trusts_hoop_without_a_flag() {
    let (env, origin) = setup("trust", &[UP]);
    let url = format!("https://{UP}:{}/hello", origin.addr.port());
    // The caller's own bundle: another CA, which the job's bundle must keep.
    let own = TestCa::new("the caller's own CA");
    let own_file = env.dir.path().join("own-ca.pem");
    std::fs::write(&own_file, &own.cert_pem).unwrap();
    std::fs::set_permissions(
        &own_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let fetch_java = env.dir.path().join("Fetch.java");
    std::fs::write(
        &fetch_java,
        "public class Fetch { public static void main(String[] a) throws Exception {\n\
         var c = java.net.http.HttpClient.newHttpClient();\n\
         var r = c.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create(a[0])).build(),\n\
           java.net.http.HttpResponse.BodyHandlers.ofString());\n\
         System.out.println(\"status \" + r.statusCode()); } }\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &fetch_java,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    // The control: without hoop's variables, verification fails.
    let (ok, out) = sh(
        &env,
        &["--no-trust-env"],
        &format!(
            "env -u SSL_CERT_FILE -u CURL_CA_BUNDLE curl -sS -o /dev/null -w '%{{http_code}}' {url}"
        ),
    );
    assert!(!ok && out.contains("SSL certificate problem"), "{out}");

    let runtimes: [(&str, String, &str); 6] = [
        (
            "curl",
            format!("curl -sS -o /dev/null -w 'status %{{http_code}}' {url}"),
            "status 200",
        ),
        (
            "node",
            format!(
                "node -e \"require('https').get('{url}', r => {{ console.log('status', r.statusCode); process.exit(0) }}).on('error', e => {{ console.log(String(e)); process.exit(1) }})\""
            ),
            "status 200",
        ),
        (
            "python3",
            format!(
                "python3 -c \"import urllib.request; print('status', urllib.request.urlopen('{url}').status)\""
            ),
            "status 200",
        ),
        (
            "python3 requests",
            format!(
                "python3 -c \"import requests; print('status', requests.get('{url}').status_code)\""
            ),
            "status 200",
        ),
        (
            "git",
            // A web server that is no git server: git gets past TLS and
            // then reads a 404 (verification stays on).
            format!(
                "HOME=/tmp git ls-remote https://{UP}:{}/repo.git 2>&1; true",
                origin.addr.port()
            ),
            "repo.git/' not found",
        ),
        (
            "java",
            format!("java {} {url} 2>&1", fetch_java.display()),
            "status 200",
        ),
    ];
    for (name, script, want) in &runtimes {
        let (ok, out) = sh(&env, &[], script);
        assert!(
            out.contains(want) && !out.contains("certificate") && !out.contains("PKIX"),
            "{name}: ok={ok}\n{out}"
        );
    }

    // `hoop doctor` says the same, per runtime, in jobs of its own.
    let out = env.hoop().args(["doctor", &url]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for runtime in [
        "curl",
        "node",
        "python3 (urllib)",
        "python3 (requests)",
        "java",
        "chromium",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(runtime) && l.contains(" ok ") && l.ends_with("verified")),
            "{runtime} not verified:\n{table}"
        );
    }

    // The bundle: the job's uid's alone, holding the caller's own CA and
    // hoop's; gone when the job ends.
    // Java's store sits beside it, named by JAVA_TOOL_OPTIONS.
    let script = "stat -c '%a %U' \"$SSL_CERT_FILE\" \"$(dirname \"$SSL_CERT_FILE\")\"; \
                  store=$(dirname \"$SSL_CERT_FILE\")/ca-truststore.p12; stat -c '%a %U' \"$store\"; \
                  case \"$JAVA_TOOL_OPTIONS\" in *\"trustStore=$store \"*) echo java-store-named;; esac; \
                  echo \"$SSL_CERT_FILE\"; cat \"$SSL_CERT_FILE\"";
    let out = env
        .hoop()
        .args(["run", "--user", "nobody", "--", "sh", "-c", script])
        .env("SSL_CERT_FILE", &own_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("600 nobody"), "{text}");
    assert_eq!(lines.next(), Some("700 nobody"), "{text}");
    assert_eq!(lines.next(), Some("600 nobody"), "{text}");
    assert_eq!(lines.next(), Some("java-store-named"), "{text}");
    let bundle = lines.next().unwrap().to_string();
    assert!(
        text.contains(own.cert_pem.trim()),
        "the caller's CA is missing:\n{text}"
    );
    let hoop_ca = std::fs::read_to_string(env.hoop_ca()).unwrap();
    assert!(text.contains(hoop_ca.trim()), "hoop's CA is missing");
    assert!(
        eventually(Duration::from_secs(5), || !Path::new(&bundle).exists()),
        "{bundle} is still there after the job"
    );
}

/// Chromium reads an NSS database, not the CA variables: with
/// `--nss=private` (a database of the job's own, HOME set to the job's
/// directory) and no certificate flag, it loads a partner page through
/// hoop; without it (the control) the page does not load. The database
/// is the job's uid's alone and goes with the job.
#[test]
fn chromium_trusts_hoop_with_a_private_nss_database() {
    let (env, origin) = setup("trust-nss", &["partner.test"]);
    let url = format!("https://partner.test:{}/page", origin.addr.port());
    let chromium = |nss: &[&str], profile: &str| {
        let mut args: Vec<String> = vec!["run".into(), "--user".into(), "nobody".into()];
        args.extend(nss.iter().map(|s| s.to_string()));
        args.extend(
            [
                "--",
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP partner.test 127.0.0.3",
                "--virtual-time-budget=10000",
            ]
            .map(String::from),
        );
        args.push(format!(
            "--user-data-dir=/tmp/hoop-trust-{profile}-{}",
            std::process::id()
        ));
        args.extend(["--dump-dom".into(), url.clone()]);
        let out = env.hoop().args(&args).output().unwrap();
        let _ =
            std::fs::remove_dir_all(format!("/tmp/hoop-trust-{profile}-{}", std::process::id()));
        String::from_utf8_lossy(&out.stdout).into_owned()
            + "\n--- stderr ---\n"
            + &String::from_utf8_lossy(&out.stderr)
    };
    let dom = chromium(&["--nss=private"], "private");
    assert!(
        dom.contains("partner=acme items=3"),
        "not loaded with --nss=private:\n{dom}"
    );
    // The control: the same browser with no database of hoop's.
    let dom = chromium(&[], "none");
    assert!(
        !dom.contains("partner=acme"),
        "loaded without trusting hoop:\n{dom}"
    );

    // The job's database and home: its uid's alone, holding hoop's CA as
    // a trusted issuer; gone when the job ends.
    let script = "stat -c '%a %U' \"$HOME\" \"$HOME/.pki/nssdb\"; echo \"$HOME\"; \
                  certutil -L -d \"sql:$HOME/.pki/nssdb\"";
    let out = env
        .hoop()
        .args([
            "run",
            "--user",
            "nobody",
            "--nss=private",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("700 nobody"), "{text}");
    assert_eq!(lines.next(), Some("700 nobody"), "{text}");
    let home = lines.next().unwrap_or_default().to_string();
    assert!(
        home.contains("/trust/") && text.lines().any(|l| l.trim_end().ends_with("C,,")),
        "no trusted CA in the job's database:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(5), || !Path::new(&home).exists()),
        "{home} is still there after the job"
    );
}

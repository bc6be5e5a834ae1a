//! `hoop doctor URL`: whether a job can use hoop as it is. For each common
//! runtime found on this host, a short probe runs inside a job (`hoop
//! run`, as a job would) and fetches URL over HTTPS through hoop with
//! certificate verification on; the table says which verify, and the fix
//! for those that don't.
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::config::Config;

/// Removed when the doctor is done.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Probe {
    runtime: &'static str,
    /// Found on this host.
    present: bool,
    /// `hoop run` options, then the command.
    run: Vec<String>,
    cmd: Vec<String>,
    fix: &'static str,
}

fn found(bin: &str) -> bool {
    crate::trust::which(bin).is_some()
}

pub fn doctor(cfg: &Config, url: &str) -> Result<ExitCode> {
    if !url.starts_with("https://") {
        bail!("give the https:// URL a job would fetch (e.g. your partner API's)");
    }
    let scratch = Scratch(
        nix::unistd::mkdtemp(&std::env::temp_dir().join("hoop-doctor-XXXXXX"))
            .context("making a scratch directory")?,
    );
    // Readable by a job of any user: the Java probe's source.
    std::fs::set_permissions(
        &scratch.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let fetch = scratch.0.join("Fetch.java");
    std::fs::write(
        &fetch,
        "public class Fetch { public static void main(String[] a) throws Exception {\n\
         var c = java.net.http.HttpClient.newHttpClient();\n\
         var r = c.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create(a[0])).build(),\n\
           java.net.http.HttpResponse.BodyHandlers.discarding());\n\
         System.out.println(r.statusCode()); } }\n",
    )?;
    std::fs::set_permissions(&fetch, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let requests = found("python3")
        && Command::new("python3")
            .args(["-c", "import requests"])
            .output()
            .is_ok_and(|o| o.status.success());
    let profile = scratch.0.join("chromium-profile");
    let probes = [
        Probe {
            runtime: "curl",
            present: found("curl"),
            run: vec![],
            cmd: s(&["curl", "-sS", "--max-time", "20", "-o", "/dev/null", url]),
            fix: "run it under `hoop run` (SSL_CERT_FILE and CURL_CA_BUNDLE name hoop's bundle), or `curl --cacert <(hoop ca export)`",
        },
        Probe {
            runtime: "node",
            present: found("node"),
            run: vec![],
            cmd: s(&[
                "node",
                "-e",
                &format!(
                    "require('https').get({url:?}, r => {{ console.log(r.statusCode); process.exit(0) }}).on('error', e => {{ console.log(e.code || e.message); process.exit(1) }})"
                ),
            ]),
            fix: "run it under `hoop run` (NODE_EXTRA_CA_CERTS names hoop's bundle)",
        },
        Probe {
            runtime: "python3 (urllib)",
            present: found("python3"),
            run: vec![],
            cmd: s(&[
                "python3",
                "-c",
                &format!("import urllib.request; print(urllib.request.urlopen({url:?}).status)"),
            ]),
            fix: "run it under `hoop run` (SSL_CERT_FILE names hoop's bundle)",
        },
        Probe {
            runtime: "python3 (requests)",
            present: requests,
            run: vec![],
            cmd: s(&[
                "python3",
                "-c",
                &format!("import requests; print(requests.get({url:?}).status_code)"),
            ]),
            fix: "run it under `hoop run` (REQUESTS_CA_BUNDLE names hoop's bundle)",
        },
        Probe {
            runtime: "java",
            present: found("java") && found("javac"),
            run: vec![],
            cmd: s(&["java", &fetch.display().to_string(), url]),
            fix: "a JAVA_TOOL_OPTIONS trustStore of your own is kept: add `hoop ca export` to it",
        },
        Probe {
            runtime: "chromium",
            present: found("chromium"),
            run: s(&["--nss=private"]),
            cmd: s(&[
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.display()),
                "--dump-dom",
                url,
            ]),
            fix: "run it with `hoop run --nss` (or --nss=private); Playwright and Puppeteer read the same database",
        },
    ];
    let hoop = std::env::current_exe().context("hoop's own path")?;
    let mut failed = 0;
    println!("{:<20} {:<6} detail", "RUNTIME", "TLS");
    for p in probes.iter() {
        if !p.present {
            println!("{:<20} {:<6} not installed", p.runtime, "-");
            continue;
        }
        let mut c = Command::new(&hoop);
        if cfg.source.is_file() {
            c.arg("--config").arg(&cfg.source);
        }
        let out = c
            .arg("run")
            .args(&p.run)
            .arg("--")
            .args(&p.cmd)
            .output()
            .with_context(|| format!("running the {} probe", p.runtime))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let cert_problem = [
            "certificate",
            "CERT_",
            "PKIX",
            "SELF_SIGNED",
            "UNABLE_TO_GET_ISSUER",
        ]
        .iter()
        .any(|w| text.contains(w));
        let ok = out.status.success() && !cert_problem;
        let detail = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("dbus") && !l.starts_with('<'))
            .find(|l| !ok || !l.contains("Picked up"))
            .unwrap_or("")
            .chars()
            .take(100)
            .collect::<String>();
        if ok {
            println!("{:<20} {:<6} verified", p.runtime, "ok");
        } else {
            failed += 1;
            println!(
                "{:<20} {:<6} {detail}\n{:<27} fix: {}",
                p.runtime, "FAIL", "", p.fix
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

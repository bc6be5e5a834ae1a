//! The approvers' side of hoop's console, for its suite and the demo: a
//! real OpenID provider (panva's oidc-provider from npm, in
//! `tests/oidc-provider`, in its login mode: any login name, claims from
//! its account table) and an approver's Chromium (outside any job) that
//! signs in through the provider's own login form.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{TestCa, cdp::Browser};

/// The console's client at the provider.
pub const CLIENT_ID: &str = "hoop-console";
pub const CLIENT_SECRET: &str = "test-only-console-secret";

pub struct Provider {
    child: Child,
    /// The issuer URL (https, on the given loopback address).
    pub issuer: String,
    /// The CA of the provider's certificate (PEM file).
    pub ca_file: PathBuf,
}

impl Provider {
    /// Starts the provider on `ip` with a certificate from a fresh test CA
    /// (files in `dir`), registering `redirect` as the console's callback.
    pub fn start(dir: &Path, ip: &str, redirect: &str) -> Result<Self> {
        let ca = TestCa::new("hoop test console IdP CA");
        let (cert, key) = ca.leaf_pem(&[ip]);
        let cert_file = dir.join("idp-cert.pem");
        let key_file = dir.join("idp-key.pem");
        let ca_file = dir.join("idp-ca.pem");
        std::fs::write(&cert_file, cert)?;
        std::fs::write(&key_file, key)?;
        std::fs::write(&ca_file, &ca.cert_pem)?;
        let server_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc-provider");
        if !server_dir.join("node_modules/oidc-provider").exists() {
            bail!(
                "oidc-provider is not installed in {}: run `npm ci` there (`cargo xtask test` and the demo do)",
                server_dir.display()
            );
        }
        let log = dir.join("idp-stderr.log");
        let mut child = Command::new("node")
            .arg(server_dir.join("server.mjs"))
            .arg(ip)
            .arg(&cert_file)
            .arg(&key_file)
            .arg(redirect)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting node (Debian's nodejs)")?;
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
        // The first line on a thread of its own: a provider that neither
        // starts nor exits must fail the caller, not hang it (seen once).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = tx.send(out.read_line(&mut line).map(|_| line));
            // The provider logs to stdout later on: keep reading, or its
            // next write would fail and end it.
            std::io::copy(&mut out, &mut std::io::sink())
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .map_err(|_| anyhow::anyhow!("no answer within 30 s"))
            .and_then(|r| Ok(r?));
        let issuer = match &line {
            Ok(l) => l.trim().strip_prefix("listening "),
            Err(_) => None,
        };
        let Some(issuer) = issuer else {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("oidc-provider did not start ({line:?}); its stderr:\n{stderr}");
        };
        Ok(Self {
            issuer: issuer.to_string(),
            child,
            ca_file,
        })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An approver's browser (started by the caller, outside hoop) with its
/// own home, whose NSS db trusts hoop's CA (the console's certificate:
/// `hoop ca install-nss`) and the provider's CA.
pub fn approver_browser(hoop: &Path, config: &Path, idp_ca: &Path, home: &Path) -> Result<Browser> {
    let nssdb = home.join(".pki/nssdb");
    let run = |c: &mut Command| -> Result<()> {
        let out = c.output().with_context(|| format!("starting {c:?}"))?;
        if !out.status.success() {
            bail!("{c:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(Command::new(hoop)
        .arg("--config")
        .arg(config)
        .args(["ca", "install-nss", "--dir"])
        .arg(&nssdb))?;
    run(Command::new("certutil")
        .arg("-d")
        .arg(format!("sql:{}", nssdb.display()))
        .args(["-A", "-n", "console IdP CA", "-t", "C,,", "-i"])
        .arg(idp_ca))?;
    let mut cmd = Command::new("chromium");
    cmd.env("HOME", home);
    Browser::launch(cmd, &[], &home.join("profile"))
}

/// Signs `login` in to the console at `console` (`https://host:port`)
/// through the provider's login form; returns on the inbox once its live
/// stream has opened (what is held from then on reaches the page).
pub fn sign_in(b: &mut Browser, console: &str, login: &str) -> Result<()> {
    const WAIT: Duration = Duration::from_secs(30);
    b.call("Network.clearBrowserCookies", json!({}))?;
    b.open(&format!("{console}/"))?;
    b.wait_js("document.getElementById('sign-in')", WAIT)
        .context("the console's sign-in page")?;
    b.open(&format!("{console}/login"))?;
    b.wait_js("document.querySelector('input[name=login]')", WAIT)
        .context("the provider's login form")?;
    b.eval(&format!(
        "document.querySelector('input[name=login]').value = {login:?};\
         document.querySelector('input[name=password]').value = 'any';\
         document.querySelector('form').submit(); true"
    ))?;
    b.wait_js(
        &format!(
            "location.origin === {console:?} && document.getElementById('who')?.textContent === '{login}@example.test' && document.body.dataset.synced === '1'"
        ),
        WAIT,
    )
    .with_context(|| format!("{login}'s inbox"))
}

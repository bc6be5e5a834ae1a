//! `cargo xtask demo`: the seed scenario, told step by step. A CI job's
//! headless Chromium, started with `hoop run` and an OIDC token from a
//! local issuer, works a partner's console at https://api.partner.example
//! (a local HTTPS API with its own CA, on 127.0.0.7:443). The gateway
//! injects the API key the browser never sees, masks card numbers, refuses
//! a DELETE, holds a payout until an approver approves it in hoop's web
//! console (signed in through a local OpenID provider's login form, in a
//! Chromium of her own), and a second until root denies it on the command
//! line, and keeps everything in the audit log, which the demo then shows,
//! verifies and exports as HAR. Last, fail-closed: the daemon is killed
//! under a running job, whose next connect is refused.
use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hoop_testkit::{
    Origin, OriginOpts, TestCa,
    cdp::Browser,
    idp,
    oidc::{Alg, Issuer},
    seed,
};
use serde_json::Value;

use crate::{
    ebpf,
    sh::{self, root_dir, step},
};

const PARTNER_IP: &str = "127.0.0.7";
const ISSUER_IP: &str = "127.0.0.4";
/// The approvers' identity provider (the company's, in real life).
const IDP_IP: &str = "127.0.0.6";
/// Where the approver console listens (another free port if it is taken).
const CONSOLE_PORT: u16 = 8443;

pub fn run() -> Result<()> {
    sh::require_root("the daemon attaches eBPF programs and creates cgroups")?;
    sh::check_disk(4, "building hoop for the demo");
    sh::apt_install(&["curl", "util-linux", "procps", "chromium", "libnss3-tools"])?;
    // The approvers' OpenID provider: panva's oidc-provider, pinned.
    sh::npm_ci(&["tests/oidc-provider"])?;
    ebpf::build()?;
    step("building hoop");
    sh::cargo(&["build", "-p", "hoop-daemon"])?;
    let demo = Demo::new()?;
    let r = demo.run();
    demo.cleanup();
    r
}

/// The demo's files: a world-readable scratch dir, since the job runs as
/// nobody (hoop's binary, the config, the token and the browser's home).
struct Demo {
    dir: PathBuf,
    hoop: PathBuf,
    config: PathBuf,
    out: PathBuf,
}

impl Demo {
    fn new() -> Result<Self> {
        // A fresh directory of our own (mkdtemp), not a predictable name
        // someone else could have made first; then readable by the job.
        let dir = tempfile::Builder::new()
            .prefix("hoop-demo-")
            .tempdir()?
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::create_dir(dir.join("bin"))?;
        let hoop = dir.join("bin/hoop");
        std::fs::copy(root_dir().join("target/debug/hoop"), &hoop)?;
        let out = root_dir().join("target/demo");
        std::fs::create_dir_all(&out)?;
        Ok(Self {
            config: dir.join("hoop.toml"),
            dir,
            hoop,
            out,
        })
    }

    fn hoop(&self) -> Command {
        let mut c = Command::new(&self.hoop);
        c.arg("--config").arg(&self.config);
        c
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> Result<PathBuf> {
        let p = self.dir.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(p)
    }

    fn cleanup(&self) {
        step("cleaning up: hoop detach removes the programs and pins; the demo's files go");
        let _ = self.hoop().arg("detach").status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn run(&self) -> Result<()> {
        step(&format!(
            "the partner API: https://{} on {PARTNER_IP}:443, certificate from its own CA",
            seed::PARTNER_HOST
        ));
        let partner_ca = TestCa::new("Acme partner CA");
        let bind = format!("{PARTNER_IP}:443");
        std::net::TcpListener::bind(&bind)
            .with_context(|| format!("{bind} is taken; the demo's partner API needs it"))?;
        let partner = Origin::start_background(OriginOpts {
            tls: Some(partner_ca.server_config(&[seed::PARTNER_HOST], &[b"h2", b"http/1.1"])),
            bind: Some(bind.parse()?),
            also_v6: false,
        });
        let issuer = Issuer::start_background(ISSUER_IP, Alg::Es256);
        step(&format!(
            "the CI provider: an OIDC issuer at {}; the job's token says sub={}",
            issuer.url,
            seed::JOB_SUBJECT
        ));
        let secret = format!("sk_live_demo_{:016x}", random());
        let policy = seed::policy(&seed::PolicyParts {
            issuer_url: &issuer.url,
            issuer_ca: &self.file("issuer-ca.pem", &issuer.ca.cert_pem, 0o644)?,
            partner_ca: &self.file("partner-ca.pem", &partner_ca.cert_pem, 0o644)?,
            secret_file: &self.file("partner.key", &secret, 0o600)?,
        });
        // Payouts wait for a payments lead (in the console) or root (on the
        // command line).
        let policy = policy.replace(
            "approvers = [\"uid:0\"]",
            "approvers = [\"oidc:group:payments-leads\", \"uid:0\"]\nmessage = \"Payouts need a payments lead\"",
        );
        let port = std::net::TcpListener::bind(("127.0.0.1", CONSOLE_PORT))
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))?
            .local_addr()?
            .port();
        let console = format!("https://127.0.0.1:{port}");
        let provider = idp::Provider::start(&self.dir, IDP_IP, &format!("{console}/callback"))?;
        step(&format!(
            "the approvers' identity provider: {} (alice and bob are payments leads)",
            provider.issuer
        ));
        let console_cfg = format!(
            "[console]\nlisten = \"127.0.0.1:{port}\"\njob_actor_claim = \"actor\"\n\n\
             [console.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\n\
             client_secret = {{ file = \"{}\" }}\nredirect_url = \"{console}/callback\"\n\
             scopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nca_files = [\"{}\"]\n",
            provider.issuer,
            idp::CLIENT_ID,
            self.file("console-secret", idp::CLIENT_SECRET, 0o600)?
                .display(),
            provider.ca_file.display(),
        );
        // The job runs as nobody and reaches the control socket through its
        // group.
        std::fs::write(
            &self.config,
            format!("[daemon]\ncontrol_group = \"nogroup\"\n\n{console_cfg}\n{policy}"),
        )?;
        // The CI provider's token names who started the job: that person
        // could never approve its requests.
        let mut claims = issuer.claims(seed::JOB_SUBJECT);
        claims["actor"] = "carol".into();
        claims["repository"] = "acme/scraper".into();
        let token = self.file("job-token", &issuer.token_with(&claims), 0o644)?;

        step("starting `hoop daemon`: embedded defaults, plus this policy");
        let started = Instant::now();
        println!("{policy}");
        let mut daemon = Daemon::start(self)?;

        step(
            "the job: hoop run --nss=private --token-file job-token -- chromium --headless … (as nobody)",
        );
        println!("No proxy settings: its connects are redirected in the kernel.");
        let t = Instant::now();
        let mut b = seed::launch_browser(&seed::Job {
            hoop: &self.hoop,
            config: &self.config,
            token: &token,
            home: &self.dir.join("home"),
            partner_ip: PARTNER_IP,
        })?;
        println!(
            "Chromium up in {} ms (pid {})",
            t.elapsed().as_millis(),
            b.pid()
        );
        b.open(&format!("https://{}/console", seed::PARTNER_HOST))?;

        step("1. the console lists customers: the API sent full card numbers");
        show(&b.eval("console_app.customers()")?);
        println!("The table as the browser has it:");
        print_table(&mut b)?;

        step("2. what the API received: hoop injected the key; its echo comes back masked");
        let r = b.eval("console_app.whoami()")?;
        let echoed: Value = serde_json::from_str(r["text"].as_str().unwrap_or("{}"))?;
        println!(
            "authorization, as the browser reads it: {}",
            echoed["you_sent"]["authorization"]
        );

        step("3. DELETE /v1/prod/customers/41: refused by the gateway");
        show(&b.eval("console_app.remove(41)")?);

        step(&format!(
            "the approver console: {console}/ (alice signs in, in a Chromium of her own)"
        ));
        let mut alice = idp::approver_browser(
            &self.hoop,
            &self.config,
            &provider.ca_file,
            &self.dir.join("approver-alice"),
        )?;
        idp::sign_in(&mut alice, &console, "alice")?;
        println!("alice@example.test is signed in; her inbox is empty.");

        step("4. POST /v1/prod/payouts (250 EUR): held for a human");
        let call = b.start("console_app.payout(250)")?;
        let held = self.wait_pending()?;
        let id = held["id"].as_str().unwrap_or_default().to_string();
        // A session is a job: the browser's is the one that asked.
        let session = held["job"].as_str().unwrap_or_default().to_string();
        alice.wait_js(
            &format!("document.getElementById('a-{id}')"),
            Duration::from_secs(30),
        )?;
        println!("It appeared on alice's page without a reload:\n");
        let facts = alice.eval(&format!(
            "document.querySelector('#a-{id} h3').innerText + '\\n' + \
             [...document.querySelectorAll('#a-{id} dt')]\
             .map(dt => dt.textContent + ': ' + dt.nextElementSibling.textContent).join('\\n')"
        ))?;
        for line in facts.as_str().unwrap_or_default().lines() {
            if !line.starts_with("Command") {
                println!("  {line}");
            }
        }
        let png = self.out.join("console.png");
        alice.screenshot(&png, 1100, 900)?;
        println!("\n(a screenshot of her page: {})", png.display());
        step("alice approves it in the console");
        alice.eval(&format!(
            "document.querySelector('#a-{id} form.decide button.approve').click(); true"
        ))?;
        show(&b.value(call)?);
        alice.wait_js(
            &format!("document.querySelector('#d-{id}[data-status=approved]')"),
            Duration::from_secs(30),
        )?;
        alice.close();

        step("5. a second payout (990000 EUR): root denies it on the command line");
        let call = b.start("console_app.payout(990000)")?;
        let id = self.wait_pending()?["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        sh::run(self.hoop().args([
            "approvals",
            "deny",
            &id,
            "--reason",
            "payouts over 10000 need two people",
        ]))?;
        show(&b.value(call)?);

        step("6. escape attempts from the page: the partner's bare address, and QUIC");
        let direct = format!("https://{PARTNER_IP}/v1/whoami");
        b.eval(&format!("console_app.reach('{direct}')"))?;
        match b.response_head(&direct) {
            Some((status, h)) => println!(
                "→ {status}  x-hoop-reason: {}  (an opaque answer to the page; it came from hoop)",
                h["x-hoop-reason"].as_str().unwrap_or("-")
            ),
            None => println!("→ no answer: {:?}", b.failures()),
        }
        println!(
            "Chromium runs with --enable-quic --origin-to-force-quic-on={}:443:",
            seed::QUIC_HOST
        );
        show(&b.eval(&format!(
            "console_app.reach('https://{}/v1/whoami')",
            seed::QUIC_HOST
        ))?);
        for (url, e) in b.failures() {
            println!("  {url}: {e} (the kernel refused the UDP send)");
        }

        let forms = [secret.clone(), format!("Bearer {secret}")];
        let dom = b.dom()?;
        let leaked = b
            .responses()?
            .iter()
            .flat_map(|r| [r.headers.to_string(), r.body.clone().unwrap_or_default()])
            .chain([dom])
            .any(|t| forms.iter().any(|f| t.contains(f.as_str())));
        if leaked {
            bail!("the partner key reached the browser");
        }
        step("the page's activity log");
        println!(
            "{}",
            b.eval("document.getElementById('activity').innerText")?
                .as_str()
                .unwrap_or_default()
        );
        println!("The partner key appears in nothing the browser received.");
        step("hoop status, with the browser's job still running");
        sh::run(self.hoop().arg("status"))?;
        b.close();
        println!(
            "The partner saw {} requests (no DELETE, one payout).",
            partner.hits()
        );

        step("fail-closed: kill the daemon (SIGKILL) while a job runs");
        // The job waits for the signal to connect, trusting the partner's
        // CA: if its connect got around the dead daemon, it would succeed.
        let go = self.dir.join("go");
        let mut job = self
            .hoop()
            .arg("run")
            .arg("--token-file")
            .arg(&token)
            .args(["--", "bash", "-c"])
            .arg(format!(
                "while [ ! -e {go} ]; do sleep 0.05; done; \
                 curl -sS --max-time 3 -o /dev/null --cacert {ca} --resolve {h}:443:{PARTNER_IP} https://{h}/console; \
                 rc=$?; if [ $rc -eq 7 ]; then echo 'job: connect refused while the daemon is down'; \
                 else echo \"job: curl exit $rc (expected 7, connection refused)\"; exit 1; fi",
                go = go.display(),
                ca = self.dir.join("partner-ca.pem").display(),
                h = seed::PARTNER_HOST
            ))
            .spawn()?;
        // Killed only once this very job runs (the browser's may still be
        // listed while its cgroup empties).
        self.wait_for_job(&go.display().to_string())?;
        let connections = partner.connections();
        daemon.kill()?;
        std::fs::write(&go, "")?;
        if !job.wait()?.success() {
            bail!("the job's connect was not refused while the daemon was down");
        }
        if partner.connections() != connections {
            bail!("the partner got a connection while the daemon was down");
        }
        step("restart: the daemon swaps its programs into the pinned links, then stops cleanly");
        let mut daemon = Daemon::start(self)?;
        daemon.stop()?;

        step("the audit record: this demo's sessions, then the browser's timeline");
        let since = format!("{}s", started.elapsed().as_secs() + 1);
        sh::run(self.hoop().args(["sessions", "list", "--since", &since]))?;
        println!(
            "(the browser's session first; the second is the fail-closed step's job: \
             its connect never reached a daemon, so only its start and end are on record)"
        );
        sh::run(self.hoop().args(["sessions", "show", &session]))?;
        println!(
            "(udp-not-dns to {PARTNER_IP}:443: the browser trying QUIC; to 2001:4860:4860::8888: \
             Chromium's start-up probe for its IPv6 address, a UDP connect refused like any UDP that isn't DNS)"
        );
        step("hoop audit verify");
        sh::run(self.hoop().args(["audit", "verify"]))?;
        let har = self.out.join("session.har");
        step(&format!("hoop export har {session} > {}", har.display()));
        let text = sh::output(self.hoop().args(["export", "har", &session]))?;
        std::fs::write(&har, &text)?;
        let entries: Value = serde_json::from_str(&text)?;
        println!(
            "{} entries; open it in Chromium DevTools (Network, Import HAR).",
            entries["log"]["entries"].as_array().map_or(0, Vec::len)
        );
        println!("Daemon log: {}", daemon.log.display());
        Ok(())
    }

    /// Waits until the daemon runs a job whose command line mentions
    /// `needle`, and `hoop run` has become that command (it had its answer).
    fn wait_for_job(&self, needle: &str) -> Result<()> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            let s: Value =
                serde_json::from_str(&sh::output(self.hoop().args(["status", "--json"]))?)?;
            let running = s["jobs"].as_array().into_iter().flatten().any(|j| {
                let ours = j["command"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a.as_str().is_some_and(|a| a.contains(needle)));
                let exec = std::fs::read_to_string(format!("/proc/{}/comm", j["pid"]))
                    .is_ok_and(|c| c.trim() != "hoop");
                ours && exec
            });
            if running {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("the job did not start within 10 s")
    }

    /// The first pending approval, once there is one.
    fn wait_pending(&self) -> Result<Value> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            let list: Value = serde_json::from_str(&sh::output(self.hoop().args([
                "approvals",
                "list",
                "--json",
            ]))?)?;
            if let Some(a) = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["status"] == "pending")
            {
                return Ok(a.clone());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("the request was not held for approval")
    }
}

/// One step's outcome, as the page got it.
fn show(r: &Value) {
    let mut line = format!("→ {}", r["status"]);
    for k in ["reason", "rule"] {
        if let Some(v) = r[k].as_str() {
            line += &format!("  x-hoop-{k}: {v}");
        }
    }
    if let Some(t) = r["text"]
        .as_str()
        .map(str::trim_end)
        .filter(|t| !t.is_empty())
    {
        line += &format!("\n  {}", t.chars().take(160).collect::<String>());
    }
    if let Some(e) = r["error"].as_str() {
        line += &format!("  {e}");
    }
    println!("{line}");
}

fn print_table(b: &mut Browser) -> Result<()> {
    let rows = b.eval(
        "[...document.querySelectorAll('#customers tr')].map(tr => [...tr.cells].map(c => c.textContent).join('  '))",
    )?;
    for r in rows.as_array().into_iter().flatten() {
        println!("  {}", r.as_str().unwrap_or_default());
    }
    Ok(())
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u64::from_le_bytes(b)
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(demo: &Demo) -> Result<Self> {
        let log = demo.out.join("daemon.log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = demo
            .hoop()
            .arg("daemon")
            .stderr(f)
            .stdout(Stdio::null())
            .spawn()?;
        let mut d = Self { child, log };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if demo
                .hoop()
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success()
            {
                println!(
                    "daemon up in {} ms (log: {})",
                    t.elapsed().as_millis(),
                    d.log.display()
                );
                return Ok(d);
            }
            if let Some(s) = d.child.try_wait()? {
                bail!("the daemon exited ({s}); see {}", d.log.display());
            }
            thread::sleep(Duration::from_millis(50));
        }
        d.kill()?;
        bail!(
            "the daemon did not come up within 10 s; see {}",
            d.log.display()
        )
    }

    fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        sh::run(
            Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string()),
        )?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

//! `cargo xtask demo`: the daemon with its embedded defaults, a local
//! "partner API" on 127.0.0.2, and jobs going through the gateway: a plain
//! request, a blocked bypass, fail-closed while the daemon is down, and
//! the audit record of it all.
use std::{
    io::{Read, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    ebpf,
    sh::{self, root_dir, step},
};

const UPSTREAM: &str = "127.0.0.2:8080";

/// The demo's policy, on top of the embedded defaults: jobs in the hoop
/// slice are `demo:local`, and may reach the local partner API only.
const DEMO_POLICY: &str = r#"# Written by `cargo xtask demo`.
[[identity.static]]
cgroup = "hoop.slice/**"
name = "demo:local"

[[connection]]
name = "partner-api"
hosts = ["127.0.0.2:8080"]
allow = ["demo:*"]
"#;

pub fn run() -> Result<()> {
    sh::require_root("the daemon attaches eBPF programs and creates cgroups")?;
    sh::apt_install(&["curl"])?;
    ebpf::build()?;
    step("building hoop");
    sh::cargo(&["build", "-p", "hoop-daemon"])?;
    let hoop = root_dir().join("target/debug/hoop");

    step(&format!("starting a local partner API on {UPSTREAM}"));
    let listener = TcpListener::bind(UPSTREAM).with_context(|| format!("binding {UPSTREAM}"))?;
    thread::spawn(move || serve_upstream(listener));

    let config = root_dir().join("target/demo-hoop.toml");
    std::fs::write(&config, DEMO_POLICY)?;
    step(&format!(
        "starting `hoop daemon`: embedded defaults plus the demo policy in {}",
        config.display()
    ));
    let mut daemon = Daemon::start(&hoop)?;

    step("a job: hoop run -- curl http://127.0.0.2:8080/ (no proxy settings)");
    let out = hoop_cmd(&hoop)
        .args(["run", "--", "curl", "-sS", "--max-time", "5"])
        .arg(format!("http://{UPSTREAM}/"))
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "the demo job failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    step("a bypass attempt: UDP to 127.0.0.2:443 (QUIC) from a job is refused in the kernel");
    let out = hoop_cmd(&hoop)
        .args([
            "run",
            "--",
            "bash",
            "-c",
            "echo hi > /dev/udp/127.0.0.2/443",
        ])
        .output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        bail!("UDP to a non-resolver was allowed: the demo expected a refusal");
    }

    step("hoop status");
    sh::run(hoop_cmd(&hoop).arg("status"))?;

    step("fail-closed: kill the daemon (SIGKILL) while a job runs, then connect");
    let mut job = hoop_cmd(&hoop)
        .args(["run", "--", "bash", "-c"])
        .arg(format!(
            "sleep 1; if curl -sS --max-time 3 http://{UPSTREAM}/; then echo 'job: reached the API (unexpected)'; exit 1; \
             else echo 'job: connect refused while the daemon is down'; fi"
        ))
        .spawn()?;
    thread::sleep(Duration::from_millis(300));
    daemon.kill()?;
    let status = job.wait()?;
    if !status.success() {
        bail!("the job reached the network while the daemon was down");
    }

    step("restart: the daemon swaps its programs into the pinned links");
    let mut daemon = Daemon::start(&hoop)?;
    let out = hoop_cmd(&hoop)
        .args(["run", "--", "curl", "-sS", "--max-time", "5"])
        .arg(format!("http://{UPSTREAM}/"))
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    daemon.stop()?;

    step("the audit record: sessions, the last one's timeline, and verify");
    sh::run(hoop_cmd(&hoop).args(["sessions", "list"]))?;
    let list = sh::output(hoop_cmd(&hoop).args(["sessions", "list", "--json"]))?;
    let sessions: serde_json::Value = serde_json::from_str(&list)?;
    if let Some(last) = sessions
        .as_array()
        .and_then(|a| a.last())
        .and_then(|s| s["session"].as_str())
    {
        sh::run(hoop_cmd(&hoop).args(["sessions", "show", last]))?;
    }
    sh::run(hoop_cmd(&hoop).args(["audit", "verify"]))?;

    step("hoop detach: remove the programs and pins");
    sh::run(hoop_cmd(&hoop).arg("detach"))?;
    eprintln!("\ndemo done. Daemon log: {}", daemon.log.display());
    Ok(())
}

fn hoop_cmd(hoop: &PathBuf) -> Command {
    let mut c = Command::new(hoop);
    c.env("HOOP_CONFIG", root_dir().join("target/demo-hoop.toml"));
    c
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(hoop: &PathBuf) -> Result<Self> {
        let log = root_dir().join("target/demo-daemon.log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = hoop_cmd(hoop)
            .arg("daemon")
            .stderr(f)
            .stdout(Stdio::null())
            .spawn()?;
        let mut d = Self { child, log };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if hoop_cmd(hoop)
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success()
            {
                eprintln!(
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

fn serve_upstream(l: TcpListener) {
    for (n, s) in l.incoming().enumerate() {
        let Ok(mut s) = s else { continue };
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let body = format!(
            "hello from the partner API at {UPSTREAM} (request #{})\n",
            n + 1
        );
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

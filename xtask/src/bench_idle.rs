//! `cargo xtask bench-idle`: memory per idle job connection. N HTTPS
//! connections (TLS, one GET each, then idle) held through hoop's explicit
//! proxy, against the same N held straight to the origin (hyper + rustls,
//! the peer) in the same run; RSS delta / N of the process that serves
//! them, and hoop's open descriptors (an idle job connection must hold no
//! upstream socket). Loopback only; capture off, so no eBPF is needed.
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::sh::{self, root_dir, step};

#[derive(clap::Args)]
pub struct Opts {
    /// Idle connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
}

/// A child killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This process's hard descriptor limit (raising it needs
/// CAP_SYS_RESOURCE, which a container may not grant).
fn hard_nofile() -> Result<usize> {
    std::fs::read_to_string("/proc/self/limits")?
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .context("no open-file limit in /proc/self/limits")
}

/// `cmd` with its soft descriptor limit raised to the hard one.
fn nofile(cmd: &Path) -> Result<Command> {
    let mut c = Command::new("prlimit");
    let lim = hard_nofile()?;
    c.arg(format!("--nofile={lim}:{lim}")).arg(cmd);
    Ok(c)
}

fn listening(mut cmd: Command, what: &str) -> Result<(Proc, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("listening ") else {
        bail!("{what} did not start: {line:?}");
    };
    Ok((Proc(child), addr.to_string()))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Holds `n` idle connections (hoop-idlers) until dropped.
struct Idlers(Proc, Option<ChildStdin>);

impl Idlers {
    fn open(bin: &Path, n: usize, args: &[&str]) -> Result<Self> {
        let mut c = nofile(bin)?;
        c.args(["--n", &n.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn().context("starting hoop-idlers")?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let p = Proc(child);
        if line.trim() != format!("holding {n}") {
            bail!("hoop-idlers: {}", line.trim());
        }
        Ok(Self(p, stdin))
    }
}

impl Drop for Idlers {
    fn drop(&mut self) {
        // Closing stdin lets them go; wait so the next figure starts clean.
        drop(self.1.take());
        let _ = self.0.0.wait();
    }
}

/// RSS of `pid` grown while `n` idle connections are held, per connection.
fn per_conn(
    pid: u32,
    n: usize,
    settle: Duration,
    hold: impl Fn(usize) -> Result<Idlers>,
) -> Result<(f64, u64, usize)> {
    // Warm-up, a few: configs, leaves, the session cache. Not N: memory
    // freed after N would be reused and hide the cost.
    drop(hold(100)?);
    thread::sleep(settle);
    let before = rss_kib(pid)?;
    let held = hold(n)?;
    thread::sleep(settle);
    let after = rss_kib(pid)?;
    let open = fds(pid)?;
    drop(held);
    Ok((
        (after.saturating_sub(before)) as f64 / n as f64,
        after,
        open,
    ))
}

pub fn run(o: &Opts) -> Result<()> {
    sh::require_root("raising descriptor limits for many connections")?;
    step("building hoop and the test tools (release)");
    sh::cargo(&[
        "build",
        "--release",
        "-p",
        "hoop-daemon",
        "-p",
        "hoop-testkit",
        "--bins",
    ])?;
    let rel = root_dir().join("target/release");
    let dir = root_dir().join("target/bench-idle");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let n = o.connections;
    if hard_nofile()? < n + 1024 {
        bail!(
            "the open-file limit ({}) is too low for {n} connections",
            hard_nofile()?
        );
    }

    let origin_ca = dir.join("origin-ca.pem");
    let mut c = nofile(&rel.join("hoop-origin"))?;
    c.args(["--bind", "127.0.0.2:0", "--names", "127.0.0.2", "--ca-out"])
        .arg(&origin_ca);
    let (origin, target) = listening(c, "the origin")?;
    let (issuer_ca, token) = (dir.join("issuer-ca.pem"), dir.join("token"));
    let mut c = Command::new(rel.join("hoop-issuer"));
    c.args(["--bind", "127.0.0.4", "--sub", "bench", "--ca-out"])
        .arg(&issuer_ca)
        .arg("--token-out")
        .arg(&token);
    let (_issuer, issuer_url) = listening(c, "the issuer")?;

    let proxy = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let config = dir.join("hoop.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n\
             [limits]\nmax_connections_per_job = {cap}\nmax_connections = {cap}\n\
             upstream_idle_timeout_ms = 1000\nidle_timeout_ms = 600000\n\
             [capture]\nenabled = false\n[proxy]\nlisten = [\"{proxy}\"]\n\
             [egress]\nallow = [\"127.0.0.0/8\"]\n[tls]\nupstream_ca_files = [\"{ca}\"]\n\
             [[identity.oidc]]\nname = \"bench\"\nissuer = \"{issuer_url}\"\naudience = \"hoop\"\n\
             ca_files = [\"{ica}\"]\n\
             [[connection]]\nname = \"origin\"\nhosts = [\"127.0.0.2\"]\nallow = [\"bench:*\"]\n",
            d = dir.display(),
            cap = 2 * n,
            ca = origin_ca.display(),
            ica = issuer_ca.display(),
        ),
    )?;
    step("starting hoop (release, explicit proxy only)");
    let mut c = nofile(&rel.join("hoop"))?;
    c.arg("--config")
        .arg(&config)
        .arg("daemon")
        .env("HOOP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hoop.log"))?);
    let hoop = Proc(c.spawn()?);
    let t = Instant::now();
    while TcpStream::connect(&proxy).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("hoop did not listen on {proxy}; see target/bench-idle/hoop.log");
        }
        thread::sleep(Duration::from_millis(50));
    }

    let idlers = rel.join("hoop-idlers");
    let origin_ca_s = origin_ca.display().to_string();
    let hoop_ca = dir.join("state/ca.pem").display().to_string();
    let token_s = token.display().to_string();
    let common = ["--target", target.as_str(), "--name", "127.0.0.2"];

    step(&format!("{n} idle connections straight to the origin"));
    let direct = per_conn(origin.0.id(), n, Duration::from_secs(2), |k| {
        Idlers::open(&idlers, k, &[&common[..], &["--ca", &origin_ca_s]].concat())
    })?;
    step(&format!("{n} idle connections through hoop (CONNECT)"));
    // Settle past upstream_idle_timeout_ms: the upstreams are let go.
    let via = per_conn(hoop.0.id(), n, Duration::from_secs(3), |k| {
        Idlers::open(
            &idlers,
            k,
            &[
                &common[..],
                &[
                    "--ca",
                    &hoop_ca,
                    "--proxy",
                    &proxy,
                    "--token-file",
                    &token_s,
                ],
            ]
            .concat(),
        )
    })?;
    let md = format!(
        "| {n} idle HTTPS connections (TLS, one GET each, then idle) | RSS per connection | RSS with all held | open fds |\n\
         |---|---|---|---|\n\
         | origin, direct (hyper + rustls server; peer) | {:.1} KiB | {} MiB | {} |\n\
         | hoop explicit proxy (job side only) | {:.1} KiB ({:.2}× the peer) | {} MiB | {} |\n",
        direct.0,
        direct.1 / 1024,
        direct.2,
        via.0,
        via.0 / direct.0,
        via.1 / 1024,
        via.2,
    );
    std::fs::File::create(dir.join("result.md"))?.write_all(md.as_bytes())?;
    println!("\n{md}");
    Ok(())
}

//! `cargo xtask bench`: hoop side by side with the direct path and with
//! mitmproxy, in one run, on loopback only.
//!
//! Layout: the origin (`hoop-origin`, one tokio worker, TLS) and the load
//! tool share core 1; the proxy under test (hoop or mitmdump) gets core 0 to
//! itself. The direct path leaves core 0 idle, so "% of direct" is what a
//! proxy costs in latency and throughput when it has its own core.
//!
//! Every figure is checked: a run with errors or non-2xx answers is reported
//! as failed, never as a fast number.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    ebpf,
    sh::{self, root_dir, step},
};

const MITMPROXY: &str = "mitmproxy==11.0.2";
const NOTES_MARKER: &str =
    "<!-- Notes below are written by hand; cargo xtask bench keeps them. -->\n";
const OHA: &str = "1.16.0";

#[derive(clap::Args)]
pub struct Opts {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Request rate for the latency workload (requests per second).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Concurrent connections for the throughput workloads.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Only the workloads whose name contains this (e.g. "audit", "HTTP/2").
    #[arg(long)]
    pub only: Option<String>,
    /// Where to write the report (relative to the repository root).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
}

pub fn run(o: &Opts) -> Result<()> {
    sh::require_root("the transparent path attaches eBPF programs to a bench cgroup")?;
    sh::apt_install(&[
        "wrk",
        "nghttp2-client",
        "util-linux",
        "python3-venv",
        "cmake",
    ])?;
    ebpf::build()?;
    step("building hoop and hoop-origin (release)");
    sh::cargo(&[
        "build",
        "--release",
        "-p",
        "hoop-daemon",
        "-p",
        "hoop-testkit",
        "--bins",
    ])?;
    let tools = Tools::install()?;
    let rel = root_dir().join("target/release");
    let dir = root_dir().join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let pin = Pin::detect();

    step("starting the origin (hoop-origin, 1 worker) on 127.0.0.2");
    let origin_ca = dir.join("origin-ca.pem");
    let (origin, origin_addr) = Proc::spawn_listening(
        pin.load(Command::new(rel.join("hoop-origin")))
            .args(["--bind", "127.0.0.2:0", "--names", "127.0.0.2"])
            .arg("--ca-out")
            .arg(&origin_ca),
        "origin",
    )?;
    let url = format!("https://{origin_addr}/hello");

    step("starting a local OIDC issuer (the explicit proxy wants a token)");
    let (issuer_ca, token_file) = (dir.join("issuer-ca.pem"), dir.join("token"));
    let (_issuer, issuer_url) = Proc::spawn_listening(
        pin.load(Command::new(rel.join("hoop-issuer")))
            .args(["--bind", "127.0.0.4", "--sub", "bench"])
            .arg("--ca-out")
            .arg(&issuer_ca)
            .arg("--token-out")
            .arg(&token_file),
        "issuer",
    )?;
    let token = std::fs::read_to_string(&token_file)?;
    let proxy_auth = format!("Proxy-Authorization: Bearer {}", token.trim());

    step("starting hoop (release, HOOP_LOG=warn) on core 0");
    let policy = format!(
        "[[identity.oidc]]\nname = \"bench\"\nissuer = \"{issuer_url}\"\naudience = \"hoop\"\n\
         ca_files = [\"{}\"]\n\n[[identity.static]]\ncgroup = \"hoop-bench.slice/**\"\nname = \"bench:local\"\n\n\
         [[connection]]\nname = \"origin\"\nhosts = [\"127.0.0.2\"]\nallow = [\"bench:*\"]\n",
        issuer_ca.display()
    );
    let hoop = Hoop::start(&rel.join("hoop"), &dir, &origin_ca, &pin, &policy)?;

    let mut r = Report::new(o, &pin);
    let secs = o.seconds.to_string();
    let conns = o.connections.to_string();
    let wrk_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["wrk", "-t1", "-c", &conns, "-d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(format!("{secs}s"));
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(url.clone());
        a
    };
    let h2_args = || -> Vec<String> {
        vec![
            "h2load".into(),
            "-c".into(),
            "8".into(),
            "-m".into(),
            "16".into(),
            "-D".into(),
            secs.clone(),
            url.clone(),
        ]
    };
    let oha_args = |proxy: Option<&str>, rate: Option<u32>| -> Vec<String> {
        let mut a = vec![
            tools.oha.display().to_string(),
            "--no-tui".into(),
            "--insecure".into(),
            "--output-format".into(),
            "json".into(),
            "-z".into(),
            format!("{secs}s"),
            "-c".into(),
        ];
        match rate {
            Some(q) => a.extend([
                "8".into(),
                "-q".into(),
                q.to_string(),
                "--latency-correction".into(),
            ]),
            None => a.push(conns.clone()),
        }
        if let Some(p) = proxy {
            a.extend(["-x".into(), p.into()]);
            a.extend(["--proxy-header".into(), proxy_auth.clone()]);
        }
        a.push(url.clone());
        a
    };
    let explicit = format!("http://{}", hoop.proxy_addr);

    // mitmproxy in reverse mode stands where the origin is for tools that
    // cannot use a proxy (wrk, h2load); in regular mode for oha -x.
    let mitm_rev = Mitm::start(&tools, &pin, &format!("reverse:https://{origin_addr}"))?;
    let mitm_url = format!("https://{}/hello", mitm_rev.addr);
    let via_mitm = |a: Vec<String>| -> Vec<String> {
        a.into_iter()
            .map(|s| if s == url { mitm_url.clone() } else { s })
            .collect()
    };

    let w = "HTTP/1.1 keep-alive, req/s (wrk)";
    r.run(w, "direct", || Wrk.run(&pin, None, &wrk_args(&[])));
    r.run(w, "hoop transparent", || {
        Wrk.run(&pin, Some(&hoop), &wrk_args(&[]))
    });
    r.run(w, "mitmproxy", || {
        Wrk.run(&pin, None, &via_mitm(wrk_args(&[])))
    });

    let w = "HTTP/2, req/s (h2load, 8 conns × 16 streams)";
    r.run(w, "direct", || H2load.run(&pin, None, &h2_args()));
    r.run(w, "hoop transparent", || {
        H2load.run(&pin, Some(&hoop), &h2_args())
    });
    r.run(w, "mitmproxy", || {
        H2load.run(&pin, None, &via_mitm(h2_args()))
    });

    let w = "new TLS connections/s (wrk, Connection: close)";
    let close = ["-H", "Connection: close"];
    r.run(w, "direct", || Wrk.run(&pin, None, &wrk_args(&close)));
    r.run(w, "hoop transparent", || {
        Wrk.run(&pin, Some(&hoop), &wrk_args(&close))
    });
    r.run(w, "mitmproxy", || {
        Wrk.run(&pin, None, &via_mitm(wrk_args(&close)))
    });
    drop(mitm_rev);

    let mitm_fwd = Mitm::start(&tools, &pin, "regular")?;
    let mitm_proxy = format!("http://{}", mitm_fwd.addr);
    let w = "explicit proxy (CONNECT), HTTP/1.1 keep-alive, req/s (oha -x)";
    r.run(w, "direct", || {
        Oha::Rps.run(&pin, None, &oha_args(None, None))
    });
    r.run(w, "hoop explicit proxy", || {
        Oha::Rps.run(&pin, None, &oha_args(Some(&explicit), None))
    });
    r.run(w, "mitmproxy", || {
        Oha::Rps.run(&pin, None, &oha_args(Some(&mitm_proxy), None))
    });

    let w = &format!("latency at {} req/s, p50 / p99 ms (oha -q)", o.rate);
    let q = Some(o.rate);
    r.run(w, "direct", || {
        Oha::Latency.run(&pin, None, &oha_args(None, q))
    });
    r.run(w, "hoop transparent", || {
        Oha::Latency.run(&pin, Some(&hoop), &oha_args(None, q))
    });
    r.run(w, "hoop explicit proxy", || {
        Oha::Latency.run(&pin, None, &oha_args(Some(&explicit), q))
    });
    r.run(w, "mitmproxy", || {
        Oha::Latency.run(&pin, None, &oha_args(Some(&mitm_proxy), q))
    });
    drop(mitm_fwd);

    hoop.stop()?;

    // The audit log's cost: the same transparent path with recording off,
    // with sync = normal, and as shipped (sync = full), one daemon each.
    let variants = [
        ("audit off", "enabled = false"),
        ("audit on, sync = normal", "sync = \"normal\""),
        ("audit on, sync = full (default)", ""),
    ];
    let w1 = "audit cost: HTTP/1.1 keep-alive, req/s (wrk), hoop transparent";
    let w2 = "audit cost: HTTP/2, req/s (h2load), hoop transparent";
    for (label, audit) in variants {
        if !r.wanted(w1) && !r.wanted(w2) {
            break;
        }
        step(&format!("hoop with {label}"));
        let d = dir.join(label.split(',').next().unwrap_or(label).replace(' ', "-"));
        std::fs::create_dir_all(&d)?;
        let p = format!("{policy}\n[audit]\n{audit}\n");
        let h = Hoop::start(&rel.join("hoop"), &d, &origin_ca, &pin, &p)?;
        r.run(w1, label, || Wrk.run(&pin, Some(&h), &wrk_args(&[])));
        r.run(w2, label, || H2load.run(&pin, Some(&h), &h2_args()));
        h.stop()?;
    }
    r.baseline(w1, "audit off");
    r.baseline(w2, "audit off");
    drop(origin);
    let out = root_dir().join(&o.out);
    // Hand-written notes after the marker survive a new run.
    let notes = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| t.split_once(NOTES_MARKER).map(|(_, n)| n.to_string()))
        .unwrap_or_else(|| "\n".into());
    let md = format!("{}{NOTES_MARKER}{notes}", r.markdown());
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("\n{}", r.table());
    eprintln!("wrote {}", out.display());
    if r.failed > 0 {
        bail!("{} measurement(s) failed; see the report", r.failed);
    }
    Ok(())
}

/// Core assignment: the proxy alone on core 0, origin and load on core 1.
struct Pin {
    cores: usize,
}

impl Pin {
    fn detect() -> Self {
        Self {
            cores: thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn wrap(&self, core: usize, cmd: Command) -> Command {
        if self.cores < 2 {
            return cmd;
        }
        let mut c = Command::new("taskset");
        c.args(["-c", &core.to_string()])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    fn proxy(&self, cmd: Command) -> Command {
        self.wrap(0, cmd)
    }

    fn load(&self, cmd: Command) -> Command {
        self.wrap(1, cmd)
    }

    fn describe(&self) -> String {
        if self.cores < 2 {
            "not pinned (fewer than 2 cores)".into()
        } else {
            "proxy (hoop or mitmdump) on core 0; origin and load tool on core 1 (taskset)".into()
        }
    }
}

/// The benchmark tools that do not come from Debian.
struct Tools {
    oha: PathBuf,
    mitmdump: PathBuf,
}

impl Tools {
    fn install() -> Result<Self> {
        let root = root_dir().join("target/tools");
        let oha = root.join("bin/oha");
        if !oha.exists() {
            step(&format!("installing oha {OHA} into target/tools (once)"));
            sh::cargo(&[
                "install",
                "--locked",
                "oha",
                "--version",
                OHA,
                "--root",
                root.to_str().unwrap(),
            ])?;
        }
        let venv = root.join("mitmproxy");
        let mitmdump = venv.join("bin/mitmdump");
        if !mitmdump.exists() {
            step(&format!(
                "installing {MITMPROXY} into a venv in target/tools (once)"
            ));
            sh::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
            sh::run(Command::new(venv.join("bin/pip")).args(["install", "-q", MITMPROXY]))?;
        }
        Ok(Self { oha, mitmdump })
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Proc {
    /// Spawns a server that prints `listening ADDR` on stdout.
    fn spawn_listening(cmd: &mut Command, what: &str) -> Result<(Self, String)> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening ") else {
            let _ = child.kill();
            bail!("the {what} did not start: {line:?}");
        };
        Ok((Self(child), addr.to_string()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(host: &str) -> Result<u16> {
    Ok(TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// A hoop daemon with a bench-only config: its own cgroup, pins, ports and
/// state, dialling loopback only, trusting the origin's CA.
struct Hoop {
    bin: PathBuf,
    config: PathBuf,
    proxy_addr: String,
    log: PathBuf,
    child: Option<Proc>,
}

impl Hoop {
    fn start(bin: &Path, dir: &Path, origin_ca: &Path, pin: &Pin, policy: &str) -> Result<Self> {
        let port = loop {
            let p = free_port("127.0.0.1")?;
            if TcpListener::bind(("::1", p)).is_ok() {
                break p;
            }
        };
        let proxy_addr = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
        let config = dir.join("hoop.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n\n\
                 [capture]\ncgroup = \"hoop-bench.slice\"\nbpf_pin_dir = \"/sys/fs/bpf/hoop-bench\"\n\
                 listen_port = {port}\ndns_resolvers = [\"127.0.0.54\"]\n\n\
                 [proxy]\nlisten = [\"{proxy_addr}\"]\n\n\
                 [egress]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n\n\
                 [tls]\nupstream_ca_files = [\"{ca}\"]\n\n{policy}",
                d = dir.display(),
                ca = origin_ca.display(),
            ),
        )?;
        let log = dir.join("hoop.log");
        let mut h = Self {
            bin: bin.to_path_buf(),
            config,
            proxy_addr,
            log: log.clone(),
            child: None,
        };
        let mut cmd = pin.proxy(h.cmd());
        cmd.arg("daemon")
            .env("HOOP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        h.child = Some(Proc(cmd.spawn()?));
        let t = Instant::now();
        while !h.cmd().arg("status").output()?.status.success() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("hoop did not come up; see {}", log.display());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(h)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(&self.config)
            .env_remove("HOOP_CONFIG");
        c
    }

    /// SIGTERM, then remove the bench cgroup's programs and pins.
    fn stop(mut self) -> Result<()> {
        if let Some(mut p) = self.child.take() {
            sh::run(Command::new("kill").arg(p.0.id().to_string()))?;
            p.0.wait()?;
        }
        self.detach()
    }

    fn detach(&self) -> Result<()> {
        sh::run(self.cmd().arg("detach").stdout(Stdio::null()))
    }
}

impl Drop for Hoop {
    fn drop(&mut self) {
        if self.child.take().is_some() {
            let _ = self.detach();
        }
    }
}

struct Mitm {
    _p: Proc,
    addr: String,
}

impl Mitm {
    fn start(tools: &Tools, pin: &Pin, mode: &str) -> Result<Self> {
        let port = free_port("127.0.0.1")?;
        let mut cmd = Command::new(&tools.mitmdump);
        cmd.args(["--mode", mode, "--listen-host", "127.0.0.1"])
            .args(["--listen-port", &port.to_string()])
            .args(["--ssl-insecure", "-q", "--set", "flow_detail=0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let p = Proc(pin.proxy(cmd).spawn().context("starting mitmdump")?);
        let addr = format!("127.0.0.1:{port}");
        let t = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("mitmdump ({mode}) did not listen on {addr} within 30 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { _p: p, addr })
    }
}

/// One measured figure (or two, for latency).
#[derive(Clone, Copy)]
enum Figure {
    Rate(f64),
    Latency { p50_ms: f64, p99_ms: f64, rps: f64 },
}

type Outcome = Result<Figure>;

/// Runs a load tool, through `hoop run` when `via` is set.
fn load(pin: &Pin, via: Option<&Hoop>, args: &[String]) -> Result<String> {
    let cmd = match via {
        Some(h) => {
            let mut c = h.cmd();
            c.arg("run").arg("--").args(args);
            c
        }
        None => {
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]);
            c
        }
    };
    eprintln!("  $ {}", args.join(" "));
    let out = sh::output(&mut pin.load(cmd));
    match via {
        Some(h) => out.with_context(|| format!("hoop's log: {}", h.log.display())),
        None => out,
    }
}

struct Wrk;
struct H2load;
enum Oha {
    Rps,
    Latency,
}

impl Wrk {
    fn run(&self, pin: &Pin, via: Option<&Hoop>, args: &[String]) -> Outcome {
        let out = load(pin, via, args)?;
        for bad in ["Non-2xx or 3xx responses", "Socket errors"] {
            if let Some(l) = out.lines().find(|l| l.contains(bad)) {
                bail!("wrk: {}", l.trim());
            }
        }
        let rps = out
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .context("wrk printed no Requests/sec")?;
        Ok(Figure::Rate(rps.trim().parse()?))
    }
}

impl H2load {
    fn run(&self, pin: &Pin, via: Option<&Hoop>, args: &[String]) -> Outcome {
        let out = load(pin, via, args)?;
        let line = |p: &str| out.lines().find(|l| l.starts_with(p)).map(str::to_string);
        let codes = line("status codes:").context("h2load printed no status codes")?;
        let reqs = line("requests:").context("h2load printed no request summary")?;
        let n = |s: &str, key: &str| -> u64 {
            s.split(',')
                .find_map(|p| p.trim().strip_suffix(key))
                .and_then(|v| v.trim().split(' ').next_back()?.parse().ok())
                .unwrap_or(u64::MAX)
        };
        if n(&reqs, " failed") != 0
            || n(&reqs, " errored") != 0
            || n(&codes, " 5xx") != 0
            || n(&codes, " 4xx") != 0
        {
            bail!("h2load: {reqs} / {codes}");
        }
        if !out.contains("Application protocol: h2") {
            bail!("h2load did not negotiate h2");
        }
        let fin = line("finished in").context("h2load printed no summary")?;
        let rps = fin
            .split(',')
            .find_map(|p| p.trim().strip_suffix(" req/s"))
            .context("h2load printed no req/s")?;
        Ok(Figure::Rate(rps.trim().parse()?))
    }
}

impl Oha {
    fn run(&self, pin: &Pin, via: Option<&Hoop>, args: &[String]) -> Outcome {
        let out = load(pin, via, args)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("oha JSON")?;
        let codes = &v["statusCodeDistribution"];
        let ok = codes.get("200").and_then(|n| n.as_u64()).unwrap_or(0);
        let all: u64 = codes
            .as_object()
            .map(|m| m.values().filter_map(|n| n.as_u64()).sum())
            .unwrap_or(0);
        // Requests in flight when -z runs out are reported as aborted:
        // that is the end of the run, not an error of the path.
        let errors: Vec<String> = v["errorDistribution"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !k.contains("aborted due to deadline"))
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect()
            })
            .unwrap_or_default();
        if ok == 0 || ok != all || !errors.is_empty() {
            bail!("oha: status codes {codes}, errors {errors:?}");
        }
        match self {
            Oha::Rps => Ok(Figure::Rate(
                v["summary"]["requestsPerSec"]
                    .as_f64()
                    .context("oha requestsPerSec")?,
            )),
            Oha::Latency => {
                let p = &v["latencyPercentiles"];
                let ms = |k: &str| p[k].as_f64().map(|s| s * 1000.0).context("oha percentiles");
                Ok(Figure::Latency {
                    p50_ms: ms("p50")?,
                    p99_ms: ms("p99")?,
                    rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
                })
            }
        }
    }
}

struct Report {
    rows: Vec<(String, String, std::result::Result<Figure, String>)>,
    /// Workloads compared against another path than "direct".
    baselines: Vec<(String, String)>,
    /// `--only`: the workloads whose name contains this.
    only: Option<String>,
    failed: usize,
    command: String,
    setup: String,
}

impl Report {
    fn new(o: &Opts, pin: &Pin) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = sh::output(Command::new("uname").arg("-r")).unwrap_or_default();
        Self {
            rows: Vec::new(),
            baselines: Vec::new(),
            only: o.only.clone(),
            failed: 0,
            command: format!(
                "cargo xtask bench --seconds {} --rate {} --connections {}{}",
                o.seconds,
                o.rate,
                o.connections,
                o.only
                    .as_ref()
                    .map(|w| format!(" --only {w:?}"))
                    .unwrap_or_default()
            ),
            setup: format!(
                "{} × {cpu}, Linux {}; {}; {} s per measurement, {} connections for throughput",
                pin.cores,
                kernel.trim(),
                pin.describe(),
                o.seconds,
                o.connections
            ),
        }
    }

    /// Measures `path` under `workload`, unless `--only` leaves it out.
    fn run(&mut self, workload: &str, path: &str, measure: impl FnOnce() -> Outcome) {
        if !self.wanted(workload) {
            return;
        }
        let r = measure().map_err(|e| {
            self.failed += 1;
            eprintln!("  ! {workload} / {path}: {e:#}");
            format!("{e:#}")
        });
        if let Ok(f) = &r {
            eprintln!("  = {path}: {}", fmt(f));
        }
        self.rows.push((workload.into(), path.into(), r));
    }

    fn wanted(&self, workload: &str) -> bool {
        self.only.as_deref().is_none_or(|o| workload.contains(o))
    }

    fn baseline(&mut self, workload: &str, path: &str) {
        self.baselines.push((workload.into(), path.into()));
    }

    fn get(&self, workload: &str, path: &str) -> Option<Figure> {
        self.rows
            .iter()
            .find(|(w, p, _)| w == workload && p == path)
            .and_then(|(_, _, r)| r.as_ref().ok().copied())
    }

    /// Markdown tables: one per workload, each path against direct and
    /// against mitmproxy.
    fn table(&self) -> String {
        let mut s = String::new();
        let mut seen: Vec<&str> = Vec::new();
        for (w, _, _) in &self.rows {
            if seen.contains(&w.as_str()) {
                continue;
            }
            seen.push(w);
            let _ = writeln!(s, "### {w}\n");
            let base = self
                .baselines
                .iter()
                .find(|(x, _)| x == w)
                .map_or("direct", |(_, p)| p.as_str());
            let _ = writeln!(s, "| path | figure | vs {base} | vs mitmproxy |");
            let _ = writeln!(s, "|---|---:|---:|---:|");
            let direct = self.get(w, base);
            let mitm = self.get(w, "mitmproxy");
            for (_, p, r) in self.rows.iter().filter(|(x, _, _)| x == w) {
                match r {
                    Ok(f) => {
                        let _ = writeln!(
                            s,
                            "| {p} | {} | {} | {} |",
                            fmt(f),
                            ratio(f, direct),
                            ratio(f, mitm)
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(s, "| {p} | failed: {} | | |", e.replace('|', "/"));
                    }
                }
            }
            s.push('\n');
        }
        s
    }

    fn markdown(&self) -> String {
        let date = sh::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .unwrap_or_default();
        let rev = sh::output(Command::new("git").args(["-C"]).arg(root_dir()).args([
            "rev-parse",
            "--short",
            "HEAD",
        ]))
        .unwrap_or_default();
        format!(
            "# Benchmarks\n\n\
             Generated by `{}` (as root) on {} at commit {}.\n\n\
             Setup: {}. Origin: `hoop-origin` (hyper, one tokio worker, TLS with its own CA), \
             `GET /hello` (small body) on 127.0.0.2. hoop: release build, `HOOP_LOG=warn`, \
             full TLS interception (leaf minted per host, upstream verified against the origin's CA). \
             mitmproxy: `mitmdump` ({MITMPROXY}) with `--ssl-insecure -q`, reverse mode for wrk/h2load, \
             regular mode for oha. A run with any error or non-2xx answer is reported as failed.\n\n\
             Ratios: \"vs direct\" is the path's figure over the direct path's (for latency, \
             direct's over the path's, so higher is better everywhere); \"vs mitmproxy\" likewise \
             against mitmproxy. Targets, measured from now on: hoop ≥ 50% of direct req/s and \
             ≥ 50× mitmproxy.\n\n{}",
            self.command,
            date.trim(),
            rev.trim(),
            self.setup,
            self.table()
        )
    }
}

fn fmt(f: &Figure) -> String {
    match f {
        Figure::Rate(r) => format!("{r:.0}"),
        // The rate achieved shows a path that could not keep up.
        Figure::Latency {
            p50_ms,
            p99_ms,
            rps,
        } => format!("{p50_ms:.2} / {p99_ms:.2} (at {rps:.0} req/s)"),
    }
}

/// `f` relative to `base`, higher is better (latency inverted), using p99
/// for latency: the tail is what a proxy hurts.
fn ratio(f: &Figure, base: Option<Figure>) -> String {
    let Some(b) = base else { return "–".into() };
    let x = match (f, b) {
        (Figure::Rate(a), Figure::Rate(b)) => a / b,
        (Figure::Latency { p99_ms: a, .. }, Figure::Latency { p99_ms: b, .. }) => b / a,
        _ => return "–".into(),
    };
    if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 1.5 {
        format!("{x:.1}×")
    } else {
        format!("{:.0}%", x * 100.0)
    }
}

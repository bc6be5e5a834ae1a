//! `cargo xtask bench`: hoop side by side with the direct path, a no-op
//! MITM peer (`hoop-noop-proxy`) and mitmproxy, in one run, on loopback only.
//!
//! Layout: the origin (`hoop-origin`, one tokio worker, TLS) and the load
//! tool share core 1; the proxy under test (hoop, the peer or mitmdump) gets
//! core 0 to itself. The direct path leaves core 0 idle, so "% of direct" is
//! what a proxy costs in latency and throughput when it has its own core.
//! Each proxy row also charges the proxy process's CPU time over the run to
//! the requests completed (proc_cpu), the measure that holds on any machine.
//!
//! Every figure is checked: a run with errors or non-2xx answers, or whose
//! CPU cannot be read, is reported as failed, never as a fast number.
use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bench_report::{Figure, PEER, Report, Sample},
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
    ebpf::prebuilt_or_build()?;
    step("building hoop, hoop-origin and hoop-noop-proxy (release)");
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

    let mut r = report(o, &pin);
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
    let hp = Some(hoop.pid());

    // mitmproxy in reverse mode stands where the origin is for tools that
    // cannot use a proxy (wrk, h2load); in regular mode for oha -x.
    // mitmproxy and the no-op peer in reverse mode stand where the origin
    // is for tools that cannot use a proxy (wrk, h2load); as explicit
    // proxies for oha -x. Both live on core 0 as hoop does.
    let peer_log = dir.join("noop-proxy.log");
    let peer_rev = Noop::start(&rel, &pin, &origin_ca, Some(&origin_addr), &peer_log)?;
    let mitm_rev = Mitm::start(&tools, &pin, &format!("reverse:https://{origin_addr}"))?;
    let (pp, mp) = (Some(peer_rev.p.0.id()), Some(mitm_rev.p.0.id()));
    let to = |addr: &str| {
        let u = format!("https://{addr}/hello");
        let url = url.clone();
        move |a: Vec<String>| -> Vec<String> {
            a.into_iter()
                .map(|s| if s == url { u.clone() } else { s })
                .collect()
        }
    };
    let (via_peer, via_mitm) = (to(&peer_rev.addr), to(&mitm_rev.addr));

    let w = "HTTP/1.1 keep-alive, req/s (wrk)";
    r.run(w, "direct", None, || Wrk.run(&pin, None, &wrk_args(&[])));
    r.run(w, "hoop transparent", hp, || {
        Wrk.run(&pin, Some(&hoop), &wrk_args(&[]))
    });
    r.run(w, PEER, pp, || {
        Wrk.run(&pin, None, &via_peer(wrk_args(&[])))
    });
    r.run(w, "mitmproxy", mp, || {
        Wrk.run(&pin, None, &via_mitm(wrk_args(&[])))
    });

    let w = "HTTP/2, req/s (h2load, 8 conns × 16 streams)";
    r.run(w, "direct", None, || H2load.run(&pin, None, &h2_args()));
    r.run(w, "hoop transparent", hp, || {
        H2load.run(&pin, Some(&hoop), &h2_args())
    });
    r.run(w, PEER, pp, || H2load.run(&pin, None, &via_peer(h2_args())));
    r.run(w, "mitmproxy", mp, || {
        H2load.run(&pin, None, &via_mitm(h2_args()))
    });

    let w = "new TLS connections/s (wrk, Connection: close)";
    let close = ["-H", "Connection: close"];
    r.run(w, "direct", None, || Wrk.run(&pin, None, &wrk_args(&close)));
    r.run(w, "hoop transparent", hp, || {
        Wrk.run(&pin, Some(&hoop), &wrk_args(&close))
    });
    r.run(w, PEER, pp, || {
        Wrk.run(&pin, None, &via_peer(wrk_args(&close)))
    });
    r.run(w, "mitmproxy", mp, || {
        Wrk.run(&pin, None, &via_mitm(wrk_args(&close)))
    });
    drop(mitm_rev);

    let peer_fwd = Noop::start(&rel, &pin, &origin_ca, None, &peer_log)?;
    let mitm_fwd = Mitm::start(&tools, &pin, "regular")?;
    let (pp, mp) = (Some(peer_fwd.p.0.id()), Some(mitm_fwd.p.0.id()));
    let peer_proxy = format!("http://{}", peer_fwd.addr);
    let mitm_proxy = format!("http://{}", mitm_fwd.addr);
    let w = "explicit proxy (CONNECT), HTTP/1.1 keep-alive, req/s (oha -x)";
    r.run(w, "direct", None, || {
        Oha::Rps.run(&pin, None, &oha_args(None, None))
    });
    r.run(w, "hoop explicit proxy", hp, || {
        Oha::Rps.run(&pin, None, &oha_args(Some(&explicit), None))
    });
    r.run(w, PEER, pp, || {
        Oha::Rps.run(&pin, None, &oha_args(Some(&peer_proxy), None))
    });
    r.run(w, "mitmproxy", mp, || {
        Oha::Rps.run(&pin, None, &oha_args(Some(&mitm_proxy), None))
    });

    let w = &format!("latency at {} req/s, p50 / p99 ms (oha -q)", o.rate);
    let q = Some(o.rate);
    r.run(w, "direct", None, || {
        Oha::Latency.run(&pin, None, &oha_args(None, q))
    });
    r.run(w, "hoop transparent", hp, || {
        Oha::Latency.run(&pin, Some(&hoop), &oha_args(None, q))
    });
    r.run(w, "hoop explicit proxy", hp, || {
        Oha::Latency.run(&pin, None, &oha_args(Some(&explicit), q))
    });
    r.run(w, PEER, pp, || {
        Oha::Latency.run(&pin, None, &oha_args(Some(&peer_proxy), q))
    });
    r.run(w, "mitmproxy", mp, || {
        Oha::Latency.run(&pin, None, &oha_args(Some(&mitm_proxy), q))
    });
    drop(mitm_fwd);
    drop(peer_fwd);

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
    // The peer in these tables too, so each carries its own reference.
    let pp = Some(peer_rev.p.0.id());
    r.run(w1, PEER, pp, || {
        Wrk.run(&pin, None, &via_peer(wrk_args(&[])))
    });
    r.run(w2, PEER, pp, || {
        H2load.run(&pin, None, &via_peer(h2_args()))
    });
    drop(peer_rev);
    for (label, audit) in variants {
        if !r.wanted(w1) && !r.wanted(w2) {
            break;
        }
        step(&format!("hoop with {label}"));
        let d = dir.join(label.split(',').next().unwrap_or(label).replace(' ', "-"));
        std::fs::create_dir_all(&d)?;
        let p = format!("{policy}\n[audit]\n{audit}\n");
        let h = Hoop::start(&rel.join("hoop"), &d, &origin_ca, &pin, &p)?;
        let hp = Some(h.pid());
        r.run(w1, label, hp, || Wrk.run(&pin, Some(&h), &wrk_args(&[])));
        r.run(w2, label, hp, || H2load.run(&pin, Some(&h), &h2_args()));
        h.stop()?;
    }
    r.baseline(w1, "audit off");
    r.baseline(w2, "audit off");
    let wf = "fleet: HTTP/1.1 keep-alive, req/s (wrk), hoop transparent";
    let wd = "fleet: records shipped per second, two hosts' backlog to one server";
    if r.wanted("fleet") || r.wanted(wf) || r.wanted(wd) {
        let hoop_bin = rel.join("hoop");
        let f = Fleet {
            bin: &hoop_bin,
            dir: &dir,
            origin_ca: &origin_ca,
            pin: &pin,
            policy: &policy,
        };
        let wl = &format!(
            "fleet: latency at {} req/s, p50 / p99 ms (oha -q), hoop transparent",
            o.rate
        );
        f.run(&mut r, [wf, wl, wd], &|| wrk_args(&[]), &|| {
            oha_args(None, Some(o.rate))
        })?;
    }
    drop(origin);
    let out = root_dir().join(&o.out);
    // Hand-written notes after the marker survive a new run.
    let notes = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| t.split_once(NOTES_MARKER).map(|(_, n)| n.to_string()))
        .unwrap_or_else(|| "\n".into());
    let md = format!("{}{NOTES_MARKER}{notes}", r.markdown(MITMPROXY));
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("\n{}", r.table());
    eprintln!("wrote {}", out.display());
    if r.failed > 0 {
        bail!("{} measurement(s) failed; see the report", r.failed);
    }
    Ok(())
}

/// The report, headed with the command that made it and the machine.
fn report(o: &Opts, pin: &Pin) -> Report {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = sh::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let command = format!(
        "cargo xtask bench --seconds {} --rate {} --connections {}{}{}",
        o.seconds,
        o.rate,
        o.connections,
        o.only
            .as_ref()
            .map(|w| format!(" --only {w:?}"))
            .unwrap_or_default(),
        if o.out == Path::new("BENCHMARKS.md") {
            String::new()
        } else {
            format!(" --out {}", o.out.display())
        }
    );
    let setup = format!(
        "{} × {cpu}, Linux {}; {}; {} s per measurement, {} connections for throughput",
        pin.cores,
        kernel.trim(),
        pin.describe(),
        o.seconds,
        o.connections
    );
    Report::new(command, setup, o.only.clone())
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
            "proxy (hoop, the no-op peer or mitmdump) on core 0; origin and load tool on core 1 \
             (taskset)"
                .into()
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
        Self::start_capturing(bin, dir, origin_ca, pin, policy, true)
    }

    /// `capture`: false for a second daemon beside one that captures (they
    /// would share the bench cgroup).
    fn start_capturing(
        bin: &Path,
        dir: &Path,
        origin_ca: &Path,
        pin: &Pin,
        policy: &str,
        capture: bool,
    ) -> Result<Self> {
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
                 [capture]\nenabled = {capture}\ncgroup = \"hoop-bench.slice\"\nbpf_pin_dir = \"/sys/fs/bpf/hoop-bench\"\n\
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

    /// The daemon's pid: taskset execs it, so the child is hoop itself.
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |p| p.0.id())
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(&self.config)
            .env_remove("HOOP_CONFIG");
        c
    }

    /// SIGTERM, then remove the bench cgroup's programs and pins. The
    /// audit line of `hoop status` goes to the log first: records per
    /// commit explain most of the audit's cost per request.
    fn stop(mut self) -> Result<()> {
        if let Ok(out) = self.cmd().arg("status").output() {
            let status = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = status.lines().find(|l| l.starts_with("audit")) {
                eprintln!("  {}", line.trim());
            }
        }
        if let Some(mut p) = self.child.take() {
            sh::run(Command::new("kill").arg(p.0.id().to_string()))?;
            p.0.wait()?;
        }
        self.detach()
    }

    fn detach(&self) -> Result<()> {
        sh::run(self.cmd().arg("detach").stdout(Stdio::null()))
    }

    fn fleet_status(&self) -> Result<serde_json::Value> {
        let out = self.cmd().args(["status", "--json"]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["fleet"].clone())
    }
}

/// Fleet mode's figures: the request path with shipping on and off (one
/// daemon each, the server beside them), and how fast two hosts' backlog
/// drains to one server.
struct Fleet<'a> {
    bin: &'a Path,
    dir: &'a Path,
    origin_ca: &'a Path,
    pin: &'a Pin,
    policy: &'a str,
}

impl Fleet<'_> {
    /// `[throughput, latency at a rate, drain]`.
    fn run(
        &self,
        r: &mut Report,
        [wf, wl, wd]: [&str; 3],
        wrk: &dyn Fn() -> Vec<String>,
        oha: &dyn Fn() -> Vec<String>,
    ) -> Result<()> {
        step("starting PostgreSQL (Debian's, loopback, TLS) on the load's core");
        sh::apt_install(&["postgresql"])?;
        let pg = hoop_testkit::postgres::Postgres::start(&self.dir.join("pg"))?;
        self.pin_server(&pg)?;
        let fleet = |id: &str| {
            format!(
                "[fleet]\npostgres = \"{}\"\nhost_id = \"{id}\"\nca_file = \"{}\"\n",
                pg.url(),
                pg.ca_file.display()
            )
        };
        let start = |id: &str, extra: &str, capture: bool| -> Result<Hoop> {
            let d = self.dir.join(format!("fleet-{id}"));
            std::fs::create_dir_all(&d)?;
            let p = format!("{}\n{extra}", self.policy);
            Hoop::start_capturing(self.bin, &d, self.origin_ca, self.pin, &p, capture)
        };
        for (label, id, extra) in [
            ("audit on, no fleet", "off", String::new()),
            ("audit on, shipping to PostgreSQL", "on", fleet("bench-on")),
        ] {
            if !r.wanted(wf) && !r.wanted(wl) {
                break;
            }
            step(&format!("hoop with {label}"));
            let h = start(id, &extra, true)?;
            r.run(wf, label, Some(h.pid()), || {
                Wrk.run(self.pin, Some(&h), &wrk())
            });
            // At one rate for both: CPU per request at equal load (in the
            // throughput run the server shares the load's core).
            r.run(wl, label, Some(h.pid()), || {
                Oha::Latency.run(self.pin, Some(&h), &oha())
            });
            if !extra.is_empty() {
                eprintln!("  fleet: {}", h.fleet_status()?);
            }
            h.stop()?;
        }
        r.baseline(wf, "audit on, no fleet");
        r.baseline(wl, "audit on, no fleet");
        if !r.wanted(wd) {
            return Ok(());
        }
        step("two hosts build a backlog with the server down");
        pg.stop()?;
        for id in ["bench-b", "bench-c"] {
            let h = start(id, &fleet(id), true)?;
            Wrk.run(self.pin, Some(&h), &wrk())?;
            h.stop()?;
        }
        pg.start_again()?;
        self.pin_server(&pg)?;
        r.run(wd, "two hosts -> PostgreSQL (loopback, TLS)", None, || {
            let t = Instant::now();
            let hosts = [
                start("bench-b", &fleet("bench-b"), true)?,
                start("bench-c", &fleet("bench-c"), false)?,
            ];
            let mut records = 0;
            for h in &hosts {
                loop {
                    let s = h.fleet_status()?;
                    if s["connected"] == true && s["lag_records"] == 0 {
                        records += s["shipped_seq"].as_u64().unwrap_or(0) + 1;
                        break;
                    }
                    if t.elapsed() > Duration::from_secs(600) {
                        bail!("not drained in 10 minutes: {s}");
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
            let secs = t.elapsed().as_secs_f64();
            let size = pg.psql(
                "SELECT pg_total_relation_size('hoop.batches') + pg_total_relation_size('hoop.batch_sessions')",
            )?;
            let bytes: f64 = size.trim().parse().unwrap_or(0.0);
            eprintln!(
                "  {records} records in {secs:.2} s; on the server {:.0} bytes per record ({bytes} bytes of batches and their index)",
                bytes / records.max(1) as f64
            );
            for h in hosts {
                h.stop()?;
            }
            Ok(Sample {
                figure: Figure::Rate(records as f64 / secs),
                requests: records,
            })
        });
        Ok(())
    }

    /// The server on the load's core, beside the origin: hoop keeps core 0.
    fn pin_server(&self, pg: &hoop_testkit::postgres::Postgres) -> Result<()> {
        if self.pin.cores < 2 {
            return Ok(());
        }
        let pid = std::fs::read_to_string(pg.dir.join("data/postmaster.pid"))?;
        let pid = pid.lines().next().unwrap_or_default().trim().to_string();
        sh::run(
            Command::new("taskset")
                .args(["-a", "-c", "-p", "1", &pid])
                .stdout(Stdio::null()),
        )
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
    p: Proc,
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
        Ok(Self { p, addr })
    }
}

/// The no-op MITM peer (`hoop-noop-proxy`), reverse to `reverse` or an
/// explicit proxy, pinned as hoop is; its errors go to `log`.
struct Noop {
    p: Proc,
    addr: String,
}

impl Noop {
    fn start(
        rel: &Path,
        pin: &Pin,
        origin_ca: &Path,
        reverse: Option<&str>,
        log: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new(rel.join("hoop-noop-proxy"));
        cmd.args(["--bind", "127.0.0.1:0", "--upstream-ca"])
            .arg(origin_ca);
        if let Some(r) = reverse {
            cmd.args(["--reverse", r]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let (p, addr) = Proc::spawn_listening(pin.proxy(cmd).stderr(log), "no-op peer")?;
        Ok(Self { p, addr })
    }
}

type Outcome = Result<Sample>;

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
        Ok(Sample {
            figure: Figure::Rate(rps.trim().parse()?),
            requests: wrk_requests(&out)?,
        })
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
        let requests = n(&reqs, " succeeded");
        if requests == u64::MAX {
            bail!("h2load printed no succeeded count: {reqs}");
        }
        Ok(Sample {
            figure: Figure::Rate(rps.trim().parse()?),
            requests,
        })
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
        let figure = match self {
            Oha::Rps => Figure::Rate(
                v["summary"]["requestsPerSec"]
                    .as_f64()
                    .context("oha requestsPerSec")?,
            ),
            Oha::Latency => {
                let p = &v["latencyPercentiles"];
                let ms = |k: &str| p[k].as_f64().map(|s| s * 1000.0).context("oha percentiles");
                Figure::Latency {
                    p50_ms: ms("p50")?,
                    p99_ms: ms("p99")?,
                    rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
                }
            }
        };
        Ok(Sample {
            figure,
            requests: ok,
        })
    }
}

/// The requests wrk completed: "  123456 requests in 10.00s, 14.07MB read".
fn wrk_requests(out: &str) -> Result<u64> {
    let line = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .context("wrk printed no request count")?;
    let n = line.split_whitespace().next().unwrap_or_default();
    n.parse()
        .with_context(|| format!("wrk's request count {n:?} in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_request_count_is_read_from_its_summary() {
        let out = "Running 3s test @ https://127.0.0.2:4443/hello\n  1 threads and 32 connections\n\
                   \x20 55812 requests in 3.00s, 6.87MB read\nRequests/sec:  18597.61\n";
        assert_eq!(wrk_requests(out).unwrap(), 55812);
        assert!(wrk_requests("Requests/sec: 1\n").is_err());
        assert!(wrk_requests("  many requests in 3.00s\n").is_err());
    }
}

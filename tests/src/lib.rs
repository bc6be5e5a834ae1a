//! Harness for hoop's privileged suites: a daemon per test with its own
//! config (ports, cgroup, bpffs pins, runtime dir), counting upstreams on
//! loopback, and jobs started through the real `hoop run`.
//!
//! These suites need root and a real kernel. They never skip: without root
//! they fail, loudly, with the reason.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod forge;

pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next().unwrap_or("").to_string())
        });
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "privileged suite: must run as root (real eBPF programs, real cgroups); run `cargo xtask test` as root"
    );
}

/// The workspace's `target/debug/hoop`, built by `cargo xtask test`.
/// hoop's kernel programs, each with its own link on the hoop root cgroup
/// (connect4/6, getpeername4/6, sendmsg4/6, bind4/6, sock_ops,
/// sock_create).
pub const PROGRAMS: usize = 10;

pub fn hoop_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOOP_BIN") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hoop");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p hoop-daemon` (cargo xtask test does)",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// A port free on both 127.0.0.1 and ::1 (the listener needs both), and
/// not handed out before in this process: each probe's listener is closed
/// before the next, so the kernel may offer the same port twice (a
/// daemon's proxy port once equalled its capture port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && TcpListener::bind(("::1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// The policy of most suites: every job of the test is `test:local`, and
/// may reach any (loopback) host.
pub const DEFAULT_POLICY: &str = "[[identity.static]]\ncgroup = \"{cgroup}/**\"\nname = \"test:local\"\n\n\
     [[connection]]\nname = \"loopback\"\nhosts = [\"*\"]\nallow = [\"*\"]\n";

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub config: PathBuf,
    pub port: u16,
    pub proxy_port: u16,
    pub cgroup: String,
    pub pin_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub probe: PathBuf,
    pub log: PathBuf,
    daemon: Option<Child>,
}

impl TestEnv {
    /// A fresh environment. `extra` is appended to the generated config.
    pub fn new(name: &str, probe_src: &str, extra: &str) -> Self {
        Self::with(name, probe_src, "", extra)
    }

    /// Like `new`, with `daemon_extra` added to the `[daemon]` table.
    pub fn with(name: &str, probe_src: &str, daemon_extra: &str, extra: &str) -> Self {
        Self::build(
            name,
            probe_src,
            daemon_extra,
            extra,
            "\"127.0.0.0/8\", \"::1/128\"",
        )
    }

    /// With the `egress.allow` list (TOML array items). Test daemons may
    /// only dial loopback.
    pub fn build(
        name: &str,
        probe_src: &str,
        daemon_extra: &str,
        extra: &str,
        egress: &str,
    ) -> Self {
        Self::custom(name, probe_src, daemon_extra, extra, egress, None)
    }

    /// Full control. `policy` replaces the default one: jobs of this test
    /// get the static identity `test:local`, and one connection lets any
    /// identity reach any host (egress still limits it to loopback).
    /// `{cgroup}` in it stands for the test's root cgroup.
    pub fn custom(
        name: &str,
        probe_src: &str,
        daemon_extra: &str,
        extra: &str,
        egress: &str,
        policy: Option<&str>,
    ) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix(&format!("hoop-{name}-"))
            .tempdir()
            .unwrap();
        // Jobs run as nobody must reach the probe binary.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let probe = dir.path().join("hoop-probe");
        std::fs::copy(probe_src, &probe).unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tag = format!("{name}-{}", std::process::id());
        let port = free_port();
        let proxy_port = free_port();
        let cgroup = format!("hoop-test-{tag}");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/hoop-test-{tag}"));
        let runtime_dir = dir.path().join("run");
        let config = dir.path().join("hoop.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nstate_dir = \"{state}\"\nruntime_dir = \"{run}\"\n{daemon_extra}\n\n\
                 [capture]\ncgroup = \"{cgroup}\"\nbpf_pin_dir = \"{pins}\"\nlisten_port = {port}\n\
                 dns_resolvers = [\"127.0.0.54\"]\n\n[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\n\
                 [egress]\nallow = [{egress}]\n{extra}\n{policy}\n",
                state = dir.path().join("state").display(),
                run = runtime_dir.display(),
                pins = pin_dir.display(),
                policy = policy.unwrap_or(DEFAULT_POLICY).replace("{cgroup}", &cgroup),
            ),
        )
        .unwrap();
        let log = dir.path().join("daemon.log");
        Self {
            dir,
            name: name.into(),
            config,
            port,
            proxy_port,
            cgroup,
            pin_dir,
            runtime_dir,
            probe,
            log,
            daemon: None,
        }
    }

    pub fn hoop(&self) -> Command {
        let mut c = Command::new(hoop_bin());
        c.arg("--config")
            .arg(&self.config)
            .env_remove("HOOP_CONFIG");
        c
    }

    /// Starts the daemon and waits until `hoop status` answers.
    pub fn start_daemon(&mut self) -> Duration {
        self.start_daemon_env(&[])
    }

    /// Like `start_daemon`, with extra environment for the daemon.
    pub fn start_daemon_env(&mut self, env: &[(&str, &str)]) -> Duration {
        self.start_daemon_via(&[], env)
    }

    /// Like `start_daemon_env`, run through `wrapper` (e.g. `setpriv …`),
    /// which execs the rest of its arguments.
    pub fn start_daemon_via(&mut self, wrapper: &[&str], env: &[(&str, &str)]) -> Duration {
        self.start_as(wrapper, env, &["daemon"])
    }

    /// Starts `hoop SUBCOMMAND…` as this environment's daemon (`daemon`,
    /// or `console --fleet`) and waits until `hoop status` answers.
    pub fn start_as(&mut self, wrapper: &[&str], env: &[(&str, &str)], sub: &[&str]) -> Duration {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match wrapper.split_first() {
            None => self.hoop(),
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args)
                    .arg(hoop_bin())
                    .arg("--config")
                    .arg(&self.config)
                    .env_remove("HOOP_CONFIG");
                c
            }
        };
        let child = cmd
            .args(sub)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.hoop().arg("status").output().unwrap().status.success() {
                return t.elapsed();
            }
            if let Some(s) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({s}):\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon not ready within 10 s:\n{}", self.log());
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// The hoop CA a job must trust.
    pub fn hoop_ca(&self) -> PathBuf {
        self.dir.path().join("state/ca.pem")
    }

    /// Stops the daemon as systemd would (SIGTERM) and waits for it.
    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let s = c.wait().unwrap();
            assert!(s.success(), "daemon stopped with {s}:\n{}", self.log());
        }
    }

    /// hoop's CA, copied where a job as nobody can read it.
    pub fn job_ca(&self) -> String {
        let ca = self.dir.path().join("job-ca.pem");
        if !ca.exists() {
            std::fs::copy(self.hoop_ca(), &ca).unwrap();
        }
        ca.display().to_string()
    }

    /// The curl a job as nobody runs: errors only, the response head and
    /// body on stdout, trusting hoop's CA (`job_ca`), and last a line with
    /// the status; then `extra` (the URL among them).
    pub fn job_curl_args(&self, extra: &[&str]) -> Vec<String> {
        let ca = self.job_ca();
        let mut a: Vec<String> = [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-D",
            "-",
            "--cacert",
            &ca,
            "-w",
            "\n%{http_code}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// [`Self::job_curl_args`] run as nobody in a job: the status, and
    /// what curl printed on stdout then stderr.
    pub fn curl_as_nobody(&self, extra: &[&str]) -> (u16, String) {
        self.curl_in_job(&["--user", "nobody"], extra)
    }

    /// [`Self::job_curl_args`] in a job started with `hoop run RUN_FLAGS
    /// --`: the status, and what curl printed on stdout then stderr (and
    /// `hoop run`'s own complaint, when it started no job).
    pub fn curl_in_job(&self, run_flags: &[&str], extra: &[&str]) -> (u16, String) {
        let out = self
            .hoop()
            .arg("run")
            .args(run_flags)
            .arg("--")
            .args(self.job_curl_args(extra))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        (code, text + &String::from_utf8_lossy(&out.stderr))
    }

    /// curl in a job to `url` (with `--resolve`), trusting the hoop CA: the
    /// status and what curl printed (headers, the body, and last a line
    /// "STATUS HTTP-VERSION").
    pub fn curl_job(&self, resolve: &str, url: &str, extra: &[&str]) -> (u16, String) {
        let ca = self.hoop_ca();
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-D",
            "-",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            resolve,
            "-w",
            "\n%{http_code} %{http_version}",
        ];
        args.extend_from_slice(extra);
        args.push(url);
        let out = self.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    /// [`Self::curl_job`] to the partner API with `method`.
    pub fn curl_partner(
        &self,
        p: &Partner,
        method: &str,
        path: &str,
        extra: &[&str],
    ) -> (u16, String) {
        let mut args = vec!["-X", method];
        args.extend_from_slice(extra);
        self.curl_job(&p.resolve(), &p.url(path), &args)
    }

    /// A job of `curl --parallel` (8 at a time) to the partner's
    /// `/hello?n=[RANGE]`, in the background; its output is dropped.
    pub fn parallel_load(&self, p: &Partner, range: &str) -> Child {
        let ca = self.hoop_ca();
        self.hoop()
            .args([
                "run",
                "--",
                "curl",
                "-s",
                "--parallel",
                "--parallel-max",
                "8",
            ])
            .arg("--cacert")
            .arg(&ca)
            .args(["--resolve", &p.resolve()])
            .arg(p.url(&format!("/hello?n=[{range}]")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// `hoop ARGS…`, which must succeed (its stderr is the failure message).
    pub fn hoop_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let out = self.hoop().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "hoop {:?} failed: {}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn status(&self) -> Value {
        serde_json::from_slice(&self.hoop_ok(&["status", "--json"]).stdout).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a daemon log line containing every needle.
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let t = Instant::now();
        loop {
            if let Some(l) = self
                .log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(l.to_string());
            }
            if t.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `hoop run -- cmd…`, as root.
    pub fn run(&self, cmd: &[&str]) -> Output {
        self.hoop().arg("run").arg("--").args(cmd).output().unwrap()
    }

    /// `hoop run --user nobody -- cmd`: the job runs as nobody, as the
    /// threat model's untrusted job does.
    pub fn run_as_nobody(&self, cmd: &[&str]) -> Output {
        self.hoop()
            .args(["run", "--user", "nobody", "--"])
            .args(cmd)
            .output()
            .unwrap()
    }

    /// `hoop approvals list --json`: pending first, then recent decisions.
    pub fn approvals(&self) -> Vec<Value> {
        serde_json::from_slice(&self.hoop_ok(&["approvals", "list", "--json"]).stdout).unwrap()
    }

    /// The id of the first pending approval once more than `known` are
    /// pending (within 20 s).
    pub fn wait_pending(&self, known: usize) -> String {
        let t = Instant::now();
        loop {
            let pending: Vec<Value> = self
                .approvals()
                .into_iter()
                .filter(|r| r["status"] == "pending")
                .collect();
            if pending.len() > known {
                return pending[0]["id"].as_str().unwrap().to_string();
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no request was held");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the probe in a job; returns (succeeded, its output line).
    pub fn probe(&self, nobody: bool, args: &[&str]) -> (bool, String) {
        let probe = self.probe.to_str().unwrap();
        let mut cmd = vec![probe];
        cmd.extend_from_slice(args);
        let out = if nobody {
            self.run_as_nobody(&cmd)
        } else {
            self.run(&cmd)
        };
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            line.starts_with("pid=") || args[0] == "loop",
            "probe {args:?} produced no result line (hoop run failed?): stdout={line:?} stderr={err}"
        );
        (out.status.success(), line)
    }

    /// Runs a shell snippet as root in a job; returns (succeeded, last line).
    pub fn probe_shell(&self, script: &str) -> (bool, String) {
        let out = self.run(&["sh", "-c", script]);
        let text = String::from_utf8_lossy(&out.stdout);
        (
            out.status.success(),
            text.lines().last().unwrap_or("").to_string(),
        )
    }

    pub fn cgroup_mount() -> PathBuf {
        let m = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let all: Vec<&str> = m
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1])
            })
            .collect();
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .find(|p| all.contains(p))
            .or(all.first())
            .map(PathBuf::from)
            .expect("no cgroup2 mount")
    }

    pub fn root_cgroup(&self) -> PathBuf {
        Self::cgroup_mount().join(&self.cgroup)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill_daemon();
        // Leave nothing attached: the test's cgroup and pins go away.
        let out = self.hoop().arg("detach").output();
        if let Ok(o) = &out
            && !o.status.success()
        {
            eprintln!("hoop detach failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let root = self.root_cgroup();
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&root);
        if std::thread::panicking() {
            eprintln!("---- daemon log ({}) ----\n{}", self.name, self.log());
        }
    }
}

/// A "partner API": the testkit origin over HTTPS on 127.0.0.3, under a
/// real-looking name, with a CA file for the connection that trusts it.
pub struct Partner {
    pub origin: hoop_testkit::Origin,
    pub host: String,
    pub ca_file: PathBuf,
}

impl Partner {
    pub fn start(dir: &Path, host: &str) -> Self {
        let ca = hoop_testkit::TestCa::default();
        let ca_file = dir.join(format!("{host}-ca.pem"));
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        let origin = hoop_testkit::Origin::start_background(hoop_testkit::OriginOpts {
            tls: Some(ca.server_config(&[host], &[b"h2", b"http/1.1"])),
            bind: Some("127.0.0.3:0".parse().unwrap()),
            also_v6: false,
        });
        Self {
            origin,
            host: host.into(),
            ca_file,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.host, self.origin.addr.port())
    }

    /// curl's `--resolve` for the name.
    pub fn resolve(&self) -> String {
        format!("{}:{}:127.0.0.3", self.host, self.origin.addr.port())
    }
    /// The policy most suites start from: every job of the test is
    /// `test:local`, and connection "partner" reaches this host, trusting
    /// its CA; `rules` (deny, mask, approve tables) are appended to it.
    pub fn policy(&self, rules: &str) -> String {
        format!(
            "[[identity.static]]\ncgroup = \"{{cgroup}}/**\"\nname = \"test:local\"\n\n\
             [[connection]]\nname = \"partner\"\nhosts = [\"{}\"]\nallow = [\"test:*\"]\n\
             upstream_ca_files = [\"{}\"]\n\n{rules}",
            self.host,
            self.ca_file.display()
        )
    }
}

/// An HTTP upstream on loopback that counts every TCP connection it accepts.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Upstream {
    pub fn start(bind: &str) -> Self {
        let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (h, p) = (hits.clone(), peers.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                if let Ok(peer) = s.peer_addr() {
                    p.lock().unwrap().push(peer);
                }
                thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let body = format!("upstream {addr} hit {n}\n");
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Self { addr, hits, peers }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A UDP socket on loopback counting the datagrams that reach it.
pub struct UdpCounter {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl UdpCounter {
    pub fn start(bind: &str) -> Self {
        let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind udp {bind}: {e}"));
        let addr = s.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while s.recv_from(&mut buf).is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Checks a HAR file against the HAR 1.2 schema (npm har-validator, pinned
/// by tests/har-validator's lockfile); panics with its complaints.
pub fn validate_har(file: &Path) {
    let validator = Path::new(env!("CARGO_MANIFEST_DIR")).join("har-validator/validate.js");
    let out = Command::new("node")
        .arg(&validator)
        .arg(file)
        .output()
        .expect("node is installed");
    assert!(
        out.status.success(),
        "HAR 1.2 schema: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback webhook receiver: records each POST body, answers 200.
pub fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            use std::io::{BufRead, Read, Write};
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            g.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (url, got)
}

/// Writes `text` to `dir/name` with `mode`; its path.
pub fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

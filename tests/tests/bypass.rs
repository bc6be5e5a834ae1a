//! The bypass matrix: every escape route a hostile job might try. Each one
//! must fail, and the upstream counters prove nothing arrived around the
//! daemon. Positive controls show the counters do count.
use std::{process::Command, time::Duration};

use hoop_tests::{TestEnv, UdpCounter, Upstream, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

fn probe_pid(line: &str) -> &str {
    line.split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("pid=")
}

const EPERM: &str = "Operation not permitted (os error 1)";
const EACCES: &str = "Permission denied (os error 13)";
/// The daemon closes a connection to its own listener: the job reads a
/// reset or an empty answer, whichever the timing gives.
const CLOSED: &str = "Connection reset by peer (os error 104)|empty response";

/// How the same attempt ends outside hoop, run by the same user: the
/// positive control that shows the refusal is hoop's, not the kernel's.
enum Control {
    /// No control: the attempt sends traffic, which the counters check.
    Traffic,
    /// Outside hoop the attempt succeeds.
    Succeeds,
    /// Outside hoop the kernel refuses it otherwise (a family it lacks):
    /// the job's different errno shows hoop refused first.
    Fails(&'static str),
}

struct Route {
    name: &'static str,
    nobody: bool,
    args: Vec<String>,
    /// The error the job must get, exactly.
    want: &'static str,
    control: Control,
}

fn route(
    name: &'static str,
    nobody: bool,
    args: &[&str],
    want: &'static str,
    control: Control,
) -> Route {
    Route {
        name,
        nobody,
        args: args.iter().map(|a| a.to_string()).collect(),
        want,
        control,
    }
}

/// The attempt outside hoop, as root or as nobody.
fn outside(env: &TestEnv, nobody: bool, args: &[String]) -> (bool, String) {
    let probe = env.probe.to_str().unwrap();
    let out = if nobody {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                probe,
            ])
            .args(args)
            .output()
    } else {
        Command::new(probe).args(args).output()
    }
    .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success(), line)
}

/// A host address that isn't loopback, to bind (never to send to).
fn external_ipv4() -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .expect("this host has no global IPv4 address to try binding")
}

#[test]
fn every_escape_route_fails_with_its_own_refusal_and_nothing_reaches_the_upstream() {
    let mut env = TestEnv::new("bypass", PROBE, "");
    env.start_daemon();
    let tcp = Upstream::start("127.0.0.2:0");
    let udp443 = UdpCounter::start("127.0.0.2:443");
    let udp443_v6 = UdpCounter::start("[::1]:443");
    let dns_wrong = UdpCounter::start("127.0.0.2:53");
    let resolver = UdpCounter::start("127.0.0.54:53");
    let listener = format!("127.0.0.1:{}", env.port);
    let listener6 = format!("[::1]:{}", env.port);
    let cgroup_root_procs = TestEnv::cgroup_mount().join("cgroup.procs");
    let parent_procs = env.root_cgroup().join("cgroup.procs");
    let (u443, u443v6, dns) = (
        udp443.addr.to_string(),
        udp443_v6.addr.to_string(),
        dns_wrong.addr.to_string(),
    );
    // A process of the job's uid outside its cgroup, to reach into.
    let mut neighbour = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sleep",
            "60",
        ])
        .spawn()
        .unwrap();
    let pid = neighbour.id().to_string();
    let port = hoop_tests::free_port().to_string();
    let wild4 = format!("0.0.0.0:{port}");
    let wild6 = format!("[::]:{port}");
    let external = format!("{}:{port}", external_ipv4());
    use Control::*;
    let routes = vec![
        route("UDP to 443 (QUIC)", true, &["udp", &u443], EPERM, Traffic),
        route(
            "connected UDP to 443",
            true,
            &["udp-connect", &u443],
            "connect: Operation not permitted (os error 1)",
            Traffic,
        ),
        route(
            "UDP to 443 over IPv6",
            true,
            &["udp", &u443v6],
            EPERM,
            Traffic,
        ),
        route(
            "UDP to 443 via a v4-mapped address",
            true,
            &["udp", "[::ffff:127.0.0.2]:443"],
            EPERM,
            Traffic,
        ),
        route(
            "DNS to a non-resolver",
            true,
            &["udp", &dns],
            EPERM,
            Traffic,
        ),
        route(
            "connected DNS to a non-resolver",
            true,
            &["udp-connect", &dns],
            "connect: Operation not permitted (os error 1)",
            Traffic,
        ),
        route(
            "raw socket as root in the job",
            false,
            &["raw"],
            EPERM,
            Succeeds,
        ),
        route(
            "raw IPv6 socket as root in the job",
            false,
            &["raw6"],
            EPERM,
            Succeeds,
        ),
        route(
            "packet socket as root in the job",
            false,
            &["packet"],
            EPERM,
            Succeeds,
        ),
        route("MPTCP socket", true, &["mptcp"], EPERM, Succeeds),
        route(
            "vsock socket (reaches the hypervisor)",
            true,
            &["family", "40", "1"],
            EPERM,
            Succeeds,
        ),
        route(
            "Bluetooth socket",
            true,
            &["family", "31", "3"],
            EPERM,
            Fails("Address family not supported by protocol (os error 97)"),
        ),
        route(
            "AF_ALG socket",
            true,
            &["family", "38", "5"],
            EPERM,
            Fails("Address family not supported by protocol (os error 97)"),
        ),
        route(
            "AF_KEY socket as root in the job",
            false,
            &["family", "15", "3"],
            EPERM,
            Fails("Address family not supported by protocol (os error 97)"),
        ),
        route("io_uring ring", true, &["io_uring"], EPERM, Succeeds),
        route(
            "ptrace a process of the same uid outside the job",
            true,
            &["ptrace", &pid],
            EPERM,
            Succeeds,
        ),
        route(
            "pidfd_getfd from a process of the same uid",
            true,
            &["pidfd-getfd", &pid],
            EPERM,
            Succeeds,
        ),
        route(
            "a user and network namespace of its own",
            true,
            &["userns"],
            EPERM,
            Succeeds,
        ),
        route(
            "listen on the IPv4 wildcard",
            true,
            &["listen", &wild4],
            EPERM,
            Succeeds,
        ),
        route(
            "listen on the IPv6 wildcard",
            true,
            &["listen", &wild6],
            EPERM,
            Succeeds,
        ),
        route(
            "listen on the host's external address",
            true,
            &["listen", &external],
            EPERM,
            Succeeds,
        ),
        route(
            "direct connect to the daemon's listener",
            true,
            &["tcp", &listener],
            CLOSED,
            Traffic,
        ),
        route(
            "direct connect to the daemon's IPv6 listener",
            true,
            &["tcp", &listener6],
            CLOSED,
            Traffic,
        ),
        route(
            "move itself to the cgroup2 root",
            true,
            &["escape", cgroup_root_procs.to_str().unwrap()],
            EACCES,
            Traffic,
        ),
        route(
            "move itself to the hoop root cgroup",
            true,
            &["escape", parent_procs.to_str().unwrap()],
            EACCES,
            Traffic,
        ),
    ];
    let mut failures = Vec::new();
    for r in &routes {
        let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
        let (ok, line) = env.probe(r.nobody, &args);
        if ok {
            failures.push(format!("{}: SUCCEEDED: {line}", r.name));
            continue;
        }
        // `err <detail>`: the detail must be the refusal, not any failure.
        let detail = line.split_once(" err ").map(|(_, d)| d).unwrap_or("");
        let refused_so = r
            .want
            .split('|')
            .any(|w| detail.starts_with(w) || detail.ends_with(w));
        if !refused_so {
            failures.push(format!(
                "{}: refused otherwise than {:?}: {line}",
                r.name, r.want
            ));
        }
        match &r.control {
            Traffic => {}
            Succeeds => {
                let (ok, out) = outside(&env, r.nobody, &r.args);
                if !ok {
                    failures.push(format!(
                        "{}: the control failed outside hoop too: {out}",
                        r.name
                    ));
                }
            }
            Fails(why) => {
                let (ok, out) = outside(&env, r.nobody, &r.args);
                if ok || !out.contains(why) {
                    failures.push(format!(
                        "{}: control expected {why:?} outside hoop: {out}",
                        r.name
                    ));
                }
            }
        }
        if args[0] == "escape" {
            assert!(
                line.contains(&format!("/{}/job-", env.cgroup)),
                "{}: job left its cgroup: {line}",
                r.name
            );
        }
        eprintln!("refused as expected: {}: {line}", r.name);
    }
    let _ = neighbour.kill();
    let _ = neighbour.wait();
    assert!(
        failures.is_empty(),
        "escape routes not refused as they must be:\n{}",
        failures.join("\n")
    );
    // Give stray datagrams time to land before counting.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tcp.hits(), 0, "TCP reached the upstream");
    assert_eq!(udp443.hits(), 0, "UDP reached 127.0.0.2:443");
    assert_eq!(udp443_v6.hits(), 0, "UDP reached [::1]:443");
    assert_eq!(dns_wrong.hits(), 0, "UDP reached a non-resolver");

    // The refusals were reported by the kernel and logged with pid and cgroup.
    let line = env
        .wait_log(
            &[
                "kernel refused",
                "udp-not-dns",
                &format!("dst={}", udp443.addr),
            ],
            Duration::from_secs(10),
        )
        .expect("no refusal event logged for UDP 443");
    assert!(line.contains("pid=") && line.contains("cgroup="), "{line}");
    for reason in ["socket-type", "bind-not-loopback"] {
        assert!(
            env.wait_log(&["kernel refused", reason], Duration::from_secs(2))
                .is_some(),
            "no {reason} refusal logged"
        );
    }
    assert!(
        env.log().contains("is the daemon's own listener"),
        "{}",
        env.log()
    );

    // Positive controls: the counters count, and DNS to the resolver works.
    let (ok, line) = env.probe(true, &["udp", &resolver.addr.to_string()]);
    assert!(ok, "DNS to the configured resolver was refused: {line}");
    assert!(
        eventually(Duration::from_secs(10), || resolver.hits() == 1),
        "resolver counter did not count"
    );
}

/// A job may listen on loopback (dev servers, DevTools), and a socket the
/// kernel binds itself at listen() is tied to the loopback device, so no
/// other host reaches it. Outside hoop the same socket is tied to nothing.
#[test]
fn a_job_listens_on_loopback_only() {
    let mut env = TestEnv::new("listen", PROBE, "");
    env.start_daemon();
    for addr in ["127.0.0.1:0", "[::1]:0", "127.0.0.9:0"] {
        let (ok, line) = env.probe(true, &["listen", addr]);
        assert!(ok, "{addr}: {line}");
        assert!(line.contains("device=lo"), "{addr}: {line}");
    }
    let (ok, line) = env.probe(true, &["listen-auto"]);
    assert!(ok, "{line}");
    assert!(line.contains("listening on 0.0.0.0:"), "{line}");
    assert!(line.ends_with("device=lo"), "not tied to loopback: {line}");
    let (ok, line) = outside(&env, true, &["listen-auto".to_string()]);
    assert!(ok && line.ends_with("device="), "control: {line}");
}

/// Ping sockets are refused by ping_group_range before the socket hook
/// runs; in a network namespace the test makes (where ping is allowed),
/// a job as root reaches the hook and gets EPERM, where the same probe
/// outside hoop gets its socket.
#[test]
fn an_icmp_socket_is_refused_by_the_hook() {
    let mut env = TestEnv::new("icmp", PROBE, "");
    env.start_daemon();
    let ns = format!("hoop-icmp-{}", std::process::id());
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["netns", "add", &ns]);
    let _cleanup = Cleanup(ns.clone());
    ip(&[
        "netns",
        "exec",
        &ns,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ping_group_range=0 65535",
    ]);
    let probe = env.probe.to_str().unwrap();
    let control = Command::new("ip")
        .args(["netns", "exec", &ns, probe, "icmp"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&control.stdout);
    assert!(control.status.success(), "control: {text}");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(hoop_tests::hoop_bin())
        .arg("--config")
        .arg(&env.config)
        .args(["run", "--", probe, "icmp"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "ICMP socket in the job: {text}");
    assert!(text.contains(&format!("err {EPERM}")), "{text}");
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn children_threads_and_fast_open_are_captured_too() {
    let mut env = TestEnv::new("inherit", PROBE, "");
    env.start_daemon();
    let up = Upstream::start("127.0.0.2:0");
    let target = up.addr.to_string();
    for kind in ["thread", "child", "tfo"] {
        let before = up.hits();
        let (ok, line) = env.probe(true, &[kind, &target]);
        assert!(ok, "{kind}: {line}");
        // The connect's pid: the child's own for `child`, else the probe's.
        let pid = match kind {
            "child" => line
                .split("child: pid=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
            _ => probe_pid(&line).to_string(),
        };
        let logged = env.wait_log(
            &[
                "connection",
                &format!("orig_dst={target} "),
                &format!("pid={pid} "),
            ],
            Duration::from_secs(10),
        );
        assert!(
            logged.is_some(),
            "{kind}: the connect did not go through the daemon:\n{}",
            env.log()
        );
        assert_eq!(up.hits(), before + 1, "{kind}: upstream count");
    }
}

#[test]
fn a_job_cannot_use_a_socket_without_the_daemon_even_via_loopback_services() {
    // Connecting to any local TCP service is a capture too: the daemon sees it.
    let mut env = TestEnv::new("loopback", PROBE, "");
    env.start_daemon();
    let local = Upstream::start("127.0.0.1:0");
    let (ok, line) = env.probe(true, &["tcp", &local.addr.to_string()]);
    assert!(ok, "{line}");
    assert!(
        env.wait_log(
            &["connection", &format!("orig_dst={} ", local.addr)],
            Duration::from_secs(2)
        )
        .is_some(),
        "loopback connect was not captured"
    );
}

/// With `HOOP_LOG` at debug for `hoop::capture`, the kernel programs log
/// each refusal themselves (aya-log): which program, why, the cgroup and
/// the destination. By default the same refusal leaves no kernel line (the
/// programs were loaded with their log off), only the daemon's warning,
/// which is the positive control that the refusal happened both times.
#[test]
fn the_kernel_logs_its_decision_only_under_debug() {
    for debug in [false, true] {
        let name = if debug { "klog-debug" } else { "klog" };
        let mut env = TestEnv::new(name, PROBE, "");
        let log_env: &[(&str, &str)] = if debug {
            &[("HOOP_LOG", "info,hoop::capture=debug")]
        } else {
            &[]
        };
        env.start_daemon_env(log_env);
        let target = UdpCounter::start("127.0.0.2:0");
        let (ok, line) = env.probe(true, &["udp-connect", &target.addr.to_string()]);
        assert!(!ok && line.contains(EPERM), "{name}: {line}");
        let warned = env
            .wait_log(
                &[
                    "kernel refused",
                    "udp-not-dns",
                    &format!("dst={}", target.addr),
                ],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("{name}: no refusal warning:\n{}", env.log()));
        let cgroup = warned
            .split_whitespace()
            .find_map(|f| f.strip_prefix("cgroup="))
            .expect("the warning names the cgroup")
            .to_string();
        let kernel = [
            "connect4 refused (udp-not-dns)".to_string(),
            format!("cgroup {cgroup} "),
            format!("dst [::ffff:{}]:{}", target.addr.ip(), target.addr.port()),
        ];
        let needles: Vec<&str> = kernel.iter().map(String::as_str).collect();
        let found = env.wait_log(&needles, Duration::from_secs(if debug { 2 } else { 1 }));
        if debug {
            let found = found.unwrap_or_else(|| panic!("no kernel-side line:\n{}", env.log()));
            eprintln!("kernel: {found}");
        } else {
            assert_eq!(found, None, "the kernel logged without debug");
            assert!(!env.log().contains("connect4 refused"), "{}", env.log());
        }
        assert_eq!(target.hits(), 0, "{name}: UDP reached the target");
    }
}

//! The bypass matrix: every escape route a hostile job might try. Each one
//! must fail, and the upstream counters prove nothing arrived around the
//! daemon. Positive controls show the counters do count.
use std::time::Duration;

use hoop_tests::{TestEnv, UdpCounter, Upstream, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

fn probe_pid(line: &str) -> &str {
    line.split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("pid=")
}

#[test]
fn every_escape_route_fails_and_nothing_reaches_the_upstream() {
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
    let mapped443 = "[::ffff:127.0.0.2]:443".to_string();

    // (name, run as nobody, probe args)
    let routes: Vec<(&str, bool, Vec<String>)> = vec![
        (
            "UDP to 443 (QUIC)",
            true,
            vec!["udp".into(), udp443.addr.to_string()],
        ),
        (
            "connected UDP to 443",
            true,
            vec!["udp-connect".into(), udp443.addr.to_string()],
        ),
        (
            "UDP to 443 over IPv6",
            true,
            vec!["udp".into(), udp443_v6.addr.to_string()],
        ),
        (
            "UDP to 443 via a v4-mapped address",
            true,
            vec!["udp".into(), mapped443],
        ),
        (
            "DNS to a non-resolver",
            true,
            vec!["udp".into(), dns_wrong.addr.to_string()],
        ),
        (
            "connected DNS to a non-resolver",
            true,
            vec!["udp-connect".into(), dns_wrong.addr.to_string()],
        ),
        ("raw socket", true, vec!["raw".into()]),
        ("raw socket as root in the job", false, vec!["raw".into()]),
        (
            "raw IPv6 socket as root in the job",
            false,
            vec!["raw6".into()],
        ),
        ("packet socket", true, vec!["packet".into()]),
        ("ICMP datagram (ping) socket", true, vec!["icmp".into()]),
        ("ICMP datagram socket as root", false, vec!["icmp".into()]),
        ("SCTP socket", true, vec!["sctp".into()]),
        ("MPTCP socket", true, vec!["mptcp".into()]),
        (
            "direct connect to the daemon's listener",
            true,
            vec!["tcp".into(), listener],
        ),
        (
            "direct connect to the daemon's IPv6 listener",
            true,
            vec!["tcp".into(), listener6],
        ),
        (
            "move itself to the cgroup2 root",
            true,
            vec!["escape".into(), cgroup_root_procs.display().to_string()],
        ),
        (
            "move itself to the hoop root cgroup",
            true,
            vec!["escape".into(), parent_procs.display().to_string()],
        ),
    ];
    let mut failures = Vec::new();
    for (name, nobody, args) in &routes {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, line) = env.probe(*nobody, &args);
        if ok {
            failures.push(format!("{name}: SUCCEEDED: {line}"));
        } else {
            eprintln!("blocked as expected: {name}: {line}");
        }
        if args[0] == "escape" {
            assert!(
                line.contains(&format!("/{}/job-", env.cgroup)),
                "{name}: job left its cgroup: {line}"
            );
        }
    }
    // Ping sockets are refused by ping_group_range before our hook runs;
    // allow them in a network namespace of the job's own to reach the hook.
    let (ok, line) = env.probe_shell(&format!(
        "unshare -n sh -c 'sysctl -q -w net.ipv4.ping_group_range=\"0 65535\" && exec {} icmp'",
        env.probe.display()
    ));
    if ok {
        failures.push(format!(
            "ICMP socket with ping allowed in the job's own netns: SUCCEEDED: {line}"
        ));
    }
    assert!(
        line.contains("Operation not permitted"),
        "not refused by the hook: {line}"
    );
    assert!(
        failures.is_empty(),
        "escape routes that worked:\n{}",
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
            Duration::from_secs(2),
        )
        .expect("no refusal event logged for UDP 443");
    assert!(line.contains("pid=") && line.contains("cgroup="), "{line}");
    assert!(
        env.wait_log(&["kernel refused", "socket-type"], Duration::from_secs(2))
            .is_some()
    );
    assert!(
        env.log().contains("is the daemon's own listener"),
        "{}",
        env.log()
    );

    // Positive controls: the counters count, and DNS to the resolver works.
    let (ok, line) = env.probe(true, &["udp", &resolver.addr.to_string()]);
    assert!(ok, "DNS to the configured resolver was refused: {line}");
    assert!(
        eventually(Duration::from_secs(2), || resolver.hits() == 1),
        "resolver counter did not count"
    );
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
            Duration::from_secs(2),
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

//! A job reaches loopback upstreams through the daemon over IPv4, IPv6 and
//! v4-mapped addresses, without any proxy settings; the daemon knows the true
//! destination, pid and cgroup, and the job sees the address it asked for.
use std::{process::Stdio, time::Duration};

use hoop_tests::{TestEnv, Upstream, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

/// Runs curl in a job; returns (curl's pid, its stdout).
fn curl(env: &TestEnv, url: &str) -> (u32, String) {
    let child = env
        .hoop()
        .args(["run", "--", "curl", "-sS", "--max-time", "5", "-g", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `hoop run` execs curl: same pid.
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn job_reaches_upstreams_and_the_daemon_knows_who_and_where() {
    let mut env = TestEnv::new("reach", PROBE, "");
    env.start_daemon();
    let v4 = Upstream::start("127.0.0.2:0");
    let v6 = Upstream::start("[::1]:0");

    let cases = [
        (format!("http://{}/", v4.addr), v4.addr.to_string(), &v4),
        (
            format!("http://[::1]:{}/", v6.addr.port()),
            v6.addr.to_string(),
            &v6,
        ),
        // A v6 socket talking to an IPv4 peer through a v4-mapped address.
        (
            format!("http://[::ffff:127.0.0.2]:{}/", v4.addr.port()),
            v4.addr.to_string(),
            &v4,
        ),
    ];
    for (i, (url, orig, up)) in cases.iter().enumerate() {
        let before = up.hits();
        let (pid, body) = curl(&env, url);
        assert!(
            body.starts_with(&format!("upstream {}", up.addr)),
            "{url}: unexpected body {body:?}"
        );
        assert_eq!(
            up.hits(),
            before + 1,
            "{url}: upstream saw {} new connections",
            up.hits() - before
        );

        let started = env
            .wait_log(
                &["job started", &format!("pid={pid} ")],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("case {i}: no job-started line for pid {pid}"));
        let cgroup_id = field(&started, "cgroup_id").unwrap();
        assert!(started.contains("identity=test:local"), "{started}");
        let conn = env
            .wait_log(
                &[
                    "connection",
                    &format!("orig_dst={orig} "),
                    &format!("pid={pid} "),
                ],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| {
                panic!(
                    "case {i}: daemon logged no connection to {orig} from pid {pid}:\n{}",
                    env.log()
                )
            });
        assert_eq!(field(&conn, "cgroup"), Some(cgroup_id), "{conn}");
        assert!(conn.contains("exe=\"/usr/bin/curl\""), "{conn}");
    }
}

#[test]
fn getpeername_in_the_job_returns_the_original_destination() {
    let mut env = TestEnv::new("peername", PROBE, "");
    env.start_daemon();
    let v4 = Upstream::start("127.0.0.2:0");
    let v6 = Upstream::start("[::1]:0");
    let mapped = format!("[::ffff:127.0.0.2]:{}", v4.addr.port());
    for (target, want) in [
        (v4.addr.to_string(), v4.addr.to_string()),
        (v6.addr.to_string(), v6.addr.to_string()),
        (mapped.clone(), mapped.clone()),
    ] {
        let (ok, line) = env.probe(true, &["peername", &target]);
        assert!(ok, "{line}");
        assert_eq!(
            field(&line, "peer"),
            Some(want.as_str()),
            "job saw the wrong peer: {line}"
        );
    }
}

#[test]
fn jobs_keep_their_exit_code_and_their_cgroup_goes_away() {
    let mut env = TestEnv::new("lifecycle", PROBE, "");
    env.start_daemon();
    let out = env.run(&["sh", "-c", "cat /proc/self/cgroup; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "exit code not preserved");
    let cg = String::from_utf8_lossy(&out.stdout);
    let line = cg
        .lines()
        .find(|l| l.starts_with("0::"))
        .expect("no cgroup2 line");
    assert!(
        line.contains(&format!("/{}/job-", env.cgroup)),
        "job ran outside the hoop cgroup: {line}"
    );
    let job_dir = TestEnv::cgroup_mount().join(line.trim_start_matches("0::/"));
    assert!(
        eventually(Duration::from_secs(10), || !job_dir.exists()),
        "job cgroup {} still exists after the job ended",
        job_dir.display()
    );
    assert!(
        eventually(Duration::from_secs(10), || env.status()["jobs"]
            .as_array()
            .unwrap()
            .is_empty()),
        "job still listed: {}",
        env.status()
    );
    assert!(env.log().contains("job ended"), "{}", env.log());

    let out = env.run(&["/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/cmd"));
}

#[test]
fn status_lists_programs_jobs_and_live_connections() {
    let mut env = TestEnv::new("status", PROBE, "");
    env.start_daemon();
    let up = Upstream::start("127.0.0.2:0");
    // A job holding one connection open without sending a request.
    let mut job = env
        .hoop()
        .args(["run", "--"])
        .arg(&env.probe)
        .args(["hold", &up.addr.to_string(), "5"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The daemon holds the job's connection while it waits for a request.
    assert!(eventually(
        Duration::from_secs(10),
        || env.status()["connections"].as_array().unwrap().len() == 1
    ));
    let s = env.status();
    let conns = s["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{s}");
    assert_eq!(conns[0]["orig_dst"], up.addr.to_string());
    assert_eq!(conns[0]["pid"], job.id());
    let s = env.status();
    let links = s["links"].as_array().unwrap();
    assert_eq!(links.len(), hoop_tests::PROGRAMS, "{s}");
    assert_eq!(s["kernel_links_on_root"], hoop_tests::PROGRAMS, "{s}");
    let jobs = s["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{s}");
    assert_eq!(jobs[0]["identity"]["name"], "test:local", "{s}");
    assert_eq!(jobs[0]["identity"]["source"], "static", "{s}");
    let text = env.hoop().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("hoop_connect4") && text.contains("test:local"),
        "{text}"
    );
    // Any control-group member reads status: a job's credential-shaped
    // argument is masked there as in the record; a plain one is shown.
    let token = "Bearer hoopstatustoken0123456789";
    let mut secret = env
        .hoop()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "sleep 5",
            "sh",
            token,
            "plain-arg-42",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        env.status()["jobs"].as_array().unwrap().len() == 2
    }));
    let s = env.status();
    let text = env.hoop().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for shown in [s.to_string(), text.to_string()] {
        assert!(shown.contains("plain-arg-42"), "{shown}");
        assert!(shown.contains("Bearer *****"), "{shown}");
        assert!(!shown.contains("hoopstatustoken"), "{shown}");
    }
    secret.kill().unwrap();
    secret.wait().unwrap();
    job.kill().unwrap();
    job.wait().unwrap();
}

//! The control socket trusts a process, never a process number. A
//! control-group member that is no approver connects, exits, and lets its
//! pid go to a root process; its connection, left to a child, then asks to
//! approve and to run. The daemon must see that the process that connected
//! is gone: before, it read the groups of whatever held the pid (root's),
//! and moved that process into a job cgroup.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use hoop_tests::TestEnv;

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

/// `hoop-probe ARGS` as nobody (gid nogroup, the control group here).
fn as_nobody(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&env.probe)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A root process with exactly `pid`, by setting the next pid the kernel
/// hands out; None if another fork won the race every time.
fn root_process_with_pid(pid: u32) -> Option<Child> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut c = Command::new("sleep").arg("60").spawn().unwrap();
        if c.id() == pid {
            return Some(c);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    None
}

/// Orphans a connection that will send `json`, hands its pid to a root
/// process, then lets the connection ask. Returns the answer and the root
/// process.
fn ask_from_a_reused_pid(env: &TestEnv, scratch: &Path, json: &str) -> (String, Child) {
    let socket = env.dir.path().join("run/control.sock");
    let go = scratch.join(format!("go-{}", json.len()));
    let line = as_nobody(
        env,
        &[
            "orphan",
            socket.to_str().unwrap(),
            go.to_str().unwrap(),
            json,
        ],
    );
    assert!(line.contains(" ok "), "{line}");
    let pid: u32 = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("pid=")
        .parse()
        .unwrap();
    let root = root_process_with_pid(pid).expect("could not hand the pid to a root process");
    std::fs::write(&go, "").unwrap();
    let answer = PathBuf::from(format!("{}.answer", go.display()));
    let t = Instant::now();
    while !answer.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "no answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    (std::fs::read_to_string(&answer).unwrap(), root)
}

#[test]
fn a_reused_pid_can_neither_approve_nor_be_moved_into_a_job() {
    let mut env = TestEnv::with("peers", PROBE, "control_group = \"nogroup\"", "");
    env.start_daemon();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = env.dir.path().join("run/control.sock");
    let approve = r#"{"op":"approvals_approve","id":"a-123","for_secs":null}"#;
    let run = r#"{"op":"run","token":null,"command":["sleep"]}"#;

    // Positive control: a live member reaches the approval lookup.
    let live = as_nobody(&env, &["control", socket.to_str().unwrap(), approve]);
    assert!(live.contains("no approval a-123"), "{live}");

    let (answer, mut root) = ask_from_a_reused_pid(&env, scratch.path(), approve);
    assert!(
        answer.contains("the process that asked is gone"),
        "approval from a reused pid: {answer}"
    );
    let _ = root.kill();
    let _ = root.wait();

    let (answer, mut root) = ask_from_a_reused_pid(&env, scratch.path(), run);
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", root.id())).unwrap();
    let _ = root.kill();
    let _ = root.wait();
    assert!(
        answer.contains("the caller exited before it was moved"),
        "run from a reused pid: {answer}"
    );
    assert!(
        !cgroup.contains(&env.cgroup),
        "root's process was moved into a job cgroup: {cgroup}"
    );
    // No job was left behind for it.
    let status = env.hoop().args(["status", "--json"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("\"jobs\": []"), "{status}");
}

/// A control-group member asks root to prepare a job's trust files for
/// another account, or for a group it is not in: each refused with the
/// reason, no job started. The control: for its own uid and gid, served
/// (a job, and its bundle handed to it).
#[test]
fn a_member_has_job_files_prepared_only_for_itself() {
    let mut env = TestEnv::with("peers-trust", PROBE, "control_group = \"nogroup\"", "");
    env.start_daemon();
    let socket = env.dir.path().join("run/control.sock");
    let run = |uid: u32, gid: u32| {
        let json = format!(
            r#"{{"op":"run","token":null,"command":["true"],"trust":{{"uid":{uid},"gid":{gid},"extra_pem":""}}}}"#
        );
        as_nobody(&env, &["control", socket.to_str().unwrap(), &json])
    };
    let answer = run(0, 65534);
    assert!(
        answer.contains("only root may prepare a job's files for another account (asked for uid 0, you are uid 65534)"),
        "{answer}"
    );
    for gid in [0, 42] {
        let answer = run(65534, gid);
        assert!(
            answer.contains(&format!(
                "only root may hand a job's files to a group the caller is not in (asked for gid {gid})"
            )),
            "{answer}"
        );
    }
    assert_eq!(env.log().matches("job started").count(), 0, "{}", env.log());
    let answer = run(65534, 65534);
    assert!(
        answer.contains(r#""result":"run""#) && answer.contains("ca-bundle.pem"),
        "the control: {answer}"
    );
    assert_eq!(env.log().matches("job started").count(), 1, "{}", env.log());
}

/// A control-group member floods the socket with connections that never
/// send a request: past 16, its `hoop run` (a 200 KB request: its own CA
/// bundle) is answered at once with the reason, unread, and the client
/// reads that answer rather than a broken pipe; root is served all the
/// while; once the member lets go, the same `hoop run` starts its job (the
/// control).
#[test]
fn a_member_cannot_crowd_the_control_socket() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut env = TestEnv::with("peers-flood", PROBE, "control_group = \"nogroup\"", "");
    env.start_daemon();
    let socket = env.dir.path().join("run/control.sock");
    // The caller's own bundle, kept in the job's: not the system's path.
    let bundle = env.dir.path().join("own-bundle.pem");
    std::fs::copy("/etc/ssl/certs/ca-certificates.crt", &bundle).unwrap();
    std::fs::set_permissions(&bundle, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let script = r#"
import socket, sys
held = []
for _ in range(16):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); held.append(s)
print("held", flush=True)
sys.stdin.readline()
for s in held: s.close()
print("released", flush=True)
"#;
    let mut member = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--init-groups", "--"])
        .args(["/usr/bin/python3", "-c", script])
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(member.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held");
    let hoop_run = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--init-groups", "--"])
            .arg(hoop_tests::hoop_bin())
            .arg("--config")
            .arg(&env.config)
            .args(["run", "--", "true"])
            .env("SSL_CERT_FILE", &bundle)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = hoop_run();
    assert!(
        !ok && err.contains("too many control connections from uid 65534 (at most 16 at once)"),
        "{err}"
    );
    // Root, meanwhile.
    assert_eq!(
        env.status()["links"].as_array().unwrap().len(),
        hoop_tests::PROGRAMS
    );
    member.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "released");
    member.wait().unwrap();
    // The daemon sees the closes as it reads them: within moments.
    let t = Instant::now();
    loop {
        let (ok, err) = hoop_run();
        if ok {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the control never started: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

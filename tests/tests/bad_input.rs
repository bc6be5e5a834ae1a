//! Bad input gets a clear error that names what is wrong and how to fix it.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::Duration,
};

use hoop_tests::{TestEnv, hoop_bin};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

fn daemon_fails(env: &TestEnv, config: &str) -> String {
    let path = env.dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(hoop_bin())
        .arg("--config")
        .arg(&path)
        .arg("daemon")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "daemon accepted a broken config:\n{config}"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn broken_configs_name_file_line_and_key() {
    let env = TestEnv::new("badcfg", PROBE, "");
    let e = daemon_fails(&env, "[capture]\nlisten_port = \"many\"\n");
    assert!(
        e.contains("bad.toml") && e.contains("line 2") && e.contains("listen_port"),
        "{e}"
    );
    let e = daemon_fails(&env, "[capture]\nlisten_prot = 1\n");
    assert!(e.contains("line 2") && e.contains("listen_prot"), "{e}");
    let e = daemon_fails(&env, "[capture\n");
    assert!(e.contains("line 1"), "{e}");
    let e = daemon_fails(&env, "[capture]\ncgroup = \"../../escape\"\n");
    assert!(e.contains("capture.cgroup"), "{e}");

    let out = Command::new(hoop_bin())
        .args(["--config", "/nonexistent/hoop.toml", "daemon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/nonexistent/hoop.toml") && e.contains("cannot read config"),
        "{e}"
    );

    let out = Command::new(hoop_bin())
        .args(["check-config"])
        .arg(&env.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_pin_dir_off_bpffs_is_refused_with_the_fix() {
    let env = TestEnv::new("nobpffs", PROBE, "");
    let pins = env.dir.path().join("pins");
    let e = daemon_fails(
        &env,
        &format!(
            "[daemon]\nruntime_dir = \"{}\"\n[capture]\ncgroup = \"{}\"\nbpf_pin_dir = \"{}\"\nlisten_port = {}\n",
            env.runtime_dir.display(),
            env.cgroup,
            pins.display(),
            env.port
        ),
    );
    assert!(
        e.contains("not on a bpf filesystem") && e.contains("mount -t bpf"),
        "{e}"
    );
}

/// Runs the daemon in a private mount namespace after `prep` (shell).
fn daemon_in_mount_ns(env: &TestEnv, prep: &str, wait: Duration) -> (Option<i32>, String) {
    let script = format!(
        "{prep}\nexec {} --config {} daemon",
        hoop_bin().display(),
        env.config.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", &script])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while t.elapsed() < wait {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = match child.try_wait().unwrap() {
        Some(s) => s.code(),
        None => {
            // Still running: it came up. Stop it like systemd would.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            child.wait().unwrap();
            None
        }
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (code, err)
}

#[test]
fn a_cgroup_v1_only_host_is_refused_with_the_fix() {
    let env = TestEnv::new("v1only", PROBE, "");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let umounts: String = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| format!("umount -l {}\n", f[1]))
        })
        .collect();
    let (code, err) = daemon_in_mount_ns(&env, &umounts, Duration::from_secs(5));
    assert_eq!(
        code,
        Some(1),
        "daemon did not fail on a v1-only host: {err}"
    );
    assert!(
        err.contains("cgroup v1") && err.contains("unified_cgroup_hierarchy"),
        "{err}"
    );
}

#[test]
fn a_missing_bpffs_is_mounted_by_the_daemon() {
    let env = TestEnv::new("mountbpf", PROBE, "");
    let (code, err) = daemon_in_mount_ns(
        &env,
        "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done",
        Duration::from_secs(3),
    );
    assert_eq!(code, None, "daemon exited instead of mounting bpffs: {err}");
    assert!(err.contains("mounted bpffs at /sys/fs/bpf"), "{err}");
    assert!(err.contains("hoop daemon ready"), "{err}");
}

#[test]
fn the_control_socket_rejects_garbage_and_strangers_and_keeps_serving() {
    let mut env = TestEnv::new("control", PROBE, "");
    env.start_daemon();
    let sock = env.runtime_dir.join("control.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "control socket mode");

    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"{not json\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    assert!(answer.contains("bad request"), "{answer}");

    // A job user that is neither root nor in the control group.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(hoop_bin())
        .arg("--config")
        .arg(&env.config)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("Permission denied") || e.contains("not authorised"),
        "{e}"
    );

    // Still serving.
    assert_eq!(
        env.status()["links"].as_array().unwrap().len(),
        hoop_tests::PROGRAMS
    );
}

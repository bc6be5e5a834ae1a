//! Per-job connection caps on the transparent path, as the job meets
//! them: under `hoop run`, a job holding its share of connections has its
//! next connect reset before a byte is read, on record with the reason
//! `connection-limit`, while another job still gets through.
use std::time::Duration;

use hoop_tests::{TestEnv, Upstream, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

#[test]
fn a_job_over_its_cap_is_reset_and_another_job_gets_through() {
    let mut env = TestEnv::new("limits", PROBE, "[limits]\nmax_connections_per_job = 2\n");
    env.start_daemon();
    let up = Upstream::start("127.0.0.2:0");
    let addr = up.addr.to_string();
    let probe = env.probe.to_str().unwrap().to_string();
    // Job A holds two connections, then tries a third.
    let script = format!(
        "{p} hold {a} 6 >/dev/null & {p} hold {a} 6 >/dev/null & \
         sleep 1.5; {p} tcp {a}; rc=$?; wait; exit $rc",
        p = probe,
        a = addr
    );
    let a = env
        .hoop()
        .args(["run", "--user", "nobody", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Job B, while A is at its cap: served.
    std::thread::sleep(Duration::from_millis(700));
    let (ok, line) = env.probe(true, &["tcp", &addr]);
    assert!(ok, "another job was refused: {line}");
    let out = a.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "job A's third connection went through: {line}"
    );
    assert!(
        line.contains("Connection reset by peer (os error 104)") || line.contains("empty response"),
        "{line}"
    );
    // Positive control once A's holds are gone: A's share is back.
    let (ok, line) = env.probe(true, &["tcp", &addr]);
    assert!(ok, "{line}");
    // On record, with its reason.
    let db = env.dir.path().join("state/audit.db");
    let recorded = eventually(Duration::from_secs(10), || {
        let out = env
            .hoop()
            .args(["export", "jsonl", "--db", db.to_str().unwrap()])
            .output()
            .unwrap();
        let refused = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("\"kind\":\"connect-denied\"") && l.contains("connection-limit"))
            .count();
        refused == 1
    });
    assert!(recorded, "the refusal is not on record once");
}

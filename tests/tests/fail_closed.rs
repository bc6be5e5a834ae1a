//! Fail-closed: with the daemon SIGKILLed, a running job's connects are
//! refused and nothing reaches the upstream. A restarted daemon serves again
//! within a second, reusing the pinned links rather than stacking new ones.
use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use hoop_tests::{TestEnv, Upstream, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

#[test]
fn killing_the_daemon_refuses_jobs_and_a_restart_reuses_the_pinned_links() {
    let mut env = TestEnv::new("failclosed", PROBE, "");
    env.start_daemon();
    let up = Upstream::start("127.0.0.2:0");
    let before = env.status();
    let link_ids: Vec<_> = before["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["link_id"].clone())
        .collect();

    // A long-running job connecting every 50 ms.
    let mut job = env
        .hoop()
        .args(["run", "--"])
        .arg(&env.probe)
        .args(["loop", &up.addr.to_string(), "50", "400"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let out = job.stdout.take().unwrap();
    let l2 = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().unwrap().push((Instant::now(), line));
        }
    });
    let ok_since = |t: Instant| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, l)| *at > t && l.contains(" ok "))
            .count()
    };
    let err_since = |t: Instant| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, l)| *at > t && l.contains(" err "))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || ok_since(
            Instant::now() - Duration::from_secs(10)
        ) > 0),
        "job never got through"
    );

    env.kill_daemon();
    let killed = Instant::now();
    let hits_at_kill = up.hits();
    thread::sleep(Duration::from_millis(1500));
    // Connects in flight at the kill may still have been accepted; from
    // 200 ms on, every attempt must fail.
    let settled = killed + Duration::from_millis(200);
    assert_eq!(
        ok_since(settled),
        0,
        "job got through while the daemon was dead: {:?}",
        lines.lock().unwrap()
    );
    assert!(
        err_since(settled) >= 10,
        "job made too few attempts while the daemon was dead"
    );
    assert_eq!(
        up.hits(),
        hits_at_kill,
        "upstream was reached while the daemon was dead"
    );
    let refused = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, l)| *at > settled && l.contains("refused"))
        .count();
    assert!(
        refused > 0,
        "expected connection refused: {:?}",
        lines.lock().unwrap().last()
    );

    let restart = Instant::now();
    env.start_daemon();
    assert!(
        eventually(Duration::from_secs(1), || ok_since(restart) > 0),
        "service not back within 1 s of the restart"
    );
    eprintln!(
        "service back {} ms after the restart began",
        restart.elapsed().as_millis()
    );

    let after = env.status();
    let links = after["links"].as_array().unwrap();
    assert!(
        links.iter().all(|l| l["reused"] == true),
        "links not reused: {after}"
    );
    let ids_after: Vec<_> = links.iter().map(|l| l["link_id"].clone()).collect();
    assert_eq!(
        ids_after, link_ids,
        "link ids changed: programs were re-attached, not swapped"
    );
    assert_eq!(
        after["kernel_links_on_root"],
        hoop_tests::PROGRAMS,
        "links stacked on the root cgroup: {after}"
    );
    // The running job is still known to the restarted daemon.
    assert_eq!(after["jobs"].as_array().unwrap().len(), 1, "{after}");

    job.kill().unwrap();
    job.wait().unwrap();
}

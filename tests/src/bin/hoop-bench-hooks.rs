//! hoop-bench-hooks: what the job sandbox costs a socket. Rounds of
//! `socket(AF_INET, SOCK_STREAM)`, `bind(127.0.0.1:0)`, `close`, measured
//! by hoop-probe outside hoop (the peer: no hooks, no filter) and inside a
//! `hoop run` job (the sock_create and bind4 programs, and the seccomp
//! filter on every call), alternating, in the same run. Prints a markdown
//! table for BENCHMARKS.md. Run as root, after building hoop and the probe:
//!   cargo build --release -p hoop-daemon -p hoop-tests --bins
//!   HOOP_BIN=target/release/hoop target/release/hoop-bench-hooks
use std::process::Command;

use hoop_tests::TestEnv;

const ROUNDS: &str = "200000";
const TRIES: usize = 7;

fn ns_per_round(out: &std::process::Output) -> u64 {
    let line = String::from_utf8_lossy(&out.stdout);
    line.split("ns_per_round=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no figure in {line:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let probe = std::env::current_exe()
        .unwrap()
        .with_file_name("hoop-probe");
    let mut env = TestEnv::new("bench-hooks", probe.to_str().unwrap(), "");
    env.start_daemon();
    let probe = env.probe.to_str().unwrap().to_string();
    let (mut outside, mut job, mut nobody) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRIES {
        outside.push(ns_per_round(
            &Command::new(&probe)
                .args(["bind-loop", ROUNDS])
                .output()
                .unwrap(),
        ));
        job.push(ns_per_round(&env.run(&[&probe, "bind-loop", ROUNDS])));
        nobody.push(ns_per_round(&env.run_as_nobody(&[
            &probe,
            "bind-loop",
            ROUNDS,
        ])));
    }
    let base = median(outside.clone());
    println!("| path | ns per socket+bind+close (median of {TRIES}) | vs outside |");
    println!("|---|---:|---:|");
    for (name, v) in [
        ("outside hoop (no hooks, no filter)", outside),
        ("in a job, as root", job),
        ("in a job, as nobody (--user)", nobody),
    ] {
        let m = median(v);
        println!("| {name} | {m} | {:.2}× |", m as f64 / base as f64);
    }
}

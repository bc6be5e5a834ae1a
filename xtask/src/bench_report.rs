//! The report of `cargo xtask bench`: one table per workload, each path's
//! figure against direct (or the workload's baseline) and mitmproxy, and
//! the proxy's CPU per request against the no-op peer's in the same run.
use std::{fmt::Write as _, process::Command};

use anyhow::Result;

use crate::{proc_cpu, sh};

/// The row every proxy's CPU per request is compared against.
pub const PEER: &str = "no-op peer (hyper + rustls)";

/// One measured figure (or two, for latency).
#[derive(Clone, Copy)]
pub enum Figure {
    Rate(f64),
    Latency { p50_ms: f64, p99_ms: f64, rps: f64 },
}

/// What a load tool reports: its figure and the requests it completed.
pub struct Sample {
    pub figure: Figure,
    pub requests: u64,
}

/// A row's result: the figure, and for a path through a proxy, what a
/// request cost the proxy over the same run (CPU µs, the audit writer's
/// part, context switches).
#[derive(Clone, Copy)]
struct Measured {
    figure: Figure,
    cost: Option<proc_cpu::PerRequest>,
}

impl Measured {
    fn cpu_us(&self) -> Option<f64> {
        self.cost.map(|c| c.cpu_us)
    }
}

struct Row {
    workload: String,
    path: String,
    result: std::result::Result<Measured, String>,
}

pub struct Report {
    rows: Vec<Row>,
    /// Workloads compared against another path than "direct".
    baselines: Vec<(String, String)>,
    /// `--only`: the workloads whose name contains this.
    only: Option<String>,
    pub failed: usize,
    command: String,
    setup: String,
}

impl Report {
    pub fn new(command: String, setup: String, only: Option<String>) -> Self {
        Self {
            rows: Vec::new(),
            baselines: Vec::new(),
            only,
            failed: 0,
            command,
            setup,
        }
    }

    /// Measures `path` under `workload`, unless `--only` leaves it out.
    /// With `proxy` (its pid), that process's CPU over the run is charged
    /// to the requests the load tool completed; a figure that cannot be
    /// measured fails the row.
    pub fn run(
        &mut self,
        workload: &str,
        path: &str,
        proxy: Option<u32>,
        measure: impl FnOnce() -> Result<Sample>,
    ) {
        if !self.wanted(workload) {
            return;
        }
        let r = (|| -> Result<Measured> {
            let meter = proxy.map(proc_cpu::Meter::start).transpose()?;
            let s = measure()?;
            let cost = meter.map(|m| m.per_request(s.requests)).transpose()?;
            Ok(Measured {
                figure: s.figure,
                cost,
            })
        })()
        .map_err(|e| {
            self.failed += 1;
            eprintln!("  ! {workload} / {path}: {e:#}");
            format!("{e:#}")
        });
        if let Ok(m) = &r {
            let cpu = m
                .cost
                .map(|c| {
                    let writer = c
                        .writer_us
                        .map(|w| format!(" (audit writer {w:.1})"))
                        .unwrap_or_default();
                    format!(
                        ", proxy CPU {:.1} µs/req{writer}, {:.2} context switches/req",
                        c.cpu_us, c.switches
                    )
                })
                .unwrap_or_default();
            eprintln!("  = {path}: {}{cpu}", fmt(&m.figure));
        }
        self.rows.push(Row {
            workload: workload.into(),
            path: path.into(),
            result: r,
        });
    }

    pub fn wanted(&self, workload: &str) -> bool {
        self.only.as_deref().is_none_or(|o| workload.contains(o))
    }

    pub fn baseline(&mut self, workload: &str, path: &str) {
        self.baselines.push((workload.into(), path.into()));
    }

    fn get(&self, workload: &str, path: &str) -> Option<Measured> {
        self.rows
            .iter()
            .find(|r| r.workload == workload && r.path == path)
            .and_then(|r| r.result.as_ref().ok().copied())
    }

    /// Markdown tables: one per workload, each path against direct (or the
    /// baseline) and against mitmproxy, and its CPU against the peer's.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut seen: Vec<&str> = Vec::new();
        for row in &self.rows {
            let w = row.workload.as_str();
            if seen.contains(&w) {
                continue;
            }
            seen.push(w);
            let _ = writeln!(s, "### {w}\n");
            let base = self
                .baselines
                .iter()
                .find(|(x, _)| x == w)
                .map_or("direct", |(_, p)| p.as_str());
            // Against a baseline other than direct (audit off), the CPU
            // the difference adds per exchange.
            let over = base != "direct";
            let _ = write!(
                s,
                "| path | figure | vs {base} | vs mitmproxy | CPU µs/req | × no-op peer |"
            );
            let _ = writeln!(
                s,
                "{}\n|---|---:|---:|---:|---:|---:|{}",
                if over {
                    format!(
                        " CPU µs/req over {base} | of which the audit writer | context switches/req |"
                    )
                } else {
                    String::new()
                },
                if over { "---:|---:|---:|" } else { "" }
            );
            let direct = self.get(w, base);
            let mitm = self.get(w, "mitmproxy");
            let peer = self.get(w, PEER).and_then(|m| m.cpu_us());
            for r in self.rows.iter().filter(|r| r.workload == w) {
                let p = &r.path;
                let m = match &r.result {
                    Ok(m) => m,
                    Err(e) => {
                        let cells = if over { " | | |" } else { "" };
                        let _ = writeln!(
                            s,
                            "| {p} | failed: {} | | | | |{cells}",
                            e.replace('|', "/")
                        );
                        continue;
                    }
                };
                let _ = write!(
                    s,
                    "| {p} | {} | {} | {} | {} | {} |",
                    fmt(&m.figure),
                    ratio(&m.figure, direct.map(|d| d.figure)),
                    ratio(&m.figure, mitm.map(|d| d.figure)),
                    m.cpu_us().map_or("–".into(), |c| format!("{c:.1}")),
                    cpu_ratio(m.cpu_us(), peer),
                );
                if over {
                    let b = direct.and_then(|d| d.cpu_us());
                    let d = match (m.cpu_us(), b) {
                        (Some(c), Some(b)) => format!("{:+.1}", c - b),
                        _ => "–".into(),
                    };
                    let writer = m
                        .cost
                        .and_then(|c| c.writer_us)
                        .map_or("–".into(), |w| format!("{w:.1}"));
                    let switches = m.cost.map_or("–".into(), |c| format!("{:.2}", c.switches));
                    let _ = write!(s, " {d} | {writer} | {switches} |");
                }
                s.push('\n');
            }
            s.push('\n');
        }
        s
    }

    pub fn markdown(&self, mitmproxy: &str) -> String {
        let date = sh::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .unwrap_or_default();
        let rev = sh::output(Command::new("git").args(["-C"]).arg(sh::root_dir()).args([
            "rev-parse",
            "--short",
            "HEAD",
        ]))
        .unwrap_or_default();
        format!(
            "# Benchmarks\n\n\
             Generated by `{}` (as root) on {} at commit {}.\n\n\
             Setup: {}. Origin: `hoop-origin` (hyper, one tokio worker, TLS with its own CA), \
             `GET /hello` (small body) on 127.0.0.2. hoop: release build, `HOOP_LOG=warn`, \
             full TLS interception (leaf minted per host, upstream verified against the origin's CA). \
             {PEER}: `hoop-noop-proxy` (release), the same interception without policy, identity \
             or audit, reverse mode for wrk/h2load, explicit (CONNECT) for oha. \
             mitmproxy: `mitmdump` ({mitmproxy}) with `--ssl-insecure -q`, reverse mode for wrk/h2load, \
             regular mode for oha. A run with any error or non-2xx answer is reported as failed.\n\n\
             Ratios: \"vs direct\" is the path's figure over the direct path's (for latency, \
             direct's over the path's, so higher is better everywhere); \"vs mitmproxy\" likewise \
             against mitmproxy. \"CPU µs/req\" is the proxy process's user + system CPU time \
             over the run divided by the requests the load tool completed (– where no proxy \
             is in the path); \"× no-op peer\" is that over the peer's in the same table, lower \
             is better. In the audit-cost tables, \"of which the audit writer\" is the CPU \
             of hoop's audit writer thread per request, and \"context switches/req\" those of \
             all the proxy's threads. Targets, measured from now on: hoop ≥ 50% of direct req/s and \
             ≥ 50× mitmproxy; hoop's CPU per request ≤ 1.25× the no-op peer's (issue 20).\n\n{}",
            self.command,
            date.trim(),
            rev.trim(),
            self.setup,
            self.table()
        )
    }
}

fn fmt(f: &Figure) -> String {
    match f {
        Figure::Rate(r) => format!("{r:.0}"),
        // The rate achieved shows a path that could not keep up.
        Figure::Latency {
            p50_ms,
            p99_ms,
            rps,
        } => format!("{p50_ms:.2} / {p99_ms:.2} (at {rps:.0} req/s)"),
    }
}

/// `f` relative to `base`, higher is better (latency inverted), using p99
/// for latency: the tail is what a proxy hurts.
fn ratio(f: &Figure, base: Option<Figure>) -> String {
    let Some(b) = base else { return "–".into() };
    let x = match (f, b) {
        (Figure::Rate(a), Figure::Rate(b)) => a / b,
        (Figure::Latency { p99_ms: a, .. }, Figure::Latency { p99_ms: b, .. }) => b / a,
        _ => return "–".into(),
    };
    if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 1.5 {
        format!("{x:.1}×")
    } else {
        format!("{:.0}%", x * 100.0)
    }
}

/// A proxy's CPU per request over the peer's, lower is better.
fn cpu_ratio(cpu: Option<f64>, peer: Option<f64>) -> String {
    match (cpu, peer) {
        (Some(c), Some(p)) => format!("{:.2}×", c / p),
        _ => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(r: f64, requests: u64) -> Result<Sample> {
        Ok(Sample {
            figure: Figure::Rate(r),
            requests,
        })
    }

    /// Burns this process's CPU for `ms`.
    fn spin(ms: u128) {
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < ms {
            std::hint::black_box(t.elapsed());
        }
    }

    #[test]
    fn a_proxy_row_that_cannot_be_charged_fails_and_the_table_says_so() {
        let mut r = Report::new("cmd".into(), "setup".into(), None);
        let w = "HTTP/1.1";
        r.run(w, "direct", None, || rate(1000.0, 1000));
        // This process as the "proxy": its CPU over a run that spins a
        // little is real and positive.
        r.run(w, PEER, Some(std::process::id()), || {
            spin(300);
            rate(500.0, 10)
        });
        r.run(w, "no requests", Some(std::process::id()), || rate(0.0, 0));
        r.run(w, "gone", Some(u32::MAX), || rate(1.0, 1));
        assert_eq!(r.failed, 2, "the row with no request and the missing pid");
        let t = r.table();
        let line = |p: &str| {
            t.lines()
                .find(|l| l.starts_with(&format!("| {p} |")))
                .unwrap()
        };
        assert!(line("direct").ends_with("| – | – |"), "{t}");
        assert!(line(PEER).ends_with("| 1.00× |"), "{t}");
        assert!(line("no requests").contains("failed: the load tool completed no request"));
        assert!(line("gone").contains("failed: reading /proc/"), "{t}");
    }

    #[test]
    fn an_audit_table_shows_the_writer_thread_and_the_switches() {
        let mut r = Report::new("cmd".into(), "setup".into(), None);
        let w = "audit cost";
        r.baseline(w, "audit off");
        r.run(w, "audit off", Some(std::process::id()), || {
            spin(200);
            rate(500.0, 10)
        });
        // This process as hoop with its writer: a thread of that name,
        // alive across the run.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::Builder::new()
            .name(proc_cpu::WRITER_THREAD.into())
            .spawn(move || {
                let _ = wait.recv();
            })
            .unwrap();
        r.run(w, "audit on", Some(std::process::id()), || {
            spin(200);
            rate(400.0, 10)
        });
        drop(go);
        writer.join().unwrap();
        assert_eq!(r.failed, 0);
        let t = r.table();
        assert!(
            t.contains("| of which the audit writer | context switches/req |"),
            "{t}"
        );
        let cells = |p: &str| -> Vec<String> {
            let l = t
                .lines()
                .find(|l| l.starts_with(&format!("| {p} |")))
                .unwrap();
            l.split('|').map(|c| c.trim().to_string()).collect()
        };
        // | path | figure | vs | mitm | cpu | × peer | over | writer | switches |
        let on = cells("audit on");
        assert_eq!(on.len(), 11, "{t}");
        assert!(on[8].parse::<f64>().is_ok(), "the writer's CPU: {t}");
        assert!(on[9].parse::<f64>().is_ok(), "switches: {t}");
    }
}

//! Proxy CPU per request: the proxy process's user + system CPU time (all
//! its threads, exited ones included: /proc/PID/stat's utime and stime)
//! over a measured run, divided by the requests the load tool completed.
//! The kernel reports both in clock ticks (1/100 s here), so a reading is
//! exact to a tick: a 10 s run at thousands of requests per second is
//! measured to well under 1%.
//!
//! Two more figures tell where a proxy's CPU went: the share of hoop's
//! audit writer thread (named [`WRITER_THREAD`]), and the context switches
//! of all the process's threads per request (each costs several µs in a
//! VM, and a hand-off between threads sharing a core costs two).
use anyhow::{Context, Result, bail};

/// The name hoop gives its audit writer thread (`audit/mod.rs`).
pub const WRITER_THREAD: &str = "hoop-audit";

/// A CPU reading of one process, taken when a measured run starts.
pub struct Meter {
    pid: u32,
    start: u64,
    /// The audit writer's CPU ticks, if the process has that thread.
    writer: Option<(u32, u64)>,
    /// Context switches per thread at the start.
    switches: std::collections::HashMap<u32, u64>,
}

/// What one request cost the proxy, over a measured run.
#[derive(Clone, Copy, Debug)]
pub struct PerRequest {
    pub cpu_us: f64,
    /// The audit writer thread's part of `cpu_us`.
    pub writer_us: Option<f64>,
    /// Context switches of the proxy's threads (voluntary and not).
    pub switches: f64,
}

impl Meter {
    pub fn start(pid: u32) -> Result<Self> {
        let start = ticks_of(&format!("/proc/{pid}/stat"))?;
        let writer = match writer_tid(pid)? {
            Some(tid) => Some((tid, ticks_of(&format!("/proc/{pid}/task/{tid}/stat"))?)),
            None => None,
        };
        Ok(Self {
            pid,
            start,
            writer,
            switches: switches_of(pid)?,
        })
    }

    /// CPU µs per request since `start`, for `requests` completed, and
    /// where it went.
    pub fn per_request(&self, requests: u64) -> Result<PerRequest> {
        let pid = self.pid;
        let used = ticks_of(&format!("/proc/{pid}/stat"))?
            .checked_sub(self.start)
            .with_context(|| format!("process {pid}'s CPU time went back"))?;
        let hz = clock_ticks()?;
        let writer_us = match self.writer {
            Some((tid, start)) => {
                // Gone (it never exits while hoop runs): no figure.
                let t = ticks_of(&format!("/proc/{pid}/task/{tid}/stat")).ok();
                t.and_then(|t| t.checked_sub(start))
                    .map(|used| used as f64 * 1e6 / hz as f64 / requests.max(1) as f64)
            }
            None => None,
        };
        // Per thread, so that a thread leaving mid-run (tokio's blocking
        // pool) takes only its own run's switches along, not its past.
        let switches: u64 = switches_of(pid)?
            .iter()
            .map(|(tid, n)| n.saturating_sub(self.switches.get(tid).copied().unwrap_or(0)))
            .sum();
        Ok(PerRequest {
            cpu_us: per_request_us(used, hz, requests)?,
            writer_us,
            switches: switches as f64 / requests.max(1) as f64,
        })
    }
}

/// The thread id of hoop's audit writer in `pid`, if it runs one.
fn writer_tid(pid: u32) -> Result<Option<u32>> {
    for tid in tids(pid)? {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"));
        if comm.is_ok_and(|c| c.trim_end() == WRITER_THREAD) {
            return Ok(Some(tid));
        }
    }
    Ok(None)
}

fn tids(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Context switches of each of `pid`'s live threads.
fn switches_of(pid: u32) -> Result<std::collections::HashMap<u32, u64>> {
    let mut n = std::collections::HashMap::new();
    for tid in tids(pid)? {
        // A thread may exit between the listing and the read.
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) {
            let c = ctxt_switches(&status)
                .with_context(|| format!("parsing /proc/{pid}/task/{tid}/status"))?;
            n.insert(tid, c);
        }
    }
    Ok(n)
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of a status file.
pub fn ctxt_switches(status: &str) -> Result<u64> {
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("no {name}"))?;
        line.trim()
            .parse()
            .with_context(|| format!("{name} is {line:?}"))
    };
    Ok(field("voluntary_ctxt_switches")? + field("nonvoluntary_ctxt_switches")?)
}

fn ticks_of(path: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}: has the proxy exited?"))?;
    stat_ticks(&stat).with_context(|| format!("parsing {path}"))
}

fn clock_ticks() -> Result<u64> {
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) gave {hz}");
    }
    Ok(hz as u64)
}

/// utime + stime (fields 14 and 15, clock ticks) from /proc/PID/stat.
pub fn stat_ticks(stat: &str) -> Result<u64> {
    // Field 2 is the command name in parentheses, which may itself hold
    // spaces and parentheses: the fields after the last ')' are fixed,
    // starting with field 3 (the state).
    let (_, rest) = stat.rsplit_once(')').context("no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize, what: &str| -> Result<u64> {
        let v = fields
            .get(n - 3)
            .with_context(|| format!("no field {n} ({what})"))?;
        v.parse()
            .with_context(|| format!("field {n} ({what}) is {v:?}"))
    };
    Ok(field(14, "utime")? + field(15, "stime")?)
}

/// µs of CPU per request. No request, or no CPU at all for a proxy that
/// carried requests, is a broken measurement, never a zero.
pub fn per_request_us(ticks: u64, ticks_per_sec: u64, requests: u64) -> Result<f64> {
    if requests == 0 {
        bail!("the load tool completed no request");
    }
    if ticks == 0 {
        bail!(
            "the proxy used no measurable CPU (less than 1/{ticks_per_sec} s) for {requests} \
             requests: the wrong process, or a run too short"
        );
    }
    Ok(ticks as f64 * 1e6 / ticks_per_sec as f64 / requests as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line's shape (kernel 6.x, 52 fields), with a command name
    // that holds a space and a ')' to trip a naive split.
    const STAT: &str = "4242 (tokio) w0)) S 1 4242 4242 0 -1 4194560 9321 0 0 0 \
                        1234 567 0 0 20 0 3 0 81234 1056768000 5120 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17926 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn utime_and_stime_are_fields_14_and_15_after_the_command_name() {
        assert_eq!(stat_ticks(STAT).unwrap(), 1234 + 567);
    }

    #[test]
    fn a_truncated_or_garbled_stat_is_an_error() {
        let cut = &STAT[..STAT.find(" 1234").unwrap()];
        let e = stat_ticks(cut).unwrap_err();
        assert!(format!("{e:#}").contains("field 14 (utime)"), "{e:#}");
        let bad = STAT.replace(" 567 ", " x ");
        let e = stat_ticks(&bad).unwrap_err();
        assert!(format!("{e:#}").contains("field 15 (stime)"), "{e:#}");
        assert!(stat_ticks("4242 tokio S 1").is_err());
    }

    #[test]
    fn context_switches_are_both_kinds_summed() {
        let status = "Name:\ttokio\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t1200\n\
                      nonvoluntary_ctxt_switches:\t34\n";
        assert_eq!(ctxt_switches(status).unwrap(), 1234);
        let e = ctxt_switches("Name:\ttokio\nvoluntary_ctxt_switches:\t1\n").unwrap_err();
        assert!(
            e.to_string().contains("no nonvoluntary_ctxt_switches"),
            "{e}"
        );
        // A prefix of another field's name is not that field.
        assert!(
            ctxt_switches("voluntary_ctxt_switches_x:\t1\nnonvoluntary_ctxt_switches:\t2\n")
                .is_err()
        );
    }

    #[test]
    fn this_process_threads_and_switches_are_read() {
        let pid = std::process::id();
        // Other tests' threads come and go (their counts with them): this
        // thread's own count, and the process's sum, which includes it.
        let own = || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            ctxt_switches(&status).unwrap()
        };
        let before = own();
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let after = own();
        assert!(
            after >= before + 5,
            "5 sleeps read as {} switches",
            after - before
        );
        let tid = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: u32 = tid.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let read = switches_of(pid).unwrap()[&tid];
        assert!(read >= after && read <= own(), "{read} against {after}");
        assert!(
            switches_of(u32::MAX).is_err(),
            "a missing process is an error"
        );
    }

    #[test]
    fn cpu_per_request_in_microseconds() {
        // 250 ticks at 100 Hz = 2.5 s of CPU over 100 000 requests.
        assert_eq!(per_request_us(250, 100, 100_000).unwrap(), 25.0);
        assert_eq!(per_request_us(1, 1000, 1).unwrap(), 1000.0);
    }

    #[test]
    fn no_requests_or_no_cpu_fail_instead_of_reading_zero() {
        let e = per_request_us(250, 100, 0).unwrap_err();
        assert!(e.to_string().contains("no request"), "{e}");
        let e = per_request_us(0, 100, 5000).unwrap_err();
        assert!(e.to_string().contains("no measurable CPU"), "{e}");
    }

    #[test]
    fn this_process_is_measured_and_its_cpu_grows() {
        let pid = std::process::id();
        let m = Meter::start(pid).unwrap();
        // Spin until the kernel has charged this process 3 ticks (however
        // busy the machine), then the meter must read at least that.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let stat = format!("/proc/{pid}/stat");
        while ticks_of(&stat).unwrap() < m.start + 3 {
            assert!(t.elapsed().as_secs() < 20, "no CPU charged in 20 s");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let us = m.per_request(1).unwrap().cpu_us;
        let tick_us = 1e6 / clock_ticks().unwrap() as f64;
        assert!(us >= 3.0 * tick_us, "3 ticks of spinning read as {us} µs");
        assert!(
            Meter::start(u32::MAX).is_err(),
            "a missing process is an error"
        );
    }
}

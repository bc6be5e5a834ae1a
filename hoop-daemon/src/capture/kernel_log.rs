//! The kernel programs' own debug log (aya-log): for each refusal, which
//! program refused, why, the cgroup and the destination, as the kernel saw
//! it. Off unless `HOOP_LOG` enables debug for `hoop::capture` (`debug`,
//! `hoop=debug`, `hoop::capture=debug`): the programs are then loaded with
//! their log level at zero, the verifier drops the log writes, and no
//! reader runs.
use aya::Ebpf;

/// Whether the daemon's log wants the kernel's debug lines. The programs
/// log under this target, so the same filter passes them.
pub fn enabled() -> bool {
    tracing::enabled!(target: "hoop::capture", tracing::Level::DEBUG)
}

/// The programs' `AYA_LOG_LEVEL`: debug when wanted, else nothing.
pub fn level() -> u8 {
    if enabled() {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Reads the programs' log into the daemon's (through `log`, which the
/// tracing subscriber receives) until the daemon exits.
pub fn spawn(ebpf: &mut Ebpf) {
    if !enabled() {
        return;
    }
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "the eBPF programs have no log (built without aya-log?); kernel decisions are not logged");
            return;
        }
    };
    let mut fd = match crate::sys::async_kernel_log(logger) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the eBPF programs' log");
            return;
        }
    };
    tracing::debug!("logging the eBPF programs' decisions");
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "the eBPF programs' log failed; kernel decisions are no longer logged");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

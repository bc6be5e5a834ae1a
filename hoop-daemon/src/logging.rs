//! Where the daemon's log goes: human-readable on a terminal; under
//! systemd, native journald entries (a priority per level, the event's
//! fields as `HOOP_*` fields, filterable with `journalctl HOOP_JOB=…`);
//! one JSON object per line for log shippers. `HOOP_LOG_FORMAT`
//! (text, json, journald) overrides the choice; `HOOP_LOG` filters.
use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub fn init() {
    let filter = || EnvFilter::try_from_env("HOOP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("HOOP_LOG_FORMAT").ok();
    let journald = match format.as_deref() {
        Some("journald") => true,
        None => stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
        _ => false,
    };
    if journald {
        match tracing_journald::layer() {
            Ok(l) => {
                let l = l
                    .with_syslog_identifier("hoop".into())
                    .with_field_prefix(Some("HOOP".into()));
                tracing_subscriber::registry()
                    .with(l.with_filter(filter()))
                    .init();
                return;
            }
            // Said once, then the plain text below goes to stderr, which
            // systemd also keeps.
            Err(e) => eprintln!("hoop: journald unavailable ({e}); logging text to stderr"),
        }
    }
    let b = fmt().with_env_filter(filter()).with_writer(std::io::stderr);
    if format.as_deref() == Some("json") {
        b.json().with_current_span(false).init()
    } else {
        b.with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init()
    }
}

/// Whether stderr is the journal stream systemd connected us to: it sets
/// `JOURNAL_STREAM=DEV:INODE` of that stream; a child whose stderr was
/// redirected elsewhere inherits the variable but not the stream.
fn stderr_is_journal(var: Option<&str>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = var.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map(std::fs::File::from);
    let Ok(meta) = stderr.and_then(|f| f.metadata()) else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::stderr_is_journal;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_journal_is_recognised_by_stderr_device_and_inode() {
        let m = std::fs::File::from(
            std::os::fd::AsFd::as_fd(&std::io::stderr())
                .try_clone_to_owned()
                .unwrap(),
        )
        .metadata()
        .unwrap();
        let ours = format!("{}:{}", m.dev(), m.ino());
        assert!(stderr_is_journal(Some(&ours)));
        let other = format!("{}:{}", m.dev(), m.ino() + 1);
        assert!(!stderr_is_journal(Some(&other)));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(None));
    }
}

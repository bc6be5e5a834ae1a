//! The audit log from the command line: verify, sessions, exports and the
//! policy dry-run. All of it reads the database directly (read-only), so it
//! works on a live log, a stopped daemon's, or an offline copy.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::fleet::{FleetArgs, Logs};
use crate::{
    audit::{self, entry::UnvouchedData, query, store, verify},
    config::Config,
    fleet::read::Scope,
};

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Walk the hash chain and its signatures; name the first broken
    /// record. Exit 0: intact, every record signed; 3: intact, but some
    /// records are unsigned (written by a previous run, not vouched for);
    /// 1: broken; 2: the log or key can't be read.
    Verify {
        /// The database (default: <state_dir>/audit.db). A copy works.
        #[arg(long)]
        db: Option<PathBuf>,
        /// The public key that must have signed the checkpoints (base64, or
        /// a file holding it), as printed by `hoop audit pubkey`.
        #[arg(long)]
        pubkey: Option<String>,
        /// A chain hash kept off the host (the head this command prints,
        /// or a journal "audit checkpoint signed" line): the chain must
        /// still pass through it, so a cut tail is named. Repeatable.
        #[arg(long = "anchor", value_name = "SEQ:HASH")]
        anchors: Vec<verify::Anchor>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Print the public key of the audit signing key (base64).
    Pubkey,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// Recorded sessions, oldest first.
    List {
        #[arg(long)]
        db: Option<PathBuf>,
        /// Identity glob (`ci:repo:acme/*`).
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        job: Option<String>,
        /// Host glob (`*.partner.example`).
        #[arg(long)]
        host: Option<String>,
        /// Only sessions active in this window (24h, 30m).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// One session as a timeline.
    Show {
        id: String,
        #[arg(long)]
        db: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// A session as HAR 1.2 (import into a browser's developer tools).
    Har {
        id: String,
        #[arg(long)]
        db: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Records as JSON lines, for a SIEM (with --fleet, each names its
    /// host in `host_id`).
    Jsonl {
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

/// The batches a time window needs (all of them without one).
fn scope_since(since: Option<u64>) -> Scope<'static> {
    since.map_or(Scope::All, Scope::Since)
}

/// The batches a selection needs: its session's, or its window's.
pub(super) fn scope_of(sel: &query::Select) -> Scope<'_> {
    match &sel.session {
        Some(s) => Scope::Session(s),
        None => scope_since(sel.since_ms),
    }
}

pub(super) fn since_ms(since: Option<&str>) -> Result<Option<u64>> {
    since
        .map(|s| {
            let d = crate::config::parse_duration(s)?;
            Ok(crate::jobs::Jobs::now_ms().saturating_sub(d.as_millis() as u64))
        })
        .transpose()
}

pub(super) fn glob(g: Option<&str>) -> Result<Option<globset::GlobMatcher>> {
    g.map(|g| {
        globset::Glob::new(g)
            .map(|g| g.compile_matcher())
            .with_context(|| format!("bad glob {g:?}"))
    })
    .transpose()
}

pub(super) fn open(path: &Path) -> Result<rusqlite::Connection> {
    Ok(store::open_reader(path)?)
}

fn read_pubkey(k: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let text = if Path::new(k).is_file() {
        std::fs::read_to_string(k).with_context(|| format!("reading {k}"))?
    } else {
        k.to_string()
    };
    let b = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .context("--pubkey: not base64 (or a file holding it)")?;
    if b.len() != 32 {
        bail!(
            "--pubkey: an Ed25519 public key is 32 bytes, this is {}",
            b.len()
        );
    }
    Ok(b)
}

pub fn audit(cfg: &Config, cmd: AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Pubkey => {
            println!("{}", audit::public_key_of(&cfg.daemon.state_dir)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify {
            db,
            pubkey,
            anchors,
            json,
            fleet,
        } => {
            // Exit 1 means "the chain is broken"; a log or key that can't be
            // read says nothing about the chain, so it gets its own code.
            let unreadable = |what: &str, e: anyhow::Error| {
                eprintln!("hoop: cannot verify {what}: {e:#}");
                Ok(ExitCode::from(VERIFY_UNREADABLE))
            };
            if fleet.fleet && fleet.host_id.is_none() && (pubkey.is_some() || !anchors.is_empty()) {
                return unreadable(
                    "the fleet",
                    anyhow::anyhow!("--pubkey and --anchor name one host's chain: add --host-id"),
                );
            }
            let given = match agreeing(&anchors)
                .and_then(|()| pubkey.as_deref().map(read_pubkey).transpose())
            {
                Ok(k) => k,
                Err(e) => return unreadable("the log", e),
            };
            let logs = match Logs::of(cfg, db, &fleet, Scope::All) {
                Ok(l) => l,
                Err(e) => return unreadable("the log", e),
            };
            let mut codes = Vec::new();
            let mut reports = Vec::new();
            for log in &logs.logs {
                let label = match &log.host {
                    Some(h) => format!("host {h} (fleet)"),
                    None => log.path.display().to_string(),
                };
                let key = given.clone().or(log.public_key.clone());
                let mut r = match verify::verify_anchored(&log.path, key.as_deref(), &anchors) {
                    Ok(r) => r,
                    Err(e) => return unreadable(&label, e.into()),
                };
                if given.is_none() && log.host.is_some() {
                    r.key_source = "the key the host registered on the server".into();
                }
                // The tail's cut: the host's own mark says how far it shipped.
                if let Some(shipped) = log.shipped_seq
                    && r.ok()
                    && r.last.is_none_or(|l| l < shipped)
                {
                    let b = crate::audit::chain::Broken::Truncated {
                        seq: shipped,
                        last: r.last,
                    };
                    r.broken = Some(format!(
                        "the host shipped through record {shipped}, but {}: records were removed (truncated)",
                        r.last.map_or("the server holds none".into(), |l| format!(
                            "the server's chain ends at record {l}"
                        ))
                    ));
                    r.error = Some(b);
                }
                codes.push(exit_code(&r));
                if json {
                    let mut v = serde_json::to_value(&r)?;
                    if let Some(h) = &log.host {
                        v["host_id"] = serde_json::json!(h);
                    }
                    reports.push(v);
                } else {
                    print_report(&label, &r);
                }
            }
            if json {
                let out = match fleet.fleet {
                    true => serde_json::Value::Array(reports),
                    false => reports.pop().unwrap_or_default(),
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            if fleet.fleet && !json {
                println!("{} host(s) verified", logs.logs.len());
            }
            // The worst first: broken, then unreadable, then unsigned.
            let worst = [VERIFY_BROKEN, VERIFY_UNREADABLE, VERIFY_UNSIGNED]
                .into_iter()
                .find(|c| codes.contains(c))
                .unwrap_or(0);
            Ok(ExitCode::from(worst))
        }
    }
}

/// Exit codes of `hoop audit verify`, for scripts: a broken chain is not
/// an unvouched one.
pub const VERIFY_BROKEN: u8 = 1;
pub const VERIFY_UNREADABLE: u8 = 2;
pub const VERIFY_UNSIGNED: u8 = 3;

fn exit_code(r: &verify::Report) -> u8 {
    if !r.ok() {
        VERIFY_BROKEN
    } else if r.unsigned() > 0 {
        VERIFY_UNSIGNED
    } else {
        0
    }
}

/// Two anchors for one record must name the same hash: otherwise one of
/// them would go unchecked.
fn agreeing(anchors: &[verify::Anchor]) -> Result<()> {
    for (i, a) in anchors.iter().enumerate() {
        if anchors[..i]
            .iter()
            .any(|b| b.seq == a.seq && b.hash != a.hash)
        {
            bail!("two different anchors for record {}", a.seq);
        }
    }
    Ok(())
}

fn print_report(label: &str, r: &verify::Report) {
    let range = match (r.first, r.last) {
        (Some(f), Some(l)) => format!("records {f}..={l}"),
        _ => "no records".into(),
    };
    println!("{label}: {} record(s), {range}", r.records);
    println!(
        "checkpoints: {} (signed through record {}), key: {}",
        r.checkpoints,
        r.signed_through.map_or("-".to_string(), |s| s.to_string()),
        r.key_source
    );
    if r.anchors_checked > 0 {
        println!("anchors: {} found in the chain", r.anchors_checked);
    }
    for seq in &r.anchors_pruned {
        println!(
            "note: the anchor at record {seq} predates the log's first record (retention removed it); not checked"
        );
    }
    match &r.broken {
        Some(b) => println!("BROKEN: {b}"),
        None => {
            if let (Some(last), Some(h)) = (r.last, &r.head_hash) {
                println!(
                    "head: {last}:{h} (an anchor: kept off the host and given back as --anchor, it names a tail cut later)"
                );
            }
            for s in &r.unvouched {
                println!(
                    "{}: records {}..={} ({}), declared by the run that started at record {}",
                    UnvouchedData::REASON,
                    s.from,
                    s.to,
                    s.records(),
                    s.declared_at.unwrap_or_default()
                );
            }
            for s in &r.dropped {
                println!(
                    "dropped: records {}..={} ({}) were removed before the fleet's server had them (its spool was full, when_full = \"drop-oldest\"), as record {} declares",
                    s.from,
                    s.to,
                    s.records(),
                    s.declared_at.unwrap_or_default()
                );
            }
            if let Some(s) = &r.unsigned_tail {
                println!(
                    "{}: records {}..={} ({}), after the last signature",
                    UnvouchedData::REASON,
                    s.from,
                    s.to,
                    s.records()
                );
            }
            if r.unsigned() > 0 {
                println!(
                    "intact, but {} record(s) are unsigned (exit {VERIFY_UNSIGNED})",
                    r.unsigned()
                );
            } else {
                println!("ok: the chain is intact and every record is signed");
            }
        }
    }
}

pub fn sessions(cfg: &Config, cmd: SessionsCmd) -> Result<ExitCode> {
    match cmd {
        SessionsCmd::List {
            db,
            identity,
            job,
            host,
            since,
            json,
            fleet,
        } => {
            let filter = query::Filter {
                identity: glob(identity.as_deref())?,
                job,
                host: glob(host.as_deref())?,
                since_ms: since_ms(since.as_deref())?,
            };
            let logs = Logs::of(cfg, db, &fleet, scope_since(filter.since_ms))?;
            let mut list = Vec::new();
            for log in &logs.logs {
                let conn = open(&log.path)?;
                for s in query::sessions(&conn, &filter)? {
                    list.push((log.host.clone(), s));
                }
            }
            if json {
                let out: Vec<serde_json::Value> = list
                    .iter()
                    .map(|(h, s)| {
                        let mut v = serde_json::to_value(s).unwrap_or_default();
                        if let Some(h) = h {
                            v["host_id"] = serde_json::json!(h);
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            let host_col = |h: &str| match fleet.fleet {
                true => format!("{h:<20} "),
                false => String::new(),
            };
            println!(
                "{}{:<22} {:<24} {:<34} {:>5} {:>5} {:>5}  hosts",
                host_col("HOST_ID"),
                "SESSION",
                "FIRST",
                "IDENTITY",
                "REQ",
                "REFUS",
                "CONN✗"
            );
            for (h, s) in &list {
                println!(
                    "{}{:<22} {:<24} {:<34} {:>5} {:>5} {:>5}  {}",
                    host_col(h.as_deref().unwrap_or("-")),
                    s.session,
                    query::iso(s.first_ms),
                    s.identity.as_deref().unwrap_or("-"),
                    s.requests,
                    s.refused,
                    s.connects_denied,
                    s.hosts.join(",")
                        + &match s.observe {
                            true => format!("  (observe mode: {} observed)", s.observed),
                            false => String::new(),
                        }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCmd::Show { id, db, fleet } => {
            let recs = session_records(cfg, db, &fleet, &id)?;
            print!("{}", query::timeline(&recs));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A session's records: sessions are jobs, so one host holds them.
fn session_records(
    cfg: &Config,
    db: Option<PathBuf>,
    fleet: &FleetArgs,
    id: &str,
) -> Result<Vec<query::Stored>> {
    let logs = Logs::of(cfg, db, fleet, Scope::Session(id))?;
    for log in &logs.logs {
        let conn = open(&log.path)?;
        let recs = query::records(
            &conn,
            &query::Select {
                session: Some(id.to_string()),
                since_ms: None,
            },
        )?;
        if !recs.is_empty() {
            return Ok(recs);
        }
    }
    match fleet.fleet {
        true => bail!("no session {id:?} on the fleet's server (see `hoop sessions list --fleet`)"),
        false => bail!("no session {id:?} in the audit log (see `hoop sessions list`)"),
    }
}

pub fn export(cfg: &Config, cmd: ExportCmd) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        ExportCmd::Har { id, db, fleet } => {
            let recs = session_records(cfg, db, &fleet, &id)?;
            serde_json::to_writer_pretty(&mut out, &audit::har::har(&recs))?;
            writeln!(out)?;
        }
        ExportCmd::Jsonl {
            db,
            session,
            since,
            fleet,
        } => {
            let sel = query::Select {
                session,
                since_ms: since_ms(since.as_deref())?,
            };
            let scope = scope_of(&sel);
            let logs = Logs::of(cfg, db, &fleet, scope)?;
            for log in &logs.logs {
                let conn = open(&log.path)?;
                for r in query::records(&conn, &sel)? {
                    let line = query::jsonl_line(&r);
                    match &log.host {
                        None => writeln!(out, "{line}")?,
                        Some(h) => {
                            let mut v: serde_json::Value = serde_json::from_str(&line)?;
                            v["host_id"] = serde_json::json!(h);
                            writeln!(out, "{v}")?;
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

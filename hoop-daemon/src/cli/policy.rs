//! `hoop policy test` and `hoop policy suggest`: policy against the
//! record (`crate::review`).
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::{
    audit::{glob, open, scope_of, since_ms},
    fleet::{FleetArgs, Logs},
};
use crate::{audit::query, config::Config, review::suggest};

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Replay recorded requests through the policy of the config given with
    /// --config, and report what it would decide or mask differently.
    /// Nothing is sent.
    Test {
        #[command(flatten)]
        records: RecordArgs,
        #[arg(long)]
        json: bool,
    },
    /// Propose the least-privilege policy for what the record shows no
    /// connection covered (observe mode's `observed` requests and
    /// `no-connection` refusals): the config in force with its
    /// `[[observe]]` entries removed and one `[[connection]]` per
    /// registrable domain added. Never proposes a credential.
    Suggest {
        #[command(flatten)]
        records: RecordArgs,
        /// Only the requests of identities matching this glob.
        #[arg(long)]
        identity: Option<String>,
        /// Deny, per connection, the write methods (POST, PUT, PATCH,
        /// DELETE) never seen.
        #[arg(long)]
        tight: bool,
        /// Write the proposal here (0600) instead of to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Which recorded requests `hoop policy` reads.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    #[arg(long)]
    db: Option<PathBuf>,
    /// One session's requests.
    #[arg(long, conflicts_with = "since")]
    session: Option<String>,
    /// Requests recorded in this window, e.g. 24h (default: all).
    #[arg(long)]
    since: Option<String>,
    #[command(flatten)]
    fleet: FleetArgs,
}

impl RecordArgs {
    fn read(self, cfg: &Config) -> Result<Vec<query::Stored>> {
        let sel = query::Select {
            session: self.session,
            since_ms: since_ms(self.since.as_deref())?,
        };
        let logs = Logs::of(cfg, self.db, &self.fleet, scope_of(&sel))?;
        let mut recs = Vec::new();
        for log in &logs.logs {
            recs.extend(query::records(&open(&log.path)?, &sel)?);
        }
        Ok(recs)
    }
}

/// `cfg` is the candidate (`hoop policy test --config NEW.toml`).
pub fn policy(cfg: &Config, cmd: PolicyCmd) -> Result<ExitCode> {
    let (records, json) = match cmd {
        PolicyCmd::Test { records, json } => (records, json),
        PolicyCmd::Suggest {
            records,
            identity,
            tight,
            out,
        } => {
            let opts = suggest::Options {
                tight,
                identity: glob(identity.as_deref())?,
            };
            return suggest(cfg, records, opts, out);
        }
    };
    let candidate = crate::policy::Policy::compile(cfg, None)?;
    let recs = records.read(cfg)?;
    let r = crate::review::dryrun::replay(&candidate, &recs);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    for c in &r.changes {
        println!(
            "#{} {} {} ({}): was {}, now {}",
            c.seq, c.method, c.url, c.identity, c.was, c.now
        );
    }
    for m in &r.masking {
        let what: Vec<String> = m.masked.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        println!(
            "#{} {}: would now mask {} in the response",
            m.seq,
            m.url,
            what.join(", ")
        );
    }
    println!(
        "{} recorded request(s) replayed through {}: {} decided differently ({} now refused), {} masked differently",
        r.replayed,
        cfg.source.display(),
        r.changes.len(),
        r.refused_now,
        r.masking.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `hoop policy suggest`: the proposal, checked before it is shown: it
/// loads, and the same records replayed through it are refused nowhere.
fn suggest(
    cfg: &Config,
    records: RecordArgs,
    opts: suggest::Options,
    out: Option<PathBuf>,
) -> Result<ExitCode> {
    if let Some(o) = &out
        && same_file(o, &cfg.source)
    {
        bail!(
            "--out {} is the config in force: write the proposal elsewhere, review it, then move it into place",
            o.display()
        );
    }
    let current = crate::policy::Policy::compile(cfg, None)?;
    let recs = records.read(cfg)?;
    let proposal = suggest::propose(&current, &recs, &opts);
    let text = with_config(cfg, &proposal)?;
    // What it promises, checked: it loads as it is, and nothing it was
    // made from would be refused by it.
    let at = out.clone().unwrap_or_else(|| PathBuf::from("<proposal>"));
    let loaded = Config::parse(&text, &at)
        .and_then(|c| crate::policy::Policy::compile(&c, None))
        .with_context(|| {
            format!("the proposal does not load (a bug in hoop policy suggest):\n{text}")
        })?;
    let check = crate::review::dryrun::replay(&loaded, &recs);
    match &out {
        // It holds the operator's config, the places of secrets included.
        Some(path) => crate::tls::ca::replace(path, text.as_bytes(), 0o600)?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    let hosts: usize = proposal.connections.iter().map(|c| c.hosts.len()).sum();
    eprintln!(
        "hoop policy suggest: {} connection(s) for {hosts} host pattern(s), from {} request(s) no connection covered{}",
        proposal.connections.len(),
        proposal.requests,
        out.as_ref()
            .map(|p| format!("; written to {}", p.display()))
            .unwrap_or_default()
    );
    if proposal.connections.is_empty() {
        eprintln!(
            "  nothing to propose: the record holds no observed or no-connection request{}",
            if cfg.observe.is_empty() {
                " (to observe a job first, add an [[observe]] entry for its identity: docs/configuration.md)"
            } else {
                ""
            }
        );
    }
    eprintln!(
        "  checked: it loads, and {} recorded request(s) replayed through it: {} refused",
        check.replayed, check.refused_now
    );
    for c in check.changes.iter().filter(|c| c.now.refused()) {
        eprintln!(
            "  still refused: #{} {} {} ({}): {}",
            c.seq, c.method, c.url, c.identity, c.now
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The config in force, its `[[observe]]` entries removed (observe mode
/// ends with the policy it teaches), and the proposal after it. Comments
/// and layout of the operator's file stay as they are.
fn with_config(cfg: &Config, proposal: &suggest::Proposal) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = cfg
        .text
        .parse()
        .with_context(|| format!("reading {} as a document", cfg.source.display()))?;
    let observed = doc.remove("observe").is_some();
    let mut text = format!(
        "# The config in force ({}){}, and the connections\n# `hoop policy suggest` proposes after it. Review before use.\n\n",
        cfg.source.display(),
        if observed {
            " without its [[observe]] entries"
        } else {
            ""
        }
    );
    let own = doc.to_string();
    text.push_str(own.trim_end());
    if !own.trim().is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(&proposal.to_toml());
    Ok(text)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

//! The `hoop` command line: one binary for the daemon and its clients.
mod audit;
mod ca;
mod doctor;
mod fleet;
mod policy;
mod run;
mod sandbox;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    config::Config,
    control::{Request, Response, Status, client_request},
};

#[derive(Parser, Debug)]
#[command(
    name = "hoop",
    version,
    about = "Transparent, eBPF-enforced access gateway for automation jobs"
)]
pub struct Cli {
    /// Config file. Default: /etc/hoop/hoop.toml if it exists, else the embedded defaults.
    #[arg(long, global = true, env = "HOOP_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the gateway daemon (as root).
    Daemon,
    /// Serve the approver console on a host that runs no jobs: the
    /// fleet's shared queue, with no kernel programs, listeners or
    /// proxies (the daemon with `[capture]` and `[proxy]` off).
    Console {
        /// Show the fleet's queue (`[fleet] postgres`): required, since a
        /// host without jobs holds no requests of its own.
        #[arg(long)]
        fleet: bool,
    },
    /// Run CMD as a job: every TCP connect it makes goes through the daemon.
    Run {
        /// A file holding the job's OIDC token (e.g. from the CI provider).
        #[arg(long, value_name = "FILE", conflicts_with = "token_env")]
        token_file: Option<PathBuf>,
        /// An environment variable holding the job's OIDC token.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
        /// Run CMD as this account (name or uid), with that account's
        /// groups, not the caller's. Needs root.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Leave CMD's CA variables alone (by default they name a bundle
        /// with hoop's CA: SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, …).
        #[arg(long)]
        no_trust_env: bool,
        /// Make the job's browsers trust hoop: add its CA to the job user's
        /// NSS database (`--nss`, as that user), or to one of the job's own
        /// (`--nss=private`, with HOME set to the job's directory).
        #[arg(long, value_name = "WHERE", num_args = 0..=1, default_missing_value = "home")]
        nss: Option<run::Nss>,
        /// Observe mode for this job: what no connection covers is
        /// forwarded and recorded as `observed`, not refused. For root or
        /// the control group, and only where an `[[observe]]` entry names
        /// the job's identity.
        #[arg(long)]
        observe: bool,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Re-read the config file and apply its policy (same as SIGHUP). A
    /// broken file is refused and the running policy stays.
    Reload,
    /// Held requests waiting for a human, and recent decisions.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Show the daemon, attached programs, jobs and live connections.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove hoop's kernel programs and pinned maps (with the daemon stopped).
    Detach,
    /// Validate a config file (default: the one the daemon would use).
    CheckConfig { path: Option<PathBuf> },
    /// Whether jobs can use hoop as they are: for each common runtime on
    /// this host (curl, node, python3, java, chromium), a probe in a job
    /// fetches URL through hoop with certificate verification on.
    Doctor {
        /// An https:// URL a job would fetch (one your policy allows).
        url: String,
    },
    /// The local CA that jobs must trust.
    #[command(subcommand)]
    Ca(CaCmd),
    /// The tamper-evident audit log: verify it, print its public key.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Recorded sessions (one per job): list them, show one as a timeline.
    #[command(subcommand)]
    Sessions(audit::SessionsCmd),
    /// Export the record: a session as HAR, or records as JSON lines.
    #[command(subcommand)]
    Export(audit::ExportCmd),
    /// Try a candidate policy (--config NEW.toml) on recorded requests.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// Pending approvals first, then recent ones.
    List {
        #[arg(long)]
        json: bool,
        /// Only the requests still waiting for a decision.
        #[arg(long)]
        pending: bool,
    },
    /// Approve a held request (the job's own uid never can).
    Approve {
        id: String,
        /// Also let the same rule through for the same job this long (10m, 1h).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
    },
    /// Deny a held request; the job sees the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Print the CA certificate (PEM).
    Export,
    /// Print base64(SHA-256(SPKI)) for Chromium's --ignore-certificate-errors-spki-list.
    Spki,
    /// Add the CA to an NSS database (Chromium, Firefox) with certutil.
    InstallNss {
        /// The user whose ~/.pki/nssdb gets the CA.
        #[arg(long, conflicts_with = "dir")]
        user: Option<String>,
        /// An NSS database directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Read the CA from standard input (how `--user` runs itself as
        /// that user, who can't read the state dir).
        #[arg(long, hide = true, requires = "dir")]
        pem_stdin: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hoop: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    if let Cmd::Ca(CaCmd::InstallNss {
        dir: Some(dir),
        pem_stdin: true,
        ..
    }) = &cli.command
    {
        // The half of `install-nss --user` that runs as the user: no
        // config, no state dir, only the CA it is handed.
        let mut pem = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut pem)?;
        ca::add_to_nss(dir, &pem)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::CheckConfig { path } = &cli.command {
        let cfg = Config::load(path.as_deref().or(cli.config.as_deref()))?;
        // What the daemon would do at start or reload: globs, secrets, CAs.
        let policy = crate::policy::Policy::compile(&cfg, None)?;
        println!(
            "{}: ok ({} connection(s), {} OIDC issuer(s))",
            cfg.source.display(),
            policy.connections.len(),
            cfg.identity.oidc.len()
        );
        for o in policy.observe.status(crate::jobs::Jobs::now_ms()) {
            println!("observe mode {o}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = match &cli.command {
        // Clients only need the control socket: a config file broken by an
        // edit must not stop jobs from starting, or `hoop reload` from
        // reporting what is wrong with it.
        Cmd::Run { .. }
        | Cmd::Status { .. }
        | Cmd::Reload
        | Cmd::Approvals(_)
        | Cmd::Doctor { .. } => Config::load(cli.config.as_deref())
            .or_else(|e| client_fallback(cli.config.as_deref(), e))?,
        _ => Config::load(cli.config.as_deref())?,
    };
    match cli.command {
        Cmd::Daemon => {
            crate::logging::init();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Console { fleet } => {
            if !fleet {
                anyhow::bail!(
                    "a console on a host that runs no jobs shows the fleet's queue: pass --fleet (and set [fleet] postgres)"
                );
            }
            if !cfg.fleet.enabled() {
                anyhow::bail!("--fleet: {} sets no [fleet] postgres", cfg.source.display());
            }
            if cfg.console.listen.is_none() || cfg.console.oidc.is_none() {
                anyhow::bail!(
                    "{} sets no [console] listen and [console.oidc]: there is no console to serve",
                    cfg.source.display()
                );
            }
            let mut cfg = cfg;
            cfg.capture.enabled = false;
            cfg.proxy.listen.clear();
            crate::logging::init();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            token_file,
            token_env,
            user,
            no_trust_env,
            nss,
            observe,
            command,
        } => {
            let token = read_token(token_file.as_deref(), token_env.as_deref())?;
            run::run(
                &cfg,
                token,
                token_env.as_deref(),
                user.as_deref(),
                run::Trust {
                    env: !no_trust_env,
                    nss,
                },
                observe,
                command,
            )
        }
        Cmd::Approvals(a) => approvals(&cfg, a),
        Cmd::Reload => match request(&cfg, &Request::Reload)? {
            Response::Reloaded { message } => {
                println!("{message}");
                Ok(ExitCode::SUCCESS)
            }
            other => bail!("unexpected answer: {other:?}"),
        },
        Cmd::Status { json } => {
            let status = match request(&cfg, &Request::Status)? {
                Response::Status(s) => s,
                other => bail!("unexpected answer: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Detach => detach(&cfg),
        Cmd::Ca(c) => {
            match c {
                CaCmd::Export => print!("{}", ca::read_pem(&cfg)?),
                CaCmd::Spki => println!("{}", ca::spki(&ca::read_pem(&cfg)?)?),
                CaCmd::InstallNss { user, dir, .. } => {
                    let db = ca::install_nss(&cfg, user.as_deref(), dir.as_deref())?;
                    println!("hoop CA added to the NSS database {}", db.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit(c) => audit::audit(&cfg, c),
        Cmd::Sessions(c) => audit::sessions(&cfg, c),
        Cmd::Export(c) => audit::export(&cfg, c),
        Cmd::Policy(c) => policy::policy(&cfg, c),
        Cmd::CheckConfig { .. } => unreachable!(),
        Cmd::Doctor { url } => doctor::doctor(&cfg, &url),
    }
}

/// The embedded defaults with the file's `daemon.runtime_dir`, when the
/// file is valid TOML but not a valid config.
fn client_fallback(
    path: Option<&std::path::Path>,
    e: crate::config::ConfigError,
) -> Result<Config> {
    let path = path
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| crate::config::SYSTEM_CONFIG.into());
    let table: toml::Table = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "hoop: warning: {e}\nhoop: (using the file's daemon.runtime_dir only, to reach the daemon)"
    );
    let mut cfg = Config::embedded();
    if let Some(dir) = table
        .get("daemon")
        .and_then(|d| d.get("runtime_dir"))
        .and_then(|d| d.as_str())
    {
        cfg.daemon.runtime_dir = dir.into();
    }
    Ok(cfg)
}

fn request(cfg: &Config, req: &Request) -> Result<Response> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(client_request(&cfg.control_socket(), req))? {
        Response::Error { message } => bail!("{message}"),
        ok => Ok(ok),
    }
}

fn approvals(cfg: &Config, a: ApprovalsCmd) -> Result<ExitCode> {
    let req = match a {
        ApprovalsCmd::List { json, pending } => {
            let Response::Approvals { mut rows } = request(cfg, &Request::ApprovalsList)? else {
                bail!("unexpected answer");
            };
            if pending {
                rows.retain(|r| r.status == "pending");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no {}approvals", if pending { "pending " } else { "" });
            } else {
                for r in rows {
                    println!(
                        "{}  {:<9} {} {}  identity {}  job {}  rule {}/{}{}",
                        r.id,
                        r.status,
                        r.method,
                        r.url,
                        r.identity,
                        r.job.as_deref().unwrap_or("-"),
                        r.connection,
                        r.rule,
                        r.decided_by
                            .map(|b| format!("  by {b}"))
                            .unwrap_or_default()
                    );
                    if let Some(h) = &r.body_sha256 {
                        println!(
                            "    body sha256 {h}: {}",
                            r.body.as_deref().unwrap_or("").escape_debug()
                        );
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        ApprovalsCmd::Approve { id, for_ } => Request::ApprovalsApprove {
            id,
            for_secs: for_
                .map(|d| crate::config::parse_duration(&d).map(|d| d.as_secs()))
                .transpose()
                .map_err(anyhow::Error::msg)?,
        },
        ApprovalsCmd::Deny { id, reason } => Request::ApprovalsDeny { id, reason },
    };
    match request(cfg, &req)? {
        Response::Decided { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// The job's token, from a file or a variable.
fn read_token(file: Option<&std::path::Path>, var: Option<&str>) -> Result<Option<String>> {
    let token = if let Some(f) = file {
        std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?
    } else if let Some(v) = var {
        std::env::var(v).with_context(|| format!("the token variable {v} is not set"))?
    } else {
        return Ok(None);
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(Some(token))
}

fn detach(cfg: &Config) -> Result<ExitCode> {
    if let Ok(Response::Status(s)) = request(cfg, &Request::Status) {
        bail!(
            "the hoop daemon (pid {}) is running; stop it first (systemctl stop hoop), then \
             run `hoop detach` again",
            s.pid
        );
    }
    let removed = crate::capture::detach(&cfg.capture.bpf_pin_dir)
        .with_context(|| format!("removing pins under {}", cfg.capture.bpf_pin_dir.display()))?;
    for p in &removed {
        println!("removed {}", p.display());
    }
    if let Ok(mount) = crate::cgroup::discover_mount() {
        let root = mount.join(&cfg.capture.cgroup);
        remove_empty_cgroups(&root);
    }
    println!(
        "hoop detached: no programs or maps remain under {}",
        cfg.capture.bpf_pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes job cgroups that are empty and the root if it is then empty. A
/// cgroup that still has processes is left (and reported).
fn remove_empty_cgroups(root: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("job-"))
            {
                match std::fs::remove_dir(&p) {
                    Ok(()) => println!("removed {}", p.display()),
                    Err(err) => eprintln!("hoop: left {} in place: {err}", p.display()),
                }
            }
        }
    }
    if root.exists() && std::fs::remove_dir(root).is_ok() {
        println!("removed {}", root.display());
    }
}

fn print_status(s: &Status) {
    println!("daemon     pid {} (config {})", s.pid, s.config);
    println!("cgroup     {} (id {})", s.root_cgroup, s.root_cgroup_id);
    println!(
        "listen     {}",
        if s.capture {
            s.listen.join(" ")
        } else {
            "- (capture disabled)".into()
        }
    );
    println!(
        "proxy      {}",
        if s.proxy.is_empty() {
            "-".into()
        } else {
            s.proxy.join(" ")
        }
    );
    println!("pins       {}", s.pin_dir);
    println!(
        "programs   (the kernel lists {} links on the hoop cgroup)",
        s.kernel_links_on_root
    );
    for l in &s.links {
        println!(
            "  {:<20} link {:<6} prog {:<6}{}",
            l.program,
            l.link_id,
            l.prog_id,
            if l.reused { " (reused)" } else { "" }
        );
    }
    for o in &s.observe {
        println!(
            "observe    {o}: what no connection covers is forwarded and recorded, not refused"
        );
    }
    println!("jobs ({})", s.jobs.len());
    for j in &s.jobs {
        println!(
            "  {}  identity {}  pid {}  denied {}{}  {}",
            j.job.id,
            j.job.identity.name,
            j.job.pid,
            j.denied,
            if j.job.observe { "  observe" } else { "" },
            j.job.command.join(" ")
        );
    }
    let t = &s.traffic;
    let requests: Vec<String> = t.requests.iter().map(|(o, n)| format!("{n} {o}")).collect();
    println!(
        "traffic    {} connections; requests {}; {} upstream errors; {} values masked; {} approvals pending",
        t.connections,
        requests.join(", "),
        t.upstream_errors,
        t.masked,
        t.approvals_pending
    );
    match &s.audit {
        Some(a) => println!(
            "audit      {}: {} records in {} commits this run, {} failed, {} queued, last commit {} µs",
            a.db, a.records, a.commits, a.failures, a.queued, a.last_commit_us
        ),
        None => println!("audit      off ([audit] enabled = false)"),
    }
    if let Some(f) = &s.fleet {
        println!(
            "fleet      host {} -> {}: {}; shipped through {}, local head {}; lag {} records, {} s{}",
            f.host_id,
            f.server,
            if f.connected {
                "connected"
            } else {
                "NOT connected"
            },
            f.shipped_seq.map_or("-".into(), |s| s.to_string()),
            f.local_seq.map_or("-".into(), |s| s.to_string()),
            f.lag_records,
            f.lag_seconds,
            f.error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
        match &f.approvals_error {
            None => println!("           approvals: the fleet's shared queue"),
            Some(e) => {
                println!("           approvals: this host's only; the fleet's queue is away ({e})")
            }
        }
    }
    println!("connections ({})", s.connections.len());
    for c in &s.connections {
        println!(
            "  #{:<5} {} -> {}  pid {} {}",
            c.id,
            c.job.as_deref().unwrap_or("-"),
            c.orig_dst,
            c.pid,
            c.exe.as_deref().unwrap_or("")
        );
    }
}

//! `--fleet`: the commands that read the record read the fleet's server
//! instead of this host's log. Each host's shipped batches come back into
//! a scratch SQLite file ([`crate::fleet::read::mirror`]) and the command
//! runs on it as on a local log, once per host.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::{
    config::Config,
    fleet::{
        Target,
        read::{self, Scope},
    },
};

/// The flags every reading command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Read the fleet's server (`[fleet] postgres`) instead of this host's
    /// log: every host's shipped record.
    #[arg(long, conflicts_with = "db")]
    pub fleet: bool,
    /// With --fleet: this host only (its `[fleet] host_id`).
    #[arg(long, requires = "fleet")]
    pub host_id: Option<String>,
}

/// One log to read: this host's, or a host's on the fleet's server.
pub struct Log {
    /// The fleet's host id (none for this host's own log).
    pub host: Option<String>,
    pub path: PathBuf,
    /// The key the host registered on the server.
    pub public_key: Option<Vec<u8>>,
    /// The last record the host says it shipped (the server's `hosts` row).
    pub shipped_seq: Option<u64>,
}

/// The logs a command reads; the scratch files go with it.
pub struct Logs {
    pub logs: Vec<Log>,
    _dir: Option<tempfile::TempDir>,
}

impl Logs {
    /// This host's log at `path`.
    pub fn local(path: PathBuf) -> Self {
        Self {
            logs: vec![Log {
                host: None,
                path,
                public_key: None,
                shipped_seq: None,
            }],
            _dir: None,
        }
    }

    /// The hosts' logs on the fleet's server, with the batches in `scope`.
    pub fn fleet(cfg: &Config, args: &FleetArgs, scope: Scope<'_>) -> Result<Self> {
        if !cfg.fleet.enabled() {
            bail!(
                "--fleet reads the server in [fleet] postgres, and {} has none",
                cfg.source.display()
            );
        }
        let target = Target::of(&cfg.fleet)?;
        let dir = tempfile::Builder::new()
            .prefix("hoop-fleet-")
            .tempdir()
            .context("a scratch directory for the fleet's logs")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let logs = rt.block_on(async {
            let client = target
                .connect()
                .await
                .with_context(|| format!("connecting to {}", target.display))?;
            let mut logs = Vec::new();
            for host in read::hosts(&client, args.host_id.as_deref()).await? {
                let path = dir.path().join(format!("{}.db", host.host_id));
                let n = read::mirror(&client, &host, scope, &path)
                    .await
                    .with_context(|| format!("reading host {}'s batches", host.host_id))?;
                if n == 0 && !matches!(scope, Scope::All) {
                    continue;
                }
                use base64::Engine;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(host.public_key.trim())
                    .ok();
                logs.push(Log {
                    host: Some(host.host_id),
                    path,
                    public_key: key,
                    shipped_seq: host.shipped_seq,
                });
            }
            anyhow::Ok(logs)
        })?;
        Ok(Self {
            logs,
            _dir: Some(dir),
        })
    }

    /// Local or fleet, as the flags say.
    pub fn of(
        cfg: &Config,
        db: Option<PathBuf>,
        args: &FleetArgs,
        scope: Scope<'_>,
    ) -> Result<Self> {
        match args.fleet {
            true => Self::fleet(cfg, args, scope),
            false => Ok(Self::local(db.unwrap_or_else(|| {
                cfg.daemon.state_dir.join(crate::audit::DB_FILE)
            }))),
        }
    }
}

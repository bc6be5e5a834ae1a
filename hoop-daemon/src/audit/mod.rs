//! The tamper-evident audit log: every request, response, decision,
//! approval and refused connect becomes a hash-chained record in SQLite
//! (`<state_dir>/audit.db`), each commit's head signed. A request goes
//! upstream only once its record is durable ([`Audit::commit`]); a failed
//! write fails the request. Records are encoded, compressed and hashed on
//! the caller's task ([`seal`]); the writer thread only chains and appends.
pub mod chain;
pub mod entry;
pub mod har;
pub mod query;
pub mod seal;
pub mod store;
pub mod verify;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use ring::signature::Ed25519KeyPair;

pub use crate::config::audit::{AuditConfig, Sync};
pub use entry::Entry;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log could not record this request: {0}")]
    Write(String),
    #[error(
        "the fleet's server lacks {unshipped} records of this host, the most it may ([fleet] max_unshipped = {max}); requests are refused until it takes them"
    )]
    SpoolFull { unshipped: u64, max: u64 },
    #[error("the audit writer has stopped")]
    Stopped,
}

/// Why the audit service could not start (the daemon then does not).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("audit database {}: {source}", path.display())]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "audit database {}: the chain is broken ({broken}); refusing to extend it. Run `hoop audit verify --db {}` and move the file aside to start a new log",
        path.display(),
        path.display()
    )]
    Broken { path: PathBuf, broken: String },
    #[error(
        "audit database {} was signed with another key than {}; restore that key, or move the database aside to start a new log",
        db.display(),
        key.display()
    )]
    OtherKey { db: PathBuf, key: PathBuf },
    #[error("audit key {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    #[error(transparent)]
    File(#[from] crate::tls::TlsError),
    #[error("audit: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

type Reply = tokio::sync::oneshot::Sender<Result<u64, AuditError>>;

/// One commit's answers, for [`Replies`] to hand out.
type Answers = Vec<(Reply, Result<u64, AuditError>)>;

/// Hands each commit's answers to their waiters from a task on the
/// daemon's runtime. The writer thread sends one message per commit: one
/// cross-thread wake-up for the whole group, where a oneshot per waiter
/// cost one each (an eventfd write whenever the worker had parked, and a
/// switch to it mid-commit: 7 per commit on one shared core); the
/// dispatcher's wakes are local to the runtime.
struct Replies {
    tx: tokio::sync::mpsc::UnboundedSender<Answers>,
    /// Taken by the first [`Audit::commit`]: spawned on its runtime.
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Answers>>>,
    started: std::sync::OnceLock<()>,
}

impl Replies {
    fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            started: std::sync::OnceLock::new(),
        }
    }

    /// Called before the first waited record is sent. The dispatcher runs
    /// on that caller's runtime if it is multi-threaded (the daemon's:
    /// its workers keep running it). Anywhere else (off a runtime, or a
    /// current-thread one, which runs its tasks only inside `block_on`
    /// and would leave other callers' answers waiting) the channel is
    /// closed, and the writer answers each waiter itself.
    fn start(&self) {
        self.started.get_or_init(|| {
            let Some(mut rx) = self.rx.lock().expect("not poisoned").take() else {
                return;
            };
            let rt = tokio::runtime::Handle::try_current()
                .ok()
                .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if let Some(rt) = rt {
                rt.spawn(async move {
                    while let Some(answers) = rx.recv().await {
                        for (reply, result) in answers {
                            let _ = reply.send(result);
                        }
                    }
                });
            }
        });
    }
}

/// The writer's end of [`Replies`].
#[derive(Clone)]
struct Answer(tokio::sync::mpsc::UnboundedSender<Answers>);

impl Answer {
    fn send(&self, answers: Answers) {
        if answers.is_empty() {
            return;
        }
        // The dispatcher's runtime is gone: answer directly.
        if let Err(e) = self.0.send(answers) {
            for (reply, result) in e.0 {
                let _ = reply.send(result);
            }
        }
    }
}

enum Cmd {
    Append(seal::Sealed, Option<Reply>),
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicU64,
    pub records: AtomicU64,
    pub commits: AtomicU64,
    pub failures: AtomicU64,
    pub last_commit_us: AtomicU64,
    /// Time spent committing, in total.
    pub commit_us: AtomicU64,
    /// Where the next record goes: the records in the log end before it.
    pub next_seq: AtomicU64,
}

/// The daemon's handle on the writer thread (cheap to clone).
#[derive(Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<Cmd>>,
    replies: Option<Arc<Replies>>,
    pub stats: Arc<Stats>,
    pub path: Option<PathBuf>,
    spool: Option<Arc<Spool>>,
}

/// Fleet mode's spool: the records the fleet's server lacks, kept by
/// retention and bounded.
#[derive(Debug)]
pub struct Spool {
    /// The first record the server does not have (the shipper moves it).
    pub keep_from: Arc<AtomicU64>,
    /// The first record after the writer's last cut at the cap (with
    /// `drop-oldest`): those before it the server will never have.
    pub first_kept: AtomicU64,
    pub max: u64,
    pub when_full: crate::config::fleet::WhenFull,
    full: std::sync::atomic::AtomicBool,
}

impl Spool {
    /// Records in the local log, before `next`, that are still to ship.
    pub fn unshipped(&self, next: u64) -> u64 {
        let from = self.keep_from.load(Ordering::Acquire);
        next.saturating_sub(from.max(self.first_kept.load(Ordering::Acquire)))
    }

    pub fn new(max: u64, when_full: crate::config::fleet::WhenFull) -> Arc<Self> {
        Arc::new(Self {
            keep_from: Arc::new(AtomicU64::new(0)),
            first_kept: AtomicU64::new(0),
            max,
            when_full,
            full: Default::default(),
        })
    }
}

/// The database and key file names under the state dir.
pub const DB_FILE: &str = "audit.db";
pub const KEY_FILE: &str = "audit-key.pk8";

impl Audit {
    /// Recording off: commits succeed at once and nothing is kept.
    pub fn disabled() -> Self {
        Self {
            tx: None,
            replies: None,
            stats: Arc::default(),
            path: None,
            spool: None,
        }
    }

    /// Opens the database, loads (or creates) the signing key and starts
    /// the writer thread. Any problem here stops the daemon from starting:
    /// it must not serve without its record.
    pub fn start(cfg: &AuditConfig, state_dir: &Path) -> Result<Self, StartError> {
        Self::start_with(cfg, state_dir, None)
    }

    /// [`Audit::start`] in fleet mode: retention never removes a record
    /// the server does not have yet, and past the spool's cap requests are
    /// refused.
    pub fn start_with(
        cfg: &AuditConfig,
        state_dir: &Path,
        spool: Option<Arc<Spool>>,
    ) -> Result<Self, StartError> {
        if !cfg.enabled {
            tracing::warn!("audit disabled ([audit] enabled = false): nothing is recorded");
            return Ok(Self::disabled());
        }
        let path = state_dir.join(DB_FILE);
        let max = (cfg.max_db_bytes > 0).then_some(cfg.max_db_bytes);
        let db = store::open_writer(&path, cfg.sync, max)?;
        let key = load_or_create_key(&state_dir.join(KEY_FILE))?;
        let pubkey = encode_key(&chain::public_key(&key));
        let database = |source| StartError::Database {
            path: path.clone(),
            source,
        };
        match store::meta(&db, "public_key").map_err(database)? {
            Some(k) if k != pubkey => {
                return Err(StartError::OtherKey {
                    db: path,
                    key: state_dir.join(KEY_FILE),
                });
            }
            Some(_) => {}
            None => store::set_meta(&db, "public_key", &pubkey).map_err(database)?,
        }
        let stats = Arc::new(Stats::default());
        let replies = Arc::new(Replies::new());
        let w = writer::Writer::resume(
            db,
            path.clone(),
            key,
            stats.clone(),
            cfg.checkpoint_interval(),
            cfg.retention(),
            Answer(replies.tx.clone()),
        )?
        .spooling(spool.clone());
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("hoop-audit".into())
            .spawn(move || {
                if let Err(e) = crate::sys::sched_batch_self() {
                    tracing::debug!(error = %e, "audit writer: SCHED_BATCH not set");
                }
                w.run(rx)
            })
            .map_err(|source| StartError::Io {
                what: "starting the writer thread",
                source,
            })?;
        tracing::info!(db = %path.display(), public_key = %pubkey, sync = ?cfg.sync, "audit log");
        Ok(Self {
            tx: Some(tx),
            replies: Some(replies),
            stats,
            path: Some(path),
            spool,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Appends `e` and waits until it is durable: its sequence number.
    pub async fn commit(&self, e: Entry) -> Result<u64, AuditError> {
        let Some(tx) = &self.tx else { return Ok(0) };
        if let Some(s) = &self.spool {
            self.spool_room(s)?;
        }
        if let Some(r) = &self.replies {
            r.start();
        }
        let sealed = seal::Sealed::of(e);
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(Cmd::Append(sealed, Some(reply))).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(AuditError::Stopped);
        }
        rx.await.unwrap_or(Err(AuditError::Stopped))
    }

    /// Refuses past the spool's cap; records each crossing of it.
    fn spool_room(&self, s: &Spool) -> Result<(), AuditError> {
        // At the cap the writer drops the oldest and records it.
        if s.when_full == crate::config::fleet::WhenFull::DropOldest {
            return Ok(());
        }
        let unshipped = s.unshipped(self.stats.next_seq.load(Ordering::Acquire));
        let full = unshipped >= s.max;
        if full != s.full.swap(full, Ordering::AcqRel) {
            let event = if full { "spool-full" } else { "spool-drained" };
            if full {
                tracing::error!(unshipped, max = s.max, action = ?s.when_full, "fleet: the spool is full; requests are refused until the server takes records");
            } else {
                tracing::info!(
                    unshipped,
                    max = s.max,
                    "fleet: the spool drained below its cap"
                );
            }
            self.record(Entry::of(&entry::FleetData {
                session: String::new(),
                event: event.into(),
                unshipped,
                max: s.max,
                action: s.when_full,
            }));
        }
        match full {
            true => Err(AuditError::SpoolFull {
                unshipped,
                max: s.max,
            }),
            false => Ok(()),
        }
    }

    /// Appends `e` without waiting (what follows a forwarded request: the
    /// response, decisions, refusals). A failure is logged by the writer.
    pub fn record(&self, e: Entry) {
        let Some(tx) = &self.tx else { return };
        let sealed = seal::Sealed::of(e);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(Cmd::Append(sealed, None)).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("audit writer stopped: a record was lost");
        }
    }

    /// Writes what is queued, keeps the head's signature and stops the writer.
    pub fn shutdown(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = std::sync::mpsc::channel();
        if tx.send(Cmd::Shutdown(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn load_or_create_key(path: &Path) -> Result<Ed25519KeyPair, StartError> {
    let key = |detail: String| StartError::Key {
        path: path.into(),
        detail,
    };
    let pkcs8 = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| key("cannot generate an Ed25519 key".into()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| key(e.to_string()))?;
            }
            crate::tls::ca::write_new(path, doc.as_ref(), 0o600)?;
            tracing::info!(key = %path.display(), "audit signing key created");
            doc.as_ref().to_vec()
        }
        Err(e) => return Err(key(format!("cannot read it: {e}"))),
    };
    Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| key(format!("not an Ed25519 PKCS#8 key ({e})")))
}

/// The public key as printed and accepted by `--pubkey`: base64.
pub fn encode_key(k: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The public key of the signing key in `state_dir`.
pub fn public_key_of(state_dir: &Path) -> Result<String, StartError> {
    Ok(encode_key(&public_key_bytes(state_dir)?))
}

/// [`public_key_of`], as bytes.
pub fn public_key_bytes(state_dir: &Path) -> Result<Vec<u8>, StartError> {
    let path = state_dir.join(KEY_FILE);
    let key = |detail: String| StartError::Key {
        path: path.clone(),
        detail,
    };
    let b = std::fs::read(&path).map_err(|e| key(format!("cannot read it: {e}")))?;
    let k = Ed25519KeyPair::from_pkcs8(&b)
        .map_err(|e| key(format!("not an Ed25519 PKCS#8 key ({e})")))?;
    Ok(chain::public_key(&k))
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod tests;

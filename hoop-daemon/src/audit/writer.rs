//! The audit writer thread: the only writer of the database. It takes
//! entries over a channel, chains and commits them in groups (one
//! transaction, one sync for everything that queued meanwhile), answers
//! each waiter once its entry is durable, signs checkpoints, and prunes.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::Ordering,
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use ring::signature::Ed25519KeyPair;
use rusqlite::Connection;

use super::{
    AuditError, Cmd, Entry, Stats,
    chain::{self, GENESIS, Record},
    store,
};
use crate::jobs::Jobs;

/// At most this many entries per transaction: bounds a commit's latency.
const MAX_BATCH: usize = 1024;
/// Bodies are stored zstd-compressed; level 1 keeps the writer fast.
const ZSTD_LEVEL: i32 = 1;

pub struct Writer {
    pub db: Connection,
    pub path: PathBuf,
    pub key: Ed25519KeyPair,
    pub stats: Arc<Stats>,
    pub checkpoint_every: Duration,
    pub retain: Option<Duration>,
    /// Where the next record goes.
    next: u64,
    prev: [u8; 32],
    signed_through: Option<u64>,
}

impl Writer {
    /// Picks up the chain where the database ends. The records after the
    /// last checkpoint are checked first: the writer signs them at its next
    /// checkpoint and must not vouch for a tail it did not write intact.
    pub fn resume(
        db: Connection,
        path: PathBuf,
        key: Ed25519KeyPair,
        stats: Arc<Stats>,
        checkpoint_every: Duration,
        retain: Option<Duration>,
    ) -> Result<Self, String> {
        let fail = |e: rusqlite::Error| format!("audit database {}: {e}", path.display());
        let head = store::head(&db).map_err(fail)?;
        let signed_through = store::last_checkpoint_seq(&db).map_err(fail)?;
        let (next, prev) = match head {
            None => (0, GENESIS),
            Some((seq, hash)) => (seq + 1, hash),
        };
        let w = Self {
            db,
            path,
            key,
            stats,
            checkpoint_every,
            retain,
            next,
            prev,
            signed_through,
        };
        w.check_unsigned_tail()?;
        Ok(w)
    }

    fn check_unsigned_tail(&self) -> Result<(), String> {
        let pubkey = chain::public_key(&self.key);
        let report = super::verify::verify_from_last_checkpoint(&self.db, &pubkey)
            .map_err(|e| format!("audit database {}: {e}", self.path.display()))?;
        report.map_err(|b| {
            format!(
                "audit database {}: the chain is broken ({b}); refusing to extend it. \
                 Run `hoop audit verify --db {}` and move the file aside to start a new log",
                self.path.display(),
                self.path.display()
            )
        })
    }

    pub fn run(mut self, rx: Receiver<Cmd>) {
        let mut last_checkpoint = Instant::now();
        let mut last_prune = None::<Instant>;
        self.checkpoint();
        loop {
            if let Some(retain) = self.retain
                && last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(600))
            {
                self.prune(retain, Jobs::now_ms());
                last_prune = Some(Instant::now());
            }
            let wait = self
                .checkpoint_every
                .saturating_sub(last_checkpoint.elapsed());
            let first = match rx.recv_timeout(wait) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint();
                    last_checkpoint = Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut stop = None;
            let mut force_checkpoint = None;
            let mut next = Some(first);
            while let Some(c) = next.take() {
                match c {
                    Cmd::Append(e, reply) => batch.push((e, reply)),
                    Cmd::Checkpoint(done) => force_checkpoint = Some(done),
                    Cmd::Shutdown(done) => stop = Some(done),
                }
                if batch.len() < MAX_BATCH && stop.is_none() {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
            if let Some(done) = force_checkpoint {
                self.checkpoint();
                last_checkpoint = Instant::now();
                let _ = done.send(());
            }
            if let Some(done) = stop {
                // Whatever queued before the shutdown is written first.
                let rest: Vec<_> = rx
                    .try_iter()
                    .filter_map(|c| match c {
                        Cmd::Append(e, r) => Some((e, r)),
                        _ => None,
                    })
                    .collect();
                if !rest.is_empty() {
                    self.commit(rest);
                }
                self.checkpoint();
                // Closing merges the WAL into the database file: a stopped
                // daemon leaves one self-contained file to copy.
                drop(self);
                let _ = done.send(());
                return;
            }
        }
        self.checkpoint();
    }

    /// One transaction for the whole batch; every waiter learns the outcome.
    fn commit(&mut self, batch: Vec<(Entry, Option<super::Reply>)>) {
        let started = Instant::now();
        let n = batch.len() as u64;
        let (mut next, mut prev) = (self.next, self.prev);
        let result = (|| -> rusqlite::Result<Vec<u64>> {
            let tx = self.db.transaction()?;
            let mut seqs = Vec::with_capacity(batch.len());
            for (e, _) in &batch {
                let r = Record {
                    seq: next,
                    ts_ms: Jobs::now_ms(),
                    kind: e.kind.to_string(),
                    data: e.data.to_string(),
                    req_body: e.req_body.as_deref().map(compress),
                    resp_body: e.resp_body.as_deref().map(compress),
                };
                let h = r.hash(&prev);
                store::insert(&tx, &r, &h)?;
                seqs.push(next);
                prev = h;
                next += 1;
            }
            tx.commit()?;
            Ok(seqs)
        })();
        self.stats.queued.fetch_sub(n, Ordering::Relaxed);
        match result {
            Ok(seqs) => {
                self.next = next;
                self.prev = prev;
                self.stats.records.fetch_add(n, Ordering::Relaxed);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .last_commit_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                for ((_, reply), seq) in batch.into_iter().zip(seqs) {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(seq));
                    }
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(n, Ordering::Relaxed);
                let why = e.to_string();
                tracing::error!(
                    db = %self.path.display(), error = %why, records = n,
                    "audit write failed: these requests are refused (503), not forwarded"
                );
                for (_, reply) in batch {
                    if let Some(r) = reply {
                        let _ = r.send(Err(AuditError::Write(why.clone())));
                    }
                }
            }
        }
    }

    /// Signs the chain's head if it moved since the last checkpoint.
    fn checkpoint(&mut self) {
        if self.next == 0 || self.signed_through == Some(self.next - 1) {
            return;
        }
        let seq = self.next - 1;
        let c = chain::sign(&self.key, seq, self.prev);
        match store::insert_checkpoint(&self.db, &c, Jobs::now_ms()) {
            Ok(()) => {
                self.signed_through = Some(seq);
                // The journal holds a copy: an anchor outside the database.
                tracing::info!(
                    target: "hoop::audit",
                    seq, hash = %hex::encode(c.hash), "audit checkpoint signed"
                );
            }
            Err(e) => tracing::error!(error = %e, seq, "cannot write an audit checkpoint"),
        }
    }

    /// Removes records older than `retain`, up to the newest checkpoint
    /// before the cutoff, which stays as the anchor of the rest.
    pub fn prune(&mut self, retain: Duration, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(retain.as_millis() as u64);
        let r = store::checkpoint_before(&self.db, cutoff).and_then(|cp| match cp {
            Some(seq) => store::prune_through(&mut self.db, seq).map(|n| Some((seq, n))),
            None => Ok(None),
        });
        match r {
            Ok(Some((seq, n))) if n > 0 => {
                tracing::info!(target: "hoop::audit", through = seq, records = n, "audit retention pruned old records")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "audit retention failed"),
        }
    }
}

fn compress(b: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(b, ZSTD_LEVEL).expect("zstd compresses into memory")
}

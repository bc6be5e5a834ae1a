//! The audit writer thread: the only writer of the database. It takes
//! sealed records over a channel (encoded and hashed on the request's
//! task), numbers and chains them, and commits them in groups: one row,
//! one transaction and one sync for everything that queued meanwhile. It
//! answers each waiter once its record is durable, and prunes. Every
//! commit's row carries the signature of the head it makes durable, so the
//! log never has an unsigned tail of this daemon's; records after the last
//! signature at start were written by someone else, and are marked so,
//! never signed.
use std::{
    collections::BTreeMap,
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
    AuditError, Cmd, StartError, Stats,
    chain::{self, Checkpoint, GENESIS},
    seal::{self, Packer, Sealed},
    store::{self, Batch, Span},
};
use crate::jobs::Jobs;

/// At most this many entries per transaction: bounds a commit's latency.
const MAX_BATCH: usize = 1024;
/// How long a record nobody waits on may wait for company before it is
/// committed alone.
const LAZY: Duration = Duration::from_millis(10);
/// How often retention looks for records to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How long the session index may lag the first commit it lacks: it is
/// written with the first commit after this, or alone once the writer
/// idles. Readers scan the batches after its mark.
const INDEX_EVERY: Duration = Duration::from_millis(250);
/// Sessions in the index's memory that write it at once.
const INDEX_MAX_SESSIONS: usize = 4096;

pub struct Writer {
    pub db: Connection,
    pub path: PathBuf,
    pub key: Ed25519KeyPair,
    pub stats: Arc<Stats>,
    pub checkpoint_every: Duration,
    pub retain: Option<Duration>,
    packer: Packer,
    /// Where the next record goes.
    next: u64,
    /// The last record's time: records never go back in time.
    last_ts: u64,
    prev: [u8; 32],
    /// This run's latest head signature and its time, if no checkpoint
    /// keeps it yet. Kept ones (one per `checkpoint_every`, at stop,
    /// retention's anchors) stay when their batch is pruned.
    unkept: Option<(Checkpoint, u64)>,
    /// Records after the last signature at start: not ours to sign.
    tail: Option<(u64, u64)>,
    /// Fleet mode: retention keeps the records the server does not have
    /// yet, up to the spool's cap.
    spool: Option<Arc<super::Spool>>,
    /// Spans dropped at the spool's cap whose `dropped` record the server
    /// may not have yet: the next such record repeats them, so that a
    /// later cut that takes an earlier record along loses no declaration.
    drops: Vec<Dropped>,
    /// Where each commit's answers go (one message per commit).
    answer: super::Answer,
    /// The session index not written yet: each session's span of batches
    /// since the last write, the last batch it covers, and since when.
    spans: BTreeMap<String, Span>,
    unindexed: Option<(u64, Instant)>,
}

/// A span dropped at the spool's cap, and where its `dropped` record went.
/// Kept in the `meta` table as JSON between runs.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Dropped {
    from: u64,
    to: u64,
    declared_at: u64,
}

impl Writer {
    /// Picks up the chain where the database ends. Records after the last
    /// signature (a tail no run of this daemon signed) must still chain;
    /// they are then declared unvouched by the first record of this run.
    pub fn resume(
        db: Connection,
        path: PathBuf,
        key: Ed25519KeyPair,
        stats: Arc<Stats>,
        checkpoint_every: Duration,
        retain: Option<Duration>,
        answer: super::Answer,
    ) -> Result<Self, StartError> {
        let fail = |source| StartError::Database {
            path: path.clone(),
            source,
        };
        let head = store::head(&db).map_err(fail)?;
        let signed_through = store::last_signed_seq(&db).map_err(fail)?;
        let (next, prev) = match head {
            None => (0, GENESIS),
            Some((seq, hash)) => (seq + 1, hash),
        };
        let last_ts = store::last_ts(&db).map_err(fail)?;
        let tail = match head {
            Some((last, _)) if signed_through.is_none_or(|s| s < last) => {
                let from = match signed_through {
                    Some(s) => s + 1,
                    None => store::first_seq(&db).map_err(fail)?.unwrap_or(0),
                };
                Some((from, last))
            }
            _ => None,
        };
        let packer = Packer::new().map_err(|source| StartError::Io {
            what: "zstd",
            source,
        })?;
        stats.next_seq.store(next, Ordering::Release);
        // A restart must not forget a span whose record has not shipped.
        let drops = store::meta(&db, DROPS_META)
            .map_err(fail)?
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        let (spans, unindexed) = unindexed_tail(&db).map_err(fail)?;
        let w = Self {
            spans,
            unindexed,
            packer,
            db,
            path,
            key,
            stats,
            checkpoint_every,
            retain,
            next,
            last_ts,
            prev,
            unkept: None,
            tail,
            spool: None,
            drops,
            answer,
        };
        w.check_unsigned_tail()?;
        Ok(w)
    }

    /// Retention keeps the records `spool` says the server lacks; at its
    /// cap with `drop-oldest`, the writer removes the oldest of them.
    pub fn spooling(mut self, spool: Option<Arc<super::Spool>>) -> Self {
        self.spool = spool;
        self
    }

    fn check_unsigned_tail(&self) -> Result<(), StartError> {
        let pubkey = chain::public_key(&self.key);
        let report =
            super::verify::verify_from_last_checkpoint(&self.db, &pubkey).map_err(|source| {
                StartError::Database {
                    path: self.path.clone(),
                    source,
                }
            })?;
        report.map_err(|b| StartError::Broken {
            path: self.path.clone(),
            broken: b.to_string(),
        })
    }

    pub fn run(mut self, rx: Receiver<Cmd>) {
        let mut last_checkpoint = Instant::now();
        let mut last_prune = None::<Instant>;
        let mut pruning = false;
        self.declare_tail();
        loop {
            if self.retain.is_some() && last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                pruning = true;
                last_prune = Some(Instant::now());
            }
            // One checkpoint interval per step, between commits: a long
            // backlog never stalls the requests waiting on the writer.
            if pruning && let Some(retain) = self.retain {
                pruning = self.prune_step(retain, Jobs::now_ms());
            }
            // Checked every round, not only when idle: under steady load
            // the channel is never empty long enough to time out.
            if last_checkpoint.elapsed() >= self.checkpoint_every {
                self.keep_head();
                last_checkpoint = Instant::now();
            }
            let wait = if pruning {
                Duration::ZERO
            } else {
                self.checkpoint_every
                    .saturating_sub(last_checkpoint.elapsed())
            };
            let wait = match self.unindexed {
                Some((_, since)) => wait.min(INDEX_EVERY.saturating_sub(since.elapsed())),
                None => wait,
            };
            let first = match rx.recv_timeout(wait) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: the index goes alone rather than lag on.
                    if self.index_due() {
                        self.write_index();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut stop = None;
            let mut next = Some(first);
            let mut yields = 0;
            // Group commit: whatever queued while the last commit ran shares
            // this one. When the queue looks empty the writer yields its
            // core, until two yields in a row bring nothing: where it shares
            // a core with the request tasks, that lets them queue theirs
            // while they still are (batches grew ten times, commits per
            // record fell as much); with a core to itself, yielding returns
            // at once.
            //
            // Records nobody waits on (responses, decisions, refusals) ride
            // with the next waited one, or go after LAZY: alone, each would
            // cost a commit, a signature and a sync of its own.
            let mut waited = false;
            let mut deadline = None;
            while let Some(c) = next.take() {
                match c {
                    Cmd::Append(s, reply) => {
                        waited |= reply.is_some();
                        batch.push((s, reply));
                    }
                    Cmd::Shutdown(done) => stop = Some(done),
                }
                if batch.len() < MAX_BATCH && stop.is_none() {
                    next = rx.try_recv().ok();
                    while next.is_none() && yields < 2 {
                        std::thread::yield_now();
                        next = rx.try_recv().ok();
                        yields = if next.is_some() { 0 } else { yields + 1 };
                    }
                    if next.is_none() && !waited {
                        let d = *deadline.get_or_insert_with(|| Instant::now() + LAZY);
                        next = rx
                            .recv_timeout(d.saturating_duration_since(Instant::now()))
                            .ok();
                    }
                }
            }
            if !batch.is_empty() {
                self.commit(batch);
                self.drop_oldest();
            }
            if let Some(done) = stop {
                // Whatever queued before the shutdown is written first.
                let rest: Vec<_> = rx
                    .try_iter()
                    .filter_map(|c| match c {
                        Cmd::Append(s, r) => Some((s, r)),
                        Cmd::Shutdown(_) => None,
                    })
                    .collect();
                if !rest.is_empty() {
                    self.commit(rest);
                }
                self.write_index();
                self.keep_head();
                tracing::info!(
                    records = self.stats.records.load(Ordering::Relaxed),
                    commits = self.stats.commits.load(Ordering::Relaxed),
                    commit_us = self.stats.commit_us.load(Ordering::Relaxed),
                    failed = self.stats.failures.load(Ordering::Relaxed),
                    "audit writer stopped"
                );
                // Closing merges the WAL into the database file: a stopped
                // daemon leaves one self-contained file to copy.
                drop(self);
                let _ = done.send(());
                return;
            }
        }
        self.write_index();
        self.keep_head();
    }

    /// A tail left by a previous run (killed before its commit's signature
    /// existed, an older hoop, or an edit): the first record of this run
    /// says so, and its signature covers that statement, not a claim that
    /// this daemon wrote the tail. `hoop audit verify` reports it forever.
    fn declare_tail(&mut self) {
        let Some((from, to)) = self.tail else {
            return;
        };
        tracing::warn!(
            target: "hoop::audit",
            from, to, records = to - from + 1,
            "audit records {from}..={to} follow the last signature: {}; this run will not sign them",
            super::entry::UnvouchedData::REASON
        );
        // An empty batch: commit() puts the declaration first.
        self.commit(Vec::new());
        if self.tail.is_none() {
            self.keep_head();
        }
    }

    /// One row and one transaction for the whole batch; every waiter
    /// learns the outcome.
    fn commit(&mut self, mut batch: Vec<(Sealed, Option<super::Reply>)>) {
        let started = Instant::now();
        let n = batch.len() as u64;
        // Until the tail's marker is durable nothing else may be signed: a
        // signature without it before would vouch for the tail.
        let marker = self.tail.is_some();
        if let Some((from, to)) = self.tail {
            let e = super::entry::UnvouchedData::entry(from, to);
            batch.insert(0, (Sealed::of(e), None));
        }
        if batch.is_empty() {
            return;
        }
        let first_seq = self.next;
        let (mut prev, mut ts) = (self.prev, self.last_ts);
        // One clock reading for the batch: its records were committed
        // together. Never backwards (a clock step): `--since` bisects on it.
        ts = ts.max(Jobs::now_ms());
        let size: usize = batch.iter().map(|(s, _)| s.bytes.len() + 12).sum();
        let mut records = Vec::with_capacity(size);
        for (seq, (s, _)) in (first_seq..).zip(&batch) {
            seal::append(&mut records, ts, &s.bytes);
            prev = chain::link(&prev, seq, ts, &s.digest);
        }
        let last_seq = first_seq + batch.len() as u64 - 1;
        // The head this commit makes durable, signed in the same row: no
        // moment where it is on disk unsigned.
        let c = chain::sign(&self.key, last_seq, prev);
        let (codec, records) = self.packer.pack(records);
        let row = Batch {
            first_seq,
            last_seq,
            first_ts: ts,
            last_ts: ts,
            codec,
            records,
            head: prev,
            sig: Some(c.sig.clone()),
        };
        // In memory until the index is due. Should the commit fail, the
        // next batch takes this key: a span then covers it needlessly,
        // which readers' filtering makes harmless.
        for (s, _) in &batch {
            note_session(&mut self.spans, &s.session, first_seq);
        }
        let index = self.index_due();
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.db.transaction()?;
            store::insert_batch(&tx, &row)?;
            if index {
                store::insert_spans(&tx, spans(&self.spans), first_seq)?;
            }
            tx.commit()
        })();
        self.stats.queued.fetch_sub(n, Ordering::Relaxed);
        match result {
            Ok(()) => {
                if marker {
                    self.tail = None;
                    batch.remove(0);
                }
                match index {
                    true => {
                        self.spans.clear();
                        self.unindexed = None;
                    }
                    false => {
                        let since = self.unindexed.map_or_else(Instant::now, |(_, t)| t);
                        self.unindexed = Some((first_seq, since));
                    }
                }
                self.next = last_seq + 1;
                self.stats.next_seq.store(self.next, Ordering::Release);
                self.prev = prev;
                self.last_ts = ts;
                self.unkept = Some((c, ts));
                self.stats
                    .records
                    .fetch_add(n + marker as u64, Ordering::Relaxed);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                let us = started.elapsed().as_micros() as u64;
                self.stats.last_commit_us.store(us, Ordering::Relaxed);
                self.stats.commit_us.fetch_add(us, Ordering::Relaxed);
                let first = first_seq + marker as u64;
                let answers = (first..)
                    .zip(batch)
                    .filter_map(|(seq, (_, reply))| Some((reply?, Ok(seq))))
                    .collect();
                self.answer.send(answers);
            }
            Err(e) => {
                self.stats.failures.fetch_add(n, Ordering::Relaxed);
                let why = e.to_string();
                tracing::error!(
                    db = %self.path.display(), error = %why, records = n,
                    "audit write failed: these requests are refused (503), not forwarded"
                );
                let answers = batch
                    .into_iter()
                    .filter_map(|(_, reply)| Some((reply?, Err(AuditError::Write(why.clone())))))
                    .collect();
                self.answer.send(answers);
            }
        }
    }

    /// True once the index in memory should be written.
    fn index_due(&self) -> bool {
        self.spans.len() >= INDEX_MAX_SESSIONS
            || self
                .unindexed
                .is_some_and(|(_, since)| since.elapsed() >= INDEX_EVERY)
    }

    /// Writes the session index kept in memory, in its own transaction.
    fn write_index(&mut self) {
        let Some((through, _)) = self.unindexed else {
            return;
        };
        let r = (|| {
            let tx = self.db.transaction()?;
            store::insert_spans(&tx, spans(&self.spans), through)?;
            tx.commit()
        })();
        match r {
            Ok(()) => {
                self.spans.clear();
                self.unindexed = None;
            }
            // Readers scan what it lacks; it is tried again after as long
            // (a full or read-only database must not make this spin).
            Err(e) => {
                self.unindexed = Some((through, Instant::now()));
                tracing::error!(error = %e, "audit session index not written");
            }
        }
    }

    /// Keeps the current head's signature as a checkpoint (retention never
    /// removes it with its batch) and logs its hash: the journal's copy is
    /// an anchor outside the database.
    fn keep_head(&mut self) {
        let Some((c, ts)) = self.unkept.take() else {
            return;
        };
        if let Err(e) = store::insert_checkpoint(&self.db, &c, ts) {
            tracing::error!(error = %e, seq = c.seq, "audit checkpoint not kept");
            return;
        }
        tracing::info!(
            target: "hoop::audit",
            seq = c.seq, hash = %hex::encode(c.hash), "audit checkpoint signed"
        );
    }

    /// One step of retention: removes the records through the oldest
    /// checkpoint older than `retain`, which stays as the anchor of the
    /// rest (so the log verifies between steps). True if more is due.
    pub fn prune_step(&mut self, retain: Duration, now_ms: u64) -> bool {
        // The head's signature may become the anchor: the next commit must
        // not remove it.
        self.keep_head();
        let cutoff = now_ms.saturating_sub(retain.as_millis() as u64);
        // A checkpoint at `seq` prunes through `seq`: it must be below.
        let below = self
            .spool
            .as_ref()
            .map_or(u64::MAX, |s| s.keep_from.load(Ordering::Acquire));
        let r = store::oldest_checkpoint_before(&self.db, cutoff, below).and_then(|cp| match cp {
            Some(seq) => store::prune_through(&mut self.db, seq).map(|n| Some((seq, n))),
            None => Ok(None),
        });
        match r {
            Ok(Some((seq, n))) => {
                tracing::info!(target: "hoop::audit", through = seq, records = n, "audit retention pruned old records");
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(error = %e, "audit retention failed");
                false
            }
        }
    }

    /// Fleet mode with `when_full = "drop-oldest"`, at the spool's cap:
    /// removes the oldest records the server lacks, through a signed
    /// checkpoint that stays as the anchor of the rest, so that a quarter
    /// of the cap is free again (one drop per many commits, not one per
    /// commit), and records which ones in a `dropped` record: chained and
    /// signed like any other, it tells the server's `verify` that this gap
    /// is the host's own doing.
    fn drop_oldest(&mut self) {
        let Some(s) = self.spool.clone() else { return };
        if s.when_full != crate::config::fleet::WhenFull::DropOldest {
            return;
        }
        let unshipped = s.unshipped(self.next);
        if unshipped < s.max {
            return;
        }
        let server_at = s.keep_from.load(Ordering::Acquire);
        // The head becomes a checkpoint if none falls where the cut should.
        self.keep_head();
        let first_kept = self.next.saturating_sub(s.max - s.max / 4);
        let cut =
            store::first_checkpoint_from(&self.db, first_kept.saturating_sub(1).max(server_at))
                .and_then(|c| match c {
                    Some(seq) => store::prune_through(&mut self.db, seq).map(|_| Some(seq)),
                    None => Ok(None),
                });
        let to = match cut {
            Ok(Some(to)) => to,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "fleet: the spool is full and its oldest records could not be dropped");
                return;
            }
        };
        s.first_kept.fetch_max(to + 1, Ordering::AcqRel);
        // Declarations the server has are done with. Nothing shipped since
        // the last cut: the server's gap grows, and one span says so.
        self.drops.retain(|d| d.declared_at >= server_at);
        let from = match self.drops.last() {
            Some(d) if server_at <= d.to + 1 => self.drops.pop().expect("last").from,
            _ => server_at,
        };
        tracing::error!(
            target: "hoop::audit",
            from, to, records = to + 1 - from, unshipped, max = s.max,
            "fleet: the spool is full (when_full = \"drop-oldest\"): records {from}..={to} were removed before the server had them"
        );
        let e = super::Entry::of(&super::entry::DroppedData {
            session: String::new(),
            from,
            to,
            unshipped,
            max: s.max,
            earlier: self.drops.iter().map(|d| (d.from, d.to)).collect(),
        });
        self.drops.push(Dropped {
            from,
            to,
            declared_at: self.next,
        });
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.commit(vec![(Sealed::of(e), None)]);
        let json = serde_json::to_string(&self.drops).expect("numbers serialise");
        if let Err(e) = store::set_meta(&self.db, DROPS_META, &json) {
            tracing::error!(error = %e, "fleet: the dropped spans were not kept for the next run");
        }
    }
}

/// Where the spans dropped at the cap whose record may not have shipped
/// are kept between runs (the `meta` table).
const DROPS_META: &str = "fleet_drops";

/// Notes that the batch at `first_seq` holds a record of `session`.
fn note_session(spans: &mut BTreeMap<String, Span>, session: &str, first_seq: u64) {
    if session.is_empty() {
        return;
    }
    match spans.get_mut(session) {
        Some(span) => span.last_batch = first_seq,
        None => {
            let span = Span {
                first_batch: first_seq,
                last_batch: first_seq,
            };
            spans.insert(session.to_string(), span);
        }
    }
}

fn spans(spans: &BTreeMap<String, Span>) -> impl Iterator<Item = (&str, Span)> {
    spans.iter().map(|(s, span)| (s.as_str(), *span))
}

/// The batches a previous run committed but did not index (it stopped
/// before the index was due): their sessions, to be indexed with this
/// run's, so that no batch is left out when the mark moves past them.
type Unindexed = (BTreeMap<String, Span>, Option<(u64, Instant)>);

fn unindexed_tail(db: &Connection) -> rusqlite::Result<Unindexed> {
    let mut spans = BTreeMap::new();
    let mut last = None;
    let Some(through) = store::sessions_through(db)? else {
        return Ok((spans, None));
    };
    let mut next = u64::try_from(through + 1).unwrap_or(0);
    // By the key, a bounded chunk at a time: a log whose mark was lost is
    // read whole.
    loop {
        let chunk = store::batches_from(db, next, 256)?;
        let Some(end) = chunk.last().map(|b| b.first_seq) else {
            break;
        };
        for b in &chunk {
            // A batch that does not decode is verify's to report; readers
            // could not find its records either.
            for s in seal::sessions(b.codec, &b.records) {
                note_session(&mut spans, &s, b.first_seq);
            }
        }
        last = Some(end);
        next = end + 1;
    }
    Ok((spans, last.map(|l| (l, Instant::now()))))
}

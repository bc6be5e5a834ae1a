//! `hoop audit verify`: walks the whole chain of a database (the live one
//! or an offline copy) and its signed checkpoints, and names the first
//! record where it breaks.
//!
//! Checkpoints live in the same database, so someone who can write it can
//! cut the tail together with its checkpoints, and the rest still verifies.
//! Anchors close that: a chain hash kept elsewhere (the journal's
//! "audit checkpoint signed" lines, or the head `verify` prints), given
//! back as `--anchor SEQ:HASH`, must still be in the chain.
//!
//! The daemon signs every commit (in its batch's row), so the records it
//! wrote are all covered by a signature. Each signature covers the whole
//! chain before it, so the walk checks the newest batch signature and every
//! kept checkpoint; older batch signatures are implied by the newest. Records after the last signature (at the end, or
//! declared by a later run's `unvouched` record) were written by someone
//! else, or by a run killed before it could sign them: they are reported
//! apart, as intact but not vouched for.
use std::{collections::BTreeMap, path::Path, str::FromStr};

use rusqlite::Connection;
use serde::Serialize;

use super::{
    chain::{self, Broken, Checkpoint, GENESIS},
    entry, seal,
    store::{self, StoreError},
};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub records: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub checkpoints: usize,
    /// The newest record a valid checkpoint vouches for.
    pub signed_through: Option<u64>,
    /// Where the public key came from: `--pubkey`, or the database itself
    /// (which only proves consistency, not origin).
    pub key_source: String,
    /// The chain's hash at the last record, hex: an anchor to keep.
    pub head_hash: Option<String>,
    /// Anchors found in the chain with their hash.
    pub anchors_checked: usize,
    /// Anchors older than the first record (retention removed them).
    pub anchors_pruned: Vec<u64>,
    /// Spans a later run declared unvouched: it found them after the last
    /// signature when it started, and its signatures do not vouch for them.
    pub unvouched: Vec<Span>,
    /// Records after the last signature, at the end of the log.
    pub unsigned_tail: Option<Span>,
    /// Spans the host removed before the fleet's server had them (its
    /// spool at the cap, `when_full = "drop-oldest"`), as its `dropped`
    /// records declare. A gap in a shipped chain is accepted only where
    /// a signed checkpoint bridges it and such a record names it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<Span>,
    /// The first break, if any.
    pub broken: Option<String>,
    #[serde(skip)]
    pub error: Option<Broken>,
}

impl Report {
    fn broken_at(mut self, b: Broken) -> Self {
        self.broken = Some(b.to_string());
        self.error = Some(b);
        self
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Records in the chain that no signature vouches for: declared spans
    /// and the unsigned tail.
    pub fn unsigned(&self) -> u64 {
        self.unvouched
            .iter()
            .chain(&self.unsigned_tail)
            .map(Span::records)
            .sum()
    }
}

/// Records `from..=to`: written by a previous run and not vouched for, or
/// dropped by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub from: u64,
    pub to: u64,
    /// The record of the run that declared it (absent for the tail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_at: Option<u64>,
}

impl Span {
    pub fn records(&self) -> u64 {
        self.to + 1 - self.from
    }
}

/// A chain hash the operator kept: the chain must pass through `hash` at
/// record `seq`. Written `SEQ:HEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: an anchor is SEQ:HASH, the hash as 64 hex digits")]
pub struct BadAnchor(String);

impl FromStr for Anchor {
    type Err = BadAnchor;

    fn from_str(s: &str) -> Result<Self, BadAnchor> {
        let bad = || BadAnchor(s.into());
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq = seq.trim().parse().map_err(|_| bad())?;
        let hash = hex::decode(hash.trim())
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(bad)?;
        Ok(Self { seq, hash })
    }
}

/// Verifies the database at `path`. `pubkey`: the key the operator trusts;
/// without it the key stored in the database is used.
pub fn verify_file(path: &Path, pubkey: Option<&[u8]>) -> Result<Report, StoreError> {
    verify_anchored(path, pubkey, &[])
}

/// [`verify_file`], and the chain must pass through every anchor.
pub fn verify_anchored(
    path: &Path,
    pubkey: Option<&[u8]>,
    anchors: &[Anchor],
) -> Result<Report, StoreError> {
    let db = store::open_reader(path)?;
    let fail = |e: rusqlite::Error| StoreError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let (key, key_source) = match pubkey {
        Some(k) => (k.to_vec(), "--pubkey".to_string()),
        None => {
            let stored = store::meta(&db, "public_key")
                .map_err(fail)?
                .unwrap_or_default();
            use base64::Engine;
            let k = base64::engine::general_purpose::STANDARD
                .decode(stored.trim())
                .unwrap_or_default();
            (
                k,
                "the database's own public_key (pass --pubkey to check who signed)".into(),
            )
        }
    };
    let anchors: BTreeMap<u64, [u8; 32]> = anchors.iter().map(|a| (a.seq, a.hash)).collect();
    let mut r = walk(&db, &key, None, &anchors).map_err(fail)?;
    r.key_source = key_source;
    Ok(r)
}

/// The writer's check at start: the records after the last checkpoint
/// (which it is about to sign) chain from it intact.
pub fn verify_from_last_checkpoint(
    db: &Connection,
    pubkey: &[u8],
) -> rusqlite::Result<Result<(), Broken>> {
    let from = store::last_signed_seq(db)?;
    Ok(match walk(db, pubkey, from, &BTreeMap::new())?.error {
        Some(b) => Err(b),
        None => Ok(()),
    })
}

/// What the walk has seen so far.
struct Walk<'a> {
    pubkey: &'a [u8],
    cps: BTreeMap<u64, Checkpoint>,
    anchors: &'a BTreeMap<u64, [u8; 32]>,
    report: Report,
    prev: [u8; 32],
    next: u64,
    /// The last signature passed (a checkpoint or a batch's).
    last_signed: Option<u64>,
    /// An `unvouched` record waiting for the next signature.
    declared: Option<Span>,
    /// The newest batch signature seen, checked at the end.
    newest_sig: Option<Checkpoint>,
    /// Gaps a signed checkpoint bridges, until a `dropped` record names
    /// them.
    gaps: Vec<Span>,
}

impl Walk<'_> {
    /// One record, already chained into `self.prev`.
    fn visit(
        &mut self,
        seq: u64,
        kind: &str,
        data: impl FnOnce() -> Option<String>,
    ) -> Result<(), Broken> {
        let first = *self.report.first.get_or_insert(seq);
        if kind == entry::kind::UNVOUCHED {
            // It must name exactly the records since the last signature.
            let from = self.last_signed.map_or(first, |s| s + 1);
            let d = data().and_then(|d| serde_json::from_str::<entry::UnvouchedData>(&d).ok());
            match d {
                Some(d) if d.from == from && d.to + 1 == seq && d.from <= d.to => {
                    self.declared = Some(Span {
                        from,
                        to: d.to,
                        declared_at: Some(seq),
                    });
                }
                _ => return Err(Broken::Declaration { seq }),
            }
        } else if kind == entry::kind::DROPPED {
            // Written after its gap: it names the records it removed, of
            // which the server may have had the first ones.
            let d = data().and_then(|d| serde_json::from_str::<entry::DroppedData>(&d).ok());
            let Some(d) = d.filter(|d| d.from <= d.to && d.to < seq) else {
                return Err(Broken::Declaration { seq });
            };
            let spans = || d.earlier.iter().copied().chain([(d.from, d.to)]);
            self.gaps
                .retain(|g| !spans().any(|(from, to)| g.to == to && g.from >= from));
            // A span that grew (nothing shipped between two cuts) is
            // reported once, at its widest.
            for (from, to) in spans() {
                let span = Span {
                    from,
                    to,
                    declared_at: Some(seq),
                };
                match self.report.dropped.iter_mut().find(|s| s.from == from) {
                    Some(s) if s.to < to => *s = span,
                    Some(_) => {}
                    None => self.report.dropped.push(span),
                }
            }
        }
        self.report.last = Some(seq);
        self.report.records += 1;
        if let Some(want) = self.anchors.get(&seq) {
            if *want != self.prev {
                return Err(Broken::AnchorMismatch { seq });
            }
            self.report.anchors_checked += 1;
        }
        if let Some(c) = self.cps.get(&seq) {
            chain::check(self.pubkey, c, Some(self.prev))?;
            self.signed(seq);
        }
        self.next = seq + 1;
        Ok(())
    }

    fn signed(&mut self, seq: u64) {
        self.report.signed_through = Some(seq);
        self.last_signed = Some(seq);
        self.report.unvouched.extend(self.declared.take());
    }

    /// A batch of the batched layout: its records chain on from `prev`,
    /// and its columns agree with them.
    fn batch(&mut self, o: Opened) -> Result<(), Broken> {
        let b = &o.batch;
        if b.first_seq > self.next
            && let Some(c) = self.cps.get(&(b.first_seq - 1))
        {
            // A gap a checkpoint bridges (its signature was checked): the
            // host dropped it, if a later `dropped` record says so.
            self.gaps.push(Span {
                from: self.next,
                to: c.seq,
                declared_at: None,
            });
            self.prev = c.hash;
            self.next = b.first_seq;
            self.signed(c.seq);
        }
        if b.first_seq != self.next {
            return Err(Broken::Sequence {
                after: self.next.wrapping_sub(1),
                found: b.first_seq,
            });
        }
        // The batch against its own columns first: an edit inside it is
        // named as one, whatever checkpoint or anchor falls in it.
        let records = o.records?;
        let mut times = None;
        let mut head = self.prev;
        let hashes: Vec<[u8; 32]> = records
            .iter()
            .map(|r| {
                head = chain::link(&head, r.seq, r.ts, &r.digest);
                times = Some((times.map_or(r.ts, |(f, _)| f), r.ts));
                head
            })
            .collect();
        let next = records.last().map_or(self.next, |r| r.seq + 1);
        if next != b.last_seq + 1 || times != Some((b.first_ts, b.last_ts)) || head != b.head {
            return Err(edited(b));
        }
        for (r, h) in records.into_iter().zip(hashes) {
            self.prev = h;
            let (kind, data) = r.declared.unwrap_or(("", None));
            self.visit(r.seq, kind, || data)?;
        }
        if let Some(c) = b.checkpoint() {
            self.signed(b.last_seq);
            self.newest_sig = Some(c);
        }
        Ok(())
    }
}

/// How an edit inside a batch is named: by its records.
fn edited(b: &store::Batch) -> Broken {
    match b.first_seq == b.last_seq {
        true => Broken::Hash { seq: b.first_seq },
        false => Broken::BatchHash {
            first: b.first_seq,
            last: b.last_seq,
        },
    }
}

/// A batch's records decoded and hashed, apart from the chain: the bulk of
/// a walk's work, done for many batches at once on every core. Only the
/// links over the digests are sequential.
struct Opened {
    /// Its columns (the records' bytes dropped).
    batch: store::Batch,
    records: Result<Vec<Item>, Broken>,
}

struct Item {
    seq: u64,
    ts: u64,
    digest: [u8; 32],
    /// An `unvouched` or `dropped` declaration: its kind, and its data if
    /// it reads.
    declared: Option<(&'static str, Option<String>)>,
}

fn open(mut batch: store::Batch) -> Opened {
    let records = items(&batch);
    batch.records = Vec::new();
    Opened { batch, records }
}

/// A batch's records, decoded and hashed.
fn items(batch: &store::Batch) -> Result<Vec<Item>, Broken> {
    let first = batch.first_seq;
    let records = seal::unpack(batch.codec, &batch.records)
        .map_err(|_| Broken::UnreadableRecord { seq: first })?;
    let mut out = Vec::new();
    for (seq, rec) in (first..).zip(seal::split(&records)) {
        let (ts, bytes) = rec.map_err(|_| Broken::UnreadableRecord { seq })?;
        let kind = seal::kind(bytes).map_err(|_| Broken::UnreadableRecord { seq })?;
        if seq > batch.last_seq {
            return Err(edited(batch));
        }
        out.push(Item {
            seq,
            ts,
            digest: seal::digest(bytes),
            declared: [entry::kind::UNVOUCHED, entry::kind::DROPPED]
                .into_iter()
                .find(|k| *k == kind)
                .map(|k| (k, seal::fields(bytes).ok().map(|f| f.data))),
        });
    }
    Ok(out)
}

/// One batch on its own: its records chain on from `prev` to its head,
/// its columns agree with them, and (with `pubkey`) its signature is that
/// key's. The head after it. What the fleet's shipper checks before a
/// batch leaves the host: every chain link, and the newest signature of a
/// run of batches, which vouches for all before it.
pub fn continues(
    prev: [u8; 32],
    b: &store::Batch,
    pubkey: Option<&[u8]>,
) -> Result<[u8; 32], Broken> {
    let mut head = prev;
    let mut next = b.first_seq;
    let mut times = None;
    for r in items(b)? {
        head = chain::link(&head, r.seq, r.ts, &r.digest);
        times = Some((times.map_or(r.ts, |(f, _)| f), r.ts));
        next = r.seq + 1;
    }
    if next != b.last_seq + 1 || times != Some((b.first_ts, b.last_ts)) || head != b.head {
        return Err(edited(b));
    }
    if let (Some(k), Some(c)) = (pubkey, b.checkpoint()) {
        chain::check(k, &c, Some(head))?;
    }
    Ok(head)
}

/// Batches opened per round: bounds the memory a walk holds.
const ROUND: usize = 512;

/// Opens `batches` on up to every core, in order.
fn open_all(batches: Vec<store::Batch>) -> Vec<Opened> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if cores == 1 || batches.len() < 2 * cores {
        return batches.into_iter().map(open).collect();
    }
    let per = batches.len().div_ceil(cores);
    let mut parts: Vec<Vec<store::Batch>> = Vec::new();
    let mut rest = batches.into_iter().peekable();
    while rest.peek().is_some() {
        parts.push(rest.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|p| s.spawn(move || p.into_iter().map(open).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("opening batches does not panic"))
            .collect()
    })
}

/// Walks the records (all of them, or those after the signature at
/// `from`): the first layout's rows, then the batches.
fn walk(
    db: &Connection,
    pubkey: &[u8],
    from: Option<u64>,
    anchors: &BTreeMap<u64, [u8; 32]>,
) -> rusqlite::Result<Report> {
    // A value of the wrong type in a row (SQLite columns take any) is an
    // edit, not a failure to read the log.
    let cps: BTreeMap<u64, Checkpoint> = match store::checkpoints(db) {
        Ok(cps) => cps.into_iter().map(|c| (c.seq, c)).collect(),
        Err(e) if unreadable(&e) => {
            return Ok(Report::default().broken_at(Broken::UnreadableCheckpoint));
        }
        Err(e) => return Err(e),
    };
    let mut w = Walk {
        pubkey,
        report: Report {
            checkpoints: cps.len(),
            ..Report::default()
        },
        cps,
        anchors,
        prev: GENESIS,
        next: 0,
        last_signed: None,
        declared: None,
        newest_sig: None,
        gaps: Vec::new(),
    };
    let result = walk_rows(db, from, &mut w)?;
    let report = std::mem::take(&mut w.report);
    Ok(match result {
        Err(b) => report.broken_at(b),
        Ok(()) => report,
    })
}

fn walk_rows(
    db: &Connection,
    from: Option<u64>,
    w: &mut Walk<'_>,
) -> rusqlite::Result<Result<(), Broken>> {
    // Every signature first: a forged checkpoint is named as such.
    for c in w.cps.values() {
        if let Err(b) = chain::check(w.pubkey, c, None) {
            return Ok(Err(b));
        }
    }
    let first = match from {
        Some(s) => Some(s + 1),
        None => store::first_seq(db)?,
    };
    (w.prev, w.next) = match first {
        // Retention pruned every record through the newest checkpoint
        // and kept that one alone: the log goes on from there. (More
        // than one checkpoint and no records: the records were cut.)
        None if from.is_none() && w.cps.len() == 1 => {
            let (&seq, c) = w.cps.iter().next().expect("one");
            (c.hash, seq + 1)
        }
        None => (GENESIS, 0),
        Some(0) => (GENESIS, 0),
        Some(f) if from.is_some() => {
            // The writer's start: the signature it goes on from must be
            // its key's, or it would sign over whatever precedes it.
            if let Some(c) = store::batch_signature(db, f - 1)?
                && let Err(b) = chain::check(w.pubkey, &c, None)
            {
                return Ok(Err(b));
            }
            (store::hash_before(db, f)?, f)
        }
        Some(f) => match w.cps.get(&(f - 1)) {
            Some(c) => (c.hash, f),
            None => return Ok(Err(Broken::Unanchored { first: f })),
        },
    };
    // Anchors before the first record: the one the walk starts from
    // (the checkpoint retention keeps) is checked, older ones are gone.
    for (&seq, want) in w.anchors.range(..w.next) {
        if seq + 1 == w.next {
            if *want != w.prev {
                return Ok(Err(Broken::AnchorMismatch { seq }));
            }
            w.report.anchors_checked += 1;
        } else {
            w.report.anchors_pruned.push(seq);
        }
    }
    w.last_signed = w.next.checked_sub(1);
    let mut outcome = Ok(());
    let mut failed = None;
    store::each_row(db, w.next, None, |row| {
        let (rec, stored) = match row {
            Ok(r) => r,
            Err(e) if unreadable(&e) => {
                outcome = Err(Broken::UnreadableRecord { seq: w.next });
                return false;
            }
            Err(e) => {
                failed = Some(e);
                return false;
            }
        };
        outcome = chain::step(&w.prev, w.next, &rec, &stored).and_then(|h| {
            w.prev = h;
            w.visit(rec.seq, &rec.kind, || Some(rec.data.clone()))
        });
        outcome.is_ok()
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if outcome.is_ok() {
        let mut round = Vec::with_capacity(ROUND);
        let apply = |w: &mut Walk<'_>, round: &mut Vec<store::Batch>| {
            open_all(std::mem::take(round))
                .into_iter()
                .try_for_each(|o| w.batch(o))
        };
        store::each_batch(db, w.next, None, |b| {
            match b {
                Ok(b) => round.push(b),
                Err(e) if unreadable(&e) => {
                    // What came before is walked first: the row is named
                    // by the seq the chain expects there.
                    outcome =
                        apply(w, &mut round).and(Err(Broken::UnreadableRecord { seq: w.next }));
                    return false;
                }
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            }
            if round.len() == ROUND {
                outcome = apply(w, &mut round);
            }
            outcome.is_ok()
        })?;
        if outcome.is_ok() && failed.is_none() {
            outcome = apply(w, &mut round);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if let Err(b) = outcome {
        return Ok(Err(b));
    }
    // A gap no `dropped` record named: records deleted.
    if let Some(g) = w.gaps.first() {
        return Ok(Err(Broken::Sequence {
            after: g.from.wrapping_sub(1),
            found: g.to + 1,
        }));
    }
    // The newest batch signature vouches for everything before it.
    if let Some(c) = &w.newest_sig
        && let Err(b) = chain::check(w.pubkey, c, None)
    {
        return Ok(Err(b));
    }
    let next = w.next;
    // A checkpoint or anchor beyond the last record: the tail was cut off.
    if let Some((&seq, _)) = w.cps.range(next..).next() {
        return Ok(Err(Broken::Truncated {
            seq,
            last: w.report.last,
        }));
    }
    if let Some((&seq, _)) = w.anchors.range(next..).next() {
        return Ok(Err(Broken::AnchorBeyondEnd {
            seq,
            last: w.report.last,
        }));
    }
    if w.report.signed_through.is_none() && from.is_some() {
        w.report.signed_through = from;
    }
    // What follows the last signature (an unsigned declaration
    // included: nothing vouches for it either).
    if let (Some(last), Some(first)) = (w.report.last, w.report.first) {
        let from = w.last_signed.map_or(first, |s| s + 1);
        if from <= last {
            w.report.unsigned_tail = Some(Span {
                from,
                to: last,
                declared_at: None,
            });
        }
    }
    // Only an intact chain has a head worth keeping as an anchor.
    w.report.head_hash = w.report.last.map(|_| hex::encode(w.prev));
    Ok(Ok(()))
}

/// SQLite keeps whatever is written to a column; a value of another type
/// than the writer's can only come from an edit.
fn unreadable(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    )
}

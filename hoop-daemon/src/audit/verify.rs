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
//! The daemon signs every commit, so the records it wrote are all covered
//! by a signature. Records after the last signature (at the end, or
//! declared by a later run's `unvouched` record) were written by someone
//! else, or by a run killed before it could sign them: they are reported
//! apart, as intact but not vouched for.
use std::{collections::BTreeMap, path::Path, str::FromStr};

use rusqlite::Connection;
use serde::Serialize;

use super::{
    chain::{self, Broken, Checkpoint, GENESIS},
    entry,
    store::{self, ROW_COLUMNS, StoreError},
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

/// Records `from..=to`, written by a previous run and not vouched for.
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
    let from = store::last_checkpoint_seq(db)?;
    Ok(match walk(db, pubkey, from, &BTreeMap::new())?.error {
        Some(b) => Err(b),
        None => Ok(()),
    })
}

/// Walks the records (all of them, or those after checkpoint `from`).
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
        Err(e) if edited(&e) => {
            return Ok(Report::default().broken_at(Broken::UnreadableCheckpoint));
        }
        Err(e) => return Err(e),
    };
    let mut report = Report {
        checkpoints: cps.len(),
        ..Report::default()
    };
    let result = (|| -> rusqlite::Result<Result<(), Broken>> {
        // Every signature first: a forged checkpoint is named as such.
        for c in cps.values() {
            if let Err(b) = chain::check(pubkey, c, None) {
                return Ok(Err(b));
            }
        }
        let first: Option<i64> = match from {
            Some(s) => Some(s as i64 + 1),
            None => db.query_row("SELECT MIN(seq) FROM records", [], |r| r.get(0))?,
        };
        let (mut prev, mut next) = match first {
            // Retention pruned every record through the newest checkpoint
            // and kept that one alone: the log goes on from there. (More
            // than one checkpoint and no records: the records were cut.)
            None if from.is_none() && cps.len() == 1 => {
                let (&seq, c) = cps.iter().next().expect("one");
                (c.hash, seq + 1)
            }
            None => (GENESIS, 0),
            Some(0) => (GENESIS, 0),
            Some(f) => match cps.get(&(f as u64 - 1)) {
                Some(c) => (c.hash, f as u64),
                None => return Ok(Err(Broken::Unanchored { first: f as u64 })),
            },
        };
        let mut st = db.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM records WHERE seq >= ?1 ORDER BY seq"
        ))?;
        // Anchors before the first record: the one the walk starts from
        // (the checkpoint retention keeps) is checked, older ones are gone.
        for (&seq, want) in anchors.range(..next) {
            if seq + 1 == next {
                if *want != prev {
                    return Ok(Err(Broken::AnchorMismatch { seq }));
                }
                report.anchors_checked += 1;
            } else {
                report.anchors_pruned.push(seq);
            }
        }
        // The last signature passed (the checkpoint the walk starts from,
        // if any), and an `unvouched` record waiting for the next one.
        let mut last_signed = next.checked_sub(1);
        let mut declared: Option<Span> = None;
        let mut rows = st.query([next as i64])?;
        while let Some(row) = rows.next()? {
            let (rec, stored) = match store::row(row) {
                Ok(r) => r,
                Err(e) if edited(&e) => {
                    return Ok(Err(Broken::UnreadableRecord { seq: next }));
                }
                Err(e) => return Err(e),
            };
            prev = match chain::step(&prev, next, &rec, &stored) {
                Ok(h) => h,
                Err(b) => return Ok(Err(b)),
            };
            let first = *report.first.get_or_insert(rec.seq);
            if rec.kind == entry::kind::UNVOUCHED {
                // It must name exactly the records since the last signature.
                let from = last_signed.map_or(first, |s| s + 1);
                match serde_json::from_str::<entry::UnvouchedData>(&rec.data) {
                    Ok(d) if d.from == from && d.to + 1 == rec.seq && d.from <= d.to => {
                        declared = Some(Span {
                            from,
                            to: d.to,
                            declared_at: Some(rec.seq),
                        });
                    }
                    _ => return Ok(Err(Broken::Declaration { seq: rec.seq })),
                }
            }
            report.last = Some(rec.seq);
            report.records += 1;
            if let Some(want) = anchors.get(&rec.seq) {
                if *want != prev {
                    return Ok(Err(Broken::AnchorMismatch { seq: rec.seq }));
                }
                report.anchors_checked += 1;
            }
            if let Some(c) = cps.get(&rec.seq) {
                if let Err(b) = chain::check(pubkey, c, Some(prev)) {
                    return Ok(Err(b));
                }
                report.signed_through = Some(rec.seq);
                last_signed = Some(rec.seq);
                report.unvouched.extend(declared.take());
            }
            next += 1;
        }
        // A checkpoint or anchor beyond the last record: the tail was cut off.
        if let Some((&seq, _)) = cps.range(next..).next() {
            return Ok(Err(Broken::Truncated {
                seq,
                last: report.last,
            }));
        }
        if let Some((&seq, _)) = anchors.range(next..).next() {
            return Ok(Err(Broken::AnchorBeyondEnd {
                seq,
                last: report.last,
            }));
        }
        if report.signed_through.is_none() && from.is_some() {
            report.signed_through = from;
        }
        // What follows the last signature (an unsigned declaration
        // included: nothing vouches for it either).
        if let (Some(last), Some(first)) = (report.last, report.first) {
            let from = last_signed.map_or(first, |s| s + 1);
            if from <= last {
                report.unsigned_tail = Some(Span {
                    from,
                    to: last,
                    declared_at: None,
                });
            }
        }
        // Only an intact chain has a head worth keeping as an anchor.
        report.head_hash = report.last.map(|_| hex::encode(prev));
        Ok(Ok(()))
    })()?;
    Ok(match result {
        Err(b) => report.broken_at(b),
        Ok(()) => report,
    })
}

/// SQLite keeps whatever is written to a column; a value of another type
/// than the writer's can only come from an edit.
fn edited(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    )
}

//! The audit database (SQLite, WAL). A commit of the writer is one row of
//! `batches`: its records' bytes ([`super::seal`]), the chain's head after
//! them and the head's signature, so that a commit costs one insert
//! whatever it holds. `session_spans` indexes where each session's records
//! may be: a row per session per write of the index (every quarter second,
//! not every commit), naming the first and last batch that held its
//! records since the write before; batches after `meta.sessions_through`
//! are not indexed yet and every session lookup reads them.
//! `batch_sessions` is the older index, a row per session per batch (logs
//! written before spans, and fleet mirrors). `checkpoints` keeps the
//! signatures kept apart (one per interval, at stop, and the anchor
//! retention leaves). `records` holds the records
//! of logs begun before batches, a row each; the chain goes on from them.
//!
//! The daemon's writer thread is the only writer; the CLI and exports open
//! their own read-only connections, which WAL lets run beside the writer.
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::chain::{Checkpoint, GENESIS, Record};

/// Schema migrations, applied in order; `user_version` is the count done.
/// Every column of `records` but `hash` is covered by the hash, so
/// nothing outside the hashed bytes decides what `hoop sessions` shows;
/// in `batches`, the seqs and times are checked against the records'.
const MIGRATIONS: [&str; 4] = [
    "CREATE TABLE records (
        seq INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        session TEXT NOT NULL,
        data TEXT NOT NULL,
        req_body BLOB,
        resp_body BLOB,
        hash BLOB NOT NULL
    );
    CREATE INDEX records_session ON records(session, seq);
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        hash BLOB NOT NULL,
        sig BLOB NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    "CREATE TABLE batches (
        first_seq INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        first_ts INTEGER NOT NULL,
        last_ts INTEGER NOT NULL,
        codec INTEGER NOT NULL,
        records BLOB NOT NULL,
        head BLOB NOT NULL,
        sig BLOB
    );
    CREATE TABLE batch_sessions (
        session TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        PRIMARY KEY (session, first_seq)
    ) WITHOUT ROWID;",
    // The fleet's shipper reads the sessions of a run of batches.
    "CREATE INDEX batch_sessions_first ON batch_sessions(first_seq);",
    // A row per session per flush instead of per commit: with many jobs,
    // per-batch rows were the costliest part of a commit. What batches
    // exist now are indexed by `batch_sessions` already.
    "CREATE TABLE session_spans (
        session TEXT NOT NULL,
        first_batch INTEGER NOT NULL,
        last_batch INTEGER NOT NULL,
        PRIMARY KEY (session, first_batch)
    ) WITHOUT ROWID;
    CREATE INDEX session_spans_last ON session_spans(last_batch);
    INSERT OR REPLACE INTO meta (key, value)
        SELECT 'sessions_through', COALESCE(MAX(first_seq), -1) FROM batches;",
];

/// A database as hoops before batches left it (for the migration test).
#[cfg(test)]
pub fn create_first_layout(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(MIGRATIONS[0])?;
    db.pragma_update(None, "user_version", 1)
}

/// The schema this hoop writes.
pub const VERSION: usize = MIGRATIONS.len();

#[derive(Debug, thiserror::Error)]
#[error("audit database {path}: {message}")]
pub struct StoreError {
    pub path: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

pub use crate::config::audit::Sync;

/// Opens (creating and migrating) the database for the writer.
pub fn open_writer(path: &Path, sync: Sync, max_bytes: Option<u64>) -> Result<Connection> {
    let e = err(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|x| StoreError {
            path: dir.display().to_string(),
            message: x.to_string(),
        })?;
    }
    // Owner only: the record holds what jobs sent and saw. SQLite gives
    // the WAL and its index the database file's mode.
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|x| StoreError {
                path: path.display().to_string(),
                message: x.to_string(),
            })?;
    }
    let db = Connection::open(path).map_err(&e)?;
    db.pragma_update(None, "journal_mode", "WAL").map_err(&e)?;
    db.pragma_update(
        None,
        "synchronous",
        match sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        },
    )
    .map_err(&e)?;
    db.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(&e)?;
    let done: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&e)?;
    if done as usize > MIGRATIONS.len() {
        return Err(StoreError {
            path: path.display().to_string(),
            message: format!(
                "schema version {done} is newer than this hoop knows ({}); refusing to write",
                MIGRATIONS.len()
            ),
        });
    }
    for (n, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let tx = db.unchecked_transaction().map_err(&e)?;
        tx.execute_batch(m).map_err(&e)?;
        tx.pragma_update(None, "user_version", n as i64 + 1)
            .map_err(&e)?;
        tx.commit().map_err(&e)?;
    }
    if let Some(max) = max_bytes {
        let page: i64 = db
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(&e)?;
        db.pragma_update(None, "max_page_count", (max as i64 / page).max(1))
            .map_err(&e)?;
    }
    Ok(db)
}

/// Opens an existing database read-only (the CLI, exports, verify).
pub fn open_reader(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(StoreError {
            path: path.display().to_string(),
            message: "no such file (has the daemon recorded anything yet? is --db right?)".into(),
        });
    }
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err(path))?;
    db.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err(path))?;
    Ok(db)
}

/// True once the database has the batched layout (a database only a
/// hoop before it wrote, read by the CLI, has not).
pub fn batched(db: &Connection) -> rusqlite::Result<bool> {
    Ok(version(db)? >= 2)
}

/// The migrations done on this database.
fn version(db: &Connection) -> rusqlite::Result<i64> {
    db.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// One commit as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    /// How `records` is stored ([`super::seal::unpack`]).
    pub codec: u8,
    /// The records, as [`super::seal::append`] lays them out, packed.
    pub records: Vec<u8>,
    /// The chain's hash after `last_seq`.
    pub head: [u8; 32],
    /// The head's signature; none where something other than a hoop
    /// daemon appended.
    pub sig: Option<Vec<u8>>,
}

impl Batch {
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            seq: self.last_seq,
            hash: self.head,
            sig: self.sig.clone()?,
        })
    }
}

const BATCH_COLUMNS: &str = "first_seq, last_seq, first_ts, last_ts, codec, records, head, sig";

fn batch(r: &rusqlite::Row<'_>) -> rusqlite::Result<Batch> {
    Ok(Batch {
        first_seq: r.get::<_, i64>(0)? as u64,
        last_seq: r.get::<_, i64>(1)? as u64,
        first_ts: r.get::<_, i64>(2)? as u64,
        last_ts: r.get::<_, i64>(3)? as u64,
        codec: r.get(4)?,
        records: r.get(5)?,
        head: hash32(r.get(6)?),
        sig: r.get(7)?,
    })
}

pub fn insert_batch(db: &Connection, b: &Batch) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO batches (first_seq, last_seq, first_ts, last_ts, codec, records, head, sig)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        b.first_seq as i64,
        b.last_seq as i64,
        b.first_ts as i64,
        b.last_ts as i64,
        b.codec,
        b.records,
        &b.head[..],
        b.sig
    ])?;
    Ok(())
}

/// Notes that the batch at `first_seq` holds records of `session` (the
/// older, per-batch index: fleet mirrors write it).
pub fn insert_session(db: &Connection, session: &str, first_seq: u64) -> rusqlite::Result<()> {
    db.prepare_cached("INSERT OR IGNORE INTO batch_sessions (session, first_seq) VALUES (?1, ?2)")?
        .execute(params![session, first_seq as i64])?;
    Ok(())
}

/// Where `session`'s records were between two flushes of the index: in
/// some of the batches starting at `first_batch..=last_batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first_batch: u64,
    pub last_batch: u64,
}

const THROUGH: &str = "sessions_through";

/// Indexes `spans` and marks every batch starting at or before `through`
/// as indexed. A span's batches all start after the last mark.
pub fn insert_spans<'a>(
    db: &Connection,
    spans: impl IntoIterator<Item = (&'a str, Span)>,
    through: u64,
) -> rusqlite::Result<()> {
    let mut st = db.prepare_cached(
        "INSERT OR REPLACE INTO session_spans (session, first_batch, last_batch) VALUES (?1, ?2, ?3)",
    )?;
    for (s, span) in spans {
        st.execute(params![s, span.first_batch as i64, span.last_batch as i64])?;
    }
    set_meta(db, THROUGH, &through.to_string())
}

/// The last batch the session index covers: `None` where it covers every
/// batch (a layout before spans: a row per batch), `-1` where it covers
/// none yet (or its mark is gone: every batch is then read).
pub fn sessions_through(db: &Connection) -> rusqlite::Result<Option<i64>> {
    if version(db)? < 4 {
        return Ok(None);
    }
    Ok(Some(
        meta(db, THROUGH)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1),
    ))
}

/// The first seqs of the batches holding (or, for spans, possibly
/// holding) `session`'s records that end at or after `from`, in order:
/// its spans' batches, its per-batch rows, and every batch the index does
/// not cover yet. Readers filter the records by session.
fn session_batches(db: &Connection, from: u64, session: &str) -> rusqlite::Result<Vec<i64>> {
    let through = sessions_through(db)?.unwrap_or(i64::MAX);
    // A log no hoop with spans has written (read by the CLI) has no table.
    let spans = match version(db)? >= 4 {
        true => {
            "SELECT b.first_seq FROM session_spans s JOIN batches b
               ON b.first_seq BETWEEN s.first_batch AND s.last_batch
               WHERE s.session = ?2 AND b.last_seq >= ?1
             UNION"
        }
        false => "",
    };
    let mut st = db.prepare(&format!(
        "{spans}
         SELECT b.first_seq FROM batch_sessions s JOIN batches b ON b.first_seq = s.first_seq
           WHERE s.session = ?2 AND b.last_seq >= ?1
         UNION
         SELECT first_seq FROM batches WHERE first_seq > ?3 AND last_seq >= ?1
         ORDER BY 1"
    ))?;
    st.query_map(params![from as i64, session, through], |r| r.get(0))?
        .collect()
}

/// Calls `f` with every batch that holds records from `from` on (those of
/// `session` only, if given), in order, until it returns false.
pub fn each_batch(
    db: &Connection,
    from: u64,
    session: Option<&str>,
    mut f: impl FnMut(rusqlite::Result<Batch>) -> bool,
) -> rusqlite::Result<()> {
    if !batched(db)? {
        return Ok(());
    }
    if let Some(s) = session {
        // The keys first (integers, no blobs to sort), then each batch.
        let mut st = db.prepare_cached(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE first_seq = ?1"
        ))?;
        for key in session_batches(db, from, s)? {
            if let Some(b) = st.query_row([key], batch).optional().transpose()
                && !f(b)
            {
                break;
            }
        }
        return Ok(());
    }
    let mut st = db.prepare(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE last_seq >= ?1 ORDER BY first_seq"
    ))?;
    let mut rows = st.query(params![from as i64])?;
    while let Some(r) = rows.next()? {
        if !f(batch(r)) {
            break;
        }
    }
    Ok(())
}

/// Calls `f` with every record of the first layout from `from` on (those
/// of `session` only, if given), with its stored hash, until it returns
/// false.
pub fn each_row(
    db: &Connection,
    from: u64,
    session: Option<&str>,
    mut f: impl FnMut(rusqlite::Result<(Record, [u8; 32])>) -> bool,
) -> rusqlite::Result<()> {
    let mut st;
    let mut rows = match session {
        None => {
            st = db.prepare(&format!(
                "SELECT {ROW_COLUMNS} FROM records WHERE seq >= ?1 ORDER BY seq"
            ))?;
            st.query(params![from as i64])?
        }
        Some(s) => {
            st = db.prepare(&format!(
                "SELECT {ROW_COLUMNS} FROM records WHERE seq >= ?1 AND session = ?2 ORDER BY seq"
            ))?;
            st.query(params![from as i64, s])?
        }
    };
    while let Some(r) = rows.next()? {
        if !f(row(r)) {
            break;
        }
    }
    Ok(())
}

/// The chain's head: the last record's seq and hash.
pub fn head(db: &Connection) -> rusqlite::Result<Option<(u64, [u8; 32])>> {
    if batched(db)?
        && let Some(h) = db
            .query_row(
                "SELECT last_seq, head FROM batches ORDER BY first_seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, hash32(r.get(1)?))),
            )
            .optional()?
    {
        return Ok(Some(h));
    }
    db.query_row(
        "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, hash32(r.get(1)?))),
    )
    .optional()
}

/// The hash the chain has just before record `seq` (the first of a batch):
/// the batch before's head, the record before's hash, the checkpoint
/// retention left there, or the genesis.
pub fn hash_before(db: &Connection, seq: u64) -> rusqlite::Result<[u8; 32]> {
    let Some(before) = seq.checked_sub(1) else {
        return Ok(GENESIS);
    };
    let one = |sql: &str| {
        db.query_row(sql, [before as i64], |r| r.get::<_, Vec<u8>>(0))
            .optional()
    };
    let found = match batched(db)? {
        true => one("SELECT head FROM batches WHERE last_seq = ?1")?,
        false => None,
    };
    let found = match found {
        Some(h) => Some(h),
        None => one("SELECT hash FROM records WHERE seq = ?1")?,
    };
    let found = match found {
        Some(h) => Some(h),
        None => one("SELECT hash FROM checkpoints WHERE seq = ?1")?,
    };
    Ok(found.map_or(GENESIS, hash32))
}

pub fn last_ts(db: &Connection) -> rusqlite::Result<u64> {
    let batch = match batched(db)? {
        true => db
            .query_row(
                "SELECT last_ts FROM batches ORDER BY first_seq DESC LIMIT 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?,
        false => None,
    };
    let row = db
        .query_row(
            "SELECT ts_ms FROM records ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?;
    Ok(batch.or(row).unwrap_or(0) as u64)
}

/// A seq from which the records at or after `ts_ms` start: the first
/// such record, or the first of the batch that holds it (readers skip the
/// older ones before it). Times never decrease along the chain (the
/// writer sees to it), so this bisects on the primary keys: no time index
/// for every commit to update.
pub fn first_seq_since(db: &Connection, ts_ms: u64) -> rusqlite::Result<Option<u64>> {
    let rows = |seq: i64| -> rusqlite::Result<Option<(i64, u64)>> {
        db.query_row(
            "SELECT seq, ts_ms FROM records WHERE seq >= ?1 ORDER BY seq LIMIT 1",
            [seq],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
        )
        .optional()
    };
    if let Some(s) = bisect(rows, ts_ms)? {
        return Ok(Some(s));
    }
    if !batched(db)? {
        return Ok(None);
    }
    let batches = |seq: i64| -> rusqlite::Result<Option<(i64, u64)>> {
        db.query_row(
            "SELECT first_seq, last_ts FROM batches WHERE first_seq >= ?1 ORDER BY first_seq LIMIT 1",
            [seq],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
        )
        .optional()
    };
    bisect(batches, ts_ms)
}

/// The first key whose time is at or after `ts_ms`, `at(k)` giving the
/// first key ≥ k and its time.
fn bisect(
    at: impl Fn(i64) -> rusqlite::Result<Option<(i64, u64)>>,
    ts_ms: u64,
) -> rusqlite::Result<Option<u64>> {
    let Some((first, t)) = at(i64::MIN)? else {
        return Ok(None);
    };
    if t >= ts_ms {
        return Ok(Some(first as u64));
    }
    // Invariant: the key at or after `lo` is older than ts_ms; `hi` is
    // past every candidate.
    let (mut lo, mut hi) = (first, i64::MAX);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match at(mid)? {
            Some((_, t)) if t < ts_ms => lo = mid,
            _ => hi = mid,
        }
    }
    Ok(at(hi)?.map(|(s, _)| s as u64))
}

/// A record of the first layout (tests build such logs).
pub fn insert(db: &Connection, r: &Record, hash: &[u8; 32]) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO records (seq, ts_ms, kind, session, data, req_body, resp_body, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        r.seq as i64,
        r.ts_ms as i64,
        r.kind,
        r.session,
        r.data,
        r.req_body,
        r.resp_body,
        &hash[..]
    ])?;
    Ok(())
}

pub fn insert_checkpoint(db: &Connection, c: &Checkpoint, ts_ms: u64) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT OR REPLACE INTO checkpoints (seq, ts_ms, hash, sig) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![c.seq as i64, ts_ms as i64, &c.hash[..], c.sig])?;
    Ok(())
}

/// The first record still in the log.
pub fn first_seq(db: &Connection) -> rusqlite::Result<Option<u64>> {
    let row = db.query_row("SELECT MIN(seq) FROM records", [], |r| {
        r.get::<_, Option<i64>>(0)
    })?;
    if row.is_some() || !batched(db)? {
        return Ok(row.map(|s| s as u64));
    }
    db.query_row("SELECT MIN(first_seq) FROM batches", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|s| s.map(|s| s as u64))
}

pub fn checkpoints(db: &Connection) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut st = db.prepare("SELECT seq, hash, sig FROM checkpoints ORDER BY seq")?;
    st.query_map([], checkpoint)?.collect()
}

/// A checkpoint from a row that starts `seq, hash, sig`.
fn checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: r.get::<_, i64>(0)? as u64,
        hash: hash32(r.get(1)?),
        sig: r.get(2)?,
    })
}

/// The kept checkpoints with their times, in `first..=last`.
pub fn checkpoints_between(
    db: &Connection,
    first: u64,
    last: u64,
) -> rusqlite::Result<Vec<(Checkpoint, u64)>> {
    let mut st = db.prepare_cached(
        "SELECT seq, hash, sig, ts_ms FROM checkpoints WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    st.query_map(params![first as i64, last as i64], |r| {
        Ok((checkpoint(r)?, r.get::<_, i64>(3)? as u64))
    })?
    .collect()
}

/// The last record a signature was made at: a kept checkpoint, or a
/// batch's own.
pub fn last_signed_seq(db: &Connection) -> rusqlite::Result<Option<u64>> {
    let kept = db
        .query_row("SELECT MAX(seq) FROM checkpoints", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .map(|s| s as u64);
    let batch = match batched(db)? {
        true => db
            .query_row(
                "SELECT last_seq FROM batches WHERE sig IS NOT NULL ORDER BY first_seq DESC LIMIT 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|s| s as u64),
        false => None,
    };
    Ok(kept.max(batch))
}

/// The signature a batch ending at `seq` carries, if any.
pub fn batch_signature(db: &Connection, seq: u64) -> rusqlite::Result<Option<Checkpoint>> {
    if !batched(db)? {
        return Ok(None);
    }
    db.query_row(
        "SELECT head, sig FROM batches WHERE last_seq = ?1 AND sig IS NOT NULL",
        [seq as i64],
        |r| {
            Ok(Checkpoint {
                seq,
                hash: hash32(r.get(0)?),
                sig: r.get(1)?,
            })
        },
    )
    .optional()
}

pub fn meta(db: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub fn set_meta(db: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        [key, value],
    )?;
    Ok(())
}

/// A stored record of the first layout and its stored hash.
pub fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Record, [u8; 32])> {
    Ok((
        Record {
            seq: r.get::<_, i64>(0)? as u64,
            ts_ms: r.get::<_, i64>(1)? as u64,
            kind: r.get(2)?,
            session: r.get(3)?,
            data: r.get(4)?,
            req_body: r.get(5)?,
            resp_body: r.get(6)?,
        },
        hash32(r.get(7)?),
    ))
}

/// The columns [`row`] reads, in order.
pub const ROW_COLUMNS: &str = "seq, ts_ms, kind, session, data, req_body, resp_body, hash";

/// A stored hash of the wrong length can't match anything: all ones.
fn hash32(v: Vec<u8>) -> [u8; 32] {
    v.try_into().unwrap_or([0xff; 32])
}

/// Removes the records up to and including `seq` (a kept checkpoint,
/// always at a batch's end, that stays as the anchor of what remains) and
/// the checkpoints before it. Returns how many records went.
pub fn prune_through(db: &mut Connection, seq: u64) -> rusqlite::Result<u64> {
    let tx = db.transaction()?;
    let mut n = tx.execute("DELETE FROM records WHERE seq <= ?1", [seq as i64])? as u64;
    if batched(&tx)? {
        n += tx
            .query_row(
                "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM batches WHERE last_seq <= ?1",
                [seq as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|c| c as u64)?;
        tx.execute("DELETE FROM batches WHERE last_seq <= ?1", [seq as i64])?;
        tx.execute(
            "DELETE FROM batch_sessions WHERE first_seq <= ?1",
            [seq as i64],
        )?;
        if version(&tx)? >= 4 {
            tx.execute(
                "DELETE FROM session_spans WHERE last_batch <= ?1",
                [seq as i64],
            )?;
        }
    }
    tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [seq as i64])?;
    tx.commit()?;
    Ok(n)
}

/// The oldest kept checkpoint older than `cutoff_ms` with records still
/// at or before it: retention prunes through it.
pub fn oldest_checkpoint_before(
    db: &Connection,
    cutoff_ms: u64,
    below: u64,
) -> rusqlite::Result<Option<u64>> {
    let Some(first) = first_seq(db)? else {
        return Ok(None);
    };
    db.query_row(
        "SELECT MIN(seq) FROM checkpoints WHERE ts_ms < ?1 AND seq >= ?2 AND seq < ?3",
        params![
            cutoff_ms as i64,
            first as i64,
            below.min(i64::MAX as u64) as i64
        ],
        |r| r.get::<_, Option<i64>>(0),
    )
    .map(|s| s.map(|s| s as u64))
}

/// The oldest kept checkpoint at or after `seq`.
pub fn first_checkpoint_from(db: &Connection, seq: u64) -> rusqlite::Result<Option<u64>> {
    db.query_row(
        "SELECT MIN(seq) FROM checkpoints WHERE seq >= ?1",
        [seq.min(i64::MAX as u64) as i64],
        |r| r.get::<_, Option<i64>>(0),
    )
    .map(|s| s.map(|s| s as u64))
}

/// Up to `limit` batches from the one starting at `first` on, in order
/// (by the key: a shipper's round costs what it reads).
pub fn batches_from(db: &Connection, first: u64, limit: usize) -> rusqlite::Result<Vec<Batch>> {
    if !batched(db)? {
        return Ok(Vec::new());
    }
    let mut st = db.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE first_seq >= ?1 ORDER BY first_seq LIMIT ?2"
    ))?;
    st.query_map(params![first as i64, limit as i64], batch)?
        .collect()
}

/// The batch that ends at `seq`, if there is one: its head.
pub fn head_at(db: &Connection, seq: u64) -> rusqlite::Result<Option<[u8; 32]>> {
    if !batched(db)? {
        return Ok(None);
    }
    db.query_row(
        "SELECT head FROM batches WHERE last_seq = ?1",
        [seq as i64],
        |r| r.get::<_, Vec<u8>>(0),
    )
    .optional()
    .map(|h| h.map(hash32))
}

/// The first seq of the oldest batch.
pub fn first_batch(db: &Connection) -> rusqlite::Result<Option<u64>> {
    if !batched(db)? {
        return Ok(None);
    }
    db.query_row("SELECT MIN(first_seq) FROM batches", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|s| s.map(|s| s as u64))
}

//! The audit database (SQLite, WAL): the chained records, the signed
//! checkpoints and a little metadata. The daemon's writer thread is the
//! only writer; the CLI and exports open their own read-only connections,
//! which WAL lets run beside the writer without blocking it.
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::chain::{Checkpoint, Record};

/// Schema migrations, applied in order; `user_version` is the count done.
/// Every column of `records` but `hash` is covered by the hash, so
/// nothing outside the hashed bytes decides what `hoop sessions` shows.
const MIGRATIONS: [&str; 1] = ["CREATE TABLE records (
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
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"];

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

/// The chain's head: the last record's seq and hash.
pub fn head(db: &Connection) -> rusqlite::Result<Option<(u64, [u8; 32])>> {
    db.query_row(
        "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, hash32(r.get(1)?))),
    )
    .optional()
}

pub fn last_ts(db: &Connection) -> rusqlite::Result<u64> {
    db.query_row(
        "SELECT ts_ms FROM records ORDER BY seq DESC LIMIT 1",
        [],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|t| t.unwrap_or(0) as u64)
}

/// The first record at or after `ts_ms`. Times never decrease along the
/// chain (the writer sees to it), so this bisects on the primary key: no
/// time index for every commit to update.
pub fn first_seq_since(db: &Connection, ts_ms: u64) -> rusqlite::Result<Option<u64>> {
    let at = |seq: i64| -> rusqlite::Result<Option<(i64, u64)>> {
        db.query_row(
            "SELECT seq, ts_ms FROM records WHERE seq >= ?1 ORDER BY seq LIMIT 1",
            [seq],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
        )
        .optional()
    };
    let Some((first, t)) = at(i64::MIN)? else {
        return Ok(None);
    };
    if t >= ts_ms {
        return Ok(Some(first as u64));
    }
    let Some((last, _)) = head(db)?.map(|(s, h)| (s as i64, h)) else {
        return Ok(None);
    };
    // Invariant: the record at or after `lo` is older than ts_ms; `hi` is
    // past every candidate.
    let (mut lo, mut hi) = (first, last + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match at(mid)? {
            Some((_, t)) if t < ts_ms => lo = mid,
            _ => hi = mid,
        }
    }
    Ok(at(hi)?.map(|(s, _)| s as u64))
}

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

/// Removes the signature at `seq`: the writer's previous head signature,
/// which the next commit's signature (over a chain that includes it)
/// replaces.
pub fn delete_checkpoint(db: &Connection, seq: u64) -> rusqlite::Result<()> {
    db.prepare_cached("DELETE FROM checkpoints WHERE seq = ?1")?
        .execute([seq as i64])?;
    Ok(())
}

/// The first record still in the log.
pub fn first_seq(db: &Connection) -> rusqlite::Result<Option<u64>> {
    db.query_row("SELECT MIN(seq) FROM records", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|s| s.map(|s| s as u64))
}

pub fn checkpoints(db: &Connection) -> rusqlite::Result<Vec<Checkpoint>> {
    let mut st = db.prepare("SELECT seq, hash, sig FROM checkpoints ORDER BY seq")?;
    st.query_map([], |r| {
        Ok(Checkpoint {
            seq: r.get::<_, i64>(0)? as u64,
            hash: hash32(r.get(1)?),
            sig: r.get(2)?,
        })
    })?
    .collect()
}

pub fn last_checkpoint_seq(db: &Connection) -> rusqlite::Result<Option<u64>> {
    db.query_row("SELECT MAX(seq) FROM checkpoints", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .map(|s| s.map(|s| s as u64))
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

/// A stored record and its stored hash, as read back.
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

/// Removes the records up to and including `seq` (a checkpoint that stays
/// as the anchor of what remains) and the checkpoints before it.
pub fn prune_through(db: &mut Connection, seq: u64) -> rusqlite::Result<usize> {
    let tx = db.transaction()?;
    let n = tx.execute("DELETE FROM records WHERE seq <= ?1", [seq as i64])?;
    tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [seq as i64])?;
    tx.commit()?;
    Ok(n)
}

/// The oldest checkpoint whose record is still there and older than
/// `cutoff_ms`: retention prunes through it.
pub fn oldest_checkpoint_before(db: &Connection, cutoff_ms: u64) -> rusqlite::Result<Option<u64>> {
    db.query_row(
        "SELECT MIN(c.seq) FROM checkpoints c JOIN records r ON r.seq = c.seq
         WHERE r.ts_ms < ?1",
        [cutoff_ms as i64],
        |r| r.get::<_, Option<i64>>(0),
    )
    .map(|s| s.map(|s| s as u64))
}

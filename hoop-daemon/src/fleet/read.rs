//! Fleet reads: a host's shipped batches brought back from the server into
//! a scratch SQLite file in the local layout, so that the local readers
//! (sessions, timelines, exports, the policy dry-run) and the verifier run
//! on it unchanged, with nothing of their own to trust about the server.
use std::path::Path;

use futures_util::{StreamExt, pin_mut};
use tokio_postgres::{Client, Row, types::ToSql};

use super::{FleetError, schema};
use crate::audit::{
    chain::Checkpoint,
    store::{self, Batch},
};

/// A host as the server knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Host {
    pub host_id: String,
    /// Its audit signing key (base64), as it registered.
    pub public_key: String,
    pub shipped_seq: Option<u64>,
    /// When it last shipped (ms since the epoch).
    pub shipped_ms: Option<u64>,
}

/// The hosts on the server (one, if `only` names it), by id.
pub async fn hosts(client: &Client, only: Option<&str>) -> Result<Vec<Host>, FleetError> {
    schema::check(client).await?;
    let rows = client
        .query(
            "SELECT host_id, public_key, shipped_seq,
                    (extract(epoch FROM shipped_at) * 1000)::int8
             FROM hoop.hosts WHERE $1::text IS NULL OR host_id = $1 ORDER BY host_id",
            &[&only],
        )
        .await?;
    let hosts: Vec<Host> = rows
        .iter()
        .map(|r| Host {
            host_id: r.get(0),
            public_key: r.get(1),
            shipped_seq: r.get::<_, Option<i64>>(2).map(|s| s as u64),
            shipped_ms: r.get::<_, Option<i64>>(3).map(|s| s as u64),
        })
        .collect();
    if let (Some(id), true) = (only, hosts.is_empty()) {
        return Err(FleetError::Refused(format!(
            "no host {id:?} on the server (`hoop audit verify --fleet` lists every host)"
        )));
    }
    Ok(hosts)
}

/// Which of a host's batches to bring back.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// All of them (what `verify` walks).
    All,
    /// Those with records at or after this time (ms).
    Since(u64),
    /// Those holding a session's records, and the batch before each (the
    /// chain's hash before a record is the one before it).
    Session(&'a str),
}

const COLUMNS: &str = "first_seq, last_seq, first_ts, last_ts, codec, records, head, sig";

/// Writes `host`'s batches in `scope`, their sessions, every checkpoint
/// and the host's key into a new database at `path`. The batches brought
/// back.
pub async fn mirror(
    client: &Client,
    host: &Host,
    scope: Scope<'_>,
    path: &Path,
) -> Result<u64, FleetError> {
    let local = |e: rusqlite::Error| FleetError::Local(format!("{}: {e}", path.display()));
    let mut db = store::open_writer(path, store::Sync::Normal, None)
        .map_err(|e| FleetError::Local(e.to_string()))?;
    store::set_meta(&db, "public_key", &host.public_key).map_err(local)?;
    let id = host.host_id.as_str();
    let (filter, arg): (&str, Option<Box<dyn ToSql + Sync>>) = match scope {
        Scope::All => ("TRUE", None),
        Scope::Since(ms) => ("last_ts >= $2", Some(Box::new(ms as i64))),
        Scope::Session(s) => (
            "(first_seq IN (SELECT first_seq FROM hoop.batch_sessions WHERE host_id = $1 AND session = $2)
              OR last_seq + 1 IN (SELECT first_seq FROM hoop.batch_sessions WHERE host_id = $1 AND session = $2))",
            Some(Box::new(s.to_string())),
        ),
    };
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
    if let Some(a) = &arg {
        params.push(a.as_ref());
    }
    let tx = db.transaction().map_err(local)?;
    let rows = client
        .query_raw(
            &format!(
                "SELECT {COLUMNS} FROM hoop.batches WHERE host_id = $1 AND {filter} ORDER BY first_seq"
            ),
            params.iter().copied(),
        )
        .await?;
    pin_mut!(rows);
    let mut n = 0;
    let (mut lo, mut hi) = (u64::MAX, 0);
    while let Some(row) = rows.next().await {
        let b = batch(&row?);
        (lo, hi) = (lo.min(b.first_seq), hi.max(b.first_seq));
        store::insert_batch(&tx, &b).map_err(local)?;
        n += 1;
    }
    if n > 0 {
        let sessions = client
            .query(
                "SELECT session, first_seq FROM hoop.batch_sessions
                 WHERE host_id = $1 AND first_seq BETWEEN $2 AND $3",
                &[&id, &(lo as i64), &(hi as i64)],
            )
            .await?;
        for r in sessions {
            store::insert_session(&tx, r.get(0), r.get::<_, i64>(1) as u64).map_err(local)?;
        }
        // The server's index covers every batch it has.
        store::insert_spans(&tx, [], hi).map_err(local)?;
    }
    for r in client
        .query(
            "SELECT seq, ts_ms, hash, sig FROM hoop.checkpoints WHERE host_id = $1",
            &[&id],
        )
        .await?
    {
        let c = Checkpoint {
            seq: r.get::<_, i64>(0) as u64,
            hash: hash32(r.get(2)),
            sig: r.get(3),
        };
        store::insert_checkpoint(&tx, &c, r.get::<_, i64>(1) as u64).map_err(local)?;
    }
    tx.commit().map_err(local)?;
    Ok(n)
}

fn batch(r: &Row) -> Batch {
    Batch {
        first_seq: r.get::<_, i64>(0) as u64,
        last_seq: r.get::<_, i64>(1) as u64,
        first_ts: r.get::<_, i64>(2) as u64,
        last_ts: r.get::<_, i64>(3) as u64,
        codec: r.get::<_, i16>(4) as u8,
        records: r.get(5),
        head: hash32(r.get(6)),
        sig: r.get(7),
    }
}

/// A stored hash; an edited one of another length reads as zeros, which
/// no chain reaches.
fn hash32(v: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(v).unwrap_or([0; 32])
}

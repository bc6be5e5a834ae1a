//! The shipper: a task beside the data path that sends the local log's
//! committed batches to the fleet's server, in order, in transactions of
//! up to [`CHUNK`] batches. Nothing on the request path waits for it.
//!
//! Each batch is checked before it leaves (it continues the chain from
//! the last one shipped, and its signature is this host's), and stored
//! under `(host_id, first_seq)`: after a crash or a lost link the shipper
//! asks the server where this host's chain ends and goes on from there,
//! so a batch is never stored twice. While the server is away the local
//! log is the spool, and retention keeps every record not yet shipped.
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rusqlite::Connection;
use serde::Serialize;
use tokio_postgres::Client;

use super::{FleetError, Target, schema};
use crate::audit::{self, chain::Checkpoint, seal, store, verify};

/// Batches per transaction: bounds what one round holds in memory.
pub const CHUNK: usize = 256;
/// How often an idle shipper looks for new batches.
const POLL: Duration = Duration::from_millis(200);
/// The longest wait between attempts to reach the server.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What `hoop status` shows of the shipping.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ShipStatus {
    pub host_id: String,
    pub server: String,
    pub connected: bool,
    /// The last record the server has from this host.
    pub shipped_seq: Option<u64>,
    /// The last record in the local log.
    pub local_seq: Option<u64>,
    /// Records in the local log the server does not have yet.
    pub lag_records: u64,
    /// How long since the server had every record, in seconds (0 when it
    /// has them all).
    pub lag_seconds: u64,
    pub batches_shipped: u64,
    /// Why the last attempt failed, while it has not succeeded since.
    pub error: Option<String>,
    /// Why the shared approval queue is away (none while it is here).
    #[serde(default)]
    pub approvals_error: Option<String>,
}

/// The shipper's shared state.
pub struct Shipping {
    /// The audit log's spool: its `keep_from` is the first record the
    /// server does not have (retention keeps it and all after it).
    spool: Arc<audit::Spool>,
    /// Where the last shipped mark is kept between runs.
    mark: PathBuf,
    status: Mutex<ShipStatus>,
    /// When the server last had every record (ms): the lag's age.
    caught_up_ms: AtomicU64,
    /// The local log's counters (its next seq).
    local: std::sync::OnceLock<Arc<audit::Stats>>,
}

impl Shipping {
    /// `keep_from` starts at the mark kept by the last run (0 without one)
    /// until the server says where it stands.
    pub fn new(target: &Target, spool: Arc<audit::Spool>, mark: PathBuf) -> Arc<Self> {
        if let Some(next) = read_mark(&mark, &target.host_id) {
            spool.keep_from.store(next, Ordering::Release);
        }
        Arc::new(Self {
            spool,
            mark,
            status: Mutex::new(ShipStatus {
                host_id: target.host_id.clone(),
                server: target.display.clone(),
                ..ShipStatus::default()
            }),
            caught_up_ms: AtomicU64::new(crate::jobs::Jobs::now_ms()),
            local: std::sync::OnceLock::new(),
        })
    }

    pub fn status(&self) -> ShipStatus {
        let mut s = self.status.lock().unwrap().clone();
        let next = self
            .local
            .get()
            .map_or(0, |l| l.next_seq.load(Ordering::Acquire));
        s.local_seq = next.checked_sub(1);
        s.lag_records = self.spool.unshipped(next);
        s.lag_seconds = match s.lag_records {
            0 => 0,
            _ => {
                crate::jobs::Jobs::now_ms()
                    .saturating_sub(self.caught_up_ms.load(Ordering::Relaxed))
                    / 1000
            }
        };
        s
    }

    /// Waits (up to `timeout`) until the server has every record of the
    /// local log, if it is connected: what a stopping daemon gives it.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.status();
            if s.lag_records == 0 {
                return true;
            }
            if !s.connected || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn update(&self, f: impl FnOnce(&mut ShipStatus)) {
        f(&mut self.status.lock().unwrap());
    }

    fn caught_up(&self) {
        self.caught_up_ms
            .store(crate::jobs::Jobs::now_ms(), Ordering::Relaxed);
    }
}

/// Starts the shipper for the log at `db`, signed with `pubkey`: on a
/// thread of its own, with its own runtime, which [`Pace`] keeps at
/// SCHED_IDLE while it keeps up. Reading, checking and sending a round of
/// batches then uses only what the requests leave of a core: the spool
/// absorbs a lag, a request does not wait behind a round.
pub fn spawn(
    target: Target,
    db: PathBuf,
    pubkey: Vec<u8>,
    local: Arc<audit::Stats>,
    shipping: Arc<Shipping>,
) -> std::io::Result<()> {
    let _ = shipping.local.set(local);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("hoop-fleet-ship")
        .build()?;
    std::thread::Builder::new()
        .name("hoop-fleet-ship".into())
        .spawn(move || runtime.block_on(ship(target, db, pubkey, shipping)))?;
    Ok(())
}

/// Connects, ships until something fails, waits, again: forever.
async fn ship(target: Target, db: PathBuf, pubkey: Vec<u8>, shipping: Arc<Shipping>) {
    let mut backoff = Duration::from_millis(250);
    let mut last_error = String::new();
    let mut pace = Pace::Normal;
    loop {
        let e = match connected(&target, &db, &pubkey, &shipping, &mut pace).await {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let text = e.to_string();
        shipping.update(|s| {
            s.connected = false;
            s.error = Some(text.clone());
        });
        if text != last_error {
            tracing::warn!(server = %target.display, error = %text, "fleet: not shipping; the local log keeps every record until it can");
            last_error = text;
        }
        if shipping.status.lock().unwrap().batches_shipped > 0 {
            backoff = backoff.min(Duration::from_secs(1));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How the shipper's thread is scheduled. Idle while it keeps up: it then
/// takes nothing a request could use. Normal once the lag threatens the
/// spool's cap or grows old: on a host whose cores are busy (a CI runner
/// compiling) an idle thread could starve for as long as the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    Idle,
    Normal,
}

/// The lag that makes the shipper compete for the core: a quarter of the
/// cap, or this old.
const URGENT_AGE_S: u64 = 30;

impl Pace {
    fn adjust(self, shipping: &Shipping) -> Self {
        let s = shipping.status();
        let urgent = s.lag_records >= shipping.spool.max / 4 || s.lag_seconds >= URGENT_AGE_S;
        let want = if urgent { Self::Normal } else { Self::Idle };
        if want != self {
            let r = match want {
                Self::Idle => crate::sys::sched_idle_self(),
                Self::Normal => crate::sys::sched_normal_self(),
            };
            match r {
                Ok(()) => {
                    tracing::info!(lag_records = s.lag_records, lag_seconds = s.lag_seconds, pace = ?want, "fleet: shipper priority")
                }
                Err(e) => tracing::debug!(error = %e, "fleet: shipper priority not changed"),
            }
        }
        want
    }
}

/// A loop that ends only with an error.
pub enum Never {}

/// One connection's life: prepare, find where the server stands, ship
/// until something fails.
async fn connected(
    target: &Target,
    db: &std::path::Path,
    pubkey: &[u8],
    shipping: &Shipping,
    pace: &mut Pace,
) -> Result<Never, FleetError> {
    let mut client = target.connect().await?;
    schema::migrate(&mut client).await?;
    register(&client, &target.host_id, &audit::encode_key(pubkey)).await?;
    let local = Local::open(db)?;
    let (mut next, mut prev) = resume(&client, &target.host_id, &local).await?;
    shipping.spool.keep_from.store(next, Ordering::Release);
    shipping.update(|s| {
        s.connected = true;
        s.error = None;
        s.shipped_seq = next.checked_sub(1);
    });
    tracing::info!(server = %target.display, host_id = %target.host_id, from = next, "fleet: shipping");
    loop {
        *pace = pace.adjust(shipping);
        let chunk = local.read(next)?;
        let Some(last) = chunk.batches.last() else {
            shipping.caught_up();
            // Cheap, and it notices a server that went away while idle.
            client.simple_query("").await?;
            tokio::time::sleep(POLL).await;
            continue;
        };
        let last_seq = last.last_seq;
        // Inline: this thread is the shipper's alone.
        prev = continues(next, prev, &chunk, pubkey)?;
        send(&mut client, &target.host_id, &chunk).await?;
        next = last_seq + 1;
        shipping.spool.keep_from.store(next, Ordering::Release);
        write_mark(&shipping.mark, &target.host_id, next);
        if chunk.local_seq == Some(last_seq) {
            shipping.caught_up();
        }
        shipping.update(|s| {
            s.shipped_seq = Some(last_seq);
            s.batches_shipped += chunk.batches.len() as u64;
        });
        // A backlog goes at once; otherwise what commits meanwhile goes
        // together in the next round: a transaction per commit would cost
        // the data path's core more than the records themselves.
        if chunk.batches.len() < CHUNK {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The chunk's batches continue the chain from `prev` at `next`: every
/// link, and the newest signature, which vouches for all before it. The
/// head after them. A gap is crossed only at a checkpoint of this host's
/// (what the writer keeps when it drops records at the spool's cap); the
/// server's `verify` then wants the `dropped` record that names it.
fn continues(
    mut next: u64,
    mut prev: [u8; 32],
    chunk: &Chunk,
    pubkey: &[u8],
) -> Result<[u8; 32], FleetError> {
    let batches = &chunk.batches;
    let signed = batches.iter().rposition(|b| b.sig.is_some());
    for (i, b) in batches.iter().enumerate() {
        if b.first_seq != next {
            let anchor = chunk
                .checkpoints
                .iter()
                .map(|(c, _)| c)
                .find(|c| b.first_seq > next && c.seq + 1 == b.first_seq)
                .ok_or_else(|| {
                    FleetError::Local(format!(
                        "the local log goes from record {} to {} with no checkpoint between; nothing from there on is shipped (run `hoop audit verify`)",
                        next.wrapping_sub(1),
                        b.first_seq
                    ))
                })?;
            crate::audit::chain::check(pubkey, anchor, None)
                .map_err(|broken| FleetError::Local(broken.to_string()))?;
            tracing::warn!(
                from = next,
                to = anchor.seq,
                "fleet: records the server never had were dropped from the local log (the spool was full); shipping goes on after them"
            );
            prev = anchor.hash;
        }
        next = b.last_seq + 1;
        let key = (Some(i) == signed).then_some(pubkey);
        prev = verify::continues(prev, b, key).map_err(|broken| {
            FleetError::Local(format!(
                "{broken}; nothing from there on is shipped (run `hoop audit verify`)"
            ))
        })?;
    }
    Ok(prev)
}

/// The mark's file under the state dir: `HOST_ID NEXT`, the first record
/// the server did not have when this host last shipped. A stale mark only
/// keeps more; the server has the last word once it answers.
pub const MARK_FILE: &str = "fleet-shipped";

fn read_mark(path: &std::path::Path, host_id: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let (id, next) = text.trim().split_once(' ')?;
    (id == host_id).then(|| next.parse().ok()).flatten()
}

fn write_mark(path: &std::path::Path, host_id: &str, next: u64) {
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, format!("{host_id} {next}\n"))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "fleet: the shipped mark was not kept");
    }
}

/// The host's row: its signing key. Another key under this id is another
/// host (or this one's key replaced): refused, nothing shipped.
async fn register(client: &Client, host_id: &str, pubkey: &str) -> Result<(), FleetError> {
    client
        .execute(
            "INSERT INTO hoop.hosts (host_id, public_key) VALUES ($1, $2)
             ON CONFLICT (host_id) DO NOTHING",
            &[&host_id, &pubkey],
        )
        .await?;
    let known: String = client
        .query_one(
            "SELECT public_key FROM hoop.hosts WHERE host_id = $1",
            &[&host_id],
        )
        .await?
        .get(0);
    if known != pubkey {
        return Err(FleetError::Refused(format!(
            "host_id {host_id:?} is registered on the server with another signing key: another host uses this id, or this host's audit key was replaced; give each host its own [fleet] host_id"
        )));
    }
    Ok(())
}

/// Where to go on from: the first record the server lacks, and the chain's
/// hash before it. The server's last batch must be one of the local log's.
async fn resume(
    client: &Client,
    host_id: &str,
    local: &Local,
) -> Result<(u64, [u8; 32]), FleetError> {
    let row = client
        .query_opt(
            "SELECT last_seq, head FROM hoop.batches WHERE host_id = $1
             ORDER BY first_seq DESC LIMIT 1",
            &[&host_id],
        )
        .await?;
    let Some(row) = row else {
        // A first shipment: from the oldest batch kept, anchored by the
        // checkpoint before it (which goes with the first chunk).
        return local.start();
    };
    let (last, head): (i64, Vec<u8>) = (row.get(0), row.get(1));
    let last = last as u64;
    match local.head_at(last)? {
        Some(h) if h[..] == head[..] => Ok((last + 1, h)),
        // The host dropped what followed (its spool was full while the
        // server was away): the first chunk crosses the gap at the
        // checkpoint the writer kept, and its `dropped` record follows.
        None if local.first_batch()?.is_some_and(|f| f > last + 1) => {
            let head: [u8; 32] = head[..].try_into().map_err(|_| {
                FleetError::Refused(format!(
                    "the server's head for host {host_id:?} is not a hash"
                ))
            })?;
            Ok((last + 1, head))
        }
        Some(_) => Err(FleetError::Refused(format!(
            "the server's chain for host {host_id:?} differs from the local log at record {last}: another host ships under this id, or one of the two logs was replaced"
        ))),
        None => Err(FleetError::Refused(format!(
            "the server has records of host {host_id:?} through {last}, which the local log does not hold: another host ships under this id, or the local log was replaced or pruned before it shipped"
        ))),
    }
}

/// Batches, their sessions and the checkpoints among them, read from the
/// local log.
struct Chunk {
    batches: Vec<store::Batch>,
    sessions: Vec<(String, u64)>,
    checkpoints: Vec<(Checkpoint, u64)>,
    local_seq: Option<u64>,
}

/// The local log, through one read-only connection, read on the shipper's
/// own thread.
struct Local(Connection);

impl Local {
    fn open(path: &std::path::Path) -> Result<Self, FleetError> {
        let db = store::open_reader(path).map_err(|e| FleetError::Local(e.to_string()))?;
        Ok(Self(db))
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, FleetError> {
        f(&self.0).map_err(|e| FleetError::Local(e.to_string()))
    }

    fn start(&self) -> Result<(u64, [u8; 32]), FleetError> {
        self.with(|db| {
            let first = store::first_batch(db)?.unwrap_or(match store::head(db)? {
                Some((seq, _)) => seq + 1,
                None => 0,
            });
            Ok((first, store::hash_before(db, first)?))
        })
    }

    fn first_batch(&self) -> Result<Option<u64>, FleetError> {
        self.with(store::first_batch)
    }

    fn head_at(&self, seq: u64) -> Result<Option<[u8; 32]>, FleetError> {
        self.with(|db| store::head_at(db, seq))
    }

    /// Up to [`CHUNK`] batches from `next` on.
    fn read(&self, next: u64) -> Result<Chunk, FleetError> {
        self.with(|db| {
            let batches = store::batches_from(db, next, CHUNK)?;
            let local_seq = store::head(db)?.map(|(s, _)| s);
            let Some(last) = batches.last().map(|b| b.last_seq) else {
                return Ok(Chunk {
                    batches,
                    sessions: Vec::new(),
                    checkpoints: Vec::new(),
                    local_seq,
                });
            };
            // From the records themselves: the server's index is exact,
            // and a batch need not wait for the local one.
            let sessions = batches
                .iter()
                .flat_map(|b| {
                    let first = b.first_seq;
                    seal::sessions(b.codec, &b.records)
                        .into_iter()
                        .map(move |s| (s, first))
                })
                .collect();
            // The one before `next` too: on a first shipment it anchors
            // the chain; later it is on the server already.
            let from = next.saturating_sub(1);
            let checkpoints = store::checkpoints_between(db, from, last)?;
            Ok(Chunk {
                batches,
                sessions,
                checkpoints,
                local_seq,
            })
        })
    }
}

/// One transaction: the batches, their sessions and checkpoints, and the
/// host's shipped mark. A resend stores nothing twice.
async fn send(client: &mut Client, host_id: &str, c: &Chunk) -> Result<(), FleetError> {
    let b = &c.batches;
    let col = |f: fn(&store::Batch) -> i64| b.iter().map(f).collect::<Vec<i64>>();
    let (first, last) = (col(|b| b.first_seq as i64), col(|b| b.last_seq as i64));
    let (first_ts, last_ts) = (col(|b| b.first_ts as i64), col(|b| b.last_ts as i64));
    let codec: Vec<i16> = b.iter().map(|b| b.codec as i16).collect();
    let records: Vec<&[u8]> = b.iter().map(|b| &b.records[..]).collect();
    let head: Vec<&[u8]> = b.iter().map(|b| &b.head[..]).collect();
    let sig: Vec<Option<&[u8]>> = b.iter().map(|b| b.sig.as_deref()).collect();
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO hoop.batches
           (host_id, first_seq, last_seq, first_ts, last_ts, codec, records, head, sig)
         SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::int8[], $5::int8[],
                                  $6::int2[], $7::bytea[], $8::bytea[], $9::bytea[])
         ON CONFLICT (host_id, first_seq) DO NOTHING",
        &[
            &host_id, &first, &last, &first_ts, &last_ts, &codec, &records, &head, &sig,
        ],
    )
    .await?;
    if !c.sessions.is_empty() {
        let names: Vec<&str> = c.sessions.iter().map(|(s, _)| s.as_str()).collect();
        let seqs: Vec<i64> = c.sessions.iter().map(|(_, f)| *f as i64).collect();
        tx.execute(
            "INSERT INTO hoop.batch_sessions (host_id, session, first_seq)
             SELECT $1, * FROM UNNEST($2::text[], $3::int8[])
             ON CONFLICT DO NOTHING",
            &[&host_id, &names, &seqs],
        )
        .await?;
    }
    if !c.checkpoints.is_empty() {
        let seq: Vec<i64> = c.checkpoints.iter().map(|(c, _)| c.seq as i64).collect();
        let ts: Vec<i64> = c.checkpoints.iter().map(|(_, t)| *t as i64).collect();
        let hash: Vec<&[u8]> = c.checkpoints.iter().map(|(c, _)| &c.hash[..]).collect();
        let sig: Vec<&[u8]> = c.checkpoints.iter().map(|(c, _)| &c.sig[..]).collect();
        tx.execute(
            "INSERT INTO hoop.checkpoints (host_id, seq, ts_ms, hash, sig)
             SELECT $1, * FROM UNNEST($2::int8[], $3::int8[], $4::bytea[], $5::bytea[])
             ON CONFLICT DO NOTHING",
            &[&host_id, &seq, &ts, &hash, &sig],
        )
        .await?;
    }
    let shipped = *last.last().expect("a chunk has batches");
    tx.execute(
        "UPDATE hoop.hosts SET shipped_seq = $2, shipped_at = now() WHERE host_id = $1",
        &[&host_id, &shipped],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

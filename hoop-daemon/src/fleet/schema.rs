//! The fleet's tables, in their own PostgreSQL schema (`hoop`), created
//! and migrated by whichever hoop connects first. Versioned: a server whose
//! schema is newer than this hoop knows is refused, never written.
//!
//! A shipped batch is the local `batches` row as it is (its records'
//! bytes, the chain's head after them and the head's signature), keyed by
//! `(host_id, first_seq)`: a resend after a crash changes nothing.
use tokio_postgres::Client;

use super::FleetError;

/// Applied in order; `hoop.meta`'s `schema_version` is the count done.
const MIGRATIONS: [&str; 2] = [
    "CREATE TABLE hoop.hosts (
        host_id text PRIMARY KEY,
        public_key text NOT NULL,
        registered_at timestamptz NOT NULL DEFAULT now(),
        shipped_seq bigint,
        shipped_at timestamptz
    );
    CREATE TABLE hoop.batches (
        host_id text NOT NULL REFERENCES hoop.hosts,
        first_seq bigint NOT NULL,
        last_seq bigint NOT NULL,
        first_ts bigint NOT NULL,
        last_ts bigint NOT NULL,
        codec smallint NOT NULL,
        records bytea NOT NULL,
        head bytea NOT NULL,
        sig bytea,
        PRIMARY KEY (host_id, first_seq)
    );
    CREATE INDEX batches_time ON hoop.batches (last_ts);
    CREATE TABLE hoop.batch_sessions (
        host_id text NOT NULL,
        session text NOT NULL,
        first_seq bigint NOT NULL,
        PRIMARY KEY (host_id, session, first_seq)
    );
    CREATE INDEX batch_sessions_session ON hoop.batch_sessions (session);
    CREATE TABLE hoop.checkpoints (
        host_id text NOT NULL REFERENCES hoop.hosts,
        seq bigint NOT NULL,
        ts_ms bigint NOT NULL,
        hash bytea NOT NULL,
        sig bytea NOT NULL,
        PRIMARY KEY (host_id, seq)
    );",
    // The fleet's approval queue: each host's held requests (the row as
    // the host keeps it, JSON; who may decide, as approver specs), and
    // the decisions people make in any host's console, which the holding
    // host checks against its own rule and answers.
    "CREATE TABLE hoop.approvals (
        host_id text NOT NULL,
        id text NOT NULL,
        status text NOT NULL,
        created_ms bigint NOT NULL,
        expires_ms bigint NOT NULL,
        approvers text NOT NULL,
        row text NOT NULL,
        PRIMARY KEY (host_id, id)
    );
    CREATE INDEX approvals_pending ON hoop.approvals (expires_ms) WHERE status = 'pending';
    CREATE TABLE hoop.decisions (
        seq bigserial PRIMARY KEY,
        host_id text NOT NULL,
        id text NOT NULL,
        from_host text NOT NULL,
        person text NOT NULL,
        decision text NOT NULL,
        for_secs bigint,
        reason text,
        made_at timestamptz NOT NULL DEFAULT now(),
        result_code text,
        result text,
        answered_at timestamptz
    );
    CREATE INDEX decisions_open ON hoop.decisions (host_id) WHERE answered_at IS NULL;",
];

/// The schema version this hoop writes.
pub const VERSION: usize = MIGRATIONS.len();

/// Any number that no other program's advisory lock is likely to use:
/// hosts starting at once migrate one after the other.
const LOCK: i64 = 0x686f_6f70_0001;

/// Creates or migrates the schema; refuses a newer one.
pub async fn migrate(client: &mut Client) -> Result<(), FleetError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS hoop;
         CREATE TABLE IF NOT EXISTS hoop.meta (key text PRIMARY KEY, value text NOT NULL);",
    )
    .await?;
    let done: i64 = tx
        .query_opt(
            "SELECT value::bigint FROM hoop.meta WHERE key = 'schema_version'",
            &[],
        )
        .await?
        .map_or(0, |r| r.get(0));
    if done as usize > VERSION {
        return Err(FleetError::SchemaNewer {
            server: done,
            ours: VERSION,
        });
    }
    for m in &MIGRATIONS[done as usize..] {
        tx.batch_execute(m).await?;
    }
    tx.execute(
        "INSERT INTO hoop.meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&VERSION.to_string()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The schema version on the server, if there is one (readers check it
/// without migrating).
pub async fn version(client: &Client) -> Result<Option<i64>, FleetError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('hoop.meta') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            "SELECT value::bigint FROM hoop.meta WHERE key = 'schema_version'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// For readers: the server has a schema this hoop can read.
pub async fn check(client: &Client) -> Result<(), FleetError> {
    match version(client).await? {
        None => Err(FleetError::Refused(
            "the server has no hoop schema yet: no host has shipped to it".into(),
        )),
        Some(v) if v as usize > VERSION => Err(FleetError::SchemaNewer {
            server: v,
            ours: VERSION,
        }),
        Some(_) => Ok(()),
    }
}

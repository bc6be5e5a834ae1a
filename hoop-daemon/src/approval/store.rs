//! Approvals on disk (SQLite, WAL): every held request, its outcome and
//! who decided it, so that a restart knows what was pending (and marks it
//! abandoned) and `hoop approvals list` reads the truth.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Schema migrations, applied in order; `user_version` is the count done.
const MIGRATIONS: [&str; 3] = [
    "CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        job TEXT,
        identity TEXT NOT NULL,
        uids TEXT NOT NULL,
        connection TEXT NOT NULL,
        rule TEXT NOT NULL,
        method TEXT NOT NULL,
        url TEXT NOT NULL,
        decided_by TEXT,
        reason TEXT,
        grant_until_ms INTEGER
    );
    CREATE INDEX approvals_status ON approvals(status);",
    // The held request's body: its hash, and what the approver may see.
    "ALTER TABLE approvals ADD COLUMN body_sha256 TEXT;
    ALTER TABLE approvals ADD COLUMN body TEXT;",
    // Who started the job (its token's actor claim), and what the console
    // shows of the job: its claims, command line, the rule's message.
    "ALTER TABLE approvals ADD COLUMN actor TEXT;
    ALTER TABLE approvals ADD COLUMN context TEXT;",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// pending, approved, denied, expired, abandoned
    pub status: String,
    pub job: Option<String>,
    pub identity: String,
    pub connection: String,
    pub rule: String,
    pub method: String,
    pub url: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    /// SHA-256 (hex) of the exact body that is forwarded if approved.
    #[serde(default)]
    pub body_sha256: Option<String>,
    /// The body as the approver sees it: masked, the first bytes only.
    #[serde(default)]
    pub body: Option<String>,
    /// The person who started the job, from its token: never its approver.
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub context: Context,
    /// The fleet's host that holds it, when another host does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// What an approver is shown about the job beside the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// The job token's claims worth showing (repository, ref, actor…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// The job's command line, masked as its records are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The approval rule's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub struct Store {
    db: Mutex<Connection>,
}

/// Why the approvals database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("approvals database {}: {source}", path.display())]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("approvals database {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("approvals database: {0}")]
    File(#[from] crate::tls::TlsError),
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let io = |source| OpenError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        owner_only(path)?;
        let err = |source| OpenError::Database {
            path: path.into(),
            source,
        };
        let db = Connection::open(path).map_err(err)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let done: i64 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        for (n, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            db.execute_batch(m).map_err(err)?;
            db.pragma_update(None, "user_version", n as i64 + 1)
                .map_err(err)?;
        }
        Ok(Self { db: Mutex::new(db) })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn insert(&self, r: &Row, uids: &[u32]) -> rusqlite::Result<()> {
        let uids = uids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.db
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO approvals (id, created_ms, expires_ms, status, job, identity, uids, connection, rule, method, url, body_sha256, body, actor, context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![r.id, r.created_ms as i64, r.expires_ms as i64, r.status, r.job, r.identity, uids,
                        r.connection, r.rule, r.method, r.url, r.body_sha256, r.body, r.actor,
                        serde_json::to_string(&r.context).expect("plain data serialises")],
            )
            .map(|_| ())
    }

    /// Moves a pending row to its outcome; false if it was not pending.
    pub fn decide(
        &self,
        id: &str,
        status: &str,
        by: Option<&str>,
        reason: Option<&str>,
        grant_until_ms: Option<u64>,
    ) -> rusqlite::Result<bool> {
        self.db
            .lock()
            .unwrap()
            .execute(
                "UPDATE approvals SET status = ?2, decided_by = ?3, reason = ?4, grant_until_ms = ?5
                 WHERE id = ?1 AND status = 'pending'",
                params![id, status, by, reason, grant_until_ms.map(|g| g as i64)],
            )
            .map(|n| n == 1)
    }

    /// Pending rows left by a previous daemon: nobody waits for them now.
    pub fn abandon_pending(&self) -> rusqlite::Result<usize> {
        self.db
            .lock()
            .unwrap()
            .execute(
                "UPDATE approvals SET status = 'abandoned', reason = 'the daemon restarted' WHERE status = 'pending'",
                [],
            )
    }

    pub fn get(&self, id: &str) -> rusqlite::Result<Option<Row>> {
        self.db
            .lock()
            .unwrap()
            .query_row(
                &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
    }

    /// Pending first, then the most recent others.
    pub fn list(&self, limit: usize) -> rusqlite::Result<Vec<Row>> {
        let db = self.db.lock().unwrap();
        let mut st = db
            .prepare(&format!(
                "SELECT {COLUMNS} FROM approvals ORDER BY status = 'pending' DESC, created_ms DESC LIMIT ?1"
            ))?;
        st.query_map([limit as i64], row)
            .and_then(|rows| rows.collect())
    }
}

const COLUMNS: &str = "id, created_ms, expires_ms, status, job, identity, connection, rule, method, url, decided_by, reason, body_sha256, body, actor, context";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        created_ms: r.get::<_, i64>(1)? as u64,
        expires_ms: r.get::<_, i64>(2)? as u64,
        status: r.get(3)?,
        job: r.get(4)?,
        identity: r.get(5)?,
        connection: r.get(6)?,
        rule: r.get(7)?,
        method: r.get(8)?,
        url: r.get(9)?,
        decided_by: r.get(10)?,
        reason: r.get(11)?,
        body_sha256: r.get(12)?,
        body: r.get(13)?,
        actor: r.get(14)?,
        // Unreadable context (an edit) shows as none, not as an error.
        context: r
            .get::<_, Option<String>>(15)?
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
        host: None,
    })
}

/// Owner only: held requests name identities, jobs and URLs, which a job
/// must not read. SQLite gives the WAL and its index the database file's
/// mode; files an earlier hoop left readable (it didn't set one) are
/// tightened.
fn owner_only(path: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::PermissionsExt;
    if !path.exists() {
        crate::tls::ca::write_new(path, b"", 0o600)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", path.display());
        if let Ok(m) = std::fs::metadata(&p)
            && m.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| OpenError::Io {
                    path: p.into(),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_the_owners_alone_even_one_made_before() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let path = dir.path().join("approvals.db");
        let s = Store::open(&path).unwrap();
        s.insert(&row("a"), &[1000]).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("approvals.db-wal")), 0o600);
        // As an earlier hoop left them: world-readable.
        for f in ["approvals.db", "approvals.db-wal"] {
            let p = dir.path().join(f);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let _again = Store::open(&path).unwrap();
        drop(s);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("approvals.db-wal")), 0o600);
    }

    fn row(id: &str) -> Row {
        Row {
            id: id.into(),
            created_ms: 1,
            expires_ms: 2,
            status: "pending".into(),
            job: Some("j".into()),
            identity: "ci:x".into(),
            connection: "c".into(),
            rule: "r".into(),
            method: "POST".into(),
            url: "https://a/b".into(),
            decided_by: None,
            reason: None,
            body_sha256: Some("ab".repeat(32)),
            body: Some("amount=5".into()),
            actor: Some("alice".into()),
            context: Context {
                claims: [("repository".to_string(), "acme/pay".to_string())].into(),
                command: Some("chromium --headless".into()),
                message: None,
            },
            host: None,
        }
    }

    #[test]
    fn rows_move_once_and_restarts_abandon_the_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approvals.db");
        let s = Store::open(&path).unwrap();
        s.insert(&row("a"), &[1000]).unwrap();
        s.insert(&row("b"), &[1000]).unwrap();
        assert!(
            s.decide("a", "approved", Some("uid:0"), None, None)
                .unwrap()
        );
        assert!(
            !s.decide("a", "denied", Some("uid:0"), None, None).unwrap(),
            "decided twice"
        );
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.abandon_pending().unwrap(), 1);
        assert_eq!(s.get("b").unwrap().unwrap().status, "abandoned");
        assert_eq!(
            s.get("a").unwrap().unwrap().decided_by.as_deref(),
            Some("uid:0")
        );
        assert_eq!(s.list(10).unwrap().len(), 2);
        assert_eq!(
            s.get("b").unwrap().unwrap(),
            Row {
                status: "abandoned".into(),
                reason: Some("the daemon restarted".into()),
                ..row("b")
            }
        );
        assert_eq!(
            s.get("b").unwrap().unwrap().body.as_deref(),
            Some("amount=5")
        );
    }
}

//! The session index: spans written lazily by the writer, the batches
//! after its mark scanned by readers, a crash's unindexed batches taken up
//! by the next run, and a log indexed per batch migrated in place.
use std::{path::Path, time::Duration};

use serde_json::json;

use super::{
    entry::kind,
    tests::{config, exec},
    *,
};

/// Commits one record of each `(session, n)`, each waited on: a batch each.
async fn write(dir: &Path, records: &[(&str, u64)]) {
    let a = Audit::start(&config(""), dir).unwrap();
    for (s, n) in records {
        a.commit(Entry::new(kind::REQUEST, s, &json!({"n": n})))
            .await
            .unwrap();
    }
    a.shutdown();
}

/// The `n` of the session's records, as readers give them.
fn ns(db: &rusqlite::Connection, session: &str) -> Vec<u64> {
    let sel = query::Select {
        session: Some(session.into()),
        since_ms: None,
    };
    let recs = query::records(db, &sel).unwrap();
    assert!(recs.iter().all(|r| r.session == session));
    recs.iter().map(|r| r.data["n"].as_u64().unwrap()).collect()
}

/// The batches a lookup of `session` reads.
fn read_batches(db: &rusqlite::Connection, session: &str) -> Vec<u64> {
    let mut keys = Vec::new();
    store::each_batch(db, 0, Some(session), |b| {
        keys.push(b.unwrap().first_seq);
        true
    })
    .unwrap();
    keys
}

fn spans(db: &rusqlite::Connection) -> Vec<(String, u64, u64)> {
    let mut st = db
        .prepare("SELECT session, first_batch, last_batch FROM session_spans ORDER BY 2, 1")
        .unwrap();
    st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

#[tokio::test]
async fn lookups_find_a_session_before_its_index_is_written_after_and_across_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join(DB_FILE);
    let a = Audit::start(&config(""), d.path()).unwrap();
    for (s, n) in [("a", 0), ("a", 1), ("b", 2), ("a", 3)] {
        a.commit(Entry::new(kind::REQUEST, s, &json!({"n": n})))
            .await
            .unwrap();
    }
    let db = store::open_reader(&path).unwrap();
    // Not indexed yet: a lookup reads every batch, and finds the session's.
    assert_eq!(store::sessions_through(&db).unwrap(), Some(-1));
    assert_eq!(read_batches(&db, "a"), vec![0, 1, 2, 3]);
    assert_eq!(ns(&db, "a"), vec![0, 1, 3]);
    assert_eq!(ns(&db, "b"), vec![2]);
    // Idle, the writer indexes within a quarter second: one span per
    // session, and lookups leave out what no span of theirs covers.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store::sessions_through(&db).unwrap(), Some(3));
    assert_eq!(
        spans(&db),
        vec![("a".into(), 0, 3), ("b".into(), 2, 2)],
        "a span per session, not a row per batch"
    );
    assert_eq!(read_batches(&db, "b"), vec![2]);
    assert_eq!(ns(&db, "a"), vec![0, 1, 3]);
    assert_eq!(ns(&db, "b"), vec![2]);
    a.commit(Entry::new(kind::REQUEST, "c", &json!({"n": 4})))
        .await
        .unwrap();
    a.shutdown();
    drop(a);
    assert_eq!(store::sessions_through(&db).unwrap(), Some(4), "at stop");
    drop(db);

    // A run killed before its index was due: its batches are after the
    // mark, with no span. The next run takes them up with its own.
    exec(&path, "DELETE FROM session_spans WHERE first_batch >= 4;");
    exec(
        &path,
        "UPDATE meta SET value = '3' WHERE key = 'sessions_through';",
    );
    write(d.path(), &[("d", 5), ("c", 6)]).await;
    let db = store::open_reader(&path).unwrap();
    assert_eq!(store::sessions_through(&db).unwrap(), Some(6));
    assert_eq!(ns(&db, "c"), vec![4, 6]);
    assert_eq!(read_batches(&db, "c"), vec![4, 5, 6]);
    assert_eq!(read_batches(&db, "d"), vec![5]);
    assert_eq!(ns(&db, "a"), vec![0, 1, 3]);
    drop(db);

    // Retention takes the spans that end where it prunes.
    let mut w = rusqlite::Connection::open(&path).unwrap();
    store::prune_through(&mut w, 2).unwrap();
    let left: Vec<String> = spans(&w).into_iter().map(|s| s.0).collect();
    assert_eq!(left, vec!["a", "c", "d"], "b's span ended at batch 2");
    assert_eq!(ns(&w, "a"), vec![3]);
}

/// A log indexed a row per batch (hoops before spans) is read as it is,
/// then indexed by spans from where it ends, and found across both.
#[tokio::test]
async fn a_log_indexed_per_batch_is_read_and_migrated() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join(DB_FILE);
    write(d.path(), &[("a", 0), ("b", 1), ("a", 2)]).await;
    // Back to the older index: a row per session per batch, no spans.
    exec(
        &path,
        "INSERT INTO batch_sessions (session, first_seq) VALUES ('a', 0), ('b', 1), ('a', 2);
         DROP TABLE session_spans;
         DELETE FROM meta WHERE key = 'sessions_through';
         PRAGMA user_version = 3;",
    );
    let db = store::open_reader(&path).unwrap();
    assert_eq!(store::sessions_through(&db).unwrap(), None);
    assert_eq!(read_batches(&db, "a"), vec![0, 2]);
    assert_eq!(ns(&db, "a"), vec![0, 2]);
    drop(db);
    write(d.path(), &[("b", 3), ("a", 4)]).await;
    let db = store::open_reader(&path).unwrap();
    assert_eq!(store::sessions_through(&db).unwrap(), Some(4));
    assert_eq!(read_batches(&db, "a"), vec![0, 2, 4]);
    assert_eq!(ns(&db, "a"), vec![0, 2, 4]);
    assert_eq!(ns(&db, "b"), vec![1, 3]);
    let r = verify::verify_file(&path, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
}

//! The writer, the store and verify together, on real SQLite files.
use std::time::Duration;

use serde_json::json;

use super::{entry::kind, *};

fn config(retain: &str) -> AuditConfig {
    AuditConfig {
        enabled: true,
        sync: Sync::Normal,
        checkpoint_every: crate::config::duration::Human(std::time::Duration::from_secs(60)),
        retain: (!retain.is_empty())
            .then(|| crate::config::parse_duration(retain).unwrap())
            .map(crate::config::duration::Human),
        max_db_bytes: 0,
    }
}

fn entry(n: u64) -> Entry {
    let mut e = Entry::new(
        kind::REQUEST,
        "s1",
        &json!({"session": "s1", "n": n, "url": format!("https://a.example/{n}")}),
    );
    e.req_body = Some(bytes::Bytes::from(format!("request body {n}")));
    e
}

async fn write(dir: &Path, retain: &str, range: std::ops::Range<u64>) -> Vec<u64> {
    let a = Audit::start(&config(retain), dir).unwrap();
    let mut seqs = Vec::new();
    for n in range {
        seqs.push(a.commit(entry(n)).await.unwrap());
    }
    a.shutdown();
    seqs
}

fn exec(db: &Path, sql: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

#[tokio::test]
async fn commits_chain_and_verify_across_restarts() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(write(d.path(), "", 0..5).await, vec![0, 1, 2, 3, 4]);
    // A restart continues the chain where it ended.
    assert_eq!(write(d.path(), "", 5..8).await, vec![5, 6, 7]);
    let db = d.path().join(DB_FILE);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the record is for root's eyes");
    let r = verify::verify_file(&db, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!((r.records, r.first, r.last), (8, Some(0), Some(7)));
    // Stop signs the head: nothing is left unsigned.
    assert_eq!(r.signed_through, Some(7));
    assert_eq!(r.unsigned(), 0);
    // The bodies come back as written.
    let conn = store::open_reader(&db).unwrap();
    let recs = query::records(&conn, &query::Select::default()).unwrap();
    assert_eq!(recs[3].req_body.as_deref(), Some(&b"request body 3"[..]));
    assert_eq!(recs[3].data["n"], 3);
}

#[tokio::test]
async fn tampering_is_named_and_a_foreign_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "", 0..6).await;
    let db = d.path().join(DB_FILE);
    let pubkey = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(public_key_of(d.path()).unwrap())
            .unwrap()
    };
    let cases: [(&str, &str); 6] = [
        (
            "UPDATE records SET data = x'00' WHERE seq = 2",
            "record 2: a value of the wrong type",
        ),
        (
            "UPDATE checkpoints SET hash = 'not a hash'",
            "a checkpoint holds a value of the wrong type",
        ),
        (
            "UPDATE records SET req_body = x'00' WHERE seq = 2",
            "record 2: its hash does not match",
        ),
        (
            "UPDATE records SET data = replace(data, '\"n\":4', '\"n\":40') WHERE seq = 4",
            "record 4: its hash does not match",
        ),
        (
            "DELETE FROM records WHERE seq = 3",
            "record 4 follows record 2",
        ),
        (
            "UPDATE checkpoints SET sig = zeroblob(64)",
            "checkpoint at record 5: bad signature",
        ),
    ];
    for (sql, expect) in cases {
        let copy = d.path().join("copy.db");
        std::fs::copy(&db, &copy).unwrap();
        exec(&copy, sql);
        let r = verify::verify_file(&copy, Some(&pubkey)).unwrap();
        let broken = r.broken.clone().unwrap_or_default();
        assert!(broken.contains(expect), "{sql}: {broken}");
        std::fs::remove_file(&copy).unwrap();
    }
    // The original is untouched and verifies with the key it names.
    assert!(verify::verify_file(&db, Some(&pubkey)).unwrap().ok());
    // Another key did not sign it.
    let other = ring::signature::Ed25519KeyPair::from_pkcs8(
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let r = verify::verify_file(&db, Some(&chain::public_key(&other))).unwrap();
    assert!(r.broken.unwrap().contains("bad signature"));
}

/// Someone who can write the database cuts the tail together with its
/// checkpoints: the rest verifies, but not past an anchor kept elsewhere.
#[tokio::test]
async fn an_anchor_names_a_tail_cut_with_its_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "", 0..4).await;
    write(d.path(), "", 4..8).await;
    let db = d.path().join(DB_FILE);
    let r = verify::verify_file(&db, None).unwrap();
    let head: verify::Anchor = format!("7:{}", r.head_hash.unwrap()).parse().unwrap();
    let clean = verify::verify_anchored(&db, None, &[head]).unwrap();
    assert!(
        clean.ok() && clean.anchors_checked == 1,
        "{:?}",
        clean.broken
    );

    // The second run's records and its checkpoint go: still "intact".
    let cut = d.path().join("cut.db");
    std::fs::copy(&db, &cut).unwrap();
    exec(
        &cut,
        "DELETE FROM records WHERE seq > 3; DELETE FROM checkpoints WHERE seq > 3",
    );
    assert!(verify::verify_file(&cut, None).unwrap().ok());
    let r = verify::verify_anchored(&cut, None, &[head]).unwrap();
    assert_eq!(
        r.broken.as_deref(),
        Some(
            "anchor at record 7, but the log ends at record 3: records after it were removed (truncated)"
        )
    );
    // An anchor the chain doesn't pass through: rewritten.
    let forged = verify::Anchor {
        hash: [7; 32],
        ..head
    };
    let r = verify::verify_anchored(&db, None, &[forged]).unwrap();
    assert!(
        r.broken
            .unwrap()
            .contains("record 7: the chain's hash differs"),
        "a wrong anchor passed"
    );
    // Retention pruned every record and kept the head's checkpoint: the
    // empty log verifies, and an anchor at that checkpoint is checked.
    let pruned = d.path().join("pruned.db");
    std::fs::copy(&db, &pruned).unwrap();
    exec(
        &pruned,
        "DELETE FROM records WHERE seq <= 7; DELETE FROM checkpoints WHERE seq < 7",
    );
    let r = verify::verify_anchored(&pruned, None, &[head]).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!((r.records, r.anchors_checked), (0, 1));
    let r = verify::verify_anchored(&pruned, None, &[forged]).unwrap();
    assert!(
        r.broken
            .unwrap()
            .contains("record 7: the chain's hash differs")
    );
    // No records but more than one checkpoint: not retention, a cut.
    let emptied = d.path().join("emptied.db");
    std::fs::copy(&db, &emptied).unwrap();
    exec(&emptied, "DELETE FROM records");
    let r = verify::verify_file(&emptied, None).unwrap();
    assert!(
        r.broken.unwrap().contains("but the log is empty"),
        "an emptied log passed"
    );
    // Anchors are SEQ:64 hex digits.
    for bad in ["7", "x:00", "7:abc", &format!("7:{}", "0".repeat(66))] {
        assert!(bad.parse::<verify::Anchor>().is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_writer_refuses_to_extend_a_broken_chain() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "", 0..3).await;
    // Records after the last checkpoint, then an edit the writer would sign.
    exec(
        &d.path().join(DB_FILE),
        "DELETE FROM checkpoints; UPDATE records SET kind = 'x' WHERE seq = 1",
    );
    let e = Audit::start(&config(""), d.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("refusing to extend it"), "{e}");
    assert!(e.contains("record 1"), "{e}");
}

#[tokio::test]
async fn retention_prunes_at_a_checkpoint_and_the_rest_verifies() {
    let d = tempfile::tempdir().unwrap();
    // Two runs, two checkpoints (records 3 and 5), both old by then.
    write(d.path(), "", 0..4).await;
    write(d.path(), "", 4..6).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A start with retain = 1 s prunes step by step, through record 5.
    write(d.path(), "1s", 6..8).await;
    let db = d.path().join(DB_FILE);
    let r = verify::verify_file(&db, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!((r.first, r.last, r.records), (Some(6), Some(7), 2));
    // Without its anchor, the pruned log is refused.
    exec(&db, "DELETE FROM checkpoints WHERE seq = 5");
    let r = verify::verify_file(&db, None).unwrap();
    assert!(
        r.broken.unwrap().contains("starts at record 6"),
        "pruned without an anchor"
    );
}

#[tokio::test]
async fn a_full_database_fails_the_commit_and_recovers() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config("");
    cfg.max_db_bytes = 96 << 10;
    let a = Audit::start(&cfg, d.path()).unwrap();
    let mut failed = None;
    for n in 0..2000u64 {
        let mut e = entry(n);
        // Incompressible, so the database really grows.
        let noise: Vec<u8> = (0..4096u64)
            .map(|i| (i * 7919 + n * 104729) as u8 ^ (i >> 3) as u8)
            .collect();
        e.resp_body = Some(noise.into());
        if let Err(err) = a.commit(e).await {
            failed = Some((n, err));
            break;
        }
    }
    let (n, err) = failed.expect("a 96 KiB database fills up");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(a.stats.failures.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    a.shutdown();
    // What was committed before is intact, and nothing half-written.
    let r = verify::verify_file(&d.path().join(DB_FILE), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!(r.records, n);
}

#[test]
fn since_bisects_on_the_chain_order() {
    let d = tempfile::tempdir().unwrap();
    let db = store::open_writer(&d.path().join("a.db"), Sync::Normal, None).unwrap();
    assert_eq!(store::first_seq_since(&db, 0).unwrap(), None);
    // Times never decrease along the chain; some records share one; a gap.
    let times = [100u64, 100, 105, 110, 110, 110, 200, 300];
    for (seq, ts) in times.iter().enumerate() {
        if seq == 4 {
            continue;
        }
        let r = chain::Record {
            seq: seq as u64,
            ts_ms: *ts,
            kind: "k".into(),
            session: "s".into(),
            data: "{}".into(),
            req_body: None,
            resp_body: None,
        };
        store::insert(&db, &r, &[0; 32]).unwrap();
    }
    for (since, want) in [
        (0, Some(0)),
        (100, Some(0)),
        (101, Some(2)),
        (106, Some(3)),
        (110, Some(3)),
        (111, Some(6)),
        (300, Some(7)),
        (301, None),
    ] {
        assert_eq!(
            store::first_seq_since(&db, since).unwrap(),
            want,
            "since {since}"
        );
    }
}

#[tokio::test]
async fn a_reader_in_a_long_transaction_does_not_block_the_writer() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::start(&config(""), d.path()).unwrap();
    a.commit(entry(0)).await.unwrap();
    // A CLI holding a read snapshot open (WAL: readers never block).
    let reader = rusqlite::Connection::open(d.path().join(DB_FILE)).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    for i in 1..200 {
        tokio::time::timeout(Duration::from_secs(2), a.commit(entry(i)))
            .await
            .expect("a commit waited on the reader")
            .unwrap();
    }
    // The reader still sees its snapshot; a new one sees everything.
    let n: i64 = reader
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    reader.execute_batch("COMMIT").unwrap();
    let n: i64 = reader
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 200);
    a.shutdown();
}

#[tokio::test]
async fn checkpoints_keep_coming_under_steady_load() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config("");
    cfg.checkpoint_every = crate::config::duration::Human(std::time::Duration::from_secs(1));
    let a = Audit::start(&cfg, d.path()).unwrap();
    // 2.5 s with the queue never empty (refilled well before it drains): the
    // writer never waits on the channel, so never times out.
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        if a.stats.queued.load(std::sync::atomic::Ordering::Relaxed) < 20_000 {
            for _ in 0..20_000 {
                a.record(entry(n));
                n += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let db = store::open_reader(&d.path().join(DB_FILE)).unwrap();
    let signed = store::checkpoints(&db).unwrap().len();
    assert!(
        signed >= 2,
        "{signed} checkpoint(s) in 2.5 s of load at 1 s intervals"
    );
    a.shutdown();
}

/// Whatever a running writer has committed is signed: a daemon killed at
/// any moment leaves no unsigned tail, and only the kept checkpoints and
/// the head's signature stay in the table.
#[tokio::test]
async fn every_commit_signs_its_head() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::start(&config(""), d.path()).unwrap();
    let db = d.path().join(DB_FILE);
    for n in 0..20 {
        let seq = a.commit(entry(n)).await.unwrap();
        // Read while the writer lives, as a SIGKILL would leave it.
        let r = verify::verify_file(&db, None).unwrap();
        assert!(r.ok(), "{:?}", r.broken);
        assert_eq!((r.last, r.signed_through), (Some(seq), Some(seq)));
        assert_eq!((r.unsigned(), r.unsigned_tail), (0, None));
    }
    let conn = store::open_reader(&db).unwrap();
    let kept = store::checkpoints(&conn).unwrap();
    assert_eq!(kept.len(), 1, "one signature per commit would pile up");
    assert_eq!(kept[0].seq, 19);
    a.shutdown();
}

/// Rewrites records `from..` of `db` with `edit`, and re-chains them the
/// way someone who can write the file (but lacks the key) would.
fn rechain(db: &Path, from: u64, edit: impl Fn(&mut chain::Record)) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut prev: [u8; 32] = conn
        .query_row(
            "SELECT hash FROM records WHERE seq = ?1",
            [from as i64 - 1],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .unwrap()
        .try_into()
        .unwrap();
    let rows: Vec<(chain::Record, [u8; 32])> = conn
        .prepare(&format!(
            "SELECT {} FROM records WHERE seq >= ?1 ORDER BY seq",
            store::ROW_COLUMNS
        ))
        .unwrap()
        .query_map([from as i64], store::row)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (mut r, _) in rows {
        edit(&mut r);
        prev = r.hash(&prev);
        conn.execute(
            "UPDATE records SET data = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![r.data, &prev[..], r.seq as i64],
        )
        .unwrap();
    }
}

/// A previous run's records after the last signature (here: its head
/// signature removed and a record forged and re-chained, which is what a
/// killed daemon of an older hoop left, too) are reported as unsigned,
/// never signed by the next start, and reported so forever after.
#[tokio::test]
async fn an_unsigned_tail_is_declared_never_signed() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join(DB_FILE);
    write(d.path(), "", 0..3).await;
    write(d.path(), "", 3..6).await;
    exec(&db, "DELETE FROM checkpoints WHERE seq = 5");
    rechain(&db, 3, |r| {
        if r.seq == 4 {
            r.data = r.data.replace("a.example/4", "forged.example/4");
        }
    });
    // Before a restart: intact, but 3..=5 follow the last signature.
    let r = verify::verify_file(&db, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    let tail = verify::Span {
        from: 3,
        to: 5,
        declared_at: None,
    };
    assert_eq!((r.signed_through, r.unsigned_tail), (Some(2), Some(tail)));
    assert_eq!(r.unsigned(), 3);

    // A restart declares the tail in its first record, and signs that.
    assert_eq!(write(d.path(), "", 6..8).await, vec![7, 8]);
    let conn = store::open_reader(&db).unwrap();
    let signed: Vec<u64> = store::checkpoints(&conn)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert!(
        signed.iter().all(|s| !(3..=5).contains(s)),
        "the tail was signed: {signed:?}"
    );
    let declared = query::records(&conn, &query::Select::default()).unwrap();
    assert_eq!(declared[6].kind, entry::kind::UNVOUCHED);
    assert_eq!(
        (
            declared[6].data["from"].as_u64(),
            declared[6].data["to"].as_u64()
        ),
        (Some(3), Some(5))
    );
    // Not a job's session.
    let listed = query::sessions(&conn, &query::Filter::default()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session, "s1");
    let span = verify::Span {
        declared_at: Some(6),
        ..tail
    };
    let check = |want_signed: u64| {
        let r = verify::verify_file(&db, None).unwrap();
        assert!(r.ok(), "{:?}", r.broken);
        assert_eq!(r.unvouched, vec![span]);
        assert_eq!(r.unsigned_tail, None);
        assert_eq!(r.signed_through, Some(want_signed));
        assert_eq!(r.unsigned(), 3);
    };
    check(8);
    // Later runs neither re-declare it nor vouch for it.
    write(d.path(), "", 9..10).await;
    check(9);
    // The declaration is covered by the signatures after it: moving its
    // span is named.
    let copy = d.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    rechain(&copy, 6, |r| {
        if r.seq == 6 {
            r.data = r.data.replace("\"from\":3", "\"from\":5");
        }
    });
    let r = verify::verify_file(&copy, None).unwrap();
    assert!(
        r.broken.as_deref().unwrap_or_default().contains("record 6"),
        "{:?}",
        r.broken
    );
}

/// A declaration planted in an unsigned tail vouches for nothing: the
/// tail stays unsigned, a wrong span is named, and the next start declares
/// the whole tail again, the planted record included.
#[tokio::test]
async fn a_declaration_in_the_tail_vouches_for_nothing() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join(DB_FILE);
    write(d.path(), "", 0..4).await;
    exec(&db, "DELETE FROM checkpoints");
    // Wrong span: it must start right after the last signature (none: 0).
    let copy = d.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    plant_declaration(&copy, 2);
    let r = verify::verify_file(&copy, None).unwrap();
    assert!(
        r.broken
            .as_deref()
            .unwrap_or_default()
            .contains("record 4: an \"unvouched\" declaration"),
        "{:?}",
        r.broken
    );
    // The right span, planted: still all unsigned.
    plant_declaration(&db, 0);
    let r = verify::verify_file(&db, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!((r.unsigned(), r.signed_through), (5, None));
    write(d.path(), "", 5..6).await;
    let r = verify::verify_file(&db, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!(
        r.unvouched,
        vec![verify::Span {
            from: 0,
            to: 4,
            declared_at: Some(5)
        }]
    );
    assert_eq!((r.unsigned(), r.signed_through), (5, Some(6)));
}

/// Appends an `unvouched` record for `from..=head`, chained but unsigned.
fn plant_declaration(db: &Path, from: u64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (seq, prev) = store::head(&conn).unwrap().unwrap();
    let e = entry::UnvouchedData::entry(from, seq);
    let r = chain::Record {
        seq: seq + 1,
        ts_ms: store::last_ts(&conn).unwrap(),
        kind: e.kind.into(),
        session: e.session.clone(),
        data: e.data.clone(),
        req_body: None,
        resp_body: None,
    };
    store::insert(&conn, &r, &r.hash(&prev)).unwrap();
}

//! The writer, the store and verify together, on real SQLite files.
use std::time::Duration;

use serde_json::json;

use super::{entry::kind, *};

pub(super) fn config(retain: &str) -> AuditConfig {
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

pub(super) fn exec(db: &Path, sql: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

/// Rewrites the batch holding record `seq` (its blob through `edit`),
/// without touching its head or signature: a raw edit of the file.
fn edit_blob(db: &Path, first_seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (codec, stored): (u8, Vec<u8>) = conn
        .query_row(
            "SELECT codec, records FROM batches WHERE first_seq = ?1",
            [first_seq as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut blob = seal::unpack(codec, &stored).unwrap().into_owned();
    edit(&mut blob);
    conn.execute(
        "UPDATE batches SET codec = 0, records = ?1 WHERE first_seq = ?2",
        rusqlite::params![blob, first_seq as i64],
    )
    .unwrap();
}

/// Replaces the first `from` in a blob with `to` (same length).
fn replace(blob: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = blob
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the blob", String::from_utf8_lossy(from)));
    blob[at..at + to.len()].copy_from_slice(to);
}

fn count(db: &rusqlite::Connection) -> i64 {
    db.query_row(
        "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM batches",
        [],
        |r| r.get(0),
    )
    .unwrap()
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
    let cases: [(&str, &str); 9] = [
        (
            "UPDATE batches SET records = 'text' WHERE first_seq = 2",
            "record 2: a value of the wrong type",
        ),
        (
            "UPDATE checkpoints SET hash = 'not a hash'",
            "a checkpoint holds a value of the wrong type",
        ),
        (
            "UPDATE batches SET records = substr(records, 1, 20) WHERE first_seq = 2",
            "record 2: a value of the wrong type",
        ),
        (
            "DELETE FROM batches WHERE first_seq = 3",
            "record 4 follows record 2",
        ),
        (
            "UPDATE batches SET last_ts = last_ts + 1 WHERE first_seq = 3",
            "record 3: its hash does not match",
        ),
        (
            "UPDATE checkpoints SET sig = zeroblob(64)",
            "checkpoint at record 5: bad signature",
        ),
        (
            "UPDATE batches SET sig = zeroblob(64) WHERE first_seq = 5",
            "checkpoint at record 5: bad signature",
        ),
        ("body", "record 2: its hash does not match"),
        ("data", "record 4: its hash does not match"),
    ];
    for (sql, expect) in cases {
        let copy = d.path().join("copy.db");
        std::fs::copy(&db, &copy).unwrap();
        match sql {
            // Same-length edits inside a record's bytes.
            "body" => edit_blob(&copy, 2, |b| replace(b, b"body 2", b"BODY 2")),
            "data" => edit_blob(&copy, 4, |b| replace(b, b"\"n\":4", b"\"n\":5")),
            sql => exec(&copy, sql),
        }
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
        "DELETE FROM batches WHERE first_seq > 3; DELETE FROM checkpoints WHERE seq > 3",
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
        "DELETE FROM batches WHERE last_seq <= 7; DELETE FROM checkpoints WHERE seq < 7",
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
    exec(&emptied, "DELETE FROM batches");
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
    // Records after the last signature, then an edit the writer would sign.
    let db = d.path().join(DB_FILE);
    exec(
        &db,
        "DELETE FROM checkpoints; UPDATE batches SET sig = NULL",
    );
    edit_blob(&db, 1, |b| replace(b, b"body 1", b"BODY 1"));
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
    assert_eq!(count(&reader), 1);
    for i in 1..200 {
        tokio::time::timeout(Duration::from_secs(2), a.commit(entry(i)))
            .await
            .expect("a commit waited on the reader")
            .unwrap();
    }
    // The reader still sees its snapshot; a new one sees everything.
    assert_eq!(count(&reader), 1);
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&reader), 200);
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
/// any moment leaves no unsigned tail. The signatures live in the batches'
/// rows; the checkpoints table only gets the kept ones.
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
    assert_eq!(store::checkpoints(&conn).unwrap(), vec![]);
    a.shutdown();
    let kept = store::checkpoints(&conn).unwrap();
    assert_eq!(kept.len(), 1, "a stop keeps the head's signature");
    assert_eq!(kept[0].seq, 19);
}

/// Rewrites records `from..` of `db` with `edit`, and re-chains them the
/// way someone who can write the file (but lacks the key) would: the
/// batches' heads follow, their signatures are left as they were.
fn rechain(db: &Path, from: u64, edit: impl Fn(u64, &mut seal::Fields)) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut prev = store::hash_before(&conn, from).unwrap();
    let mut batches = Vec::new();
    store::each_batch(&conn, from, None, |b| {
        batches.push(b.unwrap());
        true
    })
    .unwrap();
    for b in batches {
        let mut blob = Vec::new();
        for (seq, r) in
            (b.first_seq..).zip(seal::split(&seal::unpack(b.codec, &b.records).unwrap()))
        {
            let (ts, bytes) = r.unwrap();
            let mut f = seal::fields(bytes).unwrap();
            edit(seq, &mut f);
            let bytes = f.encode();
            seal::append(&mut blob, ts, &bytes);
            prev = chain::link(&prev, seq, ts, &seal::digest(&bytes));
        }
        conn.execute(
            "UPDATE batches SET codec = 0, records = ?1, head = ?2 WHERE first_seq = ?3",
            rusqlite::params![blob, &prev[..], b.first_seq as i64],
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
    exec(
        &db,
        "DELETE FROM checkpoints WHERE seq = 5; UPDATE batches SET sig = NULL WHERE first_seq >= 3",
    );
    rechain(&db, 3, |seq, f| {
        if seq == 4 {
            f.data = f.data.replace("a.example/4", "forged.example/4");
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
    let mut signed: Vec<u64> = store::checkpoints(&conn)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    let mut st = conn
        .prepare("SELECT last_seq FROM batches WHERE sig IS NOT NULL")
        .unwrap();
    signed.extend(
        st.query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|s| s.unwrap() as u64),
    );
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
    rechain(&copy, 6, |seq, f| {
        if seq == 6 {
            f.data = f.data.replace("\"from\":3", "\"from\":5");
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
    exec(
        &db,
        "DELETE FROM checkpoints; UPDATE batches SET sig = NULL",
    );
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
    let ts = store::last_ts(&conn).unwrap();
    let s = seal::Sealed::of(entry::UnvouchedData::entry(from, seq));
    let mut records = Vec::new();
    seal::append(&mut records, ts, &s.bytes);
    let b = store::Batch {
        first_seq: seq + 1,
        last_seq: seq + 1,
        first_ts: ts,
        last_ts: ts,
        codec: seal::CODEC_RAW,
        records,
        head: chain::link(&prev, seq + 1, ts, &s.digest),
        sig: None,
    };
    store::insert_batch(&conn, &b).unwrap();
}

#[test]
fn since_bisects_batches_too() {
    let d = tempfile::tempdir().unwrap();
    let db = store::open_writer(&d.path().join("a.db"), Sync::Normal, None).unwrap();
    // Batches [0..=2] at 100..105, [3..=3] at 110, [4..=6] at 110..200.
    for (first, last, first_ts, last_ts) in [(0, 2, 100, 105), (3, 3, 110, 110), (4, 6, 110, 200)] {
        let b = store::Batch {
            first_seq: first,
            last_seq: last,
            first_ts,
            last_ts,
            codec: seal::CODEC_RAW,
            records: Vec::new(),
            head: [0; 32],
            sig: None,
        };
        store::insert_batch(&db, &b).unwrap();
    }
    for (since, want) in [
        (0, Some(0)),
        (105, Some(0)),
        (106, Some(3)),
        (110, Some(3)),
        (111, Some(4)),
        (200, Some(4)),
        (201, None),
    ] {
        assert_eq!(
            store::first_seq_since(&db, since).unwrap(),
            want,
            "since {since}"
        );
    }
}

/// A log of the first layout (a row per record, as hoops before batches
/// wrote it) is taken over in place: the chain goes on in batches from
/// its head, old signatures still check, and readers see one log.
#[tokio::test]
async fn a_log_of_the_first_layout_goes_on_in_batches() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join(DB_FILE);
    let key = load_or_create_key(&d.path().join(KEY_FILE)).unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        store::create_first_layout(&conn).unwrap();
        store::set_meta(&conn, "public_key", &encode_key(&chain::public_key(&key))).unwrap();
        let mut z = zstd::bulk::Compressor::new(1).unwrap();
        let mut prev = chain::GENESIS;
        for n in 0..3u64 {
            let e = entry(n);
            let r = chain::Record {
                seq: n,
                ts_ms: 1000 + n,
                kind: e.kind.into(),
                session: e.session,
                data: e.data,
                req_body: e.req_body.map(|b| z.compress(&b).unwrap()),
                resp_body: None,
            };
            prev = r.hash(&prev);
            store::insert(&conn, &r, &prev).unwrap();
        }
        store::insert_checkpoint(&conn, &chain::sign(&key, 2, prev), 1002).unwrap();
    }
    // Readers of the old layout need no migration.
    let old = store::open_reader(&path).unwrap();
    let recs = query::records(&old, &query::Select::default()).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[1].req_body.as_deref(), Some(&b"request body 1"[..]));
    drop(old);
    assert_eq!(write(d.path(), "", 3..6).await, vec![3, 4, 5]);
    let r = verify::verify_file(&path, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!((r.records, r.signed_through, r.unsigned()), (6, Some(5), 0));
    let conn = store::open_reader(&path).unwrap();
    assert!(store::batched(&conn).unwrap());
    let recs = query::records(&conn, &query::Select::default()).unwrap();
    let ns: Vec<u64> = recs.iter().map(|r| r.data["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(recs[4].req_body.as_deref(), Some(&b"request body 4"[..]));
    // The hashes readers give chain on across the layouts.
    assert_eq!(
        recs[3].hash,
        chain::link(&recs[2].hash, 3, recs[3].ts_ms, &{
            let b: Vec<u8> = conn
                .query_row("SELECT records FROM batches WHERE first_seq = 3", [], |r| {
                    r.get(0)
                })
                .unwrap();
            let (_, bytes) = seal::split(&b).next().unwrap().unwrap();
            seal::digest(bytes)
        })
    );
    let s = query::sessions(&conn, &query::Filter::default()).unwrap();
    assert_eq!((s.len(), s[0].requests), (1, 6));
    // An edit on either side is still named.
    let copy = d.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    exec(
        &copy,
        "UPDATE records SET data = replace(data, '\"n\":1', '\"n\":9') WHERE seq = 1",
    );
    let r = verify::verify_file(&copy, None).unwrap();
    assert!(r.broken.unwrap().contains("record 1: its hash"));
}

/// Runs `f` on a current-thread runtime (inside a proptest case).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A multi-threaded runtime of `workers` (the daemon's kind).
fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

    /// Groups of records, committed together; the file copied as a crash
    /// would leave it, its WAL torn at any byte: what remains verifies and
    /// is a prefix of what was written. Any byte of a batch changed
    /// afterwards is named.
    #[test]
    fn a_torn_write_loses_a_tail_and_an_edit_never_passes(
        groups in proptest::collection::vec((1usize..5, 0usize..600), 1..6),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
        flip in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let total: usize = groups.iter().map(|g| g.0).sum();
        block_on(async {
            // The schema in the database file, the records in the WAL.
            Audit::start(&config(""), d.path()).unwrap().shutdown();
            let a = Audit::start(&config(""), d.path()).unwrap();
            let mut n = 0u64;
            for (size, body) in &groups {
                for i in 0..*size {
                    let mut e = entry(n);
                    e.resp_body = Some(bytes::Bytes::from(vec![b'a' + (n % 26) as u8; *body]));
                    n += 1;
                    if i + 1 == *size {
                        a.commit(e).await.unwrap();
                    } else {
                        a.record(e);
                    }
                }
            }
            // A SIGKILL now: the files as they are, writer alive.
            let copy = d.path().join("copy");
            std::fs::create_dir(&copy).unwrap();
            for f in [DB_FILE.to_string(), format!("{DB_FILE}-wal")] {
                std::fs::copy(d.path().join(&f), copy.join(&f)).unwrap();
            }
            a.shutdown();
        });
        let db = d.path().join("copy").join(DB_FILE);
        let wal = d.path().join("copy").join(format!("{DB_FILE}-wal"));
        let len = std::fs::metadata(&wal).unwrap().len() as usize;
        let at = cut.index(len + 1);
        std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(at as u64).unwrap();
        // Recovery (what the next open does).
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n = count(&conn) as usize;
        drop(conn);
        let r = verify::verify_file(&db, None).unwrap();
        proptest::prop_assert!(r.ok(), "torn at {}: {:?}", at, r.broken);
        proptest::prop_assert!(n <= total);
        proptest::prop_assert_eq!(r.records as usize, n);
        let conn = store::open_reader(&db).unwrap();
        let recs = query::records(&conn, &query::Select::default()).unwrap();
        for (i, rec) in recs.iter().enumerate() {
            proptest::prop_assert_eq!(rec.data["n"].as_u64(), Some(i as u64));
        }
        drop(conn);
        if n > 0 {
            // Flip one byte of one batch's records (as stored once
            // unpacked: a change of zstd's framing that decodes to the same
            // records changes no record).
            let conn = rusqlite::Connection::open(&db).unwrap();
            let blobs: Vec<(i64, Vec<u8>)> = conn
                .prepare("SELECT first_seq, codec, records FROM batches ORDER BY first_seq")
                .unwrap()
                .query_map([], |r| {
                    let b: Vec<u8> = r.get(2)?;
                    Ok((r.get(0)?, seal::unpack(r.get(1)?, &b).unwrap().into_owned()))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let sizes: usize = blobs.iter().map(|b| b.1.len()).sum();
            let mut at = flip.index(sizes);
            let (first, mut blob) = blobs.into_iter().find(|(_, b)| {
                let here = at < b.len();
                if !here {
                    at -= b.len();
                }
                here
            }).unwrap();
            blob[at] ^= 0x20;
            conn.execute(
                "UPDATE batches SET codec = 0, records = ?1 WHERE first_seq = ?2",
                rusqlite::params![blob, first],
            ).unwrap();
            drop(conn);
            let r = verify::verify_file(&db, None).unwrap();
            proptest::prop_assert!(!r.ok(), "a flipped byte at {} of batch {} passed", at, first);
        }
    }
}

/// An appended batch with a signature that is not the key's: the next
/// start refuses to sign over it.
#[tokio::test]
async fn a_writer_refuses_to_go_on_from_a_forged_signature() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "", 0..3).await;
    let db = d.path().join(DB_FILE);
    plant_declaration(&db, 0);
    exec(
        &db,
        "UPDATE batches SET sig = zeroblob(64) WHERE first_seq = 3",
    );
    let e = Audit::start(&config(""), d.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("checkpoint at record 3: bad signature"), "{e}");
}

/// Fleet mode, `when_full = "drop-oldest"`: at the cap the writer removes
/// the oldest unshipped records through a checkpoint and says so in a
/// signed `dropped` record. A server fed as the shipper feeds it (batches
/// from its position on, the checkpoint before them) verifies across the
/// gaps those records name, even when a later cut took an earlier record
/// along before it shipped, and across no other: a gap they do not name,
/// or a wider one, is a deletion.
#[tokio::test]
async fn drop_oldest_cuts_at_a_checkpoint_and_declares_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    let server = dir.path().join("server.db");
    // Checkpoints every round: the cut can fall where the cap wants it.
    let mut cfg = config("");
    cfg.checkpoint_every = crate::config::duration::Human(Duration::from_millis(1));
    let spool = Spool::new(100, crate::config::fleet::WhenFull::DropOldest);
    let mut a = Audit::start_with(&cfg, dir.path(), Some(spool.clone())).unwrap();
    let mut n = 0;
    let commit = async |a: &Audit, n: &mut u64, count: u64| {
        for _ in 0..count {
            // Never refused: past the cap the oldest go instead.
            a.commit(entry(*n)).await.unwrap();
            *n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    // What the shipper does: the batches from the server's position on
    // (through `upto`), with the checkpoints from the one before them.
    let mut next = 0u64;
    let mut ship = |upto: u64| {
        exec(
            &server,
            &format!(
                "ATTACH '{}' AS l;
                 INSERT OR IGNORE INTO batches SELECT * FROM l.batches
                   WHERE first_seq >= {next} AND last_seq <= {upto};
                 INSERT OR IGNORE INTO checkpoints SELECT * FROM l.checkpoints
                   WHERE seq >= {} AND seq <= {upto};
                 DETACH l;",
                db.display(),
                next.saturating_sub(1)
            ),
        );
        let last: i64 = rusqlite::Connection::open(&server)
            .unwrap()
            .query_row("SELECT MAX(last_seq) FROM batches", [], |r| r.get(0))
            .unwrap();
        next = last as u64 + 1;
        spool.keep_from.fetch_max(next, Ordering::AcqRel);
        next
    };
    commit(&a, &mut n, 30).await;
    // The server's tables: an empty copy of the live log's.
    exec(&db, &format!("VACUUM INTO '{}'", server.display()));
    exec(&server, "DELETE FROM batches; DELETE FROM checkpoints;");
    assert_eq!(ship(u64::MAX), 30);
    // The server away: the first cut at 100 unshipped.
    commit(&a, &mut n, 101).await;
    let first_kept = store::first_batch(&store::open_reader(&db).unwrap())
        .unwrap()
        .unwrap();
    assert!(first_kept > 30, "nothing dropped");
    // It takes five records after the gap, not the `dropped` record.
    assert_eq!(ship(first_kept + 4), first_kept + 5);
    // A restart (the spans not yet declared to the server are kept), then
    // away again, long enough for a cut to take that record along.
    a.shutdown();
    a = Audit::start_with(&cfg, dir.path(), Some(spool.clone())).unwrap();
    commit(&a, &mut n, 150).await;
    a.shutdown();
    let unshipped = spool.unshipped(a.stats.next_seq.load(Ordering::Acquire));
    assert!(unshipped < 100, "{unshipped}");

    // The local log verifies on from its last cut, and names the spans.
    let r = verify::verify_file(&db, None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    let spans: Vec<(u64, u64)> = r.dropped.iter().map(|s| (s.from, s.to)).collect();
    let (gap1, gap2) = ((30, first_kept - 1), (first_kept + 5, r.first.unwrap() - 1));
    assert_eq!(spans, [gap1, gap2], "{:?}", r.dropped);
    // The first span's own record went with the second cut: a later one
    // repeats it.
    let conn = store::open_reader(&db).unwrap();
    let declared: Vec<serde_json::Value> = query::records(&conn, &query::Select::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind::DROPPED)
        .map(|e| e.data)
        .collect();
    assert!(declared.iter().all(|d| d["from"] == gap2.0), "{declared:?}");
    assert_eq!(
        declared.last().unwrap()["earlier"],
        json!([[gap1.0, gap1.1]])
    );
    drop(conn);

    // The server, once it takes the rest: both gaps, both named.
    ship(u64::MAX);
    let r = verify::verify_file(&server, None).unwrap();
    assert!(r.ok(), "the declared gaps are refused: {:?}", r.broken);
    let mut spans: Vec<(u64, u64)> = r.dropped.iter().map(|s| (s.from, s.to)).collect();
    spans.sort();
    assert_eq!(spans, [gap1, gap2]);

    // Wider than named: records 20..=29 cut as well (the checkpoint at
    // 19 bridges it, but no record names a gap from 20).
    let wider = dir.path().join("wider.db");
    std::fs::copy(&server, &wider).unwrap();
    exec(
        &wider,
        "DELETE FROM batches WHERE first_seq >= 20 AND last_seq <= 29",
    );
    let r = verify::verify_file(&wider, None).unwrap();
    assert_eq!(
        r.error,
        Some(chain::Broken::Sequence {
            after: 19,
            found: first_kept
        }),
        "{r:?}"
    );
    // A deletion after the last gap, between two checkpoints.
    let later = dir.path().join("later.db");
    std::fs::copy(&server, &later).unwrap();
    let c = rusqlite::Connection::open(&later).unwrap();
    let checkpoint_after = |seq: i64| -> i64 {
        c.query_row(
            "SELECT MIN(seq) FROM checkpoints WHERE seq > ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap()
    };
    let lo = checkpoint_after(gap2.1 as i64 + 5);
    let hi = checkpoint_after(lo);
    c.execute(
        "DELETE FROM batches WHERE first_seq > ?1 AND last_seq <= ?2",
        [lo, hi],
    )
    .unwrap();
    drop(c);
    let r = verify::verify_file(&later, None).unwrap();
    assert_eq!(
        r.error,
        Some(chain::Broken::Sequence {
            after: lo as u64,
            found: hi as u64 + 1
        }),
        "{r:?}"
    );
}

/// Concurrent waiters are answered through the dispatcher, each with its
/// own record's seq; once the runtime that ran the dispatcher is gone, a
/// waiter on another runtime is still answered (by the writer itself), not
/// left hanging.
#[test]
fn waiters_are_answered_on_one_runtime_and_after_it_is_gone() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::start(&config(""), d.path()).unwrap();
    let first = multi_thread(2);
    let seqs = first.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|n| {
                let a = a.clone();
                tokio::spawn(async move { (n, a.commit(entry(n)).await.unwrap()) })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(
                tokio::time::timeout(Duration::from_secs(10), t)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        seqs
    });
    drop(first);
    // Every record got its own seq, and the seq names that record.
    let mut got: Vec<u64> = seqs.iter().map(|(_, s)| *s).collect();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 64, "{seqs:?}");
    let seq = block_on(async {
        tokio::time::timeout(Duration::from_secs(10), a.commit(entry(64)))
            .await
            .expect("answered after the dispatcher's runtime is gone")
            .unwrap()
    });
    assert!(seq > *got.last().unwrap());
    a.shutdown();
    let conn = rusqlite::Connection::open(d.path().join(DB_FILE)).unwrap();
    let read = query::records(&conn, &query::Select::default()).unwrap();
    for (n, s) in &seqs {
        let r = read.iter().find(|r| r.seq == *s).unwrap();
        assert_eq!(r.data["n"].as_u64(), Some(*n), "seq {s}");
    }
}

/// The first waiter on a current-thread runtime, which runs tasks only
/// inside its `block_on`: a waiter elsewhere is still answered while that
/// runtime sits idle (no dispatcher is left on it).
#[test]
fn a_waiter_is_answered_while_the_first_callers_current_thread_runtime_idles() {
    let d = tempfile::tempdir().unwrap();
    let a = Audit::start(&config(""), d.path()).unwrap();
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = idle.block_on(a.commit(entry(0))).unwrap();
    let other = multi_thread(1);
    let second = other.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), a.commit(entry(1)))
            .await
            .expect("answered while the first caller's runtime idles")
            .unwrap()
    });
    assert_eq!(second, first + 1);
    drop(idle);
    a.shutdown();
}

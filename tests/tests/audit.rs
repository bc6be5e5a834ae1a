//! The audit log end to end through `hoop run`: a daemon killed under load
//! loses no forwarded request; tampering with a copy (sqlite3 CLI) is
//! named by `hoop audit verify`; sessions, timeline, HAR (checked by a HAR
//! 1.2 schema validator) and the policy dry-run from the command line.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use hoop_tests::{
    Partner, TestEnv, Value, eventually,
    forge::{self, sqlite},
};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

fn policy(p: &Partner) -> String {
    p.policy(
        r#"[connection.mask]
detectors = ["credit_card"]
keep_last = 4

[[connection.deny]]
name = "no-prod-delete"
method = "DELETE"
path = "/v1/prod/**"
message = "DELETE on production is not allowed"
"#,
    )
}

fn env(name: &str) -> (TestEnv, Partner) {
    let dir = tempfile::tempdir().unwrap().keep();
    let partner = Partner::start(&dir, "api.partner.test");
    let env = TestEnv::custom(
        name,
        PROBE,
        "",
        "[audit]\ncheckpoint_every = \"2s\"\n",
        "\"127.0.0.0/8\"",
        Some(&policy(&partner)),
    );
    (env, partner)
}

fn db(env: &TestEnv) -> PathBuf {
    env.dir.path().join("state/audit.db")
}

fn hoop_out(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let out = env.hoop().args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn jsonl(env: &TestEnv, db: &Path) -> Vec<Value> {
    let (ok, out) = hoop_out(env, &["export", "jsonl", "--db", db.to_str().unwrap()]);
    assert!(ok, "{out}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_killed_daemon_loses_no_forwarded_request() {
    let (mut env, partner) = env("audit-crash");
    env.start_daemon();
    // Many requests in parallel, each with its own number.
    let mut job = env.parallel_load(&partner, "1-20000");
    assert!(
        eventually(Duration::from_secs(60), || partner.origin.hits() >= 400),
        "load did not get going: {} hits\n{}",
        partner.origin.hits(),
        env.log()
    );
    env.kill_daemon(); // SIGKILL, mid-run
    let _ = job.kill();
    let _ = job.wait();
    let seen: HashSet<String> = partner
        .origin
        .seen()
        .iter()
        .filter_map(|s| s.path.split_once("n=").map(|(_, n)| n.to_string()))
        .collect();
    assert!(seen.len() >= 400);
    let recorded: HashSet<String> = jsonl(&env, &db(&env))
        .iter()
        .filter(|r| r["kind"] == "request")
        .filter_map(|r| {
            let url = r["data"]["url"].as_str()?;
            Some(url.split_once("n=")?.1.to_string())
        })
        .collect();
    let missing: Vec<&String> = seen.difference(&recorded).collect();
    eprintln!(
        "upstream saw {} requests; {} request records; missing {}",
        seen.len(),
        recorded.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "forwarded but not recorded: {missing:?}"
    );
    let (ok, out) = hoop_out(&env, &["audit", "verify"]);
    assert!(ok, "verify after SIGKILL: {out}");
    assert!(out.contains("ok: the chain is intact"), "{out}");
    // The next daemon picks the chain up where the killed one left it.
    env.start_daemon();
    let (code, _) = env.curl_partner(&partner, "GET", "/hello?after=1", &[]);
    assert_eq!(code, 200);
    env.stop_daemon();
    let (ok, out) = hoop_out(&env, &["audit", "verify"]);
    assert!(ok && !out.contains("not covered"), "{out}");
}

/// A recorded session: masked cards, a denied DELETE, a POST with a body.
fn record_session(env: &mut TestEnv, partner: &Partner) -> String {
    env.start_daemon();
    let (code, text) = env.curl_partner(partner, "GET", "/cards.json", &[]);
    assert_eq!(code, 200, "{text}");
    assert!(!text.contains("4111111111111111"), "{text}");
    let (code, _) = env.curl_partner(partner, "DELETE", "/v1/prod/users/7", &[]);
    assert_eq!(code, 403);
    let (code, _) = env.curl_partner(partner, "POST", "/echo", &["-d", "{\"order\":17}"]);
    assert_eq!(code, 200);
    // Let the reaper close the jobs' sessions, then stop cleanly (the
    // final checkpoint signs the head).
    std::thread::sleep(Duration::from_millis(300));
    env.stop_daemon();
    let (ok, out) = hoop_out(env, &["sessions", "list", "--json"]);
    assert!(ok, "{out}");
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    // Each `hoop run` is its own session; the first holds the cards.
    assert_eq!(list.len(), 3, "{out}");
    assert!(list.iter().all(|s| s["identity"] == "test:local"), "{out}");
    list[0]["session"].as_str().unwrap().to_string()
}

/// The job (nobody, as the threat model has it) can't read what is on
/// record, the keys or the held requests, nor change any of it, even with
/// the path to the state dir open to it, as `/var/lib/hoop` (0755) is.
#[test]
fn a_job_can_neither_read_nor_change_the_record() {
    let (mut env, partner) = env("audit-job");
    env.start_daemon();
    let (code, text) = env.curl_partner(&partner, "GET", "/cards.json", &[]);
    assert_eq!(code, 200, "{text}");
    let state = env.dir.path().join("state");
    {
        use std::os::unix::fs::PermissionsExt;
        let jobs = env.runtime_dir.join("jobs");
        for d in [env.dir.path(), state.as_path(), &env.runtime_dir, &jobs] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    // Its own job's record included (the runtime dir's jobs/).
    let script = format!(
        "cd {} || exit 9
         for f in * ../run/jobs/*; do cat \"$f\" > /dev/null 2>&1 && echo \"READ $f\"; done
         sqlite3 audit.db 'DELETE FROM batches' 2> /dev/null && echo WROTE
         touch planted 2> /dev/null && echo PLANTED
         true",
        state.display()
    );
    let out = env.run_as_nobody(&["sh", "-c", &script]);
    let said = String::from_utf8_lossy(&out.stdout);
    // The CA certificate is public: the probe does read what it may.
    assert!(
        said.lines().any(|l| l == "READ ca.pem"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("READ ") && *l != "READ ca.pem")
        .collect();
    assert!(read.is_empty(), "the job read {read:?}");
    assert!(
        !said.contains("WROTE") && !said.contains("PLANTED"),
        "{said}"
    );
    env.stop_daemon();
    let (ok, out) = hoop_out(&env, &["audit", "verify"]);
    assert!(ok && out.contains("ok: the chain is intact"), "{out}");
}

#[test]
fn tampering_with_a_copy_is_named_by_verify() {
    let (mut env, partner) = env("audit-tamper");
    record_session(&mut env, &partner);
    let db = db(&env);
    let (ok, pubkey) = hoop_out(&env, &["audit", "pubkey"]);
    assert!(ok, "{pubkey}");
    let pubkey = pubkey.trim().to_string();
    let verify = |copy: &Path| {
        hoop_out(
            &env,
            &[
                "audit",
                "verify",
                "--db",
                copy.to_str().unwrap(),
                "--pubkey",
                &pubkey,
            ],
        )
    };
    let (ok, out) = verify(&db);
    assert!(ok, "the untouched log: {out}");
    // The head it prints is an anchor to keep elsewhere.
    let anchor = out
        .lines()
        .find_map(|l| l.strip_prefix("head: ")?.split_whitespace().next())
        .unwrap_or_else(|| panic!("no head in {out}"))
        .to_string();

    let batches = forge::batches(&db, 0);
    // The batch a record is in, and how verify names an edit in it.
    let named = |first: u64, last: u64| match first == last {
        true => format!("record {first}: its hash does not match"),
        false => format!("records {first}..={last}: their hash does not match"),
    };
    let edited = |seq: u64| {
        let b = batches
            .iter()
            .find(|b| (b.first_seq..=b.last_seq).contains(&seq))
            .unwrap();
        named(b.first_seq, b.last_seq)
    };
    let records = forge::records(&db);
    let response = records
        .iter()
        .find(|(_, r)| r.kind() == "response" && r.fields[4].is_some())
        .expect("a response with a body")
        .0;
    let refused = records
        .iter()
        .find(|(_, r)| r.kind() == "refused")
        .expect("a refused request")
        .0;
    let last = sqlite(&db, "SELECT MAX(last_seq) FROM batches");
    let last_cp = sqlite(&db, "SELECT MAX(seq) FROM checkpoints");
    assert_eq!(last, last_cp, "a clean stop keeps the head's signature");
    let n: u64 = last.parse().unwrap();
    let second = &batches[1];
    let third = &batches[2];
    // Raw edits of a copy: in the record bytes (no re-chaining), or rows.
    type Edit = Box<dyn Fn(&Path)>;
    let blob_edit = |seq: u64, edit: fn(&mut forge::Rec)| -> Edit {
        Box::new(move |copy: &Path| {
            let b = forge::batches(copy, seq).into_iter().next().unwrap();
            let mut sql = String::new();
            let mut blob = Vec::new();
            for (s, mut r) in (b.first_seq..).zip(b.records) {
                if s == seq {
                    edit(&mut r);
                }
                blob.extend(forge::encode(&r));
            }
            sql += &format!(
                "UPDATE batches SET codec = 0, records = X'{}' WHERE first_seq = {}",
                forge::hex(&blob),
                b.first_seq
            );
            sqlite(copy, &sql);
        })
    };
    let sql = |q: String| -> Edit { Box::new(move |copy: &Path| drop(sqlite(copy, &q))) };
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "edit a body",
            blob_edit(response, |r| {
                let b = r.fields[4].as_mut().unwrap();
                let end = b.len() - 1;
                b[end] ^= 1;
            }),
            edited(response),
        ),
        (
            "edit a status",
            blob_edit(refused, |r| {
                let d = r.data().replace("\"status\":403", "\"status\":200");
                assert!(d.contains("\"status\":200"), "{d}");
                r.set_data(&d);
            }),
            edited(refused),
        ),
        (
            "delete a batch",
            sql(format!(
                "DELETE FROM batches WHERE first_seq = {}",
                second.first_seq
            )),
            format!(
                "record {} follows record {}",
                third.first_seq,
                second.first_seq - 1
            ),
        ),
        (
            "reorder two batches",
            sql(format!(
                "UPDATE batches SET first_seq = -1 WHERE first_seq = {a}; \
                 UPDATE batches SET first_seq = {a} WHERE first_seq = {b}; \
                 UPDATE batches SET first_seq = {b} WHERE first_seq = -1",
                a = second.first_seq,
                b = third.first_seq
            )),
            // The row now at the second's place claims the third's end.
            named(second.first_seq, third.last_seq),
        ),
        (
            "truncate the tail",
            sql(format!("DELETE FROM batches WHERE last_seq > {}", n - 2)),
            format!("checkpoint at record {n}, but the log ends at record "),
        ),
        (
            "replace the kept signature",
            sql(format!(
                "UPDATE checkpoints SET sig = randomblob(64) WHERE seq = {n}"
            )),
            format!("checkpoint at record {n}: bad signature"),
        ),
        (
            "replace the head's signature",
            sql(format!(
                "UPDATE batches SET sig = randomblob(64) WHERE last_seq = {n}"
            )),
            format!("checkpoint at record {n}: bad signature"),
        ),
    ];
    for (what, edit, expect) in cases {
        let copy = env.dir.path().join("copy.db");
        std::fs::copy(&db, &copy).unwrap();
        edit(&copy);
        let (ok, out) = verify(&copy);
        assert!(!ok, "{what}: verify passed:\n{out}");
        assert!(out.contains(&expect), "{what}: want {expect:?}:\n{out}");
        std::fs::remove_file(&copy).unwrap();
    }
    // A forger who re-signs with their own key is caught by --pubkey.
    let copy = env.dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    sqlite(
        &copy,
        "UPDATE meta SET value = 'AAAA' WHERE key = 'public_key'",
    );
    let (ok, out) = verify(&copy);
    assert!(ok, "--pubkey does not read the stored key: {out}");
    let (ok, out) = hoop_out(&env, &["audit", "verify", "--db", copy.to_str().unwrap()]);
    assert!(!ok && out.contains("bad signature"), "{out}");
    // Exit codes tell a broken chain (1) from a log that can't be read (2).
    let code = |db: &Path| {
        env.hoop()
            .args(["audit", "verify", "--db", db.to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(code(&copy), Some(1));
    let garbage = env.dir.path().join("garbage.db");
    std::fs::write(&garbage, b"not a database, just bytes that are long enough").unwrap();
    assert_eq!(code(&garbage), Some(2));
    assert_eq!(code(&env.dir.path().join("absent.db")), Some(2));
    // A tail cut with its checkpoints verifies, except against the anchor.
    let seq: u64 = anchor.split(':').next().unwrap().parse().unwrap();
    let cut = env.dir.path().join("cut.db");
    std::fs::copy(&db, &cut).unwrap();
    sqlite(
        &cut,
        &format!(
            "DELETE FROM batches WHERE last_seq > {k}; DELETE FROM checkpoints WHERE seq > {k}",
            k = seq - 3
        ),
    );
    let kept = sqlite(&cut, "SELECT MAX(last_seq) FROM batches");
    // Intact (0, or 3 when no kept checkpoint is left at the cut: the
    // remaining records are then reported unsigned), not broken.
    let cut_code = code(&cut);
    let out = hoop_out(&env, &["audit", "verify", "--db", cut.to_str().unwrap()]).1;
    assert!(
        matches!(cut_code, Some(0 | 3)),
        "a cut with its checkpoints verifies without an anchor: {out}"
    );
    let (ok, out) = hoop_out(
        &env,
        &[
            "audit",
            "verify",
            "--db",
            cut.to_str().unwrap(),
            "--anchor",
            &anchor,
        ],
    );
    assert!(
        !ok && out.contains(&format!(
            "anchor at record {seq}, but the log ends at record {kept}"
        )),
        "{out}"
    );
}

/// `hoop audit verify`'s exit status and output.
fn verify_code(env: &TestEnv, extra: &[&str]) -> (Option<i32>, String) {
    let out = env
        .hoop()
        .args(["audit", "verify"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Every commit is signed, so a SIGKILL leaves nothing unsigned. A tail
/// after the last signature (here: what an older hoop killed before its
/// checkpoint left, edited and re-chained) is reported by verify as
/// unvouched, exit 3, and the next daemon does not sign it: it declares
/// it, signs its own records after it, and verify keeps naming the tail.
#[test]
fn a_previous_runs_unsigned_tail_is_reported_and_never_signed() {
    let (mut env, partner) = env("audit-unsigned");
    let db = db(&env);
    env.start_daemon();
    let (code, _) = env.curl_partner(&partner, "GET", "/hello?run=1", &[]);
    assert_eq!(code, 200);
    env.stop_daemon();
    let kept: u64 = sqlite(&db, "SELECT MAX(seq) FROM checkpoints")
        .parse()
        .unwrap();
    env.start_daemon();
    for _ in 0..3 {
        let (code, _) = env.curl_partner(&partner, "GET", "/hello?run=2", &[]);
        assert_eq!(code, 200);
    }
    env.kill_daemon();
    // Positive control: killed, and yet every record is signed.
    let (code, out) = verify_code(&env, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("every record is signed"), "{out}");
    let last: u64 = sqlite(&db, "SELECT MAX(last_seq) FROM batches")
        .parse()
        .unwrap();
    assert!(last > kept + 3, "the second run recorded its requests");

    sqlite(
        &db,
        &format!(
            "DELETE FROM checkpoints WHERE seq > {kept}; UPDATE batches SET sig = NULL WHERE first_seq > {kept}"
        ),
    );
    forge::rechain(&db, kept + 1, |_, r| {
        let d = r.data().replace("run=2", "run=9");
        r.set_data(&d);
    });
    let forged = forge::records(&db)
        .iter()
        .filter(|(_, r)| r.kind() == "request" && r.data().contains("run=9"))
        .count();
    assert_eq!(forged, 3, "the forgery took");
    let n = last - kept;
    let (code, out) = verify_code(&env, &[]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains(&format!(
            "unsigned: written by a previous run, not vouched for: records {}..={last} ({n}), after the last signature",
            kept + 1
        )),
        "{out}"
    );

    // The next daemon starts, serves, and signs only what it wrote.
    env.start_daemon();
    let (code, _) = env.curl_partner(&partner, "GET", "/hello?run=3", &[]);
    assert_eq!(code, 200);
    env.stop_daemon();
    let signed_tail = sqlite(
        &db,
        &format!(
            "SELECT (SELECT COUNT(*) FROM checkpoints WHERE seq > {kept} AND seq <= {last}) + \
             (SELECT COUNT(*) FROM batches WHERE sig IS NOT NULL AND last_seq > {kept} AND last_seq <= {last})"
        ),
    );
    assert_eq!(signed_tail, "0", "the next start signed the tail");
    let (_, declared) = forge::records(&db)
        .into_iter()
        .find(|(seq, _)| *seq == last + 1)
        .unwrap();
    let d: Value = serde_json::from_str(&declared.data()).unwrap();
    assert_eq!(
        (
            declared.kind().as_str(),
            d["from"].as_u64(),
            d["to"].as_u64()
        ),
        ("unvouched", Some(kept + 1), Some(last))
    );
    let (code, out) = verify_code(&env, &[]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains(&format!(
            "unsigned: written by a previous run, not vouched for: records {}..={last} ({n}), declared by the run that started at record {}",
            kept + 1,
            last + 1
        )),
        "{out}"
    );
    let (_, json) = verify_code(&env, &["--json"]);
    let r: Value = serde_json::from_str(&json).unwrap();
    let end: u64 = sqlite(&db, "SELECT MAX(last_seq) FROM batches")
        .parse()
        .unwrap();
    assert!(end > last + 1, "the third run recorded");
    assert_eq!(r["signed_through"], end, "{json}");
    assert_eq!(r["unsigned_tail"], Value::Null, "{json}");
    // `hoop sessions` lists jobs only.
    let (ok, out) = hoop_out(&env, &["sessions", "list", "--json"]);
    assert!(ok, "{out}");
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(list.iter().all(|s| s["session"] != ""), "{out}");
}

#[test]
fn sessions_timeline_har_and_dry_run_from_the_record() {
    let (mut env, partner) = env("audit-replay");
    let session = record_session(&mut env, &partner);
    let (ok, timeline) = hoop_out(&env, &["sessions", "show", &session]);
    assert!(ok, "{timeline}");
    assert!(timeline.contains("identity test:local"), "{timeline}");
    assert!(
        timeline.contains("GET https://api.partner.test"),
        "{timeline}"
    );
    assert!(timeline.contains("→ 200"), "{timeline}");
    assert!(timeline.contains("masked credit_card×"), "{timeline}");

    // HAR 1.2, checked by a schema validator; masks and redactions hold.
    let (ok, har) = hoop_out(&env, &["export", "har", &session]);
    assert!(ok, "{har}");
    assert!(
        !har.contains("4111111111111111"),
        "an unmasked card in the HAR"
    );
    let file = env.dir.path().join("session.har");
    std::fs::write(&file, &har).unwrap();
    let v: Value = serde_json::from_str(&har).unwrap();
    assert_eq!(v["log"]["entries"].as_array().unwrap().len(), 1);
    hoop_tests::validate_har(&file);
    // Every session exports; the refused DELETE is an entry with its reason.
    let all = hoop_out(&env, &["sessions", "list", "--json"]).1;
    let list: Vec<Value> = serde_json::from_str(&all).unwrap();
    let deleted = list[1]["session"].as_str().unwrap();
    let (ok, har) = hoop_out(&env, &["export", "har", deleted]);
    assert!(ok && har.contains("policy-denied"), "{har}");

    // Dry-run: a candidate that also denies POST /echo names exactly it.
    let candidate = env.dir.path().join("candidate.toml");
    let text = std::fs::read_to_string(&env.config).unwrap()
        + "\n[[connection.deny]]\nname = \"no-echo\"\nmethod = \"POST\"\npath = \"/echo\"\n";
    std::fs::write(&candidate, text).unwrap();
    let out = Command::new(hoop_tests::hoop_bin())
        .args(["--config", candidate.to_str().unwrap(), "policy", "test"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(changed.len(), 1, "{text}");
    assert!(
        changed[0].contains("POST https://api.partner.test")
            && changed[0].contains("was allowed, now denied (rule no-echo)"),
        "{text}"
    );
    assert!(text.contains("3 recorded request(s) replayed"), "{text}");
}

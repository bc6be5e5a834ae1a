//! Fleet mode against a real PostgreSQL (Debian's server, started by the
//! test as the `postgres` user, loopback only, TLS verified against its
//! test CA). Two daemons as two hosts ship to one server: `hoop sessions
//! list --fleet` shows both, `hoop audit verify --fleet` passes, and every
//! record is there exactly once. On the server, an edited, a deleted and a
//! reordered batch, a cut tail and a foreign key are each named by
//! `verify --fleet` (with the untouched server as the control). A third
//! host claiming a shipped host's id is refused. Stopping the server in
//! the middle of a load and SIGKILLing a daemon while it ships lose and
//! duplicate nothing.
use std::{
    collections::HashSet,
    process::{Command, Stdio},
    time::Duration,
};

use hoop_testkit::postgres::Postgres;
use hoop_tests::{Partner, TestEnv, Value, eventually};

const PROBE: &str = env!("CARGO_BIN_EXE_hoop-probe");

fn host(name: &str, host_id: &str, pg: &Postgres, partner: &Partner) -> TestEnv {
    TestEnv::custom(
        name,
        PROBE,
        "",
        &format!(
            "[audit]\ncheckpoint_every = \"2s\"\n\n[fleet]\npostgres = \"{}\"\nhost_id = \"{host_id}\"\nca_file = \"{}\"\n",
            pg.url(),
            pg.ca_file.display()
        ),
        "\"127.0.0.0/8\"",
        Some(&partner.policy("")),
    )
}

fn hoop_out(env: &TestEnv, args: &[&str]) -> (i32, String) {
    let out = env.hoop().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits until the server has every record of the host's log.
fn shipped(env: &TestEnv) -> Value {
    let mut last = Value::Null;
    let done = eventually(Duration::from_secs(30), || {
        last = env.status()["fleet"].clone();
        last["connected"] == true && last["lag_records"] == 0 && !last["local_seq"].is_null()
    });
    assert!(done, "not shipped: {last}\n{}", env.log());
    last
}

fn records(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let (code, out) = hoop_out(env, &[&["export", "jsonl"], args].concat());
    assert_eq!(code, 0, "{out}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `verify --fleet`: its exit code and the report's lines for one host.
fn verify(env: &TestEnv) -> (i32, String) {
    hoop_out(env, &["audit", "verify", "--fleet"])
}

/// A host whose spool holds at most 100 records: `fleet` adds to its
/// `[fleet]` table, `audit` is its `[audit]` table's keys.
fn capped(
    name: &str,
    host_id: &str,
    pg: &Postgres,
    partner: &Partner,
    fleet: &str,
    audit: &str,
) -> TestEnv {
    TestEnv::custom(
        name,
        PROBE,
        "",
        &format!(
            "[audit]\n{audit}\n\n[fleet]\npostgres = \"{}\"\nhost_id = \"{host_id}\"\nca_file = \"{}\"\nmax_unshipped = 100\n{fleet}",
            pg.url(),
            pg.ca_file.display()
        ),
        "\"127.0.0.0/8\"",
        Some(&partner.policy("")),
    )
}

/// One job, `n` requests one after the other (each is two records): a
/// line per request, "STATUS REASON", and what curl said on stderr.
fn serial(env: &TestEnv, partner: &Partner, n: usize) -> (Vec<String>, String) {
    let ca = env.hoop_ca();
    let out = env
        .hoop()
        .args(["run", "--", "curl", "-s", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %header{x-hoop-reason}\\n"])
        .args([
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &partner.resolve(),
        ])
        .arg(partner.url(&format!("/hello?n=[1-{n}]")))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How many of [`serial`]'s requests reached the partner.
fn reached(partner: &Partner) -> usize {
    partner
        .origin
        .seen()
        .iter()
        .filter(|s| s.path.contains("n="))
        .count()
}

/// The scheduling policy (`/proc/…/stat`'s 41st field) of the daemon's
/// thread named `name`.
fn thread_policy(env: &TestEnv, name: &str) -> Option<u32> {
    let tasks = format!("/proc/{}/task", env.daemon_pid());
    std::fs::read_dir(tasks).ok()?.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        if comm.trim() != name {
            return None;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
        // After the command's closing parenthesis: field 3 on.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(41 - 3)?.parse().ok()
    })
}

fn section<'a>(out: &'a str, host: &str) -> &'a str {
    let start = out
        .find(&format!("host {host} (fleet)"))
        .unwrap_or_else(|| panic!("no report for {host}:\n{out}"));
    let rest = &out[start..];
    let end = rest.find("\nhost ").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn two_hosts_share_one_record_and_tampering_on_the_server_is_named() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pg = Postgres::start(&dir.join("pg")).unwrap();
    let partner = Partner::start(&dir, "api.partner.test");
    let mut a = host("fleet-a", "runner-a", &pg, &partner);
    let mut b = host("fleet-b", "runner-b", &pg, &partner);
    a.start_daemon();
    b.start_daemon();
    for (env, n) in [(&a, 3), (&b, 2)] {
        for i in 0..n {
            let (code, text) = env.curl_partner(&partner, "GET", &format!("/hello?i={i}"), &[]);
            assert_eq!(code, 200, "{text}");
        }
    }
    let (sa, sb) = (shipped(&a), shipped(&b));
    assert_eq!(sa["host_id"], "runner-a");
    // Caught up, the shipper's thread is SCHED_IDLE (5): it takes nothing
    // a request could use. The audit writer beside it is SCHED_BATCH (3).
    assert_eq!(thread_policy(&a, "hoop-fleet-ship"), Some(5));
    assert_eq!(thread_policy(&a, "hoop-audit"), Some(3));
    assert_eq!(sb["shipped_seq"], sb["local_seq"], "{sb}");

    // Both hosts' sessions, read from the server by either host.
    let (code, out) = hoop_out(&b, &["sessions", "list", "--fleet", "--json"]);
    assert_eq!(code, 0, "{out}");
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let per_host = |h: &str| list.iter().filter(|s| s["host_id"] == h).count();
    assert_eq!(
        (per_host("runner-a"), per_host("runner-b")),
        (3, 2),
        "{out}"
    );
    let (code, table) = hoop_out(&a, &["sessions", "list", "--fleet"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("HOST_ID"), "{table}");
    // --host-id narrows it; an unknown one is named.
    let (_, out) = hoop_out(
        &a,
        &[
            "sessions",
            "list",
            "--fleet",
            "--host-id",
            "runner-b",
            "--json",
        ],
    );
    let only_b: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(
        only_b.len() == 2 && only_b.iter().all(|s| s["host_id"] == "runner-b"),
        "{out}"
    );
    let (code, out) = hoop_out(
        &a,
        &["sessions", "list", "--fleet", "--host-id", "runner-z"],
    );
    assert!(code != 0 && out.contains("no host \"runner-z\""), "{out}");

    // A session's timeline and HAR from the server.
    let session = list[0]["session"].as_str().unwrap();
    let (code, out) = hoop_out(&b, &["sessions", "show", "--fleet", session]);
    assert!(code == 0 && out.contains("/hello?i="), "{out}");
    let (code, har) = hoop_out(&b, &["export", "har", "--fleet", session]);
    assert_eq!(code, 0, "{har}");
    let har_file = dir.join("fleet-session.har");
    std::fs::write(&har_file, &har).unwrap();
    hoop_tests::validate_har(&har_file);
    let entries: Value = serde_json::from_str(&har).unwrap();
    assert_eq!(
        entries["log"]["entries"].as_array().map(Vec::len),
        Some(1),
        "{har}"
    );
    // The policy dry-run over the whole fleet's record: five requests,
    // none decided differently by the same policy.
    let (code, out) = hoop_out(&a, &["policy", "test", "--fleet"]);
    assert!(
        code == 0
            && out.contains("5 recorded request(s) replayed")
            && out.contains("0 decided differently"),
        "{out}"
    );
    let (code, out) = hoop_out(&a, &["export", "har", "--fleet", "no-such-session"]);
    assert!(
        code != 0 && out.contains("no session \"no-such-session\" on the fleet's server"),
        "{out}"
    );

    // A job can't reach the server: the daemon's own service, refused at
    // every path a job has. Direct, its PostgreSQL SSLRequest is closed
    // unanswered (the control, from the host, gets 'S'); through the
    // explicit proxy, CONNECT gets 403 daemon-service and SOCKS5 reply 2,
    // by address and by name (the control: the partner through both).
    let ssl_request = format!(
        "import socket; s = socket.create_connection(('127.0.0.1', {})); \
         s.sendall(bytes([0, 0, 0, 8, 4, 210, 22, 47])); s.settimeout(5)\n\
         try: print('answer', s.recv(1))\nexcept Exception as e: print('error', e)",
        pg.port
    );
    let from_host = Command::new("python3")
        .args(["-c", &ssl_request])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&from_host.stdout).trim(),
        "answer b'S'"
    );
    let out = a.run_as_nobody(&["python3", "-c", &ssl_request]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.trim() == "answer b''" || text.contains("Connection reset"),
        "a job reached the fleet's server: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        a.wait_log(&["is the daemon's fleet database"], Duration::from_secs(5))
            .is_some(),
        "{}",
        a.log()
    );
    let proxy_curl = |proxy: &str, url: &str| -> String {
        let out = a.run_as_nobody(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-x",
            proxy,
            "--resolve",
            &partner.resolve(),
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).to_lowercase() + &String::from_utf8_lossy(&out.stderr)
    };
    let http = format!("http://127.0.0.1:{}", a.proxy_port);
    let socks = format!("socks5h://127.0.0.1:{}", a.proxy_port);
    for target in [
        format!("https://127.0.0.1:{}/", pg.port),
        format!("https://localhost:{}/", pg.port),
    ] {
        let out = proxy_curl(&http, &target);
        assert!(
            out.contains("x-hoop-reason: daemon-service")
                && out.contains("CONNECT tunnel failed, response 403"),
            "CONNECT {target}: {out}"
        );
        let out = proxy_curl(&socks, &target);
        assert!(
            out.contains("Can't complete SOCKS5 connection") && out.contains(". (2)"),
            "SOCKS5 {target}: {out}"
        );
    }
    let out = proxy_curl(&http, &format!("http://127.0.0.1:{}/", pg.port));
    assert!(
        // No connection names it, so the policy refuses before egress.
        out.starts_with("http/1.1 403") && out.contains("x-hoop-reason: no-connection"),
        "an absolute URI to the server: {out}"
    );
    // The control: the same job reaches the partner through the proxy
    // (SOCKS5, the name resolved by curl as --resolve says).
    let socks_local = format!("socks5://127.0.0.1:{}", a.proxy_port);
    let out = proxy_curl(&socks_local, &partner.url("/hello?via=proxy"));
    assert!(
        out.starts_with("http/2 200") || out.starts_with("http/1.1 200"),
        "the control: {out}"
    );

    // Every record exactly once: the server's records are each host's.
    a.stop_daemon();
    b.stop_daemon();
    let fleet = records(&a, &["--fleet"]);
    for (env, id) in [(&a, "runner-a"), (&b, "runner-b")] {
        let local: Vec<u64> = records(env, &[])
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        let mut remote: Vec<u64> = fleet
            .iter()
            .filter(|r| r["host_id"] == id)
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        remote.sort();
        assert_eq!(
            remote, local,
            "{id}: the server's records are not the local log's"
        );
    }

    // The control: the untouched server verifies, host by host.
    let (code, out) = verify(&a);
    assert_eq!(code, 0, "{out}");
    for h in ["runner-a", "runner-b"] {
        assert!(
            section(&out, h).contains("ok: the chain is intact"),
            "{out}"
        );
    }
    assert!(out.contains("2 host(s) verified"), "{out}");

    // Each tamper on the server, then undone from a copy.
    pg.psql("CREATE TABLE saved AS SELECT * FROM hoop.batches; CREATE TABLE saved_hosts AS SELECT * FROM hoop.hosts")
        .unwrap();
    let restore = || {
        pg.psql(
            "DELETE FROM hoop.batches; INSERT INTO hoop.batches SELECT * FROM saved; \
             UPDATE hoop.hosts h SET public_key = s.public_key FROM saved_hosts s WHERE h.host_id = s.host_id",
        )
        .unwrap();
    };
    let nth = |host: &str, n: usize| -> i64 {
        pg.psql(&format!(
            "SELECT first_seq FROM hoop.batches WHERE host_id = '{host}' ORDER BY first_seq OFFSET {n} LIMIT 1"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    };
    let (second, third) = (nth("runner-a", 1), nth("runner-a", 2));
    let cases = [
        (
            "an edited batch",
            format!(
                "UPDATE hoop.batches SET records = set_byte(records, length(records) / 2, get_byte(records, length(records) / 2) # 1) \
                 WHERE host_id = 'runner-a' AND first_seq = {second}"
            ),
            "(edited)".to_string(),
        ),
        (
            "a deleted batch",
            format!("DELETE FROM hoop.batches WHERE host_id = 'runner-a' AND first_seq = {second}"),
            "records are missing or reordered".to_string(),
        ),
        (
            "two batches' records swapped",
            format!(
                "UPDATE hoop.batches t SET records = o.records, head = o.head, sig = o.sig, \
                   last_seq = t.first_seq + (o.last_seq - o.first_seq), first_ts = o.first_ts, last_ts = o.last_ts \
                 FROM saved o WHERE t.host_id = 'runner-a' AND o.host_id = 'runner-a' \
                   AND ((t.first_seq = {second} AND o.first_seq = {third}) OR (t.first_seq = {third} AND o.first_seq = {second}))"
            ),
            "(edited)".to_string(),
        ),
        (
            "the tail cut",
            "DELETE FROM hoop.batches WHERE host_id = 'runner-a' AND first_seq = \
             (SELECT max(first_seq) FROM hoop.batches WHERE host_id = 'runner-a')"
                .to_string(),
            "(truncated)".to_string(),
        ),
        (
            "a foreign key",
            "UPDATE hoop.hosts SET public_key = (SELECT public_key FROM hoop.hosts WHERE host_id = 'runner-b') \
             WHERE host_id = 'runner-a'"
                .to_string(),
            "bad signature".to_string(),
        ),
    ];
    for (what, sql, named) in &cases {
        pg.psql(sql).unwrap();
        let (code, out) = verify(&a);
        let report = section(&out, "runner-a");
        assert!(
            code == 1 && report.contains("BROKEN") && report.contains(named.as_str()),
            "{what}: exit {code}, want {named:?}:\n{out}"
        );
        assert!(
            section(&out, "runner-b").contains("ok: the chain is intact"),
            "{what} touched runner-a only:\n{out}"
        );
        restore();
        let (code, out) = verify(&a);
        assert_eq!(code, 0, "after undoing {what}: {out}");
    }

    // A host that claims a shipped host's id (its own key) ships nothing.
    let mut c = host("fleet-c", "runner-a", &pg, &partner);
    c.start_daemon();
    let (code, _) = c.curl_partner(&partner, "GET", "/hello?from=c", &[]);
    assert_eq!(code, 200, "the impostor still serves its jobs");
    let mut st = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            st = c.status()["fleet"].clone();
            st["error"]
                .as_str()
                .is_some_and(|e| e.contains("registered on the server with another signing key"))
        }),
        "{st}"
    );
    assert_eq!(st["connected"], false, "{st}");
    assert!(st["lag_records"].as_u64().unwrap() > 0, "{st}");
    c.stop_daemon();
    let (code, out) = verify(&a);
    assert_eq!(code, 0, "the impostor changed the server: {out}");
}

#[test]
fn a_lost_server_and_a_killed_daemon_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pg = Postgres::start(&dir.join("pg")).unwrap();
    let partner = Partner::start(&dir, "api.partner.test");
    let mut a = host("fleet-loss", "runner-a", &pg, &partner);
    a.start_daemon();
    let mut job = a.parallel_load(&partner, "1-1500");
    assert!(
        eventually(Duration::from_secs(60), || partner.origin.hits() >= 200),
        "load did not get going\n{}",
        a.log()
    );
    // The server goes away mid-load: the daemon keeps serving.
    pg.stop().unwrap();
    let at_stop = partner.origin.hits();
    assert!(
        eventually(Duration::from_secs(60), || partner.origin.hits()
            >= at_stop + 300),
        "serving stopped with the server: {} hits\n{}",
        partner.origin.hits(),
        a.log()
    );
    let mut st = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            st = a.status()["fleet"].clone();
            st["connected"] == false && st["lag_records"].as_u64().unwrap_or(0) > 0
        }),
        "the lag does not show: {st}"
    );
    assert!(st["error"].as_str().is_some(), "{st}");
    // Back: shipping resumes; the daemon is killed while it ships.
    let shipped_before = st["shipped_seq"].as_u64().unwrap_or(0);
    pg.start_again().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            let st = a.status()["fleet"].clone();
            st["connected"] == true && st["shipped_seq"].as_u64().unwrap_or(0) > shipped_before
        }),
        "no shipping after the server came back\n{}",
        a.log()
    );
    // Killed with records not yet on the server (the load goes on).
    let before = a.status()["fleet"].clone();
    a.kill_daemon();
    assert!(before["lag_records"].as_u64().unwrap_or(0) > 0, "{before}");
    let _ = job.kill();
    let _ = job.wait();
    a.start_daemon();
    let mut job = a.parallel_load(&partner, "5001-5200");
    let _ = job.wait();
    let st = shipped(&a);
    a.stop_daemon();

    // Exactly once: the server's batches tile the local log, no overlap,
    // no gap, and verify passes.
    let overlaps = pg
        .psql(
            "SELECT count(*) FROM hoop.batches x JOIN hoop.batches y ON x.host_id = y.host_id \
             AND x.first_seq < y.first_seq AND y.first_seq <= x.last_seq",
        )
        .unwrap();
    assert_eq!(overlaps.trim(), "0");
    let local: Vec<Value> = records(&a, &[]);
    let remote: Vec<Value> = records(&a, &["--fleet"]);
    let seqs = |v: &[Value]| -> Vec<u64> { v.iter().map(|r| r["seq"].as_u64().unwrap()).collect() };
    let mut rs = seqs(&remote);
    rs.sort();
    assert_eq!(
        rs,
        seqs(&local),
        "the server's records differ from the local log ({st})"
    );
    let (code, out) = verify(&a);
    assert_eq!(code, 0, "{out}");
    // Every request the partner saw is on the server.
    let seen: HashSet<String> = partner
        .origin
        .seen()
        .iter()
        .filter_map(|s| s.path.split_once("n=").map(|(_, n)| n.to_string()))
        .collect();
    let on_server: HashSet<String> = remote
        .iter()
        .filter(|r| r["kind"] == "request")
        .filter_map(|r| Some(r["data"]["url"].as_str()?.split_once("n=")?.1.to_string()))
        .collect();
    eprintln!(
        "partner saw {} requests; server {} records, local {}; at the kill: {before}",
        seen.len(),
        remote.len(),
        local.len()
    );
    let missing: Vec<&String> = seen.difference(&on_server).collect();
    assert!(
        missing.is_empty(),
        "forwarded but not on the server: {missing:?}"
    );
    assert!(seen.len() >= 500, "{}", seen.len());
}

/// The spool's cap: with the server down, the local log keeps at most
/// `max_unshipped` records for it; past that, requests are refused (503,
/// `fleet-spool-full`) and never reach the partner, and the crossing is
/// recorded. With the server back, the spool drains and requests pass.
#[test]
fn past_the_spool_cap_requests_are_refused_and_it_is_recorded() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pg = Postgres::start(&dir.join("pg")).unwrap();
    let partner = Partner::start(&dir, "api.partner.test");
    let mut a = capped("fleet-cap", "runner-cap", &pg, &partner, "", "");
    a.start_daemon();
    // The control: with the server there, requests pass and ship.
    let (code, _) = a.curl_partner(&partner, "GET", "/hello?before=1", &[]);
    assert_eq!(code, 200);
    shipped(&a);
    pg.stop().unwrap();
    let (lines, err) = serial(&a, &partner, 120);
    assert_eq!(lines.len(), 120, "{lines:?}\n{err}");
    let first_refused = lines
        .iter()
        .position(|l| l != "200 ")
        .unwrap_or_else(|| panic!("never refused: {lines:?}"));
    assert!(
        (20..=60).contains(&first_refused),
        "refused after {first_refused} requests: {lines:?}"
    );
    assert!(
        lines[first_refused..]
            .iter()
            .all(|l| l == "503 fleet-spool-full"),
        "{lines:?}"
    );
    // What was refused never reached the partner.
    let reached = reached(&partner);
    assert_eq!(reached, first_refused);
    let st = a.status()["fleet"].clone();
    assert!(st["lag_records"].as_u64().unwrap() >= 100, "{st}");
    // A new job can't start either: its session's record would not fit.
    let out = a.hoop().args(["run", "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_unshipped = 100"),
        "{err}"
    );

    // The server back: the spool drains, requests pass again.
    pg.start_again().unwrap();
    shipped(&a);
    let (code, text) = a.curl_partner(&partner, "GET", "/hello?after=1", &[]);
    assert_eq!(code, 200, "{text}");
    a.stop_daemon();
    for log in [records(&a, &[]), records(&a, &["--fleet"])] {
        let events: Vec<&str> = log
            .iter()
            .filter(|r| r["kind"] == "fleet")
            .filter_map(|r| r["data"]["event"].as_str())
            .collect();
        assert_eq!(events, ["spool-full", "spool-drained"], "{log:?}");
    }
}

/// The spool's cap with `when_full = "drop-oldest"`: with the server down
/// requests go on (each reaches the partner), the local log keeps fewer
/// than `max_unshipped` records for it, and signed `dropped` records name
/// what went. With the server back the shipper crosses that gap at the
/// checkpoint kept with it: the server's records and the declared spans
/// tile the chain exactly, and `verify --fleet` passes (the control). A
/// gap cut on the server that no record declares is named.
#[test]
fn past_the_spool_cap_drop_oldest_goes_on_and_declares_the_gap() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pg = Postgres::start(&dir.join("pg")).unwrap();
    let partner = Partner::start(&dir, "api.partner.test");
    let mut a = capped(
        "fleet-drop",
        "runner-drop",
        &pg,
        &partner,
        "when_full = \"drop-oldest\"\n",
        "checkpoint_every = \"50ms\"",
    );
    a.start_daemon();
    let (code, _) = a.curl_partner(&partner, "GET", "/hello?before=1", &[]);
    assert_eq!(code, 200);
    shipped(&a);
    pg.stop().unwrap();
    // 200 requests one after the other: 400 records, four times the cap.
    let (lines, err) = serial(&a, &partner, 200);
    assert!(
        lines.len() == 200 && lines.iter().all(|l| l == "200 "),
        "{lines:?}\n{err}"
    );
    let reached = reached(&partner);
    assert_eq!(reached, 200);
    let st = a.status()["fleet"].clone();
    let lag = st["lag_records"].as_u64().unwrap();
    assert!((1..100).contains(&lag), "{st}");
    assert!(
        a.wait_log(
            &["drop-oldest", "were removed before the server had them"],
            Duration::from_secs(5)
        )
        .is_some(),
        "{}",
        a.log()
    );

    pg.start_again().unwrap();
    shipped(&a);
    // A tail shipped as it is written, long enough (20 requests, 50 ms
    // checkpoints) that the undeclared gap below has two checkpoints to
    // fall between after the last declared span, wherever the last drop
    // happened to cut.
    let (lines, err) = serial(&a, &partner, 20);
    assert!(lines.iter().all(|l| l == "200 "), "{lines:?}\n{err}");
    let st = shipped(&a);
    a.stop_daemon();
    let last = st["local_seq"].as_u64().unwrap();

    // The control: the server's chain verifies across the declared gap.
    let (code, out) = verify(&a);
    assert_eq!(code, 0, "{out}");
    let report = section(&out, "runner-drop");
    assert!(
        report.contains("ok: the chain is intact") && report.contains("dropped: records "),
        "{out}"
    );
    // The server's records and the declared spans tile 0..=last: nothing
    // went unsaid, nothing is there twice.
    let remote = records(&a, &["--fleet"]);
    let mut covered: Vec<u64> = remote.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let declared: Vec<&Value> = remote.iter().filter(|r| r["kind"] == "dropped").collect();
    assert!(!declared.is_empty(), "no dropped record on the server");
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for d in &declared {
        let data = &d["data"];
        spans.push((data["from"].as_u64().unwrap(), data["to"].as_u64().unwrap()));
        for e in data["earlier"].as_array().into_iter().flatten() {
            spans.push((e[0].as_u64().unwrap(), e[1].as_u64().unwrap()));
        }
    }
    // A span that grew is declared at each size: its widest counts.
    spans.sort();
    spans.dedup_by(|b, a| {
        let same = a.0 == b.0;
        if same {
            a.1 = a.1.max(b.1);
        }
        same
    });
    for (from, to) in &spans {
        covered.extend(*from..=*to);
    }
    covered.sort();
    let before = covered.len();
    covered.dedup();
    assert_eq!(
        before,
        covered.len(),
        "a record both on the server and dropped: {spans:?}"
    );
    assert_eq!(covered, (0..=last).collect::<Vec<u64>>(), "{spans:?}");
    // The same on this host's own log.
    let (code, out) = hoop_out(&a, &["audit", "verify"]);
    assert!(code == 0 && out.contains("dropped: records "), "{out}");

    // An undeclared gap: batches deleted on the server between two
    // checkpoints after the declared one, before the last record.
    let after: i64 = spans.last().unwrap().1 as i64 + 5;
    let cp = |above: i64| -> i64 {
        pg.psql(&format!(
            "SELECT min(seq) FROM hoop.checkpoints WHERE host_id = 'runner-drop' AND seq > {above} AND seq < {last}"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no checkpoint after {above}"))
    };
    let lo = cp(after);
    let hi = cp(lo);
    pg.psql(&format!(
        "DELETE FROM hoop.batches WHERE host_id = 'runner-drop' AND first_seq > {lo} AND last_seq <= {hi}"
    ))
    .unwrap();
    let (code, out) = verify(&a);
    assert!(
        code == 1
            && section(&out, "runner-drop").contains(&format!(
                "record {} follows record {lo}: records are missing or reordered",
                hi + 1
            )),
        "{out}"
    );
}

/// Shared approvals: a request held on host A appears in the console
/// served by host B (real Chromium, signed in through a real OpenID
/// provider); alice approves it there; host A forwards it; A's record
/// names alice as the approver and B's names her decision. dave (not a
/// payments lead) sees nothing. alice's approval of her own job (its token
/// names her) is refused by A, which holds it. B is `hoop console --fleet`: no jobs, no
/// kernel programs. With the server stopped, B's console says the fleet's
/// queue is away, and A's own CLI still decides.
#[test]
fn a_request_held_on_one_host_is_approved_in_another_hosts_console() {
    use hoop_testkit::idp;
    let dir = tempfile::tempdir().unwrap().keep();
    let pg = Postgres::start(&dir.join("pg")).unwrap();
    let partner = Partner::start(&dir, "api.partner.test");
    let approve = "[[connection.approve]]\nname = \"payouts\"\nmethod = \"POST\"\npath = \"/v1/prod/payouts\"\n\
                   approvers = [\"oidc:group:payments-leads\", \"uid:0\"]\nmessage = \"Payouts need a payments lead\"\n\
                   timeout = \"60s\"\n";
    let fleet = |id: &str| {
        format!(
            "[fleet]\npostgres = \"{}\"\nhost_id = \"{id}\"\nca_file = \"{}\"\n",
            pg.url(),
            pg.ca_file.display()
        )
    };
    // A's jobs carry CI tokens naming who started them (`actor`).
    let issuer =
        hoop_testkit::oidc::Issuer::start_background("127.0.0.18", hoop_testkit::oidc::Alg::Es256);
    let issuer_ca = hoop_tests::write_file(&dir, "issuer-ca.pem", &issuer.ca.cert_pem, 0o644);
    let policy = format!(
        "[[identity.oidc]]\nname = \"ci\"\nissuer = \"{}\"\naudience = \"{}\"\nalgorithms = [\"ES256\"]\n\
         ca_files = [\"{}\"]\n\n[[connection]]\nname = \"partner\"\nhosts = [\"{}\"]\nallow = [\"ci:*\"]\n\
         upstream_ca_files = [\"{}\"]\n\n{approve}",
        issuer.url,
        hoop_testkit::oidc::AUDIENCE,
        issuer_ca.display(),
        partner.host,
        partner.ca_file.display()
    );
    let mut a = TestEnv::custom(
        "fleet-held",
        PROBE,
        "control_group = \"nogroup\"",
        &format!(
            "{}\n[console]\njob_actor_claim = \"actor\"\n",
            fleet("runner-a")
        ),
        "\"127.0.0.0/8\"",
        Some(&policy),
    );
    let token = |actor: &str| {
        let mut claims = issuer.claims("repo:acme/payouts:ref:refs/heads/main");
        claims["actor"] = serde_json::json!(actor);
        hoop_tests::write_file(
            &dir,
            &format!("token-{actor}"),
            &issuer.token_with(&claims),
            0o644,
        )
    };
    let (carol, alice_token) = (token("carol"), token("alice"));
    // B: the console, signing people in through the provider.
    let port = hoop_tests::free_port();
    let console = format!("https://127.0.0.1:{port}");
    let provider =
        idp::Provider::start(&dir, "127.0.0.17", &format!("{console}/callback")).unwrap();
    let secret = hoop_tests::write_file(&dir, "console-secret", idp::CLIENT_SECRET, 0o600);
    let mut b = TestEnv::custom(
        "fleet-console",
        PROBE,
        "",
        &format!(
            "{}\n[console]\nlisten = \"127.0.0.1:{port}\"\n\n[console.oidc]\nissuer = \"{}\"\n\
             client_id = \"{}\"\nclient_secret = {{ file = \"{}\" }}\nredirect_url = \"{console}/callback\"\n\
             scopes = [\"openid\", \"email\", \"profile\", \"groups\"]\nca_files = [\"{}\"]\n",
            fleet("console-b"),
            provider.issuer,
            idp::CLIENT_ID,
            secret.display(),
            provider.ca_file.display()
        ),
        "\"127.0.0.0/8\"",
        Some(&partner.policy("")),
    );
    a.start_daemon();
    // B runs no jobs: the console alone, no kernel programs or proxies.
    b.start_as(&[], &[], &["console", "--fleet"]);
    let st = b.status();
    assert!(
        st["capture"] == false && st["links"].as_array().is_some_and(|l| l.is_empty()),
        "{st}"
    );
    assert!(st["proxy"].as_array().is_some_and(|p| p.is_empty()), "{st}");
    let hoop = hoop_tests::hoop_bin();
    let mut alice =
        idp::approver_browser(&hoop, &b.config, &provider.ca_file, &dir.join("alice")).unwrap();
    idp::sign_in(&mut alice, &console, "alice").unwrap();
    let mut dave =
        idp::approver_browser(&hoop, &b.config, &provider.ca_file, &dir.join("dave")).unwrap();
    idp::sign_in(&mut dave, &console, "dave").unwrap();

    // Started by nobody: root approves on A's command line below, and the
    // uid that started a job never may. No --cacert: the job's bundle
    // trusts hoop.
    let payout = |env: &TestEnv, n: u32, token: &std::path::Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&hoop)
            .arg("--config")
            .arg(&env.config)
            .arg("run")
            .arg("--token-file")
            .arg(token)
            .args(["--", "curl", "-sS", "-o", "/dev/null"])
            .args(["-w", "%{http_code}", "--resolve", &partner.resolve()])
            .args(["-X", "POST", "-d", &format!("{{\"amount\":{n}}}")])
            .arg(partner.url(&format!("/v1/prod/payouts?n={n}")))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let job = payout(&a, 1, &carol);
    let id = a.wait_pending(0);
    let wait = |b: &mut hoop_testkit::cdp::Browser, js: &str, what: &str| {
        if let Err(e) = b.wait_js(js, Duration::from_secs(20)) {
            panic!("{what}: {e:#}\nhost A's log:\n{}", a.log());
        }
    };
    wait(
        &mut alice,
        &format!("document.querySelector('#a-{id}')?.innerText.includes('runner-a')"),
        "host A's request on alice's page in B's console",
    );
    assert!(
        partner.origin.seen().iter().all(|s| s.method != "POST"),
        "a held payout reached the partner"
    );
    // dave is no payments lead: his page shows nothing of it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        dave.eval("document.querySelectorAll('#inbox li').length")
            .unwrap(),
        Value::from(0)
    );
    alice
        .eval(&format!(
            "document.querySelector('#a-{id} form.decide button.approve').click(); true"
        ))
        .unwrap();
    wait(
        &mut alice,
        &format!("document.querySelector('#d-{id}[data-status=approved]')"),
        "the approval on alice's page",
    );
    let out = job.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    assert_eq!(
        partner
            .origin
            .seen()
            .iter()
            .filter(|s| s.method == "POST")
            .count(),
        1
    );
    let row = a
        .approvals()
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["status"], "approved", "{row}");
    assert!(
        row["decided_by"]
            .as_str()
            .unwrap()
            .contains("alice@example.test"),
        "{row}"
    );

    // alice's own job (its token names her): held on A, shown to her in
    // B's console, and her approval there is refused by A, which holds it.
    let job = payout(&a, 3, &alice_token);
    let id3 = a.wait_pending(0);
    wait(
        &mut alice,
        &format!("document.getElementById('a-{id3}')"),
        "alice's own request on her page",
    );
    alice
        .eval(&format!(
            "document.querySelector('#a-{id3} form.decide button.approve').click(); true"
        ))
        .unwrap();
    wait(
        &mut alice,
        &format!("document.querySelector('#a-{id3}')?.dataset.refused === 'self-approval'"),
        "A's refusal of alice's approval of her own job",
    );
    let status = alice
        .eval(&format!(
            "document.querySelector('#a-{id3} .status').textContent"
        ))
        .unwrap();
    assert!(
        status
            .as_str()
            .unwrap()
            .contains("can't approve their own job")
            && status.as_str().unwrap().contains("on host runner-a"),
        "{status}"
    );
    let row = a
        .approvals()
        .into_iter()
        .find(|r| r["id"] == id3.as_str())
        .unwrap();
    assert_eq!(row["status"], "pending", "{row}");
    // Denied on A's command line (root is an approver there): the job
    // sees the reason, the partner never sees the payout.
    a.hoop_ok(&["approvals", "deny", &id3, "--reason", "not your own payout"]);
    let out = job.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    assert!(
        !partner.origin.seen().iter().any(|s| s.path.contains("n=3")),
        "alice's own payout reached the partner"
    );

    // The server away: B says so; A's own CLI still decides.
    pg.stop().unwrap();
    let mut st = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            st = b.status()["fleet"].clone();
            st["approvals_error"].is_string()
        }),
        "{st}"
    );
    alice.open(&format!("{console}/")).unwrap();
    wait(
        &mut alice,
        "document.getElementById('fleet-away')?.innerText.includes(\"this host's held requests only\")",
        "B's console saying the fleet's queue is away",
    );
    let job = payout(&a, 2, &carol);
    let id2 = a.wait_pending(0);
    a.hoop_ok(&["approvals", "approve", &id2]);
    let out = job.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    pg.start_again().unwrap();
    shipped(&a);
    shipped(&b);
    a.stop_daemon();
    b.stop_daemon();

    // Both records name alice: A's approval, B's console decision.
    let a_recs = records(&a, &[]);
    assert!(
        a_recs.iter().any(|r| r["kind"] == "approval"
            && r["data"]["id"] == id.as_str()
            && r["data"]["by"]
                .as_str()
                .is_some_and(|b| b.contains("alice@example.test"))),
        "{a_recs:#?}"
    );
    let b_recs = records(&b, &[]);
    assert!(
        b_recs.iter().any(|r| r["kind"] == "console"
            && r["data"]["event"] == "refused"
            && r["data"]["approval"] == id3.as_str()
            && r["data"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("own job"))),
        "{b_recs:#?}"
    );
    assert!(
        b_recs.iter().any(|r| r["kind"] == "console"
            && r["data"]["event"] == "decision"
            && r["data"]["approval"] == id.as_str()
            && r["data"]["email"] == "alice@example.test"),
        "{b_recs:#?}"
    );
}

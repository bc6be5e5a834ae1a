//! The audit log at scale: write many realistic exchanges (a browser-like
//! request, committed durably, then its response with an ~800-byte JSON
//! body), and report the writer's throughput and CPU, the bytes on disk
//! per exchange, `verify`'s speed over the whole log, and the cost of a
//! retention pass over half of it.
//!   HOOP_SCALE_EXCHANGES=5000000 cargo bench -p hoop-daemon --bench audit_scale
//! Environment: HOOP_SCALE_EXCHANGES (default 200000), HOOP_SCALE_TASKS
//! (concurrent requests, default 64), HOOP_SCALE_SYNC (full or normal,
//! default full), HOOP_SCALE_DIR (default a temporary directory).
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hoop::{
    audit::{
        Audit, AuditConfig, DB_FILE, Entry, Sync,
        entry::{BodyInfo, Origin, RequestData, ResponseData},
        store, verify,
    },
    identity::Identity,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(n: u64, task: u64) -> Entry {
    let h = |k: &str, v: &str| [k.to_string(), v.to_string()];
    let mut e = Entry::of(&RequestData {
        origin: std::sync::Arc::new(Origin {
            session: format!("18ec8582b452ca{task:02x}"),
            job: Some(format!("18ec8582b452ca{task:02x}")),
            identity: Some(Identity::local("ci:checkout-e2e", "hoop.slice/job-1")),
            cgroup_id: 21894 + task,
            pid: 4242 + task as u32,
            exe: Some("/usr/lib/chromium/chromium".into()),
            via: "transparent".into(),
            flow: 77 + task,
            dst: "127.0.0.2:443".into(),
        }),
        method: "GET".into(),
        url: format!("https://api.partner.example/v2/orders/{n}?expand=items"),
        host: "api.partner.example".into(),
        sni: Some("api.partner.example".into()),
        version: "HTTP/1.1".into(),
        headers: vec![
            h("host", "api.partner.example"),
            h(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
            ),
            h("accept", "application/json, text/plain, */*"),
            h("accept-language", "en-US,en;q=0.9"),
            h("accept-encoding", "identity"),
            h("origin", "https://shop.partner.example"),
            h("referer", "https://shop.partner.example/checkout"),
            h("sec-fetch-mode", "cors"),
            h("authorization", "[redacted]"),
            h(
                "x-request-id",
                &format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ),
        ],
        connection: Some("partner".into()),
        decision: "allow".into(),
        would_be: None,
        approval: None,
        started_ms: 1_795_957_147_841 + n,
    });
    e.req_body = None;
    e
}

fn body(n: u64) -> String {
    let mut items = Vec::new();
    for i in 0..8 {
        let x = n.wrapping_mul(2654435761).wrapping_add(i * 7919);
        items.push(format!(
            "{{\"sku\":\"SKU-{:05}\",\"name\":\"Item {}\",\"qty\":{},\"price_cents\":{},\"currency\":\"EUR\"}}",
            x % 100000,
            x % 977,
            1 + x % 4,
            100 + x % 9900
        ));
    }
    format!(
        "{{\"id\":{n},\"status\":\"confirmed\",\"customer\":{{\"id\":\"c_{:08x}\",\"email\":\"****@example.com\"}},\"items\":[{}],\"total_cents\":{},\"created\":\"2026-12-02T10:{:02}:{:02}Z\"}}",
        n.wrapping_mul(40503),
        items.join(","),
        n % 100000,
        n / 60 % 60,
        n % 60
    )
}

fn response(seq: u64, n: u64, task: u64) -> Entry {
    let b = body(n);
    let h = |k: &str, v: &str| [k.to_string(), v.to_string()];
    let mut e = Entry::of(&ResponseData {
        session: format!("18ec8582b452ca{task:02x}"),
        request_seq: seq,
        status: Some(200),
        reason: None,
        headers: vec![
            h("content-type", "application/json"),
            h("content-length", &b.len().to_string()),
            h("date", "Wed, 02 Dec 2026 10:00:00 GMT"),
            h("cache-control", "no-store"),
            h("x-ratelimit-remaining", &(n % 1000).to_string()),
        ],
        masked: [("email".to_string(), 1)].into(),
        request_bytes: 0,
        response_bytes: b.len() as u64,
        req_body: None,
        resp_body: Some(BodyInfo {
            bytes: b.len() as u64,
            recorded: b.len() as u64,
        }),
        duration_ms: 3,
        complete: true,
    });
    e.resp_body = Some(b.into());
    e
}

fn cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    t(u.user_time()) + t(u.system_time())
}

fn size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(DB_FILE))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn main() {
    // `cargo bench` passes --bench; nothing else is read from the args.
    let exchanges = env("HOOP_SCALE_EXCHANGES", 200_000);
    let tasks = env("HOOP_SCALE_TASKS", 64);
    let sync = match std::env::var("HOOP_SCALE_SYNC").as_deref() {
        Ok("normal") => Sync::Normal,
        _ => Sync::Full,
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("HOOP_SCALE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let cfg = AuditConfig {
        enabled: true,
        sync,
        checkpoint_every: hoop::config::duration::Human(Duration::from_secs(1)),
        retain: None,
        max_db_bytes: 0,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let audit = Arc::new(Audit::start(&cfg, &dir).unwrap());
    let (cpu0, t0) = (cpu(), Instant::now());
    let per_task = exchanges / tasks;
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let a = audit.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let n = task * per_task + i;
                        let seq = a.commit(request(n, task)).await.unwrap();
                        a.record(response(seq, n, task));
                        if task == 0 && i % (per_task / 20).max(1) == 0 {
                            eprintln!("  {:.0}%", 100.0 * i as f64 / per_task as f64);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
    audit.shutdown();
    let (wall, cpu_used) = (t0.elapsed(), cpu() - cpu0);
    let written = per_task * tasks;
    let bytes = size(&dir);
    use std::sync::atomic::Ordering::Relaxed;
    let (records, commits) = (
        audit.stats.records.load(Relaxed),
        audit.stats.commits.load(Relaxed),
    );
    println!(
        "audit at scale: {written} exchanges ({records} records, {commits} commits, {:.1} records per commit), sync = {sync:?}, {tasks} concurrent",
        records as f64 / commits.max(1) as f64
    );
    println!(
        "  write: {:.1} s, {:.0} exchanges/s, CPU {:.1} µs per exchange (writer and producers)",
        wall.as_secs_f64(),
        written as f64 / wall.as_secs_f64(),
        cpu_used.as_micros() as f64 / written as f64
    );
    println!(
        "  size: {:.1} MB, {:.0} bytes per exchange (response body {} bytes), {:.0} MB per million exchanges",
        bytes as f64 / 1e6,
        bytes as f64 / written as f64,
        body(1).len(),
        bytes as f64 / written as f64
    );
    let db = dir.join(DB_FILE);
    let t = Instant::now();
    let r = verify::verify_file(&db, None).unwrap();
    let v = t.elapsed();
    assert!(r.ok(), "{:?}", r.broken);
    println!(
        "  verify: {} records in {:.1} s, {:.0} records/s",
        r.records,
        v.as_secs_f64(),
        r.records as f64 / v.as_secs_f64()
    );
    // Retention through the kept checkpoint nearest the middle.
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    let cps = store::checkpoints(&conn).unwrap();
    let mid = cps
        .iter()
        .map(|c| c.seq)
        .min_by_key(|s| s.abs_diff(r.records / 2))
        .unwrap();
    let t = Instant::now();
    let pruned = store::prune_through(&mut conn, mid).unwrap();
    println!(
        "  retention: pruned {pruned} records through checkpoint {mid} in {:.2} s ({:.2} s per million records)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() / (pruned as f64 / 1e6)
    );
    drop(conn);
    let r = verify::verify_file(&db, None).unwrap();
    assert!(r.ok(), "after retention: {:?}", r.broken);
}

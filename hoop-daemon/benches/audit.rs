//! The audit writer's throughput: exchanges (a request record committed
//! durably, then its response record) from 32 concurrent requests, as the
//! pipeline writes them, with small realistic heads and bodies; and the
//! Ed25519 signature every commit adds, next to them (records per commit
//! are printed, to turn it into a cost per record).
//!   cargo bench -p hoop-daemon --bench audit
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hoop::{
    audit::{
        Audit, AuditConfig, Entry, Sync,
        entry::{BodyInfo, Origin, RequestData, ResponseData},
    },
    identity::Identity,
};

fn request() -> RequestData {
    RequestData {
        origin: std::sync::Arc::new(Origin {
            session: "18ec8582b452cab1".into(),
            job: Some("18ec8582b452cab1".into()),
            identity: Some(Identity::local("bench:local", "hoop-bench.slice/job-1")),
            cgroup_id: 21894,
            pid: 4242,
            exe: Some("/usr/bin/wrk".into()),
            via: "transparent".into(),
            flow: 77,
            dst: "127.0.0.2:443".into(),
        }),
        method: "GET".into(),
        url: "https://127.0.0.2/hello".into(),
        host: "127.0.0.2".into(),
        sni: None,
        version: "HTTP/1.1".into(),
        headers: vec![["host".into(), "127.0.0.2".into()]],
        connection: Some("origin".into()),
        decision: "allow".into(),
        would_be: None,
        approval: None,
        started_ms: 1_795_957_147_841,
    }
}

fn response(seq: u64) -> Entry {
    let data = ResponseData {
        session: "18ec8582b452cab1".into(),
        request_seq: seq,
        status: Some(200),
        reason: None,
        headers: vec![
            ["content-type".into(), "text/plain".into()],
            ["content-length".into(), "32".into()],
        ],
        masked: Default::default(),
        request_bytes: 0,
        response_bytes: 32,
        req_body: None,
        resp_body: Some(BodyInfo {
            bytes: 32,
            recorded: 32,
        }),
        duration_ms: 1,
        complete: true,
    };
    let mut e = Entry::of(&data);
    e.resp_body = Some(bytes::Bytes::from_static(
        b"hello from origin 127.0.0.2:443\n",
    ));
    e
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("audit");
    const N: u64 = 4096;
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    for sync in [Sync::Normal, Sync::Full] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            enabled: true,
            sync,
            checkpoint_every: hoop::config::duration::Human(std::time::Duration::from_secs(60)),
            retain: None,
            max_db_bytes: 0,
        };
        let audit = Arc::new(Audit::start(&cfg, dir.path()).unwrap());
        g.bench_function(format!("exchanges, 32 concurrent, sync={sync:?}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..32)
                        .map(|_| {
                            let a = audit.clone();
                            tokio::spawn(async move {
                                for _ in 0..N / 32 {
                                    let seq = a.commit(Entry::of(&request())).await.unwrap();
                                    a.record(response(seq));
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            })
        });
        use std::sync::atomic::Ordering::Relaxed;
        let (records, commits) = (
            audit.stats.records.load(Relaxed),
            audit.stats.commits.load(Relaxed),
        );
        eprintln!(
            "sync={sync:?}: {records} records in {commits} commits, {:.1} per commit",
            records as f64 / commits.max(1) as f64
        );
        audit.shutdown();
    }
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    g.throughput(Throughput::Elements(1));
    g.sample_size(50);
    g.bench_function("one commit's head signature (Ed25519)", |b| {
        b.iter(|| hoop::audit::chain::sign(&key, 4242, std::hint::black_box([7; 32])))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Masking throughput on a realistic API answer: 1 MiB of JSON records
//! (ids, names, card numbers, e-mails, amounts), parsed, masked by field
//! path and by detectors, and serialised again: what a masked connection
//! does per response.
//! Also the leak canary over 1 MiB: plain text (one automaton pass) and
//! text full of `\\` and `%` escapes (the decoded views are built too).
//!   cargo bench -p hoop-daemon --bench mask
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hoop::{
    config::policy::CredentialConfig,
    policy::{
        credential::Credential,
        mask::{Counts, MaskConfig, Masker},
    },
};

fn response(bytes: usize) -> Vec<u8> {
    let mut s = String::from("{\"data\":[");
    let mut i = 0;
    while s.len() < bytes {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":{i},"customer":{{"name":"Customer {i:05}","email":"c{i}@example.com"}},"payment":{{"card_number":"4111111111111111","exp":"12/29"}},"amount":{}.{:02},"status":"settled","tags":["a","b"]}}"#,
            i * 7 % 1000,
            i % 100
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn masker(text: &str) -> Masker {
    let c: MaskConfig = toml::from_str(text).unwrap();
    Masker::compile(&c).unwrap()
}

fn bench(c: &mut Criterion) {
    let body = response(1 << 20);
    let mut g = c.benchmark_group("mask 1 MiB JSON");
    g.throughput(Throughput::Bytes(body.len() as u64));
    let fields = masker("json = [\"$.data[*].payment.card_number\", \"$..email\"]\n");
    g.bench_function("json field paths", |b| {
        b.iter(|| {
            fields
                .mask_body(Some("application/json"), &body, &mut Counts::default())
                .unwrap()
        })
    });
    let detectors = masker("detectors = [\"credit_card\", \"email\"]\n");
    g.bench_function("detectors on every string", |b| {
        b.iter(|| {
            detectors
                .mask_body(Some("application/json"), &body, &mut Counts::default())
                .unwrap()
        })
    });
    let nothing = masker("json = [\"$.no.such.field\"]\n");
    g.bench_function("scan only (no hits)", |b| {
        b.iter(|| {
            nothing
                .mask_body(Some("application/json"), &body, &mut Counts::default())
                .unwrap()
        })
    });
    g.bench_function("parse and serialise only (floor)", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    g.finish();
}

/// A bearer credential with a secret that has `/`, `+` and a space.
fn credential() -> Credential {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "sk-live/5f2d+9c0e 7b1a4f3c").unwrap();
    let text = format!("secret = {{ file = \"{}\" }}", f.path().display());
    let c: CredentialConfig = toml::from_str(&text).unwrap();
    Credential::new(&c).unwrap()
}

fn canary(c: &mut Criterion) {
    let cred = credential();
    let plain = response(1 << 20);
    // JSON inside a JSON string: a `\\` before every quote.
    let json = serde_json::to_vec(&String::from_utf8(plain.clone()).unwrap()).unwrap();
    // The same text percent-encoded: a `%` every few bytes.
    let pct: Vec<u8> = form_urlencoded::byte_serialize(&plain)
        .collect::<String>()
        .into_bytes();
    let mut g = c.benchmark_group("leak canary 1 MiB");
    for (name, body) in [
        ("no escapes", &plain),
        ("JSON-escaped", &json),
        ("percent-encoded", &pct),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || body.clone(),
                |buf| cred.canary.mask(buf),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench, canary);
criterion_main!(benches);

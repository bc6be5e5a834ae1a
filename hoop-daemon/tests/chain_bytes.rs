//! The audit chain's bytes are a stored format: logs written by an earlier
//! build must still verify. These hashes were computed outside hoop (Python's
//! hashlib over the documented encoding), so swapping the SHA-256
//! implementation or touching the framing fails here.
use hoop::audit::chain::{GENESIS, Record};

fn record(seq: u64, kind: &str, data: &str, req: Option<&[u8]>, resp: Option<&[u8]>) -> Record {
    Record {
        seq,
        ts_ms: 1000 + seq,
        kind: kind.into(),
        session: "s".into(),
        data: data.into(),
        req_body: req.map(<[u8]>::to_vec),
        resp_body: resp.map(<[u8]>::to_vec),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_chain_hash_is_the_documented_encoding() {
    let a = record(0, "response", r#"{"status":200}"#, None, Some(b"body")).hash(&GENESIS);
    assert_eq!(
        hex(&a),
        "752ad65e159400e55baa3f28542db1d3043234dfbbd43bd5f6951b283a5df688"
    );
    // An empty body and a missing one hash differently, and the chain links.
    let b = record(1, "request", "{}", Some(b""), None).hash(&a);
    assert_eq!(
        hex(&b),
        "d3a2a9f3044c4d5df1ed436d8e76e0c25c0352d20d064366968018b9643621ac"
    );
    // Positive control: the same record on another predecessor differs.
    assert_ne!(
        record(1, "request", "{}", Some(b""), None).hash(&GENESIS),
        b
    );
}

/// The batched layout: a record's bytes (five framed fields), their
/// digest, and the link that chains it, as `docs/audit.md` gives them.
#[test]
fn the_batched_layout_is_the_documented_encoding() {
    use hoop::audit::{
        Entry,
        chain::link,
        seal::{Sealed, digest},
    };
    let entry = |kind: &'static str, data: &str, req: Option<&[u8]>, resp: Option<&[u8]>| Entry {
        kind,
        session: "s".into(),
        data: data.into(),
        req_body: req.map(bytes::Bytes::copy_from_slice),
        resp_body: resp.map(bytes::Bytes::copy_from_slice),
    };
    let r0 = Sealed::of(entry("response", r#"{"status":200}"#, None, Some(b"body")));
    assert_eq!(
        hex(&r0.bytes),
        "0100000008726573706f6e7365010000000173010000000e7b22737461747573223a3230307d000100000004626f6479"
    );
    assert_eq!(r0.digest, digest(&r0.bytes));
    let a = link(&GENESIS, 0, 1000, &r0.digest);
    assert_eq!(
        hex(&a),
        "6a74315476bd23a759ea4ca2837b7412c2ab89ce3bd2ac648ea516c5773dca12"
    );
    let r1 = Sealed::of(entry("request", "{}", Some(b""), None));
    let b = link(&a, 1, 1001, &r1.digest);
    assert_eq!(
        hex(&b),
        "a5fc74b030e8aacc237eaf15ecc2276c72a181d8962c08bb7df6d8e1060a9594"
    );
    // Positive control: another time at the same place differs.
    assert_ne!(link(&a, 1, 1002, &r1.digest), b);
}

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

//! The audit log's hash chain: every record's hash covers the one before
//! it and the record's bytes, and signatures (Ed25519) pin the chain's
//! head, so that an edit, a deletion or a reordering anywhere is found by
//! walking it, offline.
//!
//! Two record layouts share the chain: the first (a row per record, its
//! hash stored, [`Record::hash`]) and the batched one (a row per commit,
//! [`link`] over each record's [`super::seal::digest`]). A log started
//! with the first goes on in the second after an upgrade.
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit record as stored and chained: `data` is the JSON text exactly
/// as stored (masked, credentials redacted), the bodies are the stored
/// (compressed) blobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: u64,
    pub kind: String,
    /// The session (job) it belongs to: a column, so listing sessions
    /// needs no JSON parsing.
    pub session: String,
    pub data: String,
    pub req_body: Option<Vec<u8>>,
    pub resp_body: Option<Vec<u8>>,
}

impl Record {
    /// `sha256(prev ‖ canonical bytes)`. The canonical encoding frames every
    /// column with its length (a missing body differs from an empty one),
    /// so hashing the stored bytes needs no JSON re-serialisation.
    pub fn hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(prev);
        h.update(b"hoop-audit-record-v1");
        h.update(&self.seq.to_be_bytes());
        h.update(&self.ts_ms.to_be_bytes());
        for field in [
            Some(self.kind.as_bytes()),
            Some(self.session.as_bytes()),
            Some(self.data.as_bytes()),
            self.req_body.as_deref(),
            self.resp_body.as_deref(),
        ] {
            match field {
                Some(b) => {
                    h.update(&[1]);
                    h.update(&(b.len() as u64).to_be_bytes());
                    h.update(b);
                }
                None => h.update(&[0]),
            }
        }
        h.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
    }
}

/// The batched layout's link: `sha256(prev ‖ "hoop-audit-link-v2" ‖ seq ‖
/// ts_ms ‖ digest)`, the digest made on the request's task.
pub fn link(prev: &[u8; 32], seq: u64, ts_ms: u64, digest: &[u8; 32]) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(prev);
    h.update(b"hoop-audit-link-v2");
    h.update(&seq.to_be_bytes());
    h.update(&ts_ms.to_be_bytes());
    h.update(digest);
    h.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Where a walk found the chain broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("record {seq}: its hash does not match its content (edited)")]
    Hash { seq: u64 },
    #[error("records {first}..={last}: their hash does not match their content (edited)")]
    BatchHash { first: u64, last: u64 },
    #[error("record {found} follows record {after}: records are missing or reordered")]
    Sequence { after: u64, found: u64 },
    #[error("checkpoint at record {seq}: bad signature")]
    Signature { seq: u64 },
    #[error("checkpoint at record {seq}: the chain's hash there differs (rewritten)")]
    Checkpoint { seq: u64 },
    #[error(
        "checkpoint at record {seq}, but {}: records after it were removed (truncated)",
        ends(last)
    )]
    Truncated { seq: u64, last: Option<u64> },
    #[error(
        "record {seq}: an \"unvouched\" declaration that does not name exactly the records since the last signature (edited)"
    )]
    Declaration { seq: u64 },
    #[error("record {seq}: a value of the wrong type (edited)")]
    UnreadableRecord { seq: u64 },
    #[error("a checkpoint holds a value of the wrong type (edited)")]
    UnreadableCheckpoint,
    #[error("record {seq}: the chain's hash differs from the anchor given (rewritten)")]
    AnchorMismatch { seq: u64 },
    #[error(
        "anchor at record {seq}, but {}: records after it were removed (truncated)",
        ends(last)
    )]
    AnchorBeyondEnd { seq: u64, last: Option<u64> },
    #[error(
        "the log starts at record {first} and no signed checkpoint anchors record {}: earlier records were removed",
        first.wrapping_sub(1)
    )]
    Unanchored { first: u64 },
}

fn ends(last: &Option<u64>) -> String {
    match last {
        Some(l) => format!("the log ends at record {l}"),
        None => "the log is empty".into(),
    }
}

/// One step of a walk: `r` must be record `expected` and hash to `stored`
/// from `prev`. Returns its hash.
pub fn step(
    prev: &[u8; 32],
    expected: u64,
    r: &Record,
    stored: &[u8; 32],
) -> Result<[u8; 32], Broken> {
    if r.seq != expected {
        return Err(Broken::Sequence {
            after: expected.wrapping_sub(1),
            found: r.seq,
        });
    }
    let h = r.hash(prev);
    if &h != stored {
        return Err(Broken::Hash { seq: r.seq });
    }
    Ok(h)
}

/// Walks `(record, stored hash)` pairs from `start` (the hash before the
/// first one: GENESIS, or the checkpoint a pruned log is anchored at).
pub fn verify<'a>(
    start: ([u8; 32], u64),
    rows: impl IntoIterator<Item = (&'a Record, [u8; 32])>,
) -> Result<([u8; 32], u64), Broken> {
    let (mut prev, mut next) = start;
    for (r, stored) in rows {
        prev = step(&prev, next, r, &stored)?;
        next += 1;
    }
    Ok((prev, next))
}

/// A signed statement: "after record `seq` the chain's hash is `hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: [u8; 32],
    pub sig: Vec<u8>,
}

fn message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = b"hoop-audit-checkpoint-v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

pub fn sign(key: &Ed25519KeyPair, seq: u64, hash: [u8; 32]) -> Checkpoint {
    Checkpoint {
        seq,
        hash,
        sig: key.sign(&message(seq, &hash)).as_ref().to_vec(),
    }
}

/// Checks a checkpoint's signature, and that the chain walked to `seq`
/// has the hash it vouches for.
pub fn check(public_key: &[u8], c: &Checkpoint, walked: Option<[u8; 32]>) -> Result<(), Broken> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&message(c.seq, &c.hash), &c.sig)
        .map_err(|_| Broken::Signature { seq: c.seq })?;
    match walked {
        Some(h) if h != c.hash => Err(Broken::Checkpoint { seq: c.seq }),
        _ => Ok(()),
    }
}

pub fn public_key(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use serde_json::json;

    use super::*;

    fn chain(n: u64) -> Vec<(Record, [u8; 32])> {
        let mut prev = GENESIS;
        (0..n)
            .map(|seq| {
                let r = Record {
                    seq,
                    ts_ms: 1000 + seq,
                    kind: "response".into(),
                    session: "s".into(),
                    data: json!({"status": 200, "url": "https://a/x"}).to_string(),
                    req_body: None,
                    resp_body: Some(format!("body {seq}").into_bytes()),
                };
                prev = r.hash(&prev);
                (r, prev)
            })
            .collect()
    }

    fn walk(rows: &[(Record, [u8; 32])]) -> Result<([u8; 32], u64), Broken> {
        verify((GENESIS, 0), rows.iter().map(|(r, h)| (r, *h)))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let rows = chain(5);
        assert_eq!(walk(&rows).unwrap(), (rows[4].1, 5));
    }

    #[test]
    fn every_kind_of_tampering_names_the_record() {
        let rows = chain(6);
        // Edit a body.
        let mut t = rows.clone();
        t[3].0.resp_body = Some(b"forged".to_vec());
        assert_eq!(walk(&t), Err(Broken::Hash { seq: 3 }));
        // Edit a status.
        let mut t = rows.clone();
        t[2].0.data = t[2].0.data.replace("200", "500");
        assert_eq!(walk(&t), Err(Broken::Hash { seq: 2 }));
        // Delete a record.
        let mut t = rows.clone();
        t.remove(4);
        assert_eq!(walk(&t), Err(Broken::Sequence { after: 3, found: 5 }));
        // Swap two records.
        let mut t = rows.clone();
        t.swap(1, 2);
        assert_eq!(walk(&t), Err(Broken::Sequence { after: 0, found: 2 }));
        // Recompute every hash after an edit: only a checkpoint tells.
        let mut t = rows.clone();
        t[1].0.resp_body = None;
        let mut prev = GENESIS;
        for (r, h) in t.iter_mut() {
            *h = r.hash(&prev);
            prev = *h;
        }
        let (head, _) = walk(&t).unwrap();
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let cp = sign(&key, 5, rows[5].1);
        assert_eq!(check(&public_key(&key), &cp, Some(rows[5].1)), Ok(()));
        assert_eq!(
            check(&public_key(&key), &cp, Some(head)),
            Err(Broken::Checkpoint { seq: 5 })
        );
        // A forged checkpoint fails its signature.
        let mut forged = cp.clone();
        forged.hash = head;
        assert_eq!(
            check(&public_key(&key), &forged, Some(head)),
            Err(Broken::Signature { seq: 5 })
        );
    }
}

//! The audit log's hash chain (groundwork for issue 6, not yet wired to a
//! store): every record stores `sha256(previous hash ‖ canonical bytes)`,
//! and signed checkpoints (Ed25519) pin the chain's head, so that an edit,
//! a deletion or a reordering anywhere is found by walking it, offline.
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit record as chained. `data` is what was recorded (masked,
/// credentials redacted) in any JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: u64,
    pub kind: String,
    pub data: serde_json::Value,
}

impl Record {
    /// The bytes the hash covers: JSON with sorted keys and no spaces
    /// (serde_json's maps are ordered), so the encoding is canonical.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "seq": self.seq, "ts_ms": self.ts_ms, "kind": self.kind, "data": self.data,
        }))
        .expect("a record serialises")
    }

    pub fn hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(self.canonical());
        h.finalize().into()
    }
}

/// Where a walk found the chain broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("record {seq}: its hash does not match its content (edited)")]
    Hash { seq: u64 },
    #[error("record {found} follows record {after}: records are missing or reordered")]
    Sequence { after: u64, found: u64 },
    #[error("checkpoint at record {seq}: bad signature")]
    Signature { seq: u64 },
    #[error("checkpoint at record {seq}: the chain's hash there differs (rewritten)")]
    Checkpoint { seq: u64 },
}

/// Walks `(record, stored hash)` pairs from `start` (the hash before the
/// first one: GENESIS, or the checkpoint a pruned log is anchored at).
pub fn verify<'a>(
    start: ([u8; 32], u64),
    rows: impl IntoIterator<Item = (&'a Record, [u8; 32])>,
) -> Result<([u8; 32], u64), Broken> {
    let (mut prev, mut next) = start;
    for (r, stored) in rows {
        if r.seq != next {
            return Err(Broken::Sequence {
                after: next.wrapping_sub(1),
                found: r.seq,
            });
        }
        let h = r.hash(&prev);
        if h != stored {
            return Err(Broken::Hash { seq: r.seq });
        }
        prev = h;
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
                    kind: "exchange".into(),
                    data: json!({"status": 200, "body": format!("body {seq}"), "url": "https://a/x"}),
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
        t[3].0.data["body"] = "forged".into();
        assert_eq!(walk(&t), Err(Broken::Hash { seq: 3 }));
        // Edit a status.
        let mut t = rows.clone();
        t[2].0.data["status"] = 500.into();
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
        t[1].0.data["body"] = "forged".into();
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

//! What someone who can write the audit database, but holds no key, can
//! do to it: the batched layout read and written with the sqlite3 CLI and
//! the format as `docs/audit.md` gives it, written out again here (not
//! taken from hoop) so that the suites forge the way an outsider would.
use std::{
    path::Path,
    process::{Command, Stdio},
};

/// One row of `batches`, its records unpacked and decoded; edits are
/// written back unpacked (codec 0).
#[derive(Debug, Clone)]
pub struct Batch {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: Vec<Rec>,
    pub head: Vec<u8>,
    pub signed: bool,
}

/// A record: its time and its five fields (kind, session, data, request
/// body, response body).
#[derive(Debug, Clone)]
pub struct Rec {
    pub ts_ms: u64,
    pub fields: Vec<Option<Vec<u8>>>,
}

impl Rec {
    pub fn kind(&self) -> String {
        self.text(0)
    }

    pub fn data(&self) -> String {
        self.text(2)
    }

    /// Field `i` as text.
    pub fn text(&self, i: usize) -> String {
        String::from_utf8(self.fields[i].clone().expect("a field")).unwrap()
    }

    pub fn set_data(&mut self, data: &str) {
        self.fields[2] = Some(data.as_bytes().to_vec());
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in &self.fields {
            match f {
                None => out.push(0),
                Some(b) => {
                    out.push(1);
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }
}

/// Runs `sql` with the sqlite3 CLI (on its stdin: an edit's SQL can be
/// longer than an argument may be).
pub fn sqlite(db: &Path, sql: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sqlite3 CLI is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0, |n, x| (n << 8) | *x as u64)
}

fn decode(mut b: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let ts_ms = be(&b[..8]);
        let len = be(&b[8..12]) as usize;
        let mut r = &b[12..12 + len];
        b = &b[12 + len..];
        let mut fields = Vec::new();
        for _ in 0..5 {
            let tag = r[0];
            if tag == 0 {
                fields.push(None);
                r = &r[1..];
            } else {
                let n = be(&r[1..5]) as usize;
                fields.push(Some(r[5..5 + n].to_vec()));
                r = &r[5 + n..];
            }
        }
        out.push(Rec { ts_ms, fields });
    }
    out
}

/// A record as a batch's blob holds it.
pub fn encode(r: &Rec) -> Vec<u8> {
    let bytes = r.bytes();
    let mut out = r.ts_ms.to_be_bytes().to_vec();
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// Every batch from `from` on, in order.
pub fn batches(db: &Path, from: u64) -> Vec<Batch> {
    let rows = sqlite(
        db,
        &format!(
            "SELECT first_seq, last_seq, codec, hex(records), hex(head), sig IS NOT NULL FROM batches \
             WHERE last_seq >= {from} ORDER BY first_seq"
        ),
    );
    rows.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('|').collect();
            // Codec 1: the batch's records zstd-compressed together.
            let stored = unhex(c[3]);
            let records = match c[2] {
                "0" => stored,
                "1" => zstd::decode_all(&stored[..]).unwrap(),
                other => panic!("codec {other}"),
            };
            Batch {
                first_seq: c[0].parse().unwrap(),
                last_seq: c[1].parse().unwrap(),
                records: decode(&records),
                head: unhex(c[4]),
                signed: c[5] == "1",
            }
        })
        .collect()
}

/// Every record, `(seq, record)`, in order.
pub fn records(db: &Path) -> Vec<(u64, Rec)> {
    batches(db, 0)
        .into_iter()
        .flat_map(|b| (b.first_seq..).zip(b.records))
        .collect()
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        h.update(p);
    }
    h.finish().as_ref().to_vec()
}

/// The chain's link over a record, as hoop computes it.
pub fn link(prev: &[u8], seq: u64, r: &Rec) -> Vec<u8> {
    let digest = sha256(&[b"hoop-audit-fields-v2", &r.bytes()]);
    sha256(&[
        prev,
        b"hoop-audit-link-v2",
        &seq.to_be_bytes(),
        &r.ts_ms.to_be_bytes(),
        &digest,
    ])
}

/// Edits the records from `from` on with `edit` and re-chains them:
/// every later batch's blob and head rewritten, signatures untouched.
pub fn rechain(db: &Path, from: u64, edit: impl Fn(u64, &mut Rec)) {
    let all = batches(db, from);
    let first = all.first().expect("a batch to edit").first_seq;
    let mut prev = match first {
        0 => vec![0; 32],
        f => unhex(&sqlite(
            db,
            &format!("SELECT hex(head) FROM batches WHERE last_seq = {}", f - 1),
        )),
    };
    let mut sql = String::from("BEGIN;");
    for mut b in all {
        let mut blob = Vec::new();
        for (seq, r) in (b.first_seq..).zip(b.records.iter_mut()) {
            if seq >= from {
                edit(seq, r);
            }
            prev = link(&prev, seq, r);
            blob.extend(encode(r));
        }
        sql += &format!(
            "UPDATE batches SET codec = 0, records = X'{}', head = X'{}' WHERE first_seq = {};",
            hex(&blob),
            hex(&prev),
            b.first_seq
        );
    }
    sql += "COMMIT;";
    sqlite(db, &sql);
}

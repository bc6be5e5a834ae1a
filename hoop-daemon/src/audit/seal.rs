//! A record's stored bytes, made on the request's task: the writer only
//! numbers, chains and appends them. The bytes are also what the chain
//! hashes, so reading a record back never re-serialises anything.
//!
//! A record is five fields in order (kind, session, data, request body,
//! response body), each `tag: u8` then, unless the tag is 0 (absent),
//! `len: u32 BE` and `len` bytes. Tag 1 is the value as it is; tag 2 is
//! the value zstd-compressed (only when that is smaller: tiny values are
//! never compressed). In a batch, each record is `ts_ms: u64 BE`,
//! `len: u32 BE`, then its bytes; its seq is the batch's first plus its
//! place. `docs/audit.md` has the same, for tools outside hoop.
use std::{cell::RefCell, io::Read};

use super::Entry;

/// Smaller values are stored as they are: zstd's frame would outweigh
/// what it saves, and the call costs more than the copy.
const MIN_COMPRESS: usize = 128;
/// Fast: compression runs on the request's task.
const ZSTD_LEVEL: i32 = 1;
/// A decompressed value never exceeds this: a forged blob can't exhaust
/// memory.
const MAX_VALUE: u64 = 256 << 20;

const ABSENT: u8 = 0;
const RAW: u8 = 1;
const ZSTD: u8 = 2;

/// One record, ready to append: its bytes and their digest.
#[derive(Debug)]
pub struct Sealed {
    pub kind: &'static str,
    /// For the sessions index (empty: none).
    pub session: String,
    pub bytes: Vec<u8>,
    pub digest: [u8; 32],
}

thread_local! {
    static ZSTD_CX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

impl Sealed {
    pub fn of(e: Entry) -> Self {
        let bytes = encode([
            Some(e.kind.as_bytes()),
            Some(e.session.as_bytes()),
            Some(e.data.as_bytes()),
            e.req_body.as_deref(),
            e.resp_body.as_deref(),
        ]);
        let digest = digest(&bytes);
        Self {
            kind: e.kind,
            session: e.session,
            bytes,
            digest,
        }
    }
}

fn encode(fields: [Option<&[u8]>; 5]) -> Vec<u8> {
    let size: usize = fields.iter().flatten().map(|f| f.len() + 5).sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    for f in fields {
        put(&mut bytes, f);
    }
    bytes
}

/// What the chain links: `sha256("hoop-audit-fields-v2" ‖ bytes)`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(b"hoop-audit-fields-v2");
    h.update(bytes);
    h.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn put(out: &mut Vec<u8>, field: Option<&[u8]>) {
    let Some(v) = field else {
        out.push(ABSENT);
        return;
    };
    if v.len() >= MIN_COMPRESS
        && let Some(z) = compress(v)
        && z.len() < v.len()
    {
        frame(out, ZSTD, &z);
    } else {
        frame(out, RAW, v);
    }
}

fn frame(out: &mut Vec<u8>, tag: u8, v: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

fn compress(v: &[u8]) -> Option<Vec<u8>> {
    ZSTD_CX.with(|cx| {
        let mut cx = cx.borrow_mut();
        if cx.is_none() {
            *cx = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        cx.as_mut()?.compress(v).ok()
    })
}

/// A stored record that does not parse: only an edit makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed record bytes")]
pub struct Malformed;

/// A record's fields, decoded (decompressed).
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    pub kind: String,
    pub session: String,
    pub data: String,
    pub req_body: Option<Vec<u8>>,
    pub resp_body: Option<Vec<u8>>,
}

impl Fields {
    /// The stored bytes of these fields (compressed where worth it).
    pub fn encode(&self) -> Vec<u8> {
        encode([
            Some(self.kind.as_bytes()),
            Some(self.session.as_bytes()),
            Some(self.data.as_bytes()),
            self.req_body.as_deref(),
            self.resp_body.as_deref(),
        ])
    }
}

pub fn fields(mut b: &[u8]) -> Result<Fields, Malformed> {
    let mut next = || -> Result<Option<Vec<u8>>, Malformed> {
        let (&tag, rest) = b.split_first().ok_or(Malformed)?;
        if tag == ABSENT {
            b = rest;
            return Ok(None);
        }
        let (len, rest) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
        let len = u32::from_be_bytes(*len) as usize;
        let v = rest.get(..len).ok_or(Malformed)?;
        b = &rest[len..];
        match tag {
            RAW => Ok(Some(v.to_vec())),
            ZSTD => decompress(v).map(Some),
            _ => Err(Malformed),
        }
    };
    let text = |v: Option<Vec<u8>>| String::from_utf8(v.ok_or(Malformed)?).map_err(|_| Malformed);
    let f = Fields {
        kind: text(next()?)?,
        session: text(next()?)?,
        data: text(next()?)?,
        req_body: next()?,
        resp_body: next()?,
    };
    if !b.is_empty() {
        return Err(Malformed);
    }
    Ok(f)
}

/// The kind alone (the first field, never compressed): what a walk over
/// the chain needs without decoding the rest.
pub fn kind(b: &[u8]) -> Result<&str, Malformed> {
    let (&tag, rest) = b.split_first().ok_or(Malformed)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
    let v = rest
        .get(..u32::from_be_bytes(*len) as usize)
        .ok_or(Malformed)?;
    match tag {
        RAW => std::str::from_utf8(v).map_err(|_| Malformed),
        _ => Err(Malformed),
    }
}

fn decompress(v: &[u8]) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::new();
    zstd::stream::Decoder::new(v)
        .map_err(|_| Malformed)?
        .take(MAX_VALUE)
        .read_to_end(&mut out)
        .map_err(|_| Malformed)?;
    Ok(out)
}

/// Appends a numbered record to a batch's blob.
pub fn append(blob: &mut Vec<u8>, ts_ms: u64, bytes: &[u8]) {
    blob.extend_from_slice(&ts_ms.to_be_bytes());
    blob.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    blob.extend_from_slice(bytes);
}

/// The records of a batch's blob: `(ts_ms, bytes)` in order.
pub fn split(mut blob: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), Malformed>> {
    std::iter::from_fn(move || {
        if blob.is_empty() {
            return None;
        }
        let one = (|| {
            let (ts, rest) = blob.split_first_chunk::<8>().ok_or(Malformed)?;
            let (len, rest) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
            let len = u32::from_be_bytes(*len) as usize;
            let bytes = rest.get(..len).ok_or(Malformed)?;
            Ok((u64::from_be_bytes(*ts), bytes, &rest[len..]))
        })();
        Some(match one {
            Ok((ts, bytes, rest)) => {
                blob = rest;
                Ok((ts, bytes))
            }
            Err(m) => {
                blob = &[];
                Err(m)
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(data: &str, body: Option<&[u8]>) -> Entry {
        Entry {
            kind: "response",
            session: "job-1".into(),
            data: data.into(),
            req_body: None,
            resp_body: body.map(Bytes::copy_from_slice),
        }
    }

    #[test]
    fn what_is_sealed_reads_back_the_same() {
        let big = "x".repeat(4000);
        for (data, body) in [
            ("{}", None),
            ("{\"a\":1}", Some(&b""[..])),
            (big.as_str(), Some(big.as_bytes())),
            ("{}", Some(&[0u8, 1, 2, 255][..])),
        ] {
            let s = Sealed::of(entry(data, body));
            let f = fields(&s.bytes).unwrap();
            assert_eq!(f.kind, "response");
            assert_eq!(f.session, "job-1");
            assert_eq!(f.data, data);
            assert_eq!(f.req_body, None);
            assert_eq!(f.resp_body.as_deref(), body);
            assert_eq!(s.digest, digest(&s.bytes));
        }
    }

    #[test]
    fn only_values_worth_it_are_compressed() {
        let data = "{\"status\":200}";
        let small = Sealed::of(entry(data, Some(b"ok")));
        let raw = (5 + "response".len()) + (5 + "job-1".len()) + (5 + data.len()) + 1 + (5 + 2);
        assert_eq!(small.bytes.len(), raw, "tiny values stay raw");
        let big = "{\"k\":\"".to_string() + &"v".repeat(2000) + "\"}";
        let s = Sealed::of(entry(&big, None));
        assert!(s.bytes.len() < 200, "{} bytes", s.bytes.len());
    }

    #[test]
    fn a_batch_splits_back_and_damage_is_malformed() {
        let (a, b) = (Sealed::of(entry("{}", None)), Sealed::of(entry("[]", None)));
        let mut blob = Vec::new();
        append(&mut blob, 7, &a.bytes);
        append(&mut blob, 9, &b.bytes);
        let got: Vec<_> = split(&blob).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(7, &a.bytes[..]), (9, &b.bytes[..])]);
        // Cut anywhere but between records: malformed, never a panic.
        for cut in 1..blob.len() {
            let parts: Result<Vec<_>, _> = split(&blob[..cut]).collect();
            let whole = cut == 12 + a.bytes.len();
            assert_eq!(parts.is_ok(), whole, "cut at {cut}");
        }
        for cut in 0..a.bytes.len() {
            assert_eq!(fields(&a.bytes[..cut]), Err(Malformed), "cut at {cut}");
        }
    }
}

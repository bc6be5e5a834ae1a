//! A record's stored bytes, made and hashed on the request's task: the
//! writer only numbers, chains, packs and appends them. The bytes are also what
//! the chain hashes, so reading a record back never re-serialises anything.
//!
//! A record is five fields in order (kind, session, data, request body,
//! response body), each `tag: u8` then, unless the tag is 0 (absent),
//! `len: u32 BE` and `len` bytes (tag 1). In a batch, each record is
//! `ts_ms: u64 BE`, `len: u32 BE`, then its bytes; its seq is the batch's
//! first plus its place. A batch's records are compressed together
//! ([`Packer::pack`]): records of one commit share most of their keys, headers and
//! identities, which compressing each value alone could not exploit.
//! `docs/audit.md` has the same, for tools outside hoop.
use std::{borrow::Cow, cell::RefCell};

use super::Entry;

/// Smaller batches are stored as they are: zstd's frame would outweigh
/// what it saves.
const MIN_COMPRESS: usize = 256;
/// Fast: the writer compresses every batch.
const ZSTD_LEVEL: i32 = 1;
/// A decompressed batch never exceeds this: a forged blob can't exhaust
/// memory.
const MAX_BATCH_BYTES: usize = 256 << 20;

const ABSENT: u8 = 0;
const PRESENT: u8 = 1;

/// How a batch's records are stored (`batches.codec`).
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

/// One record, ready to append: its bytes and their digest.
#[derive(Debug)]
pub struct Sealed {
    pub kind: &'static str,
    /// For the sessions index (empty: none).
    pub session: String,
    pub bytes: Vec<u8>,
    pub digest: [u8; 32],
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
    out.push(PRESENT);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// The writer's compressor, kept across batches.
pub struct Packer(zstd::bulk::Compressor<'static>);

impl Packer {
    pub fn new() -> std::io::Result<Self> {
        zstd::bulk::Compressor::new(ZSTD_LEVEL).map(Self)
    }

    /// A batch's records as stored: `(codec, bytes)`, compressed when that
    /// is smaller.
    pub fn pack(&mut self, records: Vec<u8>) -> (u8, Vec<u8>) {
        if records.len() >= MIN_COMPRESS
            && let Ok(z) = self.0.compress(&records)
            && z.len() < records.len()
        {
            return (CODEC_ZSTD, z);
        }
        (CODEC_RAW, records)
    }
}

thread_local! {
    /// Readers unpack batch after batch: one context each, not one per
    /// batch (its allocation cost more than a small batch's decoding).
    static UNPACKER: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// A batch's records as [`append`] laid them out.
pub fn unpack(codec: u8, stored: &[u8]) -> Result<Cow<'_, [u8]>, Malformed> {
    match codec {
        CODEC_RAW => Ok(Cow::Borrowed(stored)),
        CODEC_ZSTD => UNPACKER.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = zstd::bulk::Decompressor::new().ok();
            }
            let d = d.as_mut().ok_or(Malformed)?;
            // The frame records its size (the writer's compressor does):
            // the buffer is that, up to the cap.
            d.decompress(stored, MAX_BATCH_BYTES)
                .map(Cow::Owned)
                .map_err(|_| Malformed)
        }),
        _ => Err(Malformed),
    }
}

/// A stored record that does not parse: only an edit makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed record bytes")]
pub struct Malformed;

/// A record's fields, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    pub kind: String,
    pub session: String,
    pub data: String,
    pub req_body: Option<Vec<u8>>,
    pub resp_body: Option<Vec<u8>>,
}

impl Fields {
    /// The stored bytes of these fields.
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
            PRESENT => Ok(Some(v.to_vec())),
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

/// The kind alone (the first field): what a walk over the chain needs
/// without decoding the rest.
pub fn kind(b: &[u8]) -> Result<&str, Malformed> {
    let (&tag, rest) = b.split_first().ok_or(Malformed)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
    let v = rest
        .get(..u32::from_be_bytes(*len) as usize)
        .ok_or(Malformed)?;
    match tag {
        PRESENT => std::str::from_utf8(v).map_err(|_| Malformed),
        _ => Err(Malformed),
    }
}

/// The session (the second field), without decoding the rest.
pub fn session(b: &[u8]) -> Result<&str, Malformed> {
    let (&tag, rest) = b.split_first().ok_or(Malformed)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or(Malformed)?;
    if tag != PRESENT {
        return Err(Malformed);
    }
    kind(
        rest.get(u32::from_be_bytes(*len) as usize..)
            .ok_or(Malformed)?,
    )
}

/// The sessions a batch's records belong to (none empty), sorted, once
/// each. What does not decode adds none: `verify` names it.
pub fn sessions(codec: u8, stored: &[u8]) -> Vec<String> {
    let Ok(records) = unpack(codec, stored) else {
        return Vec::new();
    };
    let mut out: Vec<String> = split(&records)
        .map_while(Result::ok)
        .filter_map(|(_, bytes)| session(bytes).ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
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
    fn a_batchs_sessions_are_read_without_decoding_the_rest() {
        let mut blob = Vec::new();
        for (n, name) in ["job-2", "", "job-1", "job-2"].into_iter().enumerate() {
            let mut e = entry("{}", Some(b"body"));
            e.session = name.into();
            let s = Sealed::of(e);
            assert_eq!(
                session(&s.bytes),
                Ok(fields(&s.bytes).unwrap().session.as_str())
            );
            append(&mut blob, n as u64, &s.bytes);
        }
        let (codec, packed) = Packer::new().unwrap().pack(blob.clone());
        assert_eq!(
            sessions(codec, &packed),
            ["job-1", "job-2"],
            "once each, none empty"
        );
        // A record cut short ends what is read; a bad blob gives none.
        let cut = &blob[..blob.len() - 3];
        assert_eq!(sessions(CODEC_RAW, cut), ["job-1", "job-2"]);
        assert_eq!(sessions(CODEC_RAW, &blob[..20]), Vec::<String>::new());
        assert!(session(&[PRESENT, 0, 0, 0, 1, b'k', ABSENT]).is_err());
    }

    #[test]
    fn a_batch_is_compressed_when_worth_it() {
        let mut p = Packer::new().unwrap();
        let mut blob = Vec::new();
        append(&mut blob, 1, &Sealed::of(entry("{}", None)).bytes);
        let (codec, small) = p.pack(blob.clone());
        assert_eq!((codec, &small), (CODEC_RAW, &blob), "tiny batches stay raw");
        for n in 0..50 {
            let data = format!("{{\"status\":200,\"n\":{n},\"host\":\"api.partner.example\"}}");
            append(
                &mut blob,
                n,
                &Sealed::of(entry(&data, Some(b"hello"))).bytes,
            );
        }
        let (codec, packed) = p.pack(blob.clone());
        assert_eq!(codec, CODEC_ZSTD);
        assert!(
            packed.len() * 4 < blob.len(),
            "{} of {}",
            packed.len(),
            blob.len()
        );
        assert_eq!(unpack(codec, &packed).unwrap(), &blob[..]);
        assert_eq!(
            unpack(CODEC_ZSTD, &packed[..packed.len() / 2]),
            Err(Malformed)
        );
        assert_eq!(unpack(7, &packed), Err(Malformed));
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

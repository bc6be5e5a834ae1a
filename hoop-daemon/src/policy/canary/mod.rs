//! The leak canary on the way back to the job: response headers (values,
//! names, the HTTP/1 reason phrase), the body and its trailers are scanned
//! for the connection's secret in every form a decoder could turn back
//! into it, and every hit is masked (same length) and reported.
//!
//! Needles are the raw secret, the Basic value and the secret's base64
//! forms at each alignment. They are matched in the bytes as sent, and in
//! decoded views of them ([`views`]: backslash-unescaped, percent-decoded,
//! and both, in either order or twice), so `%2f`, `\/`, `\u002F`, `+` for
//! space, and any mix of escaped and plain characters, are all found. A
//! hit in a view masks the source bytes that encode it: what is left can't
//! decode back to the secret, and lengths and framing stay valid.
//!
//! The body is scanned as it streams: only the bytes that later data could
//! still complete into a hit are held back between chunks.
mod views;

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, response};

use self::views::{Decoder, View};
use super::credential::REDACTED;
use super::phases::BodyTransform;

/// The needles, as matched in a view: exact, or with `+` folded to space
/// (percent-decoded views).
struct Needles {
    exact: AhoCorasick,
    folded: AhoCorasick,
}

impl Needles {
    fn new(needles: &[Vec<u8>], ignore_case: bool) -> Self {
        let build = |n: &[Vec<u8>]| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(ignore_case)
                .build(n)
                .expect("canary needles build")
        };
        let folded: Vec<Vec<u8>> = needles
            .iter()
            .map(|n| {
                let mut n = n.clone();
                views::fold(&mut n);
                n
            })
            .collect();
        Self {
            exact: build(needles),
            folded: build(&folded),
        }
    }

    fn of(&self, view: &View) -> &AhoCorasick {
        if view.folded {
            &self.folded
        } else {
            &self.exact
        }
    }
}

/// Finds the secret (and its encodings) in what goes back to the job.
pub struct Canary {
    values: Needles,
    /// For header names, which HTTP lowercases.
    names: Needles,
    /// Longest needle.
    max_len: usize,
    /// The secret has a space, so a lone `+` may stand for it.
    plus: bool,
}

impl std::fmt::Debug for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Canary({} needles)", self.values.exact.patterns_len())
    }
}

/// Buffers are scanned in windows of at least this size, so a large body
/// never has views much bigger than one window.
const WINDOW: usize = 64 << 10;

impl Canary {
    /// `secret` and `encoded`: its forms decoding can't undo (base64).
    pub fn new(secret: &[u8], encoded: Vec<Vec<u8>>) -> Self {
        let mut needles = vec![secret.to_vec()];
        needles.extend(encoded);
        needles.sort();
        needles.dedup();
        Self {
            values: Needles::new(&needles, false),
            names: Needles::new(&needles, true),
            max_len: needles.iter().map(Vec::len).max().unwrap_or(1),
            plus: secret.contains(&b' '),
        }
    }

    /// Overwrites every occurrence in place (same length, so lengths and
    /// framing stay valid); returns how many it masked.
    pub fn mask(&self, buf: &mut [u8]) -> usize {
        self.scan(&self.values, buf, true).0
    }

    /// [`Self::mask`] for a header name (compared ignoring ASCII case).
    pub fn mask_name(&self, buf: &mut [u8]) -> usize {
        self.scan(&self.names, buf, true).0
    }

    /// Masks what is in `buf` of a stream that goes on: returns the hits,
    /// and how many leading bytes are final (no later data can make them
    /// part of a hit). The rest must be scanned again with what follows.
    pub fn mask_stream(&self, buf: &mut [u8]) -> (usize, usize) {
        self.scan(&self.values, buf, false)
    }

    /// Window by window; each next window starts where the last one's
    /// final bytes end.
    fn scan(&self, n: &Needles, buf: &mut [u8], end: bool) -> (usize, usize) {
        let window = WINDOW.max(256 * self.max_len);
        let (mut hits, mut pos) = (0, 0);
        loop {
            let last = buf.len() - pos <= window;
            let stop = if last { buf.len() } else { pos + window };
            let (h, settled) = self.window(n, &mut buf[pos..stop], last && end);
            hits += h;
            if last {
                return (hits, pos + settled);
            }
            if settled == 0 {
                // Can't happen with a window this much larger than a
                // needle's longest encoding; scan the rest whole if it does.
                let (h, settled) = self.window(n, &mut buf[pos..], end);
                return (hits + h, pos + settled);
            }
            pos += settled;
        }
    }

    fn window(&self, n: &Needles, buf: &mut [u8], end: bool) -> (usize, usize) {
        let (hits, views) = self.pass(n, buf, true);
        if end {
            return (hits, buf.len());
        }
        // Masking changed the bytes the views were decoded from.
        let views = if hits > 0 {
            self.pass(n, buf, false).1
        } else {
            views
        };
        (hits, self.settled(buf.len(), &views))
    }

    /// Masks hits in `buf` and in its views (with `find`); returns the hits
    /// and the views. A view is decoded only when its input has an escape
    /// for it, so plain text costs one automaton pass. Masking goes view
    /// by view, so the same occurrence is not counted twice.
    fn pass(&self, n: &Needles, buf: &mut [u8], find: bool) -> (usize, Vec<View>) {
        let mut hits = 0;
        if find {
            let found: Vec<(usize, usize)> = n
                .exact
                .find_iter(&*buf)
                .map(|m| (m.start(), m.end()))
                .collect();
            for &(s, e) in &found {
                fill(&mut buf[s..e]);
            }
            hits += found.len();
        }
        let mut views = Vec::new();
        for first in [Decoder::Unescape, Decoder::Percent] {
            let Some(mut v1) = views::decode(first, buf, None, self.plus) else {
                continue;
            };
            if find {
                hits += mask_view(n, buf, &mut v1, None);
            }
            for second in [Decoder::Unescape, Decoder::Percent] {
                if let Some(mut v2) = views::decode(second, &v1.bytes, Some(&v1), self.plus) {
                    if find {
                        hits += mask_view(n, buf, &mut v2, Some(&mut v1));
                    }
                    views.push(v2);
                }
            }
            views.push(v1);
        }
        (hits, views)
    }

    /// How many leading bytes of an `n`-byte buffer are final: a hit
    /// starting in them lies wholly in the buffer (so it was found), and
    /// it is a token boundary of every view, so the next scan decodes from
    /// there as the whole stream would be decoded.
    fn settled(&self, n: usize, views: &[View]) -> usize {
        let l = self.max_len;
        // As sent, the last l - 1 bytes may begin a hit.
        let mut out = n.saturating_sub(l - 1);
        for v in views {
            // Decoded bytes of tokens that may yet read differently (an
            // escape cut short) are not counted on.
            let whole = v.starts.partition_point(|&s| s as usize + v.margin < n);
            let first_open = (whole + 1).saturating_sub(l);
            let bound = if whole + 1 < l {
                0
            } else {
                v.starts.get(first_open).map_or(n, |&s| s as usize)
            };
            out = out.min(bound);
        }
        // Back to a start that every view agrees is one.
        loop {
            let mut moved = false;
            for v in views {
                let i = v.starts.partition_point(|&s| s as usize <= out);
                let start = if i == 0 { 0 } else { v.starts[i - 1] as usize };
                if start < out {
                    out = start;
                    moved = true;
                }
            }
            if !moved {
                return out;
            }
        }
    }
}

/// Masks the source of every hit in view `v`; blanks the hits in `v` and
/// in the view it was decoded from, which later views are decoded from.
fn mask_view(n: &Needles, buf: &mut [u8], v: &mut View, mut parent: Option<&mut View>) -> usize {
    let found: Vec<(usize, usize)> = n
        .of(v)
        .find_iter(&v.bytes)
        .map(|m| v.source(m.start(), m.end(), buf.len()))
        .collect();
    for &(s, e) in &found {
        fill(&mut buf[s..e]);
        v.blank(s, e);
        if let Some(p) = parent.as_deref_mut() {
            p.blank(s, e);
        }
    }
    found.len()
}

/// `[hoop:credential]` padded with `*`, or only `*` when shorter. Neither
/// starts an escape, so the mask decodes to itself in every view.
fn fill(dst: &mut [u8]) {
    let tag = REDACTED.as_bytes();
    if dst.len() >= tag.len() {
        dst[..tag.len()].copy_from_slice(tag);
        dst[tag.len()..].fill(b'*');
    } else {
        dst.fill(b'*');
    }
}

/// Masks hits in the head: header values and names, and a custom HTTP/1
/// reason phrase (hyper hands an upstream's on to the job); returns how
/// many.
pub fn mask_headers(canary: &Canary, parts: &mut response::Parts) -> usize {
    let mut hits = mask_header_map(canary, &mut parts.headers);
    if let Some(r) = parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        let mut b = r.as_bytes().to_vec();
        let n = canary.mask(&mut b);
        if n > 0 {
            hits += n;
            match hyper::ext::ReasonPhrase::try_from(b) {
                Ok(r) => {
                    parts.extensions.insert(r);
                }
                Err(_) => {
                    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
                }
            }
        }
    }
    hits
}

/// Masks hits in a header map (a head's, or trailers); returns how many.
pub fn mask_header_map(canary: &Canary, headers: &mut HeaderMap) -> usize {
    let mut hits = 0;
    for v in headers.values_mut() {
        let mut b = v.as_bytes().to_vec();
        let n = canary.mask(&mut b);
        if n > 0 {
            hits += n;
            // Masking writes ASCII over ASCII: still a valid value.
            *v = HeaderValue::from_bytes(&b).unwrap_or(HeaderValue::from_static(""));
        }
    }
    let named = headers.keys().any(|k| {
        let mut b = k.as_str().as_bytes().to_vec();
        canary.mask_name(&mut b) > 0
    });
    if named {
        // Rare: rebuild the map with the names masked, order kept.
        let mut name = None;
        for (k, v) in std::mem::take(headers) {
            if let Some(k) = k {
                name = Some(masked_name(canary, k, &mut hits));
            }
            if let Some(n) = &name {
                headers.append(n.clone(), v);
            }
        }
    }
    hits
}

fn masked_name(canary: &Canary, name: HeaderName, hits: &mut usize) -> HeaderName {
    let mut b = name.as_str().as_bytes().to_vec();
    let n = canary.mask_name(&mut b);
    if n == 0 {
        return name;
    }
    *hits += n;
    // The tag's brackets and colon can't be in a name; `*` can.
    for c in &mut b {
        if matches!(c, b'[' | b']' | b':') {
            *c = b'*';
        }
    }
    HeaderName::from_bytes(&b).unwrap_or(HeaderName::from_static("x-hoop-masked"))
}

pub struct CanaryBody {
    canary: Arc<Canary>,
    held: BytesMut,
    on_hit: Box<dyn FnMut(usize) + Send>,
    hits: u64,
}

impl CanaryBody {
    pub fn new(canary: Arc<Canary>, on_hit: Box<dyn FnMut(usize) + Send>) -> Self {
        Self {
            canary,
            held: BytesMut::new(),
            on_hit,
            hits: 0,
        }
    }

    fn report(&mut self, n: usize) {
        if n > 0 {
            self.hits += n as u64;
            (self.on_hit)(n);
        }
    }
}

impl BodyTransform for CanaryBody {
    fn chunk(&mut self, data: Bytes) -> Bytes {
        self.held.extend_from_slice(&data);
        let (n, settled) = self.canary.mask_stream(&mut self.held);
        self.report(n);
        self.held.split_to(settled).freeze()
    }

    fn finish(&mut self) -> Bytes {
        // Already scanned: a hit wholly in the held bytes was found then.
        std::mem::take(&mut self.held).freeze()
    }

    fn trailers(&mut self, trailers: &mut HeaderMap) {
        let n = mask_header_map(&self.canary, trailers);
        self.report(n);
    }

    fn masked(&self) -> crate::policy::mask::Counts {
        let mut c = crate::policy::mask::Counts::default();
        c.add(crate::policy::enforce::CANARY, self.hits);
        c
    }
}

#[cfg(test)]
mod tests;

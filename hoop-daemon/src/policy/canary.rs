//! The leak canary on the way back to the job: response headers and the
//! body are scanned for the connection's secret and its encodings, and
//! every hit is masked (same length) and reported. The body is scanned as
//! it streams: only the last `max_len - 1` bytes are held back between
//! chunks, so a secret split across chunks is still caught.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, response};

use super::credential::Canary;
use crate::pipeline::phases::BodyTransform;

/// Masks hits in header values; returns how many.
pub fn mask_headers(canary: &Canary, parts: &mut response::Parts) -> usize {
    let mut hits = 0;
    for v in parts.headers.values_mut() {
        let mut b = v.as_bytes().to_vec();
        let n = canary.mask(&mut b);
        if n > 0 {
            hits += n;
            // Masking writes ASCII over ASCII: still a valid value.
            *v = HeaderValue::from_bytes(&b).unwrap_or(HeaderValue::from_static(""));
        }
    }
    hits
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

    fn scan(&mut self) {
        let n = self.canary.mask(&mut self.held);
        if n > 0 {
            self.hits += n as u64;
            (self.on_hit)(n);
        }
    }
}

impl BodyTransform for CanaryBody {
    fn chunk(&mut self, data: Bytes) -> Bytes {
        self.held.extend_from_slice(&data);
        self.scan();
        // A match starting before `keep` from the end is wholly inside the
        // buffer, so it was found; later bytes may begin one not yet whole.
        let keep = (self.canary.max_len - 1).min(self.held.len());
        let out = self.held.len() - keep;
        self.held.split_to(out).freeze()
    }

    fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.held).freeze()
    }

    fn masked(&self) -> crate::policy::mask::Counts {
        let mut c = crate::policy::mask::Counts::default();
        c.add(crate::policy::phases::CANARY, self.hits);
        c
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{config::policy::CredentialConfig, policy::credential::Credential};

    fn canary(secret: &str) -> (Arc<Canary>, tempfile::NamedTempFile) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), secret).unwrap();
        let c: CredentialConfig =
            toml::from_str(&format!("secret = {{ file = \"{}\" }}", f.path().display())).unwrap();
        (Credential::new(&c).unwrap().canary.clone(), f)
    }

    #[test]
    fn a_secret_split_across_chunks_at_every_offset_is_masked() {
        let secret = "tok-0123456789abcdef";
        let (c, _f) = canary(secret);
        let body = format!("{{\"headers\":{{\"authorization\":\"Bearer {secret}\"}},\"n\":1}}");
        for cut1 in 0..body.len() {
            for cut2 in [cut1, (cut1 + 7).min(body.len())] {
                let hits = Arc::new(AtomicUsize::new(0));
                let h = hits.clone();
                let mut t = CanaryBody::new(
                    c.clone(),
                    Box::new(move |n| {
                        h.fetch_add(n, Ordering::SeqCst);
                    }),
                );
                let mut out = Vec::new();
                for part in [&body[..cut1], &body[cut1..cut2], &body[cut2..]] {
                    out.extend_from_slice(&t.chunk(Bytes::copy_from_slice(part.as_bytes())));
                }
                out.extend_from_slice(&t.finish());
                let out = String::from_utf8(out).unwrap();
                assert_eq!(out.len(), body.len());
                assert!(!out.contains(secret), "cut at {cut1}/{cut2}: {out}");
                assert!(out.contains("Bearer [hoop:credential]***"), "{out}");
                assert_eq!(hits.load(Ordering::SeqCst), 1);
            }
        }
    }

    #[test]
    fn headers_are_masked() {
        let (c, _f) = canary("tok-0123456789abcdef");
        let mut p = http::Response::builder()
            .header("x-echo", "Bearer tok-0123456789abcdef")
            .header("x-other", "fine")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(mask_headers(&c, &mut p), 1);
        assert_eq!(p.headers["x-echo"], "Bearer [hoop:credential]***");
        assert_eq!(p.headers["x-other"], "fine");
    }
}

//! Content decoding before masking: gzip, deflate (zlib or raw), br and
//! zstd, each bounded, so a small compressed body can't expand without
//! limit (a decompression bomb ends at `limit`).
use std::io::Read;

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Body(Vec<u8>),
    /// More than `limit` bytes once decoded.
    TooLarge,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported Content-Encoding {0:?}")]
    Unsupported(String),
    #[error("cannot decode {encoding}: {source}")]
    Corrupt {
        encoding: String,
        source: std::io::Error,
    },
}

/// Decodes `body` per `Content-Encoding` (a list, applied in order).
pub fn decode(encoding: &str, body: &[u8], limit: usize) -> Result<Decoded, DecodeError> {
    let mut cur = body.to_vec();
    // Encodings are listed in the order they were applied: undo from the end.
    for enc in encoding.split(',').map(str::trim).rev() {
        let mut out = Vec::new();
        let cap = (limit as u64) + 1;
        let r = match enc.to_ascii_lowercase().as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&cur[..])
                .take(cap)
                .read_to_end(&mut out),
            "deflate" => {
                let z = flate2::read::ZlibDecoder::new(&cur[..])
                    .take(cap)
                    .read_to_end(&mut out);
                if z.is_err() {
                    // Some servers send raw deflate despite RFC 9110.
                    out.clear();
                    flate2::read::DeflateDecoder::new(&cur[..])
                        .take(cap)
                        .read_to_end(&mut out)
                } else {
                    z
                }
            }
            "br" => brotli::Decompressor::new(&cur[..], 8192)
                .take(cap)
                .read_to_end(&mut out),
            "zstd" => zstd::stream::read::Decoder::new(&cur[..])
                .and_then(|d| d.take(cap).read_to_end(&mut out)),
            other => return Err(DecodeError::Unsupported(other.into())),
        };
        r.map_err(|source| DecodeError::Corrupt {
            encoding: enc.into(),
            source,
        })?;
        if out.len() > limit {
            return Ok(Decoded::TooLarge);
        }
        cur = out;
    }
    Ok(Decoded::Body(cur))
}

#[cfg(test)]
mod tests {
    use hoop_testkit::encode as enc;

    use super::*;

    #[test]
    fn each_encoding_round_trips_and_bombs_stop_at_the_limit() {
        let data = br#"{"card":"4111111111111111"}"#.repeat(100);
        for kind in ["gzip", "deflate", "br", "zstd"] {
            let e = enc(kind, &data);
            assert_eq!(
                decode(kind, &e, 1 << 20).unwrap(),
                Decoded::Body(data.clone()),
                "{kind}"
            );
            assert_eq!(decode(kind, &e, 100).unwrap(), Decoded::TooLarge, "{kind}");
        }
        let bomb = enc("gzip", &vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        assert_eq!(decode("gzip", &bomb, 1 << 20).unwrap(), Decoded::TooLarge);
        assert!(decode("compress", b"x", 10).is_err());
        assert!(decode("gzip", b"not gzip", 10).is_err());
    }
}

//! Hop-by-hop header handling (RFC 9110 §7.6.1): these describe one
//! connection and are never forwarded, nor is any header that `Connection`
//! names. An HTTP/1.1 upgrade (WebSocket) keeps `Connection: upgrade` and
//! `Upgrade`, which the next hop needs to agree to it.
use http::{HeaderMap, HeaderName, HeaderValue, header};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// True for an HTTP/1.1 upgrade request or 101 response.
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers in place. With `keep_upgrade`, an upgrade
/// handshake's `Connection: upgrade` and `Upgrade` survive.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = keep_upgrade
        .then(|| h.get(header::UPGRADE).cloned())
        .flatten();
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    // "TE: trailers" is end-to-end meaningful for HTTP/2 and gRPC.
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u);
    }
}

/// The transfer codings other than `chunked` that a message carries, in
/// order (`Transfer-Encoding: gzip, chunked` gives `["gzip"]`). hyper
/// undoes only `chunked`; whatever else is named stays on the bytes, and
/// once the hop-by-hop header is stripped nothing would say so. hoop
/// offers no other transfer coding (`TE: trailers` at most), so a message
/// that uses one is refused rather than read or forwarded as plain.
pub fn extra_transfer_codings(h: &HeaderMap) -> Vec<String> {
    // Runs on every message: `chunked` alone allocates nothing.
    let mut out = Vec::new();
    for v in h.get_all(header::TRANSFER_ENCODING) {
        for c in String::from_utf8_lossy(v.as_bytes()).split(',') {
            let c = c.trim();
            if !c.is_empty() && !c.eq_ignore_ascii_case("chunked") {
                out.push(c.to_ascii_lowercase());
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header map from name/value pairs (repeats kept), for tests.
    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("te", "gzip, trailers"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["accept"], "*/*");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn names_transfer_codings_other_than_chunked() {
        let none: Vec<String> = vec![];
        assert_eq!(extra_transfer_codings(&map(&[])), none);
        assert_eq!(
            extra_transfer_codings(&map(&[("transfer-encoding", "Chunked")])),
            none
        );
        for (pairs, want) in [
            (&[("transfer-encoding", "gzip, chunked")][..], vec!["gzip"]),
            (&[("transfer-encoding", "GZIP,chunked")][..], vec!["gzip"]),
            (
                &[
                    ("transfer-encoding", "deflate"),
                    ("transfer-encoding", "chunked"),
                ][..],
                vec!["deflate"],
            ),
            (
                &[("transfer-encoding", "x-unknown , chunked")][..],
                vec!["x-unknown"],
            ),
        ] {
            assert_eq!(extra_transfer_codings(&map(pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn keeps_an_upgrade_handshake() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }
}

//! What the first bytes of a connection are: a TLS ClientHello, plaintext
//! HTTP/1, or something else (refused by default). Pure, and fuzzed.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tls,
    Http,
    /// HTTP/2 with prior knowledge on plaintext (`PRI * HTTP/2.0`).
    H2c,
    Other,
    /// Not enough bytes to tell yet.
    NeedMore,
}

/// Longest prefix `classify` ever needs.
pub const MAX_SNIFF: usize = 16;

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

pub fn classify(buf: &[u8]) -> Kind {
    if buf.is_empty() {
        return Kind::NeedMore;
    }
    // A TLS record: handshake (22), major version 3.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => Kind::NeedMore,
            Some(3) => Kind::Tls,
            Some(_) => Kind::Other,
        };
    }
    let mut need_more = false;
    for m in METHODS.iter().chain([&H2_PREFACE]) {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            if n == m.len() {
                return if *m == H2_PREFACE {
                    Kind::H2c
                } else {
                    Kind::Http
                };
            }
            need_more = true;
        }
    }
    if need_more && buf.len() < MAX_SNIFF {
        Kind::NeedMore
    } else {
        Kind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_tls_http_and_other_apart() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Kind::Tls);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Kind::Http);
        assert_eq!(classify(b"DELETE /x HTTP/1.1"), Kind::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM"), Kind::H2c);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2"), Kind::Other);
        assert_eq!(classify(&[0x16, 0x02]), Kind::Other);
        assert_eq!(classify(b"\x00\x00\x00"), Kind::Other);
    }

    #[test]
    fn waits_for_enough_bytes_but_never_forever() {
        assert_eq!(classify(b""), Kind::NeedMore);
        assert_eq!(classify(&[0x16]), Kind::NeedMore);
        assert_eq!(classify(b"GE"), Kind::NeedMore);
        assert_eq!(classify(b"PO"), Kind::NeedMore);
        assert_eq!(classify(b"GET"), Kind::NeedMore);
        assert_eq!(classify(b"GETX"), Kind::Other);
    }
}

//! SOCKS5 (RFC 1928) with optional username/password (RFC 1929): the
//! parsers are pure functions over the bytes received so far, and fuzzed.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const VERSION: u8 = 5;
pub const NO_AUTH: u8 = 0x00;
pub const USER_PASS: u8 = 0x02;
pub const NO_ACCEPTABLE: u8 = 0xff;

/// What a parser returns: `Ok(None)` needs more bytes; `Ok(Some((value,
/// bytes consumed)))`.
pub type Parsed<T> = Result<Option<(T, usize)>, Socks5Error>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    Domain(String, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    #[error("not SOCKS version 5")]
    Version,
    #[error("unsupported command {0} (only CONNECT)")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("domain name is not valid UTF-8 or is empty")]
    Domain,
    #[error("bad username/password sub-negotiation")]
    Auth,
}

/// The REP field of a reply (RFC 1928 section 6), the ones hoop sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    HostUnreachable = 0x04,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

impl Socks5Error {
    /// The reply for a request that failed to parse.
    pub fn reply(self) -> Reply {
        match self {
            Self::Command(_) => Reply::CommandNotSupported,
            Self::AddressType(_) => Reply::AddressTypeNotSupported,
            _ => Reply::GeneralFailure,
        }
    }
}

/// `Ok(None)`: need more bytes. `Ok(Some((methods, consumed)))`.
pub fn parse_greeting(b: &[u8]) -> Parsed<Vec<u8>> {
    let Some(&v) = b.first() else { return Ok(None) };
    if v != VERSION {
        return Err(Socks5Error::Version);
    }
    let Some(&n) = b.get(1) else { return Ok(None) };
    let end = 2 + n as usize;
    if b.len() < end {
        return Ok(None);
    }
    Ok(Some((b[2..end].to_vec(), end)))
}

/// RFC 1929: `Ok(Some(((user, pass), consumed)))`.
pub fn parse_user_pass(b: &[u8]) -> Parsed<(String, String)> {
    let Some(&v) = b.first() else { return Ok(None) };
    if v != 1 {
        return Err(Socks5Error::Auth);
    }
    let Some(&ulen) = b.get(1) else {
        return Ok(None);
    };
    let u_end = 2 + ulen as usize;
    let Some(&plen) = b.get(u_end) else {
        return Ok(None);
    };
    let p_end = u_end + 1 + plen as usize;
    if b.len() < p_end {
        return Ok(None);
    }
    let user = String::from_utf8(b[2..u_end].to_vec()).map_err(|_| Socks5Error::Auth)?;
    let pass = String::from_utf8(b[u_end + 1..p_end].to_vec()).map_err(|_| Socks5Error::Auth)?;
    Ok(Some(((user, pass), p_end)))
}

/// The CONNECT request: `Ok(Some((target, consumed)))`.
pub fn parse_request(b: &[u8]) -> Parsed<Target> {
    if b.len() < 4 {
        if b.first().is_some_and(|&v| v != VERSION) {
            return Err(Socks5Error::Version);
        }
        return Ok(None);
    }
    if b[0] != VERSION {
        return Err(Socks5Error::Version);
    }
    if b[1] != 0x01 {
        return Err(Socks5Error::Command(b[1]));
    }
    let port_at =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    match b[3] {
        0x01 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Ok(Some((
                Target::Ip(SocketAddr::new(IpAddr::V4(ip), port_at(8).unwrap())),
                10,
            )))
        }
        0x04 => {
            if b.len() < 22 {
                return Ok(None);
            }
            let o: [u8; 16] = b[4..20].try_into().unwrap();
            Ok(Some((
                Target::Ip(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(o)),
                    port_at(20).unwrap(),
                )),
                22,
            )))
        }
        0x03 => {
            let Some(&len) = b.get(4) else {
                return Ok(None);
            };
            let end = 5 + len as usize + 2;
            if b.len() < end {
                return Ok(None);
            }
            let name =
                std::str::from_utf8(&b[5..5 + len as usize]).map_err(|_| Socks5Error::Domain)?;
            if name.is_empty() {
                return Err(Socks5Error::Domain);
            }
            Ok(Some((
                Target::Domain(name.to_string(), port_at(5 + len as usize).unwrap()),
                end,
            )))
        }
        t => Err(Socks5Error::AddressType(t)),
    }
}

/// A reply with an unspecified bound address.
pub fn reply(r: Reply) -> [u8; 10] {
    [VERSION, r as u8, 0, 0x01, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_and_auth() {
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0, 2]), Ok(Some((vec![0, 2], 4))));
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(Socks5Error::Version));
        let mut up = vec![1, 3];
        up.extend_from_slice(b"bob");
        up.push(2);
        up.extend_from_slice(b"pw");
        assert_eq!(
            parse_user_pass(&up),
            Ok(Some((("bob".into(), "pw".into()), 8)))
        );
        assert_eq!(parse_user_pass(&up[..5]), Ok(None));
    }

    #[test]
    fn requests_for_every_address_type() {
        let v4 = [5, 1, 0, 1, 127, 0, 0, 2, 0x01, 0xbb];
        assert_eq!(
            parse_request(&v4),
            Ok(Some((Target::Ip("127.0.0.2:443".parse().unwrap()), 10)))
        );
        assert_eq!(parse_request(&v4[..9]), Ok(None));
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&v6),
            Ok(Some((Target::Ip("[::1]:80".parse().unwrap()), 22)))
        );
        let mut d = vec![5, 1, 0, 3, 9];
        d.extend_from_slice(b"localhost");
        d.extend_from_slice(&[0x1f, 0x90]);
        assert_eq!(
            parse_request(&d),
            Ok(Some((Target::Domain("localhost".into(), 8080), 16)))
        );
        assert_eq!(parse_request(&[5, 2, 0, 1]), Err(Socks5Error::Command(2)));
        assert_eq!(reply(Socks5Error::Command(2).reply())[..2], [5, 0x07]);
        assert_eq!(reply(Socks5Error::AddressType(9).reply())[..2], [5, 0x08]);
        assert_eq!(reply(Socks5Error::Domain.reply())[..2], [5, 0x01]);
        assert_eq!(
            parse_request(&[5, 1, 0, 9]),
            Err(Socks5Error::AddressType(9))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(Socks5Error::Domain)
        );
    }
}

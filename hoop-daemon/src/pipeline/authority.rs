//! One canonical authority per request. A request can name its host in up
//! to three places (HTTP/1 absolute form, `Host`, HTTP/2 `:authority`), and
//! hoop, the upstream and any CDN in between may each read a different one.
//! So every place the job filled in must name the same host and port, or
//! the request is refused; what goes upstream, what policy routes and what
//! the record says are all this one value. Pure: no IO, table-tested.
use std::net::IpAddr;

use http::{HeaderMap, Uri, header};

use super::PipelineError;

/// The host and port a request is for, as hoop forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Lower case, no trailing dot; an IP in its canonical text form.
    pub host: String,
    /// The port the job named, if it named one.
    pub port: Option<u16>,
}

impl Target {
    /// The authority to send upstream: the host, and the port when it is
    /// not the scheme's default (RFC 9110 §7.2). IPv6 in brackets.
    pub fn authority(&self, port: u16, tls: bool) -> String {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.host.clone(),
        };
        if port == default_port(tls) {
            host
        } else {
            format!("{host}:{port}")
        }
    }
}

fn default_port(tls: bool) -> u16 {
    if tls { 443 } else { 80 }
}

fn bad(detail: String) -> PipelineError {
    PipelineError::BadRequest { detail }
}

fn misdirected(detail: String) -> PipelineError {
    PipelineError::Misdirected { detail }
}

/// Parses one authority as a job wrote it: `host`, `host:port`,
/// `[v6]:port`. No user info, no empty or non-numeric port, and a host of
/// DNS characters or an IP literal only: a percent-encoded or otherwise
/// exotic host is read differently by different servers.
pub fn parse(text: &str) -> Result<Target, PipelineError> {
    let what = || format!("invalid authority {text:?}");
    if text.contains('@') {
        return Err(bad(format!("{}: user info is not allowed", what())));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| bad(what()))?;
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad(what()))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad(what()))?),
        };
        (ip.to_string(), port)
    } else {
        let (h, p) = match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        if h.contains(':') {
            return Err(bad(format!("{}: IPv6 needs brackets", what())));
        }
        (canonical_name(h).ok_or_else(|| bad(what()))?, p)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| bad(what()))?)
        }
        Some(_) => return Err(bad(what())),
    };
    Ok(Target { host, port })
}

/// A DNS name or IPv4 literal, lower-cased, without a trailing dot.
fn canonical_name(h: &str) -> Option<String> {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty()
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return None;
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    // All digits and dots but not an IPv4 address (`127.1`, `0x7f.1` is
    // caught above by the alphabet only in part): some resolvers read
    // those as addresses; refuse rather than guess.
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some(h.to_ascii_lowercase())
}

/// Where a request was sent and how, as the connection knows it.
pub struct Sent<'a> {
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The scheme of the job's connection to hoop.
    pub tls: bool,
    /// The port the connection really goes to.
    pub port: u16,
    /// What to assume when the job named no host at all (HTTP/1.0): the
    /// TLS name, or the proxy target, or the destination address.
    pub fallback: &'a str,
}

/// The one host and port of a request: every place the job named one
/// must agree with the others and with the destination port.
pub fn canonical(s: &Sent<'_>) -> Result<Target, PipelineError> {
    let mut hosts = s.headers.get_all(header::HOST).iter();
    let host_header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(parse(
            h.to_str()
                .map_err(|_| bad("Host header is not ASCII text".into()))?,
        )?),
        (Some(_), Some(_)) => return Err(bad("more than one Host header".into())),
    };
    if let Some(scheme) = s.uri.scheme_str() {
        let want = if s.tls { "https" } else { "http" };
        if !scheme.eq_ignore_ascii_case(want) {
            return Err(misdirected(format!(
                "request target says {scheme}:// on a{} connection",
                if s.tls { " TLS" } else { " plaintext" }
            )));
        }
    }
    let in_uri = match s.uri.authority() {
        Some(a) => Some(parse(a.as_str())?),
        None => None,
    };
    let t = match (in_uri, host_header) {
        (Some(u), Some(h)) => {
            let port = |t: &Target| t.port.unwrap_or(default_port(s.tls));
            if u.host != h.host || port(&u) != port(&h) {
                return Err(misdirected(format!(
                    "the request target names {} but the Host header {}",
                    u.authority(port(&u), s.tls),
                    h.authority(port(&h), s.tls)
                )));
            }
            u
        }
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => parse(s.fallback)?,
    };
    if let Some(p) = t.port
        && p != s.port
    {
        return Err(misdirected(format!(
            "request for port {p} on a connection to port {}",
            s.port
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(uri: &str, hosts: &[&str], tls: bool, port: u16) -> Result<Target, PipelineError> {
        let uri: Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, h.parse().unwrap());
        }
        canonical(&Sent {
            uri: &uri,
            headers: &headers,
            tls,
            port,
            fallback: "fallback.test",
        })
    }

    #[test]
    fn every_spelling_of_one_host_agrees_and_any_other_is_refused() {
        type Case<'a> = (&'a str, &'a [&'a str], bool, u16, Result<&'a str, u16>);
        let cases: &[Case] = &[
            // Origin form: Host alone.
            ("/x", &["api.test"], true, 443, Ok("api.test")),
            ("/x", &["API.Test."], true, 443, Ok("api.test")),
            ("/x", &["api.test:443"], true, 443, Ok("api.test")),
            ("/x", &["api.test:8443"], true, 8443, Ok("api.test:8443")),
            ("/x", &["127.0.0.3:80"], false, 80, Ok("127.0.0.3")),
            ("/x", &["[::1]:8080"], false, 8080, Ok("[::1]:8080")),
            // Absolute form (HTTP/1) or :authority (HTTP/2) with Host.
            (
                "https://api.test/x",
                &["api.test"],
                true,
                443,
                Ok("api.test"),
            ),
            (
                "https://api.test:443/x",
                &["API.TEST"],
                true,
                443,
                Ok("api.test"),
            ),
            ("https://api.test/x", &[], true, 443, Ok("api.test")),
            // The attack: routed by one name, forwarded with another.
            ("https://api.test/x", &["other.test"], true, 443, Err(421)),
            (
                "https://api.test/x",
                &["api.test:8443"],
                true,
                443,
                Err(421),
            ),
            ("http://api.test/x", &["api.test"], true, 443, Err(421)),
            ("https://api.test/x", &["api.test"], false, 443, Err(421)),
            // Ports that are not where the connection goes.
            ("/x", &["api.test:8443"], true, 443, Err(421)),
            ("https://api.test:1/x", &[], true, 443, Err(421)),
            // Malformed or exotic.
            ("/x", &["api.test", "other.test"], true, 443, Err(400)),
            ("/x", &["api.test", "api.test"], true, 443, Err(400)),
            ("/x", &["user@api.test"], true, 443, Err(400)),
            ("https://user@api.test/x", &[], true, 443, Err(400)),
            ("/x", &["api%2etest"], true, 443, Err(400)),
            ("/x", &["api.test:"], true, 443, Err(400)),
            ("/x", &["api.test:+443"], true, 443, Err(400)),
            ("/x", &["api.test:99999"], true, 443, Err(400)),
            ("/x", &["::1"], true, 443, Err(400)),
            ("/x", &["127.1"], true, 443, Err(400)),
            ("/x", &[""], true, 443, Err(400)),
            // Nothing named: the fallback.
            ("/x", &[], true, 443, Ok("fallback.test")),
        ];
        for (i, (uri, hosts, tls, port, want)) in cases.iter().enumerate() {
            let got = sent(uri, hosts, *tls, *port);
            match (got, want) {
                (Ok(t), Ok(a)) => assert_eq!(&t.authority(*port, *tls), a, "case {i}"),
                (Err(e), Err(status)) => {
                    assert_eq!(e.status().as_u16(), *status, "case {i}: {e}")
                }
                (got, want) => panic!("case {i} {uri} {hosts:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}

//! Host patterns of a connection: `api.partner.example`, `*.partner.example`
//! (any depth of subdomain, not the apex), `*` (any host), each with an
//! optional `:port`; IP literals too (`127.0.0.2`, `[::1]:8443`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: Host,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Exact(String),
    /// `*.suffix`: stores ".suffix".
    Subdomains(String),
}

/// Why a host pattern was refused; each names the pattern as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHostPattern {
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    Port(String),
    #[error(
        "{0:?}: a wildcard is only allowed as a whole leading label (\"*.example.com\") or alone (\"*\")"
    )]
    Wildcard(String),
    #[error("{0:?}: not a valid host name")]
    HostName(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, BadHostPattern> {
        let lower = s.trim().to_ascii_lowercase();
        let (host, port) = split_port(&lower).ok_or_else(|| BadHostPattern::Port(s.into()))?;
        let dns = |h: &str| {
            is_host_name(h)
                .then_some(())
                .ok_or_else(|| BadHostPattern::HostName(s.into()))
        };
        let host = if host == "*" {
            Host::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            dns(suffix)?;
            Host::Subdomains(format!(".{suffix}"))
        } else if host.contains('*') {
            return Err(BadHostPattern::Wildcard(s.into()));
        } else if let Some(ip) = crate::addr::ip_literal(host) {
            Host::Exact(ip.to_string())
        } else {
            dns(host)?;
            Host::Exact(host.to_string())
        };
        Ok(Self { host, port })
    }

    /// `host` is a DNS name or an IP literal (no brackets), any case.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_end_matches('.');
        match &self.host {
            Host::Any => true,
            Host::Exact(h) => {
                h.eq_ignore_ascii_case(host) || canonical_ip(host).as_deref() == Some(h)
            }
            Host::Subdomains(sfx) => {
                host.len() > sfx.len()
                    && host.as_bytes()[host.len() - sfx.len()..]
                        .eq_ignore_ascii_case(sfx.as_bytes())
            }
        }
    }
}

fn canonical_ip(host: &str) -> Option<String> {
    crate::addr::ip_literal(host).map(|ip| ip.to_string())
}

/// Splits `host[:port]`, `[v6]:port`, or a bare IPv6 literal.
fn split_port(s: &str) -> Option<(&str, Option<u16>)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((h, Some(port(p)?))),
            None if after.is_empty() => Some((h, None)),
            None => None,
        };
    }
    if s.matches(':').count() > 1 {
        return Some((s, None)); // bare IPv6
    }
    match s.split_once(':') {
        Some((h, p)) => Some((h, Some(port(p)?))),
        None => Some((s, None)),
    }
}

fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::HostPattern;

    fn m(p: &str, host: &str, port: u16) -> bool {
        HostPattern::parse(p).unwrap().matches(host, port)
    }

    #[test]
    fn exact_wildcard_any_and_ports() {
        assert!(m("api.partner.example", "API.partner.example", 443));
        assert!(!m("api.partner.example", "x.api.partner.example", 443));
        assert!(m("*.partner.example", "api.partner.example", 443));
        assert!(m("*.partner.example", "a.b.partner.example", 443));
        assert!(!m("*.partner.example", "partner.example", 443));
        assert!(!m("*.partner.example", "evilpartner.example", 443));
        assert!(m("api.partner.example:8443", "api.partner.example", 8443));
        assert!(!m("api.partner.example:8443", "api.partner.example", 443));
        assert!(m("*", "anything.test", 1));
        assert!(m("127.0.0.2", "127.0.0.2", 80));
        assert!(m("[::1]:8443", "::1", 8443));
        assert!(m("::1", "[::1]", 1));
        assert!(m("api.partner.example", "api.partner.example.", 443));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in [
            "",
            "a*.x",
            "x.*.y",
            "api:0",
            "api:99999",
            "a..b",
            "[::1",
            "bad host",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}

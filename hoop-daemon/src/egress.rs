//! Which upstream networks the daemon may dial at all, whatever the policy
//! says: a coarse guardrail (e.g. keep jobs off cloud metadata addresses, or
//! keep a test daemon on loopback).
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use ipnet::IpNet;
use serde::Deserialize;

/// One network of `egress.allow`: `10.0.0.0/8`, or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(IpNet);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP network like 10.0.0.0/8 (or an address like 10.1.2.3)")]
pub struct BadCidr(String);

/// A destination outside `egress.allow`, or one of the daemon's own
/// services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .own {
    Some(what) => format!("upstream {} is the daemon's {what}: jobs can't reach it", .dst),
    None => format!("upstream {} is outside the networks this daemon may reach (egress.allow)", .dst),
})]
pub struct EgressDenied {
    pub dst: SocketAddr,
    /// The daemon's service at `dst`, when that is why.
    pub own: Option<&'static str>,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Compare IPv4 peers as IPv4 even when they arrive v4-mapped.
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Self, BadCidr> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(Self)
            .map_err(|_| BadCidr(s.to_string()))
    }
}

impl TryFrom<String> for Cidr {
    type Error = BadCidr;
    fn try_from(s: String) -> Result<Self, BadCidr> {
        s.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where the daemon may dial: `egress.allow`, minus the daemon's own
/// listeners (a job that reached the approver console or the metrics
/// through the gateway would reach them as the daemon).
#[derive(Debug, Clone)]
pub struct Egress {
    allow: std::sync::Arc<[Cidr]>,
    own: std::sync::Arc<[(SocketAddr, &'static str)]>,
    /// This host's addresses: where a wildcard listener is reached.
    local: std::sync::Arc<[IpAddr]>,
}

impl Egress {
    pub fn new(allow: &[Cidr], own: Vec<(SocketAddr, &'static str)>, local: Vec<IpAddr>) -> Self {
        Self {
            allow: allow.into(),
            own: own.into(),
            local: local.into_iter().map(|i| i.to_canonical()).collect(),
        }
    }

    /// The daemon's service at `dst`, if it is one: a listener on that
    /// address, or a wildcard one on that port when `dst` is this host.
    pub fn own(&self, dst: SocketAddr) -> Option<&'static str> {
        let ip = dst.ip().to_canonical();
        let here = ip.is_loopback() || ip.is_unspecified() || self.local.contains(&ip);
        self.own
            .iter()
            .find(|(l, _)| {
                l.port() == dst.port()
                    && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && here))
            })
            .map(|(_, what)| *what)
    }

    /// The one egress check: every dial (captured, CONNECT, SOCKS5) asks it.
    pub fn check(&self, dst: SocketAddr) -> Result<(), EgressDenied> {
        if let Some(what) = self.own(dst) {
            return Err(EgressDenied {
                dst,
                own: Some(what),
            });
        }
        if self.allow.iter().any(|c| c.contains(dst.ip())) {
            Ok(())
        } else {
            Err(EgressDenied { dst, own: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_own_listeners_are_never_upstreams() {
        let all: Vec<Cidr> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let e = Egress::new(
            &all,
            vec![
                ("127.0.0.1:8443".parse().unwrap(), "approver console"),
                ("0.0.0.0:9108".parse().unwrap(), "metrics endpoint"),
            ],
            vec!["10.1.2.3".parse().unwrap()],
        );
        for (dst, what) in [
            ("127.0.0.1:8443", Some("approver console")),
            ("[::ffff:127.0.0.1]:8443", Some("approver console")),
            ("127.0.0.2:9108", Some("metrics endpoint")),
            ("[::1]:9108", Some("metrics endpoint")),
            // The wildcard listener on this host's other address.
            ("10.1.2.3:9108", Some("metrics endpoint")),
            ("[::ffff:10.1.2.3]:9108", Some("metrics endpoint")),
            ("127.0.0.2:8443", None),
            // Another host's port 9108 is just an upstream.
            ("192.0.2.1:9108", None),
        ] {
            let got = e.check(dst.parse().unwrap()).err().and_then(|d| d.own);
            assert_eq!(got, what, "{dst}");
        }
        let none = Egress::new(&[], vec![], vec![]);
        assert_eq!(
            none.check("192.0.2.1:443".parse().unwrap())
                .unwrap_err()
                .own,
            None
        );
    }

    #[test]
    fn networks_match_v4_v6_and_mapped() {
        let lo: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(lo.contains("127.0.0.2".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!lo.contains("10.0.0.1".parse().unwrap()));
        let v6: Cidr = "::1".parse().unwrap();
        assert!(v6.contains("::1".parse().unwrap()));
        assert!(!v6.contains("::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
    }

    #[test]
    fn check_names_the_refused_destination() {
        let e = Egress::new(&["127.0.0.0/8".parse::<Cidr>().unwrap()], vec![], vec![]);
        assert_eq!(e.check("127.0.0.1:443".parse().unwrap()), Ok(()));
        let dst = "10.0.0.1:443".parse().unwrap();
        assert_eq!(e.check(dst), Err(EgressDenied { dst, own: None }));
        assert!(
            Egress::new(&[], vec![], vec![])
                .check("127.0.0.1:1".parse().unwrap())
                .is_err()
        );
    }
}

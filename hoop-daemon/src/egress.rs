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

/// A destination outside `egress.allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream {dst} is outside the networks this daemon may reach (egress.allow)")]
pub struct EgressDenied {
    pub dst: SocketAddr,
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

/// The one egress check: every dial (captured, CONNECT, SOCKS5) asks it.
pub fn check(allow: &[Cidr], dst: SocketAddr) -> Result<(), EgressDenied> {
    if allow.iter().any(|c| c.contains(dst.ip())) {
        Ok(())
    } else {
        Err(EgressDenied { dst })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let allow = ["127.0.0.0/8".parse::<Cidr>().unwrap()];
        assert_eq!(check(&allow, "127.0.0.1:443".parse().unwrap()), Ok(()));
        let dst = "10.0.0.1:443".parse().unwrap();
        assert_eq!(check(&allow, dst), Err(EgressDenied { dst }));
        assert!(check(&[], "127.0.0.1:1".parse().unwrap()).is_err());
    }
}

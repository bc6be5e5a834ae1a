//! Host strings as URLs and authorities write them: IPv6 literals come in
//! brackets (`[::1]`), everything else bare. One reading, used everywhere a
//! host is compared or dialled. And the daemon's listeners, bound one way.
use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use tokio::net::TcpListener;

/// Binds one of the daemon's listeners; the error keeps its kind and
/// names which listener and where.
pub async fn bind(what: &str, addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("binding the {what} listener {addr}: {e}")))
}

/// The host without IPv6 brackets: `[::1]` → `::1`; others unchanged.
pub fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The IP a host names literally (bracketed or not), if it is one.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    unbracket(host).parse().ok()
}

/// Equal addresses, an IPv4 one and its v4-mapped IPv6 form included.
pub fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// This host's addresses (every interface's), for telling where a
/// wildcard listener is reached. Empty if they can't be listed.
pub fn local_ips() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let a = a.address?;
            a.as_sockaddr_in()
                .map(|v4| std::net::IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_come_off_only_in_pairs() {
        for (host, bare) in [
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("example.com", "example.com"),
            ("[::1", "[::1"),
            ("::1]", "::1]"),
            ("[]", ""),
        ] {
            assert_eq!(unbracket(host), bare, "{host}");
        }
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("[127.0.0.1"), None);
        assert_eq!(ip_literal("localhost"), None);
        assert!(same_ip(
            "127.0.0.1".parse().unwrap(),
            "::ffff:127.0.0.1".parse().unwrap()
        ));
        assert!(!same_ip(
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap()
        ));
    }
}

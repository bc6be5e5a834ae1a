//! `hoop policy suggest`: the least-privilege connections the record asks
//! for. Every request no connection covered (observed in observe mode, or
//! refused `no-connection`) is grouped by registrable domain and port: one
//! `[[connection]]` per domain, its hosts exact unless several subdomains
//! were seen, `allow` naming exactly the identities that used it, and the
//! methods and paths seen as comments. What it cannot decide (one-off
//! hosts, plaintext, connects no connection can allow) is said beside it.
//! A credential is never proposed. Pure: records and the current policy
//! in, TOML out.
use std::collections::{BTreeMap, BTreeSet};

use crate::{
    audit::{
        entry::{ConnectDeniedData, RefusedData, RequestData, kind},
        query::Stored,
    },
    policy::Policy,
};

/// The methods `--tight` denies where none was seen.
const WRITES: [&str; 4] = ["DELETE", "PATCH", "POST", "PUT"];

#[derive(Debug, Default)]
pub struct Options {
    /// A `deny` rule per connection for the write methods never seen.
    pub tight: bool,
    /// Only the requests of identities this glob matches.
    pub identity: Option<globset::GlobMatcher>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Proposal {
    pub connections: Vec<Proposed>,
    /// Connects refused before any request (by the kernel programs or the
    /// listener: QUIC, raw TCP, …): no connection can allow them. By
    /// reason and address, the ports and how many.
    pub refused_connects: BTreeMap<(String, String), BTreeMap<u16, u64>>,
    /// Requests the proposal is made from.
    pub requests: u64,
}

#[derive(Debug, Default, PartialEq)]
pub struct Proposed {
    pub name: String,
    pub hosts: Vec<String>,
    pub allow: Vec<String>,
    /// (method, path prefix) → requests.
    pub seen: BTreeMap<(String, String), u64>,
    pub requests: u64,
    /// `host:port` seen over plaintext HTTP.
    pub plaintext: BTreeSet<String>,
    /// `host:port` seen in one request only.
    pub one_off: BTreeSet<String>,
    /// Connections of the current policy that cover a host but not these
    /// identities.
    pub covered_by: BTreeSet<String>,
    /// With `--tight`: the write methods never seen, denied.
    pub deny: Vec<String>,
}

/// One request the record says no connection covered.
struct Seen {
    identity: String,
    plaintext: bool,
    host: String,
    port: u16,
    method: String,
    path: String,
}

pub fn propose(current: &Policy, records: &[Stored], opts: &Options) -> Proposal {
    let mut out = Proposal::default();
    let mut groups: BTreeMap<String, Vec<(Seen, Vec<String>)>> = BTreeMap::new();
    for r in records {
        let req = match r.kind.as_str() {
            kind::REQUEST => r.parse::<RequestData>().filter(|q| q.would_be.is_some()),
            kind::REFUSED => r
                .parse::<RefusedData>()
                .filter(|x| x.reason == "no-connection")
                .map(|x| x.request),
            kind::CONNECT_DENIED => {
                if let Some(d) = r.parse::<ConnectDeniedData>().filter(|d| d.by != "job") {
                    let dst = d.dst.as_deref().unwrap_or("-");
                    let (addr, port) = match dst.parse::<std::net::SocketAddr>() {
                        Ok(a) => (a.ip().to_string(), a.port()),
                        Err(_) => (dst.to_string(), 0),
                    };
                    *out.refused_connects
                        .entry((d.reason, addr))
                        .or_default()
                        .entry(port)
                        .or_default() += 1;
                }
                None
            }
            _ => None,
        };
        let Some(seen) = req.and_then(|q| seen(&q)) else {
            continue;
        };
        if opts
            .identity
            .as_ref()
            .is_some_and(|g| !g.is_match(&seen.identity))
        {
            continue;
        }
        let identity = crate::identity::Identity::local(&seen.identity, "");
        // What the policy now in force covers needs nothing new.
        let covered_by = match current.route(&identity, &seen.host, seen.port) {
            Ok(_) => continue,
            Err(why) => why.covered_by,
        };
        out.requests += 1;
        groups
            .entry(domain_of(&seen.host))
            .or_default()
            .push((seen, covered_by));
    }
    let mut names: BTreeSet<String> = current.connections.iter().map(|c| c.name.clone()).collect();
    for (domain, seen) in groups {
        out.connections
            .push(connection(&domain, &seen, opts.tight, &mut names));
    }
    out
}

fn seen(q: &RequestData) -> Option<Seen> {
    let identity = q.origin.identity.as_ref()?.name.clone();
    let uri: http::Uri = q.url.parse().ok()?;
    let plaintext = uri.scheme_str() == Some("http");
    // Where the job connected (the URL may leave the port out).
    let port = uri
        .port_u16()
        .or_else(|| {
            q.origin
                .dst
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port())
        })
        .unwrap_or(if plaintext { 80 } else { 443 });
    let host = uri.host()?.trim_matches(['[', ']']).to_ascii_lowercase();
    Some(Seen {
        identity,
        plaintext,
        host,
        port,
        method: q.method.clone(),
        path: uri.path().to_string(),
    })
}

/// The registrable domain (`api.partner.example` → `partner.example`), or
/// the host itself (an IP, a single label).
fn domain_of(host: &str) -> String {
    if crate::addr::ip_literal(host).is_some() {
        return host.to_string();
    }
    psl::domain_str(host).unwrap_or(host).to_string()
}

/// A path's first two segments, `…` for what follows.
fn prefix(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.len() {
        0 => "/".into(),
        1 | 2 => format!("/{}", segs.join("/")),
        _ => format!("/{}/{}/…", segs[0], segs[1]),
    }
}

fn host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

fn connection(
    domain: &str,
    seen: &[(Seen, Vec<String>)],
    tight: bool,
    names: &mut BTreeSet<String>,
) -> Proposed {
    let mut p = Proposed {
        name: unique(domain, names),
        requests: seen.len() as u64,
        ..Proposed::default()
    };
    // Per port: the names seen under the domain.
    let mut ports: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    let mut per_host: BTreeMap<String, u64> = BTreeMap::new();
    let mut allow = BTreeSet::new();
    for (s, covered_by) in seen {
        ports.entry(s.port).or_default().insert(&s.host);
        *per_host.entry(host_port(&s.host, s.port)).or_default() += 1;
        allow.insert(s.identity.clone());
        *p.seen
            .entry((s.method.clone(), prefix(&s.path)))
            .or_default() += 1;
        if s.plaintext {
            p.plaintext.insert(host_port(&s.host, s.port));
        }
        p.covered_by.extend(covered_by.iter().cloned());
    }
    for (port, hosts) in ports {
        let subdomains = hosts.iter().filter(|h| **h != domain).count();
        if subdomains >= 2 {
            // Several seen: the wildcard (which never covers the apex).
            p.hosts.push(host_port(&format!("*.{domain}"), port));
            if hosts.contains(domain) {
                p.hosts.push(host_port(domain, port));
            }
        } else {
            p.hosts.extend(hosts.iter().map(|h| host_port(h, port)));
        }
    }
    p.one_off = per_host
        .into_iter()
        .filter(|(_, n)| *n == 1)
        .map(|(h, _)| h)
        .collect();
    p.allow = allow.into_iter().collect();
    if tight {
        p.deny = WRITES
            .iter()
            .filter(|m| !p.seen.keys().any(|(method, _)| method == *m))
            .map(|m| m.to_string())
            .collect();
    }
    p
}

/// `domain`, or `domain-2`, … : not a name the policy has.
fn unique(domain: &str, names: &mut BTreeSet<String>) -> String {
    let name = (1..)
        .map(|n| match n {
            1 => domain.to_string(),
            n => format!("{domain}-{n}"),
        })
        .find(|n| !names.contains(n))
        .expect("a free name");
    names.insert(name.clone());
    name
}

/// A TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.into()).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// At most this many method/path lines per connection.
const SEEN_LINES: usize = 20;

impl Proposal {
    /// The proposal as TOML: `[[connection]]` tables with their comments.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "# Proposed by `hoop policy suggest` from {} recorded request(s) that no\n\
             # connection covered. No credential is proposed: where a service needs\n\
             # one, add it here ([connection.credential]), so that the job never\n\
             # holds the key.\n",
            self.requests
        ));
        for c in &self.connections {
            t.push('\n');
            t.push_str(&format!(
                "# {}: {} request(s) by {}\n",
                c.name,
                c.requests,
                c.allow.join(", ")
            ));
            for (i, ((method, path), n)) in c.seen.iter().enumerate() {
                if i == SEEN_LINES {
                    t.push_str(&format!("#   … and {} more\n", c.seen.len() - SEEN_LINES));
                    break;
                }
                t.push_str(&format!("#   {method} {path} ({n})\n"));
            }
            for h in &c.one_off {
                t.push_str(&format!(
                    "# seen once: {h} (keep it only if the job needs it)\n"
                ));
            }
            for h in &c.plaintext {
                t.push_str(&format!(
                    "# plaintext HTTP: {h} (nothing protects it in transit, and no credential can go on it; prefer https)\n"
                ));
            }
            for other in &c.covered_by {
                t.push_str(&format!(
                    "# also covered by connection {}, which does not allow these identities: adding them to its\n#   `allow` instead keeps its credential and rules\n",
                    q(other)
                ));
            }
            t.push_str("[[connection]]\n");
            t.push_str(&format!("name = {}\n", q(&c.name)));
            t.push_str(&format!("hosts = {}\n", list(&c.hosts)));
            t.push_str(&format!("allow = {}\n", list(&c.allow)));
            if !c.deny.is_empty() {
                t.push_str(&format!(
                    "\n[[connection.deny]]\nname = \"unseen-writes\"\nmethod = {}\nmessage = {}\n",
                    list(&c.deny),
                    q(&format!(
                        "{} was not seen while observing (hoop policy suggest --tight)",
                        c.deny.join(", ")
                    ))
                ));
            }
        }
        if !self.refused_connects.is_empty() {
            t.push_str(
                "\n# Refused before any request (by the kernel programs or the listener);\n\
                 # no connection can allow these:\n",
            );
            for ((reason, addr), ports) in &self.refused_connects {
                let n: u64 = ports.values().sum();
                let at = match ports.len() {
                    1 => host_port(addr, *ports.keys().next().expect("one")),
                    k => format!("{addr}, {k} ports"),
                };
                let why = match (reason.as_str(), ports.keys().next()) {
                    ("udp-not-dns", Some(443)) => {
                        "; QUIC (HTTP/3): browsers fall back to TCP, which the daemon serves"
                    }
                    ("udp-not-dns", Some(53)) => "; DNS to a resolver not in capture.dns_resolvers",
                    ("udp-not-dns", _) => "; UDP other than DNS",
                    ("bind-not-loopback", _) => {
                        "; a listener others could reach (WebRTC, a dev server): bind loopback"
                    }
                    _ => "",
                };
                t.push_str(&format!("#   {reason} to {at} ({n}){why}\n"));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests;

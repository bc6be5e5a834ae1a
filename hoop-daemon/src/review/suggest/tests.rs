//! The proposal from records made as the pipeline makes them.
use std::{path::Path, sync::Arc};

use super::*;
use crate::{
    audit::entry::{Origin, RequestData},
    config::Config,
    identity::Identity,
};

fn policy(text: &str) -> Policy {
    let cfg = Config::parse(text, Path::new("/etc/hoop/t.toml")).unwrap();
    Policy::compile(&cfg, None).unwrap()
}

fn request(identity: &str, method: &str, url: &str, dst: &str, observed: bool) -> RequestData {
    let uri: http::Uri = url.parse().unwrap();
    RequestData {
        origin: Arc::new(Origin {
            session: "s1".into(),
            job: Some("j1".into()),
            identity: Some(Identity::local(identity, "test")),
            cgroup_id: 7,
            pid: 42,
            exe: None,
            via: "transparent".into(),
            flow: 1,
            dst: dst.into(),
        }),
        method: method.into(),
        url: url.into(),
        host: uri.host().unwrap().into(),
        sni: None,
        version: "HTTP/1.1".into(),
        headers: Vec::new(),
        connection: None,
        decision: if observed { "observed" } else { "allow" }.into(),
        would_be: observed.then(|| "no-connection: …".into()),
        approval: None,
        started_ms: 0,
    }
}

fn stored(seq: u64, kind: &str, data: serde_json::Value) -> Stored {
    Stored {
        seq,
        ts_ms: 0,
        kind: kind.into(),
        session: "s1".into(),
        data,
        hash: [0; 32],
        req_body: None,
        resp_body: None,
    }
}

const CI: &str = "ci:repo:acme/scraper:ref:refs/heads/main";
const OTHER: &str = "ci:repo:acme/other:ref:refs/heads/main";

/// The observed browser job: a partner API, its CDN's subdomains, a
/// refused font host, a plaintext host, and one QUIC connect refused.
fn records() -> Vec<Stored> {
    let obs = |id, m, u, dst| request(id, m, u, dst, true);
    let mut recs: Vec<Stored> = [
        obs(
            CI,
            "GET",
            "https://api.partner.example/console",
            "127.0.0.9:443",
        ),
        obs(
            CI,
            "GET",
            "https://api.partner.example/v1/prod/customers",
            "127.0.0.9:443",
        ),
        obs(
            CI,
            "GET",
            "https://api.partner.example/v1/prod/customers?page=2",
            "127.0.0.9:443",
        ),
        obs(
            OTHER,
            "POST",
            "https://api.partner.example/v1/prod/payouts",
            "127.0.0.9:443",
        ),
        obs(
            CI,
            "GET",
            "https://a.cdn.example/logo.png",
            "127.0.0.12:443",
        ),
        obs(
            CI,
            "GET",
            "https://b.cdn.example/font.woff2",
            "127.0.0.12:443",
        ),
        obs(CI, "GET", "https://cdn.example/app.js", "127.0.0.12:443"),
        obs(CI, "GET", "http://plain.example/status", "127.0.0.13:80"),
        obs(CI, "GET", "https://127.0.0.14:8443/raw", "127.0.0.14:8443"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, q)| stored(i as u64, kind::REQUEST, serde_json::to_value(q).unwrap()))
    .collect();
    // A refusal no-connection counts; a guardrail's does not; an allowed
    // request on a connection adds nothing.
    let refused = |reason: &str, url: &str| {
        let mut v = serde_json::to_value(request(CI, "GET", url, "127.0.0.15:443", false)).unwrap();
        v["status"] = 403.into();
        v["reason"] = reason.into();
        v["rule"] = serde_json::Value::Null;
        v["message"] = "…".into();
        v["req_body"] = serde_json::Value::Null;
        v
    };
    recs.push(stored(
        20,
        kind::REFUSED,
        refused("no-connection", "https://fonts.other.example/f.ttf"),
    ));
    recs.push(stored(
        21,
        kind::REFUSED,
        refused("policy-denied", "https://denied.example/x"),
    ));
    recs.push(stored(
        22,
        kind::REQUEST,
        serde_json::to_value(request(
            CI,
            "GET",
            "https://known.example/ok",
            "127.0.0.16:443",
            false,
        ))
        .unwrap(),
    ));
    recs.push(stored(
        23,
        kind::CONNECT_DENIED,
        serde_json::json!({"session": "s1", "job": "j1", "cgroup_id": 7, "pid": 42,
            "dst": "127.0.0.9:443", "reason": "udp-not-dns", "by": "kernel"}),
    ));
    recs.push(stored(
        24,
        kind::CONNECT_DENIED,
        serde_json::json!({"session": "s1", "job": "j1", "cgroup_id": 7, "pid": 42,
            "dst": "127.0.0.9:443", "reason": "closed", "by": "job"}),
    ));
    recs
}

const CURRENT: &str = r#"
[[connection]]
name = "known"
hosts = ["known.example"]
allow = ["ci:*"]

[[connection]]
name = "partner-api"
hosts = ["api.partner.example"]
allow = ["local:*"]
"#;

#[test]
fn one_connection_per_domain_with_exactly_what_was_seen() {
    let p = propose(&policy(CURRENT), &records(), &Options::default());
    let names: Vec<&str> = p.connections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "127.0.0.14",
            "cdn.example",
            "other.example",
            "partner.example",
            "plain.example"
        ]
    );
    assert_eq!(p.requests, 10);
    let by = |n: &str| p.connections.iter().find(|c| c.name == n).unwrap();

    let partner = by("partner.example");
    assert_eq!(partner.hosts, ["api.partner.example:443"]);
    assert_eq!(partner.allow, [OTHER, CI]);
    let seen: Vec<String> = partner
        .seen
        .iter()
        .map(|((m, p), n)| format!("{m} {p} {n}"))
        .collect();
    assert_eq!(
        seen,
        ["GET /console 1", "GET /v1/prod/… 2", "POST /v1/prod/… 1"]
    );
    // The host's own connection does not allow these identities.
    assert_eq!(
        partner.covered_by,
        BTreeSet::from(["partner-api".to_string()])
    );
    assert!(partner.deny.is_empty(), "no deny without --tight");

    // Two subdomains seen: the wildcard, and the apex beside it.
    let cdn = by("cdn.example");
    assert_eq!(cdn.hosts, ["*.cdn.example:443", "cdn.example:443"]);
    assert_eq!(cdn.allow, [CI]);
    assert_eq!(cdn.one_off.len(), 3);

    // One subdomain: exact, never a wildcard.
    assert_eq!(by("other.example").hosts, ["fonts.other.example:443"]);
    // An address, its own port.
    assert_eq!(by("127.0.0.14").hosts, ["127.0.0.14:8443"]);
    let plain = by("plain.example");
    assert_eq!(plain.hosts, ["plain.example:80"]);
    assert_eq!(
        plain.plaintext,
        BTreeSet::from(["plain.example:80".to_string()])
    );

    // What a connection covers already, a guardrail's refusal and the
    // job's own hang-up propose nothing; the kernel's refusal is noted.
    assert!(
        !names
            .iter()
            .any(|n| n.contains("known") || n.contains("denied"))
    );
    assert_eq!(
        p.refused_connects,
        BTreeMap::from([(
            ("udp-not-dns".to_string(), "127.0.0.9".to_string()),
            BTreeMap::from([(443, 1)])
        )])
    );
}

#[test]
fn tight_denies_the_writes_never_seen() {
    let p = propose(
        &policy(CURRENT),
        &records(),
        &Options {
            tight: true,
            ..Options::default()
        },
    );
    let by = |n: &str| p.connections.iter().find(|c| c.name == n).unwrap();
    assert_eq!(by("cdn.example").deny, ["DELETE", "PATCH", "POST", "PUT"]);
    // A POST was seen on the partner: only the others are denied.
    assert_eq!(by("partner.example").deny, ["DELETE", "PATCH", "PUT"]);
    let toml = p.to_toml();
    assert!(toml.contains("[[connection.deny]]\nname = \"unseen-writes\"\nmethod = [\"DELETE\", \"PATCH\", \"PUT\"]"), "{toml}");
}

#[test]
fn an_identity_glob_narrows_it_and_names_stay_unique() {
    let current = format!(
        "{CURRENT}\n[[connection]]\nname = \"cdn.example\"\nhosts = [\"x.invalid\"]\nallow = [\"nobody\"]\n"
    );
    let p = propose(
        &policy(&current),
        &records(),
        &Options {
            identity: Some(
                globset::Glob::new("ci:repo:acme/other*")
                    .unwrap()
                    .compile_matcher(),
            ),
            ..Options::default()
        },
    );
    assert_eq!(p.requests, 1);
    assert_eq!(p.connections.len(), 1);
    assert_eq!(p.connections[0].allow, [OTHER]);
    let p = propose(&policy(&current), &records(), &Options::default());
    assert!(
        p.connections.iter().any(|c| c.name == "cdn.example-2"),
        "{p:?}"
    );
}

/// The proposal loads as a policy, never carries a credential, and routes
/// every request it was made from.
#[test]
fn the_proposal_loads_and_covers_what_it_was_made_from() {
    let p = propose(
        &policy(""),
        &records(),
        &Options {
            tight: true,
            ..Options::default()
        },
    );
    let toml = p.to_toml();
    assert!(!toml.contains("credential ="), "{toml}");
    assert!(toml.contains("# seen once: a.cdn.example:443"), "{toml}");
    assert!(
        toml.contains("# plaintext HTTP: plain.example:80"),
        "{toml}"
    );
    assert!(
        toml.contains("#   udp-not-dns to 127.0.0.9:443 (1); QUIC (HTTP/3)"),
        "{toml}"
    );
    let loaded = policy(&toml);
    for r in records() {
        let Some(q) = r.parse::<RequestData>().filter(|q| q.would_be.is_some()) else {
            continue;
        };
        let s = seen(&q).unwrap();
        let id = Identity::local(&s.identity, "");
        assert!(
            loaded.route(&id, &s.host, s.port).is_ok(),
            "{} not covered:\n{toml}",
            q.url
        );
        // And nothing for an identity that did not use it.
        let stranger = Identity::local("ci:repo:evil/x", "");
        assert!(loaded.route(&stranger, &s.host, s.port).is_err());
    }
    // Nothing recorded: nothing proposed, and it still loads.
    let empty = propose(&policy(""), &[], &Options::default());
    assert!(empty.connections.is_empty());
    policy(&empty.to_toml());
}

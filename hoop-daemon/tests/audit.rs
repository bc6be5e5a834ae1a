//! The audit log behind the real pipeline (explicit proxy, in-process, real
//! TLS and SQLite): what a request leaves on record, a full log failing
//! closed, and the policy dry-run over what was recorded.
mod support;

use std::sync::atomic::Ordering;

use hoop::{
    audit::{
        DB_FILE,
        entry::{ConnectDeniedData, RefusedData, RequestData, ResponseData, kind},
        query::{self, Select, Stored},
        store, verify,
    },
    config::Config,
    policy::Policy,
    review::dryrun::{self, Verdict},
};
use support::{Env, env_with, parse_curl};

const POLICY: &str = "[[connection]]\nname = \"partner\"\nhosts = [\"localhost\"]\nallow = [\"*\"]\n\
    [connection.mask]\njson = [\"$..api_secret\"]\ndetectors = [\"credit_card\", \"email\"]\nkeep_last = 4\n\
    [[connection.deny]]\nname = \"no-admin\"\npath = \"/admin/**\"\nmessage = \"admin is off limits\"\n";

fn records(env: &Env) -> Vec<Stored> {
    env.gw.audit.shutdown();
    let db = store::open_reader(&env.dir.path().join("state").join(DB_FILE)).unwrap();
    query::records(&db, &Select::default()).unwrap()
}

fn of<T: serde::de::DeserializeOwned>(recs: &[Stored], k: &str) -> Vec<(u64, T)> {
    recs.iter()
        .filter(|r| r.kind == k)
        .map(|r| (r.seq, r.parse::<T>().expect("record parses")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_leaves_a_masked_verifiable_record() {
    let env = env_with(5000, POLICY).await;
    let origin = env.origin().await;
    let base = format!("https://localhost:{}", origin.addr.port());
    let proxy = env.proxy_url();
    // The echo reads the body before it answers, so all of it went up.
    for (path, args) in [
        ("/cards.json", ["-H", "Authorization: Bearer job-own-token"]),
        ("/echo", ["--data-binary", "{\"order\":17}"]),
    ] {
        let url = format!("{base}{path}");
        let mut a = vec!["-x", &proxy];
        a.extend(args);
        a.push(&url);
        let out = env.curl(&a).await;
        assert_eq!(
            parse_curl(&out).1,
            200,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env
        .curl(&["-x", &proxy, &format!("{base}/admin/users")])
        .await;
    assert_eq!(parse_curl(&out).1, 403);
    assert_eq!(origin.hits(), 2, "the denied request never went up");

    let recs = records(&env);
    let reqs: Vec<(u64, RequestData)> = of(&recs, kind::REQUEST);
    let resps: Vec<(u64, ResponseData)> = of(&recs, kind::RESPONSE);
    let refused: Vec<(u64, RefusedData)> = of(&recs, kind::REFUSED);
    // Every request the upstream saw is on record, before its response.
    assert_eq!(reqs.len(), origin.seen().len());
    for (seen, (seq, q)) in origin.seen().iter().zip(&reqs) {
        assert!(q.url.ends_with(&seen.path), "{} vs {}", q.url, seen.path);
        assert_eq!(
            q.origin.identity.as_ref().unwrap().name,
            "test:proxy-client"
        );
        let (rseq, r) = resps.iter().find(|(_, r)| r.request_seq == *seq).unwrap();
        assert!(rseq > seq);
        assert_eq!(r.status, Some(200));
        assert!(r.complete);
    }
    // The job's own credential header is redacted.
    let auth = reqs[0].1.headers.iter().find(|[n, _]| n == "authorization");
    assert_eq!(auth.map(|[_, v]| v.as_str()), Some("[redacted]"));
    // The response body is kept as the job saw it: masked.
    let cards = recs.iter().find(|r| r.seq == resps[0].0).unwrap();
    let body = String::from_utf8(cards.resp_body.clone().unwrap()).unwrap();
    assert!(
        !body.contains("4111111111111111") && !body.contains("s3cr3t-value"),
        "{body}"
    );
    assert!(
        body.contains("1111"),
        "keep_last leaves the last digits: {body}"
    );
    assert!(resps[0].1.masked.values().sum::<u64>() >= 3);
    // The request body is kept too.
    let echo = recs.iter().find(|r| r.seq == resps[1].0).unwrap();
    assert_eq!(echo.req_body.as_deref(), Some(&b"{\"order\":17}"[..]));
    // The refusal names its rule.
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].1.rule.as_deref(), Some("no-admin"));
    assert_eq!(refused[0].1.status, 403);
    // The HAR keeps the masks.
    let har = hoop::audit::har::har(&recs).to_string();
    assert!(!har.contains("4111111111111111") && !har.contains("job-own-token"));
    assert_eq!(
        hoop::audit::har::har(&recs)["log"]["entries"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let r = verify::verify_file(&env.dir.path().join("state").join(DB_FILE), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    // Sessions filter by identity, host and job.
    let db = store::open_reader(&env.dir.path().join("state").join(DB_FILE)).unwrap();
    let glob = |g: &str| Some(globset::Glob::new(g).unwrap().compile_matcher());
    let count = |f: query::Filter| query::sessions(&db, &f).unwrap().len();
    assert_eq!(count(query::Filter::default()), 1);
    assert_eq!(
        count(query::Filter {
            identity: glob("test:*"),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        count(query::Filter {
            identity: glob("ci:*"),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        count(query::Filter {
            host: glob("localhost"),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        count(query::Filter {
            host: glob("*.example"),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        count(query::Filter {
            job: Some("nope".into()),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        count(query::Filter {
            since_ms: Some(u64::MAX / 2),
            ..Default::default()
        }),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_log_refuses_requests_and_nothing_goes_up() {
    let policy = format!("[audit]\nmax_db_bytes = {}\n{POLICY}", 160 << 10);
    let env = env_with(5000, &policy).await;
    let origin = env.origin().await;
    let url = format!("https://localhost:{}/echo", origin.addr.port());
    // Incompressible bodies, so each exchange takes room.
    let noise: Vec<u8> = (0..24_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = env.dir.path().join("noise.bin");
    std::fs::write(&file, &noise).unwrap();
    let data = format!("@{}", file.display());
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..60 {
        let out = env
            .curl(&[
                "-x",
                &env.proxy_url(),
                "-D",
                "-",
                "--data-binary",
                &data,
                &url,
            ])
            .await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        match parse_curl(&out).1 {
            200 => ok += 1,
            503 => {
                assert!(text.contains("x-hoop-reason: audit-unavailable"), "{text}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!(
                "unexpected {other}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    assert!(ok > 0 && refused == 3, "ok {ok}, refused {refused}");
    assert_eq!(
        origin.hits(),
        ok,
        "a request the log refused reached the upstream"
    );
    assert!(env.gw.audit.stats.failures.load(Ordering::Relaxed) >= 3);
    // What was recorded before the log filled up is intact.
    let recs = records(&env);
    assert!(of::<RequestData>(&recs, kind::REQUEST).len() >= ok);
    let r = verify::verify_file(&env.dir.path().join("state").join(DB_FILE), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_reports_exactly_what_a_new_rule_blocks() {
    let env = env_with(5000, POLICY).await;
    let origin = env.origin().await;
    let base = format!("https://localhost:{}", origin.addr.port());
    let proxy = env.proxy_url();
    for (method, path) in [
        ("GET", "/hello"),
        ("DELETE", "/echo/items/1"),
        ("POST", "/echo"),
        ("DELETE", "/echo/items/2"),
        ("GET", "/admin/x"),
    ] {
        let out = env
            .curl(&["-x", &proxy, "-X", method, &format!("{base}{path}")])
            .await;
        assert_ne!(parse_curl(&out).1, 0);
    }
    let recs = records(&env);
    let deletes: Vec<u64> = of::<RequestData>(&recs, kind::REQUEST)
        .into_iter()
        .filter(|(_, q)| q.method == "DELETE")
        .map(|(s, _)| s)
        .collect();
    assert_eq!(deletes.len(), 2);
    let candidate = env.gw.cfg.text.clone()
        + "[[connection.deny]]\nname = \"no-deletes\"\nmethod = \"DELETE\"\npath = \"/echo/items/**\"\n";
    let cfg = Config::parse(&candidate, &env.dir.path().join("new.toml")).unwrap();
    let report = dryrun::replay(&Policy::compile(&cfg, None).unwrap(), &recs);
    assert_eq!(report.replayed, 5);
    let changed: Vec<(u64, Verdict, Verdict)> = report
        .changes
        .iter()
        .map(|c| (c.seq, c.was.clone(), c.now.clone()))
        .collect();
    let want: Vec<(u64, Verdict, Verdict)> = deletes
        .iter()
        .map(|s| (*s, Verdict::Allowed, Verdict::Denied("no-deletes".into())))
        .collect();
    assert_eq!(changed, want);
    // The same policy replays without a change: the refusal stays a refusal.
    let same = dryrun::replay(&env.gw.policy(), &recs);
    assert!(same.changes.is_empty(), "{:?}", same.changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_masks_an_echoed_credential_in_headers_and_the_record_counts_it() {
    const SECRET: &str = "partner-secret-0123456789";
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("partner");
    std::fs::write(&file, SECRET).unwrap();
    // Masking on as well: the header canary must not depend on it.
    let policy = format!(
        "[[connection]]\nname = \"partner\"\nhosts = [\"localhost\"]\nallow = [\"*\"]\n\
         credential = {{ secret = {{ file = \"{}\" }} }}\n\
         [connection.mask]\ndetectors = [\"email\"]\n",
        file.display()
    );
    let env = env_with(5000, &policy).await;
    let origin = env.origin().await;
    let url = format!("https://localhost:{}/reflect", origin.addr.port());
    let out = env.curl(&["-x", &env.proxy_url(), "-D", "-", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(parse_curl(&out).1, 200, "{text}");
    assert!(text.contains("x-reflected-authorization"), "{text}");
    assert!(
        !text.contains(SECRET),
        "the job read the secret in a header:\n{text}"
    );
    let recs = records(&env);
    let resps: Vec<(u64, ResponseData)> = of(&recs, kind::RESPONSE);
    assert_eq!(resps.len(), 1);
    assert_eq!(
        resps[0].1.masked.get("credential"),
        Some(&1),
        "{:?}",
        resps[0].1.masked
    );
    let all = recs.iter().map(query::jsonl_line).collect::<String>();
    assert!(!all.contains(SECRET), "the record holds the secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_outcome_masking_and_the_audit_writer() {
    let env = env_with(5000, POLICY).await;
    let origin = env.origin().await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    hoop::control::metrics::serve(addr, env.gw.clone())
        .await
        .unwrap();
    let base = format!("https://localhost:{}", origin.addr.port());
    let proxy = env.proxy_url();
    for path in ["/cards.json", "/hello", "/admin/x"] {
        let out = env.curl(&["-x", &proxy, &format!("{base}{path}")]).await;
        assert_ne!(parse_curl(&out).1, 0);
    }
    let out = tokio::process::Command::new("curl")
        .args(["-sS", &format!("http://{addr}/metrics")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for line in [
        "hoop_connections_total 3",
        r#"hoop_requests_total{outcome="forwarded",connection="partner"} 2"#,
        r#"hoop_requests_total{outcome="denied",connection="partner"} 1"#,
        "hoop_approvals_pending 0",
        "hoop_audit_write_failures 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    let masked = text
        .lines()
        .find(|l| l.starts_with(r#"hoop_masked_values_total{rule="credit_card"}"#))
        .unwrap_or_else(|| panic!("no masking count in:\n{text}"));
    assert!(masked.ends_with(" 2"), "{masked}");
    assert!(text.contains("hoop_audit_records "), "{text}");
}

/// The explicit proxy's refusals are on record like the transparent
/// path's: no token, a bad token, egress, a target it can't use; and a
/// tunnel whose handshake breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refusals_are_on_record() {
    let env = env_with(5000, POLICY).await;
    let origin = env.origin().await;
    let url = format!("https://localhost:{}/hello", origin.addr.port());
    let proxy = env.proxy_url();
    // No token, a forged one, and SOCKS5 with a forged one.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "-x",
            &proxy,
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "407");
    let out = env.curl_as("not-a-token", &["-x", &proxy, &url]).await;
    assert_ne!(parse_curl(&out).1, 200);
    let socks = format!("socks5h://{}", env.proxy);
    let out = env.curl_as("forged", &["-x", &socks, &url]).await;
    assert_ne!(parse_curl(&out).1, 200);
    // Egress: outside 127.0.0.0/8.
    let out = env.curl(&["-x", &proxy, "https://192.0.2.1:443/"]).await;
    assert_ne!(parse_curl(&out).1, 200);
    // Positive control: a good request is not a refusal.
    let out = env.curl(&["-x", &proxy, &url]).await;
    assert_eq!(parse_curl(&out).1, 200);
    let recs = records(&env);
    let denied = of::<ConnectDeniedData>(&recs, kind::CONNECT_DENIED);
    let reasons: Vec<&str> = denied.iter().map(|(_, d)| d.reason.as_str()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("proxy-auth-required"))
            .count(),
        3,
        "{reasons:?}"
    );
    assert!(
        denied
            .iter()
            .any(|(_, d)| d.reason.starts_with("destination-not-allowed")
                && d.dst.as_deref() == Some("192.0.2.1:443")
                && d.by == "gateway"),
        "{reasons:?}"
    );
    assert_eq!(denied.len(), 4, "{reasons:?}");
}

/// Observe mode reaches explicit-proxy clients too: a client proving an
/// observed identity gets a host no connection covers, over CONNECT and
/// SOCKS5, recorded as `observed` with the refusal it would have had and
/// how it came; a client of another identity (the control) gets 403
/// no-connection and the host is never dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_reaches_proxy_clients_of_named_identities_only() {
    let until = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let policy = format!(
        "[[observe]]\nidentities = [\"test:proxy-client\"]\nuntil = \"{until}\"\n\n\
         [[connection]]\nname = \"elsewhere\"\nhosts = [\"elsewhere.test\"]\nallow = [\"*\"]\n"
    );
    let env = env_with(5000, &policy).await;
    let origin = env.origin().await;
    let url = format!("https://localhost:{}/hello", origin.addr.port());
    let socks = format!("socks5h://{}", env.proxy);
    for proxy in [env.proxy_url(), socks.clone()] {
        let (body, code, _) = parse_curl(&env.curl(&["-x", &proxy, &url]).await);
        assert_eq!(code, 200, "{proxy}: {body}");
    }
    let reached = origin.connections();
    assert_eq!(reached, 2);
    let other = env.issuer.token("someone-else");
    for proxy in [env.proxy_url(), socks] {
        let out = env.curl_as(&other, &["-D", "-", "-x", &proxy, &url]).await;
        let (text, code, _) = parse_curl(&out);
        assert_eq!(code, 403, "{proxy}: {text}");
        assert!(text.contains("x-hoop-reason: no-connection"), "{text}");
    }
    assert_eq!(
        origin.connections(),
        reached,
        "a refused client was dialled"
    );

    let recs = records(&env);
    let reqs = of::<RequestData>(&recs, kind::REQUEST);
    let observed: Vec<_> = reqs
        .iter()
        .filter(|(_, r)| r.decision == "observed")
        .map(|(_, r)| {
            assert_eq!(r.connection, None);
            assert!(
                r.would_be
                    .as_deref()
                    .is_some_and(|w| w.contains("no connection")),
                "{r:?}"
            );
            assert_eq!(r.origin.identity_name(), "test:proxy-client");
            r.origin.via.as_str()
        })
        .collect();
    assert_eq!(observed, ["connect", "socks5"], "{reqs:?}");
    assert_eq!(reqs.len(), 2, "the other identity's requests went upstream");
}

/// Observe mode's stand-in for a host a connection covers for other
/// identities keeps that connection's guardrails (its deny rule refuses,
/// its masking masks; the control, a host nothing covers, shows the same
/// field unmasked); and over a TLS connection that stays open each request
/// is routed again: a reload that ends observe mode refuses the next
/// request on it (403 no-connection), one that adds a connection for the
/// host asks for a new connection (421), which then goes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_requests_keep_covering_guardrails_and_follow_the_policy_in_force() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let until = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let observe =
        format!("[[observe]]\nidentities = [\"test:proxy-client\"]\nuntil = \"{until}\"\n\n");
    let partner = "[[connection]]\nname = \"partner\"\nhosts = [\"localhost\"]\nallow = [\"test:billing\"]\n\
        [connection.mask]\njson = [\"$..api_secret\"]\n\
        [[connection.deny]]\nname = \"no-admin\"\npath = \"/admin/**\"\nmessage = \"admin is off limits\"\n\n";
    let env = env_with(5000, &format!("{observe}{partner}")).await;
    let origin = env.origin().await;
    let port = origin.addr.port();
    let proxy = env.proxy_url();
    let get = |host: &'static str, path: &'static str| {
        let (env, proxy) = (&env, proxy.clone());
        async move {
            let url = format!("https://{host}:{port}{path}");
            parse_curl(&env.curl(&["-D", "-", "-x", &proxy, &url]).await)
        }
    };
    let (text, code, _) = get("localhost", "/cards.json").await;
    assert_eq!(code, 200, "{text}");
    assert!(!text.contains("s3cr3t-value"), "unmasked: {text}");
    let (text, code, _) = get("localhost", "/admin/users").await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("x-hoop-reason: policy-denied"), "{text}");
    let (text, code, _) = get("127.0.0.1", "/cards.json").await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("s3cr3t-value"), "the control: {text}");

    // One TLS connection, three policies.
    let open = || async {
        let tls = env.tunnel(port, b"http/1.1").await;
        let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(c);
        s
    };
    let send = |s: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>| {
        let req = http::Request::get("/hello")
            .header("host", format!("localhost:{port}"))
            .body(Empty::new())
            .unwrap();
        let sent = s.send_request(req);
        async move {
            let resp = sent.await.unwrap();
            let reason = resp
                .headers()
                .get("x-hoop-reason")
                .map(|v| v.to_str().unwrap().to_string());
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            (status, reason)
        }
    };
    let mut s = open().await;
    assert_eq!(send(&mut s).await, (200, None));
    env.reload(partner);
    s.ready().await.unwrap();
    assert_eq!(send(&mut s).await, (403, Some("no-connection".to_string())));

    env.reload(&format!("{observe}{partner}"));
    let mut s = open().await;
    assert_eq!(send(&mut s).await, (200, None));
    let mine = "[[connection]]\nname = \"mine\"\nhosts = [\"localhost\"]\nallow = [\"test:proxy-client\"]\n\n";
    env.reload(&format!("{observe}{mine}{partner}"));
    s.ready().await.unwrap();
    assert_eq!(
        send(&mut s).await,
        (421, Some("misdirected-request".to_string()))
    );
    let mut s = open().await;
    assert_eq!(send(&mut s).await, (200, None));

    let recs = records(&env);
    let reqs = of::<RequestData>(&recs, kind::REQUEST);
    let through: Vec<_> = reqs
        .iter()
        .filter(|(_, r)| r.url.ends_with("/hello"))
        .map(|(_, r)| (r.decision.as_str(), r.connection.as_deref()))
        .collect();
    assert_eq!(
        through,
        [
            ("observed", None),
            ("observed", None),
            ("allow", Some("mine"))
        ],
        "{reqs:?}"
    );
}

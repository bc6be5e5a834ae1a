//! `hoop policy test`: replays recorded requests through a candidate policy
//! (the same phase functions the pipeline calls) and reports, request by
//! request, what would now be decided or masked differently. Nothing is
//! sent anywhere.
use std::{collections::HashMap, fmt, net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Serialize;

use crate::{
    audit::{
        entry::{RefusedData, RequestData, ResponseData, kind},
        query::Stored,
    },
    flow::{Flow, Via},
    policy::mask::Counts,
    policy::phases::{Decision, Phases, RequestView},
    policy::{Policy, enforce::Enforce},
};

/// What policy made (or would make) of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "kebab-case")]
pub enum Verdict {
    Allowed,
    Denied(String),
    Held(String),
    NoConnection,
    NoIdentity,
    /// Observe mode: forwarded though no connection covers it; what it
    /// would have been.
    Observed(String),
    /// A rule needs the body, and the record doesn't hold all of it.
    Undecidable(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allowed => f.write_str("allowed"),
            Self::Denied(r) => write!(f, "denied (rule {r})"),
            Self::Held(r) => write!(f, "held for approval (rule {r})"),
            Self::NoConnection => f.write_str("no connection (default deny)"),
            Self::NoIdentity => f.write_str("no identity"),
            Self::Observed(_) => f.write_str("observed (no connection; observe mode)"),
            Self::Undecidable(why) => write!(f, "undecidable: {why}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub seq: u64,
    pub method: String,
    pub url: String,
    pub identity: String,
    pub was: Verdict,
    pub now: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaskChange {
    pub seq: u64,
    pub url: String,
    /// Values the candidate would mask that went to the job unmasked.
    pub masked: std::collections::BTreeMap<String, u64>,
}

impl Verdict {
    /// The job would get a refusal (a hold is not one: it waits).
    pub fn refused(&self) -> bool {
        matches!(
            self,
            Self::Denied(_) | Self::NoConnection | Self::NoIdentity
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub replayed: usize,
    /// Requests the candidate would refuse that went through when
    /// recorded (allowed, approved or observed).
    pub refused_now: usize,
    pub changes: Vec<Change>,
    pub masking: Vec<MaskChange>,
}

/// Replays every request in `records` through `candidate`.
pub fn replay(candidate: &Policy, records: &[Stored]) -> Report {
    let responses: HashMap<u64, &Stored> = records
        .iter()
        .filter(|r| r.kind == kind::RESPONSE)
        .filter_map(|r| Some((r.parse::<ResponseData>()?.request_seq, r)))
        .collect();
    let mut report = Report::default();
    for r in records {
        let (req, was, body) = match r.kind.as_str() {
            kind::REQUEST => {
                let Some(q) = r.parse::<RequestData>() else {
                    continue;
                };
                let was = match (&q.approval, &q.would_be) {
                    (Some(_), _) => Verdict::Held("(approved)".into()),
                    (None, Some(w)) => Verdict::Observed(w.clone()),
                    (None, None) => Verdict::Allowed,
                };
                let resp = responses.get(&r.seq);
                let body = resp.map(|s| {
                    let whole = s
                        .parse::<ResponseData>()
                        .and_then(|p| p.req_body)
                        .is_none_or(|b| b.recorded == b.bytes);
                    (s.req_body.clone().unwrap_or_default(), whole)
                });
                (q, was, body)
            }
            kind::REFUSED => {
                let Some(x) = r.parse::<RefusedData>() else {
                    continue;
                };
                let was = match (x.reason.as_str(), &x.rule) {
                    ("policy-denied", Some(rule)) if x.message.starts_with("approval ") => {
                        Verdict::Held(rule.clone())
                    }
                    ("policy-denied", Some(rule)) => Verdict::Denied(rule.clone()),
                    ("no-connection", _) => Verdict::NoConnection,
                    ("no-identity", _) => Verdict::NoIdentity,
                    // Not a policy outcome (misdirected, upstream, …).
                    _ => continue,
                };
                let whole = x.req_body.as_ref().is_none_or(|b| b.recorded == b.bytes);
                let body = Some((r.req_body.clone().unwrap_or_default(), whole));
                (x.request, was, body)
            }
            _ => continue,
        };
        report.replayed += 1;
        let now = decide(candidate, &req, body.as_ref().map(|(b, w)| (&b[..], *w)));
        if !same(&was, &now) {
            if now.refused() && !was.refused() {
                report.refused_now += 1;
            }
            report.changes.push(Change {
                seq: r.seq,
                method: req.method.clone(),
                url: req.url.clone(),
                identity: req.origin.identity_name().to_string(),
                was,
                now: now.clone(),
            });
        }
        if now == Verdict::Allowed
            && let Some(m) = masking(candidate, &req, responses.get(&r.seq).copied())
        {
            report.masking.push(MaskChange {
                seq: r.seq,
                url: req.url.clone(),
                masked: m.0,
            });
        }
    }
    report
}

/// An approved hold and a hold under any name are the same outcome.
fn same(was: &Verdict, now: &Verdict) -> bool {
    match (was, now) {
        (Verdict::Held(a), Verdict::Held(b)) => a == "(approved)" || a == b,
        (Verdict::Observed(_), Verdict::Observed(_)) => true,
        (a, b) => a == b,
    }
}

fn flow_of(req: &RequestData) -> Flow {
    Flow {
        id: req.origin.flow,
        via: Via::Transparent,
        orig_dst: req
            .origin
            .dst
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        target_host: None,
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        pid: req.origin.pid,
        cgroup_id: req.origin.cgroup_id,
        exe: None,
        job: None,
        identity: req.origin.identity.clone().map(Arc::new),
    }
}

fn head(req: &RequestData) -> Option<(Method, Uri, HeaderMap)> {
    let method = Method::from_bytes(req.method.as_bytes()).ok()?;
    let uri: Uri = req.url.parse().ok()?;
    let mut headers = HeaderMap::new();
    for [n, v] in &req.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(n, v);
        }
    }
    Some((method, uri, headers))
}

fn decide(policy: &Policy, req: &RequestData, body: Option<(&[u8], bool)>) -> Verdict {
    let Some(identity) = &req.origin.identity else {
        return Verdict::NoIdentity;
    };
    let flow = flow_of(req);
    let port = flow.orig_dst.port();
    let conn = match policy.route(identity, &req.host, port) {
        Ok(c) => c,
        // The candidate observes this identity too (for every job: the
        // record does not say whether one was started with --observe).
        Err(why)
            if policy
                .observe
                .applies(&identity.name, false, crate::jobs::Jobs::now_ms()) =>
        {
            return Verdict::Observed(format!("no-connection: {why}"));
        }
        Err(_) => return Verdict::NoConnection,
    };
    let Some((method, uri, headers)) = head(req) else {
        return Verdict::Undecidable("the recorded request head does not parse".into());
    };
    let view = RequestView {
        flow: &flow,
        connection: &conn,
        method: &method,
        scheme: uri.scheme_str().unwrap_or("https"),
        authority: uri.authority().map_or("", |a| a.as_str()),
        path: uri.path(),
        query: uri.query(),
        headers: &headers,
    };
    let verdict = |d: Decision| match d {
        Decision::Allow | Decision::InspectBody { .. } => Verdict::Allowed,
        Decision::Deny(e) => Verdict::Denied(e.rule().unwrap_or(e.reason()).to_string()),
        Decision::Hold(rule) => Verdict::Held(rule.name.clone()),
    };
    match Enforce.on_request(&view) {
        Decision::InspectBody { .. } => {
            let Some((body, whole)) = body else {
                return Verdict::Undecidable(
                    "a rule reads the body, which was not recorded".into(),
                );
            };
            let mut b = http::Request::builder().method(method).uri(uri);
            if let Some(h) = b.headers_mut() {
                *h = headers;
            }
            let (parts, ()) = b.body(()).expect("parts from parsed pieces").into_parts();
            let body = bytes::Bytes::copy_from_slice(body);
            let v = verdict(Enforce.on_request_body(&flow, &conn, &parts, body));
            if v == Verdict::Allowed && !whole {
                return Verdict::Undecidable(
                    "a rule reads the body, and only its first bytes were recorded".into(),
                );
            }
            v
        }
        d => verdict(d),
    }
}

/// Values the candidate's masking would hide in what the job received.
fn masking(policy: &Policy, req: &RequestData, resp: Option<&Stored>) -> Option<Counts> {
    let resp = resp?;
    let body = resp.resp_body.as_ref()?;
    let conn = policy
        .route(
            req.origin.identity.as_ref()?,
            &req.host,
            flow_of(req).orig_dst.port(),
        )
        .ok()?;
    let m = conn.guard.mask.as_ref()?;
    let ctype = resp
        .parse::<ResponseData>()?
        .headers
        .iter()
        .find(|[n, _]| n.eq_ignore_ascii_case("content-type"))
        .map(|[_, v]| v.clone());
    let mut counts = Counts::default();
    // Already-masked values mask to themselves: only a changed body counts.
    let out = m.mask_body(ctype.as_deref(), body, &mut counts).ok()??;
    (out != *body && counts.total() > 0).then_some(counts)
}

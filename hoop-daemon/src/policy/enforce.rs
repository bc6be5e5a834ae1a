//! The policy as pipeline phases: credential injection on the way up, the
//! leak canary on the way down, guardrails, approvals and masking.
use http::{HeaderValue, StatusCode, header, request, response};

use super::phases::{BodyTransform, Decision, Phases, Refusal, RequestView, ResponsePlan};
use super::{
    Connection,
    canary::{CanaryBody, mask_headers},
};
use super::{
    fields::Body,
    mask::{
        Counts, Masker, OverLimit,
        decode::{Decoded, decode},
    },
    readings::Readings,
    rules::{MAX_INSPECTED_BODY, Rule, Verdict},
};
use crate::flow::Flow;
use bytes::Bytes;

pub struct Enforce;

fn denied(flow: &Flow, conn: &Connection, rule: &Rule) -> Decision {
    tracing::warn!(
        target: "hoop::audit",
        flow = flow.id, identity = %flow.identity_name(), connection = %conn.name,
        rule = %rule.name, "request denied by a guardrail"
    );
    Decision::Deny(Refusal::Denied {
        rule: rule.name.clone(),
        status: StatusCode::FORBIDDEN,
        message: rule.message.clone(),
    })
}

/// A rule could not decide because the request reads more than one way,
/// or its body can't be read as the rule needs: refused either way.
fn undecidable(flow: &Flow, conn: &Connection, rule: &Rule, v: Verdict) -> Decision {
    let detail = match v {
        Verdict::Ambiguous(part) => format!(
            "upstreams may read this request's {part} in ways that rule {} decides differently \
             (encoded or doubled separators, `;` parameters, `\\`, case, method overrides); \
             an ambiguous request is refused",
            rule.name
        ),
        Verdict::AmbiguousBody(e) => format!(
            "rule {} must read this request's body, and {e}; an ambiguous request is refused",
            rule.name
        ),
        Verdict::Unreadable(e) => {
            tracing::warn!(
                target: "hoop::audit",
                flow = flow.id, connection = %conn.name, rule = %rule.name, problem = %e,
                "request refused: a rule can't read its body"
            );
            return Decision::Deny(Refusal::RequestUninspectable {
                rule: rule.name.clone(),
                detail: format!("rule {} must read this request's body, and {e}", rule.name),
            });
        }
        other => format!("rule {} is undecided ({other:?})", rule.name),
    };
    tracing::warn!(
        target: "hoop::audit",
        flow = flow.id, identity = %flow.identity_name(), connection = %conn.name,
        rule = %rule.name, "ambiguous request refused"
    );
    Decision::Deny(Refusal::Ambiguous {
        rule: rule.name.clone(),
        detail,
    })
}

impl Phases for Enforce {
    fn on_request(&self, req: &RequestView<'_>) -> Decision {
        let (flow, conn) = (req.flow, req.connection);
        // Most connections have no rules: no readings to build.
        if conn.guard.deny.is_empty() && conn.guard.approve.is_empty() {
            return Decision::Allow;
        }
        let r = Readings::of(req.method, req.path, req.query, req.headers);
        let mut need_body = false;
        for rule in &conn.guard.deny {
            match rule.check(&r, req.headers, None) {
                Verdict::No => {}
                Verdict::Yes => return denied(flow, conn, rule),
                Verdict::NeedsBody => need_body = true,
                v => return undecidable(flow, conn, rule, v),
            }
        }
        for (m, _) in &conn.guard.approve {
            match m.check(&r, req.headers, None) {
                Verdict::No => {}
                // A held request's body is read before anyone is asked:
                // the approver approves the bytes that are sent.
                Verdict::Yes | Verdict::NeedsBody => need_body = true,
                v => return undecidable(flow, conn, m, v),
            }
        }
        if need_body {
            Decision::InspectBody {
                limit: MAX_INSPECTED_BODY,
            }
        } else {
            Decision::Allow
        }
    }

    fn on_request_body(
        &self,
        flow: &Flow,
        conn: &Connection,
        req: &request::Parts,
        body: Bytes,
    ) -> Decision {
        let mut r = Readings::of(&req.method, req.uri.path(), req.uri.query(), &req.headers);
        let b = Body::read(&req.headers, body, MAX_INSPECTED_BODY);
        for m in b.methods() {
            r.add_method(&m);
        }
        r.unknown_method |= b.multipart_method;
        for rule in &conn.guard.deny {
            match rule.check(&r, &req.headers, Some(&b)) {
                Verdict::No | Verdict::NeedsBody => {}
                Verdict::Yes => return denied(flow, conn, rule),
                v => return undecidable(flow, conn, rule, v),
            }
        }
        for (m, rule) in &conn.guard.approve {
            match m.check(&r, &req.headers, Some(&b)) {
                Verdict::No | Verdict::NeedsBody => {}
                Verdict::Yes => return Decision::Hold(rule.clone()),
                v => return undecidable(flow, conn, m, v),
            }
        }
        Decision::Allow
    }

    fn before_upstream(&self, _flow: &Flow, conn: &Connection, req: &mut request::Parts) {
        if inspects_responses(conn) {
            // A slice of a body is neither JSON nor whole text, and the
            // masked full answer tells the job where to cut (masking keeps
            // lengths); two slices could split the credential for the
            // canary. Responses here are always whole.
            req.headers.remove(header::RANGE);
            req.headers.remove(header::IF_RANGE);
        }
        if let Some(c) = &conn.credential {
            c.inject(req);
            // The canary reads bodies as sent: ask for them uncompressed.
            req.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
    }

    fn on_response_head(
        &self,
        flow: &Flow,
        conn: &Connection,
        resp: &mut response::Parts,
    ) -> Result<ResponsePlan, Refusal> {
        if resp.status == StatusCode::PARTIAL_CONTENT && inspects_responses(conn) {
            return Err(Refusal::Uninspectable {
                detail: format!(
                    "connection {} inspects whole responses, and the upstream sent 206 Partial Content though hoop removed Range",
                    conn.name
                ),
            });
        }
        let bodyless = resp.status.is_informational()
            || resp.status == StatusCode::NO_CONTENT
            || resp.status == StatusCode::NOT_MODIFIED;
        // What the head's masking did, for the record (the pipeline adds
        // the body's).
        let mut counts = Counts::default();
        if let Some(cred) = &conn.credential {
            let hits = mask_headers(&cred.canary, resp);
            if hits > 0 {
                leak(
                    flow.id,
                    &conn.name,
                    flow.identity_name(),
                    "response headers",
                    hits,
                );
                counts.add(CANARY, hits as u64);
            }
        }
        let plan = match &conn.guard.mask {
            Some(m) => {
                m.mask_headers(resp, &mut counts);
                note_masked(flow, conn, "response headers", &counts);
                // Masking sees the whole body (decoded); the canary too.
                (!bodyless).then_some(ResponsePlan::Buffer { limit: m.max_body })
            }
            None => None,
        };
        if counts.total() > 0 {
            resp.extensions.insert(counts);
        }
        if let Some(p) = plan {
            return Ok(p);
        }
        let Some(cred) = &conn.credential else {
            return Ok(ResponsePlan::Stream(None));
        };
        require_identity_encoding(resp)?;
        Ok(ResponsePlan::Stream(Some(canary_body(flow, conn, cred))))
    }

    fn on_response_body(
        &self,
        flow: &Flow,
        conn: &Connection,
        resp: &mut response::Parts,
        body: Bytes,
    ) -> Result<(Bytes, Counts), Refusal> {
        let Some(m) = &conn.guard.mask else {
            return Ok((body, Counts::default()));
        };
        let uninspectable = |why: String| Refusal::Uninspectable {
            detail: format!(
                "connection {} masks responses, and this one can't be decoded: {why}",
                conn.name
            ),
        };
        let codings = content_codings(&resp.headers).map_err(|e| uninspectable(e.to_string()))?;
        // hoop asked for identity: a stack of codings is an upstream
        // ignoring that, and one layer left undone would hide the secret.
        if conn.credential.is_some() && codings.len() > 1 {
            return Err(uninspectable(format!(
                "it has {} content codings stacked, on a connection with a credential",
                codings.len()
            )));
        }
        let decoded = match decode(&codings.join(", "), &body, m.max_body) {
            Ok(Decoded::Body(b)) => b,
            Ok(Decoded::TooLarge) => return over_limit(flow, conn, m, resp, body),
            Err(e) => return Err(uninspectable(e.to_string())),
        };
        resp.headers.remove(header::CONTENT_ENCODING);
        let ctype = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut counts = Counts::default();
        let mut out = m
            .mask_body(ctype.as_deref(), &decoded, &mut counts)
            .map_err(|e| Refusal::Uninspectable {
                detail: format!("connection {} masks responses: {e}", conn.name),
            })?
            .unwrap_or(decoded);
        note_masked(flow, conn, "response body", &counts);
        if let Some(cred) = &conn.credential {
            let hits = cred.canary.mask(&mut out);
            counts.add(CANARY, hits as u64);
            if hits > 0 {
                leak(
                    flow.id,
                    &conn.name,
                    flow.identity_name(),
                    "response body",
                    hits,
                );
            }
        }
        Ok((Bytes::from(out), counts))
    }

    fn on_response_overflow(
        &self,
        flow: &Flow,
        conn: &Connection,
        resp: &mut response::Parts,
    ) -> Result<Option<Box<dyn BodyTransform>>, Refusal> {
        let Some(m) = &conn.guard.mask else {
            return Ok(None);
        };
        over_limit(flow, conn, m, resp, Bytes::new())?;
        // Passed on unmasked: the canary still guards the credential.
        match &conn.credential {
            Some(cred) => {
                require_identity_encoding(resp)?;
                Ok(Some(canary_body(flow, conn, cred)))
            }
            None => Ok(None),
        }
    }
}

/// Whether responses on `conn` are masked or canary-scanned, and so must
/// arrive whole.
fn inspects_responses(conn: &Connection) -> bool {
    conn.guard.mask.is_some() || conn.credential.is_some()
}

/// Above `mask.max_body`: block (the default) fails closed; pass lets the
/// body through unmasked, and says so.
fn over_limit(
    flow: &Flow,
    conn: &Connection,
    m: &Masker,
    resp: &response::Parts,
    body: Bytes,
) -> Result<(Bytes, Counts), Refusal> {
    match m.over_limit {
        OverLimit::Block => Err(Refusal::Uninspectable {
            detail: format!(
                "the response is larger than connection {}'s mask.max_body ({} bytes) and over_limit is \"block\"",
                conn.name, m.max_body
            ),
        }),
        OverLimit::Pass => {
            tracing::warn!(
                target: "hoop::audit",
                flow = flow.id, connection = %conn.name, status = resp.status.as_u16(),
                max_body = m.max_body, "response passed unmasked: larger than mask.max_body (over_limit = pass)"
            );
            Ok((body, Counts::default()))
        }
    }
}

/// The canary reads bodies as sent: an encoded one can't be checked.
fn require_identity_encoding(resp: &response::Parts) -> Result<(), Refusal> {
    let codings = content_codings(&resp.headers).map_err(|why| Refusal::Uninspectable {
        detail: format!("{why}; it can't be checked for the connection's credential"),
    })?;
    if codings.is_empty() {
        return Ok(());
    }
    Err(Refusal::Uninspectable {
        detail: format!(
            "the upstream answered with Content-Encoding {:?} although hoop asked for identity; \
             it can't be checked for the connection's credential",
            codings.join(", ")
        ),
    })
}

#[derive(Debug, thiserror::Error)]
#[error("its Content-Encoding is not text")]
struct EncodingNotText;

/// Every content coding the response names, in order, across all its
/// Content-Encoding fields (a second field is as binding as the first),
/// without `identity`. A value that isn't text is an error, never a
/// reason to read the body as plain.
fn content_codings(h: &http::HeaderMap) -> Result<Vec<String>, EncodingNotText> {
    let mut out = Vec::new();
    for v in h.get_all(header::CONTENT_ENCODING) {
        let v = v.to_str().map_err(|_| EncodingNotText)?;
        out.extend(
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity"),
        );
    }
    Ok(out)
}

fn note_masked(flow: &Flow, conn: &Connection, place: &str, counts: &Counts) {
    if counts.total() > 0 {
        tracing::info!(
            target: "hoop::audit",
            flow = flow.id, connection = %conn.name, place = %place, masked = ?counts.0,
            "masked"
        );
    }
}

/// The streaming leak canary for a response body, reporting hits.
fn canary_body(
    flow: &Flow,
    conn: &Connection,
    cred: &super::credential::Credential,
) -> Box<dyn BodyTransform> {
    let (flow_id, name, identity) = (flow.id, conn.name.clone(), flow.identity_name().to_string());
    Box::new(CanaryBody::new(
        cred.canary.clone(),
        Box::new(move |n| leak(flow_id, &name, &identity, "response body", n)),
    ))
}

/// What the record calls values the leak canary masked.
pub const CANARY: &str = "credential";

/// An audit event: the upstream handed the secret back toward the job.
fn leak(flow: u64, connection: &str, identity: &str, place: &str, hits: usize) {
    tracing::warn!(
        target: "hoop::audit",
        flow, connection = %connection, identity = %identity, place = %place, hits,
        "credential leak masked: the upstream echoed the connection's credential"
    );
}

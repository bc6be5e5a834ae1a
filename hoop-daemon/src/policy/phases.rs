//! The policy as pipeline phases: credential injection on the way up, the
//! leak canary on the way down, and the exchange log.
use http::{HeaderValue, StatusCode, header, request, response};

use super::rules::{Head, MAX_INSPECTED_BODY, Rule};
use super::{
    Connection,
    canary::{CanaryBody, mask_headers},
};
use crate::{
    flow::Flow,
    pipeline::{
        PipelineError,
        phases::{BodyTransform, Decision, ExchangeRecord, Phases, RequestView, log_exchange},
    },
};

pub struct Enforce;

fn denied(flow: &Flow, conn: &Connection, rule: &Rule) -> Decision {
    tracing::warn!(
        target: "hoop::audit",
        flow = flow.id, identity = %flow.identity_name(), connection = %conn.name,
        rule = %rule.name, "request denied by a guardrail"
    );
    Decision::Deny(PipelineError::Denied {
        rule: rule.name.clone(),
        status: StatusCode::FORBIDDEN,
        message: rule.message.clone(),
    })
}

impl Phases for Enforce {
    fn on_request(&self, req: &RequestView<'_>) -> Decision {
        let head = Head {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers,
        };
        let mut body_rules = false;
        for rule in &req.connection.deny {
            if rule.matches_head(&head) {
                if !rule.needs_body() {
                    return denied(req.flow, req.connection, rule);
                }
                body_rules = true;
            }
        }
        if body_rules {
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
        body: &[u8],
    ) -> Decision {
        let head = Head {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
        };
        for rule in &conn.deny {
            if rule.needs_body() && rule.matches_head(&head) && rule.matches_body(body) {
                return denied(flow, conn, rule);
            }
        }
        Decision::Allow
    }

    fn before_upstream(&self, _flow: &Flow, conn: &Connection, req: &mut request::Parts) {
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
    ) -> Result<Option<Box<dyn BodyTransform>>, PipelineError> {
        let Some(cred) = &conn.credential else {
            return Ok(None);
        };
        let encoding = resp
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity");
        if !encoding.eq_ignore_ascii_case("identity") {
            // Fail closed: an encoded body can't be checked for the secret.
            return Err(PipelineError::Uninspectable {
                detail: format!(
                    "the upstream answered with Content-Encoding {encoding:?} although hoop asked for identity; \
                     it can't be checked for the connection's credential"
                ),
            });
        }
        let hits = mask_headers(&cred.canary, resp);
        let (flow_id, name, identity) =
            (flow.id, conn.name.clone(), flow.identity_name().to_string());
        if hits > 0 {
            leak(flow_id, &name, &identity, "response headers", hits);
        }
        Ok(Some(Box::new(CanaryBody::new(
            cred.canary.clone(),
            Box::new(move |n| leak(flow_id, &name, &identity, "response body", n)),
        ))))
    }

    fn on_exchange_done(&self, r: ExchangeRecord) {
        log_exchange(&r);
    }
}

/// An audit event: the upstream handed the secret back toward the job.
fn leak(flow: u64, connection: &str, identity: &str, place: &str, hits: usize) {
    tracing::warn!(
        target: "hoop::audit",
        flow, connection = %connection, identity = %identity, place = %place, hits,
        "credential leak masked: the upstream echoed the connection's credential"
    );
}

//! The policy as pipeline phases: credential injection on the way up, the
//! leak canary on the way down, and the exchange log.
use http::{HeaderValue, header, request, response};

use super::{
    Connection,
    canary::{CanaryBody, mask_headers},
};
use crate::{
    flow::Flow,
    pipeline::{
        PipelineError,
        phases::{BodyTransform, ExchangeRecord, Phases, log_exchange},
    },
};

pub struct Enforce;

impl Phases for Enforce {
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

//! The pipeline's side of the audit log: what one request records, and
//! when. The request is committed (durable) before it goes upstream; its
//! response follows when the body has gone back to the job; a request hoop
//! answers itself is one `refused` record.
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, StatusCode, header};

use super::{
    PipelineError,
    body::{Tally, Teed},
};
use crate::{
    audit::{
        Audit, Entry,
        entry::{self, BodyInfo, Origin, RefusedData, RequestData, ResponseData},
    },
    jobs::Jobs,
    metrics::Outcome,
    policy::{Connection, mask::Counts},
};

/// One request's record, from its head to its end.
pub struct Exchange {
    pub audit: Audit,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub data: RequestData,
    pub started: Instant,
    /// The request's sequence number once it is durable.
    pub seq: Option<u64>,
    /// Bytes of each body to keep.
    pub cap: usize,
    /// The request body as it goes upstream.
    pub req_body: Arc<Mutex<Teed>>,
    /// A body a guardrail read whole (recorded with a refusal).
    pub inspected: Option<Bytes>,
}

impl Exchange {
    pub fn new<B>(
        gw: &super::Gateway,
        origin: Arc<Origin>,
        req: &Request<B>,
        scheme: &str,
        authority: &str,
        sni: Option<&str>,
        route: Option<&Connection>,
    ) -> Self {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let credential = route.and_then(|r| r.credential.as_ref()?.header());
        let audit = &gw.audit;
        Self {
            audit: audit.clone(),
            metrics: gw.metrics.clone(),
            data: RequestData {
                origin,
                method: req.method().to_string(),
                url: format!("{scheme}://{authority}{path}"),
                host: super::http::host_of(authority),
                sni: sni.map(str::to_owned),
                version: format!("{:?}", req.version()),
                // Nobody reads them if nothing is recorded.
                headers: if audit.enabled() {
                    entry::headers(req.headers(), credential)
                } else {
                    Vec::new()
                },
                connection: route
                    .filter(|r| r.observed.is_none())
                    .map(|r| r.name.clone()),
                decision: match route.and_then(|r| r.observed.as_ref()) {
                    Some(_) => "observed".into(),
                    None => "allow".into(),
                },
                would_be: route.and_then(|r| r.observed.clone()),
                approval: None,
                started_ms: Jobs::now_ms(),
            },
            started: Instant::now(),
            seq: None,
            cap: if audit.enabled() {
                route.map_or(0, |r| r.record_body)
            } else {
                0
            },
            req_body: Arc::default(),
            inspected: None,
        }
    }

    /// Durable before forward: the request's record is committed, or the
    /// request fails (503) and never leaves.
    pub async fn commit(&mut self) -> Result<(), PipelineError> {
        // With recording off there is nothing to serialise (the profile
        // showed the record's JSON built and dropped on every request).
        let seq = if self.audit.enabled() {
            self.audit
                .commit(Entry::of(&self.data))
                .await
                .map_err(PipelineError::AuditUnavailable)?
        } else {
            0
        };
        self.seq = Some(seq);
        Ok(())
    }

    /// The response went back to the job (or broke off): its record.
    pub fn responded(
        self,
        status: Option<StatusCode>,
        reason: Option<&'static str>,
        headers: Vec<[String; 2]>,
        mut masked: Counts,
        body: Tally,
    ) {
        let Some(request_seq) = self.seq else { return };
        // A switch has no body (hyper never reads it): what follows it is
        // recorded as the WebSocket's messages, not as a broken body.
        let (reason, body) = if status == Some(StatusCode::SWITCHING_PROTOCOLS) {
            (None, Tally { ok: true, ..body })
        } else {
            (reason, body)
        };
        let mut body = body;
        let m = &self.metrics;
        m.request(
            match (reason, self.data.approval.is_some()) {
                (Some(_), _) => Outcome::Failed,
                (None, true) => Outcome::Approved,
                (None, false) => Outcome::Forwarded,
            },
            self.data.connection.as_deref(),
        );
        // The head's masking and what the body's transform masked.
        masked.merge(std::mem::take(&mut body.masked));
        m.masked(&masked.0);
        let (req_bytes, req_captured) = {
            let mut t = self.req_body.lock().unwrap();
            (t.bytes, std::mem::take(&mut t.captured).freeze())
        };
        let duration_ms = self.started.elapsed().as_millis() as u64;
        tracing::info!(
            flow = self.data.origin.flow,
            job = self.data.origin.job.as_deref().unwrap_or("-"),
            identity = %self.data.origin.identity_name(),
            connection = self.data.connection.as_deref().unwrap_or("-"),
            method = %self.data.method,
            url = %self.data.url,
            status = status.map_or(0, |s| s.as_u16()),
            reason = reason.unwrap_or("-"),
            bytes = body.bytes,
            ms = duration_ms,
            "exchange"
        );
        if !self.audit.enabled() {
            return;
        }
        let info = |bytes: u64, captured: &bytes::Bytes| {
            (bytes > 0).then(|| BodyInfo {
                bytes,
                recorded: captured.len() as u64,
            })
        };
        let data = ResponseData {
            session: self.data.origin.session.clone(),
            request_seq,
            status: status.map(|s| s.as_u16()),
            reason: reason.map(str::to_owned),
            headers,
            masked: masked.0,
            request_bytes: req_bytes,
            response_bytes: body.bytes,
            req_body: info(req_bytes, &req_captured),
            resp_body: info(body.bytes, &body.captured),
            duration_ms,
            complete: body.ok,
        };
        let mut e = Entry::of(&data);
        e.req_body = (!req_captured.is_empty()).then_some(req_captured);
        e.resp_body = (!body.captured.is_empty()).then_some(body.captured);
        self.audit.record(e);
    }

    /// The request failed: after it was recorded going up, as its response;
    /// before, as a refusal hoop answered itself.
    pub fn failed(self, e: &PipelineError) {
        tracing::warn!(
            flow = self.data.origin.flow, identity = %self.data.origin.identity_name(),
            url = %self.data.url, error = %e, reason = e.reason(), "request failed"
        );
        if e.is_upstream() {
            self.metrics.upstream_error(e.reason());
        }
        if self.seq.is_some() {
            let reason = e.reason();
            let headers = vec![[super::error::REASON_HEADER.to_string(), reason.to_string()]];
            return self.responded(
                Some(e.status()),
                Some(reason),
                headers,
                Counts::default(),
                Tally::default(),
            );
        }
        self.metrics.request(
            if e.is_policy_refusal() {
                Outcome::Denied
            } else {
                Outcome::Refused
            },
            self.data.connection.as_deref(),
        );
        if !self.audit.enabled() {
            return;
        }
        let rule = e.rule().map(str::to_owned);
        let body = self.inspected.map(|b| {
            let n = b.len().min(self.cap);
            (b.len() as u64, b.slice(..n))
        });
        let data = RefusedData {
            status: e.status().as_u16(),
            reason: e.reason().to_string(),
            rule,
            message: e.to_string(),
            req_body: body.as_ref().map(|(n, b)| BodyInfo {
                bytes: *n,
                recorded: b.len() as u64,
            }),
            request: self.data,
        };
        let mut entry = Entry::of(&data);
        entry.req_body = body.map(|(_, b)| b).filter(|b| !b.is_empty());
        self.audit.record(entry);
    }
}

/// Response headers for the record, taken before they go to the job.
pub fn response_headers(audit: &Audit, h: &http::HeaderMap) -> Vec<[String; 2]> {
    if audit.enabled() {
        entry::headers(h, None)
    } else {
        Vec::new()
    }
}

/// Whether the job asked for JSON errors.
pub fn wants_json<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

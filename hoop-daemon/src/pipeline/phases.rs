//! Phase hooks: the pipeline calls these in order, and policy, masking,
//! approval and audit implement them without touching transport code. Each
//! phase is a plain function of what it is shown, so it can be tested
//! without sockets.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, request, response};

use super::PipelineError;
use crate::{flow::Flow, policy::Connection};

/// What the request phase sees: the head, never the socket.
pub struct RequestView<'a> {
    pub flow: &'a Flow,
    /// The connection policy routed this request to.
    pub connection: &'a Connection,
    pub method: &'a Method,
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

pub enum Decision {
    Allow,
    /// Refuse with this error (usually [`PipelineError::Denied`]).
    Deny(PipelineError),
    /// Decide on the body: the pipeline buffers it (up to `limit` bytes)
    /// and asks `on_request_body`.
    InspectBody {
        limit: usize,
    },
    /// Hold the request until a human approves it under this rule.
    Hold(Arc<crate::approval::ApprovalRule>),
}

/// A streaming transform of a response body (masking plugs in here).
pub trait BodyTransform: Send {
    fn chunk(&mut self, data: Bytes) -> Bytes;
    /// Whatever the transform still holds at the end of the body.
    fn finish(&mut self) -> Bytes {
        Bytes::new()
    }
}

/// How the response body goes back to the job.
pub enum ResponsePlan {
    /// Frame by frame, through an optional transform.
    Stream(Option<Box<dyn BodyTransform>>),
    /// Whole: the pipeline buffers up to `limit` bytes, then calls
    /// `on_response_body` (or `on_response_overflow` past the limit). The
    /// head waits, so a refusal can still be a clean error response.
    Buffer { limit: usize },
}

/// What happened, for the audit log.
#[derive(Debug, Clone)]
pub struct ExchangeRecord {
    pub flow_id: u64,
    pub job: Option<String>,
    pub orig_dst: SocketAddr,
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub status: Option<StatusCode>,
    pub identity: String,
    pub connection: Option<String>,
    pub reason: Option<&'static str>,
    /// What masking replaced, by rule (never the values).
    pub masked: crate::policy::mask::Counts,
    pub response_bytes: u64,
    pub duration: Duration,
}

pub trait Phases: Send + Sync + 'static {
    /// Request received: allow, or deny (holding comes with approvals).
    fn on_request(&self, _req: &RequestView<'_>) -> Decision {
        Decision::Allow
    }
    /// The buffered request body, when `on_request` asked for it.
    fn on_request_body(
        &self,
        _flow: &Flow,
        _conn: &Connection,
        _req: &request::Parts,
        _body: &[u8],
    ) -> Decision {
        Decision::Allow
    }
    /// About to go upstream: may rewrite the head (credential injection).
    fn before_upstream(&self, _flow: &Flow, _conn: &Connection, _req: &mut request::Parts) {}
    /// Response head arrived: may rewrite it, choose how the body goes
    /// back, or refuse the response (fail closed).
    fn on_response_head(
        &self,
        _flow: &Flow,
        _conn: &Connection,
        _resp: &mut response::Parts,
    ) -> Result<ResponsePlan, PipelineError> {
        Ok(ResponsePlan::Stream(None))
    }
    /// The whole body, when the head asked for `Buffer`: returns the body
    /// to send (the pipeline sets Content-Length) and what was masked.
    fn on_response_body(
        &self,
        _flow: &Flow,
        _conn: &Connection,
        _resp: &mut response::Parts,
        body: Bytes,
    ) -> Result<(Bytes, crate::policy::mask::Counts), PipelineError> {
        Ok((body, Default::default()))
    }
    /// The body outgrew the `Buffer` limit: refuse, or stream it on
    /// (through an optional transform).
    fn on_response_overflow(
        &self,
        _flow: &Flow,
        _conn: &Connection,
        _resp: &mut response::Parts,
    ) -> Result<Option<Box<dyn BodyTransform>>, PipelineError> {
        Ok(None)
    }
    /// The exchange is complete (body fully sent, or failed).
    fn on_exchange_done(&self, _record: ExchangeRecord) {}
}

/// Logs each exchange (until the audit log records them).
pub fn log_exchange(r: &ExchangeRecord) {
    tracing::info!(
            flow = r.flow_id,
            job = r.job.as_deref().unwrap_or("-"),
            identity = %r.identity,
            connection = r.connection.as_deref().unwrap_or("-"),
            method = %r.method,
            url = %format!("{}://{}{}", r.scheme, r.authority, r.path),
            status = r.status.map(|s| s.as_u16()).unwrap_or(0),
            reason = r.reason.unwrap_or("-"),
            bytes = r.response_bytes,
            ms = r.duration.as_millis() as u64,
            "exchange"
    );
}

pub type SharedPhases = Arc<dyn Phases>;

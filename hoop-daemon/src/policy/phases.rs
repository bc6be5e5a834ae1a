//! Phase hooks: the pipeline calls these in order; policy (`Enforce`)
//! implements them without naming a transport type. A phase refuses with a
//! `Refusal`, which the pipeline turns into the job's answer once. Each
//! phase is a plain function of what it is shown, so it can be tested
//! without sockets.
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, request, response};

use crate::{flow::Flow, policy::Connection};

/// Why policy refuses a request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rule denies it (a guardrail, a failed or denied approval).
    Denied {
        rule: String,
        status: StatusCode,
        message: String,
    },
    /// Upstreams may read the request in ways the rule decides differently.
    Ambiguous { rule: String, detail: String },
    /// A rule needs the request's body, which can't be read as it needs.
    RequestUninspectable { rule: String, detail: String },
    /// The response can't be checked as the connection requires.
    Uninspectable { detail: String },
}

impl Refusal {
    /// The rule that refused, when one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Self::Denied { rule, .. }
            | Self::Ambiguous { rule, .. }
            | Self::RequestUninspectable { rule, .. } => Some(rule),
            Self::Uninspectable { .. } => None,
        }
    }

    /// The reason the job reads in `x-hoop-reason` (the pipeline's error
    /// mapping gives the same; a test holds the two together).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Denied { .. } => "policy-denied",
            Self::Ambiguous { .. } => "ambiguous-request",
            Self::RequestUninspectable { .. } => "request-not-inspectable",
            Self::Uninspectable { .. } => "response-not-inspectable",
        }
    }
}

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
    /// Refuse, with the reason.
    Deny(Refusal),
    /// Decide on the body: the pipeline buffers it (up to `limit` bytes)
    /// and asks `on_request_body`.
    InspectBody {
        limit: usize,
    },
    /// Hold the request until a human approves it under this rule.
    Hold(Arc<super::approvers::ApprovalRule>),
}

/// A streaming transform of a response body (masking plugs in here).
pub trait BodyTransform: Send {
    fn chunk(&mut self, data: Bytes) -> Bytes;
    /// Whatever the transform still holds at the end of the body.
    fn finish(&mut self) -> Bytes {
        Bytes::new()
    }
    /// The body's trailers (HTTP/2, or chunked HTTP/1.1), which follow
    /// whatever `finish` gives back; a transform that guards the body
    /// guards these too.
    fn trailers(&mut self, _trailers: &mut HeaderMap) {}
    /// What it masked, for the record.
    fn masked(&self) -> crate::policy::mask::Counts {
        Default::default()
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

pub trait Phases: Send + Sync + 'static {
    /// Request received: allow, deny, hold, or ask for the body first.
    fn on_request(&self, _req: &RequestView<'_>) -> Decision {
        Decision::Allow
    }
    /// The buffered request body, when `on_request` asked for it.
    fn on_request_body(
        &self,
        _flow: &Flow,
        _conn: &Connection,
        _req: &request::Parts,
        _body: Bytes,
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
    ) -> Result<ResponsePlan, Refusal> {
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
    ) -> Result<(Bytes, crate::policy::mask::Counts), Refusal> {
        Ok((body, Default::default()))
    }
    /// The body outgrew the `Buffer` limit: refuse, or stream it on
    /// (through an optional transform).
    fn on_response_overflow(
        &self,
        _flow: &Flow,
        _conn: &Connection,
        _resp: &mut response::Parts,
    ) -> Result<Option<Box<dyn BodyTransform>>, Refusal> {
        Ok(None)
    }
}

pub type SharedPhases = Arc<dyn Phases>;

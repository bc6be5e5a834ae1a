//! Every way a request can fail, and the one place where a failure becomes
//! the response the job sees: a status, an `x-hoop-reason` header naming the
//! reason, and a short text body.
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{Body, full};

pub const REASON_HEADER: &str = "x-hoop-reason";

#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    // Upstream side.
    #[error("cannot connect to upstream {dst}: {detail}")]
    UpstreamConnect { dst: SocketAddr, detail: String },
    #[error("upstream {dst} did not accept the connection within {ms} ms")]
    UpstreamConnectTimeout { dst: SocketAddr, ms: u64 },
    #[error("upstream {name} ({dst}) presented an invalid certificate: {detail}")]
    UpstreamCertificate {
        dst: SocketAddr,
        name: String,
        detail: String,
    },
    #[error("TLS with upstream {name} ({dst}) failed: {detail}")]
    UpstreamTls {
        dst: SocketAddr,
        name: String,
        detail: String,
    },
    #[error("upstream did not answer within {ms} ms")]
    UpstreamResponseTimeout { ms: u64 },
    #[error("upstream broke the HTTP exchange: {detail}")]
    UpstreamProtocol { detail: String },
    // Job side.
    #[error("bad request: {detail}")]
    BadRequest { detail: String },
    /// A protocol switch or tunnel hoop could not inspect after it.
    #[error("upgrade refused: {detail}")]
    UpgradeRefused { detail: String },
    /// The job went away (reset, or closed while hoop wrote): not a
    /// refusal, but still on record.
    #[error("the job closed the connection: {detail}")]
    JobClosed { detail: String },
    /// A request head that took longer than `limits.header_read_timeout_ms`.
    #[error("the job did not finish a request head within {ms} ms")]
    HeaderTimeout { ms: u64 },
    #[error("cannot resolve {host}: {detail}")]
    Resolve { host: String, detail: String },
    // Policy.
    #[error(transparent)]
    EgressDenied(#[from] crate::egress::EgressDenied),
    #[error("no identity: {detail}")]
    NoIdentity { detail: String },
    #[error("proxy authentication required: {detail}")]
    ProxyAuth { detail: String },
    #[error("{0}")]
    NoRoute(crate::policy::NoRoute),
    #[error("misdirected request: {detail}")]
    Misdirected { detail: String },
    #[error(
        "connection {connection} injects a credential, which hoop only sends over verified TLS"
    )]
    CredentialNeedsTls { connection: String },
    #[error("response not inspectable: {detail}")]
    Uninspectable { detail: String },
    #[error("ambiguous request: {detail}")]
    Ambiguous { rule: String, detail: String },
    #[error("request not inspectable: {detail}")]
    RequestUninspectable { rule: String, detail: String },
    #[error("{message}")]
    Denied {
        rule: String,
        status: StatusCode,
        message: String,
    },
    // Ours.
    /// Over `limits.max_connections_per_job` or `limits.max_connections`.
    #[error("connection refused: {0}")]
    ConnectionLimit(crate::jobs::LimitExceeded),
    #[error("{0}; the request was not forwarded")]
    AuditUnavailable(crate::audit::AuditError),
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

/// Policy's refusals become the pipeline's errors, and so the job's
/// answer, here and nowhere else.
impl From<crate::policy::phases::Refusal> for PipelineError {
    fn from(r: crate::policy::phases::Refusal) -> Self {
        use crate::policy::phases::Refusal as R;
        match r {
            R::Denied {
                rule,
                status,
                message,
            } => Self::Denied {
                rule,
                status,
                message,
            },
            R::Ambiguous { rule, detail } => Self::Ambiguous { rule, detail },
            R::RequestUninspectable { rule, detail } => Self::RequestUninspectable { rule, detail },
            R::Uninspectable { detail } => Self::Uninspectable { detail },
        }
    }
}

/// Who ended a connection that ended in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Job,
    Gateway,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Job => "job",
            Self::Gateway => "gateway",
        }
    }
}

impl PipelineError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamConnectTimeout { .. } | Self::UpstreamResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::UpstreamConnect { .. }
            | Self::UpstreamCertificate { .. }
            | Self::UpstreamTls { .. }
            | Self::UpstreamProtocol { .. }
            | Self::Resolve { .. } => StatusCode::BAD_GATEWAY,
            Self::BadRequest { .. }
            | Self::JobClosed { .. }
            | Self::UpgradeRefused { .. }
            | Self::Ambiguous { .. }
            | Self::RequestUninspectable { .. } => StatusCode::BAD_REQUEST,
            Self::Denied { status, .. } => *status,
            Self::NoIdentity { .. } | Self::NoRoute(_) | Self::CredentialNeedsTls { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::ProxyAuth { .. } => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Self::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::Uninspectable { .. } => StatusCode::BAD_GATEWAY,
            Self::EgressDenied(_) => StatusCode::FORBIDDEN,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::AuditUnavailable(_) | Self::ConnectionLimit(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::HeaderTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Stable, machine-readable reason for the `x-hoop-reason` header.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UpstreamConnect { .. } => "upstream-connect-failed",
            Self::UpstreamConnectTimeout { .. } => "upstream-connect-timeout",
            Self::UpstreamCertificate { .. } => "upstream-certificate-invalid",
            Self::UpstreamTls { .. } => "upstream-tls-failed",
            Self::UpstreamResponseTimeout { .. } => "upstream-response-timeout",
            Self::UpstreamProtocol { .. } => "upstream-protocol-error",
            Self::BadRequest { .. } => "bad-request",
            Self::UpgradeRefused { .. } => "upgrade-refused",
            Self::JobClosed { .. } => "job-closed",
            Self::Resolve { .. } => "resolve-failed",
            Self::Denied { .. } => "policy-denied",
            Self::Ambiguous { .. } => "ambiguous-request",
            Self::RequestUninspectable { .. } => "request-not-inspectable",
            Self::NoIdentity { .. } => "no-identity",
            Self::ProxyAuth { .. } => "proxy-auth-required",
            Self::NoRoute(_) => "no-connection",
            Self::Misdirected { .. } => "misdirected-request",
            Self::CredentialNeedsTls { .. } => "credential-needs-tls",
            Self::Uninspectable { .. } => "response-not-inspectable",
            Self::EgressDenied(e) if e.own.is_some() => "daemon-service",
            Self::EgressDenied(_) => "destination-not-allowed",
            Self::Internal { .. } => "internal-error",
            Self::AuditUnavailable(crate::audit::AuditError::SpoolFull { .. }) => {
                "fleet-spool-full"
            }
            Self::AuditUnavailable(_) => "audit-unavailable",
            Self::ConnectionLimit(_) => "connection-limit",
            Self::HeaderTimeout { .. } => "header-read-timeout",
        }
    }

    /// The upstream failed (connect, TLS, protocol, timeout): counted per
    /// reason in the metrics.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            Self::UpstreamConnect { .. }
                | Self::UpstreamConnectTimeout { .. }
                | Self::UpstreamCertificate { .. }
                | Self::UpstreamTls { .. }
                | Self::UpstreamResponseTimeout { .. }
                | Self::UpstreamProtocol { .. }
        )
    }

    /// Policy refused the request itself (as opposed to hoop or the
    /// network failing it).
    pub fn is_policy_refusal(&self) -> bool {
        matches!(
            self,
            Self::Denied { .. } | Self::Ambiguous { .. } | Self::RequestUninspectable { .. }
        )
    }

    /// The rule that refused, when one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Self::Denied { rule, .. }
            | Self::Ambiguous { rule, .. }
            | Self::RequestUninspectable { rule, .. } => Some(rule),
            _ => None,
        }
    }

    /// Logs how a connection ended with this error, and says who ended
    /// it: the job (it hung up, at info) or the gateway (a refusal, a
    /// warning).
    pub fn log_connection_end(&self, flow: u64) -> EndedBy {
        match self {
            Self::JobClosed { .. } => {
                tracing::info!(flow, detail = %self, "the job closed the connection");
                EndedBy::Job
            }
            _ => {
                tracing::warn!(flow, error = %self, reason = self.reason(), "connection refused");
                EndedBy::Gateway
            }
        }
    }

    pub fn from_tls(dst: SocketAddr, name: &str, e: &std::io::Error) -> Self {
        let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::InvalidCertificate(c)) => Self::UpstreamCertificate {
                dst,
                name: name.into(),
                detail: format!("{c:?}"),
            },
            _ => Self::UpstreamTls {
                dst,
                name: name.into(),
                detail: e.to_string(),
            },
        }
    }
}

/// The response the job gets for `e`. The only place errors turn into
/// responses.
pub fn respond(e: &PipelineError) -> Response<Body> {
    respond_to(e, false)
}

/// Same, as JSON when the job accepts it (`{"error", "rule", "message"}`).
pub fn respond_to(e: &PipelineError, json: bool) -> Response<Body> {
    let body = if json {
        let rule = e.rule();
        serde_json::json!({"error": e.reason(), "rule": rule, "message": e.to_string()}).to_string()
            + "\n"
    } else {
        format!("hoop: {e}\n")
    };
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = e.status();
    let h = r.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(e.reason()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let PipelineError::ProxyAuth { .. } = e {
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hoop\""),
        );
    }
    if let Some(rule) = e.rule()
        && let Ok(v) = HeaderValue::from_str(rule)
    {
        h.insert("x-hoop-rule", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_rule_and_reason_as_a_pipeline_error() {
        use crate::policy::phases::Refusal;
        for r in [
            Refusal::Denied {
                rule: "r1".into(),
                status: StatusCode::FORBIDDEN,
                message: "no".into(),
            },
            Refusal::Ambiguous {
                rule: "r2".into(),
                detail: "d".into(),
            },
            Refusal::RequestUninspectable {
                rule: "r3".into(),
                detail: "d".into(),
            },
            Refusal::Uninspectable { detail: "d".into() },
        ] {
            let e = PipelineError::from(r.clone());
            assert_eq!(e.reason(), r.reason(), "{r:?}");
            assert_eq!(e.rule(), r.rule(), "{r:?}");
        }
    }

    #[test]
    fn every_error_maps_to_status_reason_and_body() {
        let dst: SocketAddr = "127.0.0.2:443".parse().unwrap();
        let cases = [
            (
                PipelineError::UpstreamConnect {
                    dst,
                    detail: "refused".into(),
                },
                502,
                "upstream-connect-failed",
            ),
            (
                PipelineError::UpstreamConnectTimeout { dst, ms: 5 },
                504,
                "upstream-connect-timeout",
            ),
            (
                PipelineError::UpstreamResponseTimeout { ms: 5 },
                504,
                "upstream-response-timeout",
            ),
            (
                PipelineError::UpstreamCertificate {
                    dst,
                    name: "a.test".into(),
                    detail: "UnknownIssuer".into(),
                },
                502,
                "upstream-certificate-invalid",
            ),
            (
                PipelineError::Denied {
                    rule: "r1".into(),
                    status: StatusCode::FORBIDDEN,
                    message: "no".into(),
                },
                403,
                "policy-denied",
            ),
            (
                PipelineError::ConnectionLimit(crate::jobs::LimitExceeded::Total { limit: 1 }),
                503,
                "connection-limit",
            ),
            (
                PipelineError::UpgradeRefused {
                    detail: "h2c".into(),
                },
                400,
                "upgrade-refused",
            ),
        ];
        for (e, status, reason) in cases {
            let r = respond(&e);
            assert_eq!(r.status().as_u16(), status, "{e}");
            assert_eq!(r.headers()[REASON_HEADER], reason);
            // The metrics' upstream counter and the reasons agree.
            assert_eq!(e.is_upstream(), reason.starts_with("upstream-"), "{e}");
            let j = respond_to(&e, true);
            assert_eq!(j.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(j.status().as_u16(), status);
        }
    }
}

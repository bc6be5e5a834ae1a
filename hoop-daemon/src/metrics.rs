//! Prometheus metrics, served as text on a loopback address when
//! `[metrics] listen` is set: connections, requests by outcome, masking,
//! upstream errors, approvals pending and the audit writer's state.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use http::{Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// How a request ended, in the order `hoop status` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Approved,
    /// A rule (or an approver) refused it.
    Denied,
    /// Hoop answered it itself for any other reason.
    Refused,
    /// It failed after it went upstream.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Self::Forwarded,
        Self::Approved,
        Self::Denied,
        Self::Refused,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

// Typed label sets: a lookup per request builds one small struct, not a
// vector of owned strings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    outcome: &'static str,
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// Totals since start for `hoop status` (the families above keep them by
/// label; these are their sums, kept as they happen).
#[derive(Default)]
pub struct Totals {
    requests: [AtomicU64; Outcome::ALL.len()],
    upstream_errors: AtomicU64,
    masked: AtomicU64,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    requests: Family<RequestLabels, Counter>,
    upstream_errors: Family<ReasonLabel, Counter>,
    masked: Family<RuleLabel, Counter>,
    approvals_pending: Gauge,
    audit_queue: Gauge,
    audit_last_commit_us: Gauge,
    audit_records: Gauge,
    audit_failures: Gauge,
    totals: Totals,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("hoop"),
            connections: Counter::default(),
            requests: Family::default(),
            upstream_errors: Family::default(),
            masked: Family::default(),
            approvals_pending: Gauge::default(),
            audit_queue: Gauge::default(),
            audit_last_commit_us: Gauge::default(),
            audit_records: Gauge::default(),
            audit_failures: Gauge::default(),
            totals: Totals::default(),
        };
        m.registry.register(
            "connections",
            "Job connections served (transparent and proxy)",
            m.connections.clone(),
        );
        m.registry.register(
            "requests",
            "Requests by outcome and connection",
            m.requests.clone(),
        );
        m.registry.register(
            "upstream_errors",
            "Requests that failed upstream, by reason",
            m.upstream_errors.clone(),
        );
        m.registry.register(
            "masked_values",
            "Values masked in responses, by rule",
            m.masked.clone(),
        );
        m.registry.register(
            "approvals_pending",
            "Requests waiting for a human",
            m.approvals_pending.clone(),
        );
        m.registry.register(
            "audit_queue_depth",
            "Records waiting for the audit writer",
            m.audit_queue.clone(),
        );
        m.registry.register(
            "audit_last_commit_microseconds",
            "Duration of the audit writer's last group commit",
            m.audit_last_commit_us.clone(),
        );
        m.registry.register(
            "audit_records",
            "Records the audit writer committed since start",
            m.audit_records.clone(),
        );
        m.registry.register(
            "audit_write_failures",
            "Records the audit writer failed to commit since start",
            m.audit_failures.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn request(&self, outcome: Outcome, connection: Option<&str>) {
        self.totals.requests[outcome as usize].fetch_add(1, Relaxed);
        self.requests
            .get_or_create(&RequestLabels {
                outcome: outcome.as_str(),
                connection: connection.unwrap_or("-").to_string(),
            })
            .inc();
    }

    pub fn upstream_error(&self, reason: &'static str) {
        self.totals.upstream_errors.fetch_add(1, Relaxed);
        self.upstream_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn masked(&self, counts: &crate::policy::mask::Counts) {
        for (rule, n) in &counts.0 {
            self.totals.masked.fetch_add(*n, Relaxed);
            self.masked
                .get_or_create(&RuleLabel { rule: rule.clone() })
                .inc_by(*n);
        }
    }

    /// The totals `hoop status` shows.
    pub fn traffic(&self, gw: &crate::pipeline::Gateway) -> crate::control::Traffic {
        let t = &self.totals;
        crate::control::Traffic {
            connections: self.connections.get(),
            requests: Outcome::ALL
                .iter()
                .zip(&t.requests)
                .map(|(o, n)| (o.as_str().to_string(), n.load(Relaxed)))
                .collect(),
            upstream_errors: t.upstream_errors.load(Relaxed),
            masked: t.masked.load(Relaxed),
            approvals_pending: pending(gw),
        }
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, gw: &crate::pipeline::Gateway) -> String {
        self.approvals_pending.set(pending(gw) as i64);
        let st = &gw.audit.stats;
        self.audit_queue.set(st.queued.load(Relaxed) as i64);
        self.audit_last_commit_us
            .set(st.last_commit_us.load(Relaxed) as i64);
        self.audit_records.set(st.records.load(Relaxed) as i64);
        self.audit_failures.set(st.failures.load(Relaxed) as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("metrics encode into a String");
        out
    }
}

fn pending(gw: &crate::pipeline::Gateway) -> u64 {
    gw.approvals
        .list()
        .map(|rows| rows.iter().filter(|r| r.status == "pending").count() as u64)
        .unwrap_or(0)
}

/// Serves `GET /metrics` on `addr` until the daemon exits.
pub async fn serve(addr: SocketAddr, gw: Arc<crate::pipeline::Gateway>) -> anyhow::Result<()> {
    use anyhow::Context;
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let gw = gw.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let gw = gw.clone();
                    async move {
                        let (status, body) = if req.uri().path() == "/metrics" {
                            (StatusCode::OK, gw.metrics.render(&gw))
                        } else {
                            (StatusCode::NOT_FOUND, "try /metrics\n".to_string())
                        };
                        Response::builder()
                            .status(status)
                            .header(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(crate::pipeline::body::full(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(())
}

//! Prometheus metrics: connections, requests by outcome, masking, upstream
//! errors, approvals pending and the audit writer's state. The data path
//! counts here; `control::metrics` serves them.
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    pub requests: [AtomicU64; Outcome::ALL.len()],
    pub upstream_errors: AtomicU64,
    pub masked: AtomicU64,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    connections_refused: Family<ReasonLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    upstream_errors: Family<ReasonLabel, Counter>,
    masked: Family<RuleLabel, Counter>,
    approvals_pending: Gauge,
    audit_queue: Gauge,
    audit_last_commit_us: Gauge,
    audit_records: Gauge,
    audit_failures: Gauge,
    pub totals: Totals,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("hoop"),
            connections: Counter::default(),
            connections_refused: Family::default(),
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
            "connections_refused",
            "Connections refused before any request, by reason (connection-limit, destination-not-allowed, no-identity, ...)",
            m.connections_refused.clone(),
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

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn upstream_error(&self, reason: &'static str) {
        self.totals.upstream_errors.fetch_add(1, Relaxed);
        self.upstream_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Values masked, by rule.
    pub fn masked<'a>(&self, by_rule: impl IntoIterator<Item = (&'a String, &'a u64)>) {
        for (rule, n) in by_rule {
            self.totals.masked.fetch_add(*n, Relaxed);
            self.masked
                .get_or_create(&RuleLabel { rule: rule.clone() })
                .inc_by(*n);
        }
    }

    /// The text exposition, with the gauges as read now by the caller.
    pub fn render(&self, g: &Gauges) -> String {
        self.approvals_pending.set(g.approvals_pending as i64);
        self.audit_queue.set(g.audit_queue as i64);
        self.audit_last_commit_us.set(g.audit_last_commit_us as i64);
        self.audit_records.set(g.audit_records as i64);
        self.audit_failures.set(g.audit_failures as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("metrics encode into a String");
        out
    }
}

/// Values read at scrape time from the services that own them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub approvals_pending: u64,
    pub audit_queue: u64,
    pub audit_last_commit_us: u64,
    pub audit_records: u64,
    pub audit_failures: u64,
}

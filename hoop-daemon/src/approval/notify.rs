//! Tells approvers that a request waits: a JSON POST to a webhook, hoop's
//! own shape or a Slack-compatible `{"text": …}`. Best effort, off the
//! request's path: a failed notification is logged, the request still
//! waits for its approval or its expiry.
use std::{sync::Arc, time::Duration};

use rustls::ClientConfig;

use super::store::Row;

#[derive(Clone)]
pub struct Notifier {
    url: String,
    slack: bool,
    tls: Arc<ClientConfig>,
}

impl Notifier {
    pub fn new(url: String, slack: bool, tls: Arc<ClientConfig>) -> Self {
        Self { url, slack, tls }
    }

    pub fn payload(&self, r: &Row) -> serde_json::Value {
        let cmd = format!("hoop approvals approve {}", r.id);
        if self.slack {
            serde_json::json!({
                "text": format!(
                    "hoop: {} {} by {} (job {}) waits for approval under rule {} of connection {}. Approve: `{cmd}`; deny: `hoop approvals deny {} --reason …`",
                    r.method, r.url, r.identity, r.job.as_deref().unwrap_or("-"), r.rule, r.connection, r.id
                )
            })
        } else {
            serde_json::json!({
                "event": "approval.pending",
                "id": r.id,
                "identity": r.identity,
                "job": r.job,
                "connection": r.connection,
                "rule": r.rule,
                "method": r.method,
                "url": r.url,
                "expires_unix_ms": r.expires_ms,
                "approve": cmd,
            })
        }
    }

    pub fn send(&self, r: &Row) {
        let (me, body, id) = (self.clone(), self.payload(r).to_string(), r.id.clone());
        tokio::spawn(async move {
            match crate::outbound::post_json(
                &me.url,
                &me.tls,
                Duration::from_secs(10),
                body.into_bytes(),
            )
            .await
            {
                Ok(_) => tracing::info!(approval = %id, webhook = %me.url, "approvers notified"),
                Err(e) => tracing::warn!(approval = %id, error = %e, "approval webhook failed"),
            }
        });
    }
}

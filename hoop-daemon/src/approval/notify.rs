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
                "body_sha256": r.body_sha256,
                "body": r.body,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_request_and_how_to_approve() {
        let tls = crate::tls::UpstreamTls::new(&[]).unwrap().config_for(&[]);
        let row = Row {
            id: "ab12".into(),
            created_ms: 1,
            expires_ms: 2,
            status: "pending".into(),
            job: Some("j1".into()),
            identity: "ci:x".into(),
            connection: "partner".into(),
            rule: "prod-writes".into(),
            method: "POST".into(),
            url: "https://api/v1/prod".into(),
            decided_by: None,
            reason: None,
            body_sha256: Some("00".repeat(32)),
            body: Some("{\"amount\":5}".into()),
            actor: None,
            context: Default::default(),
        };
        let plain = Notifier::new("http://h/".into(), false, tls.clone()).payload(&row);
        assert_eq!(plain["event"], "approval.pending");
        assert_eq!(plain["approve"], "hoop approvals approve ab12");
        assert_eq!(plain["body"], "{\"amount\":5}");
        assert_eq!(plain["body_sha256"], "00".repeat(32));
        let slack = Notifier::new("http://h/".into(), true, tls).payload(&row);
        let text = slack["text"].as_str().unwrap();
        assert_eq!(
            slack.as_object().unwrap().len(),
            1,
            "Slack wants only text: {slack}"
        );
        assert!(
            text.contains("POST https://api/v1/prod")
                && text.contains("hoop approvals approve ab12"),
            "{text}"
        );
    }
}

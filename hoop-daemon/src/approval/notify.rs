//! Tells approvers that a request waits: a JSON POST to a webhook, in
//! hoop's own shape, as a Slack-compatible `{"text": …}`, or as a Slack
//! message with Approve and Deny buttons (their clicks come back to the
//! console, signed). Best effort, off the request's path: a failed
//! notification is logged, the request still waits for its approval or
//! its expiry.
use std::{sync::Arc, time::Duration};

use rustls::ClientConfig;

use super::store::Row;

/// What the webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Hoop,
    SlackText,
    SlackButtons,
}

/// The buttons' `action_id`s, as the console's `/slack/interactions`
/// reads them back.
pub const SLACK_APPROVE: &str = "hoop_approve";
pub const SLACK_DENY: &str = "hoop_deny";

#[derive(Clone)]
pub struct Notifier {
    url: String,
    shape: Shape,
    tls: Arc<ClientConfig>,
}

impl Notifier {
    pub fn new(url: String, shape: Shape, tls: Arc<ClientConfig>) -> Self {
        Self { url, shape, tls }
    }

    pub fn payload(&self, r: &Row) -> serde_json::Value {
        let cmd = format!("hoop approvals approve {}", r.id);
        if self.shape == Shape::SlackButtons {
            let mut text = format!(
                "*{}* `{}`\nJob {} ({}), rule *{}* of connection {}",
                r.method,
                r.url,
                r.job.as_deref().unwrap_or("-"),
                r.identity,
                r.rule,
                r.connection
            );
            if let Some(m) = &r.context.message {
                text.push_str(&format!(": {m}"));
            }
            if let Some(h) = &r.body_sha256 {
                text.push_str(&format!("\nBody SHA-256 `{h}`"));
            }
            return serde_json::json!({
                "text": format!("hoop: {} {} waits for approval", r.method, r.url),
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "actions", "block_id": format!("hoop-{}", r.id), "elements": [
                        {"type": "button", "action_id": SLACK_APPROVE, "style": "primary",
                         "text": {"type": "plain_text", "text": "Approve"}, "value": r.id},
                        {"type": "button", "action_id": SLACK_DENY, "style": "danger",
                         "text": {"type": "plain_text", "text": "Deny"}, "value": r.id},
                    ]},
                ],
            });
        }
        if self.shape == Shape::SlackText {
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
            host: None,
        };
        let plain = Notifier::new("http://h/".into(), Shape::Hoop, tls.clone()).payload(&row);
        assert_eq!(plain["event"], "approval.pending");
        assert_eq!(plain["approve"], "hoop approvals approve ab12");
        assert_eq!(plain["body"], "{\"amount\":5}");
        assert_eq!(plain["body_sha256"], "00".repeat(32));
        let buttons =
            Notifier::new("http://h/".into(), Shape::SlackButtons, tls.clone()).payload(&row);
        let actions = &buttons["blocks"][1]["elements"];
        assert_eq!(actions[0]["action_id"], SLACK_APPROVE);
        assert_eq!(
            (actions[0]["value"].as_str(), actions[1]["value"].as_str()),
            (Some("ab12"), Some("ab12"))
        );
        assert_eq!(actions[1]["action_id"], SLACK_DENY);
        let slack = Notifier::new("http://h/".into(), Shape::SlackText, tls).payload(&row);
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

//! Slack's interaction callbacks (the Approve and Deny buttons): each is
//! signed with the Slack app's signing secret (`X-Slack-Signature: v0=`
//! HMAC-SHA256 over `v0:TIMESTAMP:BODY`), may be at most five minutes old,
//! and is taken once. The Slack user is mapped to an e-mail by the
//! config's table (Slack's `users.info` is not reachable from here), and
//! decides as that person.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use serde::Deserialize;

use crate::{approval::Person, policy::credential::Secret};

/// How far a callback's timestamp may be from now, either way.
pub const WINDOW_SECS: i64 = 300;

/// Why a callback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackRefusal {
    #[error("no X-Slack-Signature or X-Slack-Request-Timestamp")]
    Unsigned,
    #[error("the signature does not match the body")]
    BadSignature,
    #[error("the timestamp is {0} s away from now (at most {WINDOW_SECS} s)")]
    Stale(i64),
    #[error("this callback was already taken")]
    Replay,
    #[error("not a button click of a hoop message: {0}")]
    Payload(String),
    #[error("Slack user {0} is not mapped to an approver ([approvals.slack] users)")]
    Unmapped(String),
}

impl SlackRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned | Self::BadSignature => "slack-signature",
            Self::Stale(_) => "slack-stale",
            Self::Replay => "slack-replay",
            Self::Payload(_) => "slack-payload",
            Self::Unmapped(_) => "slack-user-unmapped",
        }
    }
}

pub struct Slack {
    secret: Secret,
    users: BTreeMap<String, String>,
    /// The workspace callbacks must come from, when configured.
    team: Option<String>,
    /// Signatures taken, with their timestamps: a replay within the window
    /// is refused; older ones are refused as stale anyway.
    seen: Mutex<HashMap<String, i64>>,
}

/// A click: who, which button, on which held request.
#[derive(Debug, PartialEq)]
pub struct Click {
    pub person: Person,
    pub action: String,
    pub approval: String,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: User,
    #[serde(default)]
    team: Option<Team>,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct Team {
    id: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

impl Slack {
    pub fn new(secret: Secret, users: BTreeMap<String, String>, team: Option<String>) -> Self {
        Self {
            secret,
            users,
            team,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a callback's signature, age and novelty (in that order: only
    /// a signed callback is remembered), then reads the click.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<Click, SlackRefusal> {
        let (Some(ts), Some(sig)) = (timestamp, signature) else {
            return Err(SlackRefusal::Unsigned);
        };
        let expected = sign(self.secret.expose().as_bytes(), ts, body);
        if !super::session::same(sig, &expected) {
            return Err(SlackRefusal::BadSignature);
        }
        let t: i64 = ts.parse().map_err(|_| SlackRefusal::BadSignature)?;
        if (now - t).abs() > WINDOW_SECS {
            return Err(SlackRefusal::Stale(now - t));
        }
        {
            let mut seen = self.seen.lock().unwrap();
            seen.retain(|_, at| (now - *at).abs() <= WINDOW_SECS);
            if seen.insert(sig.to_string(), t).is_some() {
                return Err(SlackRefusal::Replay);
            }
        }
        self.click(body)
    }

    fn click(&self, body: &[u8]) -> Result<Click, SlackRefusal> {
        let bad = |m: &str| SlackRefusal::Payload(m.into());
        let json = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| bad("no payload field"))?;
        let p: Payload = serde_json::from_str(&json).map_err(|e| bad(&e.to_string()))?;
        if p.kind != "block_actions" {
            return Err(bad(&format!("type {}", p.kind)));
        }
        let a = p.actions.first().ok_or_else(|| bad("no action"))?;
        // Only the config's table says who a Slack user is: an e-mail in
        // the payload is the Slack profile's, which its owner may edit.
        let email = self
            .users
            .get(&p.user.id)
            .map(|e| e.to_lowercase())
            .ok_or_else(|| SlackRefusal::Unmapped(p.user.id.clone()))?;
        if let Some(team) = &self.team
            && p.team.as_ref().map(|t| &t.id) != Some(team)
        {
            return Err(bad("from another Slack workspace"));
        }
        Ok(Click {
            person: Person {
                issuer: crate::policy::approvers::SLACK_ISSUER.into(),
                sub: p.user.id,
                email: Some(email),
                name: p.user.username,
                groups: Vec::new(),
            },
            action: a.action_id.clone(),
            approval: a.value.clone(),
        })
    }
}

/// `v0=` hex(HMAC-SHA256(secret, "v0:" ts ":" body)), as Slack signs.
pub fn sign(secret: &[u8], ts: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(b"v0:");
    ctx.update(ts.as_bytes());
    ctx.update(b":");
    ctx.update(body);
    format!("v0={}", hex::encode(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    fn slack() -> Slack {
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), SECRET).unwrap();
        let secret = Secret::load(&crate::config::policy::SecretSource {
            file: Some(src.path().into()),
            env: None,
            credential: None,
        })
        .unwrap();
        Slack::new(
            secret,
            [("U1".to_string(), "Alice@Acme.example".to_string())].into(),
            Some("T1".into()),
        )
    }

    fn body(user: &str) -> Vec<u8> {
        let p = serde_json::json!({"type": "block_actions", "user": {"id": user, "username": "alice", "email": "x@evil.example"},
            "team": {"id": "T1"},
            "actions": [{"action_id": "hoop_approve", "value": "ab12"}]});
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &p.to_string())
            .finish()
            .into_bytes()
    }

    #[test]
    fn slack_signs_as_its_documentation_shows() {
        // The example request of Slack's "Verifying requests" guide.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            sign(SECRET.as_bytes(), "1531420618", body),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn another_workspace_is_refused() {
        let s = slack();
        let now = 1_800_000_000;
        let p = serde_json::json!({"type": "block_actions", "user": {"id": "U1"}, "team": {"id": "T9"},
            "actions": [{"action_id": "hoop_approve", "value": "ab12"}]});
        let b = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &p.to_string())
            .finish()
            .into_bytes();
        let ts = now.to_string();
        let sig = sign(SECRET.as_bytes(), &ts, &b);
        assert!(matches!(
            s.verify(Some(&ts), Some(&sig), &b, now),
            Err(SlackRefusal::Payload(m)) if m.contains("another Slack workspace")
        ));
    }

    #[test]
    fn only_a_fresh_signed_first_callback_is_a_click() {
        let s = slack();
        let now = 1_800_000_000;
        let b = body("U1");
        let ts = now.to_string();
        let sig = sign(SECRET.as_bytes(), &ts, &b);
        assert_eq!(
            s.verify(None, Some(&sig), &b, now),
            Err(SlackRefusal::Unsigned)
        );
        assert_eq!(
            s.verify(Some(&ts), Some("v0=00"), &b, now),
            Err(SlackRefusal::BadSignature)
        );
        let mut edited = b.clone();
        edited.push(b'x');
        assert_eq!(
            s.verify(Some(&ts), Some(&sig), &edited, now),
            Err(SlackRefusal::BadSignature)
        );
        let old = (now - 301).to_string();
        let old_sig = sign(SECRET.as_bytes(), &old, &b);
        assert_eq!(
            s.verify(Some(&old), Some(&old_sig), &b, now),
            Err(SlackRefusal::Stale(301))
        );
        let click = s.verify(Some(&ts), Some(&sig), &b, now).unwrap();
        assert_eq!(click.person.email.as_deref(), Some("alice@acme.example"));
        assert_eq!(
            (click.action.as_str(), click.approval.as_str()),
            ("hoop_approve", "ab12")
        );
        assert_eq!(
            s.verify(Some(&ts), Some(&sig), &b, now + 1),
            Err(SlackRefusal::Replay)
        );
        let b9 = body("U9");
        let sig9 = sign(SECRET.as_bytes(), &ts, &b9);
        assert_eq!(
            s.verify(Some(&ts), Some(&sig9), &b9, now),
            Err(SlackRefusal::Unmapped("U9".into()))
        );
    }
}

//! Approval rules as policy compiles them: who may approve and how long a
//! held request waits. Approvers on the host (`uid:N`, `user:NAME`,
//! `group:NAME`, resolved through the user database) act over the control
//! socket; people signed in to the console (`oidc:email:…`,
//! `oidc:group:…`, `oidc:sub:…`) act through it. The approval service
//! holds and decides.
use std::time::Duration;

use serde::Serialize;

/// Who may approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    Uid(u32),
    User(String),
    Group(String),
    /// A console user whose verified e-mail is this (case-insensitive).
    OidcEmail(String),
    /// A console user whose groups claim lists this.
    OidcGroup(String),
    /// A console user with this `sub`.
    OidcSub(String),
}

/// The spelling [`Approver::parse`] reads.
impl std::fmt::Display for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uid(u) => write!(f, "uid:{u}"),
            Self::User(n) => write!(f, "user:{n}"),
            Self::Group(g) => write!(f, "group:{g}"),
            Self::OidcEmail(e) => write!(f, "oidc:email:{e}"),
            Self::OidcGroup(g) => write!(f, "oidc:group:{g}"),
            Self::OidcSub(s) => write!(f, "oidc:sub:{s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?}: use uid:N, user:NAME, group:NAME, oidc:email:ADDRESS, oidc:group:NAME or oidc:sub:SUBJECT"
)]
pub struct BadApprover(String);

impl Approver {
    pub fn parse(s: &str) -> Result<Self, BadApprover> {
        let bad = || BadApprover(s.into());
        let (kind, v) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "uid" => v.parse().map(Self::Uid).map_err(|_| bad()),
            "user" if !v.is_empty() => Ok(Self::User(v.into())),
            "group" if !v.is_empty() => Ok(Self::Group(v.into())),
            "oidc" => match v.split_once(':') {
                Some(("email", e)) if e.contains('@') => Ok(Self::OidcEmail(e.to_lowercase())),
                Some(("group", g)) if !g.is_empty() => Ok(Self::OidcGroup(g.into())),
                Some(("sub", x)) if !x.is_empty() => Ok(Self::OidcSub(x.into())),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    /// Whether it names a person (in the console) rather than an account
    /// on one host: only those mean anything to another host.
    pub fn is_person(&self) -> bool {
        matches!(
            self,
            Self::OidcEmail(_) | Self::OidcGroup(_) | Self::OidcSub(_)
        )
    }

    /// Host approvers admit host callers, console approvers people.
    pub fn admits(&self, c: &Caller) -> bool {
        match (self, c) {
            (Self::Uid(u), Caller::Host { uid, .. }) => uid == u,
            (Self::User(name), Caller::Host { uid, .. }) => {
                crate::users::Account::by_name(name).is_some_and(|a| a.uid == *uid)
            }
            (Self::Group(name), Caller::Host { gids, .. }) => {
                crate::users::group_id(name).is_some_and(|g| gids.contains(&g))
            }
            (Self::OidcEmail(e), Caller::Person(p)) => p
                .email
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(e)),
            (Self::OidcGroup(g), Caller::Person(p)) => {
                p.issuer != SLACK_ISSUER && p.groups.iter().any(|x| x == g)
            }
            // A subject is the identity provider's: a Slack user id is not one.
            (Self::OidcSub(s), Caller::Person(p)) => p.issuer != SLACK_ISSUER && p.sub == *s,
            _ => false,
        }
    }
}

/// An approval rule, compiled (its matcher lives with the connection).
#[derive(Debug)]
pub struct ApprovalRule {
    pub name: String,
    pub approvers: Vec<Approver>,
    pub timeout: Duration,
    /// Shown to approvers beside the held request.
    pub message: Option<String>,
}

impl ApprovalRule {
    pub fn admits(&self, c: &Caller) -> bool {
        self.approvers.iter().any(|a| a.admits(c))
    }
}

/// Who decides.
#[derive(Debug, Clone)]
pub enum Caller {
    /// On the host, over the control socket: the uid from SO_PEERCRED, the
    /// groups from the user database for that uid.
    Host { uid: u32, gids: Vec<u32> },
    /// Signed in to the console: the identity provider's verified claims.
    Person(Person),
}

/// The issuer of people who decide through Slack's buttons (their `sub`
/// is a Slack user id, their e-mail the config's mapping).
pub const SLACK_ISSUER: &str = "slack";

/// A console user, as their ID token said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Person {
    pub issuer: String,
    pub sub: String,
    /// Lower-cased; only a verified address (`email_verified` not false).
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

impl Person {
    /// Whether `actor` (a job token's claim naming who started the job)
    /// names this person: by e-mail, or by the e-mail's local part or
    /// preferred name where the claim is a login.
    pub fn is(&self, actor: &str) -> bool {
        let a = actor.trim().to_lowercase();
        if a.is_empty() {
            return false;
        }
        let email = self.email.as_deref().map(str::to_lowercase);
        email.as_deref() == Some(a.as_str())
            || self.sub.to_lowercase() == a
            || self.name.as_deref().is_some_and(|n| n.to_lowercase() == a)
            || (!a.contains('@')
                && email
                    .as_deref()
                    .and_then(|e| e.split_once('@'))
                    .is_some_and(|(local, _)| local == a))
    }
}

impl Caller {
    pub fn label(&self) -> String {
        match self {
            Self::Host { uid, .. } => match crate::users::user_name(*uid) {
                Some(n) => format!("uid:{uid} ({n})"),
                None => format!("uid:{uid}"),
            },
            Self::Person(p) => match &p.email {
                Some(e) => format!("oidc:{e}"),
                None => format!("oidc:sub:{}", p.sub),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(email: &str, groups: &[&str]) -> Caller {
        Caller::Person(Person {
            issuer: "https://idp.example".into(),
            sub: "u-1".into(),
            email: Some(email.into()),
            name: Some("Alice".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn who_admits_whom() {
        let host = Caller::Host {
            uid: 1001,
            gids: vec![1001],
        };
        let alice = person("alice@acme.example", &["payments-leads"]);
        let table: [(&str, &Caller, bool); 9] = [
            ("uid:1001", &host, true),
            ("uid:1002", &host, false),
            ("uid:1001", &alice, false),
            ("oidc:email:Alice@Acme.example", &alice, true),
            ("oidc:email:bob@acme.example", &alice, false),
            ("oidc:email:alice@acme.example", &host, false),
            ("oidc:group:payments-leads", &alice, true),
            ("oidc:group:payments", &alice, false),
            ("oidc:sub:u-1", &alice, true),
        ];
        for (a, c, want) in table {
            assert_eq!(Approver::parse(a).unwrap().admits(c), want, "{a} {c:?}");
        }
        for bad in [
            "oidc:email:",
            "oidc:email:alice",
            "oidc:group:",
            "oidc:x:y",
            "oidc:",
        ] {
            assert!(Approver::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_actor_is_recognised_by_any_of_their_names() {
        let Caller::Person(p) = person("alice@acme.example", &[]) else {
            unreachable!()
        };
        for yes in [
            "alice@acme.example",
            "ALICE@acme.example",
            "alice",
            "u-1",
            "Alice",
        ] {
            assert!(p.is(yes), "{yes}");
        }
        for no in ["", "bob", "alice@other.example", "alic"] {
            assert!(!p.is(no), "{no}");
        }
    }
}

//! Per-request approval: a request that matches an approval rule is held
//! while a human decides. The pending approval is stored (SQLite), the
//! approvers are notified (webhook), and the job's request waits for
//! approve (forwarded), deny (403 with the reason) or expiry (403).
//! Approvers act over the control socket (who they are comes from
//! SO_PEERCRED, and the uids of the job itself can never approve) or in
//! the console (signed in; the person the job's token names as its actor
//! can never approve it). Every change is also published as an [`Event`]
//! for the console's live inbox.
pub mod notify;
pub mod store;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use crate::policy::approvers::{ApprovalRule, Approver, Caller, Person};
pub use notify::Notifier;
use store::Store;
pub use store::{Context, Row};

/// A request about to be held.
pub struct Hold {
    pub rule: Arc<ApprovalRule>,
    pub connection: String,
    pub job: Option<String>,
    pub identity: String,
    /// The job's uids: whoever started it, and the process that asked.
    pub uids: Vec<u32>,
    pub method: String,
    pub url: String,
    /// The body that goes upstream if approved: its hash, and what the
    /// approver may see of it (masked, truncated).
    pub body_sha256: Option<String>,
    pub body: Option<String>,
    /// Who started the job, per its token ([console] job_actor_claim).
    pub actor: Option<String>,
    /// The claim that should have named the actor, when one is configured:
    /// without an actor, no person may decide (they can't be told apart
    /// from whoever started the job).
    pub actor_claim: Option<String>,
    pub context: Context,
}

/// A change the console shows live: a request held, or one decided (its
/// row as it now stands), with the rule that says who may see it.
#[derive(Debug, Clone)]
pub enum Event {
    Held(Row, Arc<ApprovalRule>),
    Decided(Row, Arc<ApprovalRule>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        by: String,
    },
    Denied {
        by: String,
        reason: String,
    },
    Expired,
    /// The daemon is stopping, or the job went away.
    Abandoned,
}

pub enum Decision {
    Approve { for_secs: Option<u64> },
    Deny { reason: String },
}

struct Waiter {
    tx: oneshot::Sender<Outcome>,
    rule: Arc<ApprovalRule>,
    uids: Vec<u32>,
    grant_key: (String, String, String),
    actor: Option<String>,
    actor_claim: Option<String>,
}

/// What `hoop approvals list` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct View {
    #[serde(flatten)]
    pub row: Row,
}

pub struct Approvals {
    store: Store,
    waiters: Mutex<HashMap<String, Waiter>>,
    /// (job or identity, connection, rule) → until.
    grants: Mutex<HashMap<(String, String, String), Instant>>,
    notifier: Option<Notifier>,
    events: tokio::sync::broadcast::Sender<Event>,
}

use crate::jobs::Jobs;

/// Why an approval could not be decided or the store not read.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Open(#[from] store::OpenError),
    #[error("approvals database: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("no approval {0}")]
    Unknown(String),
    #[error("approval {id} is not pending: it was {status}")]
    NotPending { id: String, status: String },
    #[error("approval {0} is no longer pending")]
    NoLongerPending(String),
    #[error(
        "refused: uid {0} belongs to the job that made this request; a job can't approve itself"
    )]
    SelfApproval(u32),
    #[error(
        "refused: {caller} started the job that made this request (its token's actor is {actor:?}); a person can't approve their own job"
    )]
    SelfApprovalPerson { caller: String, actor: String },
    #[error(
        "refused: the job's token names no actor (claim {claim:?}), so whoever started it can't be told apart from {caller}; only host approvers may decide"
    )]
    NoActor { caller: String, claim: String },
    #[error("a grant lasts 1 s to 1 day, not {0} s")]
    GrantLength(u64),
    #[error("refused: {caller} is not an approver for rule {rule}")]
    NotApprover { caller: String, rule: String },
    /// Decided on the fleet's host that holds it: its answer.
    #[error("{message} (on host {host})")]
    Remote {
        host: String,
        code: &'static str,
        message: String,
    },
    #[error("the fleet's server is unreachable ({0}); decide on the host that holds the request")]
    FleetUnreachable(String),
}

impl ApprovalError {
    /// Stable, machine-readable: what the console's `x-hoop-reason`
    /// says, and what a host answers another host's decision with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SelfApproval(_) | Self::SelfApprovalPerson { .. } => "self-approval",
            Self::NotApprover { .. } => "not-approver",
            Self::NoActor { .. } => "no-actor",
            Self::GrantLength(_) => "bad-grant",
            Self::Unknown(_) => "unknown-approval",
            Self::NotPending { .. } | Self::NoLongerPending(_) => "not-pending",
            Self::Remote { code, .. } => code,
            Self::FleetUnreachable(_) => "fleet-unreachable",
            Self::Open(_) | Self::Store(_) => "approval-store",
        }
    }

    /// The code another host answered with, as one of ours.
    pub fn known_code(code: &str) -> &'static str {
        [
            "self-approval",
            "not-approver",
            "no-actor",
            "bad-grant",
            "unknown-approval",
            "not-pending",
            "fleet-unreachable",
        ]
        .into_iter()
        .find(|c| *c == code)
        .unwrap_or("approval-store")
    }
}

fn now_ms() -> u64 {
    Jobs::now_ms()
}

/// The longest standing grant an approver may give.
pub const MAX_GRANT_SECS: u64 = 86_400;

impl Approvals {
    /// Opens the store; approvals a previous daemon left pending are
    /// marked abandoned (their requests died with it).
    pub fn open(path: &std::path::Path, notifier: Option<Notifier>) -> Result<Self, ApprovalError> {
        let store = Store::open(path)?;
        let n = store.abandon_pending()?;
        if n > 0 {
            tracing::warn!(target: "hoop::audit", abandoned = n, "approvals left pending by the previous daemon marked abandoned");
        }
        Ok(Self {
            store,
            waiters: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            notifier,
            events: tokio::sync::broadcast::channel(256).0,
        })
    }

    /// Holds a request until a human decides, or the rule's timeout: the
    /// approval's id (none for a standing grant) and the outcome.
    pub async fn hold(&self, h: Hold) -> (Option<String>, Outcome) {
        let grant_key = (
            h.job.clone().unwrap_or_else(|| h.identity.clone()),
            h.connection.clone(),
            h.rule.name.clone(),
        );
        if let Some(until) = self.grants.lock().unwrap().get(&grant_key)
            && Instant::now() < *until
        {
            tracing::info!(
                target: "hoop::audit", identity = %h.identity, connection = %h.connection,
                rule = %h.rule.name, method = %h.method, url = %h.url, "approved by a standing grant"
            );
            return (None, Outcome::Approved { by: "grant".into() });
        }
        let id = new_id();
        let created = now_ms();
        let row = Row {
            id: id.clone(),
            created_ms: created,
            expires_ms: created + h.rule.timeout.as_millis() as u64,
            status: "pending".into(),
            job: h.job.clone(),
            identity: h.identity.clone(),
            connection: h.connection.clone(),
            rule: h.rule.name.clone(),
            method: h.method.clone(),
            url: h.url.clone(),
            decided_by: None,
            reason: None,
            body_sha256: h.body_sha256.clone(),
            body: h.body.clone(),
            actor: h.actor.clone(),
            context: h.context.clone(),
            host: None,
        };
        if let Err(e) = self.store.insert(&row, &h.uids) {
            // Without a record nobody could approve it: refuse now.
            tracing::error!(error = %e, "cannot store a pending approval");
            return (
                None,
                Outcome::Denied {
                    by: "hoop".into(),
                    reason: format!("the approval could not be recorded ({e})"),
                },
            );
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(
            id.clone(),
            Waiter {
                tx,
                rule: h.rule.clone(),
                uids: h.uids.clone(),
                grant_key,
                actor: h.actor.clone(),
                actor_claim: h.actor_claim.clone(),
            },
        );
        tracing::warn!(
            target: "hoop::audit", approval = %id, identity = %h.identity, job = h.job.as_deref().unwrap_or("-"),
            connection = %h.connection, rule = %h.rule.name, method = %h.method, url = %h.url,
            "request held for approval"
        );
        if let Some(n) = &self.notifier {
            n.send(&row);
        }
        let _ = self.events.send(Event::Held(row, h.rule.clone()));
        // If the job goes away, its request future is dropped here: the
        // approval is abandoned at once, and can't be approved after.
        let mut guard = AbandonOnDrop {
            approvals: self,
            id: id.clone(),
            armed: true,
        };
        let mut rx = rx;
        let outcome = match tokio::time::timeout(h.rule.timeout, &mut rx).await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome::Abandoned,
            // A decision that took the waiter first wins: its outcome is
            // already sent (the approver was told it took effect).
            Err(_) if self.waiters.lock().unwrap().remove(&id).is_none() => {
                rx.await.unwrap_or(Outcome::Abandoned)
            }
            Err(_) => {
                let _ = self.store.decide(&id, "expired", None, None, None);
                self.publish(&id, &h.rule);
                tracing::warn!(target: "hoop::audit", approval = %id, "approval expired");
                Outcome::Expired
            }
        };
        guard.armed = false;
        (Some(id), outcome)
    }

    /// An approver's decision on a pending approval.
    pub fn decide(&self, id: &str, caller: &Caller, d: Decision) -> Result<String, ApprovalError> {
        let mut waiters = self.waiters.lock().unwrap();
        let Some(w) = waiters.get(id) else {
            return Err(match self.store.get(id)? {
                Some(r) => ApprovalError::NotPending {
                    id: id.into(),
                    status: r.status,
                },
                None => ApprovalError::Unknown(id.into()),
            });
        };
        match caller {
            Caller::Host { uid, .. } if w.uids.contains(uid) => {
                tracing::warn!(target: "hoop::audit", approval = %id, caller = %caller.label(), "self-approval refused");
                return Err(ApprovalError::SelfApproval(*uid));
            }
            Caller::Person(_) if w.actor.is_none() && w.actor_claim.is_some() => {
                tracing::warn!(target: "hoop::audit", approval = %id, caller = %caller.label(), "approval by a person refused: the job names no actor");
                return Err(ApprovalError::NoActor {
                    caller: caller.label(),
                    claim: w.actor_claim.clone().unwrap_or_default(),
                });
            }
            Caller::Person(p) if w.actor.as_deref().is_some_and(|a| p.is(a)) => {
                tracing::warn!(target: "hoop::audit", approval = %id, caller = %caller.label(), "self-approval refused: the job's actor");
                return Err(ApprovalError::SelfApprovalPerson {
                    caller: caller.label(),
                    actor: w.actor.clone().unwrap_or_default(),
                });
            }
            _ => {}
        }
        if !w.rule.admits(caller) {
            tracing::warn!(target: "hoop::audit", approval = %id, caller = %caller.label(), "approval by a non-approver refused");
            return Err(ApprovalError::NotApprover {
                caller: caller.label(),
                rule: w.rule.name.clone(),
            });
        }
        if let Decision::Approve { for_secs: Some(s) } = d
            && !(1..=MAX_GRANT_SECS).contains(&s)
        {
            return Err(ApprovalError::GrantLength(s));
        }
        let by = caller.label();
        let grant_secs = match &d {
            Decision::Approve { for_secs } => *for_secs,
            Decision::Deny { .. } => None,
        };
        let (status, outcome, reason, grant) = match d {
            Decision::Approve { for_secs } => (
                "approved",
                Outcome::Approved { by: by.clone() },
                None,
                for_secs.map(|s| now_ms() + s * 1000),
            ),
            Decision::Deny { reason } => (
                "denied",
                Outcome::Denied {
                    by: by.clone(),
                    reason: reason.clone(),
                },
                Some(reason),
                None,
            ),
        };
        if !self
            .store
            .decide(id, status, Some(&by), reason.as_deref(), grant)?
        {
            return Err(ApprovalError::NoLongerPending(id.into()));
        }
        let w = waiters.remove(id).expect("checked above");
        if let Some(secs) = grant_secs {
            self.grants.lock().unwrap().insert(
                w.grant_key.clone(),
                Instant::now() + Duration::from_secs(secs),
            );
        }
        tracing::warn!(
            target: "hoop::audit", approval = %id, status, approver = %by,
            reason = reason.as_deref().unwrap_or("-"), grant_secs = grant_secs.unwrap_or(0),
            "approval decided"
        );
        let _ = w.tx.send(outcome);
        drop(waiters);
        self.publish(id, &w.rule);
        Ok(format!("approval {id} {status} by {by}"))
    }

    pub fn list(&self) -> Result<Vec<Row>, ApprovalError> {
        Ok(self.store.list(100)?)
    }

    pub fn get(&self, id: &str) -> Result<Option<Row>, ApprovalError> {
        Ok(self.store.get(id)?)
    }

    /// Whether `caller` may see and decide `id`: an approver of its rule
    /// while it is held. (Self-approval is refused at the decision, with
    /// its own reason.)
    pub fn may_decide(&self, id: &str, caller: &Caller) -> bool {
        self.waiters
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|w| w.rule.admits(caller))
    }

    /// Every held and decided request from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Tells the console about a request another host of the fleet holds.
    pub fn announce(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Every request held here now, with its rule.
    pub fn held(&self) -> Vec<(Row, Arc<ApprovalRule>)> {
        let rules: HashMap<String, Arc<ApprovalRule>> = self
            .waiters
            .lock()
            .unwrap()
            .iter()
            .map(|(id, w)| (id.clone(), w.rule.clone()))
            .collect();
        rules
            .into_iter()
            .filter_map(|(id, rule)| Some((self.store.get(&id).ok()??, rule)))
            .collect()
    }

    /// Tells the console a row changed.
    fn publish(&self, id: &str, rule: &Arc<ApprovalRule>) {
        if let Ok(Some(r)) = self.store.get(id) {
            let _ = self.events.send(Event::Decided(r, rule.clone()));
        }
    }

    /// The held requests `caller` may decide, newest first.
    pub fn pending_for(&self, caller: &Caller) -> Result<Vec<Row>, ApprovalError> {
        let admitted: std::collections::HashSet<String> = self
            .waiters
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, w)| w.rule.admits(caller))
            .map(|(id, _)| id.clone())
            .collect();
        let mut rows: Vec<Row> = self
            .store
            .list(1000)?
            .into_iter()
            .filter(|r| r.status == "pending" && admitted.contains(&r.id))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        Ok(rows)
    }

    /// The daemon is stopping: every held request fails cleanly.
    pub fn shutdown(&self) {
        let waiters: Vec<(String, Waiter)> = self.waiters.lock().unwrap().drain().collect();
        for (id, w) in waiters {
            let _ = self
                .store
                .decide(&id, "abandoned", None, Some("the daemon stopped"), None);
            self.publish(&id, &w.rule);
            let _ = w.tx.send(Outcome::Abandoned);
        }
    }
}

/// Abandons a pending approval whose request is gone.
struct AbandonOnDrop<'a> {
    approvals: &'a Approvals,
    id: String,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(w) = self.approvals.waiters.lock().unwrap().remove(&self.id) else {
            return;
        };
        let _ = self.approvals.store.decide(
            &self.id,
            "abandoned",
            None,
            Some("the job went away before a decision"),
            None,
        );
        self.approvals.publish(&self.id, &w.rule);
        tracing::warn!(target: "hoop::audit", approval = %self.id, "approval abandoned: the job went away");
    }
}

fn new_id() -> String {
    let mut b = [0u8; 6];
    getrandom(&mut b);
    hex::encode(b)
}

fn getrandom(b: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(b)
        .expect("the system's random source works");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvers_and_durations_parse() {
        assert_eq!(Approver::parse("uid:0").unwrap(), Approver::Uid(0));
        assert_eq!(
            Approver::parse("group:hoop").unwrap(),
            Approver::Group("hoop".into())
        );
        assert!(Approver::parse("root").is_err());
        assert!(Approver::parse("uid:x").is_err());
    }

    fn approvals() -> (tempfile::TempDir, Approvals) {
        let dir = tempfile::tempdir().unwrap();
        let a = Approvals::open(&dir.path().join("a.db"), None).unwrap();
        (dir, a)
    }

    fn hold(uids: Vec<u32>, timeout: Duration) -> Hold {
        Hold {
            rule: Arc::new(ApprovalRule {
                name: "prod".into(),
                approvers: vec![
                    Approver::Uid(0),
                    Approver::Uid(1000),
                    Approver::OidcGroup("leads".into()),
                ],
                message: None,
                timeout,
            }),
            connection: "c".into(),
            job: Some("job1".into()),
            identity: "ci:x".into(),
            uids,
            method: "POST".into(),
            url: "https://a/v1/prod/x".into(),
            body_sha256: None,
            body: None,
            actor: Some("alice@acme.example".into()),
            actor_claim: Some("actor".into()),
            context: Context::default(),
        }
    }

    async fn pending_id(a: &Approvals) -> String {
        for _ in 0..100 {
            if let Some(r) = a
                .list()
                .unwrap()
                .into_iter()
                .find(|r| r.status == "pending")
            {
                return r.id;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("nothing pending");
    }

    #[tokio::test]
    async fn approve_deny_expire_self_and_grants() {
        let (_d, a) = approvals();
        let a = Arc::new(a);
        let root = Caller::Host {
            uid: 0,
            gids: vec![0],
        };
        let job_user = Caller::Host {
            uid: 1000,
            gids: vec![1000],
        };
        let stranger = Caller::Host {
            uid: 4242,
            gids: vec![4242],
        };

        // Approve (with a grant), after a self-approval and a stranger fail.
        let a2 = a.clone();
        let t =
            tokio::spawn(async move { a2.hold(hold(vec![1000], Duration::from_secs(10))).await.1 });
        let id = pending_id(&a).await;
        let e = a
            .decide(&id, &job_user, Decision::Approve { for_secs: None })
            .unwrap_err();
        assert!(matches!(e, ApprovalError::SelfApproval(1000)), "{e}");
        assert!(e.to_string().contains("can't approve itself"), "{e}");
        let e = a
            .decide(&id, &stranger, Decision::Approve { for_secs: None })
            .unwrap_err();
        assert!(
            matches!(&e, ApprovalError::NotApprover { caller, .. } if caller == "uid:4242"),
            "{e}"
        );
        a.decide(&id, &root, Decision::Approve { for_secs: Some(60) })
            .unwrap();
        assert_eq!(
            t.await.unwrap(),
            Outcome::Approved {
                by: "uid:0 (root)".into()
            }
        );
        // The grant lets the next one through without a new approval.
        assert_eq!(
            a.hold(hold(vec![1000], Duration::from_secs(10))).await.1,
            Outcome::Approved { by: "grant".into() }
        );

        // Deny.
        let mut h = hold(vec![1000], Duration::from_secs(10));
        h.job = Some("job2".into());
        let a2 = a.clone();
        let t = tokio::spawn(async move { a2.hold(h).await.1 });
        let id = pending_id(&a).await;
        a.decide(
            &id,
            &root,
            Decision::Deny {
                reason: "not today".into(),
            },
        )
        .unwrap();
        assert!(
            matches!(t.await.unwrap(), Outcome::Denied { reason, .. } if reason == "not today")
        );
        let e = a
            .decide(&id, &root, Decision::Approve { for_secs: None })
            .unwrap_err();
        assert!(
            matches!(&e, ApprovalError::NotPending { status, .. } if status == "denied"),
            "{e}"
        );

        // Expiry.
        let mut h = hold(vec![1000], Duration::from_millis(100));
        h.job = Some("job3".into());
        assert_eq!(a.hold(h).await.1, Outcome::Expired);
        assert!(a.list().unwrap().iter().any(|r| r.status == "expired"));

        // Shutdown: a held request fails cleanly, its row is abandoned.
        let mut h = hold(vec![1000], Duration::from_secs(10));
        h.job = Some("job4".into());
        let a2 = a.clone();
        let t = tokio::spawn(async move { a2.hold(h).await.1 });
        let id = pending_id(&a).await;
        a.shutdown();
        assert_eq!(t.await.unwrap(), Outcome::Abandoned);
        let row = a.list().unwrap().into_iter().find(|r| r.id == id).unwrap();
        assert_eq!(row.status, "abandoned");
    }

    fn person(email: &str, groups: &[&str]) -> Caller {
        Caller::Person(Person {
            issuer: "https://idp.example".into(),
            sub: format!("sub-{email}"),
            email: Some(email.into()),
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[tokio::test]
    async fn people_decide_unless_they_started_the_job_or_it_names_nobody() {
        let (_d, a) = approvals();
        let a = Arc::new(a);
        let lead = person("bob@acme.example", &["leads"]);
        let starter = person("Alice@acme.example", &["leads"]);

        // The job's actor is alice: she is a lead, and still refused; a
        // grant of 0 s or over a day is refused; bob approves.
        let a2 = a.clone();
        let t =
            tokio::spawn(async move { a2.hold(hold(vec![1000], Duration::from_secs(10))).await.1 });
        let id = pending_id(&a).await;
        let e = a
            .decide(&id, &starter, Decision::Approve { for_secs: None })
            .unwrap_err();
        assert!(matches!(e, ApprovalError::SelfApprovalPerson { .. }), "{e}");
        for bad in [0, MAX_GRANT_SECS + 1] {
            let e = a
                .decide(
                    &id,
                    &lead,
                    Decision::Approve {
                        for_secs: Some(bad),
                    },
                )
                .unwrap_err();
            assert!(
                matches!(e, ApprovalError::GrantLength(n) if n == bad),
                "{e}"
            );
        }
        a.decide(
            &id,
            &lead,
            Decision::Approve {
                for_secs: Some(MAX_GRANT_SECS),
            },
        )
        .unwrap();
        assert!(
            matches!(t.await.unwrap(), Outcome::Approved { by } if by == "oidc:bob@acme.example")
        );

        // A job whose token names no actor, though the claim is configured:
        // no person may decide; a host approver still may.
        let mut h = hold(vec![1000], Duration::from_secs(10));
        h.job = Some("job-no-actor".into());
        h.actor = None;
        let a2 = a.clone();
        let t = tokio::spawn(async move { a2.hold(h).await.1 });
        let id = pending_id(&a).await;
        let e = a
            .decide(&id, &lead, Decision::Approve { for_secs: None })
            .unwrap_err();
        assert!(matches!(e, ApprovalError::NoActor { .. }), "{e}");
        let root = Caller::Host {
            uid: 0,
            gids: vec![0],
        };
        a.decide(
            &id,
            &root,
            Decision::Deny {
                reason: "no".into(),
            },
        )
        .unwrap();
        assert!(matches!(t.await.unwrap(), Outcome::Denied { .. }));
    }
}

//! The fleet's approval queue on PostgreSQL. Each host publishes the
//! requests it holds and their fate; every host's console shows the whole
//! fleet's queue to the people the rules name. A decision made in any
//! console becomes a row that the holding host claims, checks against its
//! own rule and self-approval guards (as a decision in its own console),
//! applies, records, and answers. LISTEN/NOTIFY carries the news; a poll
//! every [`POLL`] covers a lost notification and the time after a
//! reconnect.
//!
//! Without the server each host decides its own requests as before (its
//! console and CLI), and its console says the fleet's queue is away.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::broadcast::error::RecvError;
use tokio_postgres::Client;

use super::{FleetError, Target, schema};
use crate::approval::{
    ApprovalError, ApprovalRule, Approvals, Approver, Caller, Decision, Event, MAX_GRANT_SECS,
    Person, Row,
};

/// How often the queue is read and decisions looked for without a
/// notification.
const POLL: Duration = Duration::from_secs(2);
/// How long a console waits for the holding host's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

pub struct FleetApprovals {
    target: Target,
    local: Arc<Approvals>,
    client: Mutex<Option<Arc<Client>>>,
    /// Other hosts' held requests by id, with their rules rebuilt from
    /// the approver specs (people only: another host's uids mean nothing
    /// here).
    remote: Mutex<HashMap<String, (Row, Arc<ApprovalRule>)>>,
    /// Why the server is away (none while connected).
    error: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    crate::jobs::Jobs::now_ms()
}

impl FleetApprovals {
    pub fn start(target: Target, local: Arc<Approvals>) -> Arc<Self> {
        let me = Arc::new(Self {
            target,
            local,
            client: Mutex::new(None),
            remote: Mutex::new(HashMap::new()),
            error: Mutex::new(Some("not connected yet".into())),
        });
        tokio::spawn(me.clone().run());
        me
    }

    /// Why the fleet's queue is away, if it is.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    /// Other hosts' held requests that `caller` may decide.
    pub fn pending_for(&self, caller: &Caller) -> Vec<Row> {
        let now = now_ms();
        self.remote
            .lock()
            .unwrap()
            .values()
            .filter(|(r, rule)| r.expires_ms > now && rule.admits(caller))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Another host's held request.
    pub fn get(&self, id: &str) -> Option<(Row, Arc<ApprovalRule>)> {
        self.remote.lock().unwrap().get(id).cloned()
    }

    pub fn may_decide(&self, id: &str, caller: &Caller) -> bool {
        self.get(id).is_some_and(|(_, rule)| rule.admits(caller))
    }

    /// `person`'s decision on another host's held request: written for
    /// that host, which answers. Its answer, or why there is none.
    pub async fn decide(
        &self,
        id: &str,
        person: &Person,
        d: Decision,
    ) -> Result<String, ApprovalError> {
        let Some((row, rule)) = self.get(id) else {
            return Err(ApprovalError::Unknown(id.into()));
        };
        let host = row.host.clone().unwrap_or_default();
        let caller = Caller::Person(person.clone());
        // Checked here for a clear answer at once; the holding host checks
        // again with its own rule.
        if !rule.admits(&caller) {
            return Err(ApprovalError::NotApprover {
                caller: caller.label(),
                rule: rule.name.clone(),
            });
        }
        let (decision, for_secs, reason) = match d {
            Decision::Approve { for_secs } => ("approve", for_secs, None),
            Decision::Deny { reason } => ("deny", None, Some(reason)),
        };
        if let Some(s) = for_secs
            && !(1..=MAX_GRANT_SECS).contains(&s)
        {
            return Err(ApprovalError::GrantLength(s));
        }
        let unreachable = |e: tokio_postgres::Error| {
            ApprovalError::FleetUnreachable(FleetError::from(e).to_string())
        };
        let client = self.client.lock().unwrap().clone().ok_or_else(|| {
            ApprovalError::FleetUnreachable(self.error().unwrap_or_else(|| "not connected".into()))
        })?;
        let person_json = serde_json::to_string(person).unwrap_or_default();
        let seq: i64 = client
            .query_one(
                "INSERT INTO hoop.decisions (host_id, id, from_host, person, decision, for_secs, reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
                &[
                    &host,
                    &id,
                    &self.target.host_id,
                    &person_json,
                    &decision,
                    &for_secs.map(|s| s as i64),
                    &reason,
                ],
            )
            .await
            .map_err(unreachable)?
            .get(0);
        client
            .execute("SELECT pg_notify('hoop_decisions', $1)", &[&host])
            .await
            .map_err(unreachable)?;
        let started = tokio::time::Instant::now();
        let mut withdrawn_tried = false;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = client
                .query_one(
                    "SELECT result_code, result FROM hoop.decisions WHERE seq = $1",
                    &[&seq],
                )
                .await
                .map_err(unreachable)?;
            let (code, text): (Option<String>, Option<String>) = (r.get(0), r.get(1));
            match code.as_deref() {
                Some("ok") => return Ok(format!("{} (on host {host})", text.unwrap_or_default())),
                Some("taken") | None => {}
                Some(code) => {
                    return Err(ApprovalError::Remote {
                        host,
                        code: ApprovalError::known_code(code),
                        message: text.unwrap_or_default(),
                    });
                }
            }
            if started.elapsed() < ANSWER_WAIT {
                continue;
            }
            if !withdrawn_tried {
                withdrawn_tried = true;
                // Not taken yet: withdrawn, so it never acts later.
                let n = client
                    .execute(
                        "UPDATE hoop.decisions SET answered_at = now(), result_code = 'withdrawn',
                           result = 'not answered in time' WHERE seq = $1 AND answered_at IS NULL",
                        &[&seq],
                    )
                    .await
                    .map_err(unreachable)?;
                if n == 1 {
                    return Err(ApprovalError::FleetUnreachable(format!(
                        "host {host} did not answer within {} s; the request stays held there",
                        ANSWER_WAIT.as_secs()
                    )));
                }
            } else if started.elapsed() > ANSWER_WAIT * 2 {
                return Err(ApprovalError::FleetUnreachable(format!(
                    "host {host} took the decision but did not say how it went; see the request's status there"
                )));
            }
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let e = match self.connected().await {
                Ok(never) => match never {},
                Err(e) => e,
            };
            *self.client.lock().unwrap() = None;
            let text = e.to_string();
            let was = self.error.lock().unwrap().replace(text.clone());
            if was.as_deref() != Some(&text) {
                tracing::warn!(server = %self.target.display, error = %text, "fleet: the shared approval queue is away; this host's requests are decided here only");
            }
            // What can no longer be decided from here leaves the consoles.
            let gone: Vec<(Row, Arc<ApprovalRule>)> = self
                .remote
                .lock()
                .unwrap()
                .drain()
                .map(|(_, v)| v)
                .collect();
            for (mut row, rule) in gone {
                row.status = "unreachable".into();
                self.local.announce(Event::Decided(row, rule));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn connected(&self) -> Result<super::ship::Never, FleetError> {
        let (mut client, mut notes) = self.target.connect_listening().await?;
        schema::migrate(&mut client).await?;
        client
            .batch_execute("LISTEN hoop_approvals; LISTEN hoop_decisions")
            .await?;
        let client = Arc::new(client);
        // Subscribed before the first publication: nothing falls between.
        let mut events = self.local.subscribe();
        *self.client.lock().unwrap() = Some(client.clone());
        self.publish_all(&client).await?;
        *self.error.lock().unwrap() = None;
        tracing::info!(server = %self.target.display, "fleet: the shared approval queue is here");
        self.refresh(&client).await?;
        self.answer(&client).await?;
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(Event::Held(row, rule) | Event::Decided(row, rule)) if row.host.is_none() => {
                        self.publish(&client, &row, &rule).await?;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => self.publish_all(&client).await?,
                    Err(RecvError::Closed) => {
                        return Err(FleetError::Refused("the approvals service stopped".into()));
                    }
                },
                n = notes.recv() => match n {
                    None => return Err(FleetError::Refused("the server closed the connection".into())),
                    Some(n) if n.channel() == "hoop_decisions" => {
                        if n.payload() == self.target.host_id {
                            self.answer(&client).await?;
                        }
                    }
                    Some(_) => self.refresh(&client).await?,
                },
                _ = tick.tick() => {
                    self.refresh(&client).await?;
                    self.answer(&client).await?;
                }
            }
        }
    }

    /// One of this host's requests, as it now stands.
    async fn publish(
        &self,
        client: &Client,
        row: &Row,
        rule: &ApprovalRule,
    ) -> Result<(), FleetError> {
        let approvers: Vec<String> = rule
            .approvers
            .iter()
            .filter(|a| a.is_person())
            .map(|a| a.to_string())
            .collect();
        client
            .execute(
                "INSERT INTO hoop.approvals (host_id, id, status, created_ms, expires_ms, approvers, row)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (host_id, id) DO UPDATE SET status = EXCLUDED.status, row = EXCLUDED.row",
                &[
                    &self.target.host_id,
                    &row.id,
                    &row.status,
                    &(row.created_ms as i64),
                    &(row.expires_ms as i64),
                    &serde_json::to_string(&approvers).unwrap_or_default(),
                    &serde_json::to_string(row).unwrap_or_default(),
                ],
            )
            .await?;
        client
            .execute(
                "SELECT pg_notify('hoop_approvals', $1)",
                &[&self.target.host_id],
            )
            .await?;
        Ok(())
    }

    /// Everything held here now, and the fate of the recent others (decided
    /// while the server was away).
    async fn publish_all(&self, client: &Client) -> Result<(), FleetError> {
        let held = self.local.held();
        for (row, rule) in &held {
            self.publish(client, row, rule).await?;
        }
        let none = ApprovalRule {
            name: String::new(),
            approvers: Vec::new(),
            timeout: Duration::ZERO,
            message: None,
        };
        for row in self.local.list().unwrap_or_default() {
            if row.status != "pending" {
                self.publish(client, &row, &none).await?;
            }
        }
        Ok(())
    }

    /// Reads the other hosts' held requests; tells the console what came
    /// and what went.
    async fn refresh(&self, client: &Client) -> Result<(), FleetError> {
        let rows = client
            .query(
                "SELECT host_id, row, approvers FROM hoop.approvals
                 WHERE host_id <> $1 AND status = 'pending' AND expires_ms > $2",
                &[&self.target.host_id, &(now_ms() as i64)],
            )
            .await?;
        let mut now: HashMap<String, (Row, Arc<ApprovalRule>)> = HashMap::new();
        for r in rows {
            let (host, row, approvers): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let Ok(mut row) = serde_json::from_str::<Row>(&row) else {
                continue;
            };
            row.host = Some(host);
            let rule = rule_of(&row, &approvers);
            now.insert(row.id.clone(), (row, rule));
        }
        let before = std::mem::replace(&mut *self.remote.lock().unwrap(), now.clone());
        for (id, (row, rule)) in &now {
            if !before.contains_key(id) {
                self.local.announce(Event::Held(row.clone(), rule.clone()));
            }
        }
        for (id, (row, rule)) in before {
            if now.contains_key(&id) {
                continue;
            }
            let host = row.host.clone().unwrap_or_default();
            let fate = client
                .query_opt(
                    "SELECT row FROM hoop.approvals WHERE host_id = $1 AND id = $2",
                    &[&host, &id],
                )
                .await?
                .and_then(|r| serde_json::from_str::<Row>(&r.get::<_, String>(0)).ok());
            let mut row = fate.unwrap_or(Row {
                status: "expired".into(),
                ..row
            });
            row.host = Some(host);
            self.local.announce(Event::Decided(row, rule));
        }
        Ok(())
    }

    /// Claims the decisions made elsewhere on this host's requests, applies
    /// each as the local console would, and answers.
    async fn answer(&self, client: &Client) -> Result<(), FleetError> {
        let claimed = client
            .query(
                "UPDATE hoop.decisions SET answered_at = now(), result_code = 'taken'
                 WHERE host_id = $1 AND answered_at IS NULL
                 RETURNING seq, id, person, decision, for_secs, reason, from_host",
                &[&self.target.host_id],
            )
            .await?;
        for r in claimed {
            let (seq, id, from): (i64, String, String) = (r.get(0), r.get(1), r.get(6));
            let person = serde_json::from_str::<Person>(&r.get::<_, String>(2));
            let d = match r.get::<_, String>(3).as_str() {
                "approve" => Some(Decision::Approve {
                    for_secs: r.get::<_, Option<i64>>(4).map(|s| s as u64),
                }),
                "deny" => Some(Decision::Deny {
                    reason: r.get::<_, Option<String>>(5).unwrap_or_default(),
                }),
                _ => None,
            };
            let (code, text) = match (person, d) {
                (Ok(p), Some(d)) => match self.local.decide(&id, &Caller::Person(p.clone()), d) {
                    Ok(m) => ("ok", m),
                    Err(e) => (e.code(), e.to_string()),
                },
                _ => ("approval-store", "an unreadable decision".to_string()),
            };
            tracing::info!(
                target: "hoop::audit", approval = %id, from_host = %from, result = code, "a decision made on another host's console answered"
            );
            client
                .execute(
                    "UPDATE hoop.decisions SET result_code = $2, result = $3 WHERE seq = $1",
                    &[&seq, &code, &text],
                )
                .await?;
        }
        Ok(())
    }
}

/// Another host's rule, as far as a console here needs it: its name, the
/// people who may decide, its message and timeout.
fn rule_of(row: &Row, approvers: &str) -> Arc<ApprovalRule> {
    let specs: Vec<String> = serde_json::from_str(approvers).unwrap_or_default();
    Arc::new(ApprovalRule {
        name: row.rule.clone(),
        approvers: specs
            .iter()
            .filter_map(|s| Approver::parse(s).ok())
            .filter(Approver::is_person)
            .collect(),
        timeout: Duration::from_millis(row.expires_ms.saturating_sub(row.created_ms)),
        message: row.context.message.clone(),
    })
}

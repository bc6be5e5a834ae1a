//! Reading the record back: sessions, a session's timeline, JSONL export.
//! Readers open their own read-only connection; the writer never waits.
use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;

use super::{
    chain::{self, Record},
    entry::{
        self, ApprovalData, ConnectDeniedData, MessagesData, RefusedData, RequestData,
        ResponseData, kind,
    },
    seal, store,
};

/// A record as read back, its data parsed and bodies decompressed.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub ts_ms: u64,
    pub kind: String,
    pub session: String,
    pub data: Value,
    pub hash: [u8; 32],
    pub req_body: Option<Vec<u8>>,
    pub resp_body: Option<Vec<u8>>,
}

impl Stored {
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_value(self.data.clone()).ok()
    }
}

/// Which records: one session's, and/or those since a time.
#[derive(Debug, Default, Clone)]
pub struct Select {
    pub session: Option<String>,
    pub since_ms: Option<u64>,
}

pub fn records(db: &Connection, sel: &Select) -> rusqlite::Result<Vec<Stored>> {
    let mut out = Vec::new();
    scan(db, sel, |rec, hash| {
        out.push(Stored {
            seq: rec.seq,
            ts_ms: rec.ts_ms,
            kind: rec.kind,
            session: rec.session,
            data: serde_json::from_str(&rec.data).unwrap_or(Value::String(rec.data)),
            hash,
            req_body: rec.req_body,
            resp_body: rec.resp_body,
        })
    })?;
    Ok(out)
}

/// Calls `f` with every selected record, in order, its bodies
/// decompressed, and its chain hash. A record whose bytes do not parse
/// (only an edit makes one; `hoop audit verify` names it) is skipped.
fn scan(
    db: &Connection,
    sel: &Select,
    mut f: impl FnMut(Record, [u8; 32]),
) -> rusqlite::Result<()> {
    let since = match sel.since_ms {
        None => 0,
        Some(t) => match store::first_seq_since(db, t)? {
            Some(s) => s,
            None => return Ok(()),
        },
    };
    let min_ts = sel.since_ms.unwrap_or(0);
    let session = sel.session.as_deref();
    let mut failed = None;
    store::each_row(db, since, session, |row| match row {
        Ok((mut rec, hash)) => {
            rec.req_body = rec.req_body.and_then(|b| entry::body(&b).ok());
            rec.resp_body = rec.resp_body.and_then(|b| entry::body(&b).ok());
            f(rec, hash);
            true
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    // The hash after the last batch read: contiguous batches need no
    // lookup of the one before.
    let mut head: Option<(u64, [u8; 32])> = None;
    store::each_batch(db, since, session, |b| {
        let b = match b {
            Ok(b) => b,
            Err(e) => {
                failed = Some(e);
                return false;
            }
        };
        let mut prev = match head {
            Some((last, h)) if last + 1 == b.first_seq => h,
            _ => match store::hash_before(db, b.first_seq) {
                Ok(h) => h,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            },
        };
        let Ok(records) = seal::unpack(b.codec, &b.records) else {
            head = None;
            return true;
        };
        for (seq, rec) in (b.first_seq..).zip(seal::split(&records)) {
            let Ok((ts, bytes)) = rec else { break };
            prev = chain::link(&prev, seq, ts, &seal::digest(bytes));
            if seq < since || ts < min_ts {
                continue;
            }
            let Ok(x) = seal::fields(bytes) else { continue };
            if session.is_some_and(|s| s != x.session) {
                continue;
            }
            let rec = Record {
                seq,
                ts_ms: ts,
                kind: x.kind,
                session: x.session,
                data: x.data,
                req_body: x.req_body,
                resp_body: x.resp_body,
            };
            f(rec, prev);
        }
        head = Some((b.last_seq, prev));
        true
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub session: String,
    pub identity: Option<String>,
    pub job: Option<String>,
    pub first_ms: u64,
    pub last_ms: u64,
    pub requests: u64,
    pub refused: u64,
    pub connects_denied: u64,
    pub hosts: Vec<String>,
    /// Requests forwarded in observe mode (no connection covered them).
    pub observed: u64,
    /// Observe mode was on for the session.
    pub observe: bool,
}

#[derive(Debug, Default)]
pub struct Filter {
    pub identity: Option<globset::GlobMatcher>,
    pub job: Option<String>,
    pub host: Option<globset::GlobMatcher>,
    pub since_ms: Option<u64>,
}

/// The few fields of a record's data that a session's summary shows.
#[derive(Debug, Default, serde::Deserialize)]
struct Facts {
    identity: Option<Name>,
    job: Option<String>,
    host: Option<String>,
    by: Option<String>,
    decision: Option<String>,
    observe: Option<bool>,
}

#[derive(Debug, serde::Deserialize)]
struct Name {
    name: String,
}

pub fn sessions(db: &Connection, f: &Filter) -> rusqlite::Result<Vec<SessionSummary>> {
    let sel = Select {
        session: None,
        since_ms: f.since_ms,
    };
    let mut order: Vec<String> = Vec::new();
    let mut by_id: HashMap<String, SessionSummary> = HashMap::new();
    scan(db, &sel, |r, _| {
        if r.session.is_empty() {
            return;
        }
        let s = by_id.entry(r.session.clone()).or_insert_with(|| {
            order.push(r.session.clone());
            SessionSummary {
                session: r.session.clone(),
                identity: None,
                job: None,
                first_ms: r.ts_ms,
                last_ms: r.ts_ms,
                requests: 0,
                refused: 0,
                connects_denied: 0,
                hosts: Vec::new(),
                observed: 0,
                observe: false,
            }
        });
        s.last_ms = s.last_ms.max(r.ts_ms);
        // Responses and WebSocket messages (most records) add nothing
        // here: their data is not parsed.
        if !matches!(
            r.kind.as_str(),
            kind::REQUEST | kind::REFUSED | kind::CONNECT_DENIED | kind::SESSION_START
        ) {
            return;
        }
        let facts: Facts = serde_json::from_str(&r.data).unwrap_or_default();
        match r.kind.as_str() {
            kind::REQUEST => {
                s.requests += 1;
                if facts.decision.as_deref() == Some("observed") {
                    s.observed += 1;
                    s.observe = true;
                }
            }
            kind::SESSION_START => s.observe |= facts.observe == Some(true),
            kind::REFUSED => s.refused += 1,
            kind::CONNECT_DENIED if facts.by.as_deref() != Some("job") => s.connects_denied += 1,
            _ => {}
        }
        if let Some(i) = facts.identity {
            s.identity = s.identity.take().max(Some(i.name));
        }
        if facts.job.is_some() {
            s.job = s.job.take().max(facts.job);
        }
        if let Some(h) = facts.host
            && !s.hosts.contains(&h)
        {
            s.hosts.push(h);
        }
    })?;
    let out = order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .filter(|s| {
            f.identity
                .as_ref()
                .is_none_or(|g| s.identity.as_deref().is_some_and(|i| g.is_match(i)))
                && f.job
                    .as_ref()
                    .is_none_or(|j| s.job.as_deref() == Some(j.as_str()))
                && f.host
                    .as_ref()
                    .is_none_or(|g| s.hosts.iter().any(|h| g.is_match(h)))
        })
        .collect();
    Ok(out)
}

/// RFC 3339 in UTC, milliseconds.
pub fn iso(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            // Fixed width (milliseconds always), so that columns line up.
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A human's wait: milliseconds when it was quick, else seconds.
fn waited(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn masked(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    format!("  masked {}", parts.join(", "))
}

/// A batch of WebSocket messages as one timeline line: how many each way,
/// their sizes and masking, and how the WebSocket ended if it did.
fn messages(m: &MessagesData) -> String {
    let (mut sent, mut received, mut sent_b, mut received_b) = (0, 0, 0, 0);
    let mut masked_all = std::collections::BTreeMap::new();
    for x in &m.messages {
        if x.dir == "send" {
            sent += 1;
            sent_b += x.size;
        } else {
            received += 1;
            received_b += x.size;
        }
        for (k, v) in &x.masked {
            *masked_all.entry(k.clone()).or_insert(0) += v;
        }
    }
    let mut line = format!(
        "websocket of #{}: {sent} sent ({}), {received} received ({}){}",
        m.request_seq,
        size(sent_b),
        size(received_b),
        masked(&masked_all)
    );
    if let Some(e) = &m.end {
        line += &format!(
            "; ended by the {}{}: {}",
            e.by,
            e.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            e.detail
        );
    }
    line
}

/// A session as a readable timeline, one line per event.
pub fn timeline(records: &[Stored]) -> String {
    let responses: HashMap<u64, ResponseData> = records
        .iter()
        .filter(|r| r.kind == kind::RESPONSE)
        .filter_map(|r| r.parse::<ResponseData>())
        .map(|r| (r.request_seq, r))
        .collect();
    let mut out = String::new();
    for r in records {
        let line = match r.kind.as_str() {
            kind::SESSION_START => match r.parse::<entry::SessionData>() {
                Some(s) => format!(
                    "session {} started: identity {}, pid {}, uid {}, cgroup {}, command {:?}{}",
                    s.session,
                    s.identity.name,
                    s.pid,
                    s.uid,
                    s.cgroup,
                    s.command,
                    match s.observe {
                        true =>
                            "; OBSERVE MODE: what no connection covers is forwarded and recorded, not refused",
                        false => "",
                    }
                ),
                None => "session started".into(),
            },
            kind::SESSION_END => "session ended (its cgroup emptied)".into(),
            kind::REQUEST => {
                let Some(q) = r.parse::<RequestData>() else {
                    continue;
                };
                let outcome = match responses.get(&r.seq) {
                    Some(p) => format!(
                        "→ {}{}  {}{}  ({} ms){}",
                        p.status.map_or("-".into(), |s| s.to_string()),
                        p.reason
                            .as_deref()
                            .map(|x| format!(" {x}"))
                            .unwrap_or_default(),
                        size(p.response_bytes),
                        masked(&p.masked),
                        p.duration_ms,
                        if p.complete { "" } else { "  (incomplete)" }
                    ),
                    None => "→ no response recorded".into(),
                };
                let approved = match (&q.approval, &q.would_be) {
                    (Some(a), _) => format!(" [approved {a}]"),
                    (None, Some(w)) => format!(" [observed; would be {w}]"),
                    (None, None) => String::new(),
                };
                format!(
                    "{} {} pid {}{approved} {outcome}",
                    q.method, q.url, q.origin.pid
                )
            }
            kind::RESPONSE => continue,
            kind::REFUSED => match r.parse::<RefusedData>() {
                Some(x) => format!(
                    "{} {} ✗ {} {}{}: {}",
                    x.request.method,
                    x.request.url,
                    x.status,
                    x.reason,
                    x.rule.map(|r| format!(" (rule {r})")).unwrap_or_default(),
                    x.message
                ),
                None => continue,
            },
            kind::APPROVAL => match r.parse::<ApprovalData>() {
                Some(a) => format!(
                    "approval {} for {} {} (rule {}): {}{}{} after {}",
                    a.id.as_deref().unwrap_or("-"),
                    a.method,
                    a.url,
                    a.rule,
                    a.outcome,
                    a.by.map(|b| format!(" by {b}")).unwrap_or_default(),
                    a.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                    waited(a.waited_ms)
                ),
                None => continue,
            },
            kind::CONNECT_DENIED => match r.parse::<ConnectDeniedData>() {
                // The reason repeats that the job closed it; its root
                // cause is the last link of the chain.
                Some(d) if d.by == "job" => format!(
                    "connection closed by the job to {} (pid {}): {}",
                    d.dst.as_deref().unwrap_or("-"),
                    d.pid,
                    d.reason.rsplit(": ").next().unwrap_or(&d.reason)
                ),
                Some(d) => format!(
                    "connect refused by the {}: {} to {} (pid {})",
                    d.by,
                    d.reason,
                    d.dst.as_deref().unwrap_or("-"),
                    d.pid
                ),
                None => continue,
            },
            kind::MESSAGES => match r.parse::<MessagesData>() {
                Some(m) => messages(&m),
                None => continue,
            },
            kind::CONSOLE => match r.parse::<entry::ConsoleData>() {
                Some(c) => format!(
                    "console {} by {}{}: {}",
                    c.event,
                    c.email.or(c.sub).unwrap_or_else(|| "-".into()),
                    c.approval
                        .map(|a| format!(" (approval {a})"))
                        .unwrap_or_default(),
                    c.detail
                ),
                None => continue,
            },
            other => other.to_string(),
        };
        out.push_str(&format!("{}  #{:<6} {line}\n", iso(r.ts_ms), r.seq));
    }
    out
}

/// One JSON object per record, for a SIEM: the record, its chain hash,
/// and bodies as text (or base64 when they are not UTF-8).
pub fn jsonl_line(r: &Stored) -> String {
    let body = |b: &Option<Vec<u8>>| match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(t) => serde_json::json!({"text": t}),
            Err(_) => {
                use base64::Engine;
                serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(b)})
            }
        },
    };
    serde_json::json!({
        "seq": r.seq,
        "time": iso(r.ts_ms),
        "ts_ms": r.ts_ms,
        "kind": r.kind,
        "session": r.session,
        "hash": hex::encode(r.hash),
        "data": r.data,
        "request_body": body(&r.req_body),
        "response_body": body(&r.resp_body),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_connect(by: &str, reason: &str) -> Stored {
        Stored {
            seq: 7,
            ts_ms: 0,
            kind: kind::CONNECT_DENIED.into(),
            session: "s".into(),
            data: serde_json::to_value(ConnectDeniedData {
                session: "s".into(),
                job: None,
                cgroup_id: 1,
                pid: 42,
                dst: Some("127.0.0.7:443".into()),
                reason: reason.into(),
                by: by.into(),
            })
            .unwrap(),
            hash: [0; 32],
            req_body: None,
            resp_body: None,
        }
    }

    #[test]
    fn a_connection_the_job_closed_reads_as_its_root_cause() {
        let t = timeline(&[
            refused_connect(
                "job",
                "job-closed: the job closed the connection: job-side HTTP: connection error: Broken pipe (os error 32)",
            ),
            refused_connect("kernel", "udp-not-dns"),
        ]);
        assert!(
            t.contains(
                "connection closed by the job to 127.0.0.7:443 (pid 42): Broken pipe (os error 32)\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("connect refused by the kernel: udp-not-dns to 127.0.0.7:443 (pid 42)"),
            "{t}"
        );
    }
}

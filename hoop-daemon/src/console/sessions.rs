//! The recorded sessions, read-only: the list (filtered by identity and
//! host), one session's timeline (what `hoop sessions show` prints) and
//! its HAR. The audit log stays the source: each page reads it afresh
//! (off the async workers), and nothing here writes but the record of who
//! looked. Shown to `[console] auditors` only.
use std::fmt::Write;

use crate::audit::query::{self, Filter, SessionSummary, Stored};

/// How far back the list looks unless told: reading it decodes every
/// record in the window.
pub const DEFAULT_SINCE: &str = "7d";

/// Why a sessions page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the audit log is off ([audit] enabled = false)")]
    Off,
    #[error("{0}")]
    Store(#[from] crate::audit::store::StoreError),
    #[error("reading the audit log: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("bad filter: {0}")]
    Filter(String),
    #[error("no session {0:?} in the audit log")]
    Unknown(String),
}

/// The list's filter, as the query string gives it.
pub struct Query {
    pub identity: String,
    pub host: String,
    pub since: String,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut me = Self {
            identity: String::new(),
            host: String::new(),
            since: DEFAULT_SINCE.into(),
        };
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            let v = v.trim().to_string();
            match k.as_ref() {
                "identity" => me.identity = v,
                "host" => me.host = v,
                "since" if !v.is_empty() => me.since = v,
                _ => {}
            }
        }
        me
    }

    fn filter(&self) -> Result<Filter, ReadError> {
        let glob = |g: &str| -> Result<_, ReadError> {
            if g.is_empty() {
                return Ok(None);
            }
            globset::Glob::new(g)
                .map(|g| Some(g.compile_matcher()))
                .map_err(|e| ReadError::Filter(format!("{g:?}: {e}")))
        };
        let since = crate::config::duration::parse_duration(&self.since)
            .map_err(|e| ReadError::Filter(e.to_string()))?;
        Ok(Filter {
            identity: glob(&self.identity)?,
            job: None,
            host: glob(&self.host)?,
            since_ms: Some(crate::jobs::Jobs::now_ms().saturating_sub(since.as_millis() as u64)),
        })
    }
}

fn open(db: Option<&std::path::Path>) -> Result<rusqlite::Connection, ReadError> {
    Ok(crate::audit::store::open_reader(db.ok_or(ReadError::Off)?)?)
}

pub fn list(db: Option<&std::path::Path>, q: &Query) -> Result<Vec<SessionSummary>, ReadError> {
    let f = q.filter()?;
    let mut all = query::sessions(&open(db)?, &f)?;
    all.sort_by_key(|s| std::cmp::Reverse(s.last_ms));
    Ok(all)
}

pub fn records(db: Option<&std::path::Path>, id: &str) -> Result<Vec<Stored>, ReadError> {
    let recs = query::records(
        &open(db)?,
        &query::Select {
            session: Some(id.to_string()),
            since_ms: None,
        },
    )?;
    if recs.is_empty() {
        return Err(ReadError::Unknown(id.into()));
    }
    Ok(recs)
}

/// The list page's body.
pub fn list_html(q: &Query, list: &[SessionSummary]) -> String {
    use super::page::esc;
    let mut rows = String::new();
    for s in list {
        let _ = write!(
            rows,
            "<tr><td><a href=\"/sessions/{href}\">{id}</a></td><td>{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&query::iso(s.first_ms)),
            esc(s.identity.as_deref().unwrap_or("-")),
            s.requests,
            s.refused,
            s.connects_denied,
            esc(&s.hosts.join(", ")),
            id = esc(&s.session),
            href = percent_encoding::utf8_percent_encode(
                &s.session,
                percent_encoding::NON_ALPHANUMERIC
            ),
        );
    }
    let table = if list.is_empty() {
        "<p id=\"no-sessions\">No session matches.</p>".to_string()
    } else {
        format!(
            "<table id=\"sessions\"><thead><tr><th>Session</th><th>First</th><th>Identity</th>\
             <th>Requests</th><th>Refused</th><th>Connects refused</th><th>Hosts</th></tr></thead>\
             <tbody>{rows}</tbody></table>"
        )
    };
    format!(
        "<h2>Recorded sessions</h2><form class=\"filter\" method=\"get\" action=\"/sessions\">\
         <label>Identity <input name=\"identity\" value=\"{}\" placeholder=\"ci:*\"></label> \
         <label>Host <input name=\"host\" value=\"{}\" placeholder=\"*.partner.example\"></label> \
         <label>Since <input name=\"since\" value=\"{}\" size=\"5\"></label> \
         <button>Filter</button></form>{table}",
        esc(&q.identity),
        esc(&q.host),
        esc(&q.since),
    )
}

/// One session's page body: its timeline and the HAR link.
pub fn session_html(id: &str, recs: &[Stored]) -> String {
    use super::page::esc;
    format!(
        "<h2>Session <code>{id}</code></h2><p><a id=\"har\" href=\"/sessions/{href}/har\">\
         Download as HAR</a> (opens in a browser's developer tools)</p>\
         <pre id=\"timeline\">{}</pre>",
        esc(&query::timeline(recs)),
        id = esc(id),
        href = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC),
    )
}

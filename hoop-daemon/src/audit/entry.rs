//! What a record holds, as typed structs: the pipeline writes them and the
//! readers (sessions, HAR, JSONL, policy dry-run) read the same types back.
//! Headers and bodies are what the job sent and saw, after masking, with
//! credentials redacted.
use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::{flow::Flow, identity::Identity, jobs::Job};

/// One thing to record. Bodies go in uncompressed; the writer compresses.
#[derive(Debug)]
pub struct Entry {
    pub kind: &'static str,
    pub session: String,
    /// The record's JSON, serialised once, on the request's task.
    pub data: String,
    pub req_body: Option<Bytes>,
    pub resp_body: Option<Bytes>,
}

pub mod kind {
    pub const SESSION_START: &str = "session-start";
    pub const SESSION_END: &str = "session-end";
    /// A request about to go upstream (committed before it does).
    pub const REQUEST: &str = "request";
    /// The answer to a recorded request (`request_seq`).
    pub const RESPONSE: &str = "response";
    /// A request answered by hoop itself: denied, held and refused, no
    /// route, misdirected… It never went upstream.
    pub const REFUSED: &str = "refused";
    /// A human's decision on a held request.
    pub const APPROVAL: &str = "approval";
    /// A connect or socket refused by the kernel programs or the listener.
    pub const CONNECT_DENIED: &str = "connect-denied";
    /// WebSocket messages after a recorded upgrade (`request_seq`), in
    /// batches; the last batch says how the WebSocket ended.
    pub const MESSAGES: &str = "messages";
    /// Written by a daemon at start, first thing: the records after the
    /// last signature were written by a previous run (killed, or someone
    /// with write access to the file) and this run does not vouch for them.
    pub const UNVOUCHED: &str = "unvouched";
    /// Something a person did in the approvers' console: signed in (or was
    /// refused), viewed a held body, decided, was refused a decision.
    pub const CONSOLE: &str = "console";
    /// Fleet mode: the spool of records the server lacks reached its cap
    /// (and what was done), or drained below it.
    pub const FLEET: &str = "fleet";
    /// Fleet mode, `when_full = "drop-oldest"`: the records named were
    /// removed before the server had them. The one gap `verify --fleet`
    /// accepts in a host's shipped chain.
    pub const DROPPED: &str = "dropped";
}

/// What can be recorded: its kind, and the session it belongs to.
pub trait Recordable: Serialize {
    const KIND: &'static str;
    fn session(&self) -> &str;
}

macro_rules! recordable {
    ($($t:ty => $kind:expr, |$s:ident| $session:expr;)*) => {$(
        impl Recordable for $t {
            const KIND: &'static str = $kind;
            fn session(&self) -> &str {
                let $s = self;
                $session
            }
        }
    )*};
}

recordable! {
    SessionData => kind::SESSION_START, |s| &s.session;
    SessionEndData => kind::SESSION_END, |s| &s.session;
    RequestData => kind::REQUEST, |s| &s.origin.session;
    ResponseData => kind::RESPONSE, |s| &s.session;
    RefusedData => kind::REFUSED, |s| &s.request.origin.session;
    ApprovalData => kind::APPROVAL, |s| &s.session;
    ConnectDeniedData => kind::CONNECT_DENIED, |s| &s.session;
    MessagesData => kind::MESSAGES, |s| &s.session;
    ConsoleData => kind::CONSOLE, |s| &s.session;
    FleetData => kind::FLEET, |s| &s.session;
    DroppedData => kind::DROPPED, |s| &s.session;
}

impl Entry {
    pub fn of<T: Recordable>(data: &T) -> Self {
        Self::new(T::KIND, data.session(), data)
    }

    pub fn new<T: Serialize>(kind: &'static str, session: &str, data: &T) -> Self {
        Self {
            kind,
            session: session.to_string(),
            data: serde_json::to_string(data).expect("audit data serialises"),
            req_body: None,
            resp_body: None,
        }
    }
}

/// The session a flow belongs to: its job, else its cgroup (static
/// identities), else the proxy client's identity.
pub fn session_of(flow: &Flow) -> String {
    match (&flow.job, flow.via) {
        (Some(j), _) => j.id.clone(),
        (None, crate::flow::Via::Transparent) => cgroup_session(flow.cgroup_id),
        (None, _) => format!("proxy:{}", flow.identity_name()),
    }
}

/// The session of a captured job hoop has no registration for.
pub fn cgroup_session(cgroup_id: u64) -> String {
    format!("cgroup-{cgroup_id}")
}

/// Who and where, on every request record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub session: String,
    pub job: Option<String>,
    pub identity: Option<Identity>,
    pub cgroup_id: u64,
    pub pid: u32,
    pub exe: Option<String>,
    pub via: String,
    pub flow: u64,
    /// The address the job dialled (never re-resolved).
    pub dst: String,
}

impl Origin {
    pub fn of(flow: &Flow) -> Self {
        Self {
            session: session_of(flow),
            job: flow.job_id().map(str::to_owned),
            identity: flow.identity.as_deref().cloned(),
            cgroup_id: flow.cgroup_id,
            pid: flow.pid,
            exe: flow.exe.as_ref().map(|p| p.display().to_string()),
            via: flow.via.as_str().to_string(),
            flow: flow.id,
            dst: flow.orig_dst.to_string(),
        }
    }

    pub fn identity_name(&self) -> &str {
        self.identity.as_ref().map_or("-", |i| i.name.as_str())
    }
}

/// A request as the job sent it (credentials redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestData {
    #[serde(flatten)]
    /// Shared by every request of the connection: built once per flow.
    pub origin: Arc<Origin>,
    pub method: String,
    pub url: String,
    pub host: String,
    /// The TLS name the upstream proved, if TLS.
    pub sni: Option<String>,
    pub version: String,
    pub headers: Vec<[String; 2]>,
    pub connection: Option<String>,
    /// allow, approved (after a hold), or observed (observe mode: no
    /// connection covers it; `would_be` says what it would have got).
    pub decision: String,
    /// Observe mode: the refusal the request would have had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_be: Option<String>,
    pub approval: Option<String>,
    pub started_ms: u64,
}

/// The answer to a recorded request, as the job saw it (after masking).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseData {
    pub session: String,
    pub request_seq: u64,
    pub status: Option<u16>,
    /// Why hoop answered or cut it short, if it did (x-hoop-reason).
    pub reason: Option<String>,
    pub headers: Vec<[String; 2]>,
    /// What masking replaced, by rule (never the values).
    pub masked: BTreeMap<String, u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub req_body: Option<BodyInfo>,
    pub resp_body: Option<BodyInfo>,
    pub duration_ms: u64,
    /// The body reached the job whole.
    pub complete: bool,
}

/// A request hoop answered itself; nothing went upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedData {
    #[serde(flatten)]
    pub request: RequestData,
    pub status: u16,
    pub reason: String,
    pub rule: Option<String>,
    pub message: String,
    pub req_body: Option<BodyInfo>,
}

/// How much of a body was kept: `recorded` of `bytes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BodyInfo {
    pub bytes: u64,
    pub recorded: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalData {
    pub session: String,
    pub id: Option<String>,
    pub rule: String,
    pub connection: String,
    pub method: String,
    pub url: String,
    /// approved, denied, expired, abandoned
    pub outcome: String,
    pub by: Option<String>,
    pub reason: Option<String>,
    pub waited_ms: u64,
    /// SHA-256 (hex) of the body the approver was shown the hash of, and
    /// which was forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// A console event, with the person's identity as their provider vouched
/// for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleData {
    /// The job session of the held request it concerns, else empty.
    pub session: String,
    /// sign-in, sign-in-refused, sign-out, view, decision, refused
    pub event: String,
    pub issuer: Option<String>,
    pub sub: Option<String>,
    pub email: Option<String>,
    pub approval: Option<String>,
    /// What happened, in words (the decision, the refusal's reason).
    pub detail: String,
    /// The browser's address.
    pub peer: String,
}

/// The fleet's spool at its cap, or below it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetData {
    /// Empty: it concerns the host, not a job.
    pub session: String,
    /// spool-full, spool-drained
    pub event: String,
    /// Records the server lacked.
    pub unshipped: u64,
    /// The cap (`[fleet] max_unshipped`).
    pub max: u64,
    /// What is done at the cap (`[fleet] when_full`).
    pub action: crate::config::fleet::WhenFull,
}

/// The records `from..=to` were removed from the local log before the
/// fleet's server had them: the spool was at its cap and `when_full` is
/// `drop-oldest`. The signed checkpoint at `to` stays as the anchor of
/// what follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedData {
    /// Empty: it concerns the host, not a job.
    #[serde(default)]
    pub session: String,
    pub from: u64,
    pub to: u64,
    /// Records the server lacked when they were dropped, and the cap.
    pub unshipped: u64,
    pub max: u64,
    /// Spans dropped before, whose own `dropped` record the server may
    /// not have (a later cut can take it along): repeated here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionData {
    pub session: String,
    pub job: String,
    pub identity: Identity,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub pid: u32,
    pub uid: u32,
    pub command: Vec<String>,
    /// Observe mode was on for the job when it started (`hoop run
    /// --observe`, or an `[[observe]]` entry named its identity).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observe: bool,
}

impl SessionData {
    pub fn of(j: &Job) -> Self {
        Self {
            session: j.id.clone(),
            job: j.id.clone(),
            identity: j.identity.clone(),
            cgroup: j.cgroup_path.display().to_string(),
            cgroup_id: j.cgroup_id,
            pid: j.pid,
            uid: j.uid,
            command: redact_args(&j.command),
            observe: j.observe,
        }
    }
}

/// A job's command line, with what looks like a credential (a bearer
/// token, a JWT, a cloud or API key, a private key) masked: jobs pass their
/// own tokens in arguments, and the record must not keep them.
pub fn redact_args(args: &[String]) -> Vec<String> {
    use crate::policy::mask::{MaskConfig, Masker};
    static MASKER: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();
    let m = MASKER.get_or_init(|| {
        let cfg: MaskConfig =
            toml::from_str("detectors = [\"bearer\", \"jwt\", \"aws_key\", \"private_key\"]")
                .expect("built-in detectors parse");
        Masker::compile(&cfg).expect("built-in detectors compile")
    });
    args.iter()
        .map(|a| {
            m.mask_text(a, &mut Default::default())
                .unwrap_or_else(|| a.clone())
        })
        .collect()
}

/// The records `from..=to` follow the last signature but no run of this
/// daemon wrote them: the signatures that follow this record cover it, and
/// fix those records as they are, but do not vouch for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnvouchedData {
    pub from: u64,
    pub to: u64,
    pub reason: String,
}

impl UnvouchedData {
    pub const REASON: &str = "unsigned: written by a previous run, not vouched for";

    /// Not a job's: an empty session keeps it out of `hoop sessions`.
    pub fn entry(from: u64, to: u64) -> Entry {
        Entry::new(
            kind::UNVOUCHED,
            "",
            &Self {
                from,
                to,
                reason: Self::REASON.into(),
            },
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEndData {
    pub session: String,
    pub job: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectDeniedData {
    pub session: String,
    pub job: Option<String>,
    pub cgroup_id: u64,
    pub pid: u32,
    pub dst: Option<String>,
    pub reason: String,
    /// "kernel" (a cgroup program), "gateway" (the daemon refused it) or
    /// "job" (it hung up before a request)
    pub by: String,
}

/// A batch of WebSocket messages of the upgrade recorded as `request_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesData {
    pub session: String,
    pub request_seq: u64,
    pub messages: Vec<MessageData>,
    /// On the last batch: how the WebSocket ended.
    pub end: Option<MessagesEnd>,
}

/// One WebSocket message as it was passed on (after masking).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageData {
    pub ts_ms: u64,
    /// `send` (job to upstream) or `receive` (upstream to job), the words
    /// of HAR's `_webSocketMessages`.
    pub dir: String,
    /// 1 text, 2 binary, 8 close, 9 ping, 10 pong (RFC 6455).
    pub opcode: u8,
    /// Payload bytes passed on.
    pub size: u64,
    /// The payload's first bytes, up to the connection's body cap: text as
    /// it is (a close frame's reason), anything else in base64.
    pub data: Option<String>,
    /// `data` is base64.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base64: bool,
    /// How many payload bytes `data` holds.
    pub recorded: u64,
    /// A close frame's status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// What masking replaced in this message, by rule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub masked: BTreeMap<String, u64>,
}

/// How a WebSocket ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesEnd {
    /// `job`, `upstream` (either closed or went away) or `gateway` (hoop
    /// refused a frame and closed both sides).
    pub by: String,
    /// Why hoop closed it: `frame-not-inspectable`, `message-too-big`,
    /// `websocket-protocol-error`.
    pub reason: Option<String>,
    pub detail: String,
    /// Messages each way over the whole WebSocket.
    pub sent: u64,
    pub received: u64,
}

/// Header values that are credentials: never recorded.
const REDACTED_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
];
pub const REDACTED: &str = "[redacted]";

/// Headers for the record: credential values redacted (those above, and
/// the connection's credential header).
pub fn headers(h: &HeaderMap, credential_header: Option<&str>) -> Vec<[String; 2]> {
    h.iter()
        .map(|(k, v)| {
            let name = k.as_str();
            let secret = v.is_sensitive()
                || REDACTED_HEADERS.contains(&name)
                || credential_header.is_some_and(|c| c.eq_ignore_ascii_case(name));
            let value = if secret {
                REDACTED.to_string()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            [name.to_string(), value]
        })
        .collect()
}

/// A recorded body, decompressed. Bounded: a forged blob can't exhaust
/// memory.
pub fn body(blob: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = 256 << 20;
    let mut out = Vec::new();
    zstd::stream::Decoder::new(blob)?
        .take(MAX)
        .read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_arguments_and_headers_are_redacted() {
        let args: Vec<String> = [
            "curl",
            "-H",
            "Authorization: Bearer job-supplied-token-123",
            "https://api.example/x",
        ]
        .map(String::from)
        .to_vec();
        let out = redact_args(&args);
        assert_eq!(out[0], "curl");
        assert_eq!(out[3], "https://api.example/x");
        assert!(!out[2].contains("job-supplied-token-123"), "{}", out[2]);

        let mut h = HeaderMap::new();
        h.insert("cookie", "sid=abc".parse().unwrap());
        h.insert("x-partner-key", "k-123".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        let got = headers(&h, Some("X-Partner-Key"));
        let value = |n: &str| got.iter().find(|[k, _]| k == n).unwrap()[1].clone();
        assert_eq!(value("cookie"), REDACTED);
        assert_eq!(value("x-partner-key"), REDACTED);
        assert_eq!(value("accept"), "application/json");
    }
}

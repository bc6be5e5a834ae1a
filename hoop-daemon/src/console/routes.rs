//! The console's requests, and their answers. Typed refusals become the
//! browser's answer in one place ([`Refusal::answer`]); the security
//! headers are added to every answer in one place ([`harden`]).
use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};

use super::{Console, login::LoginError, page, session};
use crate::{
    approval::{ApprovalError, Caller, Decision, Event, Row},
    audit::entry::{ConsoleData, Entry},
};

pub type Body = BoxBody<Bytes, Infallible>;

const MAX_FORM: usize = 16 * 1024;
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const JS: &str = include_str!("assets/console.js");
const CSS: &str = include_str!("assets/console.css");

/// Why a request is refused: its status, a stable reason, and words.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("sign in first")]
    NotSignedIn,
    #[error("refused: {0} (CSRF protection)")]
    Csrf(&'static str),
    #[error("{0}")]
    Approval(#[from] ApprovalError),
    #[error("you are not an approver of this request")]
    NotApprover,
    #[error("{0}")]
    Login(#[from] LoginError),
    #[error("bad request: {0}")]
    Bad(String),
    #[error("not found")]
    NotFound,
    #[error("Slack callback refused: {0}")]
    Slack(#[from] super::slack::SlackRefusal),
    #[error("only [console] auditors read the recorded sessions")]
    NotAuditor,
    #[error("{0}")]
    Sessions(#[from] super::sessions::ReadError),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotSignedIn => StatusCode::UNAUTHORIZED,
            Self::Csrf(_) | Self::NotApprover => StatusCode::FORBIDDEN,
            Self::Approval(e) => match e.code() {
                "self-approval" | "no-actor" | "not-approver" => StatusCode::FORBIDDEN,
                "bad-grant" => StatusCode::BAD_REQUEST,
                "unknown-approval" => StatusCode::NOT_FOUND,
                "not-pending" => StatusCode::CONFLICT,
                "fleet-unreachable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Login(LoginError::Provider(_)) => StatusCode::BAD_GATEWAY,
            Self::Login(LoginError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Login(_) | Self::Bad(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Slack(super::slack::SlackRefusal::Unmapped(_)) => StatusCode::FORBIDDEN,
            Self::Slack(super::slack::SlackRefusal::Payload(_)) => StatusCode::BAD_REQUEST,
            Self::Slack(_) => StatusCode::UNAUTHORIZED,
            Self::NotAuditor => StatusCode::FORBIDDEN,
            Self::Sessions(super::sessions::ReadError::Unknown(_)) => StatusCode::NOT_FOUND,
            Self::Sessions(super::sessions::ReadError::Filter(_)) => StatusCode::BAD_REQUEST,
            Self::Sessions(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::NotSignedIn => "not-signed-in",
            Self::Csrf(_) => "csrf",
            Self::Approval(e) => e.code(),
            Self::NotApprover => "not-approver",
            Self::Login(e) => e.reason(),
            Self::Bad(_) => "bad-request",
            Self::NotFound => "not-found",
            Self::Slack(e) => e.reason(),
            Self::NotAuditor => "not-auditor",
            Self::Sessions(super::sessions::ReadError::Unknown(_)) => "unknown-session",
            Self::Sessions(super::sessions::ReadError::Filter(_)) => "bad-filter",
            Self::Sessions(_) => "audit-unavailable",
        }
    }

    /// JSON for the page's script, HTML for a browser's navigation.
    fn answer(&self, json: bool) -> Response<Body> {
        let (ctype, body) = if json {
            (
                "application/json",
                serde_json::json!({"error": self.to_string(), "reason": self.reason()}).to_string(),
            )
        } else {
            (
                "text/html; charset=utf-8",
                page::sign_in(Some(&self.to_string())),
            )
        };
        let mut r = respond(self.status(), ctype, body);
        r.headers_mut()
            .insert("x-hoop-reason", HeaderValue::from_static(self.reason()));
        r
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn respond(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Every answer: no caching, no framing, no sniffing, no referrer to
/// another origin, HTTPS only, and nothing but the console's own files may
/// run or load. `same-origin`, not `no-referrer`: under `no-referrer` a
/// browser sends `Origin: null` with a plain form's POST (the sign-out
/// button), which the CSRF check rightly refuses as not ours.
fn harden(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("strict-transport-security", "max-age=31536000"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

pub async fn handle(c: &Console, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let json = wants_json(&req);
    let r = match route(c, peer, req).await {
        Ok(r) => r,
        Err(e) => e.answer(json),
    };
    harden(r)
}

fn wants_json(req: &Request<Incoming>) -> bool {
    req.headers().contains_key("x-hoop-csrf")
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.starts_with("application/json"))
}

async fn route(
    c: &Console,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    // Segments are decoded after the split: an id may hold a '/' (%2F).
    let decoded: Vec<String> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["assets", "console.js"]) => Ok(asset("text/javascript", JS)),
        (&Method::GET, ["assets", "console.css"]) => Ok(asset("text/css", CSS)),
        (&Method::GET, [""]) => Ok(inbox(c, &req)),
        (&Method::GET, ["login"]) => {
            let (to, state) = c.provider.begin(&c.sessions).await?;
            let mut r = redirect(&to);
            set_cookie(&mut r, session::login_cookie(&state));
            Ok(r)
        }
        (&Method::GET, ["callback"]) => callback(c, peer, &req).await,
        (&Method::POST, ["logout"]) => {
            let (id, s, _) = signed_in_post(c, req).await?;
            c.sessions.close(&id);
            c.record("sign-out", Some(&s.person), None, "signed out".into(), peer);
            let mut r = redirect("/");
            set_cookie(&mut r, session::clear_cookie());
            Ok(r)
        }
        (&Method::GET, ["events"]) => events(c, &req),
        (&Method::GET, ["sessions"]) => sessions_list(c, &req).await,
        (&Method::GET, ["sessions", id]) => {
            let id = id.to_string();
            session_page(c, peer, &req, &id, false).await
        }
        (&Method::GET, ["sessions", id, "har"]) => {
            let id = id.to_string();
            session_page(c, peer, &req, &id, true).await
        }
        (&Method::GET, ["approvals", id, "body"]) => body(c, peer, &req, id),
        (&Method::POST, ["slack", "interactions"]) => slack(c, peer, req).await,
        (&Method::POST, ["approvals", id, verb @ ("approve" | "deny")]) => {
            let (id, verb) = (id.to_string(), verb.to_string());
            decide(c, peer, req, &id, &verb).await
        }
        _ => Err(Refusal::NotFound),
    }
}

fn asset(ctype: &'static str, text: &'static str) -> Response<Body> {
    let mut r = respond(StatusCode::OK, ctype, text);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    r
}

fn set_cookie(r: &mut Response<Body>, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The live session the request's cookie names.
fn session_of(c: &Console, req: &Request<Incoming>) -> Result<(String, session::Session), Refusal> {
    c.sessions.get(cookie(req)).ok_or(Refusal::NotSignedIn)
}

fn cookie(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
}

fn inbox(c: &Console, req: &Request<Incoming>) -> Response<Body> {
    let Some((_, s)) = c.sessions.get(cookie(req)) else {
        return respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::sign_in(None),
        );
    };
    let held = c.pending_for(&Caller::Person(s.person.clone()));
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page::inbox(&s.person, &s.csrf, &held, c.fleet_away().as_deref()),
    )
}

async fn callback(
    c: &Console,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let q: std::collections::HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let refused = |e: LoginError| {
        c.record("sign-in-refused", None, None, e.to_string(), peer);
        tracing::warn!(target: "hoop::audit", peer = %peer, reason = e.reason(), error = %e, "console sign-in refused");
        Refusal::Login(e)
    };
    // The state must be the one this browser was given at /login: a
    // callback URL from someone else's sign-in is refused (login CSRF).
    let bound = cookie(req).and_then(|h| session::cookie_value(h, session::LOGIN_COOKIE));
    let pending = q
        .get("state")
        .filter(|s| bound.is_some_and(|b| session::same(b, s)))
        .and_then(|s| c.sessions.finish(s))
        .ok_or_else(|| refused(LoginError::State))?;
    if let Some(e) = q.get("error") {
        // The provider's description is logged, not shown: anyone can send
        // a browser here with text of their choosing.
        let d = q.get("error_description").map(String::as_str).unwrap_or("");
        tracing::warn!(peer = %peer, error = %e, description = %d, "console: the provider refused a sign-in");
        let code = if e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            e.as_str()
        } else {
            "an error"
        };
        return Err(refused(LoginError::Refused(code.into())));
    }
    let code = q
        .get("code")
        .ok_or_else(|| refused(LoginError::Refused("no code".into())))?;
    let person = c.provider.finish(code, pending).await.map_err(refused)?;
    let ttl = c.cfg.session_ttl();
    let (id, _) = c
        .sessions
        .open(person.clone(), ttl)
        .ok_or_else(|| refused(LoginError::Busy))?;
    c.record(
        "sign-in",
        Some(&person),
        None,
        format!("signed in (groups: {})", person.groups.join(", ")),
        peer,
    );
    tracing::info!(target: "hoop::audit", email = person.email.as_deref().unwrap_or("-"), sub = %person.sub, "console sign-in");
    let mut r = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page::after_sign_in(),
    );
    set_cookie(&mut r, session::set_cookie(&id, ttl));
    set_cookie(&mut r, session::clear_login_cookie());
    Ok(r)
}

/// A signed-in POST that passes the CSRF checks: the session and the form.
async fn signed_in_post(
    c: &Console,
    req: Request<Incoming>,
) -> Result<(String, session::Session, Vec<(String, String)>), Refusal> {
    let (id, s) = session_of(c, &req)?;
    // A browser sends Origin on every POST; when it names another site,
    // or Fetch Metadata says cross-site, the request was not ours.
    let h = req.headers();
    if let Some(o) = h.get(header::ORIGIN)
        && o.to_str().ok().and_then(super::origin_of) != Some(c.origin.clone())
    {
        return Err(Refusal::Csrf("the request came from another origin"));
    }
    if h.get("sec-fetch-site")
        .is_some_and(|v| v != "same-origin" && v != "none")
    {
        return Err(Refusal::Csrf("the request came from another site"));
    }
    let header_token = h
        .get("x-hoop-csrf")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .map_err(|e| Refusal::Bad(format!("form: {e}")))?
        .to_bytes();
    let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
    let token = header_token.or_else(|| {
        form.iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.clone())
    });
    match token {
        Some(t) if session::same(&t, &s.csrf) => Ok((id, s, form)),
        Some(_) => Err(Refusal::Csrf("the CSRF token is wrong")),
        None => Err(Refusal::Csrf("the CSRF token is missing")),
    }
}

async fn decide(
    c: &Console,
    peer: SocketAddr,
    req: Request<Incoming>,
    id: &str,
    verb: &str,
) -> Result<Response<Body>, Refusal> {
    let json = wants_json(&req);
    let (_, s, form) = signed_in_post(c, req).await?;
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
    };
    let d = if verb == "approve" {
        let for_secs =
            match field("for").filter(|f| !f.is_empty()) {
                Some(f) => Some(f.parse::<u64>().ok().filter(|n| *n <= 86400).ok_or_else(
                    || Refusal::Bad(format!("for: {f:?} is not seconds up to a day")),
                )?),
                None => None,
            };
        Decision::Approve { for_secs }
    } else {
        let reason = field("reason").filter(|r| !r.is_empty());
        let reason = reason.ok_or_else(|| Refusal::Bad("a denial needs a reason".into()))?;
        Decision::Deny {
            reason: reason.chars().take(500).collect(),
        }
    };
    let row = c.row(id);
    match c.decide(id, &s.person, d).await {
        Ok(message) => {
            c.record(
                "decision",
                Some(&s.person),
                row.as_ref().map(|r| (id, r)),
                message.clone(),
                peer,
            );
            if json {
                Ok(respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({"message": message}).to_string(),
                ))
            } else {
                Ok(redirect("/"))
            }
        }
        Err(e) => {
            c.record(
                "refused",
                Some(&s.person),
                row.as_ref().map(|r| (id, r)),
                e.to_string(),
                peer,
            );
            Err(e.into())
        }
    }
}

/// A click on a Slack message's button, as Slack's servers relay it.
async fn slack(
    c: &Console,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let Some(s) = &c.slack else {
        return Err(Refusal::NotFound);
    };
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (ts, sig) = (
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
    );
    let body = Limited::new(req.into_body(), MAX_FORM * 4)
        .collect()
        .await
        .map_err(|e| Refusal::Bad(format!("body: {e}")))?
        .to_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let click = match s.verify(ts.as_deref(), sig.as_deref(), &body, now) {
        Ok(c) => c,
        Err(e) => {
            c.record("slack-refused", None, None, e.to_string(), peer);
            tracing::warn!(target: "hoop::audit", peer = %peer, reason = e.reason(), error = %e, "Slack callback refused");
            return Err(e.into());
        }
    };
    let id = click.approval.as_str();
    let d = match click.action.as_str() {
        crate::approval::notify::SLACK_APPROVE => Decision::Approve { for_secs: None },
        crate::approval::notify::SLACK_DENY => Decision::Deny {
            reason: "denied in Slack".into(),
        },
        other => return Err(Refusal::Bad(format!("unknown action {other:?}"))),
    };
    let row = c.row(id);
    match c.decide(id, &click.person, d).await {
        Ok(message) => {
            c.record(
                "decision",
                Some(&click.person),
                row.as_ref().map(|r| (id, r)),
                format!("{message} (in Slack)"),
                peer,
            );
            Ok(respond(
                StatusCode::OK,
                "application/json",
                serde_json::json!({"text": message}).to_string(),
            ))
        }
        Err(e) => {
            c.record(
                "refused",
                Some(&click.person),
                row.as_ref().map(|r| (id, r)),
                format!("{e} (in Slack)"),
                peer,
            );
            Err(e.into())
        }
    }
}

/// The signed-in person, if they may read the recorded sessions.
fn auditor(c: &Console, req: &Request<Incoming>) -> Result<session::Session, Refusal> {
    let (_, s) = session_of(c, req)?;
    if !c.may_read_sessions(&Caller::Person(s.person.clone())) {
        return Err(Refusal::NotAuditor);
    }
    Ok(s)
}

/// The audit log's path, for a blocking read.
fn db(c: &Console) -> Option<std::path::PathBuf> {
    c.audit.path.clone()
}

async fn sessions_list(c: &Console, req: &Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let s = auditor(c, req)?;
    let q = super::sessions::Query::parse(req.uri().query());
    let path = db(c);
    let (q, list) = tokio::task::spawn_blocking(move || {
        let list = super::sessions::list(path.as_deref(), &q);
        (q, list)
    })
    .await
    .map_err(|e| Refusal::Bad(e.to_string()))?;
    let main = super::sessions::list_html(&q, &list?);
    Ok(respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page::signed_in("hoop: recorded sessions", &s.person, &s.csrf, &main),
    ))
}

/// One session: its timeline, or (`har`) its HAR. Both are recorded.
async fn session_page(
    c: &Console,
    peer: SocketAddr,
    req: &Request<Incoming>,
    id: &str,
    har: bool,
) -> Result<Response<Body>, Refusal> {
    let s = auditor(c, req)?;
    let path = db(c);
    let sid = id.to_string();
    let recs = tokio::task::spawn_blocking(move || super::sessions::records(path.as_deref(), &sid))
        .await
        .map_err(|e| Refusal::Bad(e.to_string()))??;
    let what = if har {
        "exported as HAR"
    } else {
        "viewed the timeline"
    };
    c.record_in(
        id.into(),
        "read-session",
        Some(&s.person),
        None,
        what.into(),
        peer,
    );
    if har {
        let mut r = respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&crate::audit::har::har(&recs)).unwrap_or_default(),
        );
        let name: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.har\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
        return Ok(r);
    }
    Ok(respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page::signed_in(
            "hoop: session",
            &s.person,
            &s.csrf,
            &super::sessions::session_html(id, &recs),
        ),
    ))
}

/// A held body, for an approver of it: the view is recorded.
fn body(
    c: &Console,
    peer: SocketAddr,
    req: &Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, Refusal> {
    let (_, s) = session_of(c, req)?;
    let row = c.row(id).ok_or(Refusal::NotFound)?;
    if !c.may_decide(id, &Caller::Person(s.person.clone())) {
        c.record(
            "refused",
            Some(&s.person),
            Some((id, &row)),
            "not an approver of this held request: its body was not shown".into(),
            peer,
        );
        return Err(Refusal::NotApprover);
    }
    c.record(
        "view",
        Some(&s.person),
        Some((id, &row)),
        format!(
            "viewed the held body (sha256 {})",
            row.body_sha256.as_deref().unwrap_or("-")
        ),
        peer,
    );
    Ok(respond(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        row.body.unwrap_or_default(),
    ))
}

/// Server-sent events: held requests this person may decide, and the
/// decisions on them, as they happen. Ends when the session does.
fn events(c: &Console, req: &Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let (sid, s) = session_of(c, req)?;
    let caller = Caller::Person(s.person.clone());
    // Subscribe first, then take the snapshot: a request held while the
    // page loaded is in one or the other (the page ignores an id twice),
    // and one decided meanwhile drops out of the page on `synced`.
    let rx = c.approvals.subscribe();
    let pending = c.pending_for(&caller);
    let ids: Vec<&str> = pending.iter().map(|r| r.id.as_str()).collect();
    let mut first: Vec<Result<Frame<Bytes>, Infallible>> = pending
        .iter()
        .map(|r| {
            Ok(Frame::data(Bytes::from(sse(
                "held",
                r,
                page::held_item(r, &s.csrf),
            ))))
        })
        .collect();
    first.push(Ok(Frame::data(Bytes::from(format!(
        "event: synced\ndata: {}\n\n",
        serde_json::json!({ "pending": ids })
    )))));
    let csrf = s.csrf.clone();
    let sessions = c.sessions.clone();
    let cookie_header = format!("{}={sid}", session::COOKIE);
    let ping = tokio::time::interval(Duration::from_secs(15));
    let stream =
        futures_util::stream::unfold((rx, ping, false), move |(mut rx, mut ping, done)| {
            let caller = caller.clone();
            let csrf = csrf.clone();
            let sessions = sessions.clone();
            let cookie_header = cookie_header.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let frame = tokio::select! {
                        ev = rx.recv() => match ev {
                            Ok(Event::Held(row, rule)) if rule.admits(&caller) => {
                                sse("held", &row, page::held_item(&row, &csrf))
                            }
                            Ok(Event::Decided(row, rule)) if rule.admits(&caller) => {
                                sse("decided", &row, page::decided_item(&row))
                            }
                            Ok(_) => continue,
                            // Fell behind: the page reloads to catch up.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                "event: signed-out\ndata: {}\n\n".to_string()
                            }
                            Err(_) => return None,
                        },
                        _ = ping.tick() => ": ping\n\n".to_string(),
                    };
                    if sessions.get(Some(&cookie_header)).is_none() {
                        let end = Frame::data(Bytes::from("event: signed-out\ndata: {}\n\n"));
                        return Some((Ok::<_, Infallible>(end), (rx, ping, true)));
                    }
                    return Some((Ok(Frame::data(Bytes::from(frame))), (rx, ping, false)));
                }
            }
        });
    let stream = futures_util::stream::iter(first).chain(stream);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    Ok(r)
}

fn sse(event: &str, row: &Row, html: String) -> String {
    let data = serde_json::json!({"id": row.id, "status": row.status, "html": html});
    format!("event: {event}\ndata: {data}\n\n")
}

impl Console {
    /// An audit record of what a person did here, in the session of the
    /// held request it concerns.
    fn record(
        &self,
        event: &str,
        person: Option<&crate::approval::Person>,
        approval: Option<(&str, &Row)>,
        detail: String,
        peer: SocketAddr,
    ) {
        let session = approval
            .and_then(|(_, r)| r.job.clone())
            .unwrap_or_default();
        let id = approval.map(|(id, _)| id);
        self.record_in(session, event, person, id, detail, peer);
    }

    /// An audit record of what a person did here, in `session`.
    fn record_in(
        &self,
        session: String,
        event: &str,
        person: Option<&crate::approval::Person>,
        approval: Option<&str>,
        detail: String,
        peer: SocketAddr,
    ) {
        self.audit.record(Entry::of(&ConsoleData {
            session,
            event: event.into(),
            issuer: person.map(|p| p.issuer.clone()),
            sub: person.map(|p| p.sub.clone()),
            email: person.and_then(|p| p.email.clone()),
            approval: approval.map(str::to_string),
            detail,
            peer: peer.to_string(),
        }));
    }
}

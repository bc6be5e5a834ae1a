//! HTTP toward the job (hyper server, h1 or h2) and the forward of each
//! request through the phases to the upstream.
use std::{convert::Infallible, sync::Arc};

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::policy::phases::{Decision, RequestView, ResponsePlan};

use super::{
    Gateway, PipelineError, authority,
    body::{Body, Observed, boxed},
    error::respond_to,
    headers::strip_hop_by_hop,
    record::{Exchange, response_headers, wants_json},
    timeouts::{Expired, Timeouts, Watch},
    upgrade,
    upstream::UpstreamConn,
    websocket,
};
use crate::{
    audit::{
        Entry,
        entry::{ApprovalData, Origin},
    },
    flow::Flow,
    policy::Connection,
};

/// What the job's connection to us is.
pub enum Tls {
    Plain,
    /// TLS for `name` (SNI, or the original IP), which the upstream proved;
    /// `route` is the connection policy chose for it.
    Verified {
        name: String,
        route: Option<Arc<Connection>>,
    },
}

struct Conn {
    gw: Arc<Gateway>,
    flow: Arc<Flow>,
    /// Who and where, for every request's record: the same for the whole
    /// connection, so built once (cloning it per request showed up in the
    /// profile).
    origin: Arc<Origin>,
    up: UpstreamConn,
    tls: Tls,
    /// Why the upstream can't be reached, if the predial already failed.
    broken: Option<PipelineError>,
}

impl Conn {
    fn new(
        gw: Arc<Gateway>,
        flow: Arc<Flow>,
        up: UpstreamConn,
        tls: Tls,
        broken: Option<PipelineError>,
    ) -> Arc<Self> {
        Arc::new(Self {
            gw,
            origin: Arc::new(Origin::of(&flow)),
            flow,
            up,
            tls,
            broken,
        })
    }

    fn scheme(&self) -> &'static str {
        match self.tls {
            Tls::Plain => "http",
            Tls::Verified { .. } => "https",
        }
    }
}

/// Forwards one absolute-URI request from the explicit proxy (plain HTTP).
pub async fn forward_plain(
    gw: Arc<Gateway>,
    flow: Arc<Flow>,
    req: Request<Incoming>,
) -> Response<Body> {
    let up = UpstreamConn::new(flow.orig_dst, None, gw.limits());
    handle(Conn::new(gw, flow, up, Tls::Plain, None), req).await
}

pub async fn serve<IO>(
    gw: Arc<Gateway>,
    io: IO,
    flow: Arc<Flow>,
    up: UpstreamConn,
    h2: bool,
    tls: Tls,
    broken: Option<PipelineError>,
) -> Result<(), PipelineError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let t = Timeouts::of(&gw.cfg);
    let conn = Conn::new(gw, flow, up, tls, broken);
    let watch = Watch::new(!h2);
    let svc = {
        let (conn, watch) = (conn.clone(), watch.clone());
        service_fn(move |req| {
            let conn = conn.clone();
            // In flight from its head to the end of its response body.
            let active = watch.enter();
            async move {
                // Boxed: hyper's HTTP/2 server spawns a task per stream,
                // and moving this large future into it by value was a
                // visible memcpy per request in the profile.
                let resp = Box::pin(handle(conn, req)).await;
                Ok::<_, Infallible>(resp.map(|b| active.hold(b)))
            }
        })
    };
    let release = || conn.up.release();
    // hyper serves; the watch ends it when a time limit passes. An idle
    // connection is asked to close (HTTP/2: GOAWAY) and given a moment.
    macro_rules! watched {
        ($c:expr) => {{
            let c = $c;
            tokio::pin!(c);
            tokio::select! {
                r = c.as_mut() => Ok(r),
                e = watch.expired(t, release) => match e {
                    Expired::Idle => {
                        c.as_mut().graceful_shutdown();
                        tokio::time::timeout(super::timeouts::GRACE, c)
                            .await
                            .map_err(|_| Expired::Idle)
                    }
                    e => Err(e),
                },
            }
        }};
    }
    let r = if h2 {
        watched!(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(watch.io(io)), svc)
        )
    } else {
        watched!(
            hyper::server::conn::http1::Builder::new()
                .preserve_header_case(false)
                .serve_connection(TokioIo::new(super::linger::Linger::new(watch.io(io))), svc,)
                .with_upgrades()
        )
    };
    match r {
        Ok(r) => r.map_err(|e| job_side(&e)),
        Err(Expired::Head) => Err(PipelineError::HeaderTimeout {
            ms: t.header_read.as_millis() as u64,
        }),
        // Idle, and asked to close: not a refusal.
        Err(Expired::Idle) => Ok(()),
    }
}

/// A job-side HTTP failure, with hyper's whole chain of causes. The job
/// hanging up (browsers drop spare connections they opened ahead of need,
/// and a browser that exits ends TLS without close_notify, an unexpected
/// EOF) is `JobClosed`; not when hyper failed on our side of the exchange
/// (a body we were sending broke), which is no sign of the job leaving.
fn job_side(e: &hyper::Error) -> PipelineError {
    let chain = std::iter::successors(std::error::Error::source(e), |s| s.source());
    let mut detail = format!("job-side HTTP: {e}");
    // The job closed in the middle of a request it was sending.
    let mut closed = e.is_incomplete_message();
    for s in chain {
        detail += &format!(": {s}");
        closed |= !e.is_user()
            && s.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                )
            });
    }
    if closed {
        PipelineError::JobClosed { detail }
    } else {
        PipelineError::BadRequest { detail }
    }
}

/// The job's request body, read to its end even when hoop answers first.
type JobBody = super::linger::Drain<Incoming>;

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let req = req.map(|b| JobBody::new(b, expects_continue));
    let json = wants_json(&req);
    let sni = match &conn.tls {
        Tls::Verified { name, .. } => Some(name.as_str()),
        Tls::Plain => None,
    };
    let audit = &conn.gw.audit;
    let target = target_of(&conn, &req);
    let port = conn.flow.orig_dst.port();
    // A request whose host can't be read one way only is recorded under
    // the connection's own name, and refused.
    let authority = match &target {
        Ok(t) => t.authority(port, sni.is_some()),
        Err(_) => fallback(&conn),
    };
    let route = match target {
        Ok(t) => route_for(&conn, &t.host).await,
        Err(e) => Err(e),
    };
    let mut x = Exchange::new(
        &conn.gw,
        conn.origin.clone(),
        &req,
        conn.scheme(),
        &authority,
        sni,
        route.as_deref().ok(),
    );
    let route = match route {
        Ok(r) => r,
        Err(e) => {
            // Refused before it had a connection to go through.
            x.failed(&e);
            return respond_to(&e, json);
        }
    };
    let result = match forward(&conn, &route, req, &authority, &mut x).await {
        Ok(resp) => response_phases(&conn, &route, resp).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((parts, body, transform, masked)) => {
            let headers = response_headers(audit, &parts.headers);
            let status = parts.status;
            let observed = Observed::new(body, transform, x.cap, move |t| {
                let reason = (!t.ok).then_some("response-body-incomplete");
                x.responded(Some(status), reason, headers, masked, t);
            });
            Response::from_parts(parts, boxed(observed))
        }
        Err(e) => {
            x.failed(&e);
            respond_to(&e, json)
        }
    }
}

type Phased = (
    http::response::Parts,
    Body,
    Option<Box<dyn crate::policy::phases::BodyTransform>>,
    crate::policy::mask::Counts,
);

/// The response phases: the head, then the body streamed or, when policy
/// must see it whole (masking), buffered up to a limit first.
async fn response_phases(
    conn: &Conn,
    route: &Connection,
    resp: Response<Body>,
) -> Result<Phased, PipelineError> {
    let phases = &conn.gw.phases;
    let (mut parts, mut body) = resp.into_parts();
    let plan = phases.on_response_head(&conn.flow, route, &mut parts)?;
    // What the head phase masked, for the record.
    let mut masked = parts
        .extensions
        .remove::<crate::policy::mask::Counts>()
        .unwrap_or_default();
    let limit = match plan {
        ResponsePlan::Stream(t) => return Ok((parts, body, t, masked)),
        ResponsePlan::Buffer { limit } => limit,
    };
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PipelineError::UpstreamProtocol {
            detail: format!("response body: {e}"),
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: nothing to mask, and a whole body has none
        };
        buf.extend_from_slice(&data);
        if buf.len() > limit {
            let t = phases.on_response_overflow(&conn.flow, route, &mut parts)?;
            let body = super::body::prefixed(buf.freeze(), body);
            return Ok((parts, body, t, masked));
        }
    }
    let (out, body_masked) =
        phases.on_response_body(&conn.flow, route, &mut parts, buf.freeze())?;
    masked.merge(body_masked);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, out.len().into());
    Ok((parts, super::body::full(out), None, masked))
}

/// Who started the job, per its token's claim that `[console]
/// job_actor_claim` names (mapped through `[console] job_actors` when the
/// claim is a login): that person can't approve its requests.
fn job_actor(conn: &Conn) -> Option<String> {
    let claims = &conn.flow.identity.as_deref()?.claims;
    conn.gw.cfg.console.job_actor(claims)
}

/// Waits for a human's decision on this request, and records it.
async fn hold(
    conn: &Conn,
    route: &Connection,
    rule: Arc<crate::approval::ApprovalRule>,
    x: &mut Exchange,
    body: Option<(&http::request::Parts, &bytes::Bytes)>,
) -> Result<(), PipelineError> {
    use crate::approval::{Hold, Outcome};
    let flow = &conn.flow;
    // The job's uids can't approve: who started it, and who asked.
    let mut uids: Vec<u32> = flow.job.iter().map(|j| j.uid).collect();
    if let Some(u) = process_uid(flow.pid) {
        uids.push(u);
    }
    let denied = |status: StatusCode, message: String| PipelineError::Denied {
        rule: rule.name.clone(),
        status,
        message,
    };
    let (body_sha256, shown) = match body {
        Some((parts, b)) => (Some(sha256_hex(b)), Some(shown_body(route, parts, b))),
        None => (None, None),
    };
    let waited = std::time::Instant::now();
    let (id, outcome) = conn
        .gw
        .approvals
        .hold(Hold {
            rule: rule.clone(),
            connection: route.name.clone(),
            job: flow.job_id().map(str::to_owned),
            identity: flow.identity_name().to_string(),
            uids,
            method: x.data.method.clone(),
            url: x.data.url.clone(),
            body_sha256: body_sha256.clone(),
            body: shown,
            actor: job_actor(conn),
            actor_claim: conn.gw.cfg.console.job_actor_claim.clone(),
            context: crate::approval::Context {
                claims: flow
                    .identity
                    .as_deref()
                    .map(|i| (*i.claims).clone())
                    .unwrap_or_default(),
                command: flow
                    .job
                    .as_deref()
                    .map(|j| crate::audit::entry::redact_args(&j.command).join(" ")),
                message: rule.message.clone(),
            },
        })
        .await;
    let (name, by, reason) = match &outcome {
        Outcome::Approved { by } => ("approved", Some(by.clone()), None),
        Outcome::Denied { by, reason } => ("denied", Some(by.clone()), Some(reason.clone())),
        Outcome::Expired => ("expired", None, None),
        Outcome::Abandoned => ("abandoned", None, None),
    };
    conn.gw.audit.record(Entry::of(&ApprovalData {
        session: x.data.origin.session.clone(),
        id: id.clone(),
        rule: rule.name.clone(),
        connection: route.name.clone(),
        method: x.data.method.clone(),
        url: x.data.url.clone(),
        outcome: name.into(),
        by,
        reason,
        waited_ms: waited.elapsed().as_millis() as u64,
        body_sha256,
    }));
    match outcome {
        Outcome::Approved { by } => {
            x.data.decision = "approved".into();
            x.data.approval = Some(id.unwrap_or(by));
            Ok(())
        }
        Outcome::Denied { by, reason } => Err(denied(
            StatusCode::FORBIDDEN,
            format!("approval denied by {by}: {reason}"),
        )),
        Outcome::Expired => Err(denied(
            StatusCode::FORBIDDEN,
            format!(
                "approval expired: nobody approved within {} s",
                rule.timeout.as_secs()
            ),
        )),
        Outcome::Abandoned => Err(denied(
            StatusCode::SERVICE_UNAVAILABLE,
            "approval abandoned: the daemon is stopping".into(),
        )),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

/// What an approver sees of a held body: the first 4 KiB as text, masked
/// as the connection masks (a body its masking can't read is not shown).
fn shown_body(route: &Connection, parts: &http::request::Parts, b: &[u8]) -> String {
    const SHOWN: usize = 4096;
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let masked = match &route.guard.mask {
        Some(m) => match m.mask_body(ctype, b, &mut Default::default()) {
            Ok(out) => out,
            Err(e) => return format!("[not shown: {e}]"),
        },
        None => None,
    };
    let b = masked.as_deref().unwrap_or(b);
    let mut text = String::from_utf8_lossy(&b[..b.len().min(SHOWN)]).into_owned();
    if b.len() > SHOWN {
        text.push_str(&format!("… ({} bytes in all)", b.len()));
    }
    text
}

fn process_uid(pid: u32) -> Option<u32> {
    if pid == 0 {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The connection this request goes through. Over TLS it was chosen at the
/// handshake, for the name the upstream proved, and the request must be for
/// that same host (anything else is domain fronting around the policy).
/// Over plaintext the request names its host, which must be where the
/// connection really goes.
async fn route_for(conn: &Conn, host: &str) -> Result<Arc<Connection>, PipelineError> {
    if let Some(e) = &conn.broken
        && !matches!(
            e,
            PipelineError::UpstreamConnect { .. }
                | PipelineError::UpstreamConnectTimeout { .. }
                | PipelineError::UpstreamCertificate { .. }
                | PipelineError::UpstreamTls { .. }
        )
    {
        // Policy refused at the handshake: say so for every request.
        return Err(e.clone());
    }
    let dst = conn.flow.orig_dst;
    match &conn.tls {
        Tls::Verified { name, route } => {
            if !same_host(host, name) {
                return Err(PipelineError::Misdirected {
                    detail: format!("request for {host} on a TLS connection to {name}"),
                });
            }
            // Through a proxy tunnel, the TLS name is the tunnel's target.
            if let Some(t) = &conn.flow.target_host
                && !same_host(t, name)
            {
                return Err(PipelineError::Misdirected {
                    detail: format!("TLS for {name} through a tunnel to {t}"),
                });
            }
            match route {
                // Observe mode is bounded in time and by the policy in
                // force, not by how long a connection stays open: asked
                // again for every request.
                Some(r) if r.observed.is_some() => observed_again(&conn.gw, &conn.flow, name, r),
                Some(r) => Ok(r.clone()),
                None => conn.gw.route(&conn.flow, name, dst.port()),
            }
        }
        Tls::Plain => {
            let checked = match &conn.flow.target_host {
                // A proxy target hoop resolved itself.
                Some(t) if same_host(host, t) => t.clone(),
                Some(t) => {
                    return Err(PipelineError::Misdirected {
                        detail: format!("request for {host} through a tunnel to {t}"),
                    });
                }
                None => verify_plain_host(host, dst).await?,
            };
            let route = conn.gw.route(&conn.flow, &checked, dst.port())?;
            if route.credential.is_some() {
                return Err(PipelineError::CredentialNeedsTls {
                    connection: route.name.clone(),
                });
            }
            Ok(route)
        }
    }
}

/// Observe mode is bounded in time and by the policy in force, not by how
/// long a connection (or a WebSocket on it) stays open: an observed route
/// is asked again for every request. Ended: the refusal; a connection
/// covers the host now, or other upstream trust applies: a new handshake
/// is needed (the upstream was verified with `was`'s trust).
fn observed_again(
    gw: &Gateway,
    flow: &Flow,
    host: &str,
    was: &Connection,
) -> Result<Arc<Connection>, PipelineError> {
    let now = gw.route(flow, host, flow.orig_dst.port())?;
    let same_trust = match (&was.guard.upstream_tls, &now.guard.upstream_tls) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    if now.observed.is_none() || !same_trust {
        return Err(PipelineError::Misdirected {
            detail: format!("the policy for {host} changed: reconnect"),
        });
    }
    Ok(now)
}

/// Plaintext to an address the job chose: the Host it names must resolve
/// to that address, or the job could borrow another host's policy.
async fn verify_plain_host(host: &str, dst: std::net::SocketAddr) -> Result<String, PipelineError> {
    let bare = crate::addr::unbracket(host);
    if let Some(ip) = crate::addr::ip_literal(bare) {
        return if crate::addr::same_ip(ip, dst.ip()) {
            Ok(ip.to_string())
        } else {
            Err(PipelineError::Misdirected {
                detail: format!("Host {host} is not the destination {}", dst.ip()),
            })
        };
    }
    let found = tokio::net::lookup_host((bare, dst.port()))
        .await
        .map(|a| a.map(|a| a.ip()).collect::<Vec<_>>())
        .unwrap_or_default();
    if found.iter().any(|ip| crate::addr::same_ip(*ip, dst.ip())) {
        Ok(bare.to_ascii_lowercase())
    } else {
        Err(PipelineError::Misdirected {
            detail: format!(
                "Host {host} does not resolve to the destination {}",
                dst.ip()
            ),
        })
    }
}

/// The host part of an authority (`h`, `h:port`, `[v6]:port`).
pub(super) fn host_of(authority: &str) -> String {
    let a = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    if a.matches(':').count() > 1 {
        return a.to_string();
    }
    a.split(':').next().unwrap_or("").to_string()
}

fn same_host(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = crate::addr::unbracket(s.trim_end_matches('.'));
        match crate::addr::ip_literal(s) {
            Some(ip) => ip.to_string(),
            None => s.to_ascii_lowercase(),
        }
    };
    norm(a) == norm(b)
}

/// The one host and port the request is for (see [`super::authority`]).
fn target_of(conn: &Conn, req: &Request<JobBody>) -> Result<authority::Target, PipelineError> {
    authority::canonical(&authority::Sent {
        uri: req.uri(),
        headers: req.headers(),
        tls: matches!(conn.tls, Tls::Verified { .. }),
        port: conn.flow.orig_dst.port(),
        fallback: &fallback(conn),
    })
}

/// What a request that names no host is for: the TLS name, else the
/// proxy target, else the destination address.
fn fallback(conn: &Conn) -> String {
    let port = conn.flow.orig_dst.port();
    match (&conn.tls, &conn.flow.target_host) {
        (Tls::Verified { name, .. }, _) => authority::Target {
            host: name.clone(),
            port: None,
        }
        .authority(port, true),
        (Tls::Plain, Some(h)) => format!("{h}:{port}"),
        (Tls::Plain, None) => conn.flow.orig_dst.to_string(),
    }
}

async fn forward(
    conn: &Conn,
    route: &Arc<Connection>,
    mut req: Request<JobBody>,
    authority: &str,
    x: &mut Exchange,
) -> Result<Response<Body>, PipelineError> {
    if let Some(e) = &conn.broken {
        return Err(e.clone());
    }
    let codings = super::headers::extra_transfer_codings(req.headers());
    if !codings.is_empty() {
        return Err(PipelineError::BadRequest {
            detail: format!(
                "the request's body has transfer coding {codings:?}, which hoop does not accept (only chunked)"
            ),
        });
    }
    // Only a WebSocket may switch protocols, and no tunnel opens.
    let ws = upgrade::check(
        req.method(),
        req.version(),
        req.headers(),
        req.extensions().get::<hyper::ext::Protocol>().is_some(),
    )?;
    let view = RequestView {
        flow: &conn.flow,
        connection: route,
        method: req.method(),
        scheme: conn.scheme(),
        authority,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let inspect = match conn.gw.phases.on_request(&view) {
        Decision::Allow => None,
        Decision::Deny(r) => return Err(r.into()),
        Decision::InspectBody { limit } => Some(limit),
        Decision::Hold(rule) => {
            hold(conn, route, rule, x, None).await?;
            None
        }
    };
    let job_upgrade = ws.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let body = match inspect {
        None => boxed(body),
        Some(limit) => {
            // A rule needs the body: buffer it (bounded), decide, forward it.
            let bytes = http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| PipelineError::Denied {
                    rule: "request-body-inspection".into(),
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!(
                        "a guardrail must read this request's body, which is unreadable or over {limit} bytes ({e})"
                    ),
                })?
                .to_bytes();
            x.inspected = Some(bytes.clone());
            match conn
                .gw
                .phases
                .on_request_body(&conn.flow, route, &parts, bytes.clone())
            {
                Decision::Deny(r) => return Err(r.into()),
                // Exactly these bytes go upstream if approved.
                Decision::Hold(rule) => hold(conn, route, rule, x, Some((&parts, &bytes))).await?,
                _ => {}
            }
            super::body::full(bytes)
        }
    };
    // Durable before forward: nothing goes up unrecorded.
    x.commit().await?;
    x.req_body.lock().unwrap().cap = x.cap;
    let body = boxed(super::body::Tee::new(body, x.req_body.clone()));
    strip_hop_by_hop(&mut parts.headers, ws.is_some());
    if ws.is_some() {
        upgrade::prepare_request(&mut parts.headers);
    }
    conn.gw
        .phases
        .before_upstream(&conn.flow, route, &mut parts);
    let mut resp = conn
        .up
        .send(Request::from_parts(parts, body), authority)
        .await?;

    upgrade::check_switch(ws.as_ref(), resp.status(), resp.headers())?;
    if let Some(job_upgrade) = job_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        // Both sides switched to a WebSocket: every message from now on is
        // parsed, checked and recorded (websocket/), never copied raw.
        let up_upgrade = hyper::upgrade::on(&mut resp);
        // Observed: asked again as it runs, like every request on the
        // connection.
        let stands = route.observed.is_some().then(|| {
            let (gw, flow, host, was) = (
                conn.gw.clone(),
                conn.flow.clone(),
                x.data.host.clone(),
                route.clone(),
            );
            Box::new(move || {
                observed_again(&gw, &flow, &host, &was)
                    .err()
                    .map(|e| e.to_string())
            }) as websocket::Stands
        });
        tokio::spawn(websocket::run(
            job_upgrade,
            up_upgrade,
            route.clone(),
            conn.flow.clone(),
            websocket::Recorder::new(x),
            stands,
        ));
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, boxed(body)));
    }
    let (mut parts, body) = resp.into_parts();
    let codings = super::headers::extra_transfer_codings(&parts.headers);
    if !codings.is_empty() {
        // Forwarded as plain, the body would reach the job unchecked by
        // the canary and masking, and garbled for the job besides.
        return Err(PipelineError::UpstreamProtocol {
            detail: format!(
                "the upstream's response has transfer coding {codings:?}, which hoop did not offer (TE: trailers)"
            ),
        });
    }
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, boxed(body)))
}

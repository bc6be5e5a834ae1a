//! HTTP toward the job (hyper server, h1 or h2) and the forward of each
//! request through the phases to the upstream.
use std::{convert::Infallible, sync::Arc, time::Instant};

use http::{Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    Gateway, PipelineError,
    body::{Body, Observed, boxed},
    error::respond,
    headers::{is_upgrade, strip_hop_by_hop},
    phases::{Decision, ExchangeRecord, RequestView},
    upstream::UpstreamConn,
};
use crate::flow::Flow;

struct Conn {
    gw: Arc<Gateway>,
    flow: Arc<Flow>,
    up: UpstreamConn,
    scheme: &'static str,
    /// Why the upstream can't be reached, if the predial already failed.
    broken: Option<PipelineError>,
}

/// Forwards one absolute-URI request from the explicit proxy (plain HTTP).
pub async fn forward_plain(
    gw: Arc<Gateway>,
    flow: Arc<Flow>,
    req: Request<Incoming>,
) -> Response<Body> {
    let up = UpstreamConn::new(flow.orig_dst, None, gw.limits());
    handle(
        Arc::new(Conn {
            gw,
            flow,
            up,
            scheme: "http",
            broken: None,
        }),
        req,
    )
    .await
}

pub async fn serve<IO>(
    gw: Arc<Gateway>,
    io: IO,
    flow: Arc<Flow>,
    up: UpstreamConn,
    h2: bool,
    scheme: &'static str,
    broken: Option<PipelineError>,
) -> Result<(), PipelineError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        gw,
        flow,
        up,
        scheme,
        broken,
    });
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(conn, req).await) }
    });
    let io = TokioIo::new(io);
    let r = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .preserve_header_case(false)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    r.map_err(|e| PipelineError::BadRequest {
        detail: format!("job-side HTTP: {e}"),
    })
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let authority = authority_of(&conn, &req);
    let record =
        |status: Option<StatusCode>, reason: Option<&'static str>, bytes: u64| ExchangeRecord {
            flow_id: conn.flow.id,
            job: conn.flow.job_id().map(str::to_owned),
            orig_dst: conn.flow.orig_dst,
            method: method.clone(),
            scheme: conn.scheme.to_string(),
            authority: authority.clone(),
            path: path.clone(),
            status,
            reason,
            response_bytes: bytes,
            duration: started.elapsed(),
        };
    match forward(&conn, req, &authority).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            let transform = conn.gw.phases.on_response_head(&conn.flow, &mut parts);
            let (phases, rec) = (conn.gw.phases.clone(), record(Some(parts.status), None, 0));
            let observed = Observed::new(boxed(body), transform, move |bytes, ok| {
                let reason = (!ok).then_some("response-body-incomplete");
                phases.on_exchange_done(ExchangeRecord {
                    response_bytes: bytes,
                    reason,
                    duration: started.elapsed(),
                    ..rec
                });
            });
            Response::from_parts(parts, boxed(observed))
        }
        Err(e) => {
            tracing::warn!(flow = conn.flow.id, error = %e, reason = e.reason(), "request failed");
            conn.gw
                .phases
                .on_exchange_done(record(Some(e.status()), Some(e.reason()), 0));
            respond(&e)
        }
    }
}

/// The authority the job addressed: the h2 :authority or Host header, else
/// the proxy target or original destination.
fn authority_of(conn: &Conn, req: &Request<Incoming>) -> String {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| match &conn.flow.target_host {
            Some(h) => format!("{h}:{}", conn.flow.orig_dst.port()),
            None => conn.flow.orig_dst.to_string(),
        })
}

async fn forward(
    conn: &Conn,
    mut req: Request<Incoming>,
    authority: &str,
) -> Result<Response<Body>, PipelineError> {
    if let Some(e) = &conn.broken {
        return Err(e.clone());
    }
    let path = req.uri().path().to_string();
    let view = RequestView {
        flow: &conn.flow,
        method: req.method(),
        scheme: conn.scheme,
        authority,
        path: &path,
        headers: req.headers(),
    };
    if let Decision::Deny(e) = conn.gw.phases.on_request(&view) {
        return Err(e);
    }
    let upgrade = req.version() <= http::Version::HTTP_11 && is_upgrade(req.headers());
    let job_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    conn.gw.phases.before_upstream(&conn.flow, &mut parts);
    let mut resp = conn
        .up
        .send(Request::from_parts(parts, boxed(body)), authority)
        .await?;

    if let Some(job_upgrade) = job_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let up_upgrade = hyper::upgrade::on(&mut resp);
        let flow = conn.flow.id;
        tokio::spawn(async move {
            match tokio::try_join!(job_upgrade, up_upgrade) {
                Ok((j, u)) => {
                    let (mut j, mut u) = (TokioIo::new(j), TokioIo::new(u));
                    match tokio::io::copy_bidirectional(&mut j, &mut u).await {
                        Ok((up, down)) => {
                            tracing::debug!(flow, up, down, "upgraded connection closed")
                        }
                        Err(e) => tracing::debug!(flow, error = %e, "upgraded connection failed"),
                    }
                }
                Err(e) => tracing::warn!(flow, error = %e, "upgrade failed"),
            }
        });
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, boxed(body)));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, boxed(body)))
}

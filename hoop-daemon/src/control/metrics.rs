//! The Prometheus endpoint, on a loopback address when `[metrics] listen`
//! is set: the data path's counters, with gauges read at scrape time.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use http::{Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

use crate::{
    metrics::{Gauges, Outcome},
    pipeline::Gateway,
};

/// The totals `hoop status` shows.
pub fn traffic(gw: &Gateway) -> super::Traffic {
    let m = &gw.metrics;
    let t = &m.totals;
    super::Traffic {
        connections: m.connections.get(),
        requests: Outcome::ALL
            .iter()
            .zip(&t.requests)
            .map(|(o, n)| (o.as_str().to_string(), n.load(Relaxed)))
            .collect(),
        upstream_errors: t.upstream_errors.load(Relaxed),
        masked: t.masked.load(Relaxed),
        approvals_pending: pending(gw),
    }
}

fn gauges(gw: &Gateway) -> Gauges {
    let st = &gw.audit.stats;
    Gauges {
        approvals_pending: pending(gw),
        audit_queue: st.queued.load(Relaxed),
        audit_last_commit_us: st.last_commit_us.load(Relaxed),
        audit_records: st.records.load(Relaxed),
        audit_failures: st.failures.load(Relaxed),
    }
}

fn pending(gw: &Gateway) -> u64 {
    gw.approvals
        .list()
        .map(|rows| rows.iter().filter(|r| r.status == "pending").count() as u64)
        .unwrap_or(0)
}

/// Serves `GET /metrics` on `addr` until the daemon exits.
pub async fn serve(addr: SocketAddr, gw: Arc<Gateway>) -> std::io::Result<()> {
    let l = crate::addr::bind("metrics", addr).await?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let gw = gw.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let gw = gw.clone();
                    async move {
                        let (status, body) = if req.uri().path() == "/metrics" {
                            (StatusCode::OK, gw.metrics.render(&gauges(&gw)))
                        } else {
                            (StatusCode::NOT_FOUND, "try /metrics\n".to_string())
                        };
                        Response::builder()
                            .status(status)
                            .header(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(crate::pipeline::body::full(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(())
}

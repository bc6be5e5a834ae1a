//! The transparent listener. Every TCP connect of a job arrives here; the
//! kernel record tells where it was going and who made it. For now the
//! connection is spliced to its original destination; the TLS/HTTP pipeline
//! takes over this spot next.
use std::{io, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};

use crate::{
    capture::{Capture, CapturedOrigin, is_own_listener},
    config::Config,
    jobs::{Job, Jobs, LiveConnection},
};

/// One captured connection, as the rest of the daemon sees it.
#[derive(Debug, Clone)]
pub struct Flow {
    pub orig_dst: SocketAddr,
    pub peer: SocketAddr,
    pub pid: u32,
    pub cgroup_id: u64,
    pub exe: Option<PathBuf>,
    pub job: Option<Arc<Job>>,
}

/// Why a connection was closed without being served.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no capture record for peer {0}: not a redirected job connection")]
    NoRecord(SocketAddr),
    #[error("destination {0} is the daemon's own listener")]
    Loop(SocketAddr),
    #[error("cannot read capture record: {0}")]
    Map(io::Error),
}

pub struct Listeners {
    pub v4: TcpListener,
    pub v6: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let c = &cfg.capture;
        let a4 = SocketAddr::from((c.listen4, c.listen_port));
        let v4 = TcpListener::bind(a4)
            .await
            .with_context(|| format!("binding the transparent listener {a4}"))?;
        let a6 = SocketAddr::from((c.listen6, c.listen_port));
        // A host without IPv6 still serves IPv4 jobs; v6 connects then fail
        // (refused), which is closed, not open.
        let v6 = match TcpListener::bind(a6).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(addr = %a6, error = %e, "no IPv6 transparent listener; IPv6 connects of jobs will be refused");
                None
            }
        };
        Ok(Self { v4, v6 })
    }
}

pub fn spawn(listeners: Listeners, cfg: Arc<Config>, capture: Arc<Capture>, jobs: Arc<Jobs>) {
    for l in std::iter::once(listeners.v4).chain(listeners.v6) {
        let (cfg, capture, jobs) = (cfg.clone(), capture.clone(), jobs.clone());
        tokio::spawn(async move { accept_loop(l, cfg, capture, jobs).await });
    }
}

async fn accept_loop(l: TcpListener, cfg: Arc<Config>, capture: Arc<Capture>, jobs: Arc<Jobs>) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match classify(&cfg, &capture, &jobs, peer) {
            Ok(flow) => {
                let (cfg, jobs) = (cfg.clone(), jobs.clone());
                tokio::spawn(async move { serve(stream, flow, cfg, jobs).await });
            }
            Err(why) => {
                tracing::warn!(peer = %peer, reason = %why, "refused connection");
                drop(stream);
            }
        }
    }
}

/// Turns an accepted peer address into a [`Flow`] using the kernel record.
fn classify(
    cfg: &Config,
    capture: &Capture,
    jobs: &Jobs,
    peer: SocketAddr,
) -> Result<Flow, Refused> {
    let CapturedOrigin {
        dst,
        pid,
        cgroup_id,
    } = capture
        .take_origin(peer)
        .map_err(Refused::Map)?
        .ok_or(Refused::NoRecord(peer))?;
    if is_own_listener(cfg, dst) {
        return Err(Refused::Loop(dst));
    }
    Ok(Flow {
        orig_dst: dst,
        peer,
        pid,
        cgroup_id,
        exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
        job: jobs.by_cgroup(cgroup_id),
    })
}

async fn serve(job_side: TcpStream, flow: Flow, cfg: Arc<Config>, jobs: Arc<Jobs>) {
    let job_id = flow.job.as_ref().map(|j| j.id.clone());
    let exe = flow.exe.as_ref().map(|p| p.display().to_string());
    let guard = jobs.open_connection(LiveConnection {
        id: 0,
        job: job_id.clone(),
        pid: flow.pid,
        cgroup_id: flow.cgroup_id,
        exe: exe.clone(),
        orig_dst: flow.orig_dst.to_string(),
        via: "transparent".into(),
    });
    let span = tracing::info_span!("flow", id = guard.id);
    let _e = span.enter();
    tracing::info!(
        orig_dst = %flow.orig_dst,
        pid = flow.pid,
        cgroup = flow.cgroup_id,
        job = job_id.as_deref().unwrap_or("-"),
        identity = flow.job.as_ref().map(|j| j.identity.as_str()).unwrap_or("-"),
        exe = exe.as_deref().unwrap_or("-"),
        peer = %flow.peer,
        "connection"
    );
    drop(_e);
    let result = splice(job_side, flow.orig_dst, cfg.connect_timeout()).await;
    let _e = span.enter();
    match result {
        Ok((up, down)) => tracing::info!(bytes_up = up, bytes_down = down, "closed"),
        Err(e) => tracing::warn!(error = %e, orig_dst = %flow.orig_dst, "upstream failed"),
    }
    drop(guard);
}

async fn splice(
    mut job_side: TcpStream,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<(u64, u64)> {
    let mut upstream = tokio::time::timeout(timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"))??;
    let _ = upstream.set_nodelay(true);
    let _ = job_side.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut job_side, &mut upstream).await
}

//! The transparent listener. Every TCP connect of a job arrives here; the
//! kernel record tells where it was going and who made it. The connection
//! then goes through the pipeline (or the explicit proxy, when the job was
//! itself configured to use it).
use std::{io, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};

use crate::{
    capture::{Capture, CapturedOrigin, is_own_listener},
    config::Config,
    flow::{Flow, Via},
    identity::Identity,
    jobs::{Job, Jobs},
    pipeline::{self, Gateway},
    proxy,
};

/// Why a connection was closed without being served.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no capture record for peer {0}: not a redirected job connection")]
    NoRecord(SocketAddr),
    #[error("destination {0} is the daemon's own listener")]
    Loop(SocketAddr),
    #[error("destination {dst} is the daemon's {what}: jobs can't reach it")]
    OwnService { what: &'static str, dst: SocketAddr },
    #[error("cannot read capture record: {0}")]
    Map(io::Error),
}

pub struct Listeners {
    pub v4: TcpListener,
    pub v6: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> std::io::Result<Self> {
        let c = &cfg.capture;
        let v4 = crate::addr::bind("transparent", (c.listen4, c.listen_port).into()).await?;
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

pub struct Ctx {
    pub cfg: Arc<Config>,
    pub capture: Arc<Capture>,
    pub jobs: Arc<Jobs>,
    pub gw: Arc<Gateway>,
    /// The cgroup2 mount: static identities match paths relative to it.
    pub cgroup_mount: PathBuf,
    /// cgroup id → path, for cgroups that are not `hoop run` jobs.
    pub cgroup_paths: moka::sync::Cache<u64, Option<Arc<PathBuf>>>,
}

impl Ctx {
    pub fn new(
        cfg: Arc<Config>,
        capture: Arc<Capture>,
        jobs: Arc<Jobs>,
        gw: Arc<Gateway>,
        cgroup_mount: PathBuf,
    ) -> Self {
        Self {
            cfg,
            capture,
            jobs,
            gw,
            cgroup_mount,
            cgroup_paths: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// Who a connection from this cgroup is: the identity bound to its
    /// `hoop run` job, else the static identity its path maps to (units
    /// placed in the hoop slice by systemd, for example).
    fn identity(&self, job: Option<&Job>, cgroup_id: u64) -> Option<Arc<Identity>> {
        if let Some(j) = job {
            return Some(Arc::new(j.identity.clone()));
        }
        let path = self.cgroup_paths.get_with(cgroup_id, || {
            crate::cgroup::find_by_id(&self.capture.root.path, cgroup_id).map(Arc::new)
        })?;
        let rel = crate::cgroup::relative(&self.cgroup_mount, &path)?;
        self.gw.policy().static_identity(&rel).map(Arc::new)
    }
}

pub fn spawn(listeners: Listeners, ctx: Arc<Ctx>) {
    for l in std::iter::once(listeners.v4).chain(listeners.v6) {
        let ctx = ctx.clone();
        tokio::spawn(async move { accept_loop(l, ctx).await });
    }
}

async fn accept_loop(l: TcpListener, ctx: Arc<Ctx>) {
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
        match classify(&ctx, peer) {
            Ok(flow) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, flow, ctx.clone()));
            }
            Err(why) => {
                tracing::warn!(peer = %peer, reason = %why, "refused connection");
                drop(stream);
            }
        }
    }
}

/// Turns an accepted peer address into a [`Flow`] using the kernel record.
fn classify(ctx: &Ctx, peer: SocketAddr) -> Result<Flow, Refused> {
    let CapturedOrigin {
        dst,
        pid,
        cgroup_id,
    } = ctx
        .capture
        .take_origin(peer)
        .map_err(Refused::Map)?
        .ok_or(Refused::NoRecord(peer))?;
    if is_own_listener(&ctx.cfg, dst) {
        return Err(Refused::Loop(dst));
    }
    // The console, the metrics: reached as the daemon, a job would reach
    // them as no job may (the transparent listener itself was above).
    if let Some(what) = ctx
        .gw
        .egress()
        .own(dst)
        .filter(|_| !is_proxy_listener(&ctx.cfg, dst))
    {
        return Err(Refused::OwnService { what, dst });
    }
    let job = ctx.jobs.by_cgroup(cgroup_id);
    Ok(Flow {
        id: Flow::next_id(),
        via: Via::Transparent,
        orig_dst: dst,
        target_host: None,
        peer,
        pid,
        cgroup_id,
        exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
        identity: ctx.identity(job.as_deref(), cgroup_id),
        job,
    })
}

/// True if `dst` is one of the explicit proxy listeners.
fn is_proxy_listener(cfg: &Config, dst: SocketAddr) -> bool {
    cfg.proxy
        .listen
        .iter()
        .any(|l| *l == dst || (l.ip().is_unspecified() && l.port() == dst.port()))
}

async fn serve(stream: TcpStream, flow: Flow, ctx: Arc<Ctx>) {
    let flow = Arc::new(flow);
    tracing::info!(
        flow = flow.id,
        orig_dst = %flow.orig_dst,
        pid = flow.pid,
        cgroup = flow.cgroup_id,
        job = flow.job_id().unwrap_or("-"),
        identity = flow.identity_name(),
        exe = flow.exe.as_ref().map(|p| p.display().to_string()).as_deref().unwrap_or("-"),
        peer = %flow.peer,
        "connection"
    );
    if is_proxy_listener(&ctx.cfg, flow.orig_dst) {
        // A captured job configured with a proxy: serve it as one, with the
        // identity the kernel gave us.
        let client = proxy::Client {
            peer: flow.peer,
            captured: Some(flow.clone()),
        };
        proxy::serve(ctx.gw.clone(), ctx.jobs.clone(), stream, client).await;
        return;
    }
    // Over a cap: closed with a reset before a byte is read. Answering
    // would mean a TLS handshake (a leaf, CPU) for a job already over its
    // share; the reason is in the audit log and the daemon's log.
    let Ok(live) = pipeline::admit(&ctx.gw, &ctx.jobs, &flow) else {
        let _ = stream.set_zero_linger();
        return;
    };
    pipeline::serve_recorded(ctx.gw.clone(), live, stream, flow).await;
}

//! `hoop daemon`: discovers cgroup2 and bpffs, attaches the kernel programs,
//! and serves the transparent listener and the control socket until SIGTERM.
//! Stopping the daemon leaves the programs attached: jobs are refused, not
//! freed, until a daemon serves them again.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::{signal::unix::SignalKind, sync::mpsc};

use crate::{
    accept,
    audit::{Audit, Entry, entry::SessionEndData},
    capture::{self, Capture, Cgroup},
    config::{Config, ConfigError},
    control::Server,
    jobs::{Job, Jobs},
    pipeline::{Gateway, Services},
    policy::{Policy, enforce::Enforce},
    proxy,
};

pub async fn run(cfg: Config) -> Result<()> {
    let cfg = Arc::new(cfg);
    // As the unit's StateDirectoryMode= and RuntimeDirectoryMode= make
    // them, whatever this process's umask: the CA certificate and the
    // control socket are for others to reach; what is private in them is
    // 0600 on its own.
    for dir in [&cfg.daemon.state_dir, &cfg.daemon.runtime_dir] {
        if !dir.exists() {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    let jobs = Arc::new(
        Jobs::new(cfg.daemon.runtime_dir.join("jobs"))
            .with_limits(crate::jobs::ConnectionLimits::of(&cfg.limits)),
    );
    let policy = Policy::compile(&cfg, None)?;
    let services = start_services(&cfg)?;
    let gw = Arc::new(Gateway::new(
        cfg.clone(),
        Arc::new(Enforce),
        policy,
        services,
    )?);
    tracing::info!(
        connections = cfg.connections.len(),
        issuers = cfg.identity.oidc.len(),
        static_identities = cfg.identity.statics.len(),
        "policy loaded"
    );
    tracing::info!(ca = %gw.ca.cert_path.display(), spki_sha256 = %gw.ca.spki_sha256_base64(), "local CA");
    let proxies = proxy::bind(&cfg.proxy.listen).await?;
    if let Some(addr) = cfg.metrics.addr() {
        crate::control::metrics::serve(addr, gw.clone()).await?;
    }
    crate::console::start(&cfg, gw.clone()).await?;

    let (watch_tx, watch_rx) = mpsc::unbounded_channel();
    let mut cgroup_mount = PathBuf::new();
    let capture = if cfg.capture.enabled {
        let (capture, listeners, mount) = start_capture(&cfg, &jobs, &gw.audit).await?;
        cgroup_mount = mount.clone();
        for job in jobs.restore() {
            tracing::info!(job = %job.id, cgroup = %job.cgroup_path.display(), "job restored");
            let _ = watch_tx.send(job);
        }
        let ctx = accept::Ctx::new(
            cfg.clone(),
            capture.clone(),
            jobs.clone(),
            gw.clone(),
            mount,
        );
        accept::spawn(listeners, Arc::new(ctx));
        Some(capture)
    } else {
        tracing::warn!(
            "capture disabled (capture.enabled = false): only the explicit proxy serves"
        );
        None
    };
    // Before each job got a truststore of its own, one was made here with
    // keytool; nothing reads it any more.
    for stale in ["java-truststore.p12", "java-truststore.ca.pem"] {
        let _ = std::fs::remove_file(cfg.daemon.state_dir.join("trust").join(stale));
    }
    spawn_job_reaper(
        jobs.clone(),
        watch_rx,
        gw.audit.clone(),
        cfg.daemon.runtime_dir.clone(),
    )?;
    proxy::spawn(proxies, gw.clone(), jobs.clone());

    let control_gid = crate::users::group_id(&cfg.daemon.control_group);
    let socket = cfg.control_socket();
    let listener = Server::bind(&socket, control_gid).await?;
    let server = Arc::new(Server {
        cfg: cfg.clone(),
        capture,
        jobs: jobs.clone(),
        watch_job: watch_tx,
        control_gid,
        gw: gw.clone(),
        cgroup_mount,
        reload: {
            let (cfg, gw) = (cfg.clone(), gw.clone());
            Box::new(move || reload(&cfg, &gw))
        },
        open: Default::default(),
    });
    server.spawn(listener);
    tracing::info!(
        control = %socket.display(),
        listen = %if cfg.capture.enabled {
            format!("{}:{} [{}]:{}", cfg.capture.listen4, cfg.capture.listen_port, cfg.capture.listen6, cfg.capture.listen_port)
        } else {
            "-".into()
        },
        proxy = ?cfg.proxy.listen,
        "hoop daemon ready"
    );
    // Type=notify: systemd starts dependants only now. Outside systemd
    // (no NOTIFY_SOCKET) this does nothing.
    notify(&[sd_notify::NotifyState::Ready]);

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                // Errors are logged by reload; the old policy keeps serving.
                let _ = reload(&cfg, &gw);
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(
        "stopping; programs stay attached, so jobs are refused until the daemon is back"
    );
    // Held requests fail cleanly (503) instead of hanging up on the job.
    gw.approvals.shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // What is queued is written, and the head signed.
    let audit = gw.audit.clone();
    let _ = tokio::task::spawn_blocking(move || audit.shutdown()).await;
    // The last records to the fleet's server while it is there; what does
    // not make it ships at the next start.
    if let Some(f) = &gw.fleet {
        let all = f.shipping.flush(std::time::Duration::from_secs(3)).await;
        let s = f.shipping.status();
        tracing::info!(shipped_through = ?s.shipped_seq, unshipped = s.lag_records, complete = all, "fleet: stopped shipping");
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// cgroup2, bpffs, the kernel programs and the transparent listener.
async fn start_capture(
    cfg: &Arc<Config>,
    jobs: &Arc<Jobs>,
    audit: &Audit,
) -> Result<(Arc<Capture>, accept::Listeners, PathBuf)> {
    let mount = crate::cgroup::discover_mount()?;
    let root = crate::cgroup::ensure_root(&mount, &cfg.capture.cgroup)?;
    tracing::info!(mount = %mount.display(), root = %root.path.display(), cgroup_id = root.id, "cgroup2");
    // Listen before attaching: once the redirect is in place, someone answers.
    let listeners = accept::Listeners::bind(cfg).await?;
    let mut capture = Capture::attach(cfg, root)?;
    for l in &capture.links {
        tracing::info!(program = %l.program, link_id = l.link_id, prog_id = l.prog_id, reused = l.reused, "attached");
    }
    capture::spawn_event_reader(capture.take_events()?, jobs.clone(), audit.clone())
        .context("watching the kernel's event ring buffer")?;
    capture.spawn_kernel_log();
    Ok((Arc::new(capture), listeners, mount))
}

/// Re-reads the config file the daemon started with and swaps in its policy
/// (identities, connections, secrets) whole. A broken file changes nothing.
/// The other sections (listeners, limits, capture, egress, TLS, audit, metrics,
/// approval notices) need a restart; changes there are named.
pub fn reload(cfg: &Config, gw: &Gateway) -> Result<String, ConfigError> {
    let result = (|| {
        let new = if cfg.source.as_os_str() == crate::config::EMBEDDED_SOURCE {
            Config::embedded()
        } else {
            Config::load_file(&cfg.source)?
        };
        let policy = Policy::compile(&new, Some(&gw.policy()))?;
        let mut restart = Vec::new();
        for (name, changed) in [
            ("[daemon]", new.daemon != cfg.daemon),
            ("[limits]", new.limits != cfg.limits),
            ("[capture]", new.capture != cfg.capture),
            ("[proxy]", new.proxy != cfg.proxy),
            ("[egress]", new.egress != cfg.egress),
            ("[tls]", new.tls != cfg.tls),
            ("[audit]", new.audit != cfg.audit),
            ("[metrics]", new.metrics != cfg.metrics),
            ("[approvals]", new.approvals != cfg.approvals),
            ("[console]", new.console != cfg.console),
            ("[fleet]", new.fleet != cfg.fleet),
        ] {
            if changed {
                restart.push(name);
            }
        }
        let n = (new.connections.len(), new.identity.oidc.len());
        gw.set_policy(policy);
        let mut msg = format!(
            "reloaded {}: {} connection(s), {} OIDC issuer(s)",
            cfg.source.display(),
            n.0,
            n.1
        );
        if !restart.is_empty() {
            msg.push_str(&format!(
                "; changes to {} take effect at the next restart",
                restart.join(", ")
            ));
        }
        Ok(msg)
    })();
    match &result {
        Ok(m) => tracing::info!("{m}"),
        Err(e) => tracing::error!(error = %e, "reload refused; the previous policy keeps serving"),
    }
    result
}

/// Ends jobs whose cgroup emptied: removes the cgroup and the job record.
/// Watches `cgroup.events` with inotify rather than polling.
fn spawn_job_reaper(
    jobs: Arc<Jobs>,
    mut new_jobs: mpsc::UnboundedReceiver<Arc<Job>>,
    audit: Audit,
    runtime_dir: PathBuf,
) -> Result<()> {
    let inotify = Inotify::init().context("inotify_init")?;
    let mut watches = inotify.watches();
    let mut stream = inotify.into_event_stream([0u8; 4096])?;
    tokio::spawn(async move {
        let mut by_wd = HashMap::new();
        loop {
            tokio::select! {
                Some(job) = new_jobs.recv() => {
                    let events: PathBuf = job.cgroup_path.join("cgroup.events");
                    match watches.add(&events, WatchMask::MODIFY) {
                        Ok(wd) => { by_wd.insert(wd.clone(), job.clone()); }
                        Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot watch job cgroup"),
                    }
                    // It may have emptied before the watch existed.
                    reap_if_empty(&jobs, &job, &audit, &runtime_dir);
                }
                Some(ev) = stream.next() => {
                    let Ok(ev) = ev else { continue };
                    if let Some(job) = by_wd.get(&ev.wd).cloned()
                        && reap_if_empty(&jobs, &job, &audit, &runtime_dir)
                    {
                        by_wd.remove(&ev.wd);
                        let _ = watches.remove(ev.wd);
                    }
                }
                else => return,
            }
        }
    });
    Ok(())
}

fn reap_if_empty(jobs: &Jobs, job: &Job, audit: &Audit, runtime_dir: &Path) -> bool {
    let cg = Cgroup {
        path: job.cgroup_path.clone(),
        id: job.cgroup_id,
    };
    match cg.populated() {
        Ok(true) => return false,
        Ok(false) => {}
        // The cgroup is already gone.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot read cgroup.events");
            return false;
        }
    }
    if let Err(e) = cg.remove() {
        tracing::warn!(job = %job.id, error = %e, "cannot remove job cgroup");
    }
    // The job's uid could fill its directory: removing it must not hold
    // the reaper's task (nor the async workers) meanwhile.
    let (dir, id) = (runtime_dir.to_path_buf(), job.id.clone());
    tokio::task::spawn_blocking(move || crate::trust::remove_job(&dir, &id));
    if jobs.remove(job.cgroup_id).is_some() {
        tracing::info!(job = %job.id, cgroup = %job.cgroup_path.display(), "job ended");
        audit.record(Entry::of(&SessionEndData {
            session: job.id.clone(),
            job: job.id.clone(),
        }));
    }
    true
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Why a service the gateway needs could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Approvals(#[from] crate::approval::ApprovalError),
    #[error(transparent)]
    Audit(#[from] crate::audit::StartError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
}

/// Starts what the data path uses beside it: the approvals store (with its
/// webhook), the audit writer, the fleet's shipper, the local CA.
pub fn start_services(cfg: &Config) -> Result<Services, ServicesError> {
    use crate::{approval::notify::Shape, config::policy::SlackSetting};
    let tls = || -> Result<_, ServicesError> {
        Ok(crate::tls::UpstreamTls::new(&cfg.tls.upstream_ca_files)?
            .config_for(&[crate::tls::HTTP11.to_vec()]))
    };
    let notifier = match (&cfg.approvals.webhook, &cfg.approvals.slack) {
        (_, SlackSetting::Buttons(s)) => Some(crate::approval::Notifier::new(
            s.webhook_url.clone(),
            Shape::SlackButtons,
            tls()?,
        )),
        (Some(url), SlackSetting::Text(text)) => Some(crate::approval::Notifier::new(
            url.clone(),
            if *text { Shape::SlackText } else { Shape::Hoop },
            tls()?,
        )),
        (None, _) => None,
    };
    let approvals = Arc::new(crate::approval::Approvals::open(
        &cfg.daemon.state_dir.join("approvals.db"),
        notifier,
    )?);
    let (audit, fleet) = match cfg.fleet.enabled() {
        false => (
            crate::audit::Audit::start(&cfg.audit, &cfg.daemon.state_dir)?,
            None,
        ),
        true => start_fleet(cfg, &approvals)?,
    };
    let ca = Arc::new(crate::tls::Ca::load_or_create(&cfg.daemon.state_dir)?);
    Ok(Services {
        ca,
        approvals,
        audit,
        fleet,
    })
}

/// The audit writer, keeping what the fleet's server lacks, and the
/// shipper beside it (which needs the runtime: the daemon's).
fn start_fleet(
    cfg: &Config,
    approvals: &Arc<crate::approval::Approvals>,
) -> Result<(crate::audit::Audit, Option<Arc<crate::fleet::Fleet>>), ServicesError> {
    use crate::fleet::{FleetError, Target, ship};
    if !cfg.audit.enabled {
        return Err(FleetError::Refused(
            "[fleet] ships the audit log, and [audit] enabled = false keeps none".into(),
        )
        .into());
    }
    let target = Target::of(&cfg.fleet)?;
    let spool = crate::audit::Spool::new(cfg.fleet.max_unshipped, cfg.fleet.when_full);
    let shipping = ship::Shipping::new(
        &target,
        spool.clone(),
        cfg.daemon.state_dir.join(ship::MARK_FILE),
    );
    let audit = crate::audit::Audit::start_with(&cfg.audit, &cfg.daemon.state_dir, Some(spool))?;
    let pubkey = crate::audit::public_key_bytes(&cfg.daemon.state_dir)?;
    let db = cfg.daemon.state_dir.join(crate::audit::DB_FILE);
    let server = target.addrs();
    ship::spawn(
        target.clone(),
        db,
        pubkey,
        audit.stats.clone(),
        shipping.clone(),
    )
    .map_err(|e| FleetError::Local(format!("starting the shipper's thread: {e}")))?;
    let approvals = crate::fleet::approvals::FleetApprovals::start(target, approvals.clone());
    Ok((
        audit,
        Some(Arc::new(crate::fleet::Fleet {
            shipping,
            approvals,
            server,
        })),
    ))
}

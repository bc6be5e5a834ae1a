use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::error::ControlError;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{JobStatus, Request, Response, Status, peer::Peer};
use crate::{
    capture::{Capture, Cgroup},
    config::Config,
    jobs::{Job, Jobs},
    pipeline::Gateway,
};

/// Longest request line accepted; anything larger is a broken client. A
/// token over the OIDC limit still fits, to be refused with its reason,
/// and so do the caller's CA bundles `hoop run` passes on (up to
/// `trust::MAX_EXTRA_PEM`, twice over for JSON's escapes): at 64 KiB, a
/// caller whose SSL_CERT_FILE held a full bundle (a job starting a job,
/// a corporate bundle) got a broken pipe.
const MAX_LINE: usize = 2 * crate::trust::MAX_EXTRA_PEM + 64 * 1024;
/// How long a client has to send its request line. `hoop` sends it at
/// once; a member trickling bytes holds a connection no longer.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Server {
    pub cfg: Arc<Config>,
    /// None when capture is disabled (explicit proxy only).
    pub capture: Option<Arc<Capture>>,
    pub jobs: Arc<Jobs>,
    pub watch_job: tokio::sync::mpsc::UnboundedSender<Arc<Job>>,
    pub control_gid: Option<u32>,
    pub gw: Arc<Gateway>,
    pub cgroup_mount: PathBuf,
    /// Re-reads the config and swaps its policy in (the daemon's own
    /// reload, also behind SIGHUP).
    pub reload: Reload,
    /// Control connections per uid still sending their request (root's
    /// are not counted).
    pub open: super::open::Open,
}

pub type Reload = Box<dyn Fn() -> Result<String, crate::config::ConfigError> + Send + Sync>;

impl Server {
    /// Binds the socket, refusing to steal it from a running daemon.
    pub async fn bind(path: &Path, control_gid: Option<u32>) -> Result<UnixListener, ControlError> {
        use crate::path_error::at as socket;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(socket("creating", dir))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse(path.into()));
            }
            std::fs::remove_file(path).map_err(socket("removing stale", path))?;
        }
        let l = UnixListener::bind(path).map_err(socket("binding", path))?;
        std::os::unix::fs::chown(path, Some(0), control_gid)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)))
            .map_err(socket("setting the owner and mode of", path))?;
        Ok(l)
    }

    pub fn spawn(self: Arc<Self>, l: UnixListener) {
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        // A place is taken here, in accept order, before
                        // the connection's task runs: a flood can't race
                        // the connections that came first.
                        let admitted = Peer::of(&s).map_err(ControlError::from).and_then(|p| {
                            if !self.authorised(&p) {
                                return Err(ControlError::NotAuthorised);
                            }
                            match self.open.take(p.uid) {
                                Some(slot) => Ok((p, slot)),
                                None => Err(ControlError::TooMany {
                                    uid: p.uid,
                                    max: super::open::PER_UID,
                                }),
                            }
                        });
                        let me = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = me.handle(s, admitted).await {
                                tracing::debug!(error = %e, "control connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "control accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }

    /// One request and its answer. Strangers and a member's flood are
    /// answered before a byte of their request is read or buffered; the
    /// place is given back once the request is in.
    async fn handle(
        &self,
        s: UnixStream,
        admitted: Result<(Peer, super::open::Slot), ControlError>,
    ) -> Result<(), ControlError> {
        let (r, mut w) = s.into_split();
        let resp = match admitted {
            Err(e) => Err(e),
            Ok((peer, slot)) => {
                let mut line = String::new();
                let mut r = BufReader::new(r).take(MAX_LINE as u64);
                let read = tokio::time::timeout(READ_TIMEOUT, r.read_line(&mut line)).await;
                drop(slot);
                match read {
                    Err(_) => Err(ControlError::NoRequest {
                        secs: READ_TIMEOUT.as_secs(),
                    }),
                    Ok(read) => {
                        read?;
                        match serde_json::from_str::<Request>(&line) {
                            Err(e) => Err(ControlError::BadRequest(e)),
                            Ok(req) => Ok(self.dispatch(req, peer).await),
                        }
                    }
                }
            }
        };
        let resp = resp.unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        });
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        w.write_all(&out).await?;
        Ok(())
    }

    fn authorised(&self, peer: &Peer) -> bool {
        if peer.uid == 0 {
            return true;
        }
        self.control_gid.is_some_and(|g| peer.groups().contains(&g))
    }

    async fn dispatch(&self, req: Request, peer: Peer) -> Response {
        let result = match req {
            Request::Run {
                token,
                command,
                trust,
                observe,
            } => self.run(token, command, trust, observe, peer).await,
            Request::Status => Ok(Response::Status(Box::new(self.status()))),
            Request::Reload => (self.reload)()
                .map(|message| Response::Reloaded { message })
                .map_err(ControlError::from),
            Request::ApprovalsList => self
                .gw
                .approvals
                .list()
                .map(|rows| Response::Approvals { rows })
                .map_err(ControlError::from),
            Request::ApprovalsApprove { id, for_secs } => {
                self.decide(&id, &peer, crate::approval::Decision::Approve { for_secs })
            }
            Request::ApprovalsDeny { id, reason } => {
                self.decide(&id, &peer, crate::approval::Decision::Deny { reason })
            }
        };
        result.unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        })
    }

    async fn run(
        &self,
        token: Option<String>,
        command: Vec<String>,
        trust: Option<super::TrustAsk>,
        observe: bool,
        peer: Peer,
    ) -> Result<Response, ControlError> {
        let (uid, pid) = (peer.uid, peer.pid.ok_or(ControlError::PeerPidUnknown)?);
        // Only root may hand the job's files to another account or group.
        if let Some(t) = &trust
            && uid != 0
        {
            if t.uid != uid {
                return Err(ControlError::TrustOwner { asked: t.uid, uid });
            }
            if !peer.groups().contains(&t.gid) {
                return Err(ControlError::TrustGroup { asked: t.gid });
            }
        }
        let capture = self.capture.as_ref().ok_or(ControlError::CaptureDisabled)?;
        let id = Jobs::new_job_id();
        let path = capture.root.path.join(format!("job-{id}"));
        // Identity first: a job that can't be named gets no cgroup.
        let policy = self.gw.policy();
        let identity = match token {
            Some(t) => match policy.issuers.verify(&t).await {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::warn!(pid, uid, reason = e.reason(), error = %e, "job token rejected");
                    return Err(ControlError::TokenRejected { token: e });
                }
            },
            None => None,
        };
        let rel = crate::cgroup::relative(&self.cgroup_mount, &path).unwrap_or_default();
        let identity = match (identity, policy.static_identity(&rel)) {
            (Some(i), _) => i,
            (None, Some(s)) => s,
            (None, None) => return Err(ControlError::NoIdentity(rel)),
        };
        let name = identity.name.clone();
        if observe {
            self.may_observe(pid, &name, &policy, &capture.root.path)?;
        }
        let cg = Cgroup::create(&path)
            .map_err(crate::path_error::at("creating the job cgroup", &path))?;
        if let Err(source) = peer.move_into(&cg) {
            let _ = cg.remove();
            return Err(ControlError::Move { pid, path, source });
        }
        let job = Job {
            id: id.clone(),
            cgroup_id: cg.id,
            cgroup_path: path.clone(),
            identity,
            pid,
            uid,
            command,
            started_unix_ms: Jobs::now_ms(),
            observe,
        };
        let job = match self.jobs.insert(job.clone()) {
            Ok(j) => j,
            Err(e) => {
                // The caller is in the cgroup already, and is told to exit:
                // the reaper removes the cgroup once it has.
                let _ = self.watch_job.send(Arc::new(job));
                return Err(
                    crate::path_error::at("recording the job in", self.jobs.dir())(e).into(),
                );
            }
        };
        // The session is on record before the job runs a single command.
        let mut session = crate::audit::entry::SessionData::of(&job);
        session.observe = policy
            .observe
            .applies(&name, job.observe, job.started_unix_ms);
        if session.observe {
            tracing::warn!(job = %job.id, identity = %name, "observe mode: what no connection covers is forwarded and recorded, not refused");
        }
        let start = crate::audit::Entry::of(&session);
        if let Err(e) = self.gw.audit.commit(start).await {
            self.jobs.remove(job.cgroup_id);
            let _ = self.watch_job.send(job);
            return Err(ControlError::Audit(e));
        }
        tracing::info!(
            job = %job.id, pid, uid, identity = %name, cgroup = %path.display(),
            cgroup_id = cg.id, command = ?crate::audit::entry::redact_args(&job.command), "job started"
        );
        let trust = match trust {
            Some(t) => match self.trust(&id, t).await {
                Ok(given) => Some(given),
                Err(e) => {
                    // The job still runs (the caller's own trust is left
                    // as it was); it is told why.
                    tracing::warn!(job = %id, error = %e, "job trust not prepared");
                    None
                }
            },
            None => None,
        };
        let _ = self.watch_job.send(job);
        Ok(Response::Run {
            job_id: id,
            cgroup: path.display().to_string(),
            cgroup_id: cg.id,
            identity: name,
            trust,
        })
    }

    /// `hoop run --observe` is for an identity an `[[observe]]` entry
    /// names now, from outside every job: a job that could flag a job of
    /// its own would leave default deny behind. (Only root and the control
    /// group are served at all: `handle` checks every request.)
    fn may_observe(
        &self,
        pid: u32,
        identity: &str,
        policy: &crate::policy::Policy,
        capture_root: &std::path::Path,
    ) -> Result<(), ControlError> {
        let caller = crate::cgroup::of_pid(pid).map_err(|e| ControlError::ObserveNotPermitted {
            why: format!("the caller's cgroup (pid {pid}) can't be read: {e}"),
        })?;
        let caller = self.cgroup_mount.join(caller.trim_start_matches('/'));
        if caller.starts_with(capture_root) {
            return Err(ControlError::ObserveNotPermitted {
                why: format!(
                    "the caller runs inside a job ({}): a job may not start a job in observe mode",
                    caller.display()
                ),
            });
        }
        if !policy.observe.permits_flag(identity, Jobs::now_ms()) {
            return Err(ControlError::ObserveNotPermitted {
                why: format!(
                    "no [[observe]] entry names identity {identity} (or its `until` has passed): observe mode is off for it"
                ),
            });
        }
        Ok(())
    }

    /// The job's CA bundle and Java truststore (files and a PKCS#12 key
    /// derivation: off the async workers).
    async fn trust(
        &self,
        job: &str,
        t: super::TrustAsk,
    ) -> Result<super::TrustGiven, crate::trust::TrustError> {
        let ca_path = self.gw.ca.cert_path.clone();
        let (runtime_dir, job) = (self.cfg.daemon.runtime_dir.clone(), job.to_string());
        let given = tokio::task::spawn_blocking(move || {
            let ca = std::fs::read_to_string(&ca_path).map_err(|source| {
                crate::trust::TrustError::Io {
                    what: "reading",
                    path: ca_path.clone(),
                    source,
                }
            })?;
            crate::trust::prepare_job(&runtime_dir, &job, t.uid, t.gid, &t.extra_pem, &ca)
        })
        .await
        .map_err(|e| crate::trust::TrustError::Stopped(e.to_string()))??;
        Ok(super::TrustGiven {
            bundle: given.bundle.display().to_string(),
            java_truststore: Some(given.java_truststore.display().to_string()),
        })
    }

    /// An approver's decision: who they are comes from SO_PEERCRED (uid)
    /// and the user database (groups), for a peer that is still there.
    fn decide(
        &self,
        id: &str,
        peer: &Peer,
        d: crate::approval::Decision,
    ) -> Result<Response, ControlError> {
        if !peer.alive() {
            return Err(ControlError::PeerGone);
        }
        let caller = crate::approval::Caller::Host {
            uid: peer.uid,
            gids: peer.groups(),
        };
        self.gw
            .approvals
            .decide(id, &caller, d)
            .map(|message| Response::Decided { message })
            .map_err(ControlError::from)
    }

    fn status(&self) -> Status {
        let c = &self.cfg.capture;
        let cap = self.capture.as_deref();
        Status {
            pid: std::process::id(),
            config: self.cfg.source.display().to_string(),
            capture: cap.is_some(),
            root_cgroup: cap
                .map(|c| c.root.path.display().to_string())
                .unwrap_or_default(),
            root_cgroup_id: cap.map(|c| c.root.id).unwrap_or(0),
            pin_dir: cap
                .map(|c| c.pin_dir.display().to_string())
                .unwrap_or_default(),
            listen: match cap {
                Some(_) => vec![
                    format!("{}:{}", c.listen4, c.listen_port),
                    format!("[{}]:{}", c.listen6, c.listen_port),
                ],
                None => vec![],
            },
            proxy: self
                .cfg
                .proxy
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect(),
            links: cap.map(|c| c.links.clone()).unwrap_or_default(),
            kernel_links_on_root: cap
                .and_then(|c| crate::sys::cgroup_links(c.root.id).ok())
                .map(|l| l.len())
                .unwrap_or(0),
            jobs: self
                .jobs
                .list()
                .into_iter()
                .map(|j| {
                    let mut job = (*j).clone();
                    // Every control-group member reads this: credential-
                    // shaped arguments masked, as in the audit record.
                    job.command = crate::audit::entry::redact_args(&job.command);
                    JobStatus {
                        denied: self.jobs.denied_count(j.cgroup_id),
                        job,
                    }
                })
                .collect(),
            connections: self.jobs.connections(),
            traffic: super::metrics::traffic(&self.gw),
            audit: self.gw.audit.path.as_ref().map(|p| {
                use std::sync::atomic::Ordering::Relaxed;
                let st = &self.gw.audit.stats;
                super::AuditStatus {
                    db: p.display().to_string(),
                    records: st.records.load(Relaxed),
                    commits: st.commits.load(Relaxed),
                    failures: st.failures.load(Relaxed),
                    queued: st.queued.load(Relaxed),
                    last_commit_us: st.last_commit_us.load(Relaxed),
                }
            }),
            fleet: self.gw.fleet.as_ref().map(|f| {
                let mut s = f.shipping.status();
                s.approvals_error = f.approvals.error();
                s
            }),
            observe: self.gw.policy().observe.status(Jobs::now_ms()),
        }
    }
}

/// Sends one request to the daemon and reads its answer.
pub async fn client_request(socket: &PathBuf, req: &Request) -> Result<Response, ControlError> {
    let s = UnixStream::connect(socket)
        .await
        .map_err(|source| ControlError::Unreachable {
            socket: socket.clone(),
            source,
        })?;
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    // The daemon may answer without reading a request (a refusal before
    // it is read) and close: the answer is still there to read.
    match w.write_all(&line).await {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) => {}
        other => other?,
    }
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(ControlError::NoAnswer);
    }
    Ok(serde_json::from_str(&answer)?)
}

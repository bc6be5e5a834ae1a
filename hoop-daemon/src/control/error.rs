//! Everything the control socket can refuse or fail at. An error becomes
//! the client's `Response::Error` once: in `Server::dispatch` for a
//! request's, in `Server::handle` for the connection's.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    // The socket.
    #[error(transparent)]
    Path(#[from] crate::path_error::PathError),
    #[error("another hoop daemon is serving {}", .0.display())]
    InUse(PathBuf),
    #[error("not authorised: root or the control group only")]
    NotAuthorised,
    #[error("too many control connections from uid {uid} (at most {max} at once)")]
    TooMany { uid: u32, max: usize },
    #[error("no request within {secs}s")]
    NoRequest { secs: u64 },
    #[error("bad request: {0}")]
    BadRequest(serde_json::Error),
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),

    // `hoop run`.
    #[error("peer pid unknown")]
    PeerPidUnknown,
    #[error(
        "capture is disabled on this daemon (capture.enabled = false); point the job at the explicit proxy instead"
    )]
    CaptureDisabled,
    #[error("token rejected ({}): {token}", token.reason())]
    TokenRejected {
        token: crate::identity::oidc::TokenError,
    },
    #[error(
        "no identity for this job: pass an OIDC token (--token-file FILE or --token-env VAR), or give cgroups like {0} a static identity ([[identity.static]] in the config)"
    )]
    NoIdentity(String),
    #[error("moving pid {pid} into {}: {source}", path.display())]
    Move {
        pid: u32,
        path: PathBuf,
        source: PeerError,
    },
    #[error("{0}; the job was not started")]
    Audit(crate::audit::AuditError),
    #[error(
        "only root may prepare a job's files for another account (asked for uid {asked}, you are uid {uid})"
    )]
    TrustOwner { asked: u32, uid: u32 },
    #[error(
        "only root may hand a job's files to a group the caller is not in (asked for gid {asked})"
    )]
    TrustGroup { asked: u32 },
    #[error("--observe refused: {why}; the job was not started")]
    ObserveNotPermitted { why: String },

    // Approvals and reload.
    #[error("the process that asked is gone; no decision is taken for it")]
    PeerGone,
    #[error(transparent)]
    Approval(#[from] crate::approval::ApprovalError),
    #[error(transparent)]
    Reload(#[from] crate::config::ConfigError),

    // The client's side.
    #[error(
        "cannot reach the hoop daemon at {}; is it running? (systemctl start hoop, or `hoop daemon`): {source}",
        socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon closed the control connection without answering")]
    NoAnswer,
    #[error("malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Why the caller could not be moved into its job cgroup.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the caller's process is unknown (no SO_PEERPIDFD); refusing to move a pid")]
    NoPidfd,
    #[error(
        "cannot pin the caller (pid {pid}) to move it: ptrace: {errno} (is `hoop run` itself being traced, or does the daemon lack CAP_SYS_PTRACE?)"
    )]
    Pin { pid: u32, errno: nix::errno::Errno },
    #[error("the caller exited before it was moved; its pid may be another process's now")]
    Exited,
    #[error("writing cgroup.procs: {0}")]
    Write(std::io::Error),
    #[error("the thread moving the caller panicked")]
    Panicked,
}

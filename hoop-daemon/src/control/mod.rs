//! The control socket: a Unix socket (mode 0660, root and the control group)
//! speaking one JSON request and one JSON response per line.
pub mod error;
pub mod metrics;
pub mod open;
pub mod peer;
pub mod server;

use serde::{Deserialize, Serialize};

pub use error::ControlError;
pub use server::{Server, client_request};

use crate::{
    capture::LinkState,
    jobs::{Job, LiveConnection},
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Put the calling process (SO_PEERCRED) into a new job cgroup, bound
    /// to the identity `token` proves (or the cgroup's static identity).
    Run {
        token: Option<String>,
        command: Vec<String>,
        /// Prepare the job's CA bundle (absent: `--no-trust-env`).
        #[serde(default)]
        trust: Option<TrustAsk>,
        /// `--observe`: observe mode for this job, where an `[[observe]]`
        /// entry names its identity.
        #[serde(default)]
        observe: bool,
    },
    Status,
    /// Re-read the config file and apply its policy atomically.
    Reload,
    ApprovalsList,
    /// Approve a held request; `for_secs` grants the same rule to the same
    /// job for that long.
    ApprovalsApprove {
        id: String,
        for_secs: Option<u64>,
    },
    ApprovalsDeny {
        id: String,
        reason: String,
    },
}

/// What `hoop run` asks for the job's trust: who the job runs as (root
/// may name another account; others only themselves), and the caller's
/// own CA bundles (PEM) to keep beside hoop's.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrustAsk {
    pub uid: u32,
    pub gid: u32,
    pub extra_pem: String,
}

/// Where the job's trust was put.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrustGiven {
    /// The CA bundle: the system's roots, the caller's, hoop's CA.
    pub bundle: String,
    /// The same certificates as PKCS#12, for Java. (Optional on the
    /// wire: a daemon of an older hoop may have had none to give.)
    #[serde(default)]
    pub java_truststore: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Run {
        job_id: String,
        cgroup: String,
        cgroup_id: u64,
        identity: String,
        #[serde(default)]
        trust: Option<TrustGiven>,
    },
    Reloaded {
        message: String,
    },
    Approvals {
        rows: Vec<crate::approval::store::Row>,
    },
    Decided {
        message: String,
    },
    Status(Box<Status>),
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub config: String,
    /// Whether the kernel programs are in use (false: explicit proxy only).
    pub capture: bool,
    pub root_cgroup: String,
    pub root_cgroup_id: u64,
    pub pin_dir: String,
    pub listen: Vec<String>,
    pub proxy: Vec<String>,
    pub links: Vec<LinkState>,
    /// All cgroup links the kernel has on the root cgroup (ours: one per program).
    pub kernel_links_on_root: usize,
    pub jobs: Vec<JobStatus>,
    pub connections: Vec<LiveConnection>,
    /// The audit log (none when recording is off).
    #[serde(default)]
    pub audit: Option<AuditStatus>,
    /// Fleet mode's shipping (none without `[fleet]`).
    #[serde(default)]
    pub fleet: Option<crate::fleet::ship::ShipStatus>,
    /// The `[[observe]]` entries, and whether each is still on.
    #[serde(default)]
    pub observe: Vec<crate::policy::observe::ObserveStatus>,
    /// Totals since the daemon started.
    #[serde(default)]
    pub traffic: Traffic,
}

/// What went through since start: the Prometheus counters, summed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub connections: u64,
    /// (outcome, count): forwarded, approved, denied, refused, failed.
    pub requests: Vec<(String, u64)>,
    pub upstream_errors: u64,
    pub masked: u64,
    pub approvals_pending: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditStatus {
    pub db: String,
    pub records: u64,
    pub commits: u64,
    pub failures: u64,
    pub queued: u64,
    pub last_commit_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    #[serde(flatten)]
    pub job: Job,
    pub denied: u64,
}

//! One captured or proxied connection, as the rest of the daemon sees it.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use crate::{identity::Identity, jobs::Job};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Redirected by the kernel programs.
    Transparent,
    /// HTTP CONNECT on the explicit proxy listener.
    Connect,
    /// Absolute-URI HTTP request on the explicit proxy listener.
    ProxyHttp,
    Socks5,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transparent => "transparent",
            Self::Connect => "connect",
            Self::ProxyHttp => "proxy-http",
            Self::Socks5 => "socks5",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub id: u64,
    pub via: Via,
    /// Where the job's connection was going (an IP: never re-resolved).
    pub orig_dst: SocketAddr,
    /// The host name the job gave a proxy (CONNECT, SOCKS5 domain), if any.
    pub target_host: Option<String>,
    pub peer: SocketAddr,
    pub pid: u32,
    pub cgroup_id: u64,
    pub exe: Option<PathBuf>,
    pub job: Option<Arc<Job>>,
    /// Who the job is: verified token, or static identity of its cgroup.
    pub identity: Option<Arc<Identity>>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Flow {
    pub fn next_id() -> u64 {
        NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn identity_name(&self) -> &str {
        self.identity.as_deref().map_or("-", |i| i.name.as_str())
    }

    pub fn job_id(&self) -> Option<&str> {
        self.job.as_ref().map(|j| j.id.as_str())
    }
}

//! The job registry: which cgroup belongs to which job and identity, and the
//! live connections and refusals per job. Job records are persisted in the
//! runtime dir, so a restarted daemon still knows the jobs that kept running.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub cgroup_id: u64,
    pub cgroup_path: PathBuf,
    /// Bound at start: verified from the job's token, or the static
    /// identity its cgroup path mapped to then.
    pub identity: crate::identity::Identity,
    /// The pid that asked for the job (the `hoop run` process, then CMD).
    pub pid: u32,
    pub uid: u32,
    pub command: Vec<String>,
    pub started_unix_ms: u64,
    /// Started with `hoop run --observe`: observe mode applies where an
    /// `[[observe]]` entry names its identity (`flagged_only` ones too).
    #[serde(default)]
    pub observe: bool,
}

/// A connection the daemon is serving right now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LiveConnection {
    pub id: u64,
    pub job: Option<String>,
    pub pid: u32,
    pub cgroup_id: u64,
    pub exe: Option<String>,
    pub orig_dst: String,
    pub via: String,
}

impl LiveConnection {
    pub fn of(f: &crate::flow::Flow) -> Self {
        Self {
            id: f.id,
            job: f.job_id().map(str::to_owned),
            pid: f.pid,
            cgroup_id: f.cgroup_id,
            exe: f.exe.as_ref().map(|p| p.display().to_string()),
            orig_dst: match &f.target_host {
                Some(h) => format!("{h} ({})", f.orig_dst),
                None => f.orig_dst.to_string(),
            },
            via: f.via.as_str().to_string(),
        }
    }
}

/// Who a connection counts against for `max_connections_per_job`: its
/// `hoop run` job, else its cgroup (a static identity's unit), else the
/// identity a proxy client proved, else its address.
pub fn owner_of(f: &crate::flow::Flow) -> String {
    if let Some(j) = f.job_id() {
        format!("job {j}")
    } else if f.cgroup_id != 0 {
        format!("cgroup {}", f.cgroup_id)
    } else if let Some(i) = &f.identity {
        format!("identity {}", i.name)
    } else {
        format!("client {}", f.peer.ip())
    }
}

/// Caps on live connections (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub per_job: usize,
    pub total: usize,
}

impl ConnectionLimits {
    pub fn of(l: &crate::config::LimitsConfig) -> Self {
        Self {
            per_job: l.max_connections_per_job,
            total: l.max_connections,
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            per_job: usize::MAX,
            total: usize::MAX,
        }
    }
}

/// A connection over a cap, refused before it was served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitExceeded {
    #[error("{owner} already holds {limit} connections (limits.max_connections_per_job)")]
    PerJob { owner: String, limit: usize },
    #[error("the daemon already serves {limit} connections (limits.max_connections)")]
    Total { limit: usize },
}

#[derive(Default)]
struct Live {
    conns: HashMap<u64, LiveConnection>,
    per_owner: HashMap<String, usize>,
}

#[derive(Default)]
pub struct Jobs {
    dir: PathBuf,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
    live: Mutex<Live>,
    limits: ConnectionLimits,
    denied: Mutex<HashMap<u64, u64>>,
}

impl Jobs {
    /// A registry persisting job records under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            ..Self::default()
        }
    }

    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn new_job_id() -> String {
        // Nanoseconds since the epoch: unique on one host, and sorts by age.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!("{:x}", t.as_nanos())
    }

    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
    }

    pub fn insert(&self, job: Job) -> std::io::Result<Arc<Job>> {
        fs::create_dir_all(&self.dir)?;
        // Root's alone, like the rest of hoop's state: it names the job's
        // identity and command line.
        crate::tls::ca::replace(
            &self.record_path(&job.id),
            &serde_json::to_vec(&job)?,
            0o600,
        )
        .map_err(std::io::Error::other)?;
        let job = Arc::new(job);
        self.jobs.lock().unwrap().insert(job.cgroup_id, job.clone());
        Ok(job)
    }

    /// Reloads job records left by a previous daemon whose cgroups still
    /// exist; drops the others.
    pub fn restore(&self) -> Vec<Arc<Job>> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut restored = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            let job = fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Job>(&b).ok());
            match job {
                Some(job)
                    if Cgroup::open(&job.cgroup_path).is_ok_and(|c| c.id == job.cgroup_id) =>
                {
                    // An earlier hoop wrote them world-readable.
                    use std::os::unix::fs::PermissionsExt;
                    let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o600));
                    let job = Arc::new(job);
                    self.jobs.lock().unwrap().insert(job.cgroup_id, job.clone());
                    restored.push(job);
                }
                _ => {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        restored
    }

    pub fn remove(&self, cgroup_id: u64) -> Option<Arc<Job>> {
        let job = self.jobs.lock().unwrap().remove(&cgroup_id)?;
        let _ = fs::remove_file(self.record_path(&job.id));
        self.denied.lock().unwrap().remove(&cgroup_id);
        Some(job)
    }

    pub fn by_cgroup(&self, cgroup_id: u64) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap().get(&cgroup_id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Job>> {
        let mut v: Vec<_> = self.jobs.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn count_denied(&self, cgroup_id: u64) {
        *self.denied.lock().unwrap().entry(cgroup_id).or_default() += 1;
    }

    pub fn denied_count(&self, cgroup_id: u64) -> u64 {
        self.denied
            .lock()
            .unwrap()
            .get(&cgroup_id)
            .copied()
            .unwrap_or(0)
    }

    /// Registers a live connection counted against `owner` (see
    /// [`owner_of`]), unless that is over a cap; it is removed when the
    /// guard drops.
    pub fn open_connection(
        self: &Arc<Self>,
        c: LiveConnection,
        owner: String,
    ) -> Result<ConnectionGuard, LimitExceeded> {
        let id = c.id;
        let mut live = self.live.lock().unwrap();
        if live.conns.len() >= self.limits.total {
            return Err(LimitExceeded::Total {
                limit: self.limits.total,
            });
        }
        let n = live.per_owner.entry(owner.clone()).or_default();
        if *n >= self.limits.per_job {
            return Err(LimitExceeded::PerJob {
                owner,
                limit: self.limits.per_job,
            });
        }
        *n += 1;
        live.conns.insert(id, c);
        Ok(ConnectionGuard {
            jobs: self.clone(),
            id,
            owner,
        })
    }

    pub fn connections(&self) -> Vec<LiveConnection> {
        let mut v: Vec<_> = self.live.lock().unwrap().conns.values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

pub struct ConnectionGuard {
    jobs: Arc<Jobs>,
    pub id: u64,
    owner: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut live = self.jobs.live.lock().unwrap();
        live.conns.remove(&self.id);
        // Owners with no connection left are forgotten: the map stays as
        // small as what is live.
        if let Some(n) = live.per_owner.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                live.per_owner.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, cg: &Cgroup) -> Job {
        Job {
            id: id.into(),
            cgroup_id: cg.id,
            cgroup_path: cg.path.clone(),
            identity: crate::identity::Identity::local("ci", "x"),
            pid: 1,
            uid: 0,
            command: vec!["true".into()],
            started_unix_ms: 0,
            observe: false,
        }
    }

    #[test]
    fn records_survive_a_restart_only_while_their_cgroup_exists() {
        let tmp = tempfile::tempdir().unwrap();
        // Plain directories stand in for cgroups: identity is the inode.
        let live = Cgroup::create(&tmp.path().join("job-a")).unwrap();
        let gone = Cgroup::create(&tmp.path().join("job-b")).unwrap();
        let jobs = Jobs::new(tmp.path().join("jobs"));
        jobs.insert(job("a", &live)).unwrap();
        jobs.insert(job("b", &gone)).unwrap();
        gone.remove().unwrap();
        // Records are root's alone; one an earlier hoop left readable is
        // tightened when it is taken back.
        use std::os::unix::fs::PermissionsExt;
        let a = tmp.path().join("jobs/a.json");
        let mode = || fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(), 0o600);
        fs::set_permissions(&a, fs::Permissions::from_mode(0o644)).unwrap();

        let after = Jobs::new(tmp.path().join("jobs"));
        let restored = after.restore();
        assert_eq!(restored.len(), 1);
        assert_eq!(restored[0].id, "a");
        assert!(after.by_cgroup(live.id).is_some());
        assert!(!tmp.path().join("jobs/b.json").exists());
        assert_eq!(mode(), 0o600);
    }

    fn live(id: u64) -> LiveConnection {
        LiveConnection {
            id,
            job: None,
            pid: 1,
            cgroup_id: 2,
            exe: None,
            orig_dst: "127.0.0.2:80".into(),
            via: "transparent".into(),
        }
    }

    #[test]
    fn connection_guard_unregisters() {
        let jobs = Arc::new(Jobs::default());
        let g = jobs.open_connection(live(7), "job a".into()).unwrap();
        assert_eq!(jobs.connections().len(), 1);
        drop(g);
        assert!(jobs.connections().is_empty());
        assert!(jobs.live.lock().unwrap().per_owner.is_empty());
    }

    #[test]
    fn caps_count_per_owner_and_in_all_and_free_on_drop() {
        let jobs = Arc::new(Jobs::default().with_limits(ConnectionLimits {
            per_job: 2,
            total: 3,
        }));
        let a1 = jobs.open_connection(live(1), "job a".into()).unwrap();
        let _a2 = jobs.open_connection(live(2), "job a".into()).unwrap();
        let e = jobs.open_connection(live(3), "job a".into()).err().unwrap();
        assert!(matches!(e, LimitExceeded::PerJob { limit: 2, .. }), "{e}");
        // Another job still gets through, up to the total.
        let _b1 = jobs.open_connection(live(4), "job b".into()).unwrap();
        let e = jobs.open_connection(live(5), "job c".into()).err().unwrap();
        assert!(matches!(e, LimitExceeded::Total { limit: 3 }), "{e}");
        drop(a1);
        jobs.open_connection(live(6), "job a".into()).unwrap();
    }
}

//! Who is on the other end of the control socket. The kernel vouches for
//! the uid (`SO_PEERCRED`, fixed at connect) and hands us a pidfd for the
//! process (`SO_PEERPIDFD`): a pidfd can't come to mean another process,
//! a pid number can. Groups come from the user database for the uid, not
//! from `/proc/PID`; the one thing done by pid, moving the peer into a job
//! cgroup, is done with that pid pinned.
use std::os::fd::{AsFd, OwnedFd};

use nix::{sys::ptrace, unistd::Pid};

use super::error::PeerError;
use crate::cgroup::Cgroup;

pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
    pidfd: Option<OwnedFd>,
}

impl Peer {
    pub fn of(s: &tokio::net::UnixStream) -> std::io::Result<Self> {
        let cred = s.peer_cred()?;
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().filter(|p| *p > 0).map(|p| p as u32),
            pidfd: crate::sys::peer_pidfd(s.as_fd()).ok(),
        })
    }

    /// The peer's groups: its account's, from the user database, and the
    /// gid it connected with.
    pub fn groups(&self) -> Vec<u32> {
        let mut g = crate::users::groups_of_uid(self.uid);
        g.push(self.gid);
        g
    }

    /// Whether the process that connected is still running. Decisions are
    /// taken for a live peer only.
    pub fn alive(&self) -> bool {
        self.pidfd
            .as_ref()
            .is_some_and(|fd| crate::sys::pidfd_alive(fd.as_fd()))
    }

    /// Moves the peer (its whole thread group) into `cg`. cgroup.procs
    /// takes a pid number, so the pid is pinned first: a process hoop
    /// traces (PTRACE_SEIZE, which neither stops nor signals it) stays a
    /// zombie until hoop lets go, so its pid can't be reused meanwhile. If
    /// the peer is still alive once seized, the seized process is the peer,
    /// and the pid written is its own. The tracing thread then exits, which
    /// detaches.
    pub fn move_into(self, cg: &Cgroup) -> Result<(), PeerError> {
        let (Some(pid), Some(pidfd)) = (self.pid, self.pidfd) else {
            return Err(PeerError::NoPidfd);
        };
        let cg = cg.clone();
        let moved = std::thread::spawn(move || {
            ptrace::seize(Pid::from_raw(pid as i32), ptrace::Options::empty())
                .map_err(|errno| PeerError::Pin { pid, errno })?;
            if !crate::sys::pidfd_alive(pidfd.as_fd()) {
                return Err(PeerError::Exited);
            }
            cg.add_process(pid).map_err(PeerError::Write)
        })
        .join();
        moved.unwrap_or(Err(PeerError::Panicked))
    }
}

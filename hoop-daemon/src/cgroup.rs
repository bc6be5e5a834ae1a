//! cgroup2: finding the mount, the hoop root cgroup, and job cgroups below it.
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Why the hoop root cgroup could not be found or made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted: this host only has cgroup v1. hoop attaches its \
         eBPF programs to a cgroup2 directory. Fix: boot with \
         systemd.unified_cgroup_hierarchy=1, or mount the unified hierarchy with \
         `mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error(transparent)]
    Io(#[from] crate::path_error::PathError),
    #[error(
        "the daemon runs inside the hoop cgroup {} ({}); start it outside, e.g. as the \
         hoop.service unit, or set capture.cgroup to another cgroup",
        root.display(),
        own.display()
    )]
    DaemonInside { root: PathBuf, own: PathBuf },
}

/// Where cgroup2 is mounted on this host.
pub fn discover_mount() -> Result<PathBuf, CgroupError> {
    let p = Path::new("/proc/self/mounts");
    let mounts = fs::read_to_string(p).map_err(crate::path_error::at("reading", p))?;
    find_cgroup2(&mounts).ok_or(CgroupError::NoCgroup2)
}

/// Picks the cgroup2 mount from /proc/mounts text: `/sys/fs/cgroup` on pure
/// v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones, else the first found.
pub fn find_cgroup2(mounts: &str) -> Option<PathBuf> {
    let found: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == "cgroup2").then_some(dir)
        })
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .find(|p| found.contains(p))
        .copied()
        .or(found.first().copied())
        .map(PathBuf::from)
}

/// A cgroup2 directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl Cgroup {
    pub fn open(path: &Path) -> io::Result<Self> {
        // The kernel's cgroup id (bpf_get_current_cgroup_id) is the inode
        // number of the cgroup's directory.
        let id = fs::metadata(path)?.ino();
        Ok(Self {
            path: path.to_owned(),
            id,
        })
    }

    /// Creates the cgroup, readable by all whatever the daemon's umask
    /// (the unit's is 0077): a job reads its own limits and usage there.
    pub fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)?;
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Self::open(path)
    }

    /// Moves a whole process (all its threads) into this cgroup.
    pub fn add_process(&self, pid: u32) -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?;
        f.write_all(pid.to_string().as_bytes())
    }

    /// Whether any process is left in this cgroup or below.
    pub fn populated(&self) -> io::Result<bool> {
        let events = fs::read_to_string(self.path.join("cgroup.events"))?;
        Ok(events.lines().any(|l| l.trim() == "populated 1"))
    }

    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// The cgroup directory at or below `root` whose id is `id` (a
/// breadth-first walk; hoop's tree is small).
pub fn find_by_id(root: &Path, id: u64) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > 100_000 {
            return None;
        }
        let meta = fs::metadata(&dir).ok()?;
        if meta.ino() == id {
            return Some(dir);
        }
        if let Ok(rd) = fs::read_dir(&dir) {
            queue.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// The cgroup2 path of process `pid` (`/hoop.slice/job-…`), from
/// `/proc/PID/cgroup`.
pub fn of_pid(pid: u32) -> io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other("no cgroup2 entry"))
}

/// `path` relative to the cgroup2 mount, as static identity globs see it.
pub fn relative(mount: &Path, path: &Path) -> Option<String> {
    path.strip_prefix(mount).ok()?.to_str().map(str::to_owned)
}

/// The hoop root cgroup, created if needed. The daemon itself must not live
/// inside it: its own connects would be redirected to itself.
pub fn ensure_root(mount: &Path, relative: &Path) -> Result<Cgroup, CgroupError> {
    let path = mount.join(relative);
    let root = Cgroup::create(&path).map_err(crate::path_error::at(
        "creating the hoop root cgroup",
        &path,
    ))?;
    if let Some(own) = own_cgroup(mount)?
        && own.starts_with(&path)
    {
        return Err(CgroupError::DaemonInside { root: path, own });
    }
    Ok(root)
}

/// This process's cgroup2 directory, if it is in the cgroup2 hierarchy.
fn own_cgroup(mount: &Path) -> Result<Option<PathBuf>, CgroupError> {
    let p = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(p).map_err(crate::path_error::at("reading", p))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| mount.join(p.trim_start_matches('/'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_pure_v2_then_unified() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            find_cgroup2(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(find_cgroup2(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let odd = "none /mnt/cg2 cgroup2 rw 0 0\n";
        assert_eq!(find_cgroup2(odd), Some(PathBuf::from("/mnt/cg2")));
    }

    #[test]
    fn v1_only_host_has_no_cgroup2() {
        let v1 = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                  cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert_eq!(find_cgroup2(v1), None);
    }
}

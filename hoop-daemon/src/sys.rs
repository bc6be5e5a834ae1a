//! The system calls hoop makes itself. Through nix where nix has them (the
//! filesystem checks around bpffs, the bpffs mount, a control peer's pidfd);
//! raw where nix 0.32 has no wrapper: the bpf(2) commands aya doesn't expose
//! (atomically taking a map entry, swapping the program behind a pinned
//! link, reading link info) and `pidfd_send_signal`. All of hoop's unsafe
//! code lives in this file.
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    io,
    mem::{MaybeUninit, size_of},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::Pod;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

pub use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, FsType};

/// Raw: nix has no bpf(2), and aya keeps its wrapper private.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly sized prefix of `union bpf_attr`
    // for `cmd`; the kernel reads/writes only within `size_of::<T>()`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Reads and deletes `key` in one step, so two accepts can never claim the
/// same record. `Ok(None)` if there is no entry.
pub fn map_take<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K) -> io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::zeroed();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: the kernel filled `value` on success; V is Pod.
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Opens a pinned bpffs object (map, link or program).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Atomically replaces the program behind a link: no moment exists where the
/// cgroup has no program attached.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What the kernel says about a cgroup link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    pub link_type: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose
    // cgroup member is { __u64 cgroup_id; __u32 attach_type; }.
    let mut buf = [0u64; 16];
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<[u64; 16]>() as u32,
        info: buf.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        link_type: buf[0] as u32,
        id: (buf[0] >> 32) as u32,
        prog_id: buf[1] as u32,
        cgroup_id: buf[2],
        attach_type: buf[3] as u32,
    })
}

#[repr(C)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

/// Every BPF link in the kernel attached to the cgroup with this id, from
/// whoever made it: how status proves links were reused, not stacked.
pub fn cgroup_links(cgroup_id: u64) -> io::Result<Vec<LinkInfo>> {
    let mut found = Vec::new();
    let mut id = 0;
    loop {
        let mut attr = IdAttr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(found),
            Err(e) => return Err(e),
        }
        let mut attr = IdAttr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        let fd = match bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) {
            // SAFETY: a fresh fd from the kernel, owned from here on.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
            // Gone between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let info = link_info(fd.as_fd())?;
        // BPF_LINK_TYPE_CGROUP
        if info.link_type == 3 && info.cgroup_id == cgroup_id {
            found.push(info);
        }
    }
}

/// The filesystem magic of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<FsType> {
    Ok(nix::sys::statfs::statfs(path)?.filesystem_type())
}

/// `mount -t bpf bpf <path>`.
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    Ok(())
}

/// Registers the event ring buffer with tokio's reactor for readability.
pub fn async_ring(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
) -> io::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
    // SAFETY: the RingBuf owns its map fd for its whole lifetime (it is only
    // closed when the RingBuf drops, which the AsyncFd controls), and
    // `as_raw_fd` always returns that same fd.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Registers the kernel programs' log (aya-log's ring buffer) with tokio's
/// reactor for readability.
pub fn async_kernel_log<T>(
    logger: aya_log::EbpfLogger<T>,
) -> io::Result<tokio::io::unix::AsyncFd<aya_log::EbpfLogger<T>>> {
    // SAFETY: the logger owns its ring buffer's fd for its whole lifetime
    // (closed only when the logger drops, which the AsyncFd controls), and
    // flushing never closes or replaces it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| io::Error::other(e.to_string()))
}

/// The pidfd of a Unix socket's peer (`SO_PEERPIDFD`): the process that
/// connected, for as long as it lives, never a later owner of its pid.
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(nix::sys::socket::getsockopt(
        &sock,
        nix::sys::socket::sockopt::PeerPidfd,
    )?)
}

/// Whether the process behind a pidfd is still running (signal 0: checks
/// without sending). A pidfd never refers to another process, so "alive"
/// also means "still the one that connected".
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    // Raw: nix 0.32 has no pidfd_send_signal.
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Marks the calling thread SCHED_BATCH: its wake-ups do not preempt
/// the thread running on its core. For the audit writer where it shares a
/// core with the request tasks it serves: they keep running and queue more
/// records for its next commit (BENCHMARKS.md, 2026-12-03).
pub fn sched_batch_self() -> io::Result<()> {
    sched_self(libc::SCHED_BATCH)
}

/// Marks the calling thread SCHED_IDLE: it runs only on what the other
/// threads leave of a core. For the fleet's shipper, work beside the data
/// path that may lag but must not delay a request.
pub fn sched_idle_self() -> io::Result<()> {
    sched_self(libc::SCHED_IDLE)
}

/// Back to the default policy (SCHED_OTHER, as nice as the process).
pub fn sched_normal_self() -> io::Result<()> {
    sched_self(libc::SCHED_OTHER)
}

fn sched_self(policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // pid 0: the calling thread (Linux schedules threads, not processes).
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(size_of::<ObjGetAttr>(), 24);
        assert_eq!(size_of::<LinkUpdateAttr>(), 16);
        assert_eq!(size_of::<InfoAttr>(), 16);
        assert_eq!(size_of::<IdAttr>(), 12);
    }

    #[test]
    fn a_peer_pidfd_names_the_connecting_process_while_it_lives() {
        use std::os::unix::net::UnixStream;
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = peer_pidfd(a.as_fd()).unwrap();
        assert!(pidfd_alive(fd.as_fd()));
        // A child that has exited (and been reaped) is not alive.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        // Raw: nix 0.32 has no pidfd_open.
        // SAFETY: pidfd_open on our own child's pid, before reaping it.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) } as i32;
        assert!(raw >= 0);
        let child_fd = unsafe { OwnedFd::from_raw_fd(raw) };
        child.wait().unwrap();
        assert!(!pidfd_alive(child_fd.as_fd()));
    }

    #[test]
    fn fs_magic_reads_proc() {
        use nix::sys::statfs::PROC_SUPER_MAGIC;
        assert_eq!(fs_magic(Path::new("/proc")).unwrap(), PROC_SUPER_MAGIC);
        // Positive control: bpffs is not /proc.
        assert_ne!(PROC_SUPER_MAGIC, BPF_FS_MAGIC);
    }
}

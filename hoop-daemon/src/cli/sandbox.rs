//! The sandbox `hoop run` puts around a job just before it becomes CMD: an
//! optional drop to a dedicated account, then a seccomp filter that every
//! descendant inherits and none can lift.
//!
//! The cgroup programs see only inet sockets, and only the calls they hook;
//! the filter closes what they can't: other socket families (vsock reaches
//! the hypervisor, packet sockets the wire), reaching into other processes
//! of the same uid (ptrace and friends, which would let the job make a
//! process outside its cgroup connect for it), io_uring (which creates
//! sockets past a seccomp filter), and the kernel interfaces Docker's
//! default profile keeps from an unprivileged container. A refused call
//! fails with EPERM (clone3 with ENOSYS, so libc falls back to clone, whose
//! flags the filter can read). System calls of another ABI (i386, x32)
//! kill the job: the filter can't vouch for them.
use anyhow::{Context, Result};
use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use nix::{errno::Errno, sched::CloneFlags, sys::socket::AddressFamily};

use crate::users::Account;

/// Socket families a job may create. Inet sockets are the cgroup
/// programs' to redirect or refuse; Unix and netlink sockets stay on the
/// host.
const FAMILIES: [u64; 4] = [
    AddressFamily::Unix as u64,
    AddressFamily::Inet as u64,
    AddressFamily::Inet6 as u64,
    AddressFamily::Netlink as u64,
];

/// Refused outright. The first group is what reaches around the cgroup;
/// the rest follows Docker's default profile for a container without
/// CAP_SYS_ADMIN.
const REFUSED: &[&str] = &[
    // Other processes: make one outside the cgroup act for the job.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    // io_uring performs socket calls the filter never sees.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // Kernel programs, profiling, page-fault handling, keys.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    // Namespaces and mounts: new views of the system to hide in.
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // Handles that bypass path permissions.
    "open_by_handle_at",
    "name_to_handle_at",
    // The machine itself: modules, kexec, clocks, swap, accounting.
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "ioperm",
    "iopl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "get_mempolicy",
    "set_mempolicy",
    "mbind",
    "move_pages",
];

/// clone(2) flags that make a namespace: refused like unshare.
const NAMESPACE_FLAGS: [u64; 7] = [
    CloneFlags::CLONE_NEWNS.bits() as u64,
    CloneFlags::CLONE_NEWUTS.bits() as u64,
    CloneFlags::CLONE_NEWIPC.bits() as u64,
    CloneFlags::CLONE_NEWUSER.bits() as u64,
    CloneFlags::CLONE_NEWPID.bits() as u64,
    CloneFlags::CLONE_NEWNET.bits() as u64,
    CloneFlags::CLONE_NEWCGROUP.bits() as u64,
];

/// The job's filter, built but not loaded.
pub fn filter() -> Result<ScmpFilterContext> {
    let eperm = ScmpAction::Errno(Errno::EPERM as i32);
    let mut f = ScmpFilterContext::new(ScmpAction::Allow)?;
    // Another ABI's numbers mean other calls: refuse them all.
    f.set_act_badarch(ScmpAction::KillProcess)?;
    // The kernel's audit log names each refusal (type=SECCOMP).
    f.set_ctl_log(true)?;
    for name in REFUSED {
        // A call this architecture doesn't have needs no rule.
        let Ok(call) = ScmpSyscall::from_name(name) else {
            continue;
        };
        f.add_rule(eperm, call)
            .with_context(|| format!("seccomp rule for {name}"))?;
    }
    for name in ["socket", "socketpair"] {
        let call = ScmpSyscall::from_name(name)?;
        // "Not one of FAMILIES": libseccomp compares each argument once per
        // rule, so each refused family below the highest allowed one gets
        // its own rule, and everything above it one more.
        let top = *FAMILIES.iter().max().unwrap();
        for family in (0..top).filter(|f| !FAMILIES.contains(f)) {
            f.add_rule_conditional(
                eperm,
                call,
                &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, family)],
            )?;
        }
        f.add_rule_conditional(
            eperm,
            call,
            &[ScmpArgCompare::new(0, ScmpCompareOp::Greater, top)],
        )?;
    }
    let clone = ScmpSyscall::from_name("clone")?;
    for flag in NAMESPACE_FLAGS {
        f.add_rule_conditional(
            eperm,
            clone,
            &[ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(flag),
                flag,
            )],
        )?;
    }
    // clone3 passes its flags in memory the filter can't read.
    f.add_rule(
        ScmpAction::Errno(Errno::ENOSYS as i32),
        ScmpSyscall::from_name("clone3")?,
    )?;
    Ok(f)
}

/// Becomes `account`: its groups (from the user database, not the
/// caller's), its gid, its uid, in that order, so nothing of the caller's
/// privilege is left. Also sets HOME, USER and LOGNAME for CMD.
pub fn become_user(account: &Account, cmd: &mut std::process::Command) -> Result<()> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let groups: Vec<Gid> = account.groups().into_iter().map(Gid::from_raw).collect();
    setgroups(&groups).context("setgroups")?;
    setgid(Gid::from_raw(account.gid)).context("setgid")?;
    setuid(Uid::from_raw(account.uid)).context("setuid")?;
    cmd.env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::{
        errno::Errno,
        sched::{CloneFlags, unshare},
        sys::{
            personality,
            socket::{AddressFamily, SockFlag, SockType, socket},
        },
    };

    fn sock(family: AddressFamily, ty: SockType) -> Result<(), Errno> {
        socket(family, ty, SockFlag::empty(), None).map(drop)
    }

    /// A filter applies to the thread that loads it (and what it starts),
    /// so one thread of the test is the job: the calls hoop refuses fail
    /// with EPERM there, after succeeding (or failing otherwise) before.
    /// The privileged suites attack the filter from a real job.
    #[test]
    fn the_filter_refuses_with_eperm_and_allows_the_rest() {
        std::thread::spawn(|| {
            // Positive control: the same calls before the filter.
            assert_eq!(sock(AddressFamily::Vsock, SockType::Stream), Ok(()));
            super::filter().unwrap().load().unwrap();
            for family in [
                AddressFamily::Vsock,
                AddressFamily::Packet,
                AddressFamily::Bluetooth,
                AddressFamily::Alg,
                AddressFamily::Can,
            ] {
                assert_eq!(sock(family, SockType::Raw), Err(Errno::EPERM), "{family:?}");
            }
            assert_eq!(sock(AddressFamily::Inet, SockType::Stream), Ok(()));
            assert_eq!(sock(AddressFamily::Inet6, SockType::Datagram), Ok(()));
            assert_eq!(sock(AddressFamily::Unix, SockType::Stream), Ok(()));
            assert_eq!(unshare(CloneFlags::CLONE_NEWUSER), Err(Errno::EPERM));
            assert_eq!(unshare(CloneFlags::CLONE_NEWNET), Err(Errno::EPERM));
            assert!(personality::get().is_ok());
        })
        .join()
        .unwrap();
    }
}

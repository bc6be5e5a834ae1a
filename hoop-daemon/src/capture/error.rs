//! Why the kernel side could not be set up or removed. Each names the file,
//! program or map, and says what to do where there is something to do.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "this hoop was built without its eBPF programs (the object was missing at build time); run `cargo xtask build-ebpf`, then build hoop again"
    )]
    NoObject,
    #[error(transparent)]
    Io(#[from] crate::path_error::PathError),
    #[error(
        "loading hoop's eBPF programs (pinned maps in {}; if they come from an incompatible hoop version, run `hoop detach` first): {source}",
        map_dir.display()
    )]
    Load {
        map_dir: PathBuf,
        // Boxed: aya's error is large, and this one happens once, at start.
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object has no {0}")]
    Missing(String),
    #[error("attaching {program} to {}: {source}", cgroup.display())]
    Attach {
        program: String,
        cgroup: PathBuf,
        source: Box<AttachError>,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({0}); mount it with `mount -t bpf bpf /sys/fs/bpf` (needs root / CAP_SYS_ADMIN)"
    )]
    MountBpffs(io::Error),
    #[error(
        "capture.bpf_pin_dir {} is not on a bpf filesystem ({} is not bpffs). Mount one with `mount -t bpf bpf <dir>` or use a directory under /sys/fs/bpf",
        pin_dir.display(),
        existing.display()
    )]
    NotBpffs { pin_dir: PathBuf, existing: PathBuf },
}

/// Why one program could not be linked to the root cgroup.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
    #[error(transparent)]
    Pin(#[from] aya::pin::PinError),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "pinned link {} is attached to another cgroup (id {found}, expected {expected}); run `hoop detach` to remove the old attachment",
        pin.display()
    )]
    OtherCgroup {
        pin: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("unexpected program type {0}")]
    ProgramType(String),
}

impl AttachError {
    pub(super) fn sys(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Sys { what, source }
    }
}

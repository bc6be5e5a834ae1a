//! Capture: the kernel side of hoop. Loads the eBPF programs, attaches them to
//! the hoop root cgroup through **pinned links**, and keeps the maps pinned,
//! so that jobs stay refused (never free) while the daemon is down. A
//! restarted daemon swaps its programs into the existing links instead of
//! attaching again.
mod error;
mod events;
mod kernel_log;

use std::{
    fs,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{CgroupAttachMode, Program, links::FdLink},
};
use hoop_common::{LocalKey, Origin, maps, progs};
use serde::{Deserialize, Serialize};

pub use crate::cgroup::Cgroup;
pub use error::{AttachError, CaptureError};
pub use events::{DenyReport, spawn_event_reader};

use crate::{config::Config, sys};

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded here.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("HOOP_EBPF_OBJECT"));

/// Attach order: bookkeeping and refusals first, the redirect last, so a
/// first start never redirects a connect that can't be re-keyed.
const PROGRAMS: [&str; 10] = [
    progs::SOCK_CREATE,
    progs::BIND4,
    progs::BIND6,
    progs::SENDMSG4,
    progs::SENDMSG6,
    progs::GETPEERNAME4,
    progs::GETPEERNAME6,
    progs::SOCK_OPS,
    progs::CONNECT4,
    progs::CONNECT6,
];

/// One program's link to the hoop root cgroup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkState {
    pub program: String,
    pub link_id: u32,
    pub prog_id: u32,
    /// True if an existing pinned link was reused (daemon restart).
    pub reused: bool,
}

/// The loaded and attached programs, and the maps the daemon uses.
pub struct Capture {
    pub root: Cgroup,
    pub pin_dir: PathBuf,
    pub links: Vec<LinkState>,
    orig_by_local: OwnedFd,
    ebpf: Ebpf,
}

/// Where a captured connection was really going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturedOrigin {
    pub dst: SocketAddr,
    pub pid: u32,
    pub cgroup_id: u64,
}

impl Capture {
    /// Loads the programs and attaches them to `root`, reusing pinned links
    /// and maps under `capture.bpf_pin_dir` if a previous daemon left them.
    pub fn attach(cfg: &Config, root: Cgroup) -> Result<Self, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        let pin_dir = cfg.capture.bpf_pin_dir.clone();
        ensure_bpffs(&pin_dir)?;
        let (map_dir, link_dir) = (pin_dir.join("maps"), pin_dir.join("links"));
        for d in [&map_dir, &link_dir] {
            fs::create_dir_all(d).map_err(crate::path_error::at("creating", d))?;
        }
        // Fixed at load: the verifier drops the programs' logging when off.
        // Not required to exist, so an object built without aya-log loads.
        let log_level = kernel_log::level();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&map_dir)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(EBPF_OBJECT)
            .map_err(|source| CaptureError::Load {
                map_dir: map_dir.clone(),
                source: Box::new(source),
            })?;
        write_config(&mut ebpf, cfg)?;

        let root_dir = fs::File::open(&root.path)
            .map_err(crate::path_error::at("opening cgroup", &root.path))?;
        let mut links = Vec::new();
        for name in PROGRAMS {
            let link_pin = link_dir.join(name);
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| CaptureError::Missing(format!("program {name}")))?;
            let state =
                link_program(prog, name, &root_dir, &root, &link_pin).map_err(|source| {
                    CaptureError::Attach {
                        program: name.to_string(),
                        cgroup: root.path.clone(),
                        source: Box::new(source),
                    }
                })?;
            links.push(state);
        }
        let pinned = map_dir.join(maps::ORIG_BY_LOCAL);
        let orig_by_local = sys::obj_get(&pinned).map_err(crate::path_error::at(
            "opening the pinned origin map",
            &pinned,
        ))?;
        Ok(Self {
            root,
            pin_dir,
            links,
            orig_by_local,
            ebpf,
        })
    }

    /// Takes (reads and deletes) the record for a connection accepted from
    /// `peer`. `None`: the connection did not come through capture.
    pub fn take_origin(&self, peer: SocketAddr) -> std::io::Result<Option<CapturedOrigin>> {
        let key = LocalKey {
            addr: ip_words(peer.ip()),
            port: peer.port() as u32,
        };
        let origin: Option<Origin> = sys::map_take(self.orig_by_local.as_fd(), &key)?;
        Ok(origin.map(|o| CapturedOrigin {
            dst: SocketAddr::new(words_ip(o.addr), o.port),
            pid: o.pid,
            cgroup_id: o.cgroup_id,
        }))
    }

    /// Forwards the kernel programs' debug log into the daemon's log, if
    /// `HOOP_LOG` enables debug for `hoop::capture`; otherwise the programs
    /// were loaded with it off and nothing runs.
    pub fn spawn_kernel_log(&mut self) {
        kernel_log::spawn(&mut self.ebpf);
    }

    /// The ring buffer of refusals, for [`spawn_event_reader`].
    pub fn take_events(&mut self) -> Result<aya::maps::RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| CaptureError::Missing(format!("map {}", maps::EVENTS)))?;
        aya::maps::RingBuf::try_from(map).map_err(|source| CaptureError::Map {
            map: maps::EVENTS,
            source,
        })
    }
}

fn write_config(ebpf: &mut Ebpf, cfg: &Config) -> Result<(), CaptureError> {
    let c = &cfg.capture;
    let map = |map: &'static str| move |source| CaptureError::Map { map, source };
    let missing = |map: &str| CaptureError::Missing(format!("map {map}"));
    let mut resolvers: HashMap<_, [u32; 4], u8> = HashMap::try_from(
        ebpf.map_mut(maps::RESOLVERS)
            .ok_or_else(|| missing(maps::RESOLVERS))?,
    )
    .map_err(map(maps::RESOLVERS))?;
    // Pinned maps survive restarts: drop resolvers no longer configured.
    let stale: Vec<[u32; 4]> = resolvers.keys().filter_map(|k| k.ok()).collect();
    for k in stale {
        resolvers.remove(&k).map_err(map(maps::RESOLVERS))?;
    }
    for ip in cfg.resolvers() {
        resolvers
            .insert(&ip_words(ip), &1, 0)
            .map_err(map(maps::RESOLVERS))?;
    }
    let mut config: Array<_, hoop_common::Config> = Array::try_from(
        ebpf.map_mut(maps::CONFIG)
            .ok_or_else(|| missing(maps::CONFIG))?,
    )
    .map_err(map(maps::CONFIG))?;
    let value = hoop_common::Config {
        listen4: u32::from_ne_bytes(c.listen4.octets()),
        listen6: ip_words(IpAddr::V6(c.listen6)),
        listen_port: c.listen_port,
        _pad: 0,
        enabled: 1,
        abi: hoop_common::ABI_VERSION,
    };
    config.set(0, &value, 0).map_err(map(maps::CONFIG))
}

/// Loads one program and links it to the root cgroup: into the pinned link if
/// there is one (atomic program swap), else through a new pinned link.
fn link_program(
    prog: &mut Program,
    name: &str,
    root_dir: &fs::File,
    root: &Cgroup,
    link_pin: &Path,
) -> Result<LinkState, AttachError> {
    macro_rules! link {
        ($p:expr) => {{
            $p.load()?;
            if link_pin.exists() {
                let link =
                    sys::obj_get(link_pin).map_err(AttachError::sys("opening its pinned link"))?;
                let info = sys::link_info(link.as_fd())
                    .map_err(AttachError::sys("BPF_OBJ_GET_INFO_BY_FD"))?;
                if info.cgroup_id != root.id {
                    return Err(AttachError::OtherCgroup {
                        pin: link_pin.to_path_buf(),
                        found: info.cgroup_id,
                        expected: root.id,
                    });
                }
                sys::link_update(link.as_fd(), $p.fd()?.as_fd())
                    .map_err(AttachError::sys("BPF_LINK_UPDATE"))?;
                let info = sys::link_info(link.as_fd())
                    .map_err(AttachError::sys("BPF_OBJ_GET_INFO_BY_FD"))?;
                (info, true)
            } else {
                let id = $p.attach(root_dir, CgroupAttachMode::Single)?;
                let link = FdLink::try_from($p.take_link(id)?)?;
                link.pin(link_pin)?;
                let pinned =
                    sys::obj_get(link_pin).map_err(AttachError::sys("opening its pinned link"))?;
                let info = sys::link_info(pinned.as_fd())
                    .map_err(AttachError::sys("BPF_OBJ_GET_INFO_BY_FD"))?;
                (info, false)
            }
        }};
    }
    let (info, reused) = match prog {
        Program::CgroupSockAddr(p) => link!(p),
        Program::SockOps(p) => link!(p),
        Program::CgroupSock(p) => link!(p),
        other => return Err(AttachError::ProgramType(format!("{:?}", other.prog_type()))),
    };
    Ok(LinkState {
        program: name.to_string(),
        link_id: info.id,
        prog_id: info.prog_id,
        reused,
    })
}

/// Makes sure `pin_dir` is on bpffs, mounting /sys/fs/bpf if it is absent.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), CaptureError> {
    let std_mount = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(std_mount) && sys::fs_magic(std_mount).ok() != Some(sys::BPF_FS_MAGIC) {
        sys::mount_bpffs(std_mount).map_err(CaptureError::MountBpffs)?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    // Check the nearest existing ancestor: pin_dir itself may not exist yet.
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if sys::fs_magic(existing).ok() != Some(sys::BPF_FS_MAGIC) {
        return Err(CaptureError::NotBpffs {
            pin_dir: pin_dir.into(),
            existing: existing.into(),
        });
    }
    Ok(())
}

/// Removes every pin hoop made: links (which detaches the programs once no
/// daemon holds them) and maps.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>, CaptureError> {
    let mut removed = Vec::new();
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.map_err(crate::path_error::at("reading", &dir))?.path();
            fs::remove_file(&p).map_err(crate::path_error::at("removing", &p))?;
            removed.push(p);
        }
        fs::remove_dir(&dir).map_err(crate::path_error::at("removing", &dir))?;
    }
    if pin_dir.exists() {
        fs::remove_dir(pin_dir).map_err(crate::path_error::at("removing", pin_dir))?;
    }
    Ok(removed)
}

/// IPv4 as v4-mapped words, IPv6 as is; network byte order, as the kernel side.
pub fn ip_words(ip: IpAddr) -> [u32; 4] {
    let o = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The inverse of [`ip_words`]; v4-mapped comes back as IPv4.
pub fn words_ip(w: [u32; 4]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// True for an address of one of our own listeners: a job connecting to
/// the listener directly gets no free ride through it.
pub fn is_own_listener(cfg: &Config, dst: SocketAddr) -> bool {
    dst.port() == cfg.capture.listen_port
        && (dst.ip() == IpAddr::V4(cfg.capture.listen4)
            || dst.ip() == IpAddr::V6(cfg.capture.listen6)
            || dst.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_round_trip_and_match_the_kernel_encoding() {
        for ip in ["127.0.0.2", "::1", "2001:db8::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(words_ip(ip_words(ip)), ip);
        }
        let w = ip_words("127.0.0.2".parse().unwrap());
        assert_eq!(
            w,
            hoop_common::v4_mapped(u32::from_ne_bytes([127, 0, 0, 2]))
        );
    }

    #[test]
    fn own_listener_is_recognised() {
        let cfg = Config::embedded();
        assert!(is_own_listener(&cfg, "127.0.0.1:15001".parse().unwrap()));
        assert!(is_own_listener(&cfg, "[::1]:15001".parse().unwrap()));
        assert!(is_own_listener(&cfg, "0.0.0.0:15001".parse().unwrap()));
        assert!(!is_own_listener(&cfg, "127.0.0.2:15001".parse().unwrap()));
        assert!(!is_own_listener(&cfg, "127.0.0.1:8080".parse().unwrap()));
    }
}

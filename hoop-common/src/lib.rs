//! Types shared by hoop's eBPF programs (kernel side) and the daemon (user
//! side). Everything here is `#[repr(C)]`, `Copy` and free of padding holes
//! the verifier or `Pod` would object to: the byte layout *is* the ABI of the
//! pinned maps, so changing a type here means a daemon restart must recreate
//! the pinned maps (bump [`ABI_VERSION`]).
#![no_std]

/// Bumped whenever a map layout below changes. The daemon refuses to reuse
/// pinned maps from another ABI version and recreates them instead.
pub const ABI_VERSION: u32 = 1;

/// Map names. Maps are pinned by name under the pin directory, so these
/// strings are also the file names in bpffs.
pub mod maps {
    pub const CONFIG: &str = "HOOP_CONFIG";
    pub const ORIG_BY_COOKIE: &str = "HOOP_ORIG_COOKIE";
    pub const ORIG_BY_LOCAL: &str = "HOOP_ORIG_LOCAL";
    pub const RESOLVERS: &str = "HOOP_RESOLVERS";
    pub const EVENTS: &str = "HOOP_EVENTS";
}

/// Program names, as written in the eBPF crate. They double as link pin names.
pub mod progs {
    pub const CONNECT4: &str = "hoop_connect4";
    pub const CONNECT6: &str = "hoop_connect6";
    pub const GETPEERNAME4: &str = "hoop_getpeername4";
    pub const GETPEERNAME6: &str = "hoop_getpeername6";
    pub const SENDMSG4: &str = "hoop_sendmsg4";
    pub const SENDMSG6: &str = "hoop_sendmsg6";
    pub const SOCK_OPS: &str = "hoop_sock_ops";
    pub const SOCK_CREATE: &str = "hoop_sock_create";
    pub const BIND4: &str = "hoop_bind4";
    pub const BIND6: &str = "hoop_bind6";
}

pub const MAX_CONNECTIONS: u32 = 65536;
pub const MAX_RESOLVERS: u32 = 64;
pub const EVENTS_BYTES: u32 = 1 << 18;

/// Key 0 of the `HOOP_CONFIG` array. Until the daemon writes it (`enabled`
/// = 1) every TCP connect and every UDP send from a job is refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// IPv4 listener address, network byte order (as in `bpf_sock_addr.user_ip4`).
    pub listen4: u32,
    /// IPv6 listener address, network byte order words.
    pub listen6: [u32; 4],
    /// Listener port, host byte order.
    pub listen_port: u16,
    pub _pad: u16,
    pub enabled: u32,
    pub abi: u32,
}

/// Where a job's TCP connect was really going. Addresses are always stored as
/// IPv6 words in network byte order; IPv4 is stored v4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub addr: [u32; 4],
    /// Destination port, host byte order.
    pub port: u16,
    /// Address family of the job's socket (AF_INET or AF_INET6). A v6 socket
    /// connecting to a v4-mapped address keeps AF_INET6 here.
    pub family: u16,
    /// Thread group id (the user-space pid) that called connect.
    pub pid: u32,
    pub cgroup_id: u64,
    /// Socket cookie of the job's socket, so the close hook only removes its
    /// own entry even if the local port was reused.
    pub cookie: u64,
}

/// The job socket's local address as the daemon sees it as the peer of an
/// accepted connection. Same address encoding as [`Origin::addr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalKey {
    pub addr: [u32; 4],
    /// Host byte order; u32 so the struct has no padding.
    pub port: u32,
}

/// Why a job's socket operation was refused in the kernel.
pub mod deny {
    /// UDP to anything but a configured DNS resolver on port 53.
    pub const UDP: u32 = 1;
    /// A socket type or family that can't be redirected (raw, packet, SCTP…).
    pub const SOCKET: u32 = 2;
    /// The origin of a TCP connect could not be recorded (map full, …).
    pub const UNRECORDED: u32 = 3;
    /// No daemon configuration in the config map.
    pub const NO_CONFIG: u32 = 4;
    /// A bind to an address other than loopback (or the wildcard with
    /// port 0): a listener others could reach without the daemon.
    pub const BIND: u32 = 5;

    /// The reason's name, as the daemon's log, status and the kernel
    /// programs' debug log spell it.
    #[inline(always)]
    pub const fn name(kind: u32) -> &'static str {
        match kind {
            UDP => "udp-not-dns",
            SOCKET => "socket-type",
            UNRECORDED => "unrecorded",
            NO_CONFIG => "no-config",
            BIND => "bind-not-loopback",
            _ => "unknown",
        }
    }
}

/// A refused operation, reported through the `HOOP_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    pub kind: u32,
    pub pid: u32,
    pub cgroup_id: u64,
    /// Destination, when there is one (same encoding as [`Origin::addr`]).
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
    pub sock_type: u32,
    pub protocol: u32,
    pub _pad: u32,
}

/// `::ffff:a.b.c.d` in network-order words, from an IPv4 in network order.
#[inline(always)]
pub const fn v4_mapped(ip4_be: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4_be]
}

/// True if the network-order words hold a v4-mapped address.
#[inline(always)]
pub const fn is_v4_mapped(a: &[u32; 4]) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// True for loopback, in network-order words: `::1`, or 127.0.0.0/8
/// v4-mapped.
#[inline(always)]
pub const fn is_loopback(a: &[u32; 4]) -> bool {
    if is_v4_mapped(a) {
        return a[3].to_ne_bytes()[0] == 127;
    }
    a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == u32::from_ne_bytes([0, 0, 0, 1])
}

/// True for the wildcard address (`0.0.0.0` v4-mapped, or `::`).
#[inline(always)]
pub const fn is_unspecified(a: &[u32; 4]) -> bool {
    (a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0) || (is_v4_mapped(a) && a[3] == 0)
}

/// Whether a job may bind this address and port: loopback, always (local
/// servers, a browser's DevTools port); the wildcard only with port 0, the
/// way a client picks its own port before connecting. Anything else would
/// be a listener reachable from outside, with no daemon in its path.
#[inline(always)]
pub const fn bind_allowed(a: &[u32; 4], port: u16) -> bool {
    is_loopback(a) || (is_unspecified(a) && port == 0)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are repr(C), Copy, and have no padding bytes
    // (fields are laid out so that every byte is covered).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::LocalKey {}
    unsafe impl aya::Pod for super::DenyEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Config>(), 4 + 16 + 2 + 2 + 4 + 4);
        assert_eq!(size_of::<Origin>(), 16 + 2 + 2 + 4 + 8 + 8);
        assert_eq!(size_of::<LocalKey>(), 20);
        assert_eq!(size_of::<DenyEvent>(), 4 + 4 + 8 + 16 + 2 + 2 + 4 + 4 + 4);
    }

    #[test]
    fn v4_mapping_round_trips() {
        let ip = u32::from_ne_bytes([127, 0, 0, 2]);
        let m = v4_mapped(ip);
        assert!(is_v4_mapped(&m));
        assert_eq!(m[3], ip);
        assert!(!is_v4_mapped(&[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]));
    }

    #[test]
    fn only_loopback_and_a_wildcard_port_0_may_be_bound() {
        let v4 = |o: [u8; 4]| v4_mapped(u32::from_ne_bytes(o));
        let v6_1 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        for (addr, port, ok) in [
            (v4([127, 0, 0, 1]), 8080, true),
            (v4([127, 3, 2, 1]), 1, true),
            (v6_1, 9222, true),
            (v4([0, 0, 0, 0]), 0, true),
            ([0; 4], 0, true),
            (v4([0, 0, 0, 0]), 8080, false),
            ([0; 4], 8080, false),
            (v4([10, 0, 0, 1]), 8080, false),
            (v4([10, 0, 0, 1]), 0, false),
            (v4([128, 0, 0, 1]), 80, false),
            ([u32::from_ne_bytes([0xfe, 0x80, 0, 0]), 0, 0, 1], 80, false),
            // ::0.0.0.1 is not ::1's v4-mapped twin, nor loopback.
            ([0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xfe]), 1], 80, false),
        ] {
            assert_eq!(bind_allowed(&addr, port), ok, "{addr:x?} {port}");
        }
    }
}

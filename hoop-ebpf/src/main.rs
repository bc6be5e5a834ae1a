//! hoop's kernel side. Attached once to the hoop root cgroup and inherited by
//! every job cgroup below it:
//!
//! - `connect4/6` record where a TCP connect was going and send it to the
//!   daemon's transparent listener instead; UDP connects are only allowed to
//!   a DNS resolver.
//! - `sock_ops` re-keys that record by the socket's local address once the
//!   kernel picked it, which is what the daemon sees as the peer address.
//! - `getpeername4/6` show the job the address it asked for.
//! - `sendmsg4/6` allow unconnected UDP only to a DNS resolver (so QUIC dies
//!   and browsers fall back to TCP).
//! - `sock_create` refuses socket kinds we can't redirect (raw, SCTP, …),
//!   and ties every TCP socket to the loopback device: a listener (even
//!   one the kernel bound implicitly at `listen()`) hears only this host.
//! - `bind4/6` refuse binding anything but loopback (or the wildcard with
//!   port 0), so nothing outside reaches a job without the daemon.
//!
//! Every refusal is reported through a ring buffer. Anything unexpected
//! (no config, a full map) refuses: hoop fails closed. Each refusal is also
//! logged at debug level (aya-log): which program, why, the cgroup and the
//! destination. The daemon loads the programs with that level switched off
//! unless its own log asks for debug, and the verifier then drops the log
//! writes: only refusal paths carry the (untaken) check.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, bpf_sock_addr,
    },
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use hoop_common::{
    Config, DenyEvent, EVENTS_BYTES, LocalKey, MAX_CONNECTIONS, MAX_RESOLVERS, Origin,
    bind_allowed, deny, is_v4_mapped, v4_mapped,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_UNIX: u32 = 1;
const AF_NETLINK: u32 = 16;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const DNS_PORT: u16 = 53;
/// The loopback device's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[map(name = "HOOP_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Socket cookie -> origin. Lives as long as the job's socket (for
/// getpeername); removed by the close callback in sock_ops.
#[map(name = "HOOP_ORIG_COOKIE")]
static ORIG_BY_COOKIE: LruHashMap<u64, Origin> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// Job socket local address -> origin. The daemon takes (reads and deletes)
/// the entry when it accepts the connection.
#[map(name = "HOOP_ORIG_LOCAL")]
static ORIG_BY_LOCAL: LruHashMap<LocalKey, Origin> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// DNS resolvers a job may send UDP to (port 53 only), v4-mapped words.
#[map(name = "HOOP_RESOLVERS")]
static RESOLVERS: HashMap<[u32; 4], u8> = HashMap::pinned(MAX_RESOLVERS, 0);

#[map(name = "HOOP_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[inline(always)]
fn config() -> Option<Config> {
    let c = CONFIG.get(0)?;
    if c.enabled == 1 { Some(*c) } else { None }
}

#[inline(always)]
fn current_pid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The address words as the 16 bytes of an IPv6 address (v4-mapped for
/// IPv4), for the log's `{:i}`.
#[inline(always)]
fn ip_bytes(a: [u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = a[i].to_ne_bytes();
        b[i * 4] = w[0];
        b[i * 4 + 1] = w[1];
        b[i * 4 + 2] = w[2];
        b[i * 4 + 3] = w[3];
        i += 1;
    }
    b
}

#[inline(always)]
fn report(
    ctx: &SockAddrContext,
    prog: &str,
    kind: u32,
    sa: *const bpf_sock_addr,
    addr: [u32; 4],
    port: u16,
) {
    let (family, sock_type, protocol) = if sa.is_null() {
        (0, 0, 0)
    } else {
        unsafe { ((*sa).family, (*sa).type_, (*sa).protocol) }
    };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    debug!(
        ctx,
        target: "hoop::capture",
        "kernel: {} refused ({}) cgroup {} dst [{:i}]:{}",
        prog,
        deny::name(kind),
        cgroup_id,
        ip_bytes(addr),
        port
    );
    let ev = DenyEvent {
        kind,
        pid: current_pid(),
        cgroup_id,
        addr,
        port,
        family: family as u16,
        sock_type,
        protocol,
        _pad: 0,
    };
    // If the ring is full the refusal still stands; only the report is lost.
    let _ = EVENTS.output(&ev, 0);
}

/// The destination of a sock_addr call as (v4-mapped or v6 words, host-order port).
#[inline(always)]
fn user_dst(sa: *mut bpf_sock_addr, v6: bool) -> ([u32; 4], u16) {
    unsafe {
        let port = u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16);
        let addr = if v6 {
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ]
        } else {
            v4_mapped(read_volatile(addr_of!((*sa).user_ip4)))
        };
        (addr, port)
    }
}

#[inline(always)]
fn set_user_ip6(sa: *mut bpf_sock_addr, a: [u32; 4]) {
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), a[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), a[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), a[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), a[3]);
    }
}

#[inline(always)]
fn set_user_port(sa: *mut bpf_sock_addr, port: u16) {
    unsafe { write_volatile(addr_of_mut!((*sa).user_port), port.to_be() as u32) }
}

#[inline(always)]
fn udp_allowed(addr: &[u32; 4], port: u16) -> bool {
    port == DNS_PORT && unsafe { RESOLVERS.get(addr) }.is_some()
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    let prog = if v6 { "connect6" } else { "connect4" };
    let sa = ctx.sock_addr;
    let (addr, port) = user_dst(sa, v6);
    let sock_type = unsafe { (*sa).type_ };
    if sock_type == SOCK_DGRAM {
        if udp_allowed(&addr, port) {
            return ALLOW;
        }
        report(ctx, prog, deny::UDP, sa, addr, port);
        return REFUSE;
    }
    if sock_type != SOCK_STREAM {
        report(ctx, prog, deny::SOCKET, sa, addr, port);
        return REFUSE;
    }
    let Some(cfg) = config() else {
        report(ctx, prog, deny::NO_CONFIG, sa, addr, port);
        return REFUSE;
    };
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let origin = Origin {
        addr,
        port,
        family: if v6 { AF_INET6 as u16 } else { AF_INET as u16 },
        pid: current_pid(),
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        cookie,
    };
    if ORIG_BY_COOKIE.insert(&cookie, &origin, 0).is_err() {
        report(ctx, prog, deny::UNRECORDED, sa, addr, port);
        return REFUSE;
    }
    if !v6 {
        unsafe { write_volatile(addr_of_mut!((*sa).user_ip4), cfg.listen4) };
    } else if is_v4_mapped(&addr) {
        // A v6 socket talking to an IPv4 peer must stay v4-mapped.
        set_user_ip6(sa, v4_mapped(cfg.listen4));
    } else {
        set_user_ip6(sa, cfg.listen6);
    }
    set_user_port(sa, cfg.listen_port);
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn hoop_connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn hoop_connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, true)
}

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let (addr, port) = user_dst(sa, v6);
    if bind_allowed(&addr, port) {
        return ALLOW;
    }
    report(
        ctx,
        if v6 { "bind6" } else { "bind4" },
        deny::BIND,
        sa,
        addr,
        port,
    );
    REFUSE
}

#[cgroup_sock_addr(bind4)]
pub fn hoop_bind4(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, false)
}

#[cgroup_sock_addr(bind6)]
pub fn hoop_bind6(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, true)
}

#[inline(always)]
fn on_sendmsg(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let (addr, port) = user_dst(sa, v6);
    if udp_allowed(&addr, port) {
        return ALLOW;
    }
    let prog = if v6 { "sendmsg6" } else { "sendmsg4" };
    report(ctx, prog, deny::UDP, sa, addr, port);
    REFUSE
}

#[cgroup_sock_addr(sendmsg4)]
pub fn hoop_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn hoop_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_sendmsg(&ctx, true)
}

#[inline(always)]
fn on_getpeername(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if let Some(o) = unsafe { ORIG_BY_COOKIE.get(&cookie) } {
        if v6 {
            set_user_ip6(sa, o.addr);
        } else {
            unsafe { write_volatile(addr_of_mut!((*sa).user_ip4), o.addr[3]) };
        }
        set_user_port(sa, o.port);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn hoop_getpeername4(ctx: SockAddrContext) -> i32 {
    on_getpeername(&ctx, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn hoop_getpeername6(ctx: SockAddrContext) -> i32 {
    on_getpeername(&ctx, true)
}

#[sock_ops]
pub fn hoop_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        on_tcp_connect(&ctx);
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE {
        on_tcp_close(&ctx);
    }
    1
}

#[inline(always)]
fn local_key(ctx: &SockOpsContext, origin: &Origin) -> LocalKey {
    // A v6 socket connecting to a v4-mapped address runs the IPv4 stack: its
    // IPv6 local address is only filled in after this callback.
    // The verifier only accepts constant-offset ctx loads. Read every field
    // unconditionally, then choose in registers: loads inside the branches
    // get merged by the optimiser into one computed ctx offset.
    let ops = ctx.ops;
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).local_ip4)),
            [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ],
            read_volatile(addr_of!((*ops).local_port)),
        )
    };
    let addr = if family == AF_INET || is_v4_mapped(&origin.addr) {
        v4_mapped(ip4)
    } else {
        ip6
    };
    LocalKey { addr, port }
}

#[inline(always)]
fn on_tcp_connect(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return;
    };
    let origin = *origin;
    let key = local_key(ctx, &origin);
    // If this fails the daemon finds no record and closes the connection:
    // still closed, never open.
    let _ = ORIG_BY_LOCAL.insert(&key, &origin, 0);
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

#[inline(always)]
fn on_tcp_close(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(origin) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return;
    };
    let origin = *origin;
    let key = local_key(ctx, &origin);
    // Only remove the local entry if it is still ours: the port may already
    // belong to a newer connect.
    if let Some(o) = unsafe { ORIG_BY_LOCAL.get(&key) }
        && o.cookie == cookie
    {
        let _ = ORIG_BY_LOCAL.remove(&key);
    }
    let _ = ORIG_BY_COOKIE.remove(&cookie);
}

#[cgroup_sock(sock_create)]
pub fn hoop_sock_create(ctx: SockContext) -> i32 {
    let (family, ty, proto) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    let tcp = ty == SOCK_STREAM && (proto == 0 || proto == IPPROTO_TCP);
    let ok = match family {
        AF_UNIX | AF_NETLINK => true,
        AF_INET | AF_INET6 => tcp || (ty == SOCK_DGRAM && (proto == 0 || proto == IPPROTO_UDP)),
        _ => false,
    };
    if ok {
        if tcp {
            // Its connects go to the daemon, on loopback, anyway; what this
            // stops is listen() on a socket the kernel binds to the
            // wildcard itself, where no bind hook runs. Rebinding to
            // another device takes CAP_NET_RAW.
            unsafe { write_volatile(addr_of_mut!((*ctx.sock).bound_dev_if), LOOPBACK_IFINDEX) };
        }
        return ALLOW;
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    debug!(
        &ctx,
        target: "hoop::capture",
        "kernel: sock_create refused ({}) cgroup {} family {} type {} protocol {}",
        deny::name(deny::SOCKET),
        cgroup_id,
        family,
        ty,
        proto
    );
    let ev = DenyEvent {
        kind: deny::SOCKET,
        pid: current_pid(),
        cgroup_id,
        family: family as u16,
        sock_type: ty,
        protocol: proto,
        ..DenyEvent::default()
    };
    let _ = EVENTS.output(&ev, 0);
    REFUSE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

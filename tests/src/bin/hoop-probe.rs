//! hoop-probe: what a hostile (or merely curious) job tries, one attempt per
//! invocation. Prints one line `pid=<pid> ok|err <detail>` and exits 0 when
//! the attempt succeeded, 2 when it failed. Used inside `hoop run` by the
//! privileged suites; never aimed anywhere but loopback.
use std::{
    io::{Read, Write},
    mem::size_of,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, ExitCode},
    time::Duration,
};

type R = Result<String, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let addr = || {
        a(1).parse::<SocketAddr>()
            .map_err(|e| format!("bad address {}: {e}", a(1)))
    };
    let result: R = match a(0).as_str() {
        "tcp" => addr().and_then(http_get),
        "peername" => addr().and_then(peername),
        "udp" => addr().and_then(udp_sendto),
        "udp-connect" => addr().and_then(udp_connect),
        "raw" => socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "raw6" => socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        "packet" => socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        ),
        "icmp" => socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "sctp" => socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        "mptcp" => socket(libc::AF_INET, libc::SOCK_STREAM, 262),
        // family N TYPE: socket(N, TYPE, 0), for families hoop never hooks.
        "family" => socket(
            a(1).parse().unwrap_or(-1),
            a(2).parse().unwrap_or(libc::SOCK_STREAM),
            0,
        ),
        "listen" => addr().and_then(listen),
        "listen-auto" => listen_auto(),
        "io_uring" => io_uring(),
        "ptrace" => ptrace_seize(a(1).parse().unwrap_or(0)),
        "pidfd-getfd" => pidfd_getfd(a(1).parse().unwrap_or(0)),
        "userns" => userns(),
        // bind-loop N: N × (socket, bind 127.0.0.1:0, close); ns per round,
        // for the cost of the socket hooks and the seccomp filter.
        "bind-loop" => bind_loop(a(1).parse().unwrap_or(100_000)),
        // control SOCKET JSON: one request to the daemon, its answer.
        "control" => control(&a(1), &a(2)),
        // orphan SOCKET GOFILE JSON: connect, then leave the connection to
        // a child and exit, so this pid can be reused; the child sends
        // JSON once GOFILE exists and writes the answer to GOFILE.answer.
        "orphan" => orphan(&a(1), &a(2), &a(3)),
        "tfo" => addr().and_then(tcp_fastopen),
        "thread" => addr().and_then(|ad| std::thread::spawn(move || http_get(ad)).join().unwrap()),
        "child" => child(&a(1)),
        "escape" => escape(&a(1)),
        "rawtcp" => addr().and_then(raw_tcp),
        "hold" => addr().and_then(|ad| hold(ad, a(2).parse().unwrap_or(2))),
        // ws ADDR HOST CA PATH N [MESSAGE…]: a WebSocket session; prints the
        // first N messages that came back, as JSON.
        "ws" => addr().and_then(|ad| {
            let send: Vec<String> = args.iter().skip(6).cloned().collect();
            let n = a(5).parse().unwrap_or(0);
            hoop_testkit::wsclient::session(ad, &a(2), a(3).as_ref(), &a(4), &send, n)
                .map(|got| serde_json::to_string(&got).unwrap_or_default())
        }),
        "loop" => {
            return looping(
                addr(),
                a(2).parse().unwrap_or(100),
                a(3).parse().unwrap_or(50),
            );
        }
        other => Err(format!("unknown probe {other:?}")),
    };
    let pid = std::process::id();
    match result {
        Ok(d) => {
            println!("pid={pid} ok {d}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("pid={pid} err {e}");
            ExitCode::from(2)
        }
    }
}

fn http_get(addr: SocketAddr) -> R {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let peer = s.peer_addr().map_err(|e| e.to_string())?;
    // The Host must be the destination: hoop refuses a plaintext request
    // whose Host does not lead where the connection goes.
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    let last = body.lines().last().unwrap_or("").to_string();
    if body.is_empty() {
        return Err(format!("peer={peer} empty response"));
    }
    Ok(format!("peer={peer} body={last}"))
}

fn peername(addr: SocketAddr) -> R {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    let peer = s.peer_addr().map_err(|e| e.to_string())?;
    Ok(format!("peer={peer}"))
}

fn udp_sendto(addr: SocketAddr) -> R {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = std::net::UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.send_to(b"probe", addr)
        .map(|n| format!("sent {n}"))
        .map_err(|e| e.to_string())
}

fn udp_connect(addr: SocketAddr) -> R {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = std::net::UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.send(b"probe")
        .map(|n| format!("sent {n}"))
        .map_err(|e| e.to_string())
}

fn socket(domain: i32, ty: i32, proto: i32) -> R {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(format!("socket({domain},{ty},{proto}) created"))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; we fill the matching variant.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// TCP Fast Open: the connect happens inside sendto(MSG_FASTOPEN).
fn tcp_fastopen(addr: SocketAddr) -> R {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscalls on an fd we own.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (ss, len) = sockaddr(addr);
    let req = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let req = req.as_bytes();
    let n = unsafe {
        libc::sendto(
            owned.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            libc::MSG_FASTOPEN,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if n < 0 {
        return Err(format!(
            "sendto(MSG_FASTOPEN): {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut s = TcpStream::from(owned);
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    if body.is_empty() {
        return Err("empty response".into());
    }
    Ok(format!("body={}", body.lines().last().unwrap_or("")))
}

/// Speaks something that is neither TLS nor HTTP (an SSH banner).
fn raw_tcp(addr: SocketAddr) -> R {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n")
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    if got.is_empty() {
        Err("closed without a byte".into())
    } else {
        Ok(format!("got {} bytes", got.len()))
    }
}

/// Connects and keeps the connection open for `secs` without a request.
fn hold(addr: SocketAddr, secs: u64) -> R {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(secs));
    drop(s);
    Ok(format!("held {secs}s"))
}

/// Runs `tcp ADDR` in a child process.
fn child(addr: &str) -> R {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["tcp", addr])
        .output()
        .map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(format!("child: {line}"))
    } else {
        Err(format!("child: {line}"))
    }
}

/// Tries to move itself into another cgroup (e.g. the cgroup2 root).
fn escape(procs: &str) -> R {
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(procs)
        .and_then(|mut f| f.write_all(std::process::id().to_string().as_bytes()));
    let now = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let cg = now
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or("")
        .to_string();
    match r {
        Ok(()) => Ok(format!("moved; now {cg}")),
        Err(e) => Err(format!("{e}; still {cg}")),
    }
}

/// Connects every `ms` for `n` rounds, printing one line per attempt.
fn looping(addr: Result<SocketAddr, String>, ms: u64, n: u32) -> ExitCode {
    let Ok(addr) = addr else {
        return ExitCode::from(2);
    };
    for i in 0..n {
        match http_get(addr) {
            Ok(d) => println!("{i} ok {d}"),
            Err(e) => println!("{i} err {e}"),
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(ms));
    }
    ExitCode::SUCCESS
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

/// bind + listen on ADDR.
fn listen(addr: SocketAddr) -> R {
    let l = std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    Ok(format!(
        "listening on {local} device={}",
        bound_device(l.as_raw_fd())
    ))
}

/// listen() with no bind: the kernel binds the wildcard itself, where no
/// bind hook runs. Prints the device the socket is tied to.
fn listen_auto() -> R {
    // SAFETY: plain socket/listen; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(errno());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if unsafe { libc::listen(fd.as_raw_fd(), 1) } != 0 {
        return Err(errno());
    }
    let l = std::net::TcpListener::from(fd);
    let local = l.local_addr().map_err(|e| e.to_string())?;
    Ok(format!(
        "listening on {local} device={}",
        bound_device(l.as_raw_fd())
    ))
}

/// SO_BINDTODEVICE's name, or "" when the socket has none.
fn bound_device(fd: i32) -> String {
    let mut name = [0u8; libc::IFNAMSIZ];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `name`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return format!("?{}", errno());
    }
    String::from_utf8_lossy(&name[..len as usize])
        .trim_end_matches('\0')
        .to_string()
}

/// io_uring_setup(1, params): a ring that could create sockets past a
/// seccomp filter.
fn io_uring() -> R {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes a 120-byte io_uring_params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(errno());
    }
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok("io_uring ring created".into())
}

/// PTRACE_SEIZE PID, then let go.
fn ptrace_seize(pid: i32) -> R {
    // SAFETY: PTRACE_SEIZE takes no pointers; exiting detaches.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    if r != 0 {
        return Err(errno());
    }
    Ok(format!("seized {pid}"))
}

/// pidfd_getfd: takes a copy of PID's stdin, as if it were ours.
fn pidfd_getfd(pid: i32) -> R {
    // SAFETY: pidfd_open and pidfd_getfd take no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(format!("pidfd_open: {}", errno()));
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), 0, 0) };
    if fd < 0 {
        return Err(errno());
    }
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(format!("took fd 0 of {pid}"))
}

/// unshare(CLONE_NEWUSER|CLONE_NEWNET): a namespace of the job's own.
fn userns() -> R {
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        return Err(errno());
    }
    Ok("in a new user and network namespace".into())
}

fn control(socket: &str, json: &str) -> R {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    ask(&mut s, json)
}

fn ask(s: &mut std::os::unix::net::UnixStream, json: &str) -> R {
    s.write_all(format!("{json}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(format!("answer={}", answer.trim()))
}

fn orphan(socket: &str, go: &str, json: &str) -> R {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    // SAFETY: single-threaded here; the child only does plain IO and exits.
    match unsafe { libc::fork() } {
        -1 => Err(errno()),
        0 => {
            // Let go of the caller's stdout so it sees the parent finish.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                unsafe {
                    libc::dup2(null.as_raw_fd(), 1);
                    libc::dup2(null.as_raw_fd(), 2);
                }
            }
            let t = std::time::Instant::now();
            while !std::path::Path::new(go).exists() && t.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let answer = ask(&mut s, json).unwrap_or_else(|e| format!("error {e}"));
            let _ = std::fs::write(format!("{go}.answer"), answer);
            std::process::exit(0)
        }
        _ => Ok("connected, and left the connection to a child".into()),
    }
}

fn bind_loop(n: u32) -> R {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (sa, len) = sockaddr(addr);
    let t = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: plain socket/bind/close on an fd owned right here.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return Err(errno());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                len,
            )
        } != 0
        {
            return Err(errno());
        }
    }
    let ns = t.elapsed().as_nanos() / u128::from(n.max(1));
    Ok(format!("ns_per_round={ns}"))
}

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

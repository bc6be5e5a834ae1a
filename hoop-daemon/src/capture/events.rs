//! Refusals reported by the kernel programs through the ring buffer.
use std::{net::SocketAddr, sync::Arc};

use aya::maps::{MapData, RingBuf};
use hoop_common::{DenyEvent, deny};

use super::words_ip;
use crate::jobs::Jobs;

/// A refusal, decoded for logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyReport {
    pub reason: &'static str,
    pub pid: u32,
    pub cgroup_id: u64,
    pub dst: Option<SocketAddr>,
    pub family: u16,
    pub sock_type: u32,
    pub protocol: u32,
}

impl From<&DenyEvent> for DenyReport {
    fn from(e: &DenyEvent) -> Self {
        let reason = deny::name(e.kind);
        let dst = (e.kind != deny::SOCKET).then(|| SocketAddr::new(words_ip(e.addr), e.port));
        Self {
            reason,
            pid: e.pid,
            cgroup_id: e.cgroup_id,
            dst,
            family: e.family,
            sock_type: e.sock_type,
            protocol: e.protocol,
        }
    }
}

/// Logs and records every refusal with the pid, cgroup and job. Runs until
/// the daemon exits.
pub fn spawn_event_reader(
    ring: RingBuf<MapData>,
    jobs: Arc<Jobs>,
    audit: crate::audit::Audit,
) -> std::io::Result<()> {
    let mut fd = crate::sys::async_ring(ring)?;
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "event ring buffer failed; refusals are no longer logged");
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < size_of::<DenyEvent>() {
                    continue;
                }
                let ev: DenyEvent = bytes_to_event(&item);
                let r = DenyReport::from(&ev);
                let job = jobs.by_cgroup(r.cgroup_id).map(|j| j.id.clone());
                tracing::warn!(
                    reason = r.reason,
                    pid = r.pid,
                    cgroup = r.cgroup_id,
                    job = job.as_deref().unwrap_or("-"),
                    dst = %r.dst.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                    family = r.family,
                    sock_type = r.sock_type,
                    protocol = r.protocol,
                    "kernel refused a job socket operation"
                );
                audit.record(crate::audit::Entry::of(
                    &crate::audit::entry::ConnectDeniedData {
                        session: job
                            .clone()
                            .unwrap_or_else(|| crate::audit::entry::cgroup_session(r.cgroup_id)),
                        job,
                        cgroup_id: r.cgroup_id,
                        pid: r.pid,
                        dst: r.dst.map(|d| d.to_string()),
                        reason: r.reason.to_string(),
                        by: "kernel".into(),
                    },
                ));
                jobs.count_denied(r.cgroup_id);
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

fn bytes_to_event(b: &[u8]) -> DenyEvent {
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().unwrap());
    DenyEvent {
        kind: u32_at(0),
        pid: u32_at(4),
        cgroup_id: u64::from_ne_bytes(b[8..16].try_into().unwrap()),
        addr: [u32_at(16), u32_at(20), u32_at(24), u32_at(28)],
        port: u16_at(32),
        family: u16_at(34),
        sock_type: u32_at(36),
        protocol: u32_at(40),
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_kernel_layout() {
        let ev = DenyEvent {
            kind: deny::UDP,
            pid: 42,
            cgroup_id: 7,
            addr: crate::capture::ip_words("127.0.0.9".parse().unwrap()),
            port: 443,
            family: 2,
            sock_type: 2,
            protocol: 17,
            _pad: 0,
        };
        // Serialise exactly as the kernel does: the struct's raw bytes.
        let mut b = Vec::new();
        b.extend_from_slice(&ev.kind.to_ne_bytes());
        b.extend_from_slice(&ev.pid.to_ne_bytes());
        b.extend_from_slice(&ev.cgroup_id.to_ne_bytes());
        for w in ev.addr {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&ev.port.to_ne_bytes());
        b.extend_from_slice(&ev.family.to_ne_bytes());
        b.extend_from_slice(&ev.sock_type.to_ne_bytes());
        b.extend_from_slice(&ev.protocol.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(b.len(), size_of::<DenyEvent>());
        assert_eq!(bytes_to_event(&b), ev);
        let r = DenyReport::from(&ev);
        assert_eq!(r.dst, Some("127.0.0.9:443".parse().unwrap()));
        assert_eq!(r.reason, "udp-not-dns");
    }
}

//! Time limits on a served job connection, so that a job cannot hold the
//! daemon's connections without using them:
//! - a request head (HTTP/1) must arrive whole within `header_read_timeout`
//!   of its first byte, or the connection is closed (slow-header clients);
//! - a connection with no request in flight for `idle_timeout` is closed
//!   gracefully (HTTP/1 keep-alive; HTTP/2 with a GOAWAY);
//! - after `upstream_idle` with no request in flight, the upstream
//!   connection kept for the next request is let go.
//!
//! hyper's own HTTP/1 `header_read_timeout` also runs while a keep-alive
//! connection waits for its next request, so it cannot tell a slow head
//! from an idle connection; this watch can. One timer per connection.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use super::body::Body;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

const NO_HEAD: u64 = u64::MAX;
/// How long a gracefully closing idle connection may take to finish.
pub const GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub upstream_idle: Duration,
}

impl Timeouts {
    pub fn of(cfg: &crate::config::Config) -> Self {
        Self {
            header_read: cfg.limits.header_read_timeout(),
            idle: cfg.limits.idle_timeout(),
            upstream_idle: cfg.limits.upstream_idle_timeout(),
        }
    }
}

/// Why a watched connection was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head took longer than `header_read`.
    Head,
    /// Idle, and it did not close within the grace after being asked to.
    Idle,
}

/// What one connection is doing, as its timer sees it.
#[derive(Clone)]
pub struct Watch(Arc<State>);

struct State {
    epoch: Instant,
    /// Requests in flight: from their head to the end of their response.
    active: AtomicUsize,
    /// When the last request ended (ms since `epoch`).
    last: AtomicU64,
    /// When the first byte of a head arrived with no request in flight.
    head: AtomicU64,
    /// Whether bytes read between requests start a head (HTTP/1 only; on
    /// HTTP/2 they are frames such as PING).
    heads: bool,
    /// Wakes the timer when a head starts or a request ends.
    wake: tokio::sync::Notify,
}

impl State {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A request in flight; dropped when its response is done.
pub struct Active(Arc<State>);

impl Active {
    /// `body`, keeping the request in flight until it is done or dropped.
    pub fn hold(self, body: Body) -> Body {
        super::body::boxed(Held(body, self))
    }
}

/// A response body with its request's [`Active`]. Size and end are the
/// inner body's (a length hyper knows becomes Content-Length).
struct Held(Body, #[allow(dead_code)] Active);

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.last.store(self.0.now(), SeqCst);
        self.0.active.fetch_sub(1, SeqCst);
        self.0.wake.notify_one();
    }
}

impl Watch {
    /// `heads`: the connection speaks HTTP/1.
    pub fn new(heads: bool) -> Self {
        Self(Arc::new(State {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            head: AtomicU64::new(NO_HEAD),
            heads,
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// The connection's IO, watched for the first bytes of a head.
    pub fn io<IO>(&self, io: IO) -> Watched<IO> {
        Watched {
            inner: io,
            st: self.0.clone(),
        }
    }

    /// A request's head is in; it is in flight until the guard drops.
    pub fn enter(&self) -> Active {
        self.0.active.fetch_add(1, SeqCst);
        self.0.head.store(NO_HEAD, SeqCst);
        Active(self.0.clone())
    }

    /// Resolves when a time limit ends the connection: `Head` at once, or
    /// `Idle`, when the caller asks it to close gracefully (see [`GRACE`]).
    /// Before that, at `upstream_idle`, `release` lets the kept upstream go.
    pub async fn expired(&self, t: Timeouts, release: impl Fn()) -> Expired {
        let st = &self.0;
        let ms = |d: Duration| d.as_millis() as u64;
        let sleep = tokio::time::sleep(t.idle.min(t.upstream_idle));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = sleep.as_mut() => {}
                () = st.wake.notified() => {}
            }
            let now = st.now();
            let head = st.head.load(SeqCst);
            let next = if st.active.load(SeqCst) > 0 {
                now + ms(t.idle)
            } else if head != NO_HEAD {
                if now >= head + ms(t.header_read) {
                    return Expired::Head;
                }
                head + ms(t.header_read)
            } else {
                let last = st.last.load(SeqCst);
                if now >= last + ms(t.idle) {
                    return Expired::Idle;
                }
                if now >= last + ms(t.upstream_idle) {
                    release();
                    last + ms(t.idle)
                } else {
                    last + ms(t.upstream_idle)
                }
            };
            sleep
                .as_mut()
                .reset(st.epoch + Duration::from_millis(next.max(now + 1)));
        }
    }
}

/// IO that notes when a head starts arriving between requests.
pub struct Watched<IO> {
    inner: IO,
    st: Arc<State>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let st = &self.st;
        if st.heads
            && buf.filled().len() > before
            && st.active.load(SeqCst) == 0
            && st.head.load(SeqCst) == NO_HEAD
        {
            st.head.store(st.now(), SeqCst);
            st.wake.notify_one();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn t(ms: u64) -> Timeouts {
        Timeouts {
            header_read: Duration::from_millis(ms),
            idle: Duration::from_millis(ms * 3),
            upstream_idle: Duration::from_millis(ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_and_not_finished_expires_after_header_read() {
        let w = Watch::new(true);
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = w.io(a);
        let started = Instant::now();
        // Idle a while first: the head's clock starts at its first byte.
        tokio::time::sleep(Duration::from_millis(250)).await;
        b.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        assert_eq!(w.expired(t(100), || {}).await, Expired::Head);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_millis(400),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_are_no_head() {
        let w = Watch::new(false);
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = w.io(a);
        b.write_all(b"PING").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        assert_eq!(w.expired(t(100), || {}).await, Expired::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_not_idle_and_idle_releases_then_closes() {
        let w = Watch::new(true);
        let released = std::sync::atomic::AtomicUsize::new(0);
        let active = w.enter();
        let started = Instant::now();
        let hold = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            drop(active);
        });
        let e = w
            .expired(t(100), || {
                released.fetch_add(1, SeqCst);
            })
            .await;
        hold.await.unwrap();
        assert_eq!(e, Expired::Idle);
        let took = started.elapsed();
        // In flight for 1 s, then idle 300 ms.
        assert!(
            took >= Duration::from_millis(1300) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert!(released.load(SeqCst) >= 1);
    }
}

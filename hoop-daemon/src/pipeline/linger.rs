//! Lingering: hoop often answers before it read a request's whole body (a
//! refusal, a 503, an upstream that answered early). The job, still
//! sending, must get that answer all the same, so what it still sends is
//! read and discarded for a moment instead of being refused:
//! - [`Drain`]: a request body dropped unread is read to its end in the
//!   background. Otherwise an HTTP/2 stream ends with RST_STREAM right
//!   behind the answer, and clients (curl) may drop the answer with it;
//!   an HTTP/1 connection would have to close.
//! - [`Linger`]: when an HTTP/1 connection closes anyway, the kernel would
//!   answer the job's still-arriving bytes with a reset, and the job could
//!   lose the answer it was about to read. hoop shuts its side first, then
//!   drains, as web servers do.
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long, and how much, a closing connection keeps reading.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// A job's request body that, dropped before its end, is read to its end
/// in the background (up to LINGER and LINGER_BYTES).
pub struct Drain<B: HttpBody + Send + Unpin + 'static> {
    inner: Option<B>,
    /// Sent with `Expect: 100-continue`: the job waits for a go-ahead
    /// before it sends the body, so a body never asked for is never coming.
    expects_continue: bool,
    polled: bool,
    /// Read to its end (a chunked HTTP/1 body doesn't tell by itself).
    ended: bool,
}

impl<B: HttpBody + Send + Unpin + 'static> Drain<B> {
    pub fn new(inner: B, expects_continue: bool) -> Self {
        Self {
            inner: Some(inner),
            expects_continue,
            polled: false,
            ended: false,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> HttpBody for Drain<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(b) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(b).poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.ended = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl<B: HttpBody + Send + Unpin + 'static> Drop for Drain<B> {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if self.ended || body.is_end_stream() || (self.expects_continue && !self.polled) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let discard = async {
                let mut left = LINGER_BYTES;
                while let Some(Ok(f)) = body.frame().await {
                    let n = f.data_ref().map_or(0, |d| d.remaining());
                    left = left.saturating_sub(n);
                    if left == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, discard).await;
        });
    }
}

pub struct Linger<IO> {
    io: IO,
    draining: Option<Draining>,
}

struct Draining {
    deadline: Pin<Box<tokio::time::Sleep>>,
    left: usize,
}

impl<IO> Linger<IO> {
    pub fn new(io: IO) -> Self {
        Self { io, draining: None }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Linger<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// Shuts the write side (the job gets the end of the answer), then
    /// drains the read side until the job closes, LINGER passes or
    /// LINGER_BYTES were read. Errors while draining end it quietly.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.draining.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.draining = Some(Draining {
                deadline: Box::pin(tokio::time::sleep(LINGER)),
                left: LINGER_BYTES,
            });
        }
        let d = this.draining.as_mut().expect("set above");
        let mut scratch = [0u8; 8192];
        loop {
            if d.left == 0 || d.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => d.left = d.left.saturating_sub(buf.filled().len()),
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A body that never yields; the Arc counts who still holds it.
    struct Pending(#[allow(dead_code)] std::sync::Arc<()>);

    impl HttpBody for Pending {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn an_unread_body_is_drained_unless_it_was_never_asked_for() {
        let held = std::sync::Arc::new(());
        drop(Drain::new(Pending(held.clone()), false));
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            2,
            "drained in the background"
        );
        let held = std::sync::Arc::new(());
        drop(Drain::new(Pending(held.clone()), true));
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            1,
            "a 100-continue body nobody asked for is not waited for"
        );
    }

    /// The answer survives a job that is still sending when hoop closes.
    #[tokio::test]
    async fn an_answer_sent_before_the_body_was_read_reaches_the_job() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let job = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            // Far more than the socket buffers hold, which the server never
            // reads; like curl, the answer is read once the body is sent.
            let body = vec![b'x'; 8 << 20];
            s.write_all(&body).await?;
            s.shutdown().await?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await.map(|_| answer)
        });
        let (s, _) = l.accept().await.unwrap();
        let mut s = Linger::new(s);
        let mut head = [0u8; 1024];
        let _ = s.read(&mut head).await.unwrap();
        s.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        let answer = job
            .await
            .unwrap()
            .expect("the job read its answer, no reset");
        assert!(answer.starts_with(b"HTTP/1.1 403"), "{answer:?}");
    }
}

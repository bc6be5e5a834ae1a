//! Bodies stream through hoop frame by frame; nothing is buffered unless a
//! phase's transform chooses to.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

use crate::policy::phases::BodyTransform;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn boxed<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// A body that yields `prefix` first, then the rest of `inner` (a
/// response read partly before the pipeline decided to stream it).
pub fn prefixed(prefix: Bytes, inner: Body) -> Body {
    use futures_util::stream::{self, StreamExt};
    let head = stream::once(async move { Ok::<_, BoxError>(Frame::data(prefix)) });
    let rest = http_body_util::BodyStream::new(inner);
    http_body_util::StreamBody::new(head.chain(rest)).boxed_unsync()
}

/// Appends to `buf` what of `data` fits under `cap` bytes.
fn keep_first(buf: &mut bytes::BytesMut, cap: usize, data: &[u8]) {
    let room = cap.saturating_sub(buf.len());
    if room > 0 {
        buf.extend_from_slice(&data[..room.min(data.len())]);
    }
}

/// What a [`Tee`] has seen so far.
#[derive(Debug, Default)]
pub struct Teed {
    pub bytes: u64,
    pub captured: bytes::BytesMut,
    pub cap: usize,
}

/// Passes a body through, counting it and copying its first `cap` bytes
/// into a shared buffer as they pass: the request body, which the record
/// of the response reads whenever that comes (hyper may drop the request
/// body later than the response ends).
pub struct Tee {
    inner: Body,
    seen: std::sync::Arc<std::sync::Mutex<Teed>>,
}

impl Tee {
    pub fn new(inner: Body, seen: std::sync::Arc<std::sync::Mutex<Teed>>) -> Self {
        Self { inner, seen }
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            let mut t = self.seen.lock().unwrap();
            t.bytes += d.len() as u64;
            let cap = t.cap;
            keep_first(&mut t.captured, cap, d);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a body went: its size, whether it completed, and the first bytes
/// (up to the capture limit) for the audit log.
#[derive(Debug, Default)]
pub struct Tally {
    pub bytes: u64,
    pub ok: bool,
    pub captured: Bytes,
    /// What the transform masked on the way.
    pub masked: crate::policy::mask::Counts,
}

/// Wraps a body: counts its bytes, applies an optional transform, keeps
/// the first `capture` bytes of what it passes on, and calls `done` exactly
/// once, at the end or when dropped early.
pub struct Observed<F: FnOnce(Tally) + Send + Unpin> {
    inner: Body,
    transform: Option<Box<dyn BodyTransform>>,
    bytes: u64,
    capture: usize,
    captured: bytes::BytesMut,
    done: Option<F>,
    finished: bool,
    /// Trailers that wait for the transform's held bytes to go first.
    trailers: Option<Frame<Bytes>>,
}

impl<F: FnOnce(Tally) + Send + Unpin> Observed<F> {
    pub fn new(
        inner: Body,
        transform: Option<Box<dyn BodyTransform>>,
        capture: usize,
        done: F,
    ) -> Self {
        Self {
            inner,
            transform,
            bytes: 0,
            capture,
            captured: bytes::BytesMut::new(),
            done: Some(done),
            finished: false,
            trailers: None,
        }
    }

    fn pass(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
        keep_first(&mut self.captured, self.capture, data);
    }

    fn complete(&mut self, ok: bool) {
        if let Some(f) = self.done.take() {
            f(Tally {
                bytes: self.bytes,
                ok,
                captured: std::mem::take(&mut self.captured).freeze(),
                masked: self
                    .transform
                    .as_ref()
                    .map(|t| t.masked())
                    .unwrap_or_default(),
            });
        }
    }
}

impl<F: FnOnce(Tally) + Send + Unpin> HttpBody for Observed<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(t)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match (frame.into_data(), this.transform.as_mut()) {
                    (Ok(data), Some(t)) => Frame::data(t.chunk(data)),
                    (Ok(data), None) => Frame::data(data),
                    (Err(frame), Some(t)) => match frame.into_trailers() {
                        Ok(mut trailers) => {
                            t.trailers(&mut trailers);
                            // Trailers end the body: what the transform
                            // holds goes first.
                            let tail = t.finish();
                            if tail.is_empty() {
                                Frame::trailers(trailers)
                            } else {
                                this.trailers = Some(Frame::trailers(trailers));
                                Frame::data(tail)
                            }
                        }
                        Err(frame) => frame,
                    },
                    (Err(frame), None) => frame,
                };
                if let Some(d) = frame.data_ref() {
                    this.pass(d);
                }
                // hyper stops polling once the body says it has ended: this
                // was the last frame, so the body completed.
                if this.transform.is_none() && this.inner.is_end_stream() {
                    this.finished = true;
                    this.complete(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finished = true;
                this.complete(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finished = true;
                let tail = this
                    .transform
                    .as_mut()
                    .map(|t| t.finish())
                    .filter(|b| !b.is_empty());
                if let Some(tail) = tail {
                    this.pass(&tail);
                    this.complete(true);
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                this.complete(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || (self.transform.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // A transform may change the length.
        if self.transform.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl<F: FnOnce(Tally) + Send + Unpin> Drop for Observed<F> {
    fn drop(&mut self) {
        self.complete(false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Upper;
    impl BodyTransform for Upper {
        fn chunk(&mut self, data: Bytes) -> Bytes {
            Bytes::from(data.to_ascii_uppercase())
        }
        fn finish(&mut self) -> Bytes {
            Bytes::from_static(b"!")
        }
    }

    #[tokio::test]
    async fn counts_transforms_and_reports_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let b = Observed::new(full("hello"), Some(Box::new(Upper)), 4, move |t| {
            s.lock().unwrap().push((t.bytes, t.ok, t.captured))
        });
        let out = b.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"HELLO!");
        // What the job got, capped at the capture limit.
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(6, true, Bytes::from_static(b"HELL"))]
        );
    }

    /// Holds everything back and stamps the trailers it sees.
    struct Hold(Vec<u8>);
    impl BodyTransform for Hold {
        fn chunk(&mut self, data: Bytes) -> Bytes {
            self.0.extend_from_slice(&data);
            Bytes::new()
        }
        fn finish(&mut self) -> Bytes {
            Bytes::from(std::mem::take(&mut self.0))
        }
        fn trailers(&mut self, t: &mut http::HeaderMap) {
            t.insert("x-seen", http::HeaderValue::from_static("1"));
        }
    }

    #[tokio::test]
    async fn trailers_pass_through_the_transform_after_what_it_held() {
        use futures_util::stream;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-echo", http::HeaderValue::from_static("v"));
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"held "))),
            Ok(Frame::data(Bytes::from_static(b"back"))),
            Ok(Frame::trailers(trailers)),
        ];
        let inner = http_body_util::StreamBody::new(stream::iter(frames)).boxed_unsync();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut b = Observed::new(inner, Some(Box::new(Hold(Vec::new()))), 100, move |t| {
            s.lock().unwrap().push((t.bytes, t.ok))
        });
        let mut frames = Vec::new();
        while let Some(f) = b.frame().await {
            frames.push(f.unwrap());
        }
        let kinds: Vec<String> = frames
            .iter()
            .map(|f| match (f.data_ref(), f.trailers_ref()) {
                (Some(d), _) => String::from_utf8_lossy(d).into_owned(),
                (_, Some(t)) => format!("trailers {:?} {:?}", t["x-echo"], t["x-seen"]),
                _ => "?".into(),
            })
            .filter(|k| !k.is_empty())
            .collect();
        assert_eq!(kinds, ["held back", "trailers \"v\" \"1\""]);
        drop(b);
        assert_eq!(*seen.lock().unwrap(), vec![(9, true)]);
    }

    #[tokio::test]
    async fn a_body_that_ends_with_its_last_frame_completes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut b = Observed::new(full("whole"), None, 0, move |t| {
            s.lock().unwrap().push((t.bytes, t.ok))
        });
        // Read the one frame, then drop it as hyper does at end of stream.
        let f = b.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "whole");
        assert!(b.is_end_stream());
        drop(b);
        assert_eq!(*seen.lock().unwrap(), vec![(5, true)]);
    }

    #[tokio::test]
    async fn an_abandoned_body_reports_incomplete() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        drop(Observed::new(full("x"), None, 0, move |t| {
            s.lock().unwrap().push((t.bytes, t.ok))
        }));
        assert_eq!(*seen.lock().unwrap(), vec![(0, false)]);
    }
}

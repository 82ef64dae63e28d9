//! One body type for both directions, so that no request or response is boxed.
//!
//! `Body::reclaimable` wraps a client's request body so that, when the upstream connection
//! fails before hyper polled the body (nothing was sent), the body can be taken back and the
//! request retried on another instance. The slot also tells how long the client has sent
//! nothing of a body being forwarded ([`Slot::stalled`]), so a body that stops arriving is cut
//! (`limits.header_read_timeout`) instead of holding a connection slot for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

pub struct Body(Kind);

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Reclaim {
        slot: Slot,
        taken: Option<Incoming>,
        hint: SizeHint,
        end: bool,
    },
    /// A proxied response, driving its upstream connection.
    Upstream(crate::traffic::proxy::upstream::Upstream<Body>),
    /// Chunks produced by a task (server-sent events).
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
}

/// Holds a request body until its first poll; see [`Body::reclaimable`].
#[derive(Clone)]
pub struct Slot(Arc<SlotInner>);

struct SlotInner {
    body: Mutex<Option<Incoming>>,
    base: tokio::time::Instant,
    /// Since when the body has been waiting for the client (ms since `base`, +1); 0 while it
    /// is not (a frame just came, or the instance is not reading it).
    waiting: AtomicU64,
    done: AtomicBool,
}

impl Slot {
    /// The body, if the request that carried it never started sending it.
    pub fn reclaim(&self) -> Option<Incoming> {
        self.0.body.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn now(&self) -> u64 {
        self.0.base.elapsed().as_millis() as u64 + 1
    }

    /// How long the body has been waiting for the client while being forwarded (the instance
    /// asked for more and the client sent nothing); None otherwise.
    pub fn stalled(&self) -> Option<std::time::Duration> {
        let since = self.0.waiting.load(Ordering::Relaxed);
        if since == 0 || self.0.done.load(Ordering::Relaxed) {
            return None;
        }
        Some(std::time::Duration::from_millis(self.now().saturating_sub(since)))
    }

    /// Resolves once the client has sent nothing of the body for `limit`.
    pub async fn stall(&self, limit: std::time::Duration) {
        loop {
            let wait = match self.stalled() {
                Some(s) if s >= limit => return,
                Some(s) => limit - s,
                None => limit,
            };
            tokio::time::sleep(wait.max(std::time::Duration::from_millis(5))).await;
        }
    }
}

impl Body {
    pub fn empty() -> Self {
        Body(Kind::Empty)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body(Kind::Full(Some(bytes.into())))
    }

    pub fn incoming(inc: Incoming) -> Self {
        Body(Kind::Incoming(inc))
    }

    pub fn upstream(up: crate::traffic::proxy::upstream::Upstream<Body>) -> Self {
        Body(Kind::Upstream(up))
    }

    /// A streamed body: each chunk sent on the returned sender is written as it comes.
    pub fn channel(capacity: usize) -> (Self, tokio::sync::mpsc::Sender<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (Body(Kind::Channel(rx)), tx)
    }

    /// A body that can be taken back through the returned slot until it is first polled.
    pub fn reclaimable(inc: Incoming) -> (Self, Slot) {
        let hint = http_body::Body::size_hint(&inc);
        let end = http_body::Body::is_end_stream(&inc);
        let slot = Slot(Arc::new(SlotInner {
            body: Mutex::new(Some(inc)),
            base: tokio::time::Instant::now(),
            waiting: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }));
        (Body(Kind::Reclaim { slot: slot.clone(), taken: None, hint, end }), slot)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(inc) => Pin::new(inc).poll_frame(cx),
            Kind::Upstream(up) => Pin::new(up).poll_frame(cx),
            Kind::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
            Kind::Reclaim { slot, taken, .. } => {
                if taken.is_none() {
                    *taken = slot.reclaim();
                }
                let Some(inc) = taken else { return Poll::Ready(None) };
                let frame = Pin::new(inc).poll_frame(cx);
                let waiting = &slot.0.waiting;
                match &frame {
                    Poll::Ready(Some(Ok(_))) => waiting.store(0, Ordering::Relaxed),
                    Poll::Ready(_) => slot.0.done.store(true, Ordering::Relaxed),
                    Poll::Pending if waiting.load(Ordering::Relaxed) == 0 => {
                        waiting.store(slot.now(), Ordering::Relaxed)
                    }
                    Poll::Pending => {}
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Incoming(inc) => inc.is_end_stream(),
            Kind::Upstream(up) => up.is_end_stream(),
            Kind::Reclaim { taken: Some(inc), .. } => inc.is_end_stream(),
            Kind::Reclaim { end, .. } => *end,
            Kind::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(inc) => inc.size_hint(),
            Kind::Upstream(up) => up.size_hint(),
            Kind::Reclaim { taken: Some(inc), .. } => inc.size_hint(),
            Kind::Reclaim { hint, .. } => *hint,
            Kind::Channel(_) => SizeHint::default(),
        }
    }
}

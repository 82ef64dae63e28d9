//! Keep-alive HTTP/1.1 connections to one instance for proxied requests, driven inside the
//! request's own task.
//!
//! A general-purpose client runs each connection as a task of its own: a request then wakes
//! that task to be written, and the response wakes the request's task back, often on the other
//! worker thread. Here the request's task polls the connection itself, while it waits for the
//! response head and then while the response body streams, so a proxied request never leaves
//! its task. When the body ends, the connection goes back to the instance's pool (newest first;
//! dropped after [`UPSTREAM_IDLE_TIMEOUT`], before Node.js closes it).
//!
//! A pooled connection that turns out to be closed before the request was written is replaced
//! by a new one, with the same request: nothing had been sent.
//!
//! At most `limits.upstream_connections` requests are in flight to one instance; more wait
//! for a slot in arrival order, up to `limits.upstream_queue_timeout`. So the connections to
//! an instance stay within that number (per worker's idle list at most), a burst never
//! overflows Node.js's listen backlog, and a hung instance collects a bounded queue here,
//! which its failover releases, instead of hundreds of connections in its kernel backlog.
//!
//! **Slow start.** A newly promoted instance gets few slots at first, and two more each time
//! a request to it ends (answered or not), until it has them all (about four round trips; at
//! most [`SLOW_START_FOR`], whatever happens). Node-RED passes messages between nodes in rounds, so a burst of a
//! hundred requests held by a failover is answered all at once, after about 100 ms on a cold
//! instance; in small waves the first answers come after about 20 ms and the burst drains no
//! later (the event loop is single-threaded either way). HAProxy's `slowstart` does the same
//! for servers that come back.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use tower_service::Service;

use crate::backend::{Backend, Connector, UPSTREAM_IDLE_TIMEOUT};

/// A request body the pool can send: the request path's `Body` (generic here so that this
/// file does not depend on the type that wraps its responses).
pub trait SendBody: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static {}
impl<T: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Unpin + 'static> SendBody for T {}

/// Idle connections kept per instance.
const MAX_IDLE: usize = 512;
/// For TCP and TLS together (the connector's own timeout covers TCP only).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Slots of a newly promoted instance before any request to it completed.
pub const SLOW_START_SLOTS: usize = 4;
/// Slow start ends after this whatever happened.
pub const SLOW_START_FOR: Duration = Duration::from_secs(2);

/// Why a proxied request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {}", crate::backend::chain(.0.as_ref()))]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed before the request was written: nothing was sent.
    #[error("not sent: {0}")]
    NotSent(hyper::Error),
    #[error("{0}")]
    Failed(hyper::Error),
    #[error("connection closed before the response")]
    Closed,
    /// Every slot stayed taken for the whole queue time-out: nothing was sent.
    #[error("every connection to the instance stayed busy for {0:?}")]
    Busy(Duration),
}

impl UpstreamError {
    /// Nothing reached the instance: the request can be sent elsewhere, body included.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::NotSent(_))
    }
}

/// What the connector gives: plain TCP, or TLS over it.
type Stream = hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>;

struct Conn<B: SendBody> {
    send: http1::SendRequest<B>,
    conn: http1::Connection<Stream, B>,
    idle_since: Instant,
}

impl<B: SendBody> Conn<B> {
    /// Whether the connection can take a request now, without waiting. One still sending an
    /// earlier request's body (the instance answered before reading it all, a 401 or 404) or
    /// closed is not, and is not kept: a request must never wait on someone else's upload.
    fn ready_now(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if Pin::new(&mut self.conn).poll(&mut cx).is_ready() {
            return false;
        }
        matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Drives the connection until it can take a request: false if it is closed.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if Pin::new(&mut self.conn).poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            self.send.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as client-connection worker `i` (one runtime per core): it then
/// takes upstream connections only from its own idle list, so a connection is always driven
/// by the runtime whose I/O driver it is registered with.
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// One worker's idle fast-path sockets to an instance and since when, newest last.
type RawIdle = Mutex<VecDeque<(TcpStream, Instant)>>;

/// One worker's idle connections to an instance, most recently used last.
type IdleList<B> = Mutex<VecDeque<Box<Conn<B>>>>;

/// The pooled connections to one instance: an idle list per worker thread.
pub struct Pool<B: SendBody> {
    connector: Connector,
    /// `<scheme>://<authority>/` of the instance, what the connector connects to.
    origin: http::Uri,
    backend: Arc<Backend>,
    idle: Box<[IdleList<B>]>,
    /// One permit per request in flight.
    slots: Arc<Semaphore>,
    total: usize,
    queue_timeout: Duration,
    /// During slow start, the slots held back, and until when.
    reserve: Mutex<Option<(OwnedSemaphorePermit, Instant)>>,
    ramping: std::sync::atomic::AtomicBool,
    /// How many slots `reserve` holds, readable without its lock.
    held_back: std::sync::atomic::AtomicUsize,
    /// The fast path's idle connections (plain HTTP/1.1 sockets), per worker, newest last.
    raw: Box<[RawIdle]>,
}

impl<B: SendBody> Pool<B> {
    /// `workers`: how many runtimes serve client connections; each gets its own idle list.
    /// `slots`: most requests in flight at once; `queue_timeout`: longest wait for one.
    pub fn new(
        backend: Arc<Backend>,
        connector: Connector,
        workers: usize,
        slots: usize,
        queue_timeout: Duration,
    ) -> Self {
        let origin = http::Uri::builder()
            .scheme(backend.scheme.clone())
            .authority(backend.authority.clone())
            .path_and_query("/")
            .build()
            .expect("validated scheme and authority");
        Pool {
            connector,
            origin,
            backend,
            idle: (0..workers.max(1)).map(|_| Mutex::new(VecDeque::new())).collect(),
            raw: (0..workers.max(1)).map(|_| Mutex::new(VecDeque::new())).collect(),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            total: slots.max(1),
            queue_timeout,
            reserve: Mutex::new(None),
            held_back: std::sync::atomic::AtomicUsize::new(0),
            ramping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sends `req` (origin-form URI) and returns the response; its body keeps driving the
    /// connection and returns it to the pool when it ends.
    pub async fn send(self: &Arc<Self>, mut req: Request<B>) -> Result<Response<Upstream<B>>, UpstreamError> {
        let activity = &self.backend.activity;
        let slot = self.slot().await?;
        loop {
            let (mut c, fresh) = match self.checkout() {
                Some(c) => (c, false),
                None => (self.connect().await?, true),
            };
            let mut conn_done = false;
            let result = {
                let Conn { send, conn, .. } = &mut *c;
                let mut response = std::pin::pin!(send.try_send_request(req));
                poll_fn(|cx| {
                    if let Poll::Ready(r) = response.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    if !conn_done && Pin::new(&mut *conn).poll(cx).is_ready() {
                        conn_done = true;
                        // The connection has answered every request it took, or failed them.
                        return Poll::Ready(match response.as_mut().poll(cx) {
                            Poll::Ready(r) => Some(r),
                            Poll::Pending => None,
                        });
                    }
                    Poll::Pending
                })
                .await
            };
            match result {
                Some(Ok(resp)) => {
                    activity.answered();
                    let keep = (!conn_done).then_some(c);
                    return Ok(resp.map(|body| Upstream {
                        body,
                        conn: keep,
                        ended: false,
                        pool: self.clone(),
                        _slot: slot,
                    }));
                }
                Some(Err(mut e)) => match e.take_message() {
                    // A pooled connection closed under us before the request went out.
                    Some(back) if !fresh => req = back,
                    Some(_) => return Err(UpstreamError::NotSent(e.into_error())),
                    None => return Err(UpstreamError::Failed(e.into_error())),
                },
                None => return Err(UpstreamError::Closed),
            }
        }
    }

    /// A slot for one request (the fast path's; `send` takes its own): waits in arrival
    /// order up to the queue time-out. Held until the request has ended.
    pub async fn slot(self: &Arc<Self>) -> Result<Slot<B>, UpstreamError> {
        self.backend.activity.sent();
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| UpstreamError::Busy(self.queue_timeout))?
                .expect("the semaphore is never closed"),
        };
        Ok(Slot { _permit: permit, pool: self.clone() })
    }

    /// An answer came from the instance (passive health: it is processing).
    pub fn answered(&self) {
        self.backend.activity.answered();
    }

    /// The newest idle fast-path connection that is still open, with nothing unread on it.
    pub fn checkout_raw(&self) -> Option<TcpStream> {
        let list = &self.raw[WORKER.with(|w| w.get()) % self.raw.len()];
        loop {
            let (tcp, since) = list.lock().unwrap_or_else(|e| e.into_inner()).pop_back()?;
            let open = matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if open && since.elapsed() < UPSTREAM_IDLE_TIMEOUT {
                return Some(tcp);
            }
        }
    }

    /// Back to the idle list after a complete exchange.
    pub fn put_raw(&self, tcp: TcpStream) {
        let now = Instant::now();
        let mut list = self.raw[WORKER.with(|w| w.get()) % self.raw.len()].lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first: those idle past the time-out go from the front.
        while list.front().is_some_and(|(_, since)| now.duration_since(*since) >= UPSTREAM_IDLE_TIMEOUT) {
            list.pop_front();
        }
        if list.len() >= MAX_IDLE {
            list.pop_front();
        }
        list.push_back((tcp, now));
    }

    /// A new plain TCP connection for the fast path (`http` instances only).
    pub async fn connect_raw(&self) -> Result<TcpStream, UpstreamError> {
        let host = self.backend.authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = self.backend.authority.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// The instance was just promoted: hold back all but [`SLOW_START_SLOTS`] free slots, and
    /// give them all back after [`SLOW_START_FOR`] at the latest.
    pub fn slow_start(self: &Arc<Self>) {
        let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
        *reserve = None;
        self.held_back.store(0, std::sync::atomic::Ordering::Relaxed);
        let hold = self.slots.available_permits().saturating_sub(SLOW_START_SLOTS);
        if hold > 0
            && let Ok(p) = self.slots.clone().try_acquire_many_owned(hold as u32)
        {
            *reserve = Some((p, Instant::now() + SLOW_START_FOR));
            self.held_back.store(hold, std::sync::atomic::Ordering::Relaxed);
            self.ramping.store(true, std::sync::atomic::Ordering::Release);
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(SLOW_START_FOR).await;
                if let Some(pool) = pool.upgrade() {
                    pool.widen();
                }
            });
        }
    }

    /// A request ended: during slow start, two held-back slots are given out.
    fn widen(&self) {
        if !self.ramping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
        let done = match reserve.as_mut() {
            Some((held, until)) => {
                Instant::now() >= *until || held.num_permits() <= 2 || {
                    drop(held.split(2));
                    false
                }
            }
            None => true,
        };
        if done {
            *reserve = None;
            self.ramping.store(false, std::sync::atomic::Ordering::Release);
        }
        let held = reserve.as_ref().map_or(0, |(p, _)| p.num_permits());
        self.held_back.store(held, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits until no request is in flight here (at most `limit`). Nothing new is routed to
    /// it meanwhile (a released active), so this only waits for what was sent.
    pub async fn drained(&self, limit: Duration) {
        let held = self.reserve.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |(p, _)| p.num_permits());
        let all = (self.total - held) as u32;
        let _ = tokio::time::timeout(limit, self.slots.acquire_many(all)).await;
    }

    /// Requests in flight here now (approximate: read without a lock).
    pub fn outstanding(&self) -> usize {
        let free = self.slots.available_permits() + self.held_back.load(std::sync::atomic::Ordering::Relaxed);
        self.total.saturating_sub(free)
    }

    /// Slots free now (for tests and metrics).
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    fn idle(&self) -> &IdleList<B> {
        &self.idle[WORKER.with(|w| w.get()) % self.idle.len()]
    }

    /// The newest idle connection that is open and ready now.
    fn checkout(&self) -> Option<Box<Conn<B>>> {
        loop {
            let mut c = self.idle().lock().unwrap_or_else(|e| e.into_inner()).pop_back()?;
            if c.idle_since.elapsed() < UPSTREAM_IDLE_TIMEOUT && c.ready_now() {
                return Some(c);
            }
        }
    }

    fn put(&self, mut c: Box<Conn<B>>) {
        if !c.ready_now() {
            return;
        }
        let now = Instant::now();
        c.idle_since = now;
        let mut idle = self.idle().lock().unwrap_or_else(|e| e.into_inner());
        while idle.front().is_some_and(|o| now.duration_since(o.idle_since) >= UPSTREAM_IDLE_TIMEOUT) {
            idle.pop_front();
        }
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(c);
    }

    async fn connect(&self) -> Result<Box<Conn<B>>, UpstreamError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.connector.clone().call(self.origin.clone()))
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?
            .map_err(UpstreamError::Connect)?;
        let (send, conn) =
            http1::Builder::new().handshake(stream).await.map_err(|e| UpstreamError::Connect(e.into()))?;
        // Boxed once: it moves between the pool and response bodies.
        let mut c = Box::new(Conn { send, conn, idle_since: Instant::now() });
        if !c.ready().await {
            return Err(UpstreamError::Connect(io::Error::from(io::ErrorKind::ConnectionAborted).into()));
        }
        Ok(c)
    }
}

/// A response body from an instance. Polling it also drives its connection, which goes back to
/// the pool once the body has ended.
pub struct Upstream<B: SendBody> {
    body: Incoming,
    conn: Option<Box<Conn<B>>>,
    /// The body was read to its end (chunked bodies never report `is_end_stream`).
    ended: bool,
    pool: Arc<Pool<B>>,
    /// Given back when the body is dropped: the request is no longer in flight.
    _slot: Slot<B>,
}

/// A request's place among the instance's slots; giving it back widens a slow start.
pub struct Slot<B: SendBody> {
    _permit: OwnedSemaphorePermit,
    pool: Arc<Pool<B>>,
}

impl<B: SendBody> Drop for Slot<B> {
    fn drop(&mut self) {
        self.pool.widen();
    }
}

impl<B: SendBody> http_body::Body for Upstream<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = &mut this.conn
            && Pin::new(&mut c.conn).poll(cx).is_ready()
        {
            // Closed: whatever the body still has is in its channel; the connection is done.
            this.conn = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: SendBody> Drop for Upstream<B> {
    /// A body read to its end leaves its connection reusable; otherwise the connection closes.
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && (self.ended || http_body::Body::is_end_stream(&self.body))
        {
            self.pool.put(c);
        }
    }
}

//! One client connection: the protocol choice, the fast path or the hyper connection, and
//! parking.
//!
//! An HTTP/1 connection starts on the forwarding fast path (`proxy/fast.rs`) when the listener
//! has one. It parks itself between whole requests (after [`PARK_AFTER`] with nothing to
//! read), and hands a request it does not forward to hyper, with the bytes read so far; hyper
//! then serves the connection until it parks, and the fast path takes it up again.
//!
//! Parking, in detail. Every request holds an [`InFlight`] guard until hyper drops its
//! response body (fully written, or abandoned). When a read from the socket would block,
//! [`ParkIo`] arms a timer; if it fires with no request in flight and no byte read since it was
//! armed, the next read reports end of stream. hyper then ends the connection as if the client
//! had closed it, without shutting the socket down ([`ParkIo::poll_shutdown`] does nothing once
//! parked), and [`serve`] takes the socket back, with any bytes hyper had read but not parsed
//! yet (part of a next request head). It waits for the socket to become readable, then starts a
//! new hyper connection fed first with those bytes. Nothing the client sent is lost.
//!
//! Connections hyper served a request body, an upgrade or HTTP/2 on are never parked: hyper
//! could be in the middle of a body when the timer fires.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Gauges;
use crate::config::Limits;
use crate::traffic::body::Body;
use crate::traffic::proxy::fast::{self, Fast, Outcome};
use crate::traffic::server::Peer;

/// How long an HTTP/1 connection may idle before its buffers are released.
pub const PARK_AFTER: Duration = Duration::from_millis(10);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol settings shared by one listener's connections.
pub struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// For a request head, the next one on a kept-alive connection, and a TLS handshake.
    pub head_limit: Duration,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub gauges: Option<Gauges>,
    pub parking: Arc<Parking>,
    pub fast: Option<Arc<Fast>>,
}

impl Http {
    pub fn new(
        limits: &Limits,
        tls: Option<tokio_rustls::TlsAcceptor>,
        gauges: Option<Gauges>,
        fast: Option<Arc<Fast>>,
    ) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
        let parking = Arc::new(Parking::new(limits.header_read_timeout));
        Http { h1, h2, head_limit: limits.header_read_timeout, tls, gauges, parking, fast }
    }
}

/// A client's transport: plain TCP or TLS over TCP.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> &TcpStream;
    /// What ALPN settled: `Some(true)` for h2, `Some(false)` for HTTP/1.1, `None` when nothing
    /// was negotiated (the first bytes decide).
    fn alpn_h2(&self) -> Option<bool>;
}

impl ClientIo for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn alpn_h2(&self) -> Option<bool> {
        None
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn alpn_h2(&self) -> Option<bool> {
        self.get_ref().1.alpn_protocol().map(|p| p == b"h2")
    }
}

/// What a connection holds until it ends: its slot under `limits.max_connections`, and its
/// count in the open-connections gauge.
pub struct Held {
    pub _permit: tokio::sync::OwnedSemaphorePermit,
    pub _open: Option<GaugeGuard>,
}

/// Increments a gauge for as long as it lives.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(g: &IntGauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Default)]
struct ConnState {
    in_flight: AtomicUsize,
    /// Requests seen on this connection.
    requests: AtomicUsize,
    /// Never park this connection (a request body, an upgrade, HTTP/2).
    pinned: AtomicBool,
}

/// Resolves once an HTTP/2 connection has had no stream open and no new request for at least
/// `limit` (checked every `limit`): the same idle limit as a kept-alive HTTP/1 connection, so
/// idle HTTP/2 clients cannot hold connection slots for ever.
async fn h2_idle(state: &ConnState, limit: Duration) {
    let mut seen = state.requests.load(Ordering::Acquire);
    loop {
        tokio::time::sleep(limit).await;
        let now = state.requests.load(Ordering::Acquire);
        if now == seen && state.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        seen = now;
    }
}

/// Counts a request as in flight until its response body is dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.requests.fetch_add(1, Ordering::AcqRel);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] guard.
pub struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The transport as hyper sees it: first the bytes read before hyper started, then the socket;
/// end of stream once parked.
struct ParkIo<I> {
    io: I,
    prefix: Bytes,
    state: Arc<ConnState>,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    parked: bool,
    /// Started with part of a request: no parking until the next request is under way, so
    /// the header read timeout runs its course and a slow head is never cut again.
    hold: Option<usize>,
}

impl<I> ParkIo<I> {
    fn new(io: I, prefix: Bytes, state: Arc<ConnState>) -> Self {
        let hold = (!prefix.is_empty()).then(|| state.requests.load(Ordering::Acquire));
        ParkIo { io, prefix, state, timer: None, armed: false, parked: false, hold }
    }

    /// A read would block: end the stream once the connection has idled for [`PARK_AFTER`]
    /// with no request in flight.
    fn poll_park(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(seen) = self.hold {
            if self.state.requests.load(Ordering::Acquire) == seen {
                return Poll::Pending;
            }
            self.hold = None;
        }
        if !self.armed {
            let deadline = Instant::now() + PARK_AFTER;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let timer = self.timer.as_mut().expect("armed above");
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.state.in_flight.load(Ordering::Acquire) == 0 {
                self.parked = true;
                return Poll::Ready(Ok(()));
            }
            timer.as_mut().reset(Instant::now() + PARK_AFTER);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ParkIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            if n == this.prefix.len() {
                this.prefix = Bytes::new();
            } else {
                this.prefix.advance(n);
            }
            return Poll::Ready(Ok(()));
        }
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            this.armed = false;
            return Poll::Ready(r);
        }
        if this.state.pinned.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        this.poll_park(cx)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ParkIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Once parked, the socket stays open: the connection goes on without hyper.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Reads until the first bytes tell HTTP/2's preface from an HTTP/1 request; `None` if the
/// client closed first.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<Option<(Bytes, bool)>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some((buf.freeze(), false)));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some((buf.freeze(), true)));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Serves one client connection until it closes, upgrades, or shutdown ends it.
///
/// Only the parked state lives in the connection's task; everything else is boxed while it
/// runs, so that an idle connection's task stays small.
pub async fn serve<I, F, Fut>(io: I, peer: Peer, http: Arc<Http>, cancel: CancellationToken, handler: F, held: Held)
where
    I: ClientIo,
    F: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let _held = held;
    let state = Arc::new(ConnState::default());
    let wake = Arc::new(Wake::default());
    let svc = {
        let state = state.clone();
        service_fn(move |req: Request<Incoming>| {
            if !http_body::Body::is_end_stream(req.body())
                || req.headers().contains_key(http::header::UPGRADE)
                || req.method() == http::Method::CONNECT
            {
                state.pinned.store(true, Ordering::Relaxed);
            }
            let in_flight = InFlight::new(&state);
            let fut = handler(req, peer);
            async move {
                let resp = fut.await?;
                Ok::<_, Infallible>(resp.map(|body| Tracked { body, _in_flight: in_flight }))
            }
        })
    };
    let Some((mut io, mut prefix, h2)) = Box::pin(protocol(io, http.head_limit)).await else { return };
    if h2 {
        state.pinned.store(true, Ordering::Relaxed);
        let watched = state.clone();
        let io = TokioIo::new(ParkIo::new(io, prefix, state));
        let conn = http.h2.serve_connection(io, svc);
        let limit = http.head_limit;
        let result = Box::pin(async move {
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                _ = h2_idle(&watched, limit) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        })
        .await;
        if let Err(e) = result {
            debug!(peer = %peer.addr, error = %e, "connection ended with an error");
        }
        return;
    }
    loop {
        // The fast path first; hyper for what it hands over, until that connection parks.
        if let Some(f) = &http.fast {
            match Box::pin(fast::session(io, prefix, peer, f, &cancel, PARK_AFTER, http.head_limit)).await {
                Outcome::Park(s) => {
                    (io, prefix) = (s, Bytes::new());
                    if !park(&io, &http, &wake, &cancel).await {
                        return;
                    }
                    continue;
                }
                Outcome::HandOff(s, rest) => (io, prefix) = (s, rest),
                Outcome::Linger(s) => {
                    if !cancel.is_cancelled() {
                        Box::pin(linger(s)).await;
                    }
                    return;
                }
                Outcome::Closed => return,
            }
        }
        let session = Box::pin(session(io, prefix, &state, svc.clone(), &http, &cancel, peer));
        let Some((socket, rest)) = session.await else { return };
        (io, prefix) = (socket, rest);
        if prefix.is_empty() && !park(&io, &http, &wake, &cancel).await {
            return;
        }
    }
}

/// How long a closing connection that carried a request body keeps reading what the client
/// still sends, in all and per read.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_READ: Duration = Duration::from_secs(1);

/// Closes a connection whose request body may be unread (answered early: a refused upload)
/// without resetting it. Closing a socket with unread bytes sends a reset, and a client still
/// sending its body then fails with a broken pipe before it reads the answer. So: end the
/// sending side, then read and drop what comes, until the client closes, goes quiet for
/// [`LINGER_READ`], or [`LINGER`] has passed (as nginx's lingering close).
async fn linger<I: ClientIo>(mut io: I) {
    use tokio::io::AsyncWriteExt;
    let deadline = Instant::now() + LINGER;
    if tokio::time::timeout_at(deadline, io.shutdown()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(Ok(n))) =
        tokio::time::timeout_at(deadline, tokio::time::timeout(LINGER_READ, io.read(&mut buf))).await
    {
        if n == 0 {
            break;
        }
    }
}

/// Waits, holding nothing but the socket, until it is readable: true. False when the idle
/// limit passed or shutdown began.
async fn park<I: ClientIo>(io: &I, http: &Http, wake: &Arc<Wake>, cancel: &CancellationToken) -> bool {
    let _parked = http.gauges.as_ref().map(|g| GaugeGuard::new(&g.parked));
    let key = http.parking.insert(wake);
    // After the insertion: the sweeper's last pass saw this connection, or shutdown shows here.
    let readable = !cancel.is_cancelled()
        && std::future::poll_fn(|cx| {
            wake.waker.register(cx.waker());
            if wake.close.load(Ordering::Acquire) {
                return Poll::Ready(false);
            }
            io.tcp().poll_read_ready(cx).map(|r| r.is_ok())
        })
        .await;
    http.parking.remove(key);
    readable
}

/// Parked connections of one listener. One sweeper task closes those idle past the limit and,
/// on shutdown, all of them, so a parked connection holds no timer and no shutdown waiter of
/// its own.
pub struct Parking {
    parked: std::sync::Mutex<slab::Slab<(Instant, Arc<Wake>)>>,
    /// How long a connection may stay parked (the idle limit less [`PARK_AFTER`]).
    limit: Duration,
}

#[derive(Default)]
struct Wake {
    waker: futures_util::task::AtomicWaker,
    close: AtomicBool,
}

impl Wake {
    fn close(&self) {
        self.close.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Parking {
    fn new(idle_limit: Duration) -> Self {
        Parking { parked: Default::default(), limit: idle_limit.saturating_sub(PARK_AFTER) }
    }

    fn insert(&self, wake: &Arc<Wake>) -> usize {
        let deadline = Instant::now() + self.limit;
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).insert((deadline, wake.clone()))
    }

    fn remove(&self, key: usize) {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).try_remove(key);
    }

    /// Closes connections parked past the limit (checked every eighth of it) until `cancel`,
    /// then closes every parked connection.
    pub async fn sweep(self: Arc<Self>, cancel: CancellationToken) {
        let every = (self.limit / 8).max(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let now = Instant::now();
            for (_, (deadline, wake)) in self.parked.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if *deadline <= now {
                    wake.close();
                }
            }
        }
        for (_, (_, wake)) in self.parked.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            wake.close();
        }
    }
}

/// HTTP/2 or HTTP/1, from ALPN or else from the first bytes (returned, to be read again).
async fn protocol<I: ClientIo>(mut io: I, limit: Duration) -> Option<(I, Bytes, bool)> {
    if let Some(h2) = io.alpn_h2() {
        return Some((io, Bytes::new(), h2));
    }
    match tokio::time::timeout(limit, sniff(&mut io)).await {
        Ok(Ok(Some((first, h2)))) => Some((io, first, h2)),
        _ => None,
    }
}

/// One HTTP/1 connection of hyper's, from its first byte to its end. Returns the socket and
/// any bytes read but not parsed when the connection parked; `None` when it is over.
async fn session<I, S, B>(
    io: I,
    prefix: Bytes,
    state: &Arc<ConnState>,
    svc: S,
    http: &Http,
    cancel: &CancellationToken,
    peer: Peer,
) -> Option<(I, Bytes)>
where
    I: ClientIo,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = http.h1.serve_connection(TokioIo::new(ParkIo::new(io, prefix, state.clone())), svc).with_upgrades();
    let result = tokio::select! {
        r = &mut conn => r,
        _ = cancel.cancelled() => {
            Pin::new(&mut conn).graceful_shutdown();
            (&mut conn).await
        }
    };
    // `None`: upgraded; the tunnel owns the socket now.
    let parts = conn.into_parts()?;
    let ParkIo { io, parked, .. } = parts.io.into_inner();
    if !parked {
        if let Err(e) = result {
            debug!(peer = %peer.addr, error = %e, "connection ended with an error");
        }
        if state.pinned.load(Ordering::Relaxed) && !cancel.is_cancelled() {
            linger(io).await;
        }
        return None;
    }
    if cancel.is_cancelled() || state.pinned.load(Ordering::Relaxed) {
        return None;
    }
    // Part of a next request head hyper had read: start again with it (copied, so hyper's
    // read buffer is freed).
    let rest = if parts.read_buf.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&parts.read_buf) };
    Some((io, rest))
}

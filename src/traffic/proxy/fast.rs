//! The forwarding fast path for HTTP/1.1 runtime requests: heads parsed in place and forwarded
//! as bytes with targeted edits, bodies copied through per-worker buffers, keep-alive on both
//! sides.
//!
//! A client's HTTP/1 connection starts here. A request head this path forwards
//! ([`head::request`]: runtime routes, `Content-Length` or no body, no upgrade, `Expect`,
//! `Transfer-Encoding` or anything unusual) is sent to the instance the routing view names,
//! over a plain keep-alive socket of that instance's pool (its slots, queue time-out and slow
//! start are the hyper path's), and the response is passed back with its framing kept. Any
//! other request, and the rest of its connection until it idles, is served by hyper: the bytes
//! read so far go with it, so hyper answers exactly as it always did (400s for malformed heads
//! and conflicting lengths, 431, upgrades, editor writes).
//!
//! The rules of the hyper path hold here, in the same words (`proxy.rs`): a request waits for
//! an active during a failover (`failover.hold`); one that could not be sent, or whose body is
//! still unread, goes to the next instance; an idempotent request without a body is repeated
//! when its instance failed before answering; the rest answer 502 and are never replayed. A
//! client that stops sending its body gets 408. Access log and metrics are the same.
//!
//! Buffers come from a per-thread free list: in the steady state no request allocates.

pub mod head;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Proxy, RouteClass};
use crate::state::Active;
use crate::traffic::error::ProxyError;
use crate::traffic::server::{ClientIo, Peer};
use head::{BadChunk, Chunked, Framing, Parsed, Response};

/// Which proxy serves a request: the current configuration's, loaded per request.
pub struct Fast {
    pub current: Box<dyn Fn() -> Arc<Proxy> + Send + Sync>,
}

/// How a fast-path session ended.
pub enum Outcome<I> {
    /// Idle for the parking delay: the connection parks.
    Park(I),
    /// A request for hyper: it goes on with these bytes first.
    HandOff(I, Bytes),
    /// Answered with the request body unread: close without resetting the client.
    Linger(I),
    Closed,
}

const BUF: usize = 8 << 10;
/// Buffers that grew beyond this are freed instead of kept.
const KEEP: usize = 64 << 10;
/// Buffers kept on a thread's free list (three per request being served).
const SPARE_KEPT: usize = 96;
/// How long an instance that stopped taking a request body has to show its answer.
const EARLY_ANSWER: Duration = Duration::from_secs(1);
/// Largest response head accepted from an instance.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's free list, returned to it when dropped.
struct Buf(Vec<u8>);

impl Buf {
    fn take() -> Buf {
        Buf(SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(BUF)))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        if v.capacity() <= KEEP {
            v.clear();
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARE_KEPT {
                    s.push(v);
                }
            });
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(BUF);
    }
    r.read_buf(buf).await
}

/// Serves requests on one client connection from `prefix` on, until it idles for `idle`,
/// closes, or meets a request for hyper.
pub async fn session<I: ClientIo>(
    mut io: I,
    prefix: Bytes,
    peer: Peer,
    fast: &Fast,
    cancel: &CancellationToken,
    idle: Duration,
    head_limit: Duration,
) -> Outcome<I> {
    let mut buf = Buf::take();
    buf.extend_from_slice(&prefix);
    let (mut up, mut rbuf) = (Buf::take(), Buf::take());
    loop {
        if buf.is_empty() {
            if cancel.is_cancelled() {
                return Outcome::Closed;
            }
            match tokio::time::timeout(idle, read_more(&mut io, &mut buf)).await {
                Err(_) => return Outcome::Park(io),
                Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
                Ok(Ok(_)) => {}
            }
        }
        let proxy = (fast.current)();
        let cfg = &proxy.shared.config;
        if !proxy.fast {
            return Outcome::HandOff(io, Bytes::copy_from_slice(&buf));
        }
        let cx = head::Context {
            paths: &cfg.node_red,
            trusted: &cfg.trusted_proxies,
            peer: peer.addr.ip(),
            tls: peer.tls,
            balanced: cfg.mode == crate::readiness::Mode::LoadBalanced,
            max_headers: cfg.limits.max_headers,
        };
        let deadline = Instant::now() + head_limit;
        let req = loop {
            match head::request(&buf, &cx, &mut up) {
                Parsed::Forward(r) => break r,
                Parsed::HandOff => {
                    proxy.shared.metrics.fast_path_handoffs.inc();
                    return Outcome::HandOff(io, Bytes::copy_from_slice(&buf));
                }
                Parsed::Partial if buf.len() >= cfg.limits.max_header_bytes => {
                    return Outcome::HandOff(io, Bytes::copy_from_slice(&buf));
                }
                Parsed::Partial => match tokio::time::timeout_at(deadline, read_more(&mut io, &mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Outcome::Closed,
                },
            }
        };
        let started = Instant::now();
        let close = req.close || cancel.is_cancelled();
        let in_buf = req.body_len.min((buf.len() - req.head_len) as u64) as usize;
        let mut x = Exchange { proxy: &proxy, req: &req, in_buf, close, up: &mut up, rbuf: &mut rbuf };
        let (status, next) = x.run(&mut io, &buf).await;
        let elapsed = started.elapsed();
        proxy.shared.metrics.request(RouteClass::Runtime, status, elapsed.as_secs_f64());
        proxy.shared.metrics.fast_path.inc();
        if cfg.log.access {
            let text = |(a, b): (usize, usize)| String::from_utf8_lossy(&buf[a..b]).into_owned();
            let target = text(req.target);
            let path = target.split('?').next().unwrap_or_default();
            super::access_log(peer, &text(req.method), path, status, RouteClass::Runtime, elapsed);
        }
        match next {
            Next::KeepAlive => {
                buf.drain(..req.head_len + in_buf);
            }
            Next::Close => {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
            Next::Linger => return Outcome::Linger(io),
            Next::Gone => return Outcome::Closed,
        }
    }
}

/// What the connection does after a request.
enum Next {
    KeepAlive,
    /// Closed after the answer (asked for, or a body delimited by the instance's close).
    Close,
    /// Answered before its body was read.
    Linger,
    /// The client went away, or the answer was cut.
    Gone,
}

/// How an attempt on one instance failed.
enum Failure {
    /// Nothing complete reached the instance: the request can go elsewhere, body and all.
    NotSent(ProxyError),
    /// Sent, with no answer.
    Unanswered(ProxyError),
}

/// Why a request body did not reach the instance whole.
enum BodyError {
    /// The client sent nothing for `limits.header_read_timeout`.
    Stalled,
    ClientGone,
    Upstream,
    /// The instance was declared failed.
    Failed,
}

/// One request: its attempts on instances and the answer.
struct Exchange<'a> {
    proxy: &'a Proxy,
    req: &'a head::Request,
    /// Body bytes that came with the head.
    in_buf: usize,
    close: bool,
    /// The upstream head, then the client's head.
    up: &'a mut Vec<u8>,
    /// The response as read, then scratch for copies.
    rbuf: &'a mut Vec<u8>,
}

impl Exchange<'_> {
    async fn run<I: ClientIo>(&mut self, io: &mut I, buf: &[u8]) -> (u16, Next) {
        let req = self.req;
        let body_unread = (self.in_buf as u64) < req.body_len;
        self.up.extend_from_slice(&buf[req.head_len..req.head_len + self.in_buf]);
        let replayable = req.idempotent && req.body_len == 0;
        let mut attempt = 1;
        let mut failed: Option<Arc<Active>> = None;
        loop {
            let active = match self.proxy.active(None, failed.as_ref()).await {
                Ok(a) => a,
                Err(e) => return self.refuse(io, e, body_unread).await,
            };
            let err = match self.attempt(io, &active, body_unread).await {
                Ok(done) => return done,
                Err(Failure::NotSent(e)) => e,
                Err(Failure::Unanswered(e)) if replayable => e,
                Err(Failure::Unanswered(e)) => {
                    if e == ProxyError::InstanceFailed {
                        self.proxy.shared.metrics.inflight_aborted.inc();
                    }
                    return self.refuse(io, e, false).await;
                }
            };
            if let Err(e) = self.proxy.retry_budget(&mut attempt, err) {
                return self.refuse(io, e, body_unread).await;
            }
            failed = Some(active);
        }
    }

    /// Answers with flowgate's own error response.
    async fn refuse<I: ClientIo>(&mut self, io: &mut I, e: ProxyError, body_unread: bool) -> (u16, Next) {
        let close = self.close || body_unread;
        let resp = e.response();
        let text = format!("flowgate: {e}\n");
        let out = &mut *self.up;
        out.clear();
        {
            use std::io::Write;
            let status = resp.status();
            let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
            for (k, v) in resp.headers() {
                let _ = write!(out, "{}: ", k.as_str());
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            let _ = write!(out, "content-length: {}\r\n", text.len());
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.req.head {
            out.extend_from_slice(text.as_bytes());
        }
        let status = e.status().as_u16();
        if io.write_all(out).await.is_err() {
            return (status, Next::Gone);
        }
        let next = if body_unread {
            Next::Linger
        } else if close {
            Next::Close
        } else {
            Next::KeepAlive
        };
        (status, next)
    }

    /// One attempt on `active`: a connection, the request, the answer.
    async fn attempt<I: ClientIo>(
        &mut self,
        io: &mut I,
        active: &Arc<Active>,
        body_unread: bool,
    ) -> Result<(u16, Next), Failure> {
        let shared = &self.proxy.shared;
        let pool = &shared.instances[active.index].pool;
        let _slot = match pool.slot().await {
            Ok(s) => s,
            Err(_) => return Ok(self.refuse(io, ProxyError::UpstreamBusy, body_unread).await),
        };
        let suspect = |e: &dyn std::fmt::Display| {
            shared.suspect(active.index);
            tracing::debug!(backend = %active.backend.id, error = %e, "upstream request failed");
        };
        // A pooled connection closed by the instance since is replaced (nothing was taken).
        let mut up = loop {
            let (mut tcp, pooled) = match pool.checkout_raw() {
                Some(t) => (t, true),
                None => match pool.connect_raw().await {
                    Ok(t) => (t, false),
                    Err(e) => {
                        suspect(&e);
                        return Err(Failure::NotSent(ProxyError::UpstreamConnect));
                    }
                },
            };
            match tcp.write_all(self.up).await {
                Ok(()) => break tcp,
                Err(_) if pooled => continue,
                Err(e) => {
                    suspect(&e);
                    return Err(Failure::NotSent(ProxyError::UpstreamConnect));
                }
            }
        };
        if body_unread {
            let sent = tokio::select! {
                biased;
                r = self.send_body(io, &mut up) => r,
                _ = active.failed.cancelled() => Err(BodyError::Failed),
            };
            // Part of the body was read and sent: nothing is repeated from here on.
            match sent {
                Ok(()) => {}
                Err(BodyError::ClientGone) => return Ok((400, Next::Gone)),
                Err(BodyError::Stalled) => {
                    self.close = true;
                    return Ok(self.refuse(io, ProxyError::BodyTimeout, false).await);
                }
                Err(BodyError::Upstream) => {
                    // The instance may have answered early and closed (a refused upload):
                    // that answer goes to the client, and the connection closes after it.
                    self.close = true;
                    let early = read_head(&mut up, self.rbuf, self.req.head, true, self.up);
                    if let Ok(Ok((head_len, status, framing, _))) = tokio::time::timeout(EARLY_ANSWER, early).await {
                        pool.answered();
                        let next = match self.pass_body(io, &mut up, head_len, framing).await {
                            Ok(_) => Next::Linger,
                            Err(()) => Next::Gone,
                        };
                        return Ok((status, next));
                    }
                    suspect(&"the request body could not be sent");
                    return Ok(self.refuse(io, ProxyError::UpstreamFailed, true).await);
                }
                Err(BodyError::Failed) => {
                    self.proxy.shared.metrics.inflight_aborted.inc();
                    return Ok(self.refuse(io, ProxyError::InstanceFailed, true).await);
                }
            }
        }
        let head = tokio::select! {
            biased;
            r = read_head(&mut up, self.rbuf, self.req.head, self.close, self.up) => r,
            _ = active.failed.cancelled() => return Err(Failure::Unanswered(ProxyError::InstanceFailed)),
        };
        let (head_len, status, framing, reusable) = match head {
            Ok(h) => h,
            Err(e) => {
                suspect(&e);
                return Err(Failure::Unanswered(ProxyError::UpstreamFailed));
            }
        };
        pool.answered();
        let close = self.close || framing == Framing::Close;
        match self.pass_body(io, &mut up, head_len, framing).await {
            Ok(clean) => {
                if clean && reusable {
                    pool.put_raw(up);
                }
                Ok((status, if close { Next::Close } else { Next::KeepAlive }))
            }
            Err(()) => Ok((status, Next::Gone)),
        }
    }

    /// Copies the rest of the request body from the client to the instance (what the head's
    /// buffer held of it went with the head).
    async fn send_body<I: ClientIo>(&mut self, io: &mut I, up: &mut TcpStream) -> Result<(), BodyError> {
        let limit = self.proxy.shared.config.limits.header_read_timeout;
        let mut left = self.req.body_len - self.in_buf as u64;
        let scratch = &mut *self.rbuf;
        while left > 0 {
            scratch.clear();
            let want = left.min(BUF as u64);
            let n = match tokio::time::timeout(limit, (&mut *io).take(want).read_buf(scratch)).await {
                Err(_) => return Err(BodyError::Stalled),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::ClientGone),
                Ok(Ok(n)) => n,
            };
            up.write_all(&scratch[..n]).await.map_err(|_| BodyError::Upstream)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Writes the client's head and the response body as the instance sends it. `Ok(true)`:
    /// the body ended where its framing says, with nothing after it (the connection can be
    /// reused).
    async fn pass_body<I: ClientIo>(
        &mut self,
        io: &mut I,
        up: &mut TcpStream,
        head_len: usize,
        framing: Framing,
    ) -> Result<bool, ()> {
        let avail = &self.rbuf[head_len..];
        let mut chunked = Chunked::default();
        let (first, mut left, extra) = match framing {
            Framing::Empty => (0, Some(0), !avail.is_empty()),
            Framing::Length(n) => {
                let first = (n.min(avail.len() as u64)) as usize;
                (first, Some(n - first as u64), avail.len() > first)
            }
            Framing::Chunked => match chunked.feed(avail) {
                Ok(Some(end)) => (end, Some(0), avail.len() > end),
                Ok(None) => (avail.len(), None, false),
                Err(BadChunk) => return Err(()),
            },
            Framing::Close => (avail.len(), None, false),
        };
        self.up.extend_from_slice(&avail[..first]);
        io.write_all(self.up).await.map_err(|_| ())?;
        if extra {
            return Ok(false);
        }
        let scratch = &mut *self.rbuf;
        loop {
            if left == Some(0) {
                return Ok(true);
            }
            scratch.clear();
            let n = read_more(up, scratch).await.map_err(|_| ())?;
            if n == 0 {
                // The instance closed: the end of a close-delimited body, else a cut one.
                return if framing == Framing::Close { Ok(false) } else { Err(()) };
            }
            let (pass, done) = match (framing, left) {
                (Framing::Length(_), Some(l)) => {
                    let pass = (l.min(n as u64)) as usize;
                    left = Some(l - pass as u64);
                    (pass, pass < n)
                }
                (Framing::Chunked, _) => match chunked.feed(&scratch[..n]) {
                    Ok(Some(end)) => {
                        left = Some(0);
                        (end, end < n)
                    }
                    Ok(None) => (n, false),
                    Err(BadChunk) => return Err(()),
                },
                _ => (n, false),
            };
            io.write_all(&scratch[..pass]).await.map_err(|_| ())?;
            if done {
                // The instance sent more than the body: the connection is not reused.
                return Ok(false);
            }
        }
    }
}

/// Reads the final response head from the instance into `rbuf` (interim 1xx heads dropped) and
/// writes the client's head to `out`.
async fn read_head(
    up: &mut TcpStream,
    rbuf: &mut Vec<u8>,
    head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> std::io::Result<(usize, u16, Framing, bool)> {
    use std::io::{Error, ErrorKind};
    rbuf.clear();
    loop {
        match head::response(rbuf, head, close, out) {
            Response::Head { head_len, status, framing, reusable } => return Ok((head_len, status, framing, reusable)),
            Response::Interim(n) => {
                rbuf.drain(..n);
                continue;
            }
            Response::Bad => return Err(Error::new(ErrorKind::InvalidData, "malformed response head")),
            Response::Partial if rbuf.len() > MAX_RESPONSE_HEAD => {
                return Err(Error::new(ErrorKind::InvalidData, "response head too large"));
            }
            Response::Partial => {}
        }
        if read_more(up, rbuf).await? == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "closed before the response"));
        }
    }
}

//! Accept loops and client connections.
//!
//! HTTP/1.1 connections start on the forwarding fast path (`proxy/fast.rs`, client-facing
//! listeners), which hands what it does not forward itself to hyper's HTTP/1 server; over TLS
//! with ALPN "h2", and in plain text when a client opens with the HTTP/2 preface (h2c, prior
//! knowledge), hyper's HTTP/2 server serves them. Upgrades are allowed.
//!
//! **Idle connections are parked**: an HTTP/1 connection that has had nothing to do for
//! [`PARK_AFTER`] hands its hyper state (read and write buffers, about 16 KiB) back and waits
//! for the socket to become readable with nothing but the socket; the next request starts a
//! fresh hyper connection on the same socket (`conn.rs`). An idle keep-alive connection thus
//! costs little more than the kernel's socket, which is what lets flowgate hold tens of
//! thousands of them.
//!
//! Limits: a client has `limits.header_read_timeout` to send a request head (slowloris) and to
//! send the next one on a kept-alive connection; a head over `limits.max_header_bytes` or with
//! more than `limits.max_headers` headers gets 431; beyond `limits.max_connections` open
//! connections a new one gets a 503 and is closed. The TLS handshake has the same time limit as
//! a request head.
//!
//! Shutdown: the loop stops accepting; busy connections finish their request (HTTP/1 closes
//! after it, HTTP/2 sends GOAWAY), parked ones close at once; after the grace period the rest
//! are left to be dropped with the runtime.

mod conn;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::IntGauge;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::traffic::body::Body;

/// The client side of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    pub tls: bool,
}

pub use conn::{ClientIo, PARK_AFTER};

/// What a full server answers on a connection it cannot take.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nx-flowgate-error: too-many-connections\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 47\r\n\r\nflowgate: too many open connections; retry soon\n";

pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Shared by the client-facing listeners.
    pub slots: Arc<Semaphore>,
    /// Open and parked connections, for the client-facing listeners.
    pub gauges: Option<Gauges>,
    /// The HTTP/1.1 forwarding fast path, for the client-facing listeners.
    pub fast: Option<Arc<crate::traffic::proxy::fast::Fast>>,
}

#[derive(Clone)]
pub struct Gauges {
    pub open: IntGauge,
    pub parked: IntGauge,
}

pub async fn accept_loop<F, Fut>(
    l: Listener,
    limits: Limits,
    cancel: CancellationToken,
    grace: Duration,
    workers: Arc<[tokio::runtime::Handle]>,
    handler: F,
) where
    F: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let http = Arc::new(conn::Http::new(&limits, l.tls.clone(), l.gauges.clone(), l.fast.clone()));
    tokio::spawn(http.parking.clone().sweep(cancel.clone()));
    let conns = TaskTracker::new();
    let mut next = 0;
    loop {
        let (mut stream, addr) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = l.tcp.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = l.slots.clone().try_acquire_owned() else {
            if l.tls.is_none() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
                });
            }
            continue;
        };
        let (handler, http, cancel) = (handler.clone(), http.clone(), cancel.clone());
        let held = conn::Held { _permit: permit, _open: http.gauges.as_ref().map(|g| conn::GaugeGuard::new(&g.open)) };
        let peer = Peer { addr, tls: http.tls.is_some() };
        if workers.is_empty() {
            conns.spawn(serve(stream, peer, http, cancel, handler, held));
            continue;
        }
        // One runtime per core: the connection moves to the next one and stays there. It is
        // registered with that runtime's I/O driver here, so the task holds `serve` alone (a
        // wrapping future would keep a second copy of its arguments for the connection's life).
        next = (next + 1) % workers.len();
        let moved = stream.into_std().and_then(|std| {
            let _on = workers[next].enter();
            tokio::net::TcpStream::from_std(std)
        });
        match moved {
            Ok(stream) => {
                workers[next].spawn(conns.track_future(serve(stream, peer, http, cancel, handler, held)));
            }
            Err(e) => debug!(peer = %addr, error = %e, "could not hand the connection over"),
        }
    }
    drop(l);
    conns.close();
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        warn!(grace = ?grace, "connections did not finish within the grace period; closing them");
    }
}

/// Threads each running a current-thread runtime, to serve client connections (one per core):
/// give [`Workers::handles`] to [`crate::start_on`].
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    pub fn spawn(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut workers = Workers { handles: Vec::new(), threads: Vec::new(), stop };
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = workers.stop.clone();
            let thread = std::thread::Builder::new().name(format!("flowgate-worker-{i}")).spawn(move || {
                crate::traffic::proxy::upstream::set_worker(i);
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(stop.cancelled());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
            workers.threads.push(thread);
            let handle = rx.recv().map_err(|_| std::io::Error::other("worker thread ended early"))??;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    pub fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.handles.clone()
    }

    /// Ends the runtimes (and whatever still runs on them) and joins their threads.
    pub fn stop(self) {
        self.stop.cancel();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One accepted connection: the TLS handshake if any (within the request-head time limit), then
/// HTTP.
async fn serve<F, Fut>(
    stream: tokio::net::TcpStream,
    peer: Peer,
    http: Arc<conn::Http>,
    cancel: CancellationToken,
    handler: F,
    held: conn::Held,
) where
    F: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    match http.tls.clone() {
        None => conn::serve(stream, peer, http, cancel, handler, held).await,
        // Boxed: a TLS session is large, and plain connections should not pay for it.
        Some(acceptor) => {
            Box::pin(async move {
                match tokio::time::timeout(http.head_limit, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => conn::serve(tls, peer, http, cancel, handler, held).await,
                    Ok(Err(e)) => debug!(peer = %peer.addr, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(peer = %peer.addr, "TLS handshake timed out"),
                }
            })
            .await
        }
    }
}

/// The HTTP→HTTPS redirect listener's answer: 308 to the same host and path on `https_port`.
pub fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    redirect_to(req.headers(), req.uri(), https_port)
}

/// The redirect for a request with these headers and URI.
pub fn redirect_to(headers: &http::HeaderMap, uri: &http::Uri, https_port: u16) -> Response<Body> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let host = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    let mut r = Response::new(Body::empty());
    *r.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    /// An idle connection costs its task: the future of `serve` while parked, boxed in the
    /// task. Rarely used states (closing, the protocol sniff, HTTP/2, a hyper session, a fast
    /// path session) are boxed only while they run, so it stays small (936 bytes before the
    /// lingering close was boxed; 640 now, with room for compiler changes).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let yaml = "backends: [{id: a, url: \"http://127.0.0.1:9\"}]\n";
        let cfg = crate::config::parse(yaml, std::path::Path::new("t.yaml"), &crate::config::System).unwrap();
        let http = std::sync::Arc::new(super::conn::Http::new(&cfg.limits, None, None, None));
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let held = super::conn::Held { _permit: slots.try_acquire_owned().unwrap(), _open: None };
        let peer = super::Peer { addr: l.local_addr().unwrap(), tls: false };
        let handler = |_req, _peer| async { Ok(http::Response::new(crate::traffic::body::Body::empty())) };
        let task = super::serve(c, peer, http, tokio_util::sync::CancellationToken::new(), handler, held);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 800, "a connection's future is {size} bytes");
    }
}

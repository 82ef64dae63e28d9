//! Accept loops. Each connection is served by hyper-util's auto builder (HTTP/1.1 and HTTP/2,
//! upgrades allowed; over TLS the protocol follows ALPN) and watched by a `GracefulShutdown`:
//! on shutdown the loop stops accepting, in-flight requests are given the grace period to
//! finish, then connections are dropped.
//!
//! Limits: a client has `limits.header_read_timeout` to send a request head (slowloris); a head
//! over `limits.max_header_bytes` or with more than `limits.max_headers` headers gets 431;
//! beyond `limits.max_connections` open connections a new one gets a 503 and is closed. The
//! TLS handshake has the same time limit as a request head.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::body::Body;
use crate::config::Limits;
use crate::proxy::Peer;

/// What a full server answers on a connection it cannot take.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nx-flowgate-error: too-many-connections\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 47\r\n\r\nflowgate: too many open connections; retry soon\n";

pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Shared by the client-facing listeners.
    pub slots: Arc<Semaphore>,
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    b
}

async fn serve_io<I, F, Fut>(io: I, peer: Peer, builder: auto::Builder<TokioExecutor>, watcher: Watcher, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let svc = service_fn(move |req| handler(req, peer));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        debug!(peer = %peer.addr, error = %e, "connection ended with an error");
    }
}

pub async fn accept_loop<F, Fut>(l: Listener, limits: Limits, cancel: CancellationToken, grace: Duration, handler: F)
where
    F: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let builder = builder(&limits);
    let graceful = GracefulShutdown::new();
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
        let (handler, builder, watcher, tls) = (handler.clone(), builder.clone(), graceful.watcher(), l.tls.clone());
        let handshake_limit = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_io(stream, Peer { addr, tls: false }, builder, watcher, handler).await,
                Some(acceptor) => match tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_io(tls, Peer { addr, tls: true }, builder, watcher, handler).await,
                    Ok(Err(e)) => debug!(peer = %addr, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(peer = %addr, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(l);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!(grace = ?grace, "connections did not finish within the grace period; closing them");
    }
}

/// The HTTP→HTTPS redirect listener's answer: 308 to the same host and path on `https_port`.
pub fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let host = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    let mut r = Response::new(Body::empty());
    *r.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

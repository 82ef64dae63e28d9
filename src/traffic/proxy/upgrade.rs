//! Websocket (HTTP/1.1 upgrade) tunnels to the active instance. The upstream handshake is
//! forwarded; on `101` both sides are upgraded and bytes are copied both ways. A tunnel is
//! closed when its instance stops being active (so dashboards and editors reconnect to the
//! new active) and on shutdown; it is tracked so shutdown can wait for it.

use std::sync::Arc;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::forward;
use crate::backend::AdminClient;
use crate::state::{Active, Shared};
use crate::traffic::body::Body;
use crate::traffic::error::ProxyError;
use crate::traffic::server::Peer;

/// What tunnels need beyond the request: a client for the upgrade request, a tracker and token
/// so shutdown can close and await them, and the connection slots (`limits.max_connections`):
/// a tunnel holds two for its life (its client and upstream connections), so tunnels cannot use
/// up the file descriptors the probes need.
pub struct Tunnels {
    pub client: AdminClient,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    pub slots: Arc<tokio::sync::Semaphore>,
}

pub async fn tunnel(
    tunnels: &Tunnels,
    shared: &Shared,
    mut req: Request<Incoming>,
    peer: Peer,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    // Two: the upstream connection, and the client's, whose own slot goes with its HTTP
    // connection once upgraded.
    let Ok(slot) = tunnels.slots.clone().try_acquire_many_owned(2) else {
        return Err(ProxyError::TooManyConnections);
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers, true);
    forward::set_forwarded(&mut parts.headers, &parts.uri, peer.addr.ip(), peer.tls, &shared.config.trusted_proxies);
    let mut out = Request::new(http_body_util::Full::default());
    *out.method_mut() = parts.method;
    *out.uri_mut() = forward::upstream_uri(&active.backend.scheme, &active.backend.authority, &parts.uri);
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = parts.headers;

    let mut resp = tokio::select! {
        r = tunnels.client.request(out) => r.map_err(|e| {
            shared.suspect(active.index);
            if e.is_connect() { ProxyError::UpstreamConnect } else { ProxyError::UpstreamFailed }
        })?,
        _ = active.failed.cancelled() => return Err(ProxyError::InstanceFailed),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rp, rb) = resp.into_parts();
        forward::strip_hop_by_hop(&mut rp.headers, false);
        return Ok(Response::from_parts(rp, Body::incoming(rb)));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let (mut rp, _) = resp.into_parts();
    forward::strip_hop_by_hop(&mut rp.headers, true);

    let metrics = shared.metrics.clone();
    let shutdown = tunnels.shutdown.clone();
    let backend = active.backend.id.clone();
    tunnels.tracker.spawn(async move {
        let _slot = slot; // held for the tunnel's life
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(backend = %backend, error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let (mut client_rx, mut client_tx) = tokio::io::split(TokioIo::new(client));
        let (mut upstream_rx, mut upstream_tx) = tokio::io::split(TokioIo::new(upstream));
        metrics.websocket_tunnels.inc();
        tokio::select! {
            r = async { tokio::try_join!(pump(&mut client_rx, &mut upstream_tx), pump(&mut upstream_rx, &mut client_tx)) } => {
                debug!(backend = %backend, result = ?r, "websocket closed");
            }
            _ = active.demoted.cancelled() => debug!(backend = %backend, "websocket closed: instance no longer active"),
            _ = shutdown.cancelled() => debug!(backend = %backend, "websocket closed: shutting down"),
        }
        metrics.websocket_tunnels.dec();
    });
    Ok(Response::from_parts(rp, Body::empty()))
}

/// Copies one direction of a tunnel until end of stream, then shuts the other side's writing
/// half. Small messages (most websocket frames) pass through a 256-byte buffer inside the
/// task; a larger buffer exists only while more than that is flowing. An idle websocket thus
/// holds no buffer, where a plain copy would keep 8 KiB per direction.
async fn pump<R, W>(from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut small = [0u8; 256];
    loop {
        let n = from.read(&mut small).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&small[..n]).await?;
        if n == small.len() {
            let mut big = vec![0u8; 16 * 1024];
            // Whatever is already there, without waiting; the buffer goes once it runs dry.
            while let Some(r) = from.read(&mut big).now_or_never() {
                match r? {
                    0 => {
                        to.flush().await?;
                        return to.shutdown().await;
                    }
                    n => to.write_all(&big[..n]).await?,
                }
            }
        }
        to.flush().await?;
    }
}

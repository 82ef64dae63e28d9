//! Websocket (HTTP/1.1 upgrade) tunnels to the active instance. The upstream handshake is
//! forwarded; on `101` both sides are upgraded and bytes are copied both ways. A tunnel is
//! closed when its instance stops being active (so dashboards and editors reconnect to the
//! new active) and on shutdown; it is tracked so shutdown can wait for it.

use std::sync::Arc;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{Peer, Proxy, forward};
use crate::body::Body;
use crate::error::ProxyError;
use crate::state::Active;

pub async fn tunnel(
    proxy: &Proxy,
    mut req: Request<Incoming>,
    peer: Peer,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers, true);
    forward::set_forwarded(
        &mut parts.headers,
        &parts.uri,
        peer.addr.ip(),
        peer.tls,
        &proxy.shared.config.trusted_proxies,
    );
    let mut out = Request::new(Body::empty());
    *out.method_mut() = parts.method;
    *out.uri_mut() = forward::upstream_uri(&active.backend.scheme, &active.backend.authority, &parts.uri);
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = parts.headers;

    let mut resp = tokio::select! {
        r = proxy.client.request(out) => r.map_err(|e| {
            proxy.shared.suspect(active.index);
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

    let metrics = proxy.shared.metrics.clone();
    let shutdown = proxy.shutdown.clone();
    let backend = active.backend.id.clone();
    proxy.tunnels.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(backend = %backend, error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        metrics.websocket_tunnels.inc();
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                debug!(backend = %backend, result = ?r, "websocket closed");
            }
            _ = active.demoted.cancelled() => debug!(backend = %backend, "websocket closed: instance no longer active"),
            _ = shutdown.cancelled() => debug!(backend = %backend, "websocket closed: shutting down"),
        }
        metrics.websocket_tunnels.dec();
    });
    Ok(Response::from_parts(rp, Body::empty()))
}

//! Replicas: an editor write that changes flows (deploy, flow, library, palette) and reaches
//! a follower is forwarded to the controller and carried out there (logins stay with the
//! replica the editor uses). Every write then runs in one process,
//! under its change lock, serialised with promotions, and the controller's in-step table and
//! remembered credentials see every deploy, whichever replica the editor talks to.
//!
//! The follower checks the client's credentials against the active first and reads the body
//! with the usual limits (nobody without a login makes it buffer), then sends the request to
//! the controller's proxy listener (`cluster.advertise`) with `x-flowgate-forwarded: <its id>`
//! and streams the answer back. A forwarded write is never forwarded again: a replica that is
//! no longer the controller when it arrives refuses it (503, retry), and so does a follower
//! that knows no controller. Nothing is ever carried out by a follower itself.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::request::Parts;
use http::{Request, Uri, Version};
use hyper::body::Incoming;
use tracing::warn;

use super::fanout::read_body;
use crate::backend::AdminClient;
use crate::state::{Active, Shared};
use crate::traffic::body::Body;
use crate::traffic::error::ProxyError;

/// Marks a write forwarded by a follower (its replica id).
pub const FORWARDED: &str = "x-flowgate-forwarded";

/// Forwards one editor write to the controller at `controller` (`http://host:port`).
pub async fn to_controller(
    shared: &Shared,
    client: &AdminClient,
    controller: &str,
    mut parts: Parts,
    body: Incoming,
    active: Arc<Active>,
) -> Result<Response, ProxyError> {
    let cfg = &shared.config;
    let _admitted = super::writes::admit(shared, client, &parts, &active).await?;
    let bytes = read_body(body, cfg.deploy.max_body, cfg.limits.header_read_timeout).await?;
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{controller}{pq}").parse().map_err(|_| ProxyError::ControllerUnreachable)?;
    let me = cfg.cluster.as_ref().map_or("", |c| c.id.as_str());
    parts.headers.insert(FORWARDED, HeaderValue::from_str(me).unwrap_or(HeaderValue::from_static("follower")));
    let mut out = Request::new(http_body_util::Full::new(bytes));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = parts.headers;
    // The controller answers once every instance was tried: its own limits bound this.
    let limit = cfg.deploy.palette_timeout + Duration::from_secs(5);
    match tokio::time::timeout(limit, client.request(out)).await {
        Ok(Ok(resp)) => {
            let (mut rp, rb) = resp.into_parts();
            crate::traffic::proxy::forward::strip_hop_by_hop(&mut rp.headers, false);
            Ok(http::Response::from_parts(rp, Body::incoming(rb)))
        }
        Ok(Err(e)) => {
            warn!(controller, error = %e, "cannot forward an editor write to the controller");
            Err(ProxyError::ControllerUnreachable)
        }
        Err(_) => Err(ProxyError::ControllerUnreachable),
    }
}

type Response = http::Response<Body>;

//! The one way an editor write reaches instances: [`Write`].
//!
//! Every write has the same shape: read the body (bounded), take the change lock (so it never
//! interleaves with a promotion or a resync), find the active as it is once the lock is held,
//! send the editor's request to it, send copies to the others, and answer the editor with its
//! instance's answer plus `x-flowgate-deployed: <took>/<instances>`. Each call is *fenced*: a
//! promotion that needs the lock cancels the outstanding ones, and a call to the active is also
//! abandoned when the active is declared failed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, AUTHORIZATION, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backend::{AdminClient, CallError};
use crate::editor::changes::ChangeGuard;
use crate::state::{Active, Shared};
use crate::traffic::body::Body;
use crate::traffic::error::ProxyError;

pub const DEPLOYED_HEADER: &str = "x-flowgate-deployed";

/// What an instance answered: status, headers and the whole body.
pub type Answer = Result<(StatusCode, HeaderMap, Bytes), CallError>;

/// Reads a whole request body, 413 above `limit`.
/// `idle`: the longest the client may send nothing before the body is complete (408).
pub async fn read_body(body: Incoming, limit: usize, idle: std::time::Duration) -> Result<Bytes, ProxyError> {
    let mut body = Limited::new(body, limit);
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::BodyTimeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(ProxyError::PayloadTooLarge);
            }
            Ok(Some(Err(_))) => return Err(ProxyError::BadRequest),
        }
    }
}

/// One call to an instance, abandoned when `fence` is cancelled.
pub async fn fenced<T>(
    call: impl std::future::Future<Output = Result<T, CallError>>,
    fence: &CancellationToken,
) -> Result<T, CallError> {
    tokio::select! {
        r = call => r,
        _ = fence.cancelled() => Err(CallError::Transport("abandoned: a failover took the change lock".into())),
    }
}

/// The `rev` of a v2 deploy answer.
pub fn rev_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?.get("rev")?.as_str().map(str::to_string)
}

/// `{"flows":<exact bytes>[,"rev":"…"][,"credentials":<exact bytes>]}`.
pub fn v2_body(flows: &str, rev: Option<&str>, credentials: Option<&str>) -> Bytes {
    let mut out = String::with_capacity(flows.len() + 128);
    out.push_str("{\"flows\":");
    out.push_str(flows);
    if let Some(r) = rev {
        out.push_str(",\"rev\":");
        out.push_str(&serde_json::to_string(r).expect("string"));
    }
    if let Some(c) = credentials {
        out.push_str(",\"credentials\":");
        out.push_str(c);
    }
    out.push('}');
    Bytes::from(out)
}

/// The first 8 characters of a revision, for logs.
pub fn short(rev: Option<&str>) -> String {
    rev.map_or_else(|| "unknown".into(), |r| r.chars().take(8).collect())
}

/// Saves the sync table (it persists with `state.dir`).
pub fn save(shared: &Shared) {
    // Savers take turns, each writing what it saw under the table's lock, so the files never
    // go back to an older state; the table itself is not held while the disk syncs (its readers,
    // status publishing among them, do not wait for an fsync).
    let _turn = shared.saving.lock().unwrap_or_else(|e| e.into_inner());
    let snapshot = shared.sync.lock().unwrap_or_else(|e| e.into_inner()).snapshot();
    if let Some(Err(e)) = snapshot.map(|s| s.write()) {
        warn!(error = %e, "cannot save the deploy state");
    }
}

/// An editor write in progress.
pub struct Write<'a> {
    pub shared: &'a Shared,
    client: &'a AdminClient,
    /// The editor's request head.
    pub parts: Parts,
    pub bytes: Bytes,
    /// Path and query, and the editor's headers as sent on to an instance: without those that
    /// belong to the client hop (Host, Content-Length, Cookie).
    pub pq: String,
    pub headers: HeaderMap,
    /// The editor's instance.
    pub active: Arc<Active>,
    guard: Option<ChangeGuard>,
    pub timeout: Duration,
}

impl<'a> Write<'a> {
    /// A write that changes instances: takes the change lock and re-reads the active once it
    /// is held (a failover may have happened while waiting). 503 when neither is to be had
    /// within `failover.hold`.
    pub async fn locked(
        shared: &'a Shared,
        client: &'a AdminClient,
        parts: Parts,
        bytes: Bytes,
        active: &Arc<Active>,
        timeout: Duration,
    ) -> Result<Self, ProxyError> {
        let guard = shared.changes.lock(shared.config.failover.hold).await.ok_or(ProxyError::ChangeInProgress)?;
        let active = match &shared.view.load().active {
            Some(a) if Arc::ptr_eq(a, active) || !a.failed.is_cancelled() => a.clone(),
            _ => return Err(ProxyError::ChangeInProgress),
        };
        Ok(Self::new(shared, client, parts, bytes, active, Some(guard), timeout))
    }

    /// A write for the editor's instance alone (logins): no lock.
    pub fn unlocked(
        shared: &'a Shared,
        client: &'a AdminClient,
        parts: Parts,
        bytes: Bytes,
        active: Arc<Active>,
    ) -> Self {
        let timeout = shared.config.deploy.timeout;
        Self::new(shared, client, parts, bytes, active, None, timeout)
    }

    fn new(
        shared: &'a Shared,
        client: &'a AdminClient,
        parts: Parts,
        bytes: Bytes,
        active: Arc<Active>,
        guard: Option<ChangeGuard>,
        timeout: Duration,
    ) -> Self {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let mut headers = parts.headers.clone();
        for name in [header::HOST, header::CONTENT_LENGTH, header::COOKIE] {
            headers.remove(name);
        }
        Write { shared, client, parts, bytes, pq, headers, active, guard, timeout }
    }

    fn fence(&self) -> CancellationToken {
        self.guard.as_ref().map_or_else(CancellationToken::new, |g| g.fence.clone())
    }

    pub fn total(&self) -> usize {
        self.shared.instances.len()
    }

    /// Sends `body` with `headers` to instance `i`, fenced.
    pub async fn call(&self, i: usize, method: Method, headers: HeaderMap, body: Bytes) -> (usize, Answer) {
        let b = self.shared.backend(i);
        let fence = self.fence();
        (i, fenced(b.exchange(self.client, method, &self.pq, headers, body, self.timeout), &fence).await)
    }

    /// The editor's exact request to its instance; abandoned if that instance is declared
    /// failed meanwhile.
    pub async fn to_active(&self) -> Answer {
        let (m, h, b) = (self.parts.method.clone(), self.headers.clone(), self.bytes.clone());
        tokio::select! {
            (_, r) = self.call(self.active.index, m, h, b) => r,
            _ = self.active.failed.cancelled() => Err(CallError::Transport("the active failed during the write".into())),
        }
    }

    /// Copies to each of `targets` at once, each with the body `body_for` gives it.
    pub async fn to_each(
        &self,
        targets: &[usize],
        headers_for: impl Fn(usize) -> HeaderMap,
        body_for: impl Fn(usize) -> Bytes,
    ) -> Vec<(usize, Answer)> {
        let m = &self.parts.method;
        futures_util::future::join_all(targets.iter().map(|&i| self.call(i, m.clone(), headers_for(i), body_for(i))))
            .await
    }

    /// The editor's headers with flowgate's own token for instance `i`, for copies that do
    /// not rely on the instance accepting the editor's token.
    pub fn copy_headers(&self, i: usize) -> HeaderMap {
        let mut h = self.headers.clone();
        if let Some(t) = self.shared.backend(i).token() {
            h.insert(AUTHORIZATION, t.clone());
        }
        h
    }

    /// The other instances: those that are up, and those that are not.
    pub fn others(&self) -> (Vec<usize>, Vec<usize>) {
        (0..self.total()).filter(|&i| i != self.active.index).partition(|&i| self.shared.seen_up(i))
    }

    /// Counts one instance's result in `flowgate_deploy_fanout_total`.
    pub fn record(&self, i: usize, result: &'static str) {
        let id = self.shared.backend(i).id.as_str();
        self.shared.metrics.deploy_fanout.with_label_values(&[id, result]).inc();
    }

    /// The editor's instance took a write that changed flows: its new revision becomes the
    /// target. Returns it.
    pub async fn adopt_active_flows(&self) -> Option<String> {
        let b = &self.active.backend;
        match b.flows(self.client, self.shared.config.deploy.timeout).await {
            Ok((rev, raw)) => {
                let flows: Option<serde_json::Value> = serde_json::from_slice(&raw).ok();
                let mut t = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
                t.deployed(rev.clone(), flows.as_ref());
                let cgen = t.cred_gen;
                t.mark_applied(self.active.index, Some(rev.clone()), cgen);
                Some(rev)
            }
            Err(e) => {
                warn!(backend = %b.id, error = %e, "cannot read the active's flows after a change");
                None
            }
        }
    }

    /// Releases the lock, saves the sync table and wakes the cluster driver.
    pub fn finish(self) {
        drop(self.guard);
        save(self.shared);
        self.shared.sync_changed.notify_one();
    }
}

/// The answer to the editor: its instance's, with how many instances took the write.
pub fn reply(status: StatusCode, mut headers: HeaderMap, body: Bytes, took: usize, total: usize) -> Response<Body> {
    crate::traffic::proxy::forward::strip_hop_by_hop(&mut headers, false);
    headers.remove(header::CONTENT_LENGTH);
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r.headers_mut().insert(DEPLOYED_HEADER, HeaderValue::from_str(&format!("{took}/{total}")).expect("digits"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_body_keeps_flow_bytes_exactly() {
        let flows = r#"[ {"id":"a", "x":1.0,"z":"t"} ]"#;
        let b = v2_body(flows, Some("abc"), Some(r#"{"$":"blob"}"#));
        assert_eq!(&b[..], format!(r#"{{"flows":{flows},"rev":"abc","credentials":{{"$":"blob"}}}}"#).as_bytes());
        assert_eq!(&v2_body("[]", None, None)[..], br#"{"flows":[]}"#);
    }
}

//! Deploys and the other editor writes, kept in step on every instance.
//!
//! Response policy: the editor always gets the answer of *its* instance (the active), with
//! `x-flowgate-deployed: <instances that took it>/<instances>`. Per-instance results go to
//! `/status` and `flowgate_deploy_fanout_total`.
//!
//! `POST <admin>/flows` (Deploy):
//! 1. The body is read in full (limit `deploy.max_body`, else 413) and checked before anything
//!    is sent: the API version must match the body's shape (v1 array, v2 object with `flows`)
//!    and the deployment type must be one Node-RED knows (else 400).
//! 2. The change lock is taken (deploys, resyncs and promotions never interleave). A deploy
//!    that cannot get it within `failover.hold` answers 503.
//! 3. The editor's exact bytes and headers go to the active. A non-2xx answer (such as the 409
//!    for a stale `rev`) goes back to the editor and nothing else happens.
//! 4. In-step standbys receive the editor's exact request at the same time (see [`deploy`]):
//!    they make the same decision as the active. Every other healthy instance gets the same
//!    flow bytes once the active succeeded, with flowgate's own token; for API v2 the `rev`
//!    field is replaced by the revision that instance should have, so a drifted one answers
//!    409 and is resynced instead of being silently skipped. Standbys stay stopped (Node-RED
//!    only saves flows on a stopped runtime). Instances that are down, fail, disagree with the
//!    active, or drift are marked out of step.
//! 5. Out-of-step instances are brought back in step by the supervisor (`resync`): the
//!    active's flows (or, with no active, the remembered ones) plus every credential flowgate
//!    remembers, deployed in full. An out-of-step instance is not promoted while an in-step
//!    one exists.
//!
//! A promotion *fences* an in-flight fan-out (cancels its outstanding calls, which mark their
//! instances out of step) and then takes the change lock, so a failover never waits on a slow
//! or hung instance's deploy.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{AdminClient, Backend, CallError};
use crate::control::cluster::SyncOutcome;
use crate::editor::changes::ChangeGuard;
use crate::editor::sync::Step;
use crate::state::{Active, Shared};
use crate::traffic::body::Body;
use crate::traffic::error::ProxyError;

pub const DEPLOYED_HEADER: &str = "x-flowgate-deployed";
static API_VERSION: HeaderName = HeaderName::from_static("node-red-api-version");
static DEPLOYMENT_TYPE: HeaderName = HeaderName::from_static("node-red-deployment-type");

/// For a write from an editor: the change lock, and the active instance as it is once the lock
/// is held (a failover may have happened while waiting). 503 when neither is to be had within
/// `failover.hold`.
async fn lock_for_write(shared: &Shared, active: &Arc<Active>) -> Result<(ChangeGuard, Arc<Active>), ProxyError> {
    let guard = shared.changes.lock(shared.config.failover.hold).await.ok_or(ProxyError::ChangeInProgress)?;
    match &shared.view.load().active {
        Some(a) if Arc::ptr_eq(a, active) || !a.failed.is_cancelled() => Ok((guard, a.clone())),
        _ => Err(ProxyError::ChangeInProgress),
    }
}

/// Reads a whole request body, 413 above `limit`.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ProxyError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ProxyError::PayloadTooLarge),
        Err(_) => Err(ProxyError::BadRequest),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    V1,
    V2,
}

#[derive(Deserialize)]
struct V2Body<'a> {
    #[serde(borrow)]
    flows: &'a RawValue,
    #[serde(default, borrow)]
    credentials: Option<&'a RawValue>,
}

/// What a deploy request carries, checked before anything is sent.
struct Checked {
    api: Api,
    reload: bool,
    /// The flows array, parsed (for the remembered target and credentials).
    flows: Option<serde_json::Value>,
}

fn check_deploy(headers: &HeaderMap, body: &[u8]) -> Result<Checked, ProxyError> {
    let api = match headers.get(&API_VERSION).map(|v| v.to_str().unwrap_or("")) {
        None | Some("v1") => Api::V1,
        Some("v2") => Api::V2,
        Some(_) => return Err(ProxyError::BadDeploy("Node-RED-API-Version must be v1 or v2")),
    };
    let kind = headers.get(&DEPLOYMENT_TYPE).map(|v| v.to_str().unwrap_or("?")).unwrap_or("full");
    if !matches!(kind, "full" | "nodes" | "flows" | "reload") {
        return Err(ProxyError::BadDeploy("Node-RED-Deployment-Type must be full, nodes, flows or reload"));
    }
    let reload = kind == "reload";
    if reload && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Checked { api, reload, flows: None });
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| ProxyError::BadDeploy("the deploy body is not JSON"))?;
    let flows = match (api, value) {
        (Api::V1, v @ serde_json::Value::Array(_)) => v,
        (Api::V1, _) => return Err(ProxyError::BadDeploy("API v1 deploys take a JSON array of nodes")),
        (Api::V2, serde_json::Value::Object(mut o)) => match o.remove("flows") {
            Some(f @ serde_json::Value::Array(_)) => f,
            _ => return Err(ProxyError::BadDeploy("API v2 deploys take an object with a `flows` array")),
        },
        (Api::V2, _) => return Err(ProxyError::BadDeploy("API v2 deploys take an object with a `flows` array")),
    };
    Ok(Checked { api, reload, flows: Some(flows) })
}

/// `{"flows":<exact bytes>[,"rev":"…"][,"credentials":<exact bytes>]}`.
fn v2_body(flows: &str, rev: Option<&str>, credentials: Option<&str>) -> Bytes {
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

/// The path and headers of an editor request as sent on to an instance: the editor's own
/// headers without those that belong to the client hop (Host, Content-Length, Cookie).
fn to_instance(parts: &Parts) -> (String, HeaderMap) {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut h = parts.headers.clone();
    for name in [header::HOST, header::CONTENT_LENGTH, header::COOKIE] {
        h.remove(name);
    }
    (pq, h)
}

/// Headers for a copy of an editor write sent to another instance: the editor's end-to-end
/// headers, with flowgate's token for that instance when it has one.
fn copy_headers(parts: &Parts, backend: &Backend) -> HeaderMap {
    let (_, mut h) = to_instance(parts);
    if let Some(t) = backend.token() {
        h.insert(AUTHORIZATION, t.clone());
    }
    h
}

/// Which instances besides the active receive copies: every healthy one.
fn others(shared: &Shared, active: usize) -> (Vec<usize>, Vec<usize>) {
    let status = shared.status.load();
    (0..shared.instances.len())
        .filter(|&i| i != active)
        .partition(|&i| status.backends.get(i).is_some_and(|b| b.health == "up"))
}

fn reply(status: StatusCode, mut headers: HeaderMap, body: Bytes, took: usize, total: usize) -> Response<Body> {
    crate::traffic::proxy::forward::strip_hop_by_hop(&mut headers, false);
    headers.remove(header::CONTENT_LENGTH);
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r.headers_mut().insert(DEPLOYED_HEADER, HeaderValue::from_str(&format!("{took}/{total}")).expect("digits"));
    r
}

/// One call to an instance, abandoned when `fence` is cancelled.
async fn fenced<T>(
    call: impl std::future::Future<Output = Result<T, CallError>>,
    fence: &CancellationToken,
) -> Result<T, CallError> {
    tokio::select! {
        r = call => r,
        _ = fence.cancelled() => Err(CallError::Transport("abandoned: a failover took the change lock".into())),
    }
}

fn rev_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?.get("rev")?.as_str().map(str::to_string)
}

fn record(shared: &Shared, i: usize, result: &'static str) {
    shared.metrics.deploy_fanout.with_label_values(&[shared.backend(i).id.as_str(), result]).inc();
}

/// The editor's instance took a write that changed flows: read its new revision and make it
/// the target. Returns the new revision.
async fn adopt_active_flows(shared: &Shared, client: &AdminClient, active: usize) -> Option<String> {
    let b = &shared.backend(active);
    match b.flows(client, shared.config.deploy.timeout).await {
        Ok((rev, raw)) => {
            let flows: Option<serde_json::Value> = serde_json::from_slice(&raw).ok();
            let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            t.deployed(rev.clone(), flows.as_ref());
            let cgen = t.cred_gen;
            t.mark_applied(active, Some(rev.clone()), cgen);
            Some(rev)
        }
        Err(e) => {
            warn!(backend = %b.id, error = %e, "cannot read the active's flows after a change");
            None
        }
    }
}

fn save(shared: &Shared) {
    let t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = t.save() {
        warn!(error = %e, "cannot save the deploy state");
    }
}

/// What one instance answered to a copy of a deploy; updates its step.
fn apply_copy(
    shared: &Shared,
    t: &mut crate::editor::sync::SyncTable,
    i: usize,
    r: Result<(StatusCode, HeaderMap, Bytes), CallError>,
    v2: bool,
    old_gen: u64,
    new_gen: u64,
) -> bool {
    let id = &shared.backend(i).id;
    let cgen = if t.applied[i].cred_gen >= old_gen { new_gen } else { t.applied[i].cred_gen };
    match r {
        Ok((s, _, body)) if s.is_success() => {
            record(shared, i, "ok");
            if v2 {
                t.mark_applied(i, rev_of(&body), cgen);
            } else {
                t.applied[i].cred_gen = cgen;
                t.steps[i] = Step::Unknown; // its rev is checked by the supervisor
            }
            true
        }
        Ok((StatusCode::CONFLICT, _, _)) => {
            record(shared, i, "conflict");
            warn!(backend = %id, "standby had drifted (409 for the revision it should have); it will be resynced");
            t.mark_out_of_step(i, "drifted: its flows differed from the target (409)");
            false
        }
        Ok((s, _, body)) => {
            record(shared, i, "error");
            warn!(backend = %id, status = s.as_u16(), body = %crate::backend::snippet(&body), "standby refused the deploy");
            t.mark_out_of_step(i, format!("refused the deploy: {s}"));
            false
        }
        Err(e) => {
            record(shared, i, "error");
            warn!(backend = %id, error = %e, "deploy to standby failed");
            t.mark_out_of_step(i, format!("deploy failed: {e}"));
            false
        }
    }
}

/// `POST <admin>/flows`.
///
/// In-step standbys get the editor's exact request (bytes, `rev`, `Authorization`) at the
/// same time as the active: they hold the same revision and accept the same tokens (through
/// `adminAuth.tokens` and `/auth/token-info`), so they make the same decision as the active (a
/// 409 for a stale rev, a 401 for a bad token) and a deploy costs about one instance's time,
/// not two. A standby whose answer differs from the active's is resynced to the active. A
/// standby that refuses editor tokens, and every standby not known to be in step, gets its
/// copy after the active succeeded, with flowgate's token and the rev it should have.
pub async fn deploy(
    shared: &Shared,
    client: &AdminClient,
    parts: Parts,
    body: Incoming,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    let cfg = &shared.config;
    let bytes = read_body(body, cfg.deploy.max_body).await?;
    let checked = check_deploy(&parts.headers, &bytes)?;
    let (guard, active) = lock_for_write(shared, &active).await?;
    let ai = active.index;
    let ab = &active.backend;
    let total = shared.instances.len();
    let v2 = checked.api == Api::V2 && !checked.reload;
    let (pq, editor_headers) = to_instance(&parts);
    let (up, down) = others(shared, ai);
    let (speculative, mut later, old_gen, expected) = {
        let t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        let (spec, later): (Vec<usize>, Vec<usize>) = up.iter().partition(|&&i| {
            t.in_step(i) && !shared.instances[i].refuses_editor_tokens.load(std::sync::atomic::Ordering::Relaxed)
        });
        let expected: Vec<Option<String>> =
            (0..total).map(|i| if t.in_step(i) { t.applied[i].rev.clone() } else { None }).collect();
        (spec, later, t.cred_gen, expected)
    };

    let started = tokio::time::Instant::now();
    let to_active = async {
        tokio::select! {
            r = fenced(ab.exchange(client, Method::POST, &pq, editor_headers.clone(), bytes.clone(), cfg.deploy.timeout), &guard.fence) => r,
            _ = active.failed.cancelled() => Err(CallError::Transport("the active failed during the deploy".into())),
        }
    };
    let to_standbys = futures_util::future::join_all(speculative.iter().map(|&i| {
        let (b, h, body, pq) = (shared.backend(i).clone(), editor_headers.clone(), bytes.clone(), pq.clone());
        let fence = guard.fence.clone();
        async move { (i, fenced(b.exchange(client, Method::POST, &pq, h, body, cfg.deploy.timeout), &fence).await) }
    }));
    let (first, spec_results) = tokio::join!(to_active, to_standbys);
    let active_ms = started.elapsed().as_secs_f64() * 1e3;

    let (status, resp_headers, resp_body) = match first {
        Ok(r) => r,
        Err(e) => {
            warn!(backend = %ab.id, error = %e, "deploy to the active failed; the editor is told it was not applied");
            record(shared, ai, "error");
            let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            t.steps[ai] = Step::Unknown;
            for (i, r) in &spec_results {
                if matches!(r, Ok((s, ..)) if s.is_success()) {
                    t.mark_out_of_step(*i, "took a deploy whose outcome on the active is unknown");
                }
            }
            drop(t);
            shared.metrics.deploys.with_label_values(&["error"]).inc();
            shared.sync_changed.notify_one();
            return Err(ProxyError::UpstreamFailed);
        }
    };
    if !status.is_success() {
        record(shared, ai, if status == StatusCode::CONFLICT { "conflict" } else { "rejected" });
        shared.metrics.deploys.with_label_values(&["rejected"]).inc();
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for (i, r) in &spec_results {
            if matches!(r, Ok((s, ..)) if s.is_success()) {
                record(shared, *i, "diverged");
                warn!(backend = %shared.backend(*i).id, "standby took a deploy its active refused; it will be resynced");
                t.mark_out_of_step(*i, "took a deploy the active refused");
            }
        }
        drop(t);
        shared.sync_changed.notify_one();
        return Ok(reply(status, resp_headers, resp_body, 0, total));
    }
    record(shared, ai, "ok");

    // The new target.
    let new_rev = if v2 { rev_of(&resp_body) } else { None };
    let new_gen = {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        match (&new_rev, &checked.flows) {
            (Some(rev), flows) => {
                t.deployed(rev.clone(), flows.as_ref());
            }
            (None, Some(flows)) => {
                // v1: the rev is read back from the active below; credentials merge now.
                let placeholder = t.rev.clone().unwrap_or_default();
                t.deployed(placeholder, Some(flows));
            }
            (None, None) => {}
        }
        t.cred_gen
    };
    let target_rev = match new_rev {
        Some(r) => Some(r),
        None => adopt_active_flows(shared, client, ai).await,
    };
    let mut took = 1;
    {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        t.mark_applied(ai, target_rev.clone(), new_gen);
        for (i, r) in spec_results {
            if matches!(r, Ok((StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, ..))) {
                // This instance does not accept editor tokens: copy with flowgate's token.
                shared.instances[i].refuses_editor_tokens.store(true, std::sync::atomic::Ordering::Relaxed);
                info!(backend = %shared.backend(i).id, "instance refuses editor tokens (no /auth/token-info in its adminAuth.tokens); deploys to it wait for the active");
                later.push(i);
                continue;
            }
            took += usize::from(apply_copy(shared, &mut t, i, r, v2, old_gen, new_gen));
        }
        for &i in &down {
            record(shared, i, "skipped");
            t.mark_out_of_step(i, format!("missed the deploy of rev {} while down", short(target_rev.as_deref())));
        }
    }

    // Copies with flowgate's token for the others, now that the active took the deploy.
    let raw: Option<V2Body<'_>> = if v2 { serde_json::from_slice(&bytes).ok() } else { None };
    let copies =
        futures_util::future::join_all(later.iter().map(|&i| {
            let b = shared.backend(i).clone();
            let body = match &raw {
                Some(v2) => v2_body(v2.flows.get(), expected[i].as_deref(), v2.credentials.map(RawValue::get)),
                None => bytes.clone(),
            };
            let (headers, fence, pq) = (copy_headers(&parts, &b), guard.fence.clone(), pq.clone());
            async move {
                (i, fenced(b.exchange(client, Method::POST, &pq, headers, body, cfg.deploy.timeout), &fence).await)
            }
        }))
        .await;
    {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for (i, r) in copies {
            took += usize::from(apply_copy(shared, &mut t, i, r, v2, old_gen, new_gen));
        }
    }
    drop(guard);
    save(shared);
    shared.sync_changed.notify_one();
    shared.metrics.deploys.with_label_values(&["ok"]).inc();
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    info!(
        rev = short(target_rev.as_deref()),
        took,
        total,
        active_ms = format!("{active_ms:.1}"),
        total_ms = format!("{total_ms:.1}"),
        "deploy fanned out"
    );
    Ok(reply(status, resp_headers, resp_body, took, total))
}

fn short(rev: Option<&str>) -> String {
    rev.map_or_else(|| "unknown".into(), |r| r.chars().take(8).collect())
}

/// Replayable writes (`PUT|DELETE flow/:id`, library, user settings, palette): the editor's
/// instance first, then the same request to every other healthy instance.
pub async fn replay(
    shared: &Shared,
    client: &AdminClient,
    parts: Parts,
    body: Incoming,
    active: Arc<Active>,
    palette: bool,
    flows_changed: bool,
) -> Result<Response<Body>, ProxyError> {
    let cfg = &shared.config;
    let bytes = read_body(body, cfg.deploy.max_body).await?;
    let timeout = if palette { cfg.deploy.palette_timeout } else { cfg.deploy.timeout };
    let (guard, active) = lock_for_write(shared, &active).await?;
    let ai = active.index;
    let (pq, editor_headers) = to_instance(&parts);
    let (status, rh, rb) = fenced(
        active.backend.exchange(client, parts.method.clone(), &pq, editor_headers, bytes.clone(), timeout),
        &guard.fence,
    )
    .await
    .map_err(|_| ProxyError::UpstreamFailed)?;
    let total = shared.instances.len();
    if !status.is_success() {
        return Ok(reply(status, rh, rb, 0, total));
    }
    record(shared, ai, "ok");
    if flows_changed {
        adopt_active_flows(shared, client, ai).await;
    }
    let (up, down) = others(shared, ai);
    let calls = up.iter().map(|&i| {
        let b = shared.backend(i).clone();
        let (headers, body, fence, pq, m) =
            (copy_headers(&parts, &b), bytes.clone(), guard.fence.clone(), pq.clone(), parts.method.clone());
        async move { (i, fenced(b.exchange(client, m, &pq, headers, body, timeout), &fence).await) }
    });
    let results = futures_util::future::join_all(calls).await;
    let mut took = 1;
    {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for i in down {
            record(shared, i, "skipped");
            if flows_changed || palette {
                t.mark_out_of_step(i, format!("missed {} {pq} while down", parts.method));
            }
        }
        for (i, r) in results {
            match r {
                Ok((s, _, _)) if s.is_success() => {
                    took += 1;
                    record(shared, i, "ok");
                    if flows_changed {
                        t.steps[i] = Step::Unknown; // its rev is checked by the supervisor
                    }
                }
                other => {
                    record(shared, i, "error");
                    let why = match other {
                        Ok((s, _, body)) => format!("{s} {}", crate::backend::snippet(&body)),
                        Err(e) => e.to_string(),
                    };
                    warn!(backend = %shared.backend(i).id, method = %parts.method, path = %pq, error = %why, "replay failed");
                    t.mark_out_of_step(i, format!("{} {pq} failed: {why}", parts.method));
                }
            }
        }
    }
    drop(guard);
    save(shared);
    shared.sync_changed.notify_one();
    Ok(reply(status, rh, rb, took, total))
}

/// `POST <admin>/flow` creates random ids on each instance, so it is not replayed: the
/// active's resulting flows become the target and the others are resynced to them.
pub async fn add_flow(
    shared: &Shared,
    client: &AdminClient,
    parts: Parts,
    body: Incoming,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    let cfg = &shared.config;
    let bytes = read_body(body, cfg.deploy.max_body).await?;
    let (guard, active) = lock_for_write(shared, &active).await?;
    let (pq, h) = to_instance(&parts);
    let (status, rh, rb) =
        fenced(active.backend.exchange(client, Method::POST, &pq, h, bytes, cfg.deploy.timeout), &guard.fence)
            .await
            .map_err(|_| ProxyError::UpstreamFailed)?;
    let total = shared.instances.len();
    if status.is_success() {
        adopt_active_flows(shared, client, active.index).await;
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for i in (0..total).filter(|&i| i != active.index) {
            t.mark_out_of_step(i, "a flow was added on the active (POST flow is not replayable)");
        }
    }
    drop(guard);
    save(shared);
    shared.sync_changed.notify_one();
    Ok(reply(status, rh, rb, usize::from(status.is_success()), total))
}

/// `POST <admin>/auth/token`: forwarded to the editor's instance; a token it issues is
/// remembered (with the user's permissions) so every instance accepts it (`auth.rs`).
pub async fn login(
    shared: &Shared,
    client: &AdminClient,
    parts: Parts,
    body: Incoming,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    let bytes = read_body(body, 64 << 10).await?;
    let (pq, h) = to_instance(&parts);
    let b = &active.backend;
    let timeout = shared.config.deploy.timeout;
    let (status, rh, rb) =
        b.exchange(client, Method::POST, &pq, h, bytes, timeout).await.map_err(|_| ProxyError::UpstreamFailed)?;
    if status == StatusCode::OK
        && let Some((token, expires_in)) = crate::editor::logins::parse_login(&rb)
    {
        let mut sh = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            sh.insert(AUTHORIZATION, v);
        }
        let settings = format!("{}settings", b.admin_root);
        match b.exchange(client, Method::GET, &settings, sh, Bytes::new(), timeout).await {
            Ok((StatusCode::OK, _, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let user = &v["user"];
                if let Some(name) = user["username"].as_str() {
                    shared.tokens.insert(&token, name.to_string(), user["permissions"].clone(), expires_in);
                    info!(user = name, backend = %b.id, "editor login remembered for every instance");
                }
            }
            other => warn!(backend = %b.id, result = ?other.map(|r| r.0), "cannot read the new token's user"),
        }
    }
    Ok(reply(status, rh, rb, usize::from(status == StatusCode::OK), shared.instances.len()))
}

/// `POST <admin>/auth/revoke`: forwarded; the token is forgotten.
pub async fn logout(
    shared: &Shared,
    client: &AdminClient,
    parts: Parts,
    body: Incoming,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    let bytes = read_body(body, 64 << 10).await?;
    if let Some(t) = crate::editor::logins::revoked_token(&bytes) {
        shared.tokens.remove(&t);
    }
    if let Some(t) =
        parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        shared.tokens.remove(t);
    }
    let (pq, h) = to_instance(&parts);
    let (status, rh, rb) = active
        .backend
        .exchange(client, Method::POST, &pq, h, bytes, shared.config.deploy.timeout)
        .await
        .map_err(|_| ProxyError::UpstreamFailed)?;
    Ok(reply(status, rh, rb, 1, shared.instances.len()))
}

/// Checks instance `i` against the target and brings it in step. `active` is the source of
/// flows when there is one (and the instance itself when `i` is the active: then its flows
/// become the target if they differ).
pub async fn resync(shared: &Shared, client: &AdminClient, i: usize, active: Option<usize>) -> SyncOutcome {
    let Some(guard) = shared.changes.lock(shared.config.deploy.timeout).await else {
        return SyncOutcome::Failed("the change lock stayed busy".into());
    };
    let outcome = resync_locked(shared, client, i, active, &guard.fence).await;
    drop(guard);
    save(shared);
    outcome
}

/// [`resync`] for a caller that already holds the change lock (a promotion).
pub async fn resync_locked(
    shared: &Shared,
    client: &AdminClient,
    i: usize,
    active: Option<usize>,
    fence: &CancellationToken,
) -> SyncOutcome {
    let cfg = &shared.config;
    let b = &shared.backend(i);
    let (rev, raw) = match b.flows(client, cfg.deploy.timeout).await {
        Ok(x) => x,
        Err(e) => return SyncOutcome::Failed(format!("cannot read its flows: {e}")),
    };
    {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        let cgen = t.cred_gen;
        if active == Some(i) || t.rev.is_none() && active.is_none() {
            // The active is the truth for what runs; adopt its flows if they differ.
            if t.rev.as_deref() != Some(rev.as_str()) {
                if t.rev.is_some() {
                    warn!(backend = %b.id, rev = short(Some(&rev)), "the active's flows differ from the remembered target; adopting them");
                }
                let flows: Option<serde_json::Value> = serde_json::from_slice(&raw).ok();
                t.deployed(rev.clone(), flows.as_ref());
            }
            let cgen = t.cred_gen.max(t.applied[i].cred_gen);
            t.mark_applied(i, Some(rev), cgen);
            return SyncOutcome::InStep;
        }
        if t.rev.as_deref() == Some(rev.as_str()) && t.applied[i].cred_gen >= cgen {
            t.mark_applied(i, Some(rev), cgen);
            return SyncOutcome::InStep;
        }
    }
    // The source flows: the active's (fresh), else the remembered ones.
    let source = match active {
        Some(a) => match shared.backend(a).flows(client, cfg.deploy.timeout).await {
            Ok((arev, araw)) => {
                let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
                if t.rev.as_deref() != Some(arev.as_str()) {
                    let flows: Option<serde_json::Value> = serde_json::from_slice(&araw).ok();
                    t.deployed(arev, flows.as_ref());
                }
                Some(String::from_utf8_lossy(&araw).into_owned())
            }
            Err(e) => return SyncOutcome::Failed(format!("cannot read the active's flows: {e}")),
        },
        None => shared.sync.lock().unwrap_or_else(|e| e.into_inner()).flows.as_ref().map(|f| f.to_string()),
    };
    let Some(flows) = source else { return SyncOutcome::Failed("no flows are known to resync from".into()) };
    let (target, cgen, creds) = {
        let t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        let creds = (!t.credentials.is_empty()).then(|| serde_json::Value::Object(t.credentials.clone()).to_string());
        (t.rev.clone(), t.cred_gen, creds)
    };
    let body = v2_body(&flows, None, creds.as_deref());
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(API_VERSION.clone(), HeaderValue::from_static("v2"));
    h.insert(DEPLOYMENT_TYPE.clone(), HeaderValue::from_static("full"));
    if let Some(tok) = b.token() {
        h.insert(AUTHORIZATION, tok.clone());
    }
    let pq = format!("{}flows", b.admin_root);
    let r = fenced(b.exchange(client, Method::POST, &pq, h, body, cfg.deploy.timeout), fence).await;
    {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok((StatusCode::OK, _, body)) => {
                let got = rev_of(&body);
                t.mark_applied(i, got.clone(), cgen);
                if t.in_step(i) {
                    SyncOutcome::Resynced
                } else {
                    SyncOutcome::Failed(format!(
                        "rev after resync {} differs from target {}",
                        short(got.as_deref()),
                        short(target.as_deref())
                    ))
                }
            }
            Ok((s, _, body)) => SyncOutcome::Failed(format!("{s} {}", crate::backend::snippet(&body))),
            Err(e) => SyncOutcome::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn deploys_are_checked_before_fan_out() {
        let v2 = headers(&[("node-red-api-version", "v2")]);
        assert!(check_deploy(&v2, br#"{"flows":[],"rev":"x"}"#).is_ok());
        assert_eq!(
            check_deploy(&v2, b"[]").err(),
            Some(ProxyError::BadDeploy("API v2 deploys take an object with a `flows` array"))
        );
        assert_eq!(
            check_deploy(&HeaderMap::new(), br#"{"flows":[]}"#).err(),
            Some(ProxyError::BadDeploy("API v1 deploys take a JSON array of nodes"))
        );
        assert!(check_deploy(&HeaderMap::new(), b"[]").is_ok());
        assert!(check_deploy(&headers(&[("node-red-api-version", "v3")]), b"[]").is_err());
        assert!(check_deploy(&headers(&[("node-red-deployment-type", "bogus")]), b"[]").is_err());
        assert!(check_deploy(&headers(&[("node-red-deployment-type", "reload")]), b"").is_ok());
        assert!(check_deploy(&v2, b"{not json").is_err());
    }

    #[test]
    fn the_v2_body_keeps_flow_bytes_exactly() {
        let flows = r#"[ {"id":"a", "x":1.0,"z":"t"} ]"#;
        let b = v2_body(flows, Some("abc"), Some(r#"{"$":"blob"}"#));
        assert_eq!(&b[..], format!(r#"{{"flows":{flows},"rev":"abc","credentials":{{"$":"blob"}}}}"#).as_bytes());
        assert_eq!(&v2_body("[]", None, None)[..], br#"{"flows":[]}"#);
    }
}

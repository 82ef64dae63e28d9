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
//! 5. Out-of-step instances are brought back in step by the cluster driver (`resync.rs`): the
//!    active's flows (or, with no active, the remembered ones) plus every credential flowgate
//!    remembers, deployed in full. An out-of-step instance is not promoted while an in-step
//!    one exists.
//!
//! A promotion *fences* an in-flight fan-out (cancels its outstanding calls, which mark their
//! instances out of step) and then takes the change lock, so a failover never waits on a slow
//! or hung instance's deploy.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use super::fanout::{Answer, Write, read_body, reply, rev_of, short, v2_body};
use crate::backend::AdminClient;
use crate::editor::sync::{CopyOutcome, Step};
use crate::state::{Active, Shared};
use crate::traffic::body::Body;
use crate::traffic::error::ProxyError;

static API_VERSION: HeaderName = HeaderName::from_static("node-red-api-version");
static DEPLOYMENT_TYPE: HeaderName = HeaderName::from_static("node-red-deployment-type");

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
pub(crate) struct Checked {
    api: Api,
    reload: bool,
    /// The flows array, parsed (for the remembered target and credentials).
    flows: Option<serde_json::Value>,
}

pub(crate) fn check_deploy(headers: &HeaderMap, body: &[u8]) -> Result<Checked, ProxyError> {
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

/// Whether a copy may have been applied: it succeeded, or no answer says it was not (the call
/// broke or was abandoned, and the instance may still apply it).
fn may_have_applied(answer: &Answer) -> bool {
    match answer {
        Ok((s, ..)) => s.is_success(),
        Err(_) => true,
    }
}

/// Classifies one instance's answer to a copy of a deploy, counts and logs it.
fn copy_outcome(w: &Write<'_>, i: usize, answer: Answer, v2: bool) -> CopyOutcome {
    let id = &w.shared.backend(i).id;
    match answer {
        Ok((s, _, body)) if s.is_success() => {
            w.record(i, "ok");
            CopyOutcome::Took { rev: if v2 { rev_of(&body) } else { None } }
        }
        Ok((StatusCode::CONFLICT, _, _)) => {
            w.record(i, "conflict");
            warn!(backend = %id, "standby had drifted (409 for the revision it should have); it will be resynced");
            CopyOutcome::Conflict
        }
        Ok((s, _, body)) => {
            w.record(i, "error");
            warn!(backend = %id, status = s.as_u16(), body = %crate::backend::snippet(&body), "standby refused the deploy");
            CopyOutcome::Refused(s.to_string())
        }
        Err(e) => {
            w.record(i, "error");
            warn!(backend = %id, error = %e, "deploy to standby failed");
            CopyOutcome::Failed(e.to_string())
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
    let _admitted = admit(shared, client, &parts, &active).await?;
    let bytes = read_body(body, cfg.deploy.max_body, cfg.limits.header_read_timeout).await?;
    let checked = check_deploy(&parts.headers, &bytes)?;
    let w = Write::locked(shared, client, parts, bytes, &active, cfg.deploy.timeout).await?;
    let ai = w.active.index;
    let total = w.total();
    let v2 = checked.api == Api::V2 && !checked.reload;
    let (up, down) = w.others();
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
    let to_standbys = w.to_each(&speculative, |_| w.headers.clone(), |_| w.bytes.clone());
    let (first, spec_results) = tokio::join!(w.to_active(), to_standbys);
    let active_ms = started.elapsed().as_secs_f64() * 1e3;

    let (status, resp_headers, resp_body) = match first {
        Ok(r) => r,
        Err(e) => {
            warn!(backend = %w.active.backend.id, error = %e, "deploy to the active failed; the editor is told it was not applied");
            w.record(ai, "error");
            let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            t.steps[ai] = Step::Unknown;
            for (i, r) in &spec_results {
                if may_have_applied(r) {
                    t.mark_out_of_step(*i, "may have taken a deploy whose outcome on the active is unknown");
                }
            }
            drop(t);
            shared.metrics.deploys.with_label_values(&["error"]).inc();
            w.finish();
            return Err(ProxyError::UpstreamFailed);
        }
    };
    if !status.is_success() {
        w.record(ai, if status == StatusCode::CONFLICT { "conflict" } else { "rejected" });
        shared.metrics.deploys.with_label_values(&["rejected"]).inc();
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for (i, r) in &spec_results {
            if may_have_applied(r) {
                w.record(*i, "diverged");
                warn!(backend = %shared.backend(*i).id, "standby may have taken a deploy its active refused; it will be resynced");
                t.mark_out_of_step(*i, "may have taken a deploy the active refused");
            }
        }
        drop(t);
        w.finish();
        return Ok(reply(status, resp_headers, resp_body, 0, total));
    }
    w.record(ai, "ok");

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
        None => w.adopt_active_flows().await,
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
            took += usize::from(t.copy_result(i, copy_outcome(&w, i, r, v2), old_gen, new_gen));
        }
        for &i in &down {
            w.record(i, "skipped");
            t.mark_out_of_step(i, format!("missed the deploy of rev {} while down", short(target_rev.as_deref())));
        }
    }

    // Copies with flowgate's token for the others, now that the active took the deploy.
    let raw: Option<V2Body<'_>> = if v2 { serde_json::from_slice(&w.bytes).ok() } else { None };
    let body_for = |i: usize| match &raw {
        Some(v2) => v2_body(v2.flows.get(), expected[i].as_deref(), v2.credentials.map(RawValue::get)),
        None => w.bytes.clone(),
    };
    let copies = w.to_each(&later, |i| w.copy_headers(i), body_for).await;
    {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for (i, r) in copies {
            took += usize::from(t.copy_result(i, copy_outcome(&w, i, r, v2), old_gen, new_gen));
        }
    }
    w.finish();
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

/// Before a write's body (up to `deploy.max_body`) is read: the client's credentials must be
/// good on the active (its `Authorization` on `GET <admin>/flows/state`, which needs a login
/// when adminAuth is on; else 401, and nothing is read), and at most
/// [`crate::state::MAX_BUFFERED_WRITES`] bodies are buffered at once (else, after
/// `failover.hold`, 503). An instance that does not answer the check leaves the decision to
/// the write itself. An instance found to need no login at all (no adminAuth: anyone may
/// write) is not asked again for a minute.
pub(crate) async fn admit(
    shared: &Shared,
    client: &AdminClient,
    parts: &Parts,
    active: &Active,
) -> Result<tokio::sync::OwnedSemaphorePermit, ProxyError> {
    use std::sync::atomic::Ordering::Relaxed;
    let open = &shared.instances[active.index].admin_open_until;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    // flowgate holds no token for it, yet its probes (`GET flows/state`) succeed: it has no
    // adminAuth, and there is nothing to check.
    let open_to_probes = active.backend.token().is_none() && shared.seen_up(active.index);
    if open.load(Relaxed) < now && !open_to_probes {
        let auth = parts.headers.get(AUTHORIZATION);
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, a.clone());
        }
        let b = &active.backend;
        let path = format!("{}flows/state", b.admin_root);
        // Generous: a check that cannot be made refuses the write (fail closed).
        let limit = (shared.config.health.timeout * 2).max(std::time::Duration::from_secs(2));
        let check = b.exchange(client, Method::GET, &path, h, Bytes::new(), limit);
        match check.await {
            Ok((StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _, _)) => return Err(ProxyError::Unauthorized),
            Ok((StatusCode::OK, _, _)) if auth.is_none() => open.store(now + 60_000, Relaxed),
            Ok(_) => {}
            // Fail closed: a check that could not be made admits nothing (under a flood of
            // such requests it would otherwise let every body in).
            Err(_) => return Err(ProxyError::CredentialsUnchecked),
        }
    }
    let wait = shared.config.failover.hold;
    match tokio::time::timeout(wait, shared.write_bodies.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ProxyError::ChangeInProgress),
    }
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
    let _admitted = admit(shared, client, &parts, &active).await?;
    let bytes = read_body(body, cfg.deploy.max_body, cfg.limits.header_read_timeout).await?;
    let timeout = if palette { cfg.deploy.palette_timeout } else { cfg.deploy.timeout };
    let w = Write::locked(shared, client, parts, bytes, &active, timeout).await?;
    let (status, rh, rb) = w.to_active().await.map_err(|_| ProxyError::UpstreamFailed)?;
    let total = w.total();
    if !status.is_success() {
        return Ok(reply(status, rh, rb, 0, total));
    }
    w.record(w.active.index, "ok");
    if flows_changed {
        w.adopt_active_flows().await;
    }
    let (up, down) = w.others();
    let results = w.to_each(&up, |i| w.copy_headers(i), |_| w.bytes.clone()).await;
    let (method, pq) = (&w.parts.method, &w.pq);
    let mut took = 1;
    {
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for i in down {
            w.record(i, "skipped");
            if flows_changed || palette {
                t.mark_out_of_step(i, format!("missed {method} {pq} while down"));
            }
        }
        for (i, r) in results {
            match r {
                Ok((s, _, _)) if s.is_success() => {
                    took += 1;
                    w.record(i, "ok");
                    if flows_changed {
                        t.steps[i] = Step::Unknown; // its rev is checked by a resync
                    }
                }
                other => {
                    w.record(i, "error");
                    let why = match other {
                        Ok((s, _, body)) => format!("{s} {}", crate::backend::snippet(&body)),
                        Err(e) => e.to_string(),
                    };
                    warn!(backend = %shared.backend(i).id, %method, path = %pq, error = %why, "replay failed");
                    t.mark_out_of_step(i, format!("{method} {pq} failed: {why}"));
                }
            }
        }
    }
    w.finish();
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
    let _admitted = admit(shared, client, &parts, &active).await?;
    let bytes = read_body(body, cfg.deploy.max_body, cfg.limits.header_read_timeout).await?;
    let w = Write::locked(shared, client, parts, bytes, &active, cfg.deploy.timeout).await?;
    let (status, rh, rb) = w.to_active().await.map_err(|_| ProxyError::UpstreamFailed)?;
    let total = w.total();
    if status.is_success() {
        w.adopt_active_flows().await;
        let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        for i in (0..total).filter(|&i| i != w.active.index) {
            t.mark_out_of_step(i, "a flow was added on the active (POST flow is not replayable)");
        }
    }
    w.finish();
    Ok(reply(status, rh, rb, usize::from(status.is_success()), total))
}

/// `POST <admin>/auth/token`: forwarded to the editor's instance; a token it issues is
/// remembered (with the user's permissions) so every instance accepts it (`logins.rs`).
pub async fn login(
    shared: &Shared,
    client: &AdminClient,
    parts: Parts,
    body: Incoming,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    let bytes = read_body(body, 64 << 10, shared.config.limits.header_read_timeout).await?;
    let scope = crate::editor::logins::requested_scope(&bytes);
    let w = Write::unlocked(shared, client, parts, bytes, active);
    let (status, rh, rb) = w.to_active().await.map_err(|_| ProxyError::UpstreamFailed)?;
    if status == StatusCode::OK
        && let Some((token, expires_in)) = crate::editor::logins::parse_login(&rb)
    {
        let mut sh = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            sh.insert(AUTHORIZATION, v);
        }
        let b = &w.active.backend;
        let settings = format!("{}settings", b.admin_root);
        match b.exchange(client, Method::GET, &settings, sh, Bytes::new(), w.timeout).await {
            Ok((StatusCode::OK, _, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let user = &v["user"];
                if let Some(name) = user["username"].as_str() {
                    // The token carries the scope it was asked for, as on the issuing instance.
                    let permissions = scope.unwrap_or_else(|| user["permissions"].clone());
                    shared.tokens.insert(&token, name.to_string(), permissions, expires_in, b.id.as_str());
                    info!(user = name, backend = %b.id, "editor login remembered for every instance");
                }
            }
            other => warn!(backend = %b.id, result = ?other.map(|r| r.0), "cannot read the new token's user"),
        }
    }
    Ok(reply(status, rh, rb, usize::from(status == StatusCode::OK), w.total()))
}

/// `POST <admin>/auth/revoke`: forwarded, then sent to every other instance with flowgate's own
/// token (whichever instance issued the token must forget it, or it would accept it again
/// after a failover); flowgate forgets it too.
pub async fn logout(
    shared: &Shared,
    client: &AdminClient,
    parts: Parts,
    body: Incoming,
    active: Arc<Active>,
) -> Result<Response<Body>, ProxyError> {
    let bytes = read_body(body, 64 << 10, shared.config.limits.header_read_timeout).await?;
    // Forgotten only after the instances: an active that did not issue the token checks the
    // caller's login through token-info.
    let mut forget: Vec<String> = crate::editor::logins::revoked_token(&bytes).into_iter().collect();
    if let Some(t) =
        parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        forget.push(t.to_string());
    }
    let w = Write::unlocked(shared, client, parts, bytes, active);
    let (status, rh, rb) = w.to_active().await.map_err(|_| ProxyError::UpstreamFailed)?;
    let (up, _) = w.others();
    let mut took = usize::from(status.is_success());
    for (i, r) in w.to_each(&up, |i| w.copy_headers(i), |_| w.bytes.clone()).await {
        match r {
            Ok((s, _, _)) if s.is_success() => took += 1,
            other => warn!(backend = %shared.backend(i).id, result = ?other.map(|r| r.0), "revoke not taken"),
        }
    }
    for t in &forget {
        shared.tokens.remove(t);
    }
    Ok(reply(status, rh, rb, took, w.total()))
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
}

//! Resync: bring one instance in step with the target (flows, `rev`, credentials). The
//! cluster driver asks for it (an effect of the cluster core) when an instance came back,
//! missed a write, drifted, or must be promoted although out of step.
//!
//! The source of the flows is the active's (read fresh), else the remembered target; every
//! credential flowgate remembers goes with them; the instance gets them as a full v2 deploy
//! with flowgate's token. The active itself is the truth for what runs: if its flows differ
//! from the remembered target, they become the target.

use http::header::{self, AUTHORIZATION, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::fanout::{fenced, rev_of, save, short, v2_body};
use crate::backend::AdminClient;
use crate::control::cluster::SyncOutcome;
use crate::state::Shared;

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
        // An instance marked out of step gets the full deploy even if its revision looks right
        // now: a copy whose outcome was unknown may still be being applied (Node-RED answers
        // GET flows without waiting for a deploy in progress), and would land after this check.
        let suspect = matches!(t.steps[i], crate::editor::sync::Step::OutOfStep(_));
        if !suspect && t.rev.as_deref() == Some(rev.as_str()) && t.applied[i].cred_gen >= cgen {
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
    h.insert("node-red-api-version", HeaderValue::from_static("v2"));
    h.insert("node-red-deployment-type", HeaderValue::from_static("full"));
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

//! State shared between the supervisor (the only writer of HA state) and the request path.
//!
//! The request path does one `ArcSwap` load per request to find the active instance. Waiters
//! (requests held during a failover) subscribe to a `watch` generation counter only when
//! there is no active instance.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::cluster::driver::Command;
use crate::config::Config;
use crate::metrics::Metrics;

/// The elected instance, with the signals that tell traffic bound to it when to give up.
#[derive(Debug)]
pub struct Active {
    pub index: usize,
    pub backend: Arc<Backend>,
    /// Cancelled when this instance is declared failed: in-flight requests stop waiting.
    pub failed: CancellationToken,
    /// Cancelled when it stops being active for any reason: websocket tunnels close.
    pub demoted: CancellationToken,
}

/// What the request path reads.
#[derive(Debug, Default)]
pub struct View {
    pub generation: u64,
    pub active: Option<Arc<Active>>,
}

/// The operator-facing status, rebuilt by the supervisor on every change.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub active: Option<String>,
    pub target_revision: Option<String>,
    pub phase: &'static str,
    pub backends: Vec<BackendStatus>,
    pub failovers: Vec<FailoverRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub id: String,
    pub url: String,
    pub priority: i64,
    pub health: &'static str,
    pub role: &'static str,
    pub flow_state: Option<&'static str>,
    pub runtime_state_enabled: Option<bool>,
    pub canary: Option<&'static str>,
    pub last_probe_unix_ms: Option<u64>,
    pub last_probe_latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Revision this instance is known to have.
    pub revision: Option<String>,
    /// "in_step", "unknown", or why it is out of step.
    pub step: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverRecord {
    pub at_unix_ms: u64,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: &'static str,
    pub duration_ms: f64,
    pub outcome: &'static str,
    pub detail: Option<String>,
}

pub struct Shared {
    pub config: Arc<Config>,
    /// Target revision and per-instance step (deploy path and supervisor).
    pub sync: std::sync::Mutex<crate::sync::SyncTable>,
    /// Wakes the supervisor after a deploy changed the sync table.
    pub sync_changed: Notify,
    /// Deploys, resyncs and promotions hold this; see `deploy.rs`. Outlives config reloads.
    pub change_lock: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled to make the current holder of `change_lock` give it up.
    pub fence: Arc<std::sync::Mutex<CancellationToken>>,
    /// Editor logins accepted by every instance.
    pub tokens: Arc<crate::auth::TokenStore>,
    pub cookies: Arc<crate::editor::CookieCodec>,
    pub backends: Vec<Arc<Backend>>,
    /// Per backend: its editor cookie.
    pub pins: Vec<crate::editor::Pin>,
    /// Per backend: wakes its prober at once (passive detection on live traffic).
    pub kicks: Vec<Arc<Notify>>,
    /// Per backend: it refused an editor's token on a deploy copy (no token-info hook).
    pub editor_token_refused: Vec<std::sync::atomic::AtomicBool>,
    pub view: ArcSwap<View>,
    pub generation: watch::Sender<u64>,
    pub status: ArcSwap<Status>,
    pub metrics: Arc<Metrics>,
    pub commands: mpsc::Sender<Command>,
}

impl Shared {
    /// Marks `backend` suspect after an error on live traffic: probe it now.
    pub fn suspect(&self, index: usize) {
        if let Some(k) = self.kicks.get(index) {
            k.notify_one();
        }
    }
}

//! State shared between the cluster driver (the only writer of HA state), the request path,
//! the editor plane and the admin API.
//!
//! The request path does one `ArcSwap` load per request to find the active instance. Waiters
//! (requests held during a failover) subscribe to a `watch` generation counter only when
//! there is no active instance.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Connector};
use crate::config::Config;
use crate::editor::changes::Changes;
use crate::editor::cookie::{CookieCodec, Pin};
use crate::editor::logins::TokenStore;
use crate::editor::sync::SyncTable;
use crate::ops::metrics::Metrics;
use crate::traffic::body::Body;
use crate::traffic::proxy::upstream::Pool;

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

impl Active {
    /// Newly routed to, with fresh signals.
    pub fn new(index: usize, backend: Arc<Backend>) -> Arc<Self> {
        Arc::new(Active { index, backend, failed: CancellationToken::new(), demoted: CancellationToken::new() })
    }
}

/// What the request path reads.
#[derive(Debug, Default)]
pub struct View {
    pub generation: u64,
    /// Hot spare: the active. Load-balanced: the first instance in rotation (the default
    /// target of editor writes).
    pub active: Option<Arc<Active>>,
    /// Load-balanced mode: every instance traffic is spread over (empty in hot-spare mode).
    pub rotation: Vec<Arc<Active>>,
}

/// The operator-facing status, rebuilt by the cluster driver on every change.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    /// "hot-spare" or "load-balanced".
    pub mode: &'static str,
    pub active: Option<String>,
    /// Load-balanced mode: the instances traffic is spread over.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rotation: Vec<String>,
    pub target_revision: Option<String>,
    pub phase: &'static str,
    /// Replicas: this replica, the controller, the record, the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    pub backends: Vec<BackendStatus>,
    /// What the deployed flows risk in each HA mode (null until flows are known).
    pub readiness: Option<std::sync::Arc<Readiness>>,
    /// The rolling restart in progress, else how the last one ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling_restart: Option<crate::control::cluster::RollingView>,
    pub failovers: Vec<FailoverRecord>,
}

/// The readiness findings of the target flows, per mode.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// The revision they were found in.
    pub rev: Option<String>,
    /// The mode flowgate runs in.
    pub mode: &'static str,
    pub hot_spare: Vec<crate::readiness::Finding>,
    pub load_balanced: Vec<crate::readiness::Finding>,
}

/// How an instance is restarted and how its restarts went.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryStatus {
    /// It has a restart command.
    pub restartable: bool,
    /// "restarting", "waiting" (for it to be back), "gave_up" (crash loop), or null.
    pub state: Option<&'static str>,
    /// Restarts since flowgate started.
    pub restarts: u64,
    /// Automatic restarts within `recovery.window`.
    pub recent: usize,
    pub last: Option<LastRestart>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRestart {
    pub reason: &'static str,
    pub result: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub replica: String,
    /// "controller" or "follower".
    pub role: &'static str,
    /// The active record every replica routes by.
    pub record: Option<crate::control::cluster::Record>,
    pub store: crate::control::coord::StoreView,
    /// Where editor writes that change flows are carried out: "here", "forwarded to URL",
    /// or "refused: no controller".
    pub editor_writes: String,
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
    /// Down 3 times within 60 s: passed over while another instance is eligible.
    pub flapping: bool,
    pub recovery: RecoveryStatus,
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

/// One configured instance and what is built for it, in configuration order.
pub struct Instance {
    pub backend: Arc<Backend>,
    /// Its editor cookie.
    pub pin: Pin,
    /// Connections for proxied requests.
    pub pool: Arc<Pool<Body>>,
    /// Wakes its prober at once (passive detection on live traffic).
    pub kick: Arc<Notify>,
    /// It refused an editor's token on a deploy copy (no token-info hook): copies to it wait
    /// for the active and carry flowgate's token.
    pub refuses_editor_tokens: AtomicBool,
    /// Until when (ms since the Unix epoch) this instance is known to need no login for its
    /// admin API: writes then skip the credentials check (`editor/writes.rs`).
    pub admin_open_until: std::sync::atomic::AtomicU64,
}

/// What outlives a configuration: metrics, remembered logins, the change lock.
#[derive(Clone, Default)]
pub struct Services {
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<TokenStore>,
    pub changes: Arc<Changes>,
    /// The controller epoch this replica holds, 0 when none (replicas).
    pub epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// One configuration's state, shared by the request path, the editor plane, the admin API and
/// the cluster driver; replaced as a whole on reload.
pub struct Shared {
    pub config: Arc<Config>,
    pub instances: Vec<Instance>,
    /// Target revision and per-instance step (written by editor writes and resyncs).
    pub sync: Mutex<SyncTable>,
    /// Wakes the cluster driver after the sync table changed.
    pub sync_changed: Notify,
    pub changes: Arc<Changes>,
    /// Editor logins accepted by every instance.
    pub tokens: Arc<TokenStore>,
    pub cookies: Arc<CookieCodec>,
    /// The routing view: written by the cluster driver only.
    pub view: ArcSwap<View>,
    /// Bumped with every new view; requests held during a failover wait on it.
    pub generation: watch::Sender<u64>,
    pub status: ArcSwap<Status>,
    pub metrics: Arc<Metrics>,
    /// Editor write bodies (up to `deploy.max_body`) buffered at once.
    pub write_bodies: Arc<tokio::sync::Semaphore>,
    /// Taken by whoever saves the sync table, in turn (`editor/fanout.rs` `save`).
    pub saving: Mutex<()>,
    /// Where editor writes are carried out (replicas: only on the controller). Written by the
    /// cluster driver.
    pub writes_to: ArcSwap<WriteRoute>,
    /// Load-balanced mode: the round-robin position.
    pub next: std::sync::atomic::AtomicUsize,
}

/// Where an editor write that reaches this flowgate is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRoute {
    /// Here: flowgate runs alone, or this replica is the controller.
    Here,
    /// A follower: forwarded to the controller's proxy listener (`cluster.advertise`).
    Forward(String),
    /// A follower that knows no controller (etcd unreachable, an election running): refused.
    NoController,
}

/// Editor write bodies buffered at once: deploys are serialised anyway, so a few cover real
/// use, and a crowd of large bodies cannot exhaust memory.
pub const MAX_BUFFERED_WRITES: usize = 4;

impl Shared {
    /// The state of a new configuration, with nothing routed yet. `workers`: how many
    /// runtimes serve client connections (each gets its own idle upstream connections).
    pub fn new(
        config: Arc<Config>,
        sync: SyncTable,
        cookies: Arc<CookieCodec>,
        services: &Services,
        connector: &Connector,
        workers: usize,
    ) -> Self {
        let writes_to = if config.cluster.is_some() { WriteRoute::NoController } else { WriteRoute::Here };
        let instances = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, &config.node_red, config.health.canary.as_deref())))
            .map(|backend| Instance {
                pool: Arc::new(Pool::new(
                    backend.clone(),
                    connector.clone(),
                    workers,
                    config.limits.upstream_connections,
                    config.limits.upstream_queue_timeout,
                )),
                pin: Pin::new(&cookies, &config.editor.cookie, backend.id.as_str(), &config.node_red.admin_root),
                backend,
                kick: Arc::new(Notify::new()),
                refuses_editor_tokens: AtomicBool::new(false),
                admin_open_until: std::sync::atomic::AtomicU64::new(0),
            })
            .collect();
        Shared {
            config,
            instances,
            sync: Mutex::new(sync),
            sync_changed: Notify::new(),
            changes: services.changes.clone(),
            tokens: services.tokens.clone(),
            cookies,
            view: ArcSwap::from_pointee(View::default()),
            generation: watch::channel(0).0,
            status: ArcSwap::from_pointee(Status::default()),
            metrics: services.metrics.clone(),
            write_bodies: Arc::new(tokio::sync::Semaphore::new(MAX_BUFFERED_WRITES)),
            saving: Mutex::new(()),
            writes_to: ArcSwap::from_pointee(writes_to),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn backend(&self, index: usize) -> &Arc<Backend> {
        &self.instances[index].backend
    }

    pub fn backends(&self) -> impl ExactSizeIterator<Item = &Arc<Backend>> {
        self.instances.iter().map(|i| &i.backend)
    }

    /// Whether instance `index` was up at its last probe, as `/status` shows it.
    pub fn seen_up(&self, index: usize) -> bool {
        self.status.load().backends.get(index).is_some_and(|b| b.health == "up")
    }

    /// Marks `backend` suspect after an error on live traffic: probe it now.
    pub fn suspect(&self, index: usize) {
        if let Some(i) = self.instances.get(index) {
            i.kick.notify_one();
        }
    }
}

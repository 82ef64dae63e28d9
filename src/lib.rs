//! flowgate: a front door that makes Node-RED highly available.
//!
//! ```text
//!  clients ──► proxy listener ──► classify ──► active instance (one ArcSwap load)
//!                                   │            ▲
//!                                   └─ upgrade ──┘ (websocket tunnel, closed on demotion)
//!
//!  probers (one per instance) ──reports──► supervisor ──► View (ArcSwap) + Status + metrics
//!  admin listener ──commands──────────────►   │
//!                                             └──► POST /flows/state stop|start (break-before-make)
//! ```
//!
//! Glossary:
//! - *backend* / *instance*: one Node-RED process.
//! - *active*: the instance running flows and receiving all traffic. Exactly one, or none
//!   while a failover is in progress.
//! - *standby*: a healthy instance with its flows stopped.
//! - *stray*: a non-active instance found running flows; it is stopped at once.
//! - *view*: what the request path reads (the active and its fencing signals).
//!
//! The library never binds sockets: [`start`] takes pre-bound listeners, so tests run the
//! whole proxy in-process on port 0 and the binary is a thin wrapper.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod body;
pub mod config;
pub mod crypto;
pub mod deploy;
pub mod editor;
pub mod election;
pub mod error;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod standby;
pub mod state;
pub mod supervisor;
pub mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::config::Config;
use crate::health::probe::{CanaryWanted, Prober};
use crate::metrics::Metrics;
use crate::proxy::{Peer, Proxy};
use crate::state::{Shared, Status, View};
use crate::supervisor::Supervisor;

/// Pre-bound listeners.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let proxy = TcpListener::bind(config.listen.proxy)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen.proxy {}: {e}", config.listen.proxy)))?;
        let admin = TcpListener::bind(config.listen.admin)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen.admin {}: {e}", config.listen.admin)))?;
        Ok(Listeners { proxy, admin })
    }
}

/// A running flowgate.
pub struct Handle {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    proxy: Arc<Proxy>,
}

impl CanaryWanted for ArcSwap<View> {
    fn canary_wanted(&self, backend: &Backend) -> bool {
        self.load().active.as_ref().is_some_and(|a| std::ptr::eq(&*a.backend, backend))
    }
}

/// Starts probers, the supervisor and both listeners. Must run inside a tokio runtime.
pub fn start(config: Config, listeners: Listeners) -> std::io::Result<Handle> {
    let proxy_addr = listeners.proxy.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let config = Arc::new(config);
    let backends: Vec<Arc<Backend>> = config
        .backends
        .iter()
        .map(|b| Arc::new(Backend::new(b, &config.node_red, config.health.canary.as_deref())))
        .collect();
    let kicks: Vec<Arc<Notify>> = backends.iter().map(|_| Arc::new(Notify::new())).collect();
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let (reports_tx, reports_rx) = mpsc::channel(64);
    let ids = backends.iter().map(|b| b.id.to_string()).collect();
    let state_dir = config.state.dir.as_deref();
    let sync = sync::SyncTable::open(ids, state_dir, config.state.key.as_ref().map(|k| k.expose()))
        .map_err(|e| std::io::Error::other(format!("state.dir: {e}")))?;
    if state_dir.is_some() && !sync.credentials_persisted() {
        tracing::warn!("state.key is not set: credentials seen in deploys are kept in memory only");
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        sync: std::sync::Mutex::new(sync),
        sync_changed: Notify::new(),
        change_lock: tokio::sync::Mutex::new(()),
        fence: std::sync::Mutex::new(CancellationToken::new()),
        tokens: auth::TokenStore::open(state_dir),
        cookies: editor::CookieCodec::new(config.editor.cookie_key.as_ref().map(|k| k.expose())),
        backends: backends.clone(),
        kicks: kicks.clone(),
        editor_token_refused: backends.iter().map(|_| Default::default()).collect(),
        view: ArcSwap::from_pointee(View::default()),
        generation: watch::channel(0).0,
        status: ArcSwap::from_pointee(Status::default()),
        metrics: Arc::new(Metrics::new()),
        commands: commands_tx,
    });
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let admin_client = backend::admin_client();
    // The probers ask the shared view which instance is active.
    let wants_view: Arc<dyn CanaryWanted> = Arc::new(SharedView(shared.clone()));
    for (index, backend) in backends.iter().enumerate() {
        let prober = Prober {
            index,
            backend: backend.clone(),
            client: admin_client.clone(),
            health: config.health.clone(),
            kick: kicks[index].clone(),
            wants: wants_view.clone(),
            reports: reports_tx.clone(),
        };
        tasks.spawn(prober.run(cancel.child_token()));
    }
    let supervisor = Supervisor::new(shared.clone(), admin_client, reports_rx, commands_rx);
    tasks.spawn(supervisor.run(cancel.child_token()));

    let proxy = Arc::new(Proxy::new(shared.clone(), cancel.child_token()));
    let grace = Duration::from_secs(10);
    let p = proxy.clone();
    tasks.spawn(server::accept_loop(listeners.proxy, cancel.child_token(), grace, move |req, addr| {
        p.clone().serve(req, Peer { addr, tls: false })
    }));
    let s = shared.clone();
    tasks.spawn(server::accept_loop(listeners.admin, cancel.child_token(), grace, move |req, _| {
        admin::serve(s.clone(), req)
    }));
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, backends = backends.len(), "flowgate started");
    Ok(Handle { proxy_addr, admin_addr, shared, cancel, tasks, proxy })
}

struct SharedView(Arc<Shared>);

impl CanaryWanted for SharedView {
    fn canary_wanted(&self, backend: &Backend) -> bool {
        self.0.view.canary_wanted(backend)
    }
}

impl Handle {
    /// Stops accepting, lets in-flight requests finish within `grace`, closes websockets.
    /// Instances are left as they are: the active keeps running its flows.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        self.tasks.close();
        self.proxy.tunnels.close();
        let all = async {
            self.tasks.wait().await;
            self.proxy.tunnels.wait().await;
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(grace = ?grace, "shutdown did not complete in time; terminating");
        }
    }

    /// Resolves when shutdown was requested.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
}

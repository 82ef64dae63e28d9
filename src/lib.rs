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
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod deploy;
pub mod editor;
pub mod election;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod standby;
pub mod state;
pub mod sync;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::backend::Backend;
use crate::cluster::driver::{Command, Driver, Seed};
use crate::config::Config;
use crate::health::probe::{CanaryWanted, Prober};
use crate::metrics::Metrics;
use crate::proxy::{Peer, Proxy};
use crate::state::{Shared, Status, View};

/// Pre-bound listeners. `proxy` and `https` are client-facing; `redirect` only redirects to
/// `https`.
pub struct Listeners {
    pub proxy: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub redirect: Option<TcpListener>,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        async fn bind(name: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
            TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("{name} {addr}: {e}")))
        }
        let l = &config.listen;
        Ok(Listeners {
            proxy: match l.proxy {
                Some(a) => Some(bind("listen.proxy", a).await?),
                None => None,
            },
            https: match l.https {
                Some(a) => Some(bind("listen.https", a).await?),
                None => None,
            },
            redirect: match l.redirect {
                Some(a) => Some(bind("listen.redirect", a).await?),
                None => None,
            },
            admin: bind("listen.admin", l.admin).await?,
        })
    }

    /// A plain proxy listener and an admin listener (tests, embedding).
    pub fn plain(proxy: TcpListener, admin: TcpListener) -> Self {
        Listeners { proxy: Some(proxy), https: None, redirect: None, admin }
    }
}

/// Everything built from one configuration; replaced as a whole on reload.
struct Core {
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
    /// Stops this core's probers (its supervisor stops by handing over or on shutdown).
    cancel: CancellationToken,
}

/// What outlives a configuration: listeners' state, TLS, logins, the change lock, tunnels.
pub struct App {
    core: ArcSwap<Core>,
    pub tls: Option<Arc<tls::Tls>>,
    pub metrics: Arc<Metrics>,
    tokens: Arc<auth::TokenStore>,
    change_lock: Arc<tokio::sync::Mutex<()>>,
    fence: Arc<std::sync::Mutex<CancellationToken>>,
    cookies: std::sync::Mutex<(Option<String>, Arc<editor::CookieCodec>)>,
    /// The configuration file, for `POST /reload`, SIGHUP and the file watch.
    config_path: Option<PathBuf>,
    reloading: tokio::sync::Mutex<()>,
    tunnels: TaskTracker,
    /// How many runtimes serve client connections (1 when they run on the caller's).
    workers: usize,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The clients a core uses: probes and flow-state calls, editor writes and websockets, and
/// the TLS settings of the proxied requests' own connections.
type Clients = (backend::AdminClient, backend::AdminClient, backend::Connector);

fn clients(config: &Config) -> Result<Clients, String> {
    Ok((backend::admin_client(config)?, backend::client(config, None)?, backend::connector(config)?))
}

struct SharedView(Arc<Shared>);

impl CanaryWanted for SharedView {
    fn canary_wanted(&self, backend: &Backend) -> bool {
        self.0.view.load().active.as_ref().is_some_and(|a| std::ptr::eq(&*a.backend, backend))
    }
}

impl App {
    /// The shared state of the current configuration.
    pub fn shared(&self) -> Arc<Shared> {
        self.core.load().shared.clone()
    }

    /// Resolves when shutdown begins.
    pub fn shutting_down(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// The request path of the current configuration.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.core.load().proxy.clone()
    }

    fn cookies(&self, config: &Config) -> Arc<editor::CookieCodec> {
        let key = config.editor.cookie_key.as_ref().map(|k| k.expose().to_string());
        let mut c = self.cookies.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 != key {
            *c = (key.clone(), Arc::new(editor::CookieCodec::new(key.as_deref())));
        }
        c.1.clone()
    }

    /// Builds a core for `config` with its clients (made beforehand by [`clients`], the only
    /// fallible part) and starts its probers and supervisor.
    fn build(&self, config: Config, clients: Clients, sync: sync::SyncTable, seed: Option<Seed>) -> Core {
        let (admin_client, client, connector) = clients;
        let config = Arc::new(config);
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, &config.node_red, config.health.canary.as_deref())))
            .collect();
        let kicks: Vec<Arc<Notify>> = backends.iter().map(|_| Arc::new(Notify::new())).collect();
        for b in &backends {
            self.metrics.init_backend(b.id.as_str());
        }
        let cookies = self.cookies(&config);
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (reports_tx, reports_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            config: config.clone(),
            sync: std::sync::Mutex::new(sync),
            sync_changed: Notify::new(),
            change_lock: self.change_lock.clone(),
            fence: self.fence.clone(),
            tokens: self.tokens.clone(),
            cookies: cookies.clone(),
            pins: backends
                .iter()
                .map(|b| editor::Pin::new(&cookies, &config.editor.cookie, b.id.as_str(), &config.node_red.admin_root))
                .collect(),
            backends: backends.clone(),
            kicks: kicks.clone(),
            editor_token_refused: backends.iter().map(|_| Default::default()).collect(),
            view: ArcSwap::from_pointee(View::default()),
            generation: watch::channel(0).0,
            status: ArcSwap::from_pointee(Status::default()),
            metrics: self.metrics.clone(),
            commands: commands_tx,
        });
        let cancel = self.shutdown.child_token();
        let wants: Arc<dyn CanaryWanted> = Arc::new(SharedView(shared.clone()));
        for (index, backend) in backends.iter().enumerate() {
            let prober = Prober {
                index,
                backend: backend.clone(),
                client: admin_client.clone(),
                health: config.health.clone(),
                kick: kicks[index].clone(),
                wants: wants.clone(),
                reports: reports_tx.clone(),
            };
            self.tasks.spawn(prober.run(cancel.clone()));
        }
        let driver = Driver::new(shared.clone(), admin_client, reports_rx, commands_rx, seed);
        self.tasks.spawn(driver.run(self.shutdown.child_token()));
        let proxy = Arc::new(Proxy::new(
            shared.clone(),
            client,
            connector,
            self.workers,
            self.tunnels.clone(),
            self.shutdown.clone(),
        ));
        Core { shared, proxy, cancel }
    }

    /// Reloads the configuration file (SIGHUP, `POST /reload`, file change).
    pub async fn reload_file(&self) -> Result<String, String> {
        let Some(path) = &self.config_path else {
            return Err("flowgate was not started from a configuration file".into());
        };
        match config::load(path) {
            Ok(c) => self.reload(c).await,
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                error!(error = %e, "configuration rejected; the running one stays in force");
                Err(e.to_string())
            }
        }
    }

    /// Applies a validated configuration as a diff. Roles are kept: the active instance stays
    /// active. Added instances are probed (never promoted on sight), removed ones dropped,
    /// timings changed. In-flight requests and websockets are untouched. Listen addresses,
    /// TLS settings and `state.dir` need a restart: a change is reported, not applied.
    pub async fn reload(&self, config: Config) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.reload_inner(config).await;
        match &result {
            Ok(msg) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                info!(result = %msg, "configuration reloaded");
            }
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                error!(error = %e, "configuration rejected; the running one stays in force");
            }
        }
        result
    }

    async fn reload_inner(&self, config: Config) -> Result<String, String> {
        let old = self.core.load_full();
        let oc = &old.shared.config;
        let mut notes = Vec::new();
        if config.listen != oc.listen {
            notes.push("listen addresses changed: restart flowgate to apply them".to_string());
        }
        if config.tls != oc.tls {
            notes.push(
                "tls settings changed: restart flowgate to apply them (certificates in the folder are reloaded)".into(),
            );
        }
        if config.state.dir != oc.state.dir {
            notes.push("state.dir changed: restart flowgate to apply it".into());
        }
        let identity = |scheme: &http::uri::Scheme, a: &http::uri::Authority| format!("{scheme}://{a}");
        if let Some(a) = &old.shared.view.load().active {
            let kept = config.backends.iter().any(|b| {
                b.id == a.backend.id
                    && identity(&b.scheme, &b.authority) == identity(&a.backend.scheme, &a.backend.authority)
            });
            if !kept {
                return Err(format!(
                    "backend {} is active: it cannot be removed or moved by a reload; move the active role first (POST /switchover)",
                    a.backend.id
                ));
            }
        }
        let ids: Vec<String> = config.backends.iter().map(|b| b.id.to_string()).collect();
        let mut table =
            sync::SyncTable::open(ids.clone(), oc.state.dir.as_deref(), config.state.key.as_ref().map(|k| k.expose()))
                .map_err(|e| format!("state.dir: {e}"))?;
        table.carry_from(&old.shared.sync.lock().unwrap_or_else(|e| e.into_inner()));
        // Everything that can fail happens before the running supervisor hands over, so a
        // rejected reload never leaves the instances unsupervised.
        let clients = clients(&config)?;
        // The running supervisor hands over once no promotion is in flight.
        let (tx, rx) = oneshot::channel();
        old.shared.commands.send(Command::Handover { reply: tx }).await.map_err(|_| "shutting down".to_string())?;
        let wait = oc.failover.stop_timeout + oc.failover.start_timeout + Duration::from_secs(5);
        let seed = tokio::time::timeout(wait, rx)
            .await
            .map_err(|_| "a promotion is still in progress; try again".to_string())?
            .map_err(|_| "the supervisor stopped".to_string())?;
        let removed: Vec<String> =
            oc.backends.iter().map(|b| b.id.to_string()).filter(|id| !ids.contains(id)).collect();
        let added: Vec<String> =
            ids.iter().filter(|id| !oc.backends.iter().any(|b| b.id.as_str() == id.as_str())).cloned().collect();
        let core = self.build(config, clients, table, Some(seed));
        self.core.store(Arc::new(core));
        old.cancel.cancel();
        for id in &removed {
            self.metrics.forget_backend(id);
        }
        if let Some(tls) = &self.tls {
            self.reload_certs(tls);
        }
        for n in &notes {
            warn!("{n}");
        }
        let mut msg = format!("added: [{}], removed: [{}]", added.join(", "), removed.join(", "));
        if !notes.is_empty() {
            msg.push_str("; ");
            msg.push_str(&notes.join("; "));
        }
        Ok(msg)
    }

    fn reload_certs(&self, tls: &tls::Tls) {
        let r = tls.reload();
        for e in &r.errors {
            self.metrics.tls_reload_errors.inc();
            error!(error = %e, "certificate not loaded");
        }
        if !r.changed.is_empty() {
            info!(certs = ?r.changed, "certificates loaded");
        }
        for (name, not_after) in tls.expiries() {
            self.metrics.tls_not_after.with_label_values(&[&name]).set(not_after);
        }
    }
}

/// A running flowgate.
pub struct Handle {
    /// The plain proxy listener, else the HTTPS one.
    pub proxy_addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    pub redirect_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
}

/// Starts probers, the supervisor and the listeners. Must run inside a tokio runtime.
/// `config_path` enables reloading from that file.
pub fn start(config: Config, listeners: Listeners, config_path: Option<PathBuf>) -> std::io::Result<Handle> {
    start_on(config, listeners, config_path, Vec::new())
}

/// [`start`], serving client connections on `workers` (one current-thread runtime per core,
/// each connection staying on the one it was handed to); empty: on the calling runtime.
pub fn start_on(
    config: Config,
    listeners: Listeners,
    config_path: Option<PathBuf>,
    workers: Vec<tokio::runtime::Handle>,
) -> std::io::Result<Handle> {
    let workers: Arc<[tokio::runtime::Handle]> = workers.into();
    let err = |e: String| std::io::Error::other(e);
    let admin_addr = listeners.admin.local_addr()?;
    let https_addr = listeners.https.as_ref().map(|l| l.local_addr()).transpose()?;
    let redirect_addr = listeners.redirect.as_ref().map(|l| l.local_addr()).transpose()?;
    let proxy_addr = match &listeners.proxy {
        Some(l) => l.local_addr()?,
        None => https_addr.ok_or_else(|| err("no client-facing listener".into()))?,
    };
    let tls = match &config.tls {
        Some(t) => {
            Some(Arc::new(tls::Tls::new(&t.certs, t.default.clone()).map_err(|e| err(format!("tls.certs: {e}")))?))
        }
        None => None,
    };
    if listeners.https.is_some() && tls.is_none() {
        return Err(err("an HTTPS listener needs tls.certs".into()));
    }
    let state_dir = config.state.dir.clone();
    let ids = config.backends.iter().map(|b| b.id.to_string()).collect();
    let table = sync::SyncTable::open(ids, state_dir.as_deref(), config.state.key.as_ref().map(|k| k.expose()))
        .map_err(|e| err(format!("state.dir: {e}")))?;
    if state_dir.is_some() && !table.credentials_persisted() {
        warn!("state.key is not set: credentials seen in deploys are kept in memory only");
    }
    let shutdown = CancellationToken::new();
    let app = Arc::new(App {
        core: ArcSwap::from_pointee(Core {
            shared: Arc::new(placeholder_shared(&config)),
            proxy: Arc::new(Proxy::new(
                Arc::new(placeholder_shared(&config)),
                backend::client(&config, Some(0)).map_err(err)?,
                backend::connector(&config).map_err(err)?,
                workers.len().max(1),
                TaskTracker::new(),
                shutdown.clone(),
            )),
            cancel: CancellationToken::new(),
        }),
        tls: tls.clone(),
        metrics: Arc::new(Metrics::new()),
        tokens: Arc::new(auth::TokenStore::open(state_dir.as_deref())),
        change_lock: Default::default(),
        fence: Default::default(),
        cookies: std::sync::Mutex::new((None, Arc::new(editor::CookieCodec::new(None)))),
        config_path,
        reloading: tokio::sync::Mutex::new(()),
        tunnels: TaskTracker::new(),
        workers: workers.len().max(1),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    let limits = config.limits.clone();
    let grace = config.shutdown_grace;
    let clients = clients(&config).map_err(err)?;
    let core = app.build(config, clients, table, None);
    app.core.store(Arc::new(core));

    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let serve = {
        let app = app.clone();
        move |req, peer: Peer| app.proxy().serve(req, peer)
    };
    for (tcp, tls) in [(listeners.proxy, None), (listeners.https, acceptor)] {
        if let Some(tcp) = tcp {
            let gauges = server::Gauges {
                open: app.metrics.client_connections.clone(),
                parked: app.metrics.client_connections_parked.clone(),
            };
            let l = server::Listener { tcp, tls, slots: slots.clone(), gauges: Some(gauges) };
            app.tasks.spawn(server::accept_loop(
                l,
                limits.clone(),
                shutdown.child_token(),
                grace,
                workers.clone(),
                serve.clone(),
            ));
        }
    }
    if let (Some(tcp), Some(https)) = (listeners.redirect, https_addr) {
        let l = server::Listener { tcp, tls: None, slots: slots.clone(), gauges: None };
        let port = https.port();
        app.tasks.spawn(server::accept_loop(
            l,
            limits.clone(),
            shutdown.child_token(),
            grace,
            Arc::from([]),
            move |req, _| async move { Ok(server::redirect(&req, port)) },
        ));
    }
    let l = server::Listener { tcp: listeners.admin, tls: None, slots: Arc::new(Semaphore::new(256)), gauges: None };
    let a = app.clone();
    app.tasks.spawn(server::accept_loop(l, limits, shutdown.child_token(), grace, Arc::from([]), move |req, _| {
        admin::serve(a.clone(), req)
    }));
    if let Some(tls) = &tls {
        app.reload_certs(tls);
        let (a, every, cancel) = (
            app.clone(),
            app.shared().config.tls.as_ref().map_or(Duration::from_secs(10), |t| t.reload_interval),
            shutdown.clone(),
        );
        let tls = tls.clone();
        app.tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => a.reload_certs(&tls),
                }
            }
        });
    }
    info!(proxy = %proxy_addr, https = ?https_addr, admin = %admin_addr, "flowgate started");
    Ok(Handle { proxy_addr, https_addr, redirect_addr, admin_addr, app })
}

/// An inert `Shared` used only until the first core is built.
fn placeholder_shared(config: &Config) -> Shared {
    Shared {
        config: Arc::new(config.clone()),
        sync: std::sync::Mutex::new(sync::SyncTable::open(Vec::new(), None, None).expect("no store")),
        sync_changed: Notify::new(),
        change_lock: Default::default(),
        fence: Default::default(),
        tokens: Arc::new(auth::TokenStore::open(None)),
        cookies: Arc::new(editor::CookieCodec::new(None)),
        backends: Vec::new(),
        pins: Vec::new(),
        kicks: Vec::new(),
        editor_token_refused: Vec::new(),
        view: ArcSwap::from_pointee(View::default()),
        generation: watch::channel(0).0,
        status: ArcSwap::from_pointee(Status::default()),
        metrics: Arc::new(Metrics::new()),
        commands: mpsc::channel(1).0,
    }
}

impl Handle {
    /// The shared state of the current configuration.
    pub fn shared(&self) -> Arc<Shared> {
        self.app.shared()
    }

    /// Reloads the configuration file.
    pub async fn reload(&self) -> Result<String, String> {
        self.app.reload_file().await
    }

    /// Watches the configuration file and reloads when it changes (checked every `every`).
    pub fn watch_config(&self, every: Duration) {
        let Some(path) = self.app.config_path.clone() else { return };
        let (app, cancel) = (self.app.clone(), self.app.shutdown.clone());
        self.app.tasks.spawn(async move {
            let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last = stamp(&path);
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = stamp(&path);
                if now != last {
                    last = now;
                    let _ = app.reload_file().await;
                }
            }
        });
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, closes
    /// websockets. Instances are left as they are: the active keeps running its flows.
    pub async fn shutdown(self) {
        let grace = self.app.shared().config.shutdown_grace;
        self.app.shutdown.cancel();
        self.app.tasks.close();
        self.app.tunnels.close();
        let all = async {
            self.app.tasks.wait().await;
            self.app.tunnels.wait().await;
        };
        if tokio::time::timeout(grace + Duration::from_secs(1), all).await.is_err() {
            warn!(grace = ?grace, "shutdown did not complete in time; terminating");
        }
    }
}

//! Composition: builds everything from a configuration and starts it.
//!
//! A *core* is what one configuration builds (its [`Shared`] state, request path, probers and
//! cluster driver); a reload builds a new core and swaps it in whole (`reload.rs`). What
//! outlives a configuration lives in [`Services`] and [`App`]: metrics, remembered logins, the
//! change lock, the editor cookie key, TLS, open tunnels, the task tracker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::{self, Backend};
use crate::config::Config;
use crate::control::cluster::driver::{Command, Driver, Seed};
use crate::control::coord::{self, Link};
use crate::control::health::probe::{CanaryWanted, Prober};
use crate::editor::cookie::CookieCodec;
use crate::editor::logins::TokenStore;
use crate::editor::sync::SyncTable;
use crate::ops::admin;
use crate::state::{Services, Shared};
use crate::traffic::proxy::Proxy;
use crate::traffic::server::Peer;
use crate::traffic::{server, tls};

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
        async fn bind(name: &str, addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
            let Some(addr) = addr else { return Ok(None) };
            let l = TcpListener::bind(addr).await;
            l.map(Some).map_err(|e| std::io::Error::new(e.kind(), format!("{name} {addr}: {e}")))
        }
        let l = &config.listen;
        Ok(Listeners {
            proxy: bind("listen.proxy", l.proxy).await?,
            https: bind("listen.https", l.https).await?,
            redirect: bind("listen.redirect", l.redirect).await?,
            admin: bind("listen.admin", Some(l.admin)).await?.expect("bound"),
        })
    }

    /// A plain proxy listener and an admin listener (tests, embedding).
    pub fn plain(proxy: TcpListener, admin: TcpListener) -> Self {
        Listeners { proxy: Some(proxy), https: None, redirect: None, admin }
    }
}

/// Everything built from one configuration; replaced as a whole on reload.
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    pub proxy: Arc<Proxy>,
    /// Operator commands to this core's cluster driver.
    pub commands: mpsc::Sender<Command>,
    /// Stops this core's probers (its driver stops by handing over or on shutdown).
    pub cancel: CancellationToken,
}

/// The clients a core uses: probes and flow-state calls, editor writes and websockets, and
/// the TLS settings of the proxied requests' own connections. Built before anything else of
/// a configuration, since they are its only fallible part.
pub(crate) struct Clients {
    admin: backend::AdminClient,
    /// The probes' own: their connections live on the probe runtime, never on a busy one.
    probes: backend::AdminClient,
    editor: backend::AdminClient,
    connector: backend::Connector,
}

impl Clients {
    pub fn new(config: &Config) -> Result<Self, tls::TlsError> {
        Ok(Clients {
            admin: backend::admin_client(config)?,
            probes: backend::admin_client(config)?,
            editor: backend::client(config, None)?,
            connector: backend::connector(config)?,
        })
    }
}

/// What the cores of successive configurations share.
pub(crate) struct Runtime {
    pub services: Services,
    /// The editor cookie codec, rebuilt only when its key changes.
    pub cookies: std::sync::Mutex<(Option<String>, Arc<CookieCodec>)>,
    pub tunnels: TaskTracker,
    /// `limits.max_connections`: client connections and the upstream side of tunnels.
    pub slots: Arc<Semaphore>,
    /// How many runtimes serve client connections (1 when they run on the caller's).
    pub workers: usize,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Replicas: the link to the etcd session, for the first driver (later ones get it with
    /// the handover).
    pub link: std::sync::Mutex<Option<Link>>,
    /// Where probes and connection watches run: a runtime of their own.
    pub probes: tokio::runtime::Handle,
}

/// A runtime of its own for the probes (one thread, ended with flowgate): a busy control
/// runtime (status streams, saves to disk, deploys, the admin API) never holds a probe past
/// its timeout, which would look like a hang of the instance and fail it over.
fn probe_runtime(shutdown: CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new().name("flowgate-probes".into()).spawn(move || {
        rt.block_on(shutdown.cancelled());
    })?;
    Ok(handle)
}

struct SharedView(Arc<Shared>);

impl CanaryWanted for SharedView {
    fn canary_wanted(&self, backend: &Backend) -> bool {
        let view = self.0.view.load();
        let routed = |a: &Arc<crate::state::Active>| std::ptr::eq(&*a.backend, backend);
        view.active.as_ref().is_some_and(routed) || view.rotation.iter().any(routed)
    }
}

impl Runtime {
    fn cookies(&self, config: &Config) -> Arc<CookieCodec> {
        let key = config.editor.cookie_key.as_ref().map(|k| k.expose().to_string());
        let mut c = self.cookies.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 != key {
            *c = (key.clone(), Arc::new(CookieCodec::new(key.as_deref())));
        }
        c.1.clone()
    }

    /// Builds a core for `config` and starts its probers and cluster driver.
    pub fn build(&self, config: Config, clients: Clients, sync: SyncTable, seed: Option<Seed>) -> Core {
        let config = Arc::new(config);
        let cookies = self.cookies(&config);
        let shared =
            Arc::new(Shared::new(config.clone(), sync, cookies, &self.services, &clients.connector, self.workers));
        for b in shared.backends() {
            self.services.metrics.init_backend(b.id.as_str());
        }
        let (commands, commands_rx) = mpsc::channel(16);
        let (reports_tx, reports_rx) = mpsc::channel(64);
        let cancel = self.shutdown.child_token();
        let wants: Arc<dyn CanaryWanted> = Arc::new(SharedView(shared.clone()));
        for (index, instance) in shared.instances.iter().enumerate() {
            let prober = Prober {
                index,
                backend: instance.backend.clone(),
                client: clients.probes.clone(),
                health: config.health.clone(),
                kick: instance.kick.clone(),
                wants: wants.clone(),
                reports: reports_tx.clone(),
                epoch: self.services.epoch.clone(),
                replicated: config.cluster.is_some(),
            };
            self.tasks.spawn_on(prober.run(cancel.clone()), &self.probes);
            let addr = instance.backend.authority.as_str().to_string();
            let addr = match instance.backend.authority.port_u16() {
                Some(_) => addr,
                None if instance.backend.scheme == http::uri::Scheme::HTTPS => format!("{addr}:443"),
                None => format!("{addr}:80"),
            };
            let watch = crate::control::health::watch::watch(addr, instance.kick.clone(), cancel.clone());
            self.tasks.spawn_on(watch, &self.probes);
        }
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner()).take();
        let epoch = self.services.epoch.clone();
        let driver = Driver::new(shared.clone(), clients.admin, reports_rx, commands_rx, seed, link, epoch);
        self.tasks.spawn(driver.run(self.shutdown.child_token()));
        let tunnels = crate::traffic::proxy::Tunnels {
            client: clients.editor,
            tracker: self.tunnels.clone(),
            shutdown: self.shutdown.clone(),
            slots: self.slots.clone(),
        };
        let proxy = Arc::new(Proxy::new(shared.clone(), tunnels));
        Core { shared, proxy, commands, cancel }
    }
}

/// A running flowgate: the current core and what outlives it.
pub struct App {
    pub(crate) core: ArcSwap<Core>,
    pub(crate) rt: Runtime,
    pub tls: Option<Arc<tls::Tls>>,
    /// The admin listener's certificates (`admin.tls`).
    pub admin_tls: Option<Arc<tls::Tls>>,
    /// The configuration file, for `POST /reload`, SIGHUP and the file watch.
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) reloading: tokio::sync::Mutex<()>,
}

impl App {
    /// The shared state of the current configuration.
    pub fn shared(&self) -> Arc<Shared> {
        self.core.load().shared.clone()
    }

    /// The request path of the current configuration.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.core.load().proxy.clone()
    }

    /// Operator commands to the current cluster driver.
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.core.load().commands.clone()
    }

    pub fn metrics(&self) -> &Arc<crate::ops::metrics::Metrics> {
        &self.rt.services.metrics
    }

    /// Resolves when shutdown begins.
    pub fn shutting_down(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.rt.shutdown.cancelled()
    }
}

/// A running flowgate, as its starter holds it.
pub struct Handle {
    /// The plain proxy listener, else the HTTPS one.
    pub proxy_addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    pub redirect_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
}

impl Handle {
    /// The shared state of the current configuration.
    pub fn shared(&self) -> Arc<Shared> {
        self.app.shared()
    }
}

/// Starts probers, the cluster driver and the listeners. Must run inside a tokio runtime.
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
    let admin_tls = match &config.admin_tls {
        Some(t) => Some(Arc::new(
            tls::Tls::new(&t.certs, t.default.clone()).map_err(|e| err(format!("admin.tls.certs: {e}")))?,
        )),
        None => None,
    };
    if admin_tls.is_none() && !admin_addr.ip().is_loopback() {
        warn!(
            admin = %admin_addr,
            "the admin listener is reachable from the network over plain HTTP: editor tokens asked about at /auth/token-info and the admin token cross it in clear; set admin.tls"
        );
    }
    let state_dir = config.state.dir.clone();
    let ids = config.backends.iter().map(|b| b.id.to_string()).collect();
    let table = SyncTable::open(ids, state_dir.as_deref(), config.state.key.as_ref().map(|k| k.expose()))
        .map_err(|e| err(format!("state.dir: {e}")))?;
    if state_dir.is_some() && !table.credentials_persisted() {
        warn!("state.key is not set: credentials seen in deploys are kept in memory only");
    }
    let shutdown = CancellationToken::new();
    let rt = Runtime {
        services: Services {
            metrics: Default::default(),
            tokens: Arc::new(TokenStore::open(state_dir.as_deref())),
            changes: Default::default(),
            epoch: Default::default(),
        },
        cookies: std::sync::Mutex::new((None, Arc::new(CookieCodec::new(None)))),
        tunnels: TaskTracker::new(),
        slots: Arc::new(Semaphore::new(config.limits.max_connections)),
        workers: workers.len().max(1),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
        link: std::sync::Mutex::new(None),
        probes: probe_runtime(shutdown.clone())?,
    };
    if let Some(cluster) = &config.cluster {
        let (link, ends) = coord::link(cluster.lease_ttl / 2);
        rt.services.tokens.share_through(link.to_store.clone());
        *rt.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
        rt.tasks.spawn(coord::etcd::run(cluster.clone(), ends, shutdown.child_token()));
    }
    let limits = config.limits.clone();
    let grace = config.shutdown_grace;
    let tls_every =
        config.tls.as_ref().or(config.admin_tls.as_ref()).map_or(Duration::from_secs(10), |t| t.reload_interval);
    let clients = Clients::new(&config).map_err(|e| err(e.to_string()))?;
    let core = rt.build(config, clients, table, None);
    let app = Arc::new(App {
        core: ArcSwap::from_pointee(core),
        rt,
        tls: tls.clone(),
        admin_tls: admin_tls.clone(),
        config_path,
        reloading: tokio::sync::Mutex::new(()),
    });

    let slots = app.rt.slots.clone();
    let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let serve = {
        let app = app.clone();
        move |req, peer: Peer| app.proxy().serve(req, peer)
    };
    let tasks = &app.rt.tasks;
    for (tcp, tls) in [(listeners.proxy, None), (listeners.https, acceptor)] {
        if let Some(tcp) = tcp {
            let m = app.metrics();
            let gauges =
                server::Gauges { open: m.client_connections.clone(), parked: m.client_connections_parked.clone() };
            let fast = {
                let app = app.clone();
                Arc::new(crate::traffic::proxy::fast::Fast { current: Box::new(move || app.proxy()) })
            };
            let l = server::Listener { tcp, tls, slots: slots.clone(), gauges: Some(gauges), fast: Some(fast) };
            let (limits, cancel) = (limits.clone(), shutdown.child_token());
            tasks.spawn(server::accept_loop(l, limits, cancel, grace, workers.clone(), serve.clone()));
        }
    }
    if let (Some(tcp), Some(https)) = (listeners.redirect, https_addr) {
        let l = server::Listener { tcp, tls: None, slots: slots.clone(), gauges: None, fast: None };
        let port = https.port();
        tasks.spawn(server::accept_loop(
            l,
            limits.clone(),
            shutdown.child_token(),
            grace,
            Arc::from([]),
            move |req, _| async move { Ok(server::redirect(&req, port)) },
        ));
    }
    let admin_acceptor = admin_tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let l = server::Listener {
        tcp: listeners.admin,
        tls: admin_acceptor,
        slots: Arc::new(Semaphore::new(256)),
        gauges: None,
        fast: None,
    };
    let a = app.clone();
    tasks.spawn(server::accept_loop(l, limits, shutdown.child_token(), grace, Arc::from([]), move |req, _| {
        admin::serve(a.clone(), req)
    }));
    // Both certificate folders are checked for changes on one timer.
    let stores: Vec<Arc<tls::Tls>> = tls.iter().chain(admin_tls.iter()).cloned().collect();
    if !stores.is_empty() {
        for t in &stores {
            app.reload_certs(t);
        }
        let (a, cancel) = (app.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(tls_every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => stores.iter().for_each(|t| a.reload_certs(t)),
                }
            }
        });
    }
    info!(proxy = %proxy_addr, https = ?https_addr, admin = %admin_addr, "flowgate started");
    Ok(Handle { proxy_addr, https_addr, redirect_addr, admin_addr, app })
}

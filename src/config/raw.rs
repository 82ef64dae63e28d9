//! Serde mirror of the YAML file. Every struct rejects unknown keys, so a typo such as
//! `intervall` fails loudly instead of silently using a default. Values stay as written
//! (strings for durations and addresses); `validate.rs` turns them into typed values.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The HA shape: `hot-spare` (one instance runs flows) or `load-balanced` (all do).
    pub mode: Option<String>,
    /// Where flowgate listens.
    #[serde(default)]
    pub listen: RawListen,
    /// The admin listener's token for mutating endpoints.
    #[serde(default)]
    pub admin: RawAdmin,
    /// The Node-RED instances (at least one; two or more for failover).
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    /// The instances' `httpAdminRoot` and `httpNodeRoot` (the same on every instance).
    #[serde(default)]
    pub node_red: RawNodeRed,
    /// Health checks.
    #[serde(default)]
    pub health: RawHealth,
    /// Election and failover behaviour.
    #[serde(default)]
    pub failover: RawFailover,
    /// Restarting failed instances.
    #[serde(default)]
    pub recovery: RawRecovery,
    /// HA readiness checks of the flows.
    #[serde(default)]
    pub readiness: RawReadiness,
    /// Proxy behaviour towards clients.
    #[serde(default)]
    pub proxy: RawProxy,
    /// Editor sessions.
    #[serde(default)]
    pub editor: RawEditor,
    /// Deploy fan-out.
    #[serde(default)]
    pub deploy: RawDeploy,
    /// Where flowgate keeps what it must remember across restarts.
    #[serde(default)]
    pub state: RawState,
    /// TLS termination.
    pub tls: Option<RawTls>,
    /// Several flowgate replicas in front of the same instances, agreeing through etcd.
    pub cluster: Option<RawCluster>,
    /// Protection against slow, large and numerous client requests.
    #[serde(default)]
    pub limits: RawLimits,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: RawShutdown,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Folder of `NAME.crt` (or `NAME.pem`) certificate chains with their `NAME.key`.
    pub certs: String,
    /// The certificate for clients without SNI or with an unknown name (default: first by name).
    pub default: Option<String>,
    /// How often the folder is checked for changed certificates (default 10s).
    pub reload_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time a client has to send a complete request head (default 10s).
    pub header_read_timeout: Option<String>,
    /// Largest request head (default 64KiB); larger gets 431.
    pub max_header_bytes: Option<String>,
    /// Most request headers (default 100); more gets 431.
    pub max_headers: Option<u32>,
    /// Most open client connections (default 10000); more get 503 and are closed.
    pub max_connections: Option<u32>,
    /// Most requests in flight to one instance at a time (default 128); more wait for one to
    /// end, in arrival order.
    pub upstream_connections: Option<u32>,
    /// Longest such a request waits (default 5s); then it gets 503.
    pub upstream_queue_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT (default 10s).
    pub grace: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEditor {
    /// Name of the sticky-session cookie (default "flowgate_editor").
    pub cookie: Option<String>,
    /// Key that signs the cookie. Default: random at each start (cookies are then simply
    /// re-issued after a restart). Set it when several flowgate replicas share clients.
    pub cookie_key: Option<RawSecret>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    /// Largest deploy or admin write body (default 5MiB, Node-RED's apiMaxLength).
    pub max_body: Option<String>,
    /// Limit for one instance to answer a deploy (default 30s).
    pub timeout: Option<String>,
    /// Limit for palette changes, which run npm (default 300s).
    pub palette_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// This replica's name, unique in the cluster (letters, digits, `.`, `-`, `_`).
    pub id: String,
    /// etcd endpoints, e.g. ["http://10.0.0.5:2379", "http://10.0.0.6:2379"].
    pub etcd: Vec<String>,
    /// Key prefix in etcd: one cluster per prefix (default "/flowgate/").
    pub prefix: Option<String>,
    /// How long a controller that stopped renewing keeps the leadership (default 2s, whole
    /// seconds, at least 2s). It steps down itself after half of it.
    pub lease_ttl: Option<String>,
    /// etcd user (with `password`), when etcd has authentication on.
    pub user: Option<String>,
    pub password: Option<RawSecret>,
    /// TLS to etcd (for `https://` endpoints).
    pub tls: Option<RawEtcdTls>,
    /// `http://HOST:PORT` at which the other replicas reach this one's proxy listener: editor
    /// writes that reach a follower are forwarded to the controller there (default: from
    /// `listen.proxy` when it is a specific address).
    pub advertise: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdTls {
    /// PEM of the CA that signed etcd's certificates.
    pub ca: String,
    /// This replica's client certificate and key (PEM), when etcd checks clients
    /// (`--client-cert-auth`).
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// Folder for the target revision, flows and sealed credentials (created, mode 0600 files).
    /// Without it, nothing survives a flowgate restart.
    pub dir: Option<String>,
    /// Key that encrypts remembered credentials at rest. Without it credentials are kept in
    /// memory only.
    pub key: Option<RawSecret>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// Client-facing plain HTTP listener, e.g. "0.0.0.0:1880" (default, unless `https` is set).
    pub proxy: Option<String>,
    /// Client-facing HTTPS listener (needs `tls.certs`), e.g. "0.0.0.0:1443".
    pub https: Option<String>,
    /// Plain HTTP listener that only redirects to the HTTPS listener (308).
    pub redirect: Option<String>,
    /// Admin listener (metrics, status, switchover), loopback by default.
    pub admin: Option<String>,
    /// Forward HTTP/1.1 runtime requests as bytes, without hyper (default true). `false`
    /// sends every request through hyper.
    pub fast_path: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bearer token that mutating admin endpoints require. Without it they answer 403.
    pub token: Option<RawSecret>,
    /// Bearer token that the read endpoints (`/status`, `/metrics`, `/events`) then require
    /// (the admin token is accepted too). Without it they are open to whoever reaches the
    /// admin listener.
    pub read_token: Option<RawSecret>,
    /// Serve the admin listener over HTTPS only: for instances on other hosts asking
    /// `/auth/token-info`, and operators across a network.
    pub tls: Option<RawAdminTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTls {
    /// Folder of `NAME.crt` + `NAME.key` pairs, as `tls.certs` (default: `tls.certs`).
    pub certs: Option<String>,
    /// The certificate for clients without SNI or with an unknown name (default: first by name,
    /// or `tls.default` when the folder is shared).
    pub default: Option<String>,
}

/// A secret read from an environment variable or a file; never written in the YAML itself.
#[derive(Debug, Default)]
pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
}

/// By hand rather than derived: serde's own errors quote the value they could not use, and a
/// secret written inline (`token: abc`) must never reach a log, `flowgate check` or a reload
/// answer.
impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let serde_yaml::Value::Mapping(map) = serde_yaml::Value::deserialize(d)? else {
            return Err(D::Error::custom(
                "a secret is never written in the file: give `{ env: VAR }` or `{ file: PATH }`",
            ));
        };
        let mut out = RawSecret::default();
        for (k, v) in map {
            let slot = match k.as_str() {
                Some("env") => &mut out.env,
                Some("file") => &mut out.file,
                _ => return Err(D::Error::custom("a secret has only `env` or `file`")),
            };
            match v {
                serde_yaml::Value::String(s) => *slot = Some(s),
                _ => return Err(D::Error::custom("`env` and `file` take a name or a path")),
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// Stable name used in logs, metrics, cookies and the admin API.
    pub id: String,
    /// Base URL of the instance, e.g. "http://127.0.0.1:1881".
    pub url: String,
    /// Higher wins when there is no active instance (default 100; ties: file order).
    pub priority: Option<i64>,
    /// flowgate's own bearer token for this instance (Node-RED `adminAuth.tokens`).
    pub token: Option<RawSecret>,
    /// PEM file of the CA that signed the instance's certificate (for `https://` URLs).
    pub ca: Option<String>,
    /// How flowgate restarts this instance (recovery, rolling restarts, `ctl restart`).
    pub restart: Option<RawRestart>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    /// Program and arguments, run without a shell, e.g. ["systemctl", "restart", "node-red@a"].
    pub command: Vec<String>,
    /// The command is killed and the restart counted failed after this long (default 60s).
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawReadiness {
    /// Hazard kinds not to report (e.g. [memory_context] when a shared context store is used).
    pub ignore: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRecovery {
    /// Restart failed instances that have a restart command without being asked (default true).
    pub automatic: Option<bool>,
    /// A hung instance (probes time out) is restarted once it has been down this long (default 5s).
    pub hung_for: Option<String>,
    /// A crashed instance (refused, reset) is restarted once it has been down this long
    /// (default 30s: time for a service manager's own restart).
    pub down_for: Option<String>,
    /// A restarted instance must be up, stopped and in step within this (default 60s).
    pub start_timeout: Option<String>,
    /// At most this many automatic restarts of one instance within `window`, then it is left
    /// down until an operator restarts it (default 3).
    pub max_restarts: Option<u32>,
    /// Default 10m.
    pub window: Option<String>,
    /// Pause after a restart before the next one of the same instance, doubled each time
    /// within `window` (default 10s).
    pub backoff: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawNodeRed {
    /// `httpAdminRoot` of the instances (default "/").
    pub admin_root: Option<String>,
    /// `httpNodeRoot` of the instances (default "/").
    pub node_root: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Time between probes of one instance (default 500ms).
    pub interval: Option<String>,
    /// A probe that has no complete answer by then failed (default 400ms).
    pub timeout: Option<String>,
    /// Consecutive good probes before a down instance is up (default 2).
    pub rise: Option<u32>,
    /// Consecutive failed probes before an up instance is down (default 2).
    pub fall: Option<u32>,
    /// Path under `httpNodeRoot` served by a flow (http-in → http response 200); probed on the
    /// active instance only. Proves that flows really process messages.
    pub canary: Option<String>,
    /// After a promotion, probe time-outs on the new active are not counted for this long
    /// (Node-RED's latency spikes right after flows start). Default 1s.
    pub promotion_grace: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    /// Return to the highest-priority instance once it is back (default false).
    pub failback: Option<bool>,
    /// How long that instance must be healthy before failback (default 60s).
    pub failback_delay: Option<String>,
    /// How long a request waits for an active instance before 503 (default 5s).
    pub hold: Option<String>,
    /// Limit for `POST /flows/state {"state":"stop"}` (default 20s: Node-RED's nodeCloseTimeout is 15s).
    pub stop_timeout: Option<String>,
    /// Limit for `POST /flows/state {"state":"start"}` (default 15s).
    pub start_timeout: Option<String>,
    /// The instances' dead-man switch (`FLOWGATE_DEADMAN_MS` of flowgate-fence.js): a promotion
    /// that cannot confirm another instance stopped waits this long after its last answer.
    /// Default: off.
    pub deadman: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Peers whose X-Forwarded-For is kept and appended to; from anyone else it is replaced.
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Level filter, e.g. "info" or "flowgate=debug" (RUST_LOG wins when set).
    pub level: Option<String>,
    /// "text" (default) or "json".
    pub format: Option<String>,
    /// One line per client request (target `flowgate::access`), default false.
    pub access: Option<bool>,
}

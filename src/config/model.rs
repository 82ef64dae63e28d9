//! The validated, typed configuration: what the rest of flowgate reads. Built only by
//! `validate.rs` from the YAML mirror in `raw.rs`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The configured name of an instance; the same value in logs, metrics and the admin API.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(Arc<str>);

impl serde::Serialize for BackendId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for BackendId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| BackendId(Arc::from(s)))
    }
}

impl From<&str> for BackendId {
    fn from(s: &str) -> Self {
        BackendId(Arc::from(s))
    }
}

impl BackendId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A validated configuration. Downstream code never re-checks these values.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HA shape: one instance runs flows (hot spare), or every in-step one does.
    pub mode: crate::readiness::Mode,
    pub listen: Listen,
    pub admin_token: Option<Secret>,
    pub admin_read_token: Option<Secret>,
    pub backends: Vec<BackendConfig>,
    pub node_red: NodeRedPaths,
    pub health: HealthConfig,
    pub failover: FailoverConfig,
    pub recovery: RecoveryConfig,
    /// Hazard kinds of the readiness checks not to report.
    pub readiness_ignore: Vec<String>,
    pub trusted_proxies: Vec<Cidr>,
    pub editor: EditorConfig,
    pub deploy: DeployConfig,
    pub state: StateConfig,
    pub tls: Option<TlsConfig>,
    /// The admin listener's certificates (HTTPS only when set).
    pub admin_tls: Option<TlsConfig>,
    pub cluster: Option<ClusterConfig>,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct EditorConfig {
    pub cookie: String,
    pub cookie_key: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub max_body: usize,
    pub timeout: Duration,
    pub palette_timeout: Duration,
}

/// Replicas agreeing through etcd.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This replica's name.
    pub id: String,
    pub etcd: Vec<String>,
    /// Ends with `/`.
    pub prefix: String,
    pub lease_ttl: Duration,
    pub auth: Option<(String, Secret)>,
    pub tls: Option<EtcdTls>,
    /// `http://host:port` of this replica's proxy listener for the other replicas.
    pub advertise: String,
}

/// TLS to etcd: the CA (PEM, read at load) and an optional client identity.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: Vec<u8>,
    /// Certificate chain and key (PEM).
    pub identity: Option<(Vec<u8>, Secret)>,
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub dir: Option<PathBuf>,
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub proxy: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub redirect: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// HTTP/1.1 runtime requests are forwarded as bytes (`traffic/proxy/fast.rs`).
    pub fast_path: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certs: PathBuf,
    pub default: Option<String>,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub upstream_connections: usize,
    pub upstream_queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub id: BackendId,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub ca: Option<PathBuf>,
    pub priority: i64,
    pub token: Option<Secret>,
    pub restart: Option<RestartCommand>,
}

/// How an instance is restarted: a program and its arguments (no shell), with a time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartCommand {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    pub automatic: bool,
    pub hung_for: Duration,
    pub down_for: Duration,
    pub start_timeout: Duration,
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff: Duration,
}

/// `httpAdminRoot` and `httpNodeRoot`, normalised to start and end with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRedPaths {
    pub admin_root: String,
    pub node_root: String,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Full request path of the canary (node root included).
    pub canary: Option<String>,
    pub promotion_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct FailoverConfig {
    pub failback: bool,
    pub failback_delay: Duration,
    pub hold: Duration,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub deadman: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: Option<String>,
    pub json: bool,
    pub access: bool,
}

/// An IP block of trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub(super) addr: IpAddr,
    pub(super) prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// A token that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One semantic problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} (line {l}): {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, type and unknown-key errors; the message carries the field path and line.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

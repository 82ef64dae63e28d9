//! `RawConfig` → `Config`. Collects every problem (not just the first) with its field path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::model::BackendId;
use super::model::{
    BackendConfig, Cidr, Config, DeployConfig, EditorConfig, FailoverConfig, HealthConfig, Listen, LogConfig,
    NodeRedPaths, Problem, RecoveryConfig, RestartCommand, Secret, StateConfig,
};
use super::raw::{RawConfig, RawSecret};
use super::units::{parse_duration, parse_size};

mod cluster;

pub const DEFAULT_PROXY_ADDR: &str = "0.0.0.0:1880";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";
pub const DEFAULT_PRIORITY: i64 = 100;
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(400);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 2;
pub const DEFAULT_PROMOTION_GRACE: Duration = Duration::from_secs(1);
pub const DEFAULT_FAILBACK_DELAY: Duration = Duration::from_secs(60);
pub const DEFAULT_HOLD: Duration = Duration::from_secs(5);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_COOKIE: &str = "flowgate_editor";
pub const DEFAULT_MAX_BODY: usize = 5 << 20;
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_PALETTE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_CERT_RELOAD: Duration = Duration::from_secs(10);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
pub const DEFAULT_MAX_HEADERS: u32 = 100;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// The admin token moves the active role and reloads the configuration: not a password to
/// guess.
pub const MIN_ADMIN_TOKEN: usize = 16;
/// Well under Node.js's listen backlog (511): a burst of connects to one instance (every
/// request held by a failover, retried at once) is never dropped by the kernel and left to
/// SYN retransmits (1 s, 3 s, ...).
pub const DEFAULT_UPSTREAM_CONNECTIONS: u32 = 128;
pub const DEFAULT_UPSTREAM_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HUNG_FOR: Duration = Duration::from_secs(5);
pub const DEFAULT_DOWN_FOR: Duration = Duration::from_secs(30);
pub const DEFAULT_RECOVERY_START: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(600);
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(10);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Reads secrets from the process environment and the file system; a seam for tests.
pub trait SecretSource {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> std::io::Result<String>;
}

/// The real environment and file system.
pub struct System;

impl SecretSource for System {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { field: field.into(), line: None, message: message.into() });
    }

    fn duration(&mut self, field: &str, value: &Option<String>, default: Duration) -> Duration {
        match value.as_deref().map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.add(field, e);
                default
            }
        }
    }

    /// A duration that paces a timer: zero is refused (a timer cannot tick every 0s).
    fn positive(&mut self, field: &str, value: &Option<String>, default: Duration) -> Duration {
        let d = self.duration(field, value, default);
        if d.is_zero() {
            self.add(field, "must be more than 0s");
            return default;
        }
        d
    }

    fn addr(&mut self, field: &str, value: &Option<String>, default: &str) -> SocketAddr {
        let text = value.as_deref().unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.add(field, format!("\"{text}\" is not an address; write IP:PORT, e.g. \"127.0.0.1:1880\""));
            default.parse().expect("default address parses")
        })
    }

    fn secret(&mut self, field: &str, raw: &Option<RawSecret>, src: &dyn SecretSource) -> Option<Secret> {
        let raw = raw.as_ref()?;
        let value = match (&raw.env, &raw.file) {
            (Some(var), None) => match src.env(var) {
                Some(v) => v,
                None => {
                    self.add(format!("{field}.env"), format!("environment variable {var} is not set"));
                    return None;
                }
            },
            (None, Some(path)) => match src.file(path) {
                Ok(v) => v,
                Err(e) => {
                    self.add(format!("{field}.file"), format!("cannot read {path}: {e}"));
                    return None;
                }
            },
            _ => {
                self.add(field, "give exactly one of `env: VAR` or `file: PATH`");
                return None;
            }
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            self.add(field, "the secret is empty");
            return None;
        }
        if !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            self.add(field, "the secret must be printable ASCII without spaces (it is sent as a bearer token)");
            return None;
        }
        Some(Secret::new(value))
    }
}

/// Whether `path` can be the path of a request URI as it is (no query, no fragment, only
/// characters a URI allows): the probes and admin calls are built from it.
fn is_uri_path(path: &str) -> bool {
    !path.contains(['?', '#']) && path.parse::<http::uri::PathAndQuery>().is_ok_and(|p| p.path() == path)
}

/// Normalises a Node-RED root ("/", "/admin", "admin/") to "/…/".
/// A restart command: a program (an absolute path, or a name looked up in `PATH`) and its
/// arguments, run without a shell.
fn restart_command(p: &mut Problems, field: &str, r: &super::raw::RawRestart) -> Option<RestartCommand> {
    let timeout = p.positive(&format!("{field}.timeout"), &r.timeout, DEFAULT_RESTART_TIMEOUT);
    match r.command.first() {
        None => {
            p.add(
                format!("{field}.command"),
                "give the program and its arguments, e.g. [systemctl, restart, node-red@a]",
            );
            None
        }
        Some(prog) if prog.trim().is_empty() || prog.contains(' ') && !prog.starts_with('/') => {
            p.add(
                format!("{field}.command"),
                format!("\"{prog}\" is not a program: the command runs without a shell, one list item per argument"),
            );
            None
        }
        Some(_) if r.command.iter().any(|a| a.contains('\0')) => {
            p.add(format!("{field}.command"), "an argument contains a NUL byte");
            None
        }
        Some(_) => Some(RestartCommand { argv: r.command.clone(), timeout }),
    }
}

fn root(problems: &mut Problems, field: &str, value: &Option<String>) -> String {
    let text = value.as_deref().unwrap_or("/").trim();
    let mut r = String::from("/");
    r.push_str(text.trim_matches('/'));
    if !r.ends_with('/') {
        r.push('/');
    }
    if !is_uri_path(&r) {
        problems.add(field, format!("\"{text}\" is not a path prefix (letters, digits and - . _ ~ / or %XX)"));
        return "/".into();
    }
    r
}

/// `base` is the config file's folder: relative paths in the file are relative to it.
pub fn validate(raw: RawConfig, secrets: &dyn SecretSource, base: &std::path::Path) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let at = |s: &str| base.join(s);

    let https = raw.listen.https.as_ref().map(|_| p.addr("listen.https", &raw.listen.https, "0.0.0.0:443"));
    let proxy = match (&raw.listen.proxy, https) {
        (Some(_), _) | (None, None) => Some(p.addr("listen.proxy", &raw.listen.proxy, DEFAULT_PROXY_ADDR)),
        (None, Some(_)) => None,
    };
    let redirect = raw.listen.redirect.as_ref().map(|_| p.addr("listen.redirect", &raw.listen.redirect, "0.0.0.0:80"));
    let listen = Listen {
        proxy,
        https,
        redirect,
        admin: p.addr("listen.admin", &raw.listen.admin, DEFAULT_ADMIN_ADDR),
        fast_path: raw.listen.fast_path.unwrap_or(true),
    };
    let bound: Vec<(&str, SocketAddr)> =
        [("listen.proxy", listen.proxy), ("listen.https", listen.https), ("listen.redirect", listen.redirect)]
            .into_iter()
            .filter_map(|(n, a)| a.map(|a| (n, a)))
            .collect();
    for (name, addr) in &bound {
        if *addr == listen.admin && (raw.listen.proxy.is_some() || *name != "listen.proxy") {
            p.add("listen.admin", format!("must differ from {name}"));
        }
    }
    if listen.redirect.is_some() && listen.https.is_none() {
        p.add("listen.redirect", "redirects to the HTTPS listener: set listen.https too");
    }
    let tls = raw.tls.as_ref().map(|t| {
        let certs = at(&t.certs);
        if !certs.is_dir() {
            p.add("tls.certs", format!("{} is not a folder of NAME.crt + NAME.key files", t.certs));
        }
        super::model::TlsConfig {
            certs,
            default: t.default.clone(),
            reload_interval: p.positive("tls.reload_interval", &t.reload_interval, DEFAULT_CERT_RELOAD),
        }
    });
    if listen.https.is_some() && tls.is_none() {
        p.add("listen.https", "needs tls.certs (a folder of certificates)");
    }
    let admin_tls = raw.admin.tls.as_ref().and_then(|t| {
        let (certs, default) = match (&t.certs, &tls) {
            (Some(c), _) => (at(c), t.default.clone()),
            (None, Some(shared)) => (shared.certs.clone(), t.default.clone().or(shared.default.clone())),
            (None, None) => {
                p.add("admin.tls.certs", "give a folder of NAME.crt + NAME.key files (or set tls.certs to share it)");
                return None;
            }
        };
        if !certs.is_dir() {
            p.add("admin.tls.certs", format!("{} is not a folder of NAME.crt + NAME.key files", certs.display()));
        }
        let reload_interval = tls.as_ref().map_or(DEFAULT_CERT_RELOAD, |t| t.reload_interval);
        Some(super::model::TlsConfig { certs, default, reload_interval })
    });
    let admin_token = p.secret("admin.token", &raw.admin.token, secrets);
    let admin_read_token = p.secret("admin.read_token", &raw.admin.read_token, secrets);
    if admin_read_token.as_ref().is_some_and(|t| t.expose().len() < MIN_ADMIN_TOKEN) {
        p.add(
            "admin.read_token",
            format!("must be at least {MIN_ADMIN_TOKEN} characters (for example: openssl rand -hex 24)"),
        );
    }
    if admin_token.as_ref().is_some_and(|t| t.expose().len() < MIN_ADMIN_TOKEN) {
        p.add(
            "admin.token",
            format!("must be at least {MIN_ADMIN_TOKEN} characters (for example: openssl rand -hex 24)"),
        );
    }

    if raw.backends.is_empty() {
        p.add("backends", "at least one backend is needed (two or more for failover)");
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut backends = Vec::new();
    for (i, b) in raw.backends.iter().enumerate() {
        let field = format!("backends[{i}]");
        let id_ok = !b.id.is_empty()
            && b.id.len() <= 64
            && b.id.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
        if !id_ok {
            p.add(format!("{field}.id"), format!("\"{}\" must be 1-64 characters of A-Z a-z 0-9 - _ .", b.id));
        } else if let Some(first) = seen.insert(b.id.clone(), i) {
            p.add(format!("{field}.id"), format!("duplicate id \"{}\" (first defined at backends[{first}])", b.id));
        }
        let url: Option<http::Uri> = match b.url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => {
                if u.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
                    p.add(
                        format!("{field}.url"),
                        "give only scheme, host and port; set paths with node_red.admin_root / node_root",
                    );
                    None
                } else {
                    Some(u)
                }
            }
            _ => {
                p.add(
                    format!("{field}.url"),
                    format!("\"{}\" is not an http URL like \"http://127.0.0.1:1880\"", b.url),
                );
                None
            }
        };
        let token = p.secret(&format!("{field}.token"), &b.token, secrets);
        let restart = b.restart.as_ref().and_then(|r| restart_command(&mut p, &format!("{field}.restart"), r));
        let ca = b.ca.as_deref().map(at);
        if let Some(ca) = &ca
            && !ca.is_file()
        {
            p.add(format!("{field}.ca"), format!("{} is not a readable PEM file", ca.display()));
        }
        if let (true, Some(url)) = (id_ok, url) {
            let scheme = url.scheme().expect("checked above").clone();
            if scheme == http::uri::Scheme::HTTPS && ca.is_none() {
                p.add(
                    format!("{field}.ca"),
                    "an https:// instance needs `ca: PATH` (the PEM of the CA that signed its certificate)",
                );
            }
            backends.push(BackendConfig {
                id: BackendId::from(b.id.as_str()),
                scheme,
                ca,
                authority: url.authority().expect("checked above").clone(),
                priority: b.priority.unwrap_or(DEFAULT_PRIORITY),
                token,
                restart,
            });
        }
    }

    let node_red = NodeRedPaths {
        admin_root: root(&mut p, "node_red.admin_root", &raw.node_red.admin_root),
        node_root: root(&mut p, "node_red.node_root", &raw.node_red.node_root),
    };

    let h = &raw.health;
    let interval = p.duration("health.interval", &h.interval, DEFAULT_INTERVAL);
    let timeout = p.duration("health.timeout", &h.timeout, DEFAULT_TIMEOUT);
    if interval < Duration::from_millis(10) {
        p.add("health.interval", "must be at least 10ms");
    }
    if timeout < Duration::from_millis(10) {
        p.add("health.timeout", "must be at least 10ms");
    }
    let rise = h.rise.unwrap_or(DEFAULT_RISE);
    let fall = h.fall.unwrap_or(DEFAULT_FALL);
    if rise == 0 {
        p.add("health.rise", "must be at least 1");
    }
    if fall == 0 {
        p.add("health.fall", "must be at least 1");
    }
    let canary = match h.canary.as_deref().map(str::trim) {
        None => None,
        Some(c) if c.is_empty() || !is_uri_path(&format!("/{}", c.trim_start_matches('/'))) => {
            p.add("health.canary", format!("\"{c}\" is not a path (letters, digits and - . _ ~ / or %XX)"));
            None
        }
        Some(c) => Some(format!("{}{}", node_red.node_root, c.trim_start_matches('/'))),
    };
    let health = HealthConfig {
        interval,
        timeout,
        rise: rise.max(1),
        fall: fall.max(1),
        canary,
        promotion_grace: p.duration("health.promotion_grace", &h.promotion_grace, DEFAULT_PROMOTION_GRACE),
    };

    let f = &raw.failover;
    let failover = FailoverConfig {
        failback: f.failback.unwrap_or(false),
        failback_delay: p.duration("failover.failback_delay", &f.failback_delay, DEFAULT_FAILBACK_DELAY),
        hold: p.duration("failover.hold", &f.hold, DEFAULT_HOLD),
        stop_timeout: p.duration("failover.stop_timeout", &f.stop_timeout, DEFAULT_STOP_TIMEOUT),
        start_timeout: p.duration("failover.start_timeout", &f.start_timeout, DEFAULT_START_TIMEOUT),
        deadman: f.deadman.as_ref().map(|_| p.duration("failover.deadman", &f.deadman, Duration::ZERO)),
    };

    let r = &raw.recovery;
    let recovery = RecoveryConfig {
        automatic: r.automatic.unwrap_or(true),
        hung_for: p.duration("recovery.hung_for", &r.hung_for, DEFAULT_HUNG_FOR),
        down_for: p.duration("recovery.down_for", &r.down_for, DEFAULT_DOWN_FOR),
        start_timeout: p.positive("recovery.start_timeout", &r.start_timeout, DEFAULT_RECOVERY_START),
        max_restarts: r.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
        window: p.positive("recovery.window", &r.window, DEFAULT_RESTART_WINDOW),
        backoff: p.duration("recovery.backoff", &r.backoff, DEFAULT_RESTART_BACKOFF),
    };

    let readiness_ignore = raw.readiness.ignore.clone().unwrap_or_default();
    for (i, k) in readiness_ignore.iter().enumerate() {
        if !crate::readiness::KINDS.contains(&k.as_str()) {
            p.add(
                format!("readiness.ignore[{i}]"),
                format!("\"{k}\" is no hazard kind; kinds: {}", crate::readiness::KINDS.join(", ")),
            );
        }
    }

    let mut trusted_proxies = Vec::new();
    for (i, t) in raw.proxy.trusted_proxies.iter().flatten().enumerate() {
        match t.parse::<Cidr>() {
            Ok(c) => trusted_proxies.push(c),
            Err(e) => p.add(format!("proxy.trusted_proxies[{i}]"), e),
        }
    }

    let cookie = raw.editor.cookie.clone().unwrap_or_else(|| DEFAULT_COOKIE.to_string());
    if cookie.is_empty() || !cookie.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c)) {
        p.add("editor.cookie", format!("\"{cookie}\" must be letters, digits, - and _"));
    }
    let editor = EditorConfig { cookie, cookie_key: p.secret("editor.cookie_key", &raw.editor.cookie_key, secrets) };
    let max_body = match raw.deploy.max_body.as_deref().map(parse_size) {
        None => DEFAULT_MAX_BODY,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            p.add("deploy.max_body", e);
            DEFAULT_MAX_BODY
        }
    };
    let deploy = DeployConfig {
        max_body,
        timeout: p.duration("deploy.timeout", &raw.deploy.timeout, DEFAULT_DEPLOY_TIMEOUT),
        palette_timeout: p.duration("deploy.palette_timeout", &raw.deploy.palette_timeout, DEFAULT_PALETTE_TIMEOUT),
    };
    let state =
        StateConfig { dir: raw.state.dir.as_deref().map(at), key: p.secret("state.key", &raw.state.key, secrets) };

    let cluster = raw.cluster.as_ref().map(|c| cluster::cluster(&mut p, c, secrets, &at, listen.proxy));
    if let Some(d) = failover.deadman {
        // Heartbeats come with the probes: several must fit in the bound, and with replicas a
        // new controller must take over (lease) before the instances stop themselves.
        let lease = cluster.as_ref().map_or(Duration::ZERO, |c| c.lease_ttl);
        let least = health.interval * 3 + health.timeout + lease;
        if d < least {
            p.add("failover.deadman", format!("must be at least {least:?} (3 probe intervals + the probe timeout, + a lease with replicas) or the instances stop their flows between heartbeats"));
        }
        // A hang or partition then fails over after the bound: held requests must outlast it.
        let hold = d + health.timeout + Duration::from_secs(1);
        if failover.hold < hold {
            p.add("failover.hold", format!("must be at least {hold:?} with failover.deadman {d:?}: a hang or partition fails over after the dead-man bound, and held requests would get 503 first"));
        }
    }

    let mode = match raw.mode.as_deref() {
        None | Some("hot-spare") => crate::readiness::Mode::HotSpare,
        Some("load-balanced") => crate::readiness::Mode::LoadBalanced,
        Some(other) => {
            p.add("mode", format!("\"{other}\" is not a mode; use \"hot-spare\" or \"load-balanced\""));
            crate::readiness::Mode::HotSpare
        }
    };
    if mode == crate::readiness::Mode::LoadBalanced {
        if cluster.is_some() {
            p.add("mode", "load-balanced runs with one flowgate: remove cluster: or use mode: hot-spare (replicas keep one active)");
        }
        if failover.deadman.is_some() {
            p.add("failover.deadman", "is for hot-spare replicas: in load-balanced mode every instance runs its flows");
        }
    }

    let l = &raw.limits;
    let max_header_bytes = match l.max_header_bytes.as_deref().map(parse_size) {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(Ok(n)) if n >= 8192 => n,
        Some(Ok(_)) => {
            p.add("limits.max_header_bytes", "must be at least 8KiB");
            DEFAULT_MAX_HEADER_BYTES
        }
        Some(Err(e)) => {
            p.add("limits.max_header_bytes", e);
            DEFAULT_MAX_HEADER_BYTES
        }
    };
    let limits = super::model::Limits {
        header_read_timeout: p.duration(
            "limits.header_read_timeout",
            &l.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
        ),
        max_header_bytes,
        max_headers: l.max_headers.unwrap_or(DEFAULT_MAX_HEADERS).max(1) as usize,
        max_connections: l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1) as usize,
        upstream_connections: l.upstream_connections.unwrap_or(DEFAULT_UPSTREAM_CONNECTIONS).max(1) as usize,
        upstream_queue_timeout: p.duration(
            "limits.upstream_queue_timeout",
            &l.upstream_queue_timeout,
            DEFAULT_UPSTREAM_QUEUE_TIMEOUT,
        ),
    };
    let shutdown_grace = p.duration("shutdown.grace", &raw.shutdown.grace, DEFAULT_GRACE);

    let json = match raw.log.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            p.add("log.format", format!("\"{other}\" is not a format; use \"text\" or \"json\""));
            false
        }
    };

    if p.0.is_empty() {
        Ok(Config {
            mode,
            listen,
            admin_token,
            admin_read_token,
            backends,
            node_red,
            health,
            failover,
            recovery,
            readiness_ignore,
            trusted_proxies,
            editor,
            deploy,
            state,
            tls,
            admin_tls,
            cluster,
            limits,
            shutdown_grace,
            log: LogConfig { level: raw.log.level, json, access: raw.log.access.unwrap_or(false) },
        })
    } else {
        Err(p.0)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not an IP address or CIDR block like \"10.0.0.0/8\"");
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => l.trim().parse::<u8>().ok().filter(|&l| l <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { addr, prefix })
    }
}

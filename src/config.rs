//! Configuration: YAML file → `RawConfig` (serde, unknown keys rejected) → validated `Config`.
//!
//! `load` is the only function that names the YAML library. Every problem is reported with its
//! field path and, where it can be found, its line: `backends[1].url (line 9): …`.

mod locate;
pub mod raw;
mod units;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use units::{parse_duration, parse_size};
pub use validate::{SecretSource, System};

use crate::backend::BackendId;

/// A validated configuration. Downstream code never re-checks these values.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub admin_token: Option<Secret>,
    pub backends: Vec<BackendConfig>,
    pub node_red: NodeRedPaths,
    pub health: HealthConfig,
    pub failover: FailoverConfig,
    pub trusted_proxies: Vec<Cidr>,
    pub editor: EditorConfig,
    pub deploy: DeployConfig,
    pub state: StateConfig,
    pub tls: Option<TlsConfig>,
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
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub id: BackendId,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub ca: Option<PathBuf>,
    pub priority: i64,
    pub token: Option<Secret>,
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
    addr: IpAddr,
    prefix: u8,
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

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text, path, &System)
}

/// Parses and validates config text; `path` names the file in messages, and relative paths in
/// the text are relative to its folder.
pub fn parse(text: &str, path: &Path, secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
    // An empty document is an empty mapping, so that "no backends" is reported as such.
    let raw: raw::RawConfig = if text.trim().is_empty() {
        raw::RawConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })?
    };
    let base = path.parent().unwrap_or(Path::new(""));
    validate::validate(raw, secrets, base).map_err(|mut problems| {
        for p in &mut problems {
            p.line = locate::line_of(text, &p.field);
        }
        ConfigError::Invalid { path: path.to_owned(), problems }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>);
    impl SecretSource for Fake {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn file(&self, path: &str) -> std::io::Result<String> {
            self.0.get(path).map(|s| s.to_string()).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    fn parse_with(text: &str, secrets: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        parse(text, Path::new("test.yaml"), &Fake(secrets.iter().copied().collect()))
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse_with(text, &[]) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn example_config_loads() {
        let text = include_str!("../config/flowgate.example.yaml");
        let secrets = Fake(
            [
                ("NR_A_TOKEN", "tok-a"),
                ("NR_B_TOKEN", "tok-b"),
                ("FLOWGATE_ADMIN_TOKEN", "adm"),
                ("FLOWGATE_COOKIE_KEY", "ck"),
                ("FLOWGATE_STATE_KEY", "sk"),
            ]
            .into_iter()
            .collect(),
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/flowgate.example.yaml");
        let cfg = parse(text, &path, &secrets).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.backends.len(), 2);
        assert_eq!(cfg.backends[0].token.as_ref().map(Secret::expose), Some("tok-a"));
        assert_eq!(cfg.health.canary.as_deref(), Some("/flowgate/canary"));
    }

    #[test]
    fn defaults_apply_to_a_minimal_file() {
        let cfg = parse_with("backends:\n  - id: a\n    url: http://127.0.0.1:1880\n", &[]).unwrap();
        assert_eq!(cfg.listen.proxy, Some("0.0.0.0:1880".parse().unwrap()));
        assert_eq!((cfg.listen.https, cfg.listen.redirect), (None, None));
        assert_eq!(cfg.limits.max_header_bytes, 64 << 10);
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(10));
        assert_eq!(cfg.listen.admin, "127.0.0.1:9901".parse().unwrap(), "admin is loopback by default");
        assert_eq!(cfg.health.interval, Duration::from_millis(500));
        assert_eq!(cfg.health.timeout, Duration::from_millis(400));
        assert_eq!((cfg.health.rise, cfg.health.fall), (2, 2));
        assert!(!cfg.failover.failback, "failback is off by default");
        assert_eq!(cfg.failover.hold, Duration::from_secs(5));
        assert_eq!(cfg.node_red, NodeRedPaths { admin_root: "/".into(), node_root: "/".into() });
        assert_eq!(cfg.backends[0].priority, 100);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let err = parse_with("backends:\n  - id: a\n    url: http://x:1\n    urll: y\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{msg}");
        assert!(msg.contains("urll") && msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn every_problem_is_listed_with_field_and_line() {
        let text = "\
listen:
  proxy: nonsense
backends:
  - id: a
    url: http://127.0.0.1:1
  - id: a
    url: ftp://x
health:
  interval: 5
  rise: 0
failover:
  hold: 3 days
";
        let got: Vec<(String, Option<usize>)> = problems(text).into_iter().map(|p| (p.field, p.line)).collect();
        let want = [
            ("listen.proxy", 2),
            ("backends[1].id", 6),
            ("backends[1].url", 7),
            ("health.interval", 9),
            ("health.rise", 10),
            ("failover.hold", 12),
        ];
        for (field, line) in want {
            assert!(got.contains(&(field.to_string(), Some(line))), "{field} at {line} missing from {got:?}");
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
    }

    #[test]
    fn secrets_come_from_env_or_file_and_are_never_printed() {
        let text =
            "backends:\n  - id: a\n    url: http://x:1\n    token: { file: /run/tok }\nadmin:\n  token: { env: ADM }\n";
        let cfg = parse_with(text, &[("/run/tok", "s3cret\n"), ("ADM", "adm")]).unwrap();
        assert_eq!(cfg.backends[0].token.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let p = problems("backends:\n  - id: a\n    url: http://x:1\n    token: { env: MISSING }\n");
        assert_eq!(p[0].field, "backends[0].token.env");
        assert!(p[0].message.contains("MISSING"));
        let p = problems("backends:\n  - id: a\n    url: http://x:1\n    token: { env: A, file: B }\n");
        assert_eq!(p[0].field, "backends[0].token");
    }

    #[test]
    fn empty_file_says_backends_are_needed() {
        let p = problems("");
        assert_eq!(p[0].field, "backends");
    }

    #[test]
    fn roots_and_canary_are_normalised() {
        let cfg = parse_with(
            "backends: [{id: a, url: \"http://x:1\"}]\nnode_red: {admin_root: admin, node_root: /api/}\nhealth: {canary: /alive}\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.node_red.admin_root, "/admin/");
        assert_eq!(cfg.node_red.node_root, "/api/");
        assert_eq!(cfg.health.canary.as_deref(), Some("/api/alive"));
    }

    #[test]
    fn cidr_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }
}

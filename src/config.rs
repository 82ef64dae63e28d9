//! Configuration: YAML file → `RawConfig` (serde, unknown keys rejected) → validated `Config`.
//!
//! `load` is the only function that names the YAML library. Every problem is reported with its
//! field path and, where it can be found, its line: `backends[1].url (line 9): …`.

mod locate;
mod model;
pub mod raw;
mod units;
mod validate;

use std::path::Path;

pub use model::*;
pub use units::{parse_duration, parse_size};
pub use validate::{DEFAULT_ADMIN_ADDR, SecretSource, System};

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
    use std::time::Duration;

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
                ("FLOWGATE_ADMIN_TOKEN", "adm-token-0123456789"),
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
        let cfg = parse_with(text, &[("/run/tok", "s3cret\n"), ("ADM", "adm-token-0123456789")]).unwrap();
        assert_eq!(cfg.backends[0].token.as_ref().unwrap().expose(), "s3cret");
        match parse_with(text, &[("/run/tok", "s3cret\n"), ("ADM", "short")]) {
            Err(ConfigError::Invalid { problems, .. }) => {
                assert_eq!(problems[0].field, "admin.token");
                assert!(problems[0].message.contains("at least 16"), "{}", problems[0].message);
            }
            other => panic!("a short admin token is refused: {other:?}"),
        }
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

    #[test]
    fn the_cluster_section_is_checked_field_by_field() {
        let base = "listen: { proxy: \"10.0.0.5:1880\" }\nbackends: [{id: a, url: \"http://127.0.0.1:1\"}]\n";
        let c = parse_with(&format!("{base}cluster: {{ id: fg-1, etcd: [\"http://127.0.0.1:2379\"] }}\n"), &[])
            .unwrap()
            .cluster
            .expect("cluster");
        assert_eq!((c.prefix.as_str(), c.lease_ttl), ("/flowgate/", Duration::from_secs(2)));
        assert_eq!(c.advertise, "http://10.0.0.5:1880", "from listen.proxy");
        let open = "backends: [{id: a, url: \"http://127.0.0.1:1\"}]\ncluster: { id: fg-1, etcd: [\"http://127.0.0.1:2379\"] }\n";
        let p = problems(open);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "cluster.advertise");
        assert!(p[0].message.starts_with("listen.proxy is 0.0.0.0:1880: give the http://HOST:PORT"), "{}", p[0]);
        let c = parse_with(&open.replace("] }", "], advertise: \"http://fg-1.plant:1880/\" }"), &[]).unwrap();
        assert_eq!(c.cluster.unwrap().advertise, "http://fg-1.plant:1880");
        let bad = format!(
            "{base}cluster: {{ id: \"fg 1\", etcd: [\"127.0.0.1:2379\"], prefix: x, lease_ttl: 1500ms, user: u }}\n"
        );
        let fields: Vec<String> = problems(&bad).into_iter().map(|p| p.field).collect();
        for f in ["cluster.id", "cluster.etcd[0]", "cluster.prefix", "cluster.lease_ttl", "cluster.user"] {
            assert!(fields.iter().any(|x| x == f), "{f} not reported in {fields:?}");
        }
        let fields: Vec<String> =
            problems(&format!("{base}cluster: {{ id: a, etcd: [] }}\n")).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["cluster.etcd"]);
        let fields =
            |y: &str| -> Vec<String> { problems(&format!("{base}{y}")).into_iter().map(|p| p.field).collect() };
        assert_eq!(fields("cluster: { id: a, etcd: [\"https://127.0.0.1:2379\"] }\n"), ["cluster.tls"]);
        assert_eq!(
            fields("cluster: { id: a, etcd: [\"http://127.0.0.1:2379\"], tls: { ca: x.pem } }\n"),
            ["cluster.tls"]
        );
        assert_eq!(
            fields(
                "cluster: { id: a, etcd: [\"https://127.0.0.1:2379\"], tls: { ca: /nonexistent/ca.pem, cert: c.pem } }\n"
            ),
            ["cluster.tls.ca", "cluster.tls.cert"]
        );
    }

    #[test]
    fn restart_commands_and_recovery_are_checked_with_field_and_line() {
        let ok = "backends:\n  - id: a\n    url: http://127.0.0.1:1\n    restart: { command: [systemctl, restart, node-red@a] }\n";
        let c = parse_with(ok, &[]).unwrap();
        let r = c.backends[0].restart.as_ref().expect("a restart command");
        assert_eq!((r.argv.len(), r.timeout), (3, Duration::from_secs(60)));
        assert_eq!(
            (c.recovery.hung_for, c.recovery.down_for, c.recovery.max_restarts),
            (Duration::from_secs(5), Duration::from_secs(30), 3)
        );
        let bad = "backends:\n  - id: a\n    url: http://127.0.0.1:1\n    restart:\n      command: [\"systemctl restart node-red@a\"]\n  - id: b\n    url: http://127.0.0.1:2\n    restart: { command: [], timeout: 0s }\nrecovery: { window: 0s, hung_for: soon }\n";
        let p = problems(bad);
        let find = |f: &str| p.iter().find(|x| x.field == f).unwrap_or_else(|| panic!("{f} not reported in {p:?}"));
        let one = find("backends[0].restart.command");
        assert!(one.message.contains("without a shell, one list item per argument"), "{one}");
        assert_eq!(one.line, Some(5));
        assert!(find("backends[1].restart.command").message.contains("give the program"));
        assert_eq!(find("backends[1].restart.timeout").message, "must be more than 0s");
        find("recovery.window");
        find("recovery.hung_for");
    }

    #[test]
    fn mode_is_hot_spare_or_load_balanced_and_load_balanced_runs_alone() {
        let base = "backends: [{id: a, url: \"http://127.0.0.1:1\"}]\n";
        assert_eq!(parse_with(base, &[]).unwrap().mode, crate::readiness::Mode::HotSpare);
        let c = parse_with(&format!("{base}mode: load-balanced\n"), &[]).unwrap();
        assert_eq!(c.mode, crate::readiness::Mode::LoadBalanced);
        let p = problems(&format!("{base}mode: balanced\n"));
        assert_eq!((p[0].field.as_str(), p[0].line), ("mode", Some(2)));
        assert!(p[0].message.contains("\"hot-spare\" or \"load-balanced\""), "{}", p[0]);
        let p = problems(&format!(
            "{base}mode: load-balanced\nlisten: {{ proxy: \"127.0.0.1:8080\" }}\ncluster: {{ id: r1, etcd: [\"http://127.0.0.1:2379\"] }}\n"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].field == "mode" && p[0].message.contains("remove cluster:"), "{}", p[0]);
    }

    #[test]
    fn admin_tls_needs_a_certificate_folder_its_own_or_the_shared_one() {
        let base = "backends: [{id: a, url: \"http://127.0.0.1:1\"}]\n";
        let p = problems(&format!("{base}admin:\n  tls: {{}}\n"));
        assert_eq!((p[0].field.as_str(), p[0].line), ("admin.tls.certs", Some(3)));
        assert!(p[0].message.contains("or set tls.certs"), "{}", p[0]);
        let dir = std::env::temp_dir();
        let c = parse_with(
            &format!("{base}tls: {{ certs: \"{}\", default: x }}\nadmin: {{ tls: {{}} }}\n", dir.display()),
            &[],
        )
        .unwrap();
        let t = c.admin_tls.expect("shares tls.certs");
        assert_eq!((t.certs, t.default.as_deref()), (dir, Some("x")));
    }

    #[test]
    fn readiness_ignore_takes_only_known_kinds() {
        let base = "backends: [{id: a, url: \"http://127.0.0.1:1\"}]\n";
        let c = parse_with(&format!("{base}readiness: {{ ignore: [memory_context] }}\n"), &[]).unwrap();
        assert_eq!(c.readiness_ignore, ["memory_context"]);
        let p = problems(&format!("{base}readiness:\n  ignore: [memory_context, contexts]\n"));
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].field.as_str(), p[0].line), ("readiness.ignore[1]", Some(3)));
        assert!(
            p[0].message.starts_with("\"contexts\" is no hazard kind; kinds: memory_context, mqtt_qos0"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn the_deadman_bound_must_cover_heartbeats_a_takeover_and_the_hold() {
        let base = "listen: { proxy: \"10.0.0.5:1880\" }\nbackends: [{id: a, url: \"http://127.0.0.1:1\"}]\n";
        let c = parse_with(&format!("{base}failover: {{ deadman: 4s, hold: 6s }}\n"), &[]).unwrap();
        assert_eq!(c.failover.deadman, Some(Duration::from_secs(4)));
        assert_eq!(parse_with(base, &[]).unwrap().failover.deadman, None, "off by default");
        let fields =
            |y: &str| -> Vec<String> { problems(&format!("{base}{y}")).into_iter().map(|p| p.field).collect() };
        assert_eq!(fields("failover: { deadman: 1s }\n"), ["failover.deadman"]);
        assert_eq!(fields("failover: { deadman: 4s }\n"), ["failover.hold"], "the default hold (5s) is too short");
        let replicas = "cluster: { id: a, etcd: [\"http://127.0.0.1:2379\"], lease_ttl: 3s }\n";
        assert_eq!(
            fields(&format!("failover: {{ deadman: 4s, hold: 6s }}\n{replicas}")),
            ["failover.deadman"],
            "a takeover must fit"
        );
    }
}

//! The `flowgate` binary: `check` lists every problem and exits non-zero; `prepare-standby`;
//! a bad `FLOWGATE_WORKERS` is refused.

use std::process::Command;

fn flowgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowgate"))
}

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_example_config() {
    let out = flowgate()
        .args(["check", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/flowgate.example.yaml")])
        .env("NR_A_TOKEN", "a")
        .env("NR_B_TOKEN", "b")
        .env("FLOWGATE_ADMIN_TOKEN", "c-admin-token-0123456")
        .env("FLOWGATE_COOKIE_KEY", "d")
        .env("FLOWGATE_STATE_KEY", "e")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 backends)"));
}

#[test]
fn check_lists_every_problem_with_field_and_line_and_exits_64() {
    let p = temp(
        "bad.yaml",
        "backends:\n  - id: a\n    url: http://127.0.0.1:1\n  - id: a\n    url: nope\nhealth:\n  fall: 0\n",
    );
    let out = flowgate().args(["check", "--config", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(err.contains("backends[1].id (line 4): duplicate id \"a\""), "{err}");
    assert!(err.contains("backends[1].url (line 5)"), "{err}");
    assert!(err.contains("health.fall (line 7): must be at least 1"), "{err}");
}

#[test]
fn check_reports_unknown_keys_and_missing_files() {
    let p = temp("typo.yaml", "backends: []\nhealth:\n  intervall: 1s\n");
    let out = flowgate().args(["check", "--config", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `intervall`") && err.contains("line 3"), "{err}");
    let out = flowgate().args(["check", "--config", "/nonexistent/flowgate.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/flowgate.yaml"));
}

#[test]
fn prepare_standby_sets_the_stopped_state() {
    let dir = std::env::temp_dir().join(format!("flowgate-cli-standby-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = flowgate().args(["prepare-standby", "--user-dir", dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(".config.runtime.json")).unwrap()).unwrap();
    assert_eq!(v["runtimeFlowState"], "stop");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_worker_count_is_refused_with_exit_64() {
    let p = temp("ok.yaml", "backends:\n  - id: a\n    url: http://127.0.0.1:1\n");
    for bad in ["0", "two", "-1"] {
        let out =
            flowgate().args(["run", "--config", p.to_str().unwrap()]).env("FLOWGATE_WORKERS", bad).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "FLOWGATE_WORKERS={bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("FLOWGATE_WORKERS") && err.contains(bad), "{err}");
    }
}

#[test]
fn check_connect_says_when_etcd_cannot_be_reached() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = temp(
        "cluster.yaml",
        &format!(
            "listen: {{ proxy: \"127.0.0.1:1\" }}\nbackends: [{{id: a, url: \"http://127.0.0.1:1\"}}]\ncluster: {{ id: fg-1, etcd: [\"http://127.0.0.1:{port}\"] }}\n"
        ),
    );
    let out = flowgate().args(["check", "--connect", "--config", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}")));
}

/// Values that used to pass `check` and then panic in `run` (or during a reload), and a secret
/// written inline, which the YAML error used to quote: each exits 64 with a message naming the
/// field, and no secret is echoed.
#[test]
fn values_that_used_to_panic_are_refused_with_exit_64_and_no_secret_is_echoed() {
    let certs = std::env::temp_dir().join(format!("flowgate-cli-certs-{}", std::process::id()));
    std::fs::create_dir_all(&certs).unwrap();
    let base = "backends:\n  - id: a\n    url: http://127.0.0.1:1\n";
    let cases = [
        (
            format!("{base}tls:\n  certs: {}\n  reload_interval: 0s\n", certs.display()),
            "tls.reload_interval",
            "more than 0s",
        ),
        (format!("{base}node_red:\n  admin_root: \"/a b/\"\n"), "node_red.admin_root", "not a path prefix"),
        (format!("{base}node_red:\n  node_root: \"/<x>/\"\n"), "node_red.node_root", "not a path prefix"),
        (format!("{base}health:\n  canary: \"/can`ary`\"\n"), "health.canary", "not a path"),
        (format!("{base}admin:\n  token: s3cr3t-inline-value\n"), "line 5", "never written in the file"),
        (format!("{base}admin:\n  token: 123456789\n"), "line 5", "never written in the file"),
    ];
    for (i, (yaml, field, says)) in cases.iter().enumerate() {
        let p = temp(&format!("panic-{i}.yaml"), yaml);
        for cmd in ["check", "run"] {
            let out = flowgate().args([cmd, "--config", p.to_str().unwrap()]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{cmd} {field}: {err}");
            assert!(err.contains(field) && err.contains(says), "{cmd} {field}: {err}");
            assert!(!err.contains("panicked"), "{cmd} {field}: {err}");
            assert!(!err.contains("s3cr3t") && !err.contains("123456789"), "{cmd}: a secret was echoed: {err}");
        }
    }
}

#[test]
fn check_flows_names_every_hazard_per_mode_and_none_for_a_clean_flow() {
    let fixture = |f: &str| format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
    let out = flowgate().args(["check", "--flows", &fixture("ha-hazards.json")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{text}");
    assert!(out.status.success(), "advice only: {text}");
    let (hot, lb) = text.split_once("load-balanced:").expect("both modes reported");
    assert!(hot.contains("hot-spare: 6 finding(s)") && lb.starts_with(" 10 finding(s)"), "{text}");
    for (kind, node) in [
        ("memory_context", "ctx"),
        ("inject_once", "once"),
        ("mqtt_qos0", "q0"),
        ("mqtt_session", "b1"),
        ("local_files", "file"),
    ] {
        assert!(hot.contains(&format!("{kind:<15} {node} ")), "{kind} {node} missing for hot-spare: {hot}");
    }
    for (kind, node) in [
        ("inject_repeat", "tick"),
        ("mqtt_unshared", "q0"),
        ("mqtt_client_id", "b2"),
        ("stateful", "join"),
        ("stateful", "rate"),
    ] {
        assert!(lb.contains(&format!("{kind:<15} {node} ")), "{kind} {node} missing for load-balanced: {lb}");
        assert!(!hot.contains(&format!("{kind:<15} {node} ")), "{kind} is no hazard for hot-spare");
    }
    let strict = flowgate()
        .args(["check", "--flows", &fixture("ha-hazards.json"), "--mode", "hot-spare", "--strict"])
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&strict.stdout).contains("load-balanced"));

    let out = flowgate().args(["check", "--flows", &fixture("ha-clean.json"), "--strict"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("hot-spare: no findings") && text.contains("load-balanced: no findings"), "{text}");

    let bad = temp("notflows.json", "{\"nodes\": 1}");
    let out = flowgate().args(["check", "--flows", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a flows file"));
}

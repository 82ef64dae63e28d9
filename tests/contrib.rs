//! Every metric the Grafana dashboard and the alert rules use exists in flowgate's /metrics.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

fn used_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("flowgate_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_string());
        i = end;
    }
    out
}

#[tokio::test]
async fn dashboard_and_alert_rules_use_only_existing_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("contrib/grafana/flowgate-dashboard.json")).unwrap();
    let rules = std::fs::read_to_string(root.join("contrib/prometheus/flowgate-alerts.yml")).unwrap();
    let _: serde_yaml::Value = serde_yaml::from_str(&rules).expect("the rules are YAML");
    let _: support::fake_node_red::serde_json::Value =
        support::fake_node_red::serde_json::from_str(&dashboard).expect("the dashboard is JSON");

    // A flowgate with TLS, so the certificate metric is present too.
    let certs = std::env::temp_dir().join(format!("flowgate-contrib-{}", std::process::id()));
    std::fs::create_dir_all(&certs).unwrap();
    let (c, k) = flowgate::traffic::tls::self_signed(&["localhost"]).unwrap();
    std::fs::write(certs.join("localhost.crt"), c).unwrap();
    std::fs::write(certs.join("localhost.key"), k).unwrap();
    let fa = FakeNodeRed::start("a", Options::default(), EventLog::default()).await;
    let y = format!("tls: {{ certs: \"{}\" }}\n{}", certs.display(), yaml(&[("a", fa.url(), 100)], ""));
    let cfg = flowgate::config::parse(&y, std::path::Path::new("t.yaml"), &Secrets(vec![])).unwrap();
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let listeners = flowgate::Listeners {
        proxy: Some(bind().await),
        https: Some(bind().await),
        redirect: None,
        admin: bind().await,
    };
    let h = flowgate::start(cfg, listeners, None).unwrap();
    eventually(Duration::from_secs(5), "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let _ = get(&client(), &format!("http://{}/hello", h.proxy_addr)).await.unwrap();
    let exposed = metrics(&h).await;
    let families: BTreeSet<String> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let known = |name: &str| {
        families.contains(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(|b| families.contains(b)))
    };
    let used: BTreeSet<String> = used_names(&dashboard).union(&used_names(&rules)).cloned().collect();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !known(n)).collect();
    assert!(missing.is_empty(), "used but not exposed: {missing:?}\nexposed: {families:?}");
    let _ = std::fs::remove_dir_all(certs);
}

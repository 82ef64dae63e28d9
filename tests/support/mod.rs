//! Test harness: flowgate in-process on port 0 in front of fake instances, plus helpers.
#![allow(dead_code)]

pub mod browser;
pub mod etcd;
pub mod fake_node_red;
pub mod mosquitto;
pub mod node_red;
pub mod relay;
pub mod replica;
pub mod stream;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[allow(unused_imports)]
pub use fake_node_red::{EventLog, FakeNodeRed, Options};

/// Polls `cond` every 10 ms until it holds or `limit` passes; panics with `what` then.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Secrets(pub Vec<(&'static str, String)>);

impl flowgate::config::SecretSource for Secrets {
    fn env(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    }
    fn file(&self, _: &str) -> std::io::Result<String> {
        Err(std::io::ErrorKind::NotFound.into())
    }
}

/// Logs go to the test's captured output (shown when it fails); RUST_LOG filters, default warn.
pub fn trace_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Starts flowgate from YAML text (listen addresses are replaced by port 0).
pub async fn start_flowgate(yaml: &str, secrets: Secrets) -> flowgate::Handle {
    trace_init();
    let cfg = flowgate::config::parse(yaml, Path::new("test.yaml"), &secrets).unwrap_or_else(|e| panic!("{e}"));
    let listeners = flowgate::Listeners::plain(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    flowgate::start(cfg, listeners, None).unwrap()
}

/// YAML for fakes `(id, url, priority)` with fast test timings and extra sections appended.
pub fn yaml(backends: &[(&str, String, i64)], extra: &str) -> String {
    let mut y = String::from("backends:\n");
    for (id, url, prio) in backends {
        y.push_str(&format!("  - {{ id: {id}, url: \"{url}\", priority: {prio} }}\n"));
    }
    if !extra.contains("health:") {
        y.push_str("health: { interval: 50ms, timeout: 150ms, rise: 2, fall: 2, promotion_grace: 0ms }\n");
    }
    if !extra.contains("failover:") {
        y.push_str("failover: { hold: 3s }\n");
    }
    y.push_str(extra);
    y
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

pub async fn send(c: &HttpClient, method: &str, url: &str, body: &str) -> Result<Reply, String> {
    send_with(c, method, url, body, &[]).await
}

pub async fn send_with(
    c: &HttpClient,
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

pub async fn get(c: &HttpClient, url: &str) -> Result<Reply, String> {
    send(c, "GET", url, "").await
}

/// `/status` of a running flowgate, as JSON.
pub async fn status(h: &flowgate::Handle) -> serde_json::Value {
    let r = get(&client(), &format!("http://{}/status", h.admin_addr)).await.unwrap();
    serde_json::from_str(&r.body).unwrap()
}

pub async fn active(h: &flowgate::Handle) -> Option<String> {
    status(h).await["active"].as_str().map(str::to_string)
}

pub async fn metrics(h: &flowgate::Handle) -> String {
    get(&client(), &format!("http://{}/metrics", h.admin_addr)).await.unwrap().body
}

/// The value of one sample line in Prometheus text, e.g. `flowgate_failovers_total{reason="crash"}`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn empty_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Waits until `id` is the active instance.
pub async fn wait_active(h: &flowgate::Handle, id: &str, limit: Duration) {
    eventually(limit, &format!("{id} active"), || async { active(h).await.as_deref() == Some(id) }).await;
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Fakes "a" and "b" requiring the tokens `need`, and flowgate sending them `send`, with
/// `priority` each. Probes every 50 ms.
pub async fn token_pair(
    need: [&str; 2],
    send: [&str; 2],
    priority: [i64; 2],
) -> (FakeNodeRed, FakeNodeRed, flowgate::Handle) {
    token_pair_with(need, send, priority, "").await
}

/// [`token_pair`] with `extra` YAML appended.
pub async fn token_pair_with(
    need: [&str; 2],
    send: [&str; 2],
    priority: [i64; 2],
    extra: &str,
) -> (FakeNodeRed, FakeNodeRed, flowgate::Handle) {
    let log = EventLog::default();
    let tok = |t: &str| Options { token: Some(t.into()), ..Options::default() };
    let fa = FakeNodeRed::start("a", tok(need[0]), log.clone()).await;
    let fb = FakeNodeRed::start("b", tok(need[1]), log).await;
    let y = format!(
        "backends:\n  - {{ id: a, url: \"{}\", priority: {}, token: {{ env: TA }} }}\n  - {{ id: b, url: \"{}\", priority: {}, token: {{ env: TB }} }}\nhealth: {{ interval: 50ms, timeout: 150ms }}\n{extra}",
        fa.url(),
        priority[0],
        fb.url(),
        priority[1]
    );
    let h = start_flowgate(&y, Secrets(vec![("TA", send[0].into()), ("TB", send[1].into())])).await;
    (fa, fb, h)
}

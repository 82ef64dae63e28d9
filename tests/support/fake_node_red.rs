//! An in-process stand-in for one Node-RED instance, on 127.0.0.1:0. It speaks the parts of
//! the admin API flowgate uses (flows/state GET/POST, settings), serves "http-in" routes only
//! while its flows are started (404 when stopped, like Node-RED), and can crash (listener and
//! connections dropped), hang (TCP accepted, nothing answered) and restart on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use serde_json;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Flow-state changes seen by every fake of one test, in order: ("a", "stop").
pub type EventLog = Arc<Mutex<Vec<(String, &'static str)>>>;

pub struct Options {
    pub started: bool,
    pub runtime_state: bool,
    pub token: Option<String>,
    pub canary_ok: bool,
    /// Answers a stop with `{"state":"start"}` and keeps running (runtimeFlowState pinned in
    /// settings.js).
    pub ignore_stop: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { started: false, runtime_state: true, token: None, canary_ok: true, ignore_stop: false }
    }
}

pub struct Inner {
    pub name: String,
    pub started: AtomicBool,
    pub runtime_state: AtomicBool,
    pub canary_ok: AtomicBool,
    pub ignore_stop: bool,
    pub state_posts: AtomicUsize,
    pub hung: AtomicBool,
    unhang: Notify,
    token: Option<String>,
    pub hello_count: AtomicUsize,
    /// `GET /slow` requests being answered now.
    pub slow_waiting: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    pub log: EventLog,
    /// Deployed flows (credentials removed), their rev, and credentials by node id.
    pub flows: Mutex<(serde_json::Value, String, serde_json::Map<String, serde_json::Value>)>,
    /// When set, `POST /flows` answers 500.
    pub refuse_deploys: AtomicBool,
    /// `POST /flows` takes this long (ms) before it is applied.
    pub deploy_delay_ms: AtomicUsize,
    pub deploys: AtomicUsize,
    issued: Mutex<Vec<String>>,
}

/// Node-RED's rev: sha256 of the JSON of the flows without credentials.
pub fn rev_of(flows: &serde_json::Value) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(serde_json::to_string(flows).unwrap().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Inner {
    /// Tokens this instance issued and has not revoked.
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    pub fn rev(&self) -> String {
        self.flows.lock().unwrap().1.clone()
    }
    pub fn credentials(&self) -> serde_json::Map<String, serde_json::Value> {
        self.flows.lock().unwrap().2.clone()
    }
    /// Like Node-RED's setFlows: strip and merge node credentials, then compute the rev.
    pub fn set_flows(&self, mut flows: serde_json::Value, plain: Option<&serde_json::Map<String, serde_json::Value>>) {
        let mut st = self.flows.lock().unwrap();
        let creds = &mut st.2;
        let mut ids = std::collections::HashSet::new();
        for node in flows.as_array_mut().into_iter().flatten() {
            let id = node["id"].as_str().unwrap_or("").to_string();
            ids.insert(id.clone());
            if let Some(serde_json::Value::Object(c)) = node.as_object_mut().and_then(|o| o.remove("credentials")) {
                let entry = creds.entry(id).or_insert_with(|| serde_json::json!({}));
                for (k, v) in c {
                    if v != "__PWRD__" {
                        entry[k] = v;
                    }
                }
            }
        }
        if let Some(plain) = plain {
            for (id, c) in plain {
                creds.insert(id.clone(), c.clone());
            }
        }
        creds.retain(|id, _| ids.contains(id));
        st.1 = rev_of(&flows);
        st.0 = flows;
    }
}

pub struct FakeNodeRed {
    pub addr: SocketAddr,
    pub inner: Arc<Inner>,
    stop: CancellationToken,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

impl FakeNodeRed {
    pub async fn start(name: &str, opts: Options, log: EventLog) -> Self {
        Self::start_with(name, opts, log, None).await
    }

    /// Serves HTTPS with `tls` (for https:// instances).
    pub async fn start_with(name: &str, opts: Options, log: EventLog, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            started: AtomicBool::new(opts.started),
            runtime_state: AtomicBool::new(opts.runtime_state),
            canary_ok: AtomicBool::new(opts.canary_ok),
            ignore_stop: opts.ignore_stop,
            state_posts: AtomicUsize::new(0),
            hung: AtomicBool::new(false),
            unhang: Notify::new(),
            token: opts.token,
            hello_count: AtomicUsize::new(0),
            slow_waiting: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            log,
            flows: Mutex::new((serde_json::json!([]), rev_of(&serde_json::json!([])), serde_json::Map::new())),
            refuse_deploys: AtomicBool::new(false),
            deploy_delay_ms: AtomicUsize::new(0),
            deploys: AtomicUsize::new(0),
            issued: Mutex::new(Vec::new()),
        });
        Self::serve(listener, inner, tls)
    }

    fn serve(listener: TcpListener, inner: Arc<Inner>, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (st, inn) = (stop.clone(), inner.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                inn.connections.fetch_add(1, Ordering::SeqCst);
                let inn = inn.clone();
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(inn.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = st.cancelled() => {} // crash: the connection is dropped (reset)
                            }
                        }
                        Some(cfg) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await else { return };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = st.cancelled() => {}
                            }
                        }
                    }
                });
            }
        });
        FakeNodeRed { addr, inner, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn started(&self) -> bool {
        self.inner.started.load(Ordering::SeqCst)
    }

    /// Like `kill -9`: the port closes and open connections are dropped.
    pub fn crash(&self) {
        self.stop.cancel();
    }

    /// Like a `while(true)` in a function node: TCP is accepted, nothing is answered.
    pub fn hang(&self) {
        self.inner.hung.store(true, Ordering::SeqCst);
    }

    pub fn unhang(&self) {
        self.inner.hung.store(false, Ordering::SeqCst);
        self.inner.unhang.notify_waiters();
    }

    /// Boots again on the same port, with flows started or not (its persisted state).
    pub async fn restart(&mut self, started: bool) {
        self.stop.cancel();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        };
        self.inner.started.store(started, Ordering::SeqCst);
        self.inner.hung.store(false, Ordering::SeqCst);
        let fresh = std::mem::ManuallyDrop::new(Self::serve(listener, self.inner.clone(), None));
        self.stop = fresh.stop.clone();
    }
}

impl Drop for FakeNodeRed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    while inner.hung.load(Ordering::SeqCst) {
        let wake = inner.unhang.notified();
        if !inner.hung.load(Ordering::SeqCst) {
            break;
        }
        wake.await;
    }
    // Express (Node-RED's router) matches paths case-insensitively, one trailing slash optional.
    let mut path = req.uri().path().to_ascii_lowercase();
    if path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    let admin =
        matches!(path.as_str(), "/flows/state" | "/settings" | "/flows" | "/flow") || path.starts_with("/flow/");
    let bearer = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    if admin && let Some(t) = &inner.token {
        let ok = bearer.as_deref().is_some_and(|v| {
            v == format!("Bearer {t}") || inner.issued.lock().unwrap().iter().any(|i| v == format!("Bearer {i}"))
        });
        if !ok {
            return Ok(reply(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
    }
    let started = inner.started.load(Ordering::SeqCst);
    let state = |s: bool| format!("{{\"state\":\"{}\"}}", if s { "start" } else { "stop" });
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/flows/state") => reply(StatusCode::OK, state(started)),
        (Method::POST, "/flows/state") => {
            if !inner.runtime_state.load(Ordering::SeqCst) {
                return Ok(reply(StatusCode::NOT_FOUND, "<pre>Cannot POST /flows/state</pre>"));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            inner.state_posts.fetch_add(1, Ordering::SeqCst);
            let want = String::from_utf8_lossy(&body).contains("\"start\"") || inner.ignore_stop;
            inner.log.lock().unwrap().push((inner.name.clone(), if want { "start" } else { "stop" }));
            inner.started.store(want, Ordering::SeqCst);
            reply(StatusCode::OK, state(want))
        }
        (Method::GET, "/settings") => reply(
            StatusCode::OK,
            format!(
                "{{\"runtimeState\":{{\"enabled\":{}}},\"user\":{{\"username\":\"admin\",\"permissions\":\"*\"}}}}",
                inner.runtime_state.load(Ordering::SeqCst)
            ),
        ),
        (Method::POST, "/auth/token") => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if !String::from_utf8_lossy(&body).contains("password=password") {
                return Ok(reply(StatusCode::FORBIDDEN, "bad login"));
            }
            let mut issued = inner.issued.lock().unwrap();
            let token = format!("tok-{}-{}", inner.name, issued.len());
            issued.push(token.clone());
            reply(
                StatusCode::OK,
                format!("{{\"access_token\":\"{token}\",\"expires_in\":600,\"token_type\":\"Bearer\"}}"),
            )
        }
        (Method::POST, "/auth/revoke") => {
            let body = String::from_utf8_lossy(&req.into_body().collect().await.unwrap().to_bytes()).into_owned();
            let token = body.strip_prefix("token=").unwrap_or_default().to_string();
            inner.issued.lock().unwrap().retain(|t| *t != token);
            reply(StatusCode::OK, "")
        }
        (Method::GET, "/flows") => {
            let st = inner.flows.lock().unwrap();
            if req.headers().get("node-red-api-version").is_some_and(|v| v == "v2") {
                reply(StatusCode::OK, serde_json::json!({"flows": st.0, "rev": st.1}).to_string())
            } else {
                reply(StatusCode::OK, st.0.to_string())
            }
        }
        (Method::POST, "/flows") => {
            let delay = inner.deploy_delay_ms.load(Ordering::SeqCst) as u64;
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            inner.deploys.fetch_add(1, Ordering::SeqCst);
            inner.log.lock().unwrap().push((inner.name.clone(), "deploy"));
            if inner.refuse_deploys.load(Ordering::SeqCst) {
                return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "{\"code\":\"unexpected_error\"}"));
            }
            let v2 = req.headers().get("node-red-api-version").is_some_and(|v| v == "v2");
            let body: serde_json::Value =
                serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
            let (flows, rev, creds) = if v2 {
                (
                    body["flows"].clone(),
                    body.get("rev").and_then(|r| r.as_str()).map(str::to_string),
                    body.get("credentials").and_then(|c| c.as_object()).cloned(),
                )
            } else {
                (body, None, None)
            };
            if let Some(r) = rev
                && r != inner.rev()
            {
                return Ok(reply(StatusCode::CONFLICT, "{\"code\":\"version_mismatch\",\"message\":\"Error\"}"));
            }
            inner.set_flows(flows, creds.as_ref());
            if v2 {
                reply(StatusCode::OK, format!("{{\"rev\":\"{}\"}}", inner.rev()))
            } else {
                reply(StatusCode::NO_CONTENT, "")
            }
        }
        (Method::POST, "/flow") => {
            // A random id on each instance, like Node-RED's addFlow.
            let id = format!("{}-{}", inner.name, inner.deploys.fetch_add(1, Ordering::SeqCst));
            let mut flows = inner.flows.lock().unwrap().0.clone();
            flows.as_array_mut().unwrap().push(serde_json::json!({"id": id, "type": "tab"}));
            inner.set_flows(flows, None);
            reply(StatusCode::OK, format!("{{\"id\":\"{id}\"}}"))
        }
        (Method::PUT, p) if p.starts_with("/flow/") => {
            inner.log.lock().unwrap().push((inner.name.clone(), "put-flow"));
            reply(StatusCode::OK, "{}")
        }
        _ if !started => reply(StatusCode::NOT_FOUND, format!("Cannot {} {path}", req.method())),
        (Method::GET, "/canary") => {
            if inner.canary_ok.load(Ordering::SeqCst) {
                reply(StatusCode::OK, "ok")
            } else {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "flow broken")
            }
        }
        (Method::GET, "/hello") => {
            inner.hello_count.fetch_add(1, Ordering::SeqCst);
            reply(StatusCode::OK, format!("hello from {}", inner.name))
        }
        (Method::GET, "/headers") => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            reply(StatusCode::OK, out)
        }
        (Method::POST, "/early") => {
            // Like Node.js: answer before the body is read, and read (discard) it afterwards,
            // keeping the connection.
            let body = req.into_body();
            tokio::spawn(async move {
                let _ = body.collect().await;
            });
            reply(StatusCode::UNAUTHORIZED, "early")
        }
        (_, p) if p.starts_with("/mirror") => return Ok(mirror(req).await),
        (Method::POST, "/echo") => match req.into_body().collect().await {
            Ok(body) => reply(StatusCode::OK, body.to_bytes()),
            Err(e) => reply(StatusCode::BAD_REQUEST, format!("incomplete body: {e}")),
        },
        (Method::GET, "/ws") => return Ok(websocket(inner.clone(), req)),
        (Method::GET, "/slow") => {
            let ms: u64 =
                req.uri().query().and_then(|q| q.strip_prefix("ms=")).and_then(|v| v.parse().ok()).unwrap_or(500);
            inner.slow_waiting.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            inner.slow_waiting.fetch_sub(1, Ordering::SeqCst);
            reply(StatusCode::OK, "slow done")
        }
        _ => reply(StatusCode::NOT_FOUND, format!("Cannot {} {path}", req.method())),
    };
    Ok(resp)
}

/// Describes the request as this instance received it (method, target, version, headers
/// sorted by name, body length and digest), for comparing what two paths through flowgate
/// deliver. The query picks the answer's shape: `status=N`, `chunked` (chunked encoding),
/// `big` (300 KiB more), `hdrs` (repeated and hop-by-hop response headers).
async fn mirror(req: Request<Incoming>) -> Response<Full<Bytes>> {
    use sha2::Digest;
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut lines: Vec<String> =
        parts.headers.iter().map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes()))).collect();
    lines.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
    let mut out = format!("{} {} {:?}\n{}\n", parts.method, parts.uri, parts.version, lines.join("\n"));
    out.push_str(&format!(
        "body: {} bytes, sha256 {:x}\n",
        body.len(),
        Bytes::copy_from_slice(&sha2::Sha256::digest(&body))
    ));
    let query = parts.uri.query().unwrap_or_default();
    let has = |k: &str| query.split('&').any(|kv| kv == k || kv.starts_with(&format!("{k}=")));
    if has("big") {
        out.push_str(&"0123456789abcdef".repeat(300 * 64));
    }
    let status = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("status="))
        .and_then(|v| v.parse().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let mut r = reply(status, out);
    let h = r.headers_mut();
    if has("chunked") {
        h.insert("transfer-encoding", "chunked".parse().unwrap());
    }
    if has("hdrs") {
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-upstream", "yes".parse().unwrap());
    }
    r
}

/// A websocket endpoint that greets with its name and echoes every message.
fn websocket(inner: Arc<Inner>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return reply(StatusCode::BAD_REQUEST, "not a websocket request");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let _ = ws.send(Message::text(format!("hello from {}", inner.name))).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

//! One Node-RED instance: its identity, addresses, and the admin API calls flowgate makes
//! (`GET/POST <admin>/flows/state`, `GET <admin>/settings`, the canary). Flow-state changes to
//! one instance are serialised by a per-instance lock (Node-RED's own API mutex does not
//! cover `setState`).

pub mod activity;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{BackendConfig, NodeRedPaths};

pub use crate::config::BackendId;
use crate::traffic::tls::TlsError;

/// Node-RED's flow state as `GET /flows/state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    Start,
    Stop,
    Safe,
}

impl FlowState {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Start => "start",
            FlowState::Stop => "stop",
            FlowState::Safe => "safe",
        }
    }

    pub fn parse(body: &[u8]) -> Result<Self, CallError> {
        #[derive(serde::Deserialize)]
        struct S {
            state: String,
        }
        let s: S = serde_json::from_slice(body).map_err(|_| CallError::BadBody(snippet(body)))?;
        match s.state.as_str() {
            "start" => Ok(FlowState::Start),
            "stop" => Ok(FlowState::Stop),
            "safe" => Ok(FlowState::Safe),
            _ => Err(CallError::BadBody(snippet(body))),
        }
    }
}

/// Why an admin API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nothing listens: the process is gone. Definitive.
    #[error("connection refused")]
    Refused,
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection broke (reset, closed mid-answer): the process likely died.
    #[error("connection broke: {0}")]
    Reset(String),
    /// No complete answer in time: a hung event loop looks like this.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Proxied requests waited this long with nothing answered since, probes included
    /// (`backend/activity.rs`): the same evidence as a time-out.
    #[error("requests waited {0:?} with nothing answered")]
    Unanswered(Duration),
    #[error("401 unauthorized: set this backend's token to one of the instance's adminAuth.tokens")]
    Unauthorized,
    /// `POST /flows/state` is not registered.
    #[error(
        "POST flows/state is missing: set `runtimeState: {{ enabled: true, ui: false }}` in this instance's settings.js"
    )]
    RuntimeStateDisabled,
    #[error("unexpected status {0}: {1}")]
    Status(u16, String),
    #[error("unexpected body: {0}")]
    BadBody(String),
    #[error("{0}")]
    Transport(String),
    /// Not the instance's fault: flowgate itself is out of file descriptors (or memory) and
    /// could not even try. Says nothing about the instance's health.
    #[error("flowgate is out of resources: {0}")]
    Local(String),
    /// The instance refused a command for a stale controller epoch (replicas).
    #[error("refused: the instance has seen a newer controller epoch (this replica is no longer the controller)")]
    Fenced,
}

impl CallError {
    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Refused => "refused",
            CallError::Connect(_) => "connect",
            CallError::Reset(_) => "reset",
            CallError::Timeout(_) => "timeout",
            CallError::Unanswered(_) => "unanswered",
            CallError::Unauthorized => "unauthorized",
            CallError::RuntimeStateDisabled => "runtime_state_disabled",
            CallError::Status(..) => "status",
            CallError::BadBody(_) => "bad_body",
            CallError::Transport(_) => "transport",
            CallError::Fenced => "fenced",
            CallError::Local(_) => "local",
        }
    }

    /// Classifies a client error by walking its source chain.
    pub fn from_client(err: &hyper_util::client::legacy::Error) -> Self {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = src {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                if is_local(io) {
                    return CallError::Local(io.to_string());
                }
                if io.kind() == ConnectionRefused {
                    return CallError::Refused;
                }
                if err.is_connect() {
                    return CallError::Connect(io.to_string());
                }
                if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof) {
                    return CallError::Reset(io.to_string());
                }
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>()
                && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
            {
                return CallError::Reset(h.to_string());
            }
            src = e.source();
        }
        if err.is_connect() { CallError::Connect(err.to_string()) } else { CallError::Transport(chain(err)) }
    }
}

/// Whether an I/O error is flowgate's own lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM)
/// rather than anything the other side did.
pub fn is_local(io: &std::io::Error) -> bool {
    matches!(io.raw_os_error(), Some(12 | 23 | 24 | 105)) || io.kind() == std::io::ErrorKind::OutOfMemory
}

/// An error and its causes on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        out.push_str(": ");
        out.push_str(&e.to_string());
        src = e.source();
    }
    out
}

pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(120)]);
    s.trim().replace('\n', " ")
}

/// The client type for every call to an instance (plain HTTP, or HTTPS with a configured CA).
pub type AdminClient = Client<Connector, Full<Bytes>>;

/// Idle pooled connections to Node-RED are dropped before Node's HTTP server closes them
/// itself (its `keepAliveTimeout` is 5 s): otherwise a request can race the server's close.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Connects to an instance: TCP (no delay, 5 s timeout), then TLS for `https` ones.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub fn connector(cfg: &crate::config::Config) -> Result<Connector, TlsError> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    conn.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(cfg)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn))
}

/// A pooled client for the configured instances. `max_idle_per_host: None` is unbounded.
pub fn client(cfg: &crate::config::Config, max_idle_per_host: Option<usize>) -> Result<AdminClient, TlsError> {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT);
    if let Some(n) = max_idle_per_host {
        b.pool_max_idle_per_host(n);
    }
    Ok(b.build(connector(cfg)?))
}

/// TLS for `https` instances (see [`crate::traffic::tls::client_config`]).
fn tls_config(cfg: &crate::config::Config) -> Result<rustls::ClientConfig, TlsError> {
    let cas: Vec<std::path::PathBuf> = cfg.backends.iter().filter_map(|b| b.ca.clone()).collect();
    crate::traffic::tls::client_config(&cas)
}

/// The client for probes and flow-state calls: its own pool, so probes never queue behind
/// traffic. Calls to one instance are sequential (probes) or serialised (flow state): one idle
/// connection per instance is enough, and leaves fewer stale ones after a crash.
pub fn admin_client(cfg: &crate::config::Config) -> Result<AdminClient, TlsError> {
    client(cfg, Some(1))
}

/// Sends `req` and reads the whole answer (at most `limit` bytes) within `timeout`.
async fn buffered(
    client: &AdminClient,
    req: Request<Full<Bytes>>,
    limit: usize,
    timeout: Duration,
) -> Result<(StatusCode, http::HeaderMap, Bytes), CallError> {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| CallError::from_client(&e))?;
        let (parts, body) = resp.into_parts();
        let bytes =
            Limited::new(body, limit).collect().await.map_err(|e| CallError::Transport(e.to_string()))?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(CallError::Timeout(timeout)))
}

/// One configured Node-RED instance.
pub struct Backend {
    pub id: BackendId,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub priority: i64,
    token: Option<HeaderValue>,
    /// `httpAdminRoot`, e.g. "/" or "/admin/".
    pub admin_root: String,
    flows_state: Uri,
    settings: Uri,
    canary: Option<Uri>,
    /// Serialises flow-state changes to this instance.
    control: tokio::sync::Mutex<()>,
    /// Whether proxied requests wait on it while it answers nothing.
    pub activity: activity::Activity,
    /// How it is restarted, if flowgate may.
    pub restart: Option<crate::config::RestartCommand>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend").field("id", &self.id).field("authority", &self.authority).finish()
    }
}

const MAX_ADMIN_BODY: usize = 1 << 20;

/// The header that carries the controller's epoch on flow-state calls (replicas); see
/// `contrib/node-red/flowgate-fence.js`.
pub const EPOCH_HEADER: &str = "x-flowgate-epoch";

/// A heartbeat for the instances' dead-man switch (`contrib/node-red/flowgate-fence.js`):
/// sent with the probes of the routed active and with a start of flows, by a single flowgate
/// or the controller of replicas.
pub const HEARTBEAT_HEADER: &str = "x-flowgate-heartbeat";

/// The fencing headers of one call: the controller's epoch and a heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fence {
    pub epoch: Option<u64>,
    pub heartbeat: bool,
}

impl Backend {
    pub fn new(cfg: &BackendConfig, paths: &NodeRedPaths, canary: Option<&str>) -> Self {
        let uri = |path: &str| -> Uri {
            Uri::builder()
                .scheme(cfg.scheme.clone())
                .authority(cfg.authority.clone())
                .path_and_query(path)
                .build()
                .expect("validated authority and path")
        };
        let token = cfg.token.as_ref().map(|t| {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose())).expect("validated as printable ASCII");
            v.set_sensitive(true);
            v
        });
        Backend {
            id: cfg.id.clone(),
            scheme: cfg.scheme.clone(),
            authority: cfg.authority.clone(),
            priority: cfg.priority,
            token,
            admin_root: paths.admin_root.clone(),
            flows_state: uri(&format!("{}flows/state", paths.admin_root)),
            settings: uri(&format!("{}settings", paths.admin_root)),
            canary: canary.map(uri),
            control: tokio::sync::Mutex::new(()),
            activity: activity::Activity::default(),
            restart: cfg.restart.clone(),
        }
    }

    pub fn has_canary(&self) -> bool {
        self.canary.is_some()
    }

    /// flowgate's own `Authorization` value for this instance, if configured.
    pub fn token(&self) -> Option<&HeaderValue> {
        self.token.as_ref()
    }

    /// `http://<instance><path_and_query>`.
    pub fn uri(&self, path_and_query: &str) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .unwrap_or_else(|_| Uri::from_static("http://invalid/"))
    }

    /// One buffered exchange with this instance. `headers` are sent as given (callers decide
    /// on Authorization); the answer is read in full, bounded by `MAX_ADMIN_BODY` × 16.
    pub async fn exchange(
        &self,
        client: &AdminClient,
        method: Method,
        path_and_query: &str,
        headers: http::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), CallError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = self.uri(path_and_query);
        *req.headers_mut() = headers;
        buffered(client, req, MAX_ADMIN_BODY * 16, timeout).await
    }

    /// `GET <admin>/flows` (API v2) with flowgate's token: the instance's rev and its flows
    /// array exactly as sent.
    pub async fn flows(&self, client: &AdminClient, timeout: Duration) -> Result<(String, Bytes), CallError> {
        let mut h = http::HeaderMap::new();
        h.insert("node-red-api-version", HeaderValue::from_static("v2"));
        if let Some(t) = &self.token {
            h.insert(AUTHORIZATION, t.clone());
        }
        let path = format!("{}flows", self.admin_root);
        let (status, _, body) = self.exchange(client, Method::GET, &path, h, Bytes::new(), timeout).await?;
        match status {
            StatusCode::OK => {
                #[derive(serde::Deserialize)]
                struct V2<'a> {
                    #[serde(borrow)]
                    flows: &'a serde_json::value::RawValue,
                    rev: String,
                }
                let v: V2<'_> = serde_json::from_slice(&body).map_err(|_| CallError::BadBody(snippet(&body)))?;
                let raw = Bytes::copy_from_slice(v.flows.get().as_bytes());
                Ok((v.rev, raw))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CallError::Unauthorized),
            s => Err(CallError::Status(s.as_u16(), snippet(&body))),
        }
    }

    /// flowgate's own call (its token, a JSON body if any) to one of the admin endpoints.
    async fn call(
        &self,
        client: &AdminClient,
        method: Method,
        uri: &Uri,
        body: Option<&'static str>,
        fence: Fence,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let mut req = Request::new(Full::new(body.map_or_else(Bytes::new, |b| Bytes::from_static(b.as_bytes()))));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        if let Some(t) = &self.token {
            req.headers_mut().insert(AUTHORIZATION, t.clone());
        }
        if body.is_some() {
            req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(e) = fence.epoch {
            req.headers_mut().insert(EPOCH_HEADER, HeaderValue::from(e));
        }
        if fence.heartbeat {
            req.headers_mut().insert(HEARTBEAT_HEADER, HeaderValue::from_static("1"));
        }
        let (status, _, bytes) = buffered(client, req, MAX_ADMIN_BODY, timeout).await?;
        Ok((status, bytes))
    }

    /// `GET <admin>/flows/state`. Not proof that flows run (see the canary).
    /// `epoch`: the controller's, so that every instance learns it (replicas).
    pub async fn flow_state(
        &self,
        client: &AdminClient,
        fence: Fence,
        timeout: Duration,
    ) -> Result<FlowState, CallError> {
        let (status, body) = self.call(client, Method::GET, &self.flows_state, None, fence, timeout).await?;
        match status {
            StatusCode::OK => FlowState::parse(&body),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CallError::Unauthorized),
            s => Err(CallError::Status(s.as_u16(), snippet(&body))),
        }
    }

    /// `POST <admin>/flows/state`, confirmed from the response body (a 200 can say the
    /// opposite of what was asked, NODE-RED.md §1.4).
    pub async fn set_flow_state(
        &self,
        client: &AdminClient,
        want: FlowState,
        epoch: Option<u64>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let body = match want {
            FlowState::Start => r#"{"state":"start"}"#,
            _ => r#"{"state":"stop"}"#,
        };
        let _serial = self.control.lock().await;
        // Starting flows makes it the active: its dead-man switch counts from now.
        let fence = Fence { epoch, heartbeat: want == FlowState::Start };
        let (status, bytes) = self.call(client, Method::POST, &self.flows_state, Some(body), fence, timeout).await?;
        match status {
            StatusCode::OK => {
                let got = FlowState::parse(&bytes)?;
                if got == want {
                    Ok(())
                } else {
                    Err(CallError::BadBody(format!(
                        "asked for {} but the instance answered {} (is runtimeFlowState set in settings.js? remove it)",
                        want.as_str(),
                        got.as_str()
                    )))
                }
            }
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Err(CallError::RuntimeStateDisabled),
            StatusCode::CONFLICT if bytes.windows(11).any(|w| w == b"stale_epoch") => Err(CallError::Fenced),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CallError::Unauthorized),
            s => Err(CallError::Status(s.as_u16(), snippet(&bytes))),
        }
    }

    /// Whether `GET <admin>/settings` reports `runtimeState.enabled: true`.
    pub async fn runtime_state_enabled(&self, client: &AdminClient, timeout: Duration) -> Result<bool, CallError> {
        let (status, body) = self.call(client, Method::GET, &self.settings, None, Fence::default(), timeout).await?;
        match status {
            StatusCode::OK => {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|_| CallError::BadBody(snippet(&body)))?;
                Ok(v.pointer("/runtimeState/enabled").and_then(|e| e.as_bool()) == Some(true))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CallError::Unauthorized),
            s => Err(CallError::Status(s.as_u16(), snippet(&body))),
        }
    }

    /// `GET <node root><canary>` must answer 200: flows are processing messages.
    pub async fn canary(&self, client: &AdminClient, timeout: Duration) -> Result<(), CallError> {
        let Some(uri) = &self.canary else {
            return Ok(());
        };
        let (status, body) = self.call(client, Method::GET, uri, None, Fence::default(), timeout).await?;
        if status == StatusCode::OK { Ok(()) } else { Err(CallError::Status(status.as_u16(), snippet(&body))) }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn running_out_of_descriptors_is_flowgates_own_error() {
        assert!(is_local(&std::io::Error::from_raw_os_error(24)));
        assert!(is_local(&std::io::Error::from_raw_os_error(23)));
        assert!(!is_local(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(!is_local(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
    }
    use super::*;

    #[test]
    fn flow_state_parses_node_red_bodies() {
        assert_eq!(FlowState::parse(br#"{"state":"start"}"#), Ok(FlowState::Start));
        assert_eq!(FlowState::parse(br#"{"state":"stop"}"#), Ok(FlowState::Stop));
        assert_eq!(FlowState::parse(br#"{"state":"safe"}"#), Ok(FlowState::Safe));
        assert!(matches!(FlowState::parse(b"<pre>Cannot POST</pre>"), Err(CallError::BadBody(_))));
        assert!(matches!(FlowState::parse(br#"{"state":"bogus"}"#), Err(CallError::BadBody(_))));
    }
}

//! The client-facing request path.
//!
//! Lifecycle of one request:
//! 1. classify it (editor/runtime, plain/websocket) for metrics;
//! 2. load the active instance (one `ArcSwap` load). With none (mid-failover), wait up to
//!    `failover.hold` for one, else answer 503 with `Retry-After`;
//! 3. websocket upgrades are tunnelled to the active (`upgrade.rs`) and closed when it stops
//!    being active, so clients reconnect to the new one;
//! 4. otherwise strip hop-by-hop headers, set X-Forwarded-*, and stream the request to the
//!    active over a pooled keep-alive connection. The body is never buffered;
//! 5. failures:
//!    - connecting failed (nothing was sent): the prober is kicked (passive detection) and
//!      the request is retried on the new active, body included;
//!    - every slot to the instance stayed taken for `limits.upstream_queue_timeout`
//!      (`upstream.rs`): 503 with `Retry-After`, nothing sent;
//!    - the instance is declared failed while the request is in flight (a hung event loop
//!      never answers), or the connection broke mid-request: a request whose body was not
//!      read yet (still connecting: nothing complete was sent) is retried with it, idempotent
//!      requests without a body are retried on the new active; the rest answer 502 at once
//!      and are never replayed.

mod balance;
pub mod fast;
pub mod forward;
pub mod route;
mod upgrade;
pub mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::state::{Active, Shared};
use crate::traffic::body::Body;
use crate::traffic::error::ProxyError;
use upstream::UpstreamError;

pub use crate::traffic::server::Peer;
pub use forward::{is_upgrade, strip_hop_by_hop};
pub use route::RouteClass;
pub use upgrade::Tunnels;

pub type ProxyClient = crate::backend::AdminClient;

/// Attempts per request: the first plus retries on a new active.
const MAX_ATTEMPTS: u32 = 3;

pub struct Proxy {
    pub shared: Arc<Shared>,
    /// Websocket tunnels, and the client for editor writes and upgrade requests.
    tunnels: upgrade::Tunnels,
    /// Runtime requests over HTTP/1.1 take the fast path (`listen.fast_path`, and every
    /// instance plain HTTP).
    fast: bool,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, tunnels: Tunnels) -> Self {
        let cfg = &shared.config;
        let fast = cfg.listen.fast_path && cfg.backends.iter().all(|b| b.scheme == http::uri::Scheme::HTTP);
        Proxy { shared, tunnels, fast }
    }

    /// The client for editor writes (it trusts the instances' TLS settings).
    pub fn client(&self) -> &ProxyClient {
        &self.tunnels.client
    }

    pub async fn serve(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let upgrade = is_upgrade(req.version(), req.headers());
        let access = if self.shared.config.log.access {
            (req.method().clone(), req.uri().path().to_string())
        } else {
            (http::Method::GET, String::new())
        };
        let class = route::classify(req.uri().path(), upgrade, &self.shared.config.node_red);
        let resp = match self.dispatch(req, peer, upgrade, class).await {
            Ok(r) => r,
            Err(e) => e.response(),
        };
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        self.shared.metrics.request(class, status, elapsed.as_secs_f64());
        if self.shared.config.log.access {
            access_log(peer, access.0.as_str(), &access.1, status, class, elapsed);
        }
        Ok(resp)
    }

    /// The instance for a request: the active (hot spare), or one of the rotation
    /// (load-balanced; `pin`, the instance its cookie names, while usable). Waits up to the
    /// hold time when there is none. `failed`, when given, is an instance this request already
    /// failed on: another one is taken, or waited for, unless it is still routed to and not
    /// declared failed after a probe had time to judge it.
    async fn active(&self, pin: Option<usize>, failed: Option<&Arc<Active>>) -> Result<Arc<Active>, ProxyError> {
        let usable = |a: &Arc<Active>, judged: bool| match failed {
            None => true,
            Some(f) => !Arc::ptr_eq(a, f) || (judged && !f.failed.is_cancelled()),
        };
        let balanced = self.shared.config.mode == crate::readiness::Mode::LoadBalanced;
        let choose = |view: &crate::state::View, judged: bool| {
            if balanced {
                let outstanding = |i: usize| self.shared.instances[i].pool.outstanding();
                balance::pick(&view.rotation, pin, |a| usable(a, judged), outstanding, &self.shared.next)
            } else {
                view.active.clone().filter(|a| usable(a, judged))
            }
        };
        if let Some(a) = choose(&self.shared.view.load(), false) {
            return Ok(a);
        }
        let cfg = &self.shared.config;
        let now = Instant::now();
        let deadline = now + cfg.failover.hold;
        let judged_at = now + cfg.health.timeout * 2 + Duration::from_millis(50);
        let mut rx = self.shared.generation.subscribe();
        loop {
            rx.borrow_and_update();
            let judged = Instant::now() >= judged_at;
            if let Some(a) = choose(&self.shared.view.load(), judged) {
                return Ok(a);
            }
            let wake = if failed.is_some() && !judged { judged_at.min(deadline) } else { deadline };
            if Instant::now() >= deadline {
                return Err(ProxyError::NoActiveInstance);
            }
            let _ = tokio::time::timeout_at(wake, rx.changed()).await;
        }
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        upgrade: bool,
        class: RouteClass,
    ) -> Result<Response<Body>, ProxyError> {
        use crate::editor::cookie::{AFFINITY_COOKIE, CookieCodec};
        let cfg = &self.shared.config;
        let editor = matches!(class, RouteClass::Editor | RouteClass::EditorSocket);
        let balanced = cfg.mode == crate::readiness::Mode::LoadBalanced;
        let cookie = if editor { cfg.editor.cookie.as_str() } else { AFFINITY_COOKIE };
        let pinned = if balanced { balance::pinned(req.headers(), cookie, &self.shared.instances) } else { None };
        let active = self.active(pinned, None).await?;
        // Sticky sessions: the editor's cookie must name the instance it reached (the active,
        // or in load-balanced mode its instance in rotation); otherwise it is (re-)issued. So
        // is the affinity cookie of a socket.io session in load-balanced mode.
        let pin = &self.shared.instances[active.index].pin;
        let tls = usize::from(peer.tls);
        let set_cookie = if editor {
            (!CookieCodec::carries(req.headers(), cookie, &pin.value)).then(|| pin.set_cookie[tls].clone())
        } else if balanced && pinned != Some(active.index) && balance::engine_io(req.uri()) {
            Some(pin.affinity[tls].clone())
        } else {
            None
        };
        let result = if upgrade {
            upgrade::tunnel(&self.tunnels, &self.shared, req, peer, active).await
        } else {
            let (mut parts, body) = req.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            forward::set_forwarded(&mut parts.headers, &parts.uri, peer.addr.ip(), peer.tls, &cfg.trusted_proxies);
            let action = if editor {
                let rel = route::admin_relative(parts.uri.path(), &cfg.node_red.admin_root).unwrap_or_default();
                crate::editor::cookie::action(&parts.method, &rel)
            } else {
                crate::editor::cookie::Action::Forward
            };
            use crate::editor::cookie::Action;
            match action {
                Action::Forward => self.forward(parts, body, active).await,
                Action::FlowState => Err(ProxyError::FlowStateOwned),
                Action::Write(write) => {
                    use crate::editor::cookie::EditorWrite as W;
                    use crate::state::WriteRoute;
                    let forwarded = parts.headers.contains_key(crate::editor::forward::FORWARDED);
                    // Logins change no flows: the replica the editor uses keeps its tokens.
                    let local = matches!(write, W::Login | W::Logout);
                    match &**self.shared.writes_to.load() {
                        _ if local => self.write(write, parts, body, active).await,
                        WriteRoute::Here => self.write(write, parts, body, active).await,
                        // A forwarded write is never forwarded again.
                        WriteRoute::NoController => Err(ProxyError::NoController),
                        WriteRoute::Forward(_) if forwarded => Err(ProxyError::NoController),
                        WriteRoute::Forward(url) => {
                            let (s, c) = (&self.shared, &self.tunnels.client);
                            crate::editor::forward::to_controller(s, c, url, parts, body, active).await
                        }
                    }
                }
            }
        };
        let mut resp = result?;
        if let Some(cookie) = set_cookie {
            resp.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        Ok(resp)
    }

    /// An editor write, run to its end in a task of its own: once the active may have taken it,
    /// the copies to the other instances, the in-step table and the save must follow whatever
    /// the client does (a fronting proxy's time-out, a closed tab). A client that leaves before
    /// its body was read cancels nothing that was sent: reading the body fails first.
    async fn write(
        &self,
        write: crate::editor::cookie::EditorWrite,
        parts: http::request::Parts,
        body: Incoming,
        active: Arc<Active>,
    ) -> Result<Response<Body>, ProxyError> {
        use crate::editor::cookie::EditorWrite as W;
        use crate::editor::writes;
        let (shared, client) = (self.shared.clone(), self.tunnels.client.clone());
        let task = tokio::spawn(async move {
            let (s, c) = (&*shared, &client);
            match write {
                W::Deploy => writes::deploy(s, c, parts, body, active).await,
                W::AddFlow => writes::add_flow(s, c, parts, body, active).await,
                W::Replay { flows_changed } => writes::replay(s, c, parts, body, active, false, flows_changed).await,
                W::Palette => writes::replay(s, c, parts, body, active, true, false).await,
                W::Login => writes::login(s, c, parts, body, active).await,
                W::Logout => writes::logout(s, c, parts, body, active).await,
            }
        });
        task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "an editor write failed");
            Err(ProxyError::UpstreamFailed)
        })
    }

    /// Streams one request to the active, with the retry rules in the module docs.
    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        mut active: Arc<Active>,
    ) -> Result<Response<Body>, ProxyError> {
        let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let (mut body, mut slot) = if body.is_end_stream() {
            (Body::empty(), None)
        } else {
            let (b, s) = Body::reclaimable(body);
            (b, Some(s))
        };
        let replayable = idempotent && slot.is_none();
        let mut attempt = 1;
        loop {
            let mut out = Request::new(body);
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = forward::origin_form(&parts.uri);
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = parts.headers.clone();
            let stall = async {
                match &slot {
                    Some(s) => s.stall(self.shared.config.limits.header_read_timeout).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                biased;
                r = self.shared.instances[active.index].pool.send(out) => r,
                _ = stall => {
                    // The client stopped sending its body: cut it, and with it the connection
                    // (its body was not read to the end), so it frees its slot.
                    return Err(ProxyError::BodyTimeout);
                }
                _ = active.failed.cancelled() => {
                    // Declared failed before its body was read: nothing complete reached it
                    // (still connecting, or the head alone), so the request goes elsewhere.
                    if let Some(inc) = slot.as_ref().and_then(|s| s.reclaim()) {
                        let (b, s) = Body::reclaimable(inc);
                        slot = Some(s);
                        self.retry_budget(&mut attempt, ProxyError::InstanceFailed)?;
                        active = self.active(None, Some(&active)).await?;
                        body = b;
                        continue;
                    }
                    if !replayable {
                        self.shared.metrics.inflight_aborted.inc();
                        return Err(ProxyError::InstanceFailed);
                    }
                    self.retry_budget(&mut attempt, ProxyError::InstanceFailed)?;
                    active = self.active(None, Some(&active)).await?;
                    body = Body::empty();
                    continue;
                }
            };
            match result {
                Ok(resp) => {
                    let (mut rp, rb) = resp.into_parts();
                    strip_hop_by_hop(&mut rp.headers, false);
                    return Ok(Response::from_parts(rp, Body::upstream(rb)));
                }
                Err(e) => {
                    self.shared.suspect(active.index);
                    tracing::debug!(backend = %active.backend.id, error = %e, "upstream request failed");
                    if let UpstreamError::Busy(_) = e {
                        return Err(ProxyError::UpstreamBusy);
                    } else if e.is_connect() {
                        // Nothing was sent: the body is still ours unless it was already polled.
                        body = match slot.as_ref().map(|s| s.reclaim()) {
                            None => Body::empty(),
                            Some(Some(inc)) => {
                                let (b, s) = Body::reclaimable(inc);
                                slot = Some(s);
                                b
                            }
                            Some(None) => return Err(ProxyError::UpstreamConnect),
                        };
                        self.retry_budget(&mut attempt, ProxyError::UpstreamConnect)?;
                    } else if replayable {
                        body = Body::empty();
                        self.retry_budget(&mut attempt, ProxyError::UpstreamFailed)?;
                    } else {
                        return Err(ProxyError::UpstreamFailed);
                    }
                    active = self.active(None, Some(&active)).await?;
                }
            }
        }
    }

    fn retry_budget(&self, attempt: &mut u32, err: ProxyError) -> Result<(), ProxyError> {
        *attempt += 1;
        if *attempt > MAX_ATTEMPTS {
            return Err(err);
        }
        self.shared.metrics.upstream_retries.inc();
        Ok(())
    }
}

/// One line of the access log (`log.access`), from either request path.
fn access_log(peer: Peer, method: &str, path: &str, status: u16, class: RouteClass, elapsed: Duration) {
    tracing::info!(
        target: "flowgate::access",
        client = %peer.addr,
        method = %method,
        path = %path,
        status,
        route = class.as_str(),
        ms = format!("{:.1}", elapsed.as_secs_f64() * 1e3),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::View;
    use std::path::Path;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    fn proxy(hold: &str) -> Arc<Proxy> {
        proxy_for(&format!("backends: [{{id: a, url: \"http://127.0.0.1:9\"}}]\nfailover: {{ hold: {hold} }}\n"))
    }

    fn proxy_for(yaml: &str) -> Arc<Proxy> {
        let config = Arc::new(crate::config::parse(yaml, Path::new("t.yaml"), &crate::config::System).unwrap());
        let ids = vec!["a".to_string()];
        let sync = crate::editor::sync::SyncTable::open(ids, None, None).unwrap();
        let cookies = Arc::new(crate::editor::cookie::CookieCodec::new(None));
        let connector = crate::backend::connector(&config).unwrap();
        let services = crate::state::Services::default();
        let shared = Arc::new(Shared::new(config, sync, cookies, &services, &connector, 1));
        let client = crate::backend::client(&shared.config, None).unwrap();
        let slots = Arc::new(tokio::sync::Semaphore::new(16));
        let tunnels = Tunnels { client, tracker: TaskTracker::new(), shutdown: CancellationToken::new(), slots };
        Arc::new(Proxy::new(shared, tunnels))
    }

    fn publish(p: &Proxy, generation: u64) -> Arc<Active> {
        let a = Arc::new(Active {
            index: 0,
            backend: p.shared.backend(0).clone(),
            failed: CancellationToken::new(),
            demoted: CancellationToken::new(),
        });
        p.shared.view.store(Arc::new(View { generation, active: Some(a.clone()), rotation: Vec::new() }));
        p.shared.generation.send_replace(generation);
        a
    }

    /// A newly promoted instance gets 4 slots, then 2 more per completed request.
    #[tokio::test]
    async fn a_newly_routed_instance_gets_its_slots_in_widening_waves() {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    hyper_util::rt::TokioIo::new(tcp),
                    hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
                    }),
                ));
            }
        });
        let yaml = format!(
            "backends: [{{id: a, url: \"http://127.0.0.1:{port}\"}}]\nlimits: {{ upstream_connections: 16 }}\n"
        );
        let p = proxy_for(&yaml);
        let pool = &p.shared.instances[0].pool;
        assert_eq!(pool.free_slots(), 16);
        pool.slow_start();
        assert_eq!(pool.free_slots(), upstream::SLOW_START_SLOTS);
        let mut free = Vec::new();
        for _ in 0..7 {
            let mut req = Request::get("/").body(Body::empty()).unwrap();
            req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("a"));
            let resp = pool.send(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            free.push(pool.free_slots());
            assert_eq!(pool.outstanding(), 0, "nothing in flight between requests");
        }
        assert_eq!(free, [6, 8, 10, 12, 14, 16, 16], "two more per completed request, then all");
    }

    /// On the fast path, an instance that answers an upload early and closes without reading
    /// the rest (a refusal): the client gets that answer, not a 502.
    #[tokio::test]
    async fn an_upload_refused_early_reaches_the_client_as_the_instance_answered_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = origin.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = origin.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                head.extend_from_slice(&b[..n]);
            }
            let no = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!";
            s.write_all(no).await.unwrap();
            // Closed with the body unread: the kernel resets the connection.
        });
        let p = proxy_for(&format!("backends: [{{id: a, url: \"http://127.0.0.1:{port}\"}}]\n"));
        publish(&p, 1);
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let body = vec![b'x'; 4 << 20];
            let head = format!("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len());
            let (mut r, mut w) = c.split();
            let send = async {
                let _ = w.write_all(head.as_bytes()).await;
                let _ = w.write_all(&body).await;
            };
            let mut got = Vec::new();
            let read = r.read_to_end(&mut got);
            let (_, read) = tokio::join!(send, read);
            let _ = read;
            String::from_utf8_lossy(&got).into_owned()
        });
        let (io, peer) = front.accept().await.unwrap();
        let fast = fast::Fast { current: Box::new(move || p.clone()) };
        let peer = Peer { addr: peer, tls: false };
        let cancel = CancellationToken::new();
        let out = fast::session(
            io,
            bytes::Bytes::new(),
            peer,
            &fast,
            &cancel,
            Duration::from_secs(1),
            Duration::from_secs(5),
        );
        match out.await {
            fast::Outcome::Linger(io) => drop(io),
            _ => panic!("the connection ends with its body unread"),
        }
        let got = client.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 413 Payload Too Large\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nbig!") && got.contains("connection: close"), "{got}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_active_a_request_is_held_for_exactly_the_hold_time() {
        let p = proxy("5s");
        let t0 = Instant::now();
        assert_eq!(p.active(None, None).await.unwrap_err(), ProxyError::NoActiveInstance);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_gets_the_active_as_soon_as_it_is_published() {
        let p = proxy("5s");
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { (p.active(None, None).await.map(|a| a.index), Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let t = Instant::now();
        publish(&p, 1);
        let (got, at) = waiter.await.unwrap();
        assert_eq!(got, Ok(0));
        assert_eq!(at, t, "released at publication, not at the next poll");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_the_same_active_is_reused_only_once_a_probe_could_judge_it() {
        let p = proxy("5s");
        let a = publish(&p, 1);
        let t0 = Instant::now();
        let again = p.active(None, Some(&a)).await.unwrap();
        assert!(Arc::ptr_eq(&again, &a));
        // health.timeout defaults to 400ms: two probes plus 50ms.
        assert_eq!(t0.elapsed(), Duration::from_millis(850));
        // Declared failed: never reused; a new active is waited for.
        a.failed.cancel();
        let waiter = tokio::spawn({
            let (p, a) = (p.clone(), a.clone());
            async move { p.active(None, Some(&a)).await.map(|n| Arc::ptr_eq(&n, &a)) }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        publish(&p, 2);
        assert_eq!(waiter.await.unwrap(), Ok(false));
    }
}

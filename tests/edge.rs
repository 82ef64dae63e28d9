//! The edge: TLS (handshake, SNI, ALPN, reload), hot reload of the config, graceful shutdown
//! and hardening against bad clients. Against in-process fake instances.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECS: Duration = Duration::from_secs(5);

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgate-edge-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_pair(dir: &Path, name: &str, names: &[&str]) -> String {
    let (cert, key) = flowgate::traffic::tls::self_signed(names).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), &cert).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
    cert
}

/// Accepts any server certificate and remembers the one presented (tests only).
#[derive(Debug, Default)]
struct Capture(Mutex<Vec<Vec<u8>>>);

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

struct TlsClient {
    capture: Arc<Capture>,
    connector: tokio_rustls::TlsConnector,
}

fn tls_client(alpn: &[&[u8]], version: &'static rustls::SupportedProtocolVersion) -> TlsClient {
    let capture = Arc::new(Capture::default());
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsClient { capture, connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)) }
}

impl TlsClient {
    async fn connect(&self, addr: std::net::SocketAddr, sni: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        self.connector.connect(ServerName::try_from(sni.to_string()).unwrap(), tcp).await.expect("handshake")
    }
    fn last_cert(&self) -> Vec<u8> {
        self.capture.0.lock().unwrap().last().cloned().unwrap()
    }
}

/// One HTTP request over an established stream; returns (version, status, body).
async fn over<S>(stream: S, h2: bool, path: &str) -> (http::Version, u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let req = http::Request::get(path).header("host", "a.example").body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = format!("https://a.example{path}").parse().unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let v = resp.version();
    let s = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (v, s, String::from_utf8_lossy(&b).into_owned())
}

struct Edge {
    fakes: Vec<FakeNodeRed>,
    h: flowgate::Handle,
    certs: PathBuf,
    cert_a: String,
    cert_b: String,
    config: PathBuf,
}

/// flowgate with plain, HTTPS and redirect listeners in front of two fakes, started from a
/// config file (so it can be reloaded).
async fn edge(extra: &str) -> Edge {
    let log = EventLog::default();
    let fakes = vec![
        FakeNodeRed::start("a", Options::default(), log.clone()).await,
        FakeNodeRed::start("b", Options::default(), log.clone()).await,
    ];
    let dir = temp(&format!("{}", rand_tag()));
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let cert_a = write_pair(&certs, "a", &["a.example"]);
    let cert_b = write_pair(&certs, "b", &["b.example", "*.wild.example"]);
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (proxy, https, redirect, admin) = (bind().await, bind().await, bind().await, bind().await);
    let addr = |l: &tokio::net::TcpListener| l.local_addr().unwrap();
    let yaml = format!(
        "listen: {{ proxy: \"{}\", https: \"{}\", redirect: \"{}\", admin: \"{}\" }}\ntls: {{ certs: \"{}\", default: b, reload_interval: 100ms }}\nadmin: {{ token: {{ env: PATH }} }}\n{}",
        addr(&proxy),
        addr(&https),
        addr(&redirect),
        addr(&admin),
        certs.display(),
        yaml(&[("a", fakes[0].url(), 200), ("b", fakes[1].url(), 100)], extra)
    );
    let config = dir.join("flowgate.yaml");
    std::fs::write(&config, &yaml).unwrap();
    trace_init();
    let cfg = flowgate::config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let listeners = flowgate::Listeners { proxy: Some(proxy), https: Some(https), redirect: Some(redirect), admin };
    let h = flowgate::start(cfg, listeners, Some(config.clone())).unwrap();
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    Edge { fakes, h, certs, cert_a, cert_b, config }
}

fn rand_tag() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// The admin token is the PATH environment variable's value (always set, never logged here).
fn admin_token() -> String {
    std::env::var("PATH").unwrap()
}

async fn admin_post(h: &flowgate::Handle, path: &str) -> Reply {
    let req = http::Request::post(format!("http://{}{path}", h.admin_addr))
        .header("authorization", format!("Bearer {}", admin_token()))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Reply { status, headers, body }
}

#[tokio::test]
async fn tls_handshake_sni_alpn_and_both_versions() {
    let e = edge("").await;
    let https = e.h.https_addr.unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let c = tls_client(&[b"http/1.1"], version);
        let s = c.connect(https, "a.example").await;
        assert_eq!(c.last_cert(), der_of(&e.cert_a), "SNI a.example picks a");
        let (v, status, body) = over(s, false, "/hello").await;
        assert_eq!((v, status, body.as_str()), (http::Version::HTTP_11, 200, "hello from a"));
        c.connect(https, "x.wild.example").await;
        assert_eq!(c.last_cert(), der_of(&e.cert_b), "wildcard");
        c.connect(https, "unknown.example").await;
        assert_eq!(c.last_cert(), der_of(&e.cert_b), "the default certificate");
    }
    let c = tls_client(&[b"h2", b"http/1.1"], &rustls::version::TLS13);
    let s = c.connect(https, "a.example").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (v, status, body) = over(s, true, "/headers").await;
    assert_eq!((v, status), (http::Version::HTTP_2, 200));
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    let m = metrics(&e.h).await;
    assert!(sample(&m, "flowgate_tls_cert_not_after_timestamp_seconds{cert=\"a\"}").unwrap() > 1.7e9, "{m}");
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections_and_keep_the_last_good_one() {
    let e = edge("").await;
    let https = e.h.https_addr.unwrap();
    let c = tls_client(&[b"http/1.1"], &rustls::version::TLS13);
    // An open keep-alive connection from before the reload.
    let s = c.connect(https, "a.example").await;
    let io = hyper_util::rt::TokioIo::new(s);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let get =
        |path: &'static str| http::Request::get(path).header("host", "a.example").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(send.send_request(get("/hello")).await.unwrap().status(), 200);

    tokio::time::sleep(Duration::from_millis(20)).await; // a later mtime
    let new_a = write_pair(&e.certs, "a", &["a.example"]);
    eventually(SECS, "new certificate served", || async {
        c.connect(https, "a.example").await;
        c.last_cert() == der_of(&new_a)
    })
    .await;
    assert_eq!(send.send_request(get("/hello")).await.unwrap().status(), 200, "the old connection still works");

    std::fs::write(e.certs.join("a.crt"), "garbage").unwrap();
    eventually(SECS, "the broken certificate is reported", || async {
        sample(&metrics(&e.h).await, "flowgate_tls_reload_errors_total").unwrap_or(0.0) >= 1.0
    })
    .await;
    c.connect(https, "a.example").await;
    assert_eq!(c.last_cert(), der_of(&new_a), "the last good certificate stays");
}

#[tokio::test]
async fn plain_http_is_redirected_to_https() {
    let e = edge("").await;
    let r = get(&client(), &format!("http://{}/admin/x?y=1", e.h.redirect_addr.unwrap())).await.unwrap();
    assert_eq!(r.status, 308);
    let port = e.h.https_addr.unwrap().port();
    assert_eq!(r.headers["location"], format!("https://{}:{port}/admin/x?y=1", "127.0.0.1"));
}

#[tokio::test]
async fn https_instances_are_reached_with_the_configured_ca() {
    let dir = temp("ca");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let fake = FakeNodeRed::start_with("s", Options::default(), EventLog::default(), Some(Arc::new(server))).await;
    let y = format!(
        "backends:\n  - {{ id: s, url: \"https://localhost:{}\", ca: \"{}\" }}\nhealth: {{ interval: 50ms, timeout: 300ms }}\n",
        fake.addr.port(),
        dir.join("ca.pem").display()
    );
    let h = start_flowgate(&y, Secrets(vec![])).await;
    eventually(SECS, "the https instance is active", || async { active(&h).await.as_deref() == Some("s") }).await;
    let r = get(&client(), &format!("http://{}/hello", h.proxy_addr)).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello from s"));
    // Without the CA the instance's certificate is not trusted.
    let p = flowgate::config::parse(
        &y.replace(&format!(", ca: \"{}\"", dir.join("ca.pem").display()), ""),
        Path::new("t"),
        &Secrets(vec![]),
    );
    assert!(p.unwrap_err().to_string().contains("needs `ca: PATH`"));
}

#[tokio::test]
async fn reload_keeps_roles_and_websockets_and_applies_the_diff() {
    use futures_util::StreamExt;
    let e = edge("").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", e.h.proxy_addr)).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "hello from a");
    // Swap the priorities (b would now win an election) and add a third instance.
    let c = FakeNodeRed::start("c", Options::default(), EventLog::default()).await;
    let text = std::fs::read_to_string(&e.config).unwrap();
    let text = text
        .replace("priority: 200", "priority: 1")
        .replace("priority: 100 }", &format!("priority: 500 }}\n  - {{ id: c, url: \"{}\", priority: 900 }}", c.url()));
    std::fs::write(&e.config, text).unwrap();
    let r = admin_post(&e.h, "/reload").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("added: [c]"), "{}", r.body);
    eventually(SECS, "c probed", || async { status(&e.h).await["backends"][2]["role"] == "standby" }).await;
    for _ in 0..5 {
        assert_eq!(active(&e.h).await.as_deref(), Some("a"), "roles are kept across a reload");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(!c.started(), "an added instance is never promoted on sight");
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text("still there?")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "still there?", "the websocket survived");
    // The kept active's fencing still works after the reload: a crash moves the role to c.
    e.fakes[0].crash();
    eventually(SECS, "c active", || async { active(&e.h).await.as_deref() == Some("c") }).await;
    let end = tokio::time::timeout(SECS, ws.next()).await.expect("the old tunnel closes on demotion");
    assert!(!matches!(end, Some(Ok(ref m)) if m.is_text()));
    let m = metrics(&e.h).await;
    assert_eq!(sample(&m, "flowgate_config_reloads_total{result=\"ok\"}"), Some(1.0), "{m}");
}

#[tokio::test]
async fn a_rejected_reload_keeps_the_running_config() {
    let e = edge("").await;
    let good = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(&e.config, good.replace("health:", "healthh:")).unwrap();
    let r = admin_post(&e.h, "/reload").await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("healthh"), "{}", r.body);
    // Removing the active instance is refused too.
    let without_a: String = good.lines().filter(|l| !l.contains("id: a,")).collect::<Vec<_>>().join("\n");
    std::fs::write(&e.config, without_a).unwrap();
    let r = admin_post(&e.h, "/reload").await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("backend a is active"), "{}", r.body);
    assert_eq!(active(&e.h).await.as_deref(), Some("a"));
    assert_eq!(get(&client(), &format!("http://{}/hello", e.h.proxy_addr)).await.unwrap().body, "hello from a");
    let m = metrics(&e.h).await;
    assert_eq!(sample(&m, "flowgate_config_reloads_total{result=\"rejected\"}"), Some(2.0), "{m}");
    // A changed listen address is reported, not applied.
    std::fs::write(&e.config, good.replace(&e.h.admin_addr.to_string(), "127.0.0.1:1")).unwrap();
    let r = admin_post(&e.h, "/reload").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("restart flowgate"), "{}", r.body);
}

#[tokio::test]
async fn the_config_file_is_watched() {
    let e = edge("").await;
    e.h.watch_config(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let text = std::fs::read_to_string(&e.config).unwrap().replace("hold: 3s", "hold: 2s");
    std::fs::write(&e.config, text).unwrap();
    eventually(SECS, "reloaded", || async {
        sample(&metrics(&e.h).await, "flowgate_config_reloads_total{result=\"ok\"}") == Some(1.0)
    })
    .await;
    assert_eq!(e.h.shared().config.failover.hold, Duration::from_secs(2));
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], "shutdown: { grace: 5s }\n"), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let addr = h.proxy_addr;
    let slow = tokio::spawn(async move { get(&client(), &format!("http://{addr}/slow?ms=600")).await });
    tokio::time::sleep(Duration::from_millis(100)).await; // the request is in flight
    let t = tokio::time::Instant::now();
    h.shutdown().await;
    let r = slow.await.unwrap().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slow done"), "the in-flight request completed");
    assert!(t.elapsed() >= Duration::from_millis(400), "shutdown waited for it");
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    assert!(fa.started(), "the active keeps running its flows");
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SECS, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], "limits: { header_read_timeout: 300ms }\n"), Secrets(vec![]))
        .await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(SECS, s.read(&mut buf)).await.expect("closed by flowgate, not by the test");
    let took = t.elapsed();
    assert!(matches!(n, Ok(_) | Err(_)));
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "cut off after {took:?}");
    // The connection is gone: the next read sees end-of-stream (or a reset).
    let again = tokio::time::timeout(SECS, s.read(&mut buf)).await.unwrap();
    assert!(matches!(again, Ok(0) | Err(_)), "{again:?}");
}

#[tokio::test]
async fn oversized_heads_get_431_and_smuggling_shapes_get_400() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(
        &yaml(&[("a", fa.url(), 100)], "limits: { max_header_bytes: 16KiB, max_headers: 20 }\n"),
        Secrets(vec![]),
    )
    .await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let big = format!("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(20_000));
    assert!(raw(h.proxy_addr, big.as_bytes()).await.starts_with("HTTP/1.1 431"), "header too large");
    let mut many = String::from("GET /hello HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(raw(h.proxy_addr, many.as_bytes()).await.starts_with("HTTP/1.1 431"), "too many headers");
    // CL.TE smuggling: the chunked framing wins, Content-Length is dropped and the connection
    // is closed after the answer, so the smuggled second request is never read.
    let both = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw(h.proxy_addr, both).await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer only: {answer}");
    assert!(!answer.contains("hello from a"), "the smuggled request was not served: {answer}");
    let two = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    assert!(raw(h.proxy_addr, two).await.starts_with("HTTP/1.1 400"), "conflicting lengths");
    let bad_te = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc";
    assert!(raw(h.proxy_addr, bad_te).await.starts_with("HTTP/1.1 400"), "TE without chunked last");
    let ok = raw(h.proxy_addr, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn beyond_the_connection_limit_clients_get_503() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], "limits: { max_connections: 2 }\n"), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let _held: Vec<TcpStream> = futures_util::future::join_all((0..2).map(|_| TcpStream::connect(h.proxy_addr)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await; // both accepted
    let r = raw(h.proxy_addr, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 503") && r.contains("x-flowgate-error: too-many-connections"), "{r}");
}

#[tokio::test]
async fn a_reload_that_fails_late_leaves_the_running_supervisor_in_charge() {
    let e = edge("").await;
    // Valid YAML and a readable file, but not a PEM certificate: only building the clients fails.
    let bad_ca = e.config.with_file_name("garbage-ca.pem");
    std::fs::write(&bad_ca, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let text = std::fs::read_to_string(&e.config).unwrap();
    let extra = format!("\n  - {{ id: c, url: \"https://localhost:9\", ca: \"{}\" }}", bad_ca.display());
    let text = text.replacen("priority: 100 }", &format!("priority: 100 }}{extra}"), 1);
    std::fs::write(&e.config, text).unwrap();
    let r = admin_post(&e.h, "/reload").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("garbage-ca.pem"), "{}", r.body);
    // Still supervised: a crash of the active still fails over.
    e.fakes[0].crash();
    eventually(SECS, "b active", || async { active(&e.h).await.as_deref() == Some("b") }).await;
}

/// Reads one HTTP/1.1 response with a Content-Length from a raw connection.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return (status, body);
            }
        }
        let n = tokio::time::timeout(SECS, s.read(&mut chunk)).await.expect("a response in time").unwrap();
        assert!(n > 0, "connection closed; got so far: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn parked(h: &flowgate::Handle) -> f64 {
    sample(&metrics(h).await, "flowgate_client_connections_parked").unwrap()
}

#[tokio::test]
async fn idle_connections_are_parked_and_resume_without_losing_a_byte() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], ""), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let get = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await, (200, "hello from a".into()));
    eventually(SECS, "the idle connection parked", || async { parked(&h).await == 1.0 }).await;
    assert_eq!(sample(&metrics(&h).await, "flowgate_client_connections"), Some(1.0));

    // The next request on the parked connection is served.
    s.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await, (200, "hello from a".into()));
    eventually(SECS, "parked again", || async { parked(&h).await == 1.0 }).await;

    // A head that stops half-way while the connection idles long enough to park is kept and
    // completed (the pause is the point of this step, not a synchronisation).
    s.write_all(b"GET /hello HTTP/1.1\r\nHo").await.unwrap();
    eventually(SECS, "woken by the partial head", || async { parked(&h).await == 0.0 }).await;
    tokio::time::sleep(flowgate::traffic::server::PARK_AFTER * 6).await;
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await, (200, "hello from a".into()));

    // Pipelined requests after parking: both answered, in order.
    eventually(SECS, "parked again", || async { parked(&h).await == 1.0 }).await;
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /headers HTTP/1.1\r\nHost: pipelined\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await, (200, "hello from a".into()));
    let (status, headers) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 200);
    assert!(headers.contains("host: pipelined"), "{headers}");
    assert_eq!(fa.inner.hello_count.load(std::sync::atomic::Ordering::SeqCst), 4);

    // On the fast path a connection whose request body was read whole parks too.
    body_connection(&h, 2.0).await;
}

/// A connection that carried a request body, idle: parked (`parked` counts it with the one
/// already parked) or not, and served afterwards either way.
async fn body_connection(h: &flowgate::Handle, parked: f64) {
    let mut p = TcpStream::connect(h.proxy_addr).await.unwrap();
    let mut pbuf = Vec::new();
    p.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    assert_eq!(read_response(&mut p, &mut pbuf).await, (200, "hello".into()));
    tokio::time::sleep(flowgate::traffic::server::PARK_AFTER * 6).await;
    let m = metrics(h).await;
    assert_eq!(sample(&m, "flowgate_client_connections"), Some(2.0));
    assert_eq!(sample(&m, "flowgate_client_connections_parked"), Some(parked));
    p.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").await.unwrap();
    assert_eq!(read_response(&mut p, &mut pbuf).await, (200, "abc".into()));
}

/// Through hyper (the fast path off), a connection that carried a request body is never
/// parked: hyper could be in the middle of a body when the timer fires.
#[tokio::test]
async fn without_the_fast_path_a_connection_that_carried_a_body_is_not_parked() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], "listen: { fast_path: false }\n"), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await, (200, "hello from a".into()));
    eventually(SECS, "the idle connection parked", || async { parked(&h).await == 1.0 }).await;
    body_connection(&h, 1.0).await;
}

#[tokio::test]
async fn parked_connections_close_at_the_idle_limit_and_at_shutdown() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], "limits: { header_read_timeout: 400ms }\n"), Secrets(vec![]))
        .await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let get = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    let (mut idle, mut kept) = (TcpStream::connect(h.proxy_addr).await.unwrap(), None);
    let mut buf = Vec::new();
    idle.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut idle, &mut buf).await.0, 200);
    let t = tokio::time::Instant::now();
    let mut one = [0u8; 1];
    let n = tokio::time::timeout(SECS, idle.read(&mut one)).await.expect("closed by flowgate, not by the test");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "idle connection closed after {took:?}"
    );

    // A parked connection does not hold up shutdown, and is closed by it.
    let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.0, 200);
    eventually(SECS, "parked", || async { parked(&h).await == 1.0 }).await;
    kept.replace(s);
    let t = tokio::time::Instant::now();
    h.shutdown().await;
    assert!(t.elapsed() < Duration::from_millis(300), "shutdown took {:?}", t.elapsed());
    let mut s = kept.unwrap();
    let n = tokio::time::timeout(SECS, s.read(&mut one)).await.expect("closed at shutdown");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn connections_can_be_served_by_one_runtime_per_core() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let workers = flowgate::traffic::server::Workers::spawn(2).unwrap();
    let handles = workers.handles();
    let cfg =
        flowgate::config::parse(&yaml(&[("a", fa.url(), 100)], ""), Path::new("t.yaml"), &Secrets(vec![])).unwrap();
    let listeners = flowgate::Listeners::plain(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let h = flowgate::start_on(cfg, listeners, None, handles.clone()).unwrap();
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    // Several connections, several requests each, websockets too: all served.
    for _ in 0..4 {
        let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..3 {
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            assert_eq!(read_response(&mut s, &mut buf).await, (200, "hello from a".into()));
        }
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", h.proxy_addr)).await.unwrap();
    use futures_util::StreamExt;
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "hello from a");
    // The open connections live on the workers, spread over both.
    let held: Vec<TcpStream> = futures_util::future::join_all((0..4).map(|_| TcpStream::connect(h.proxy_addr)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    eventually(SECS, "connections on both workers", || async {
        handles.iter().all(|w| w.metrics().num_alive_tasks() >= 2)
    })
    .await;
    drop(held);
    let t = tokio::time::Instant::now();
    h.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(3), "shutdown took {:?}", t.elapsed());
    workers.stop();
}

#[tokio::test]
async fn the_binary_serves_on_one_runtime_per_core_and_exits_cleanly_on_sigterm() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (proxy, admin) = (free(), free());
    let dir = temp(&format!("bin-{}", rand_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("flowgate.yaml");
    let y = format!("listen: {{ proxy: \"{proxy}\", admin: \"{admin}\" }}\n{}", yaml(&[("a", fa.url(), 100)], ""));
    std::fs::write(&config, y).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("FLOWGATE_WORKERS", "2")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{proxy}/hello");
    eventually(SECS, "served through the binary", || async {
        get(&client(), &url).await.is_ok_and(|r| r.status == 200 && r.body == "hello from a")
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(&client(), &url).await.unwrap().body, "hello from a");
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(SECS, child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
}

/// Clients that send a request head and then only part of the body (a deploy or a runtime
/// upload) used to hold their connection slots for ever: with `max_connections: 50`, 60 such
/// sockets left a new client 503. A body that stops arriving for `header_read_timeout` is now
/// cut (408, connection closed), so the slots come back and a new client is served.
#[tokio::test]
async fn half_sent_bodies_do_not_hold_connection_slots() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let extra = "limits: { max_connections: 50, header_read_timeout: 500ms }\n";
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], extra), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let mut stalled = Vec::new();
    for i in 0..60 {
        let path = if i % 2 == 0 { "/flows" } else { "/echo" };
        let mut s = TcpStream::connect(h.proxy_addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n["
        );
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    let t = tokio::time::Instant::now();
    eventually(SECS, "a new client is served", || async {
        let r = raw(h.proxy_addr, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        r.starts_with("HTTP/1.1 200")
    })
    .await;
    println!("a new client was served {:?} after 60 half-sent bodies", t.elapsed());
    // Each stalled one got its answer and was closed: most by the body deadline (408); the
    // ten beyond the limit found no slot (503); under load a deploy whose credentials check
    // could not be made in time is refused before its body is read (503).
    let mut answers = std::collections::BTreeMap::new();
    for mut s in stalled {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(SECS, s.read_to_end(&mut out)).await.expect("closed by flowgate");
        let text = String::from_utf8_lossy(&out);
        let kind = if text.starts_with("HTTP/1.1 408") {
            "408".to_string()
        } else {
            let code = text.lines().find_map(|l| l.strip_prefix("x-flowgate-error: ")).unwrap_or("?");
            format!("{} {code}", text.get(9..12).unwrap_or("?"))
        };
        *answers.entry(kind).or_insert(0usize) += 1;
    }
    let count = |k: &str| answers.get(k).copied().unwrap_or(0);
    let (cut, no_slot, unchecked) =
        (count("408"), count("503 too-many-connections"), count("503 credentials-unchecked"));
    assert_eq!(cut + no_slot + unchecked, 60, "every one answered by flowgate: {answers:?}");
    assert!(no_slot <= 10, "only those beyond the 50 slots found none: {answers:?}");
    assert!(cut >= 30, "most were cut by the body deadline: {answers:?}");
}

/// An HTTP/2 (h2c) connection with nothing in flight is closed after the idle limit
/// (`header_read_timeout`, as for a kept-alive HTTP/1 connection): idle HTTP/2 clients cannot
/// hold connection slots for ever. A busy one is left alone.
#[tokio::test]
async fn idle_http2_connections_are_closed_at_the_idle_limit() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], "limits: { header_read_timeout: 300ms }\n"), Secrets(vec![]))
        .await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let open = |path: &'static str| {
        let addr = h.proxy_addr;
        async move {
            let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
            let conn = tokio::spawn(conn);
            let req = http::Request::get(format!("http://a.example{path}")).body(Empty::<Bytes>::new()).unwrap();
            let resp = send.send_request(req).await.unwrap();
            (resp, conn, send)
        }
    };
    // Idle after one request: closed by flowgate within a couple of idle limits.
    let (resp, conn, _send) = open("/hello").await;
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "hello from a");
    let t = tokio::time::Instant::now();
    tokio::time::timeout(SECS, conn).await.expect("the idle connection was closed").unwrap().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(250), "closed after {:?}", t.elapsed());
    // Busy: a slow answer longer than the idle limit is not cut.
    let (resp, _conn, _send) = open("/slow?ms=900").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "slow done");
}

/// A websocket tunnel holds two connection slots for its life (client and upstream side): with
/// `max_connections: 3` a second tunnel finds none and gets 503. Before, neither side was
/// counted once upgraded, and tunnels could use up the file descriptors the probes need.
#[tokio::test]
async fn websocket_tunnels_count_against_the_connection_limit() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], "limits: { max_connections: 3 }\n"), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let url = format!("ws://{}/ws", h.proxy_addr);
    let (mut first, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("one tunnel fits");
    let hello = tokio::time::timeout(SECS, futures_util::StreamExt::next(&mut first)).await.unwrap().unwrap().unwrap();
    assert_eq!(hello.to_text().unwrap(), "hello from a");
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("a second tunnel should find no slot: {:?}", other.map(|(_, r)| r.status())),
    }
    drop(first);
    // The slots come back with the tunnel.
    eventually(SECS, "a tunnel again", || async { tokio_tungstenite::connect_async(url.as_str()).await.is_ok() }).await;
}

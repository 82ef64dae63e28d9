//! `admin.read_token`: the read endpoints of the admin API need it (or the admin token), as a
//! bearer token or, for the status page's event stream, as `?token=`; the health checks of
//! load balancers and the page itself stay open. Without it they are open, as before.

mod support;

use support::*;

const ADMIN: &str = "admin-token-0123456789";
const READ: &str = "read-token-0123456789";

async fn status_of(url: &str, token: Option<&str>) -> u16 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let h: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send_with(&client(), "GET", url, "", &h).await.map(|r| r.status).unwrap_or(0)
}

#[tokio::test]
async fn read_endpoints_need_the_read_token_when_one_is_set() {
    let fake = FakeNodeRed::start("a", Options::default(), EventLog::default()).await;
    let y = yaml(&[("a", fake.url(), 100)], "admin: { token: { env: ADM }, read_token: { env: RD } }\n");
    let h = start_flowgate(&y, Secrets(vec![("ADM", ADMIN.into()), ("RD", READ.into())])).await;
    let base = format!("http://{}", h.admin_addr);
    let ready = format!("{base}/ready");
    eventually(std::time::Duration::from_secs(10), "an active instance", || async {
        status_of(&ready, None).await == 200
    })
    .await;
    for path in ["/status", "/metrics"] {
        let url = format!("{base}{path}");
        assert_eq!(status_of(&url, None).await, 401, "{path} without a token");
        assert_eq!(status_of(&url, Some("wrong-token-0123456789")).await, 401, "{path} with a wrong token");
        assert_eq!(status_of(&url, Some(READ)).await, 200, "{path} with the read token");
        assert_eq!(status_of(&url, Some(ADMIN)).await, 200, "{path} with the admin token");
    }
    assert_eq!(status_of(&format!("{base}/status?token={READ}"), None).await, 200, "as ?token=");
    // The event stream, as a browser's EventSource asks for it.
    let req = http::Request::get(format!("{base}/events?token={READ}")).body(http_body_util::Empty::new()).unwrap();
    let resp = empty_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    drop(resp);
    assert_eq!(status_of(&format!("{base}/events"), None).await, 401);
    for path in ["/", "/healthz", "/ready"] {
        assert_eq!(status_of(&format!("{base}{path}"), None).await, 200, "{path} stays open");
    }
}

#[tokio::test]
async fn without_a_read_token_the_read_endpoints_stay_open() {
    let fake = FakeNodeRed::start("a", Options::default(), EventLog::default()).await;
    let h = start_flowgate(&yaml(&[("a", fake.url(), 100)], ""), Secrets(vec![])).await;
    wait_active(&h, "a", std::time::Duration::from_secs(10)).await;
    assert_eq!(status_of(&format!("http://{}/status", h.admin_addr), None).await, 200);
}

/// `admin.tls`: the admin listener speaks HTTPS only (instances on other hosts ask it about
/// editor tokens); a client trusting the certificate is answered, plain HTTP is not.
#[tokio::test]
async fn with_admin_tls_the_admin_listener_speaks_https_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeNodeRed::start("a", Options::default(), EventLog::default()).await;
    let certs = support::node_red::temp_dir("admin-tls");
    let (cert, key) = flowgate::traffic::tls::self_signed(&["flowgate.local"]).unwrap();
    std::fs::write(certs.join("admin.crt"), &cert).unwrap();
    std::fs::write(certs.join("admin.key"), key).unwrap();
    let y = yaml(&[("a", fake.url(), 100)], &format!("admin: {{ tls: {{ certs: \"{}\" }} }}\n", certs.display()));
    let h = start_flowgate(&y, Secrets(vec![])).await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(h.admin_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("flowgate.local").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the certificate is accepted");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: flowgate.local\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let plain = get(&client(), &format!("http://{}/healthz", h.admin_addr)).await;
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|r| r.status != 200), "plain HTTP is not served");
}

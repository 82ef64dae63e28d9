//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay test. Each must
//! return normally for any input: a panic is a bug.

use std::path::Path;

struct NoSecrets;

impl crate::config::SecretSource for NoSecrets {
    fn env(&self, _: &str) -> Option<String> {
        Some("fuzz-secret".into())
    }
    fn file(&self, _: &str) -> std::io::Result<String> {
        Ok("fuzz-secret".into())
    }
}

/// The config loader: YAML syntax, types, validation and the line locator.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match crate::config::parse(text, Path::new("fuzz.yaml"), &NoSecrets) {
            Ok(c) => assert!(!c.backends.is_empty(), "a valid config has backends"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// The sticky-cookie check: never panics, and accepts only the exact cookie it issued.
pub fn cookie(data: &[u8]) {
    let codec = crate::editor::cookie::CookieCodec::new(Some("fuzz"));
    let issued = codec.encode("nr-a");
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, v);
        if crate::editor::cookie::CookieCodec::carries(&h, "flowgate_editor", &issued) {
            assert!(data.windows(issued.len()).any(|w| w == issued.as_bytes()), "only the issued value is accepted");
        }
    }
}

/// Routing and header hygiene of one request: route classification, the path below
/// httpAdminRoot and the editor action, hop-by-hop stripping, X-Forwarded-*, the HTTPS
/// redirect and admin query parameters. Input: a method line, a request-target line, then
/// `name: value` header lines.
pub fn request(data: &[u8]) {
    use crate::traffic::proxy::{RouteClass, forward, route};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else { return };
    let Ok(method) = http::Method::from_bytes(method.trim().as_bytes()) else { return };
    let Ok(uri) = target.trim().parse::<http::Uri>() else { return };
    let mut headers = http::HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && let (Ok(k), Ok(v)) =
                (http::HeaderName::from_bytes(k.trim().as_bytes()), http::HeaderValue::from_str(v.trim()))
        {
            headers.append(k, v);
        }
    }
    let upgrade = forward::is_upgrade(http::Version::HTTP_11, &headers);
    let roots = [("/", "/"), ("/admin/", "/api/"), ("/", "/api/"), ("/red/", "/")];
    for (admin, node) in roots {
        let paths = crate::config::NodeRedPaths { admin_root: admin.into(), node_root: node.into() };
        let path = uri.path();
        let class = route::classify(path, upgrade, &paths);
        // Node-RED's routes ignore letter case; so does the classification.
        assert_eq!(class, route::classify(&path.to_ascii_uppercase(), upgrade, &paths), "{path}");
        if let Some(rel) = route::admin_relative(path, admin) {
            let action = crate::editor::cookie::action(&method, &rel);
            let shouted = path.to_ascii_uppercase();
            let upper = route::admin_relative(&shouted, admin).expect("case-insensitive root");
            assert_eq!(action, crate::editor::cookie::action(&method, &upper), "{path}");
            if admin == node && action != crate::editor::cookie::Action::Forward {
                assert!(
                    matches!(class, RouteClass::Editor | RouteClass::EditorSocket),
                    "an editor write is editor traffic"
                );
            }
        }
    }
    let mut h = headers.clone();
    forward::strip_hop_by_hop(&mut h, false);
    for gone in ["connection", "keep-alive", "te", "transfer-encoding", "upgrade", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} forwarded");
    }
    forward::set_forwarded(&mut h, &uri, std::net::Ipv4Addr::LOCALHOST.into(), false, &[]);
    assert_eq!(
        h.get(&forward::X_FORWARDED_FOR).map(|v| v.as_bytes()),
        Some(&b"127.0.0.1"[..]),
        "a client cannot forge it"
    );
    let r = crate::traffic::server::redirect_to(&headers, &uri, 8443);
    if let Some(l) = r.headers().get(http::header::LOCATION) {
        assert!(l.as_bytes().starts_with(b"https://"));
    }
    if let Some(q) = uri.query() {
        let _ = crate::ops::admin::query_value(q, "to");
    }
}

/// Request and answer bodies flowgate reads: revoke and login forms (form or JSON), a login
/// answer, deploy checks under every API version and deployment type, a deploy answer's
/// `rev`, and a flow-state answer.
pub fn bodies(data: &[u8]) {
    use crate::editor::logins;
    let _ = logins::revoked_token(data);
    let _ = logins::requested_scope(data);
    if let Some((token, _)) = logins::parse_login(data) {
        assert!(!token.is_empty() || data.windows(2).any(|w| w == b"\"\""));
    }
    for api in [None, Some("v1"), Some("v2"), Some("v3")] {
        for kind in [None, Some("full"), Some("nodes"), Some("flows"), Some("reload"), Some("bogus")] {
            let mut h = http::HeaderMap::new();
            if let Some(a) = api {
                h.insert("node-red-api-version", http::HeaderValue::from_static(a));
            }
            if let Some(k) = kind {
                h.insert("node-red-deployment-type", http::HeaderValue::from_static(k));
            }
            let _ = crate::editor::writes::check_deploy(&h, data);
        }
    }
    let _ = crate::editor::fanout::rev_of(data);
    let _ = crate::backend::FlowState::parse(data);
}

/// The state files read at start: the remembered logins (`tokens.json`) and the in-step
/// table (`target.json`, `credentials.sealed`). Whatever is in them, opening never panics.
pub fn stored(data: &[u8]) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("flowgate-fuzz-{}-{n}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for name in ["tokens.json", "target.json", "credentials.sealed"] {
        let _ = std::fs::write(dir.join(name), data);
    }
    let store = crate::editor::logins::TokenStore::open(Some(&dir));
    let _ = store.lookup("x");
    let ids = vec!["a".to_string(), "b".to_string()];
    let _ = crate::editor::sync::SyncTable::open(ids, Some(&dir), Some("fuzz-key"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fast path's heads: a request head (checked and rewritten), a response head, and a
/// chunked body's end. For a forwarded request the upstream head must parse, keep the method
/// and target, carry exactly one `X-Forwarded-For` naming the peer, and no hop-by-hop header.
pub fn fast_head(data: &[u8]) {
    use crate::traffic::proxy::fast::head;
    let paths = crate::config::NodeRedPaths { admin_root: "/red/".into(), node_root: "/".into() };
    for balanced in [false, true] {
        let cx = head::Context {
            paths: &paths,
            trusted: &[],
            peer: std::net::Ipv4Addr::new(192, 0, 2, 7).into(),
            tls: false,
            balanced,
            max_headers: 100,
        };
        let mut out = Vec::new();
        if let head::Parsed::Forward(r) = head::request(data, &cx, &mut out) {
            assert!(r.head_len <= data.len() && r.method.1 <= r.head_len && r.target.1 <= r.head_len);
            let mut hs = [httparse::EMPTY_HEADER; 110];
            let mut up = httparse::Request::new(&mut hs);
            let parsed = up.parse(&out).expect("the upstream head parses");
            assert_eq!(parsed, httparse::Status::Complete(out.len()), "one whole head");
            assert_eq!(up.method.map(str::as_bytes), Some(&data[r.method.0..r.method.1]));
            assert_eq!(up.path.map(str::as_bytes), Some(&data[r.target.0..r.target.1]));
            let named = |n: &str| up.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(n)).count();
            assert_eq!(named("x-forwarded-for"), 1);
            assert!(up.headers.iter().any(|h| h.name == "x-forwarded-for" && h.value == b"192.0.2.7"));
            for hop in ["connection", "keep-alive", "te", "transfer-encoding", "upgrade", "proxy-authorization"] {
                assert_eq!(named(hop), 0, "{hop} forwarded");
            }
        }
    }
    for (is_head, close) in [(false, false), (true, true)] {
        let mut out = Vec::new();
        if let head::Response::Head { head_len, .. } = head::response(data, is_head, close, &mut out) {
            assert!(head_len <= data.len());
            let mut hs = [httparse::EMPTY_HEADER; 110];
            let mut resp = httparse::Response::new(&mut hs);
            assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())), "the client head parses");
        }
    }
    let mut c = head::Chunked::default();
    if let Ok(Some(end)) = c.feed(data) {
        assert!(end <= data.len());
    }
}

//! Header hygiene for one hop: hop-by-hop headers removed (RFC 9110 §7.6.1), X-Forwarded-*
//! set, and the upstream URI built.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Uri, Version};

use crate::config::Cidr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any named in `Connection`. For an upgrade the
/// `Connection: upgrade` / `Upgrade` pair is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` and an `Upgrade` header).
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sets X-Forwarded-For/Proto/Host. From a trusted peer existing values are kept (For is
/// appended to); from anyone else they are replaced, so clients cannot forge them.
pub fn set_forwarded(headers: &mut HeaderMap, uri: &Uri, peer: IpAddr, tls: bool, trusted: &[Cidr]) {
    let trust = !trusted.is_empty() && trusted.iter().any(|c| c.contains(peer));
    let peer_text = peer.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if trust => HeaderValue::from_str(&format!("{prev}, {peer_text}")),
        _ => HeaderValue::from_str(&peer_text),
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !(trust && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(trust && headers.contains_key(&X_FORWARDED_HOST)) {
        let host = headers
            .get(header::HOST)
            .cloned()
            .or_else(|| uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST.clone(), h);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    // HTTP/2 clients send :authority instead of Host; HTTP/1.1 upstreams need Host.
    if !headers.contains_key(header::HOST)
        && let Some(a) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, a);
    }
}

/// The client's path and query as an HTTP/1.1 request target (origin form).
pub fn origin_form(client_uri: &Uri) -> Uri {
    if client_uri.scheme().is_none() && client_uri.authority().is_none() && client_uri.path_and_query().is_some() {
        return client_uri.clone();
    }
    let pq = client_uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}

/// `<backend scheme>://<backend authority><path and query of the client's request>`.
pub fn upstream_uri(scheme: &Scheme, authority: &http::uri::Authority, client_uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(client_uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts).expect("scheme, authority and path are set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn upgrades_keep_the_upgrade_pair() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(is_upgrade(Version::HTTP_11, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_upgrade(Version::HTTP_11, &headers(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(Version::HTTP_2, &headers(&[("connection", "upgrade"), ("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_headers_are_replaced_for_untrusted_peers() {
        let uri: Uri = "/x".parse().unwrap();
        let mut h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "https"), ("host", "plant.local")]);
        set_forwarded(&mut h, &uri, "192.0.2.7".parse().unwrap(), false, &[]);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "plant.local");
    }

    #[test]
    fn forwarded_for_is_appended_for_trusted_peers() {
        let uri: Uri = "/x".parse().unwrap();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let mut h = headers(&[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-proto", "https"), ("host", "h")]);
        set_forwarded(&mut h, &uri, "10.1.1.1".parse().unwrap(), false, &trusted);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn http2_authority_becomes_host() {
        let uri: Uri = "http://plant.local:1880/x".parse().unwrap();
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &uri, "127.0.0.1".parse().unwrap(), false, &[]);
        assert_eq!(h["host"], "plant.local:1880");
        assert_eq!(h["x-forwarded-host"], "plant.local:1880");
    }

    #[test]
    fn origin_form_keeps_only_path_and_query() {
        assert_eq!(origin_form(&"/a/b?c=d".parse().unwrap()), "/a/b?c=d");
        assert_eq!(origin_form(&"http://x:1/p?q".parse().unwrap()), "/p?q");
        assert_eq!(origin_form(&"http://x:1".parse().unwrap()), "/");
    }

    #[test]
    fn upstream_uri_keeps_path_and_query() {
        let a: http::uri::Authority = "127.0.0.1:1881".parse().unwrap();
        assert_eq!(upstream_uri(&Scheme::HTTP, &a, &"/a/b?c=d".parse().unwrap()), "http://127.0.0.1:1881/a/b?c=d");
        assert_eq!(upstream_uri(&Scheme::HTTPS, &a, &"http://x:1/p".parse().unwrap()), "https://127.0.0.1:1881/p");
    }
}

//! Editor sessions: the sticky cookie and what each editor request means.
//!
//! The cookie pins an editor to one instance: by default the active at first contact. All its
//! requests, and its `/comms` websocket, go there while that instance is healthy and active.
//! When it fails or stops being active, the editor moves to the new active: its websocket is
//! closed (so the editor reconnects) and the cookie is re-issued. The cookie is
//! `v1:<instance id>:<HMAC-SHA256 tag>`; an unknown, malformed or tampered cookie is treated
//! as absent.

use http::Method;
use http::header::{COOKIE, HeaderMap, HeaderValue};

use crate::crypto;

const TAG_BYTES: usize = 16;

/// Signs and checks cookie values.
pub struct CookieCodec {
    key: [u8; 32],
}

impl CookieCodec {
    /// `secret` from config, or a random key (cookies are then re-issued after a restart).
    pub fn new(secret: Option<&str>) -> Self {
        CookieCodec { key: secret.map(crypto::key_from_secret).unwrap_or_else(crypto::random::<32>) }
    }

    fn tag(&self, id: &str) -> String {
        crypto::hex(&crypto::hmac(&self.key, format!("v1:{id}").as_bytes())[..TAG_BYTES])
    }

    pub fn encode(&self, id: &str) -> String {
        format!("v1:{id}:{}", self.tag(id))
    }

    /// True if a cookie `name` carries exactly `expected` (the [`Self::encode`]d value of the
    /// instance it should pin), compared in constant time; no tag is computed per request.
    pub fn carries(headers: &HeaderMap, name: &str, expected: &str) -> bool {
        cookies(headers, name).any(|v| crypto::constant_time_eq(v.as_bytes(), expected.as_bytes()))
    }

    /// `Set-Cookie` pinning the editor to `id`.
    pub fn set_cookie(&self, name: &str, id: &str, path: &str, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!("{name}={}; Path={path}; HttpOnly; SameSite=Lax{secure}", self.encode(id)))
            .expect("ids and paths are header-safe")
    }
}

/// The values of the cookies called `name`.
fn cookies<'a, 'n>(headers: &'a HeaderMap, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Load-balanced mode: the cookie that keeps a browser's runtime session (a dashboard's
/// socket.io requests) on one instance. Path `/`, so it reaches any `httpNodeRoot`.
pub const AFFINITY_COOKIE: &str = "flowgate_affinity";

/// One instance's editor cookie, built once per configuration.
pub struct Pin {
    /// The cookie's value (the same for the editor and the affinity cookie).
    pub value: String,
    /// `Set-Cookie` for plain HTTP and for HTTPS (with `Secure`).
    pub set_cookie: [HeaderValue; 2],
    /// The same for [`AFFINITY_COOKIE`].
    pub affinity: [HeaderValue; 2],
}

impl Pin {
    pub fn new(codec: &CookieCodec, name: &str, id: &str, path: &str) -> Self {
        let a = AFFINITY_COOKIE;
        Pin {
            value: codec.encode(id),
            set_cookie: [codec.set_cookie(name, id, path, false), codec.set_cookie(name, id, path, true)],
            affinity: [codec.set_cookie(a, id, "/", false), codec.set_cookie(a, id, "/", true)],
        }
    }
}

/// What an editor request (under httpAdminRoot) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A write that must reach every instance (`editor/writes.rs`).
    Write(EditorWrite),
    /// `POST flows/state`: flowgate owns flow state; refused.
    FlowState,
    /// Everything else goes to the editor's instance as is.
    Forward,
}

/// The editor writes flowgate keeps in step on every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditorWrite {
    /// `POST flows`: deploy to every instance.
    Deploy,
    /// `POST flow`: not replayable (each instance picks its own ids); the others are brought in
    /// step from the active's resulting flows.
    AddFlow,
    /// Replayable writes: `PUT|DELETE flow/:id`, `POST library/…`, `POST settings/user`.
    Replay { flows_changed: bool },
    /// Palette changes (`POST nodes`, `PUT|DELETE nodes/…`): replayed to every instance with
    /// the longer palette timeout.
    Palette,
    /// `POST auth/token`: login; the token is remembered so every instance can accept it.
    Login,
    /// `POST auth/revoke`.
    Logout,
}

/// Classifies an editor request by method and path relative to httpAdminRoot.
/// `rel`: the path below httpAdminRoot as `traffic::proxy::route::admin_relative` gives it
/// (folded as Express folds it). One trailing slash is optional, as in Express.
pub fn action(method: &Method, rel: &str) -> Action {
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    let first = rel.split('/').next().unwrap_or("");
    match (method, first) {
        (&Method::POST, "flows") if rel == "flows" => Action::Write(EditorWrite::Deploy),
        (&Method::POST, "flows") if rel == "flows/state" => Action::FlowState,
        (&Method::POST, "flow") if rel == "flow" => Action::Write(EditorWrite::AddFlow),
        (&Method::PUT | &Method::DELETE, "flow") if rel.len() > "flow/".len() => {
            Action::Write(EditorWrite::Replay { flows_changed: true })
        }
        (&Method::POST, "library") => Action::Write(EditorWrite::Replay { flows_changed: false }),
        (&Method::POST, "settings") if rel == "settings/user" => {
            Action::Write(EditorWrite::Replay { flows_changed: false })
        }
        (&Method::POST, "nodes") if rel == "nodes" => Action::Write(EditorWrite::Palette),
        (&Method::PUT | &Method::DELETE, "nodes") if rel.len() > "nodes/".len() => Action::Write(EditorWrite::Palette),
        (&Method::POST, "auth") if rel == "auth/token" => Action::Write(EditorWrite::Login),
        (&Method::POST, "auth") if rel == "auth/revoke" => Action::Write(EditorWrite::Logout),
        _ => Action::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jar(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&format!("a=1; flowgate_editor={value}; b=2")).unwrap());
        h
    }

    #[test]
    fn a_cookie_is_recognised_for_every_valid_id() {
        let c = CookieCodec::new(Some("k"));
        for id in ["a", "nr-a", "node.red_1", &"x".repeat(64)] {
            let v = c.encode(id);
            assert!(CookieCodec::carries(&jar(&v), "flowgate_editor", &v), "{id}");
            assert!(CookieCodec::carries(&jar(&format!("\"{v}\"")), "flowgate_editor", &v), "quoted {id}");
        }
        assert_ne!(c.encode("nr-a"), c.encode("nr-b"));
    }

    /// Any single-byte change, truncation or extension of a cookie is rejected.
    #[test]
    fn any_tamper_is_rejected() {
        let c = CookieCodec::new(Some("k"));
        let good = c.encode("nr-a");
        let carries = |v: &str| CookieCodec::carries(&jar(v), "flowgate_editor", &good);
        let bytes = good.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'0', b'a', b'f', b'z', b':', b'-', b'.'] {
                if bytes[i] == b {
                    continue;
                }
                let mut t = bytes.to_vec();
                t[i] = b;
                let t = String::from_utf8(t).unwrap();
                assert!(!carries(&t), "{t}");
            }
        }
        for cut in 0..good.len() {
            assert!(!carries(&good[..cut]));
        }
        assert!(!carries(&format!("{good}0")));
        assert!(!carries(&CookieCodec::new(Some("other")).encode("nr-a")), "another key");
        assert!(!carries(&c.encode("nr-b")), "another instance");
    }

    #[test]
    fn only_the_named_cookie_counts_and_set_cookie_is_locked_down() {
        let c = CookieCodec::new(None);
        let v = c.encode("nr-b");
        assert!(CookieCodec::carries(&jar(&v), "flowgate_editor", &v));
        assert!(!CookieCodec::carries(&jar(&v), "other", &v));
        let set = c.set_cookie("flowgate_editor", "nr-b", "/admin/", true);
        let s = set.to_str().unwrap();
        assert!(s.starts_with(&format!("flowgate_editor={v};")));
        assert!(
            s.contains("HttpOnly")
                && s.contains("SameSite=Lax")
                && s.ends_with("; Secure")
                && s.contains("Path=/admin/")
        );
    }

    #[test]
    fn editor_actions() {
        let table = [
            (Method::POST, "flows", Action::Write(EditorWrite::Deploy)),
            (Method::GET, "flows", Action::Forward),
            (Method::POST, "flows/state", Action::FlowState),
            (Method::GET, "flows/state", Action::Forward),
            (Method::POST, "flow", Action::Write(EditorWrite::AddFlow)),
            (Method::PUT, "flow/abc", Action::Write(EditorWrite::Replay { flows_changed: true })),
            (Method::DELETE, "flow/abc", Action::Write(EditorWrite::Replay { flows_changed: true })),
            (Method::PUT, "flow/global", Action::Write(EditorWrite::Replay { flows_changed: true })),
            (Method::POST, "library/flows/x.json", Action::Write(EditorWrite::Replay { flows_changed: false })),
            (Method::POST, "settings/user", Action::Write(EditorWrite::Replay { flows_changed: false })),
            (Method::POST, "nodes", Action::Write(EditorWrite::Palette)),
            (Method::PUT, "nodes/node-red-contrib-x", Action::Write(EditorWrite::Palette)),
            (Method::DELETE, "nodes/node-red-contrib-x", Action::Write(EditorWrite::Palette)),
            (Method::GET, "nodes", Action::Forward),
            (Method::POST, "auth/token", Action::Write(EditorWrite::Login)),
            (Method::POST, "auth/revoke", Action::Write(EditorWrite::Logout)),
            (Method::POST, "inject/abc", Action::Forward),
            (Method::POST, "debug/abc/enable", Action::Forward),
            (Method::POST, "flows/", Action::Write(EditorWrite::Deploy)),
            (Method::POST, "flows//", Action::Forward),
            (Method::PUT, "flow/abc/", Action::Write(EditorWrite::Replay { flows_changed: true })),
        ];
        for (m, p, want) in table {
            assert_eq!(action(&m, p), want, "{m} {p}");
        }
    }
}

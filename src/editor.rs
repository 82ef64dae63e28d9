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

    /// The instance id in a cookie value, if the value is intact.
    pub fn decode<'a>(&self, value: &'a str) -> Option<&'a str> {
        let rest = value.strip_prefix("v1:")?;
        let (id, tag) = rest.rsplit_once(':')?;
        if id.is_empty() || id.contains(':') {
            return None;
        }
        crate::admin::constant_time_eq(tag.as_bytes(), self.tag(id).as_bytes()).then_some(id)
    }

    /// The pinned instance id from the request's cookies.
    pub fn pinned<'a>(&self, headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        cookies(headers, name).find_map(|v| self.decode(v))
    }

    /// True if a cookie `name` carries exactly `expected` (an [`Self::encode`]d value), compared
    /// in constant time. Cheaper than [`Self::pinned`]: no tag is computed per request.
    pub fn carries(headers: &HeaderMap, name: &str, expected: &str) -> bool {
        cookies(headers, name).any(|v| crate::admin::constant_time_eq(v.as_bytes(), expected.as_bytes()))
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

/// One instance's editor cookie, built once per configuration.
pub struct Pin {
    /// The cookie's value.
    pub value: String,
    /// `Set-Cookie` for plain HTTP and for HTTPS (with `Secure`).
    pub set_cookie: [HeaderValue; 2],
}

impl Pin {
    pub fn new(codec: &CookieCodec, name: &str, id: &str, path: &str) -> Self {
        Pin {
            value: codec.encode(id),
            set_cookie: [codec.set_cookie(name, id, path, false), codec.set_cookie(name, id, path, true)],
        }
    }
}

/// What an editor request (under httpAdminRoot) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST flows`: deploy to every instance.
    Deploy,
    /// `POST flows/state`: flowgate owns flow state; refused.
    FlowState,
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
    /// Everything else goes to the editor's instance as is.
    Forward,
}

/// Classifies an editor request by method and path relative to httpAdminRoot.
pub fn action(method: &Method, rel: &str) -> Action {
    let rel = rel.trim_end_matches('/');
    let first = rel.split('/').next().unwrap_or("");
    match (method, first) {
        (&Method::POST, "flows") if rel == "flows" => Action::Deploy,
        (&Method::POST, "flows") if rel == "flows/state" => Action::FlowState,
        (&Method::POST, "flow") if rel == "flow" => Action::AddFlow,
        (&Method::PUT | &Method::DELETE, "flow") if rel.len() > "flow/".len() => Action::Replay { flows_changed: true },
        (&Method::POST, "library") => Action::Replay { flows_changed: false },
        (&Method::POST, "settings") if rel == "settings/user" => Action::Replay { flows_changed: false },
        (&Method::POST, "nodes") if rel == "nodes" => Action::Palette,
        (&Method::PUT | &Method::DELETE, "nodes") if rel.len() > "nodes/".len() => Action::Palette,
        (&Method::POST, "auth") if rel == "auth/token" => Action::Login,
        (&Method::POST, "auth") if rel == "auth/revoke" => Action::Logout,
        _ => Action::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trips_for_every_valid_id() {
        let c = CookieCodec::new(Some("k"));
        for id in ["a", "nr-a", "node.red_1", &"x".repeat(64)] {
            assert_eq!(c.decode(&c.encode(id)), Some(id));
        }
    }

    /// Any single-byte change, truncation or extension of a cookie is rejected.
    #[test]
    fn any_tamper_is_rejected() {
        let c = CookieCodec::new(Some("k"));
        let good = c.encode("nr-a");
        let bytes = good.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'0', b'a', b'f', b'z', b':', b'-', b'.'] {
                if bytes[i] == b {
                    continue;
                }
                let mut t = bytes.to_vec();
                t[i] = b;
                let t = String::from_utf8(t).unwrap();
                assert_eq!(c.decode(&t), None, "{t}");
            }
        }
        for cut in 0..good.len() {
            assert_eq!(c.decode(&good[..cut]), None);
        }
        assert_eq!(c.decode(&format!("{good}0")), None);
        assert_eq!(CookieCodec::new(Some("other")).decode(&good), None, "another key");
        assert_eq!(c.decode("v1:nr-b:00000000000000000000000000000000"), None);
    }

    #[test]
    fn pinned_reads_the_named_cookie_among_others() {
        let c = CookieCodec::new(None);
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&format!("a=1; flowgate_editor={}; b=2", c.encode("nr-b"))).unwrap());
        assert_eq!(c.pinned(&h, "flowgate_editor"), Some("nr-b"));
        assert_eq!(c.pinned(&h, "other"), None);
        let set = c.set_cookie("flowgate_editor", "nr-b", "/admin/", true);
        let s = set.to_str().unwrap();
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
            (Method::POST, "flows", Action::Deploy),
            (Method::GET, "flows", Action::Forward),
            (Method::POST, "flows/state", Action::FlowState),
            (Method::GET, "flows/state", Action::Forward),
            (Method::POST, "flow", Action::AddFlow),
            (Method::PUT, "flow/abc", Action::Replay { flows_changed: true }),
            (Method::DELETE, "flow/abc", Action::Replay { flows_changed: true }),
            (Method::PUT, "flow/global", Action::Replay { flows_changed: true }),
            (Method::POST, "library/flows/x.json", Action::Replay { flows_changed: false }),
            (Method::POST, "settings/user", Action::Replay { flows_changed: false }),
            (Method::POST, "nodes", Action::Palette),
            (Method::PUT, "nodes/node-red-contrib-x", Action::Palette),
            (Method::DELETE, "nodes/node-red-contrib-x", Action::Palette),
            (Method::GET, "nodes", Action::Forward),
            (Method::POST, "auth/token", Action::Login),
            (Method::POST, "auth/revoke", Action::Logout),
            (Method::POST, "inject/abc", Action::Forward),
            (Method::POST, "debug/abc/enable", Action::Forward),
        ];
        for (m, p, want) in table {
            assert_eq!(action(&m, p), want, "{m} {p}");
        }
    }
}

//! Editor logins that survive a failover.
//!
//! Node-RED keeps access tokens per instance, so a token issued by one instance is refused by
//! the others. flowgate sees every login (`POST <admin>/auth/token`) pass through it and
//! remembers each issued token with its user and permissions (read back from the issuing
//! instance's `GET <admin>/settings`). Each instance's settings.js asks flowgate about tokens
//! it does not know itself, through `adminAuth.tokens` (a function Node-RED calls for unknown
//! bearer tokens, on HTTP and on the `/comms` websocket) and flowgate's admin endpoint
//! `GET /auth/token-info`. So a token obtained before a failover keeps working after it,
//! with no rewriting of requests or websocket messages.
//!
//! Only SHA-256 hashes of tokens are kept (memory and `state.dir/tokens.json`), with their
//! expiry; a logout (`POST <admin>/auth/revoke`) removes the token.
//!
//! Replicas share them through etcd (`tokens/<hash>`): a login or logout through any replica
//! is sent to the store, and every replica mirrors what the store holds, so each answers
//! `GET /auth/token-info` for every login.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub username: String,
    pub permissions: Value,
    pub expires_unix: u64,
    /// The instance that issued it (none in logins remembered by older versions).
    #[serde(default)]
    pub issuer: Option<String>,
}

pub struct TokenStore {
    tokens: Mutex<HashMap<String, TokenInfo>>,
    /// When the issuer last accepted each token (by hash): it is vouched for without asking
    /// again for [`CONFIRMED_FOR`].
    confirmed: Mutex<HashMap<String, std::time::Instant>>,
    path: Option<PathBuf>,
    /// Replicas: logins and logouts are shared through the store.
    share: Mutex<Option<tokio::sync::mpsc::UnboundedSender<crate::control::coord::ToStore>>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hash(token: &str) -> String {
    crypto::hex(&crypto::sha256(token.as_bytes()))
}

impl Default for TokenStore {
    /// Kept in memory only.
    fn default() -> Self {
        TokenStore::open(None)
    }
}

/// The remembered logins in `path`. A file that cannot be read or parsed is reported, and a
/// corrupt one is kept beside it (`tokens.json.corrupt`) rather than overwritten; editors then
/// log in again.
fn load(path: &std::path::Path) -> HashMap<String, TokenInfo> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read remembered editor logins; editors must log in again");
            return HashMap::new();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            let kept = std::fs::rename(path, &aside).map(|_| aside.display().to_string());
            tracing::error!(
                path = %path.display(), error = %e, kept_as = ?kept,
                "remembered editor logins are corrupt; starting without them (editors must log in again)"
            );
            HashMap::new()
        }
    }
}

impl TokenStore {
    pub fn open(dir: Option<&std::path::Path>) -> Self {
        let path = dir.map(|d| d.join("tokens.json"));
        let mut tokens: HashMap<String, TokenInfo> = path.as_deref().map(load).unwrap_or_default();
        let t = now();
        tokens.retain(|_, i| i.expires_unix > t);
        TokenStore { tokens: Mutex::new(tokens), confirmed: Mutex::new(HashMap::new()), path, share: Mutex::new(None) }
    }

    /// Replicas: share every login and logout through the store from now on.
    pub fn share_through(&self, to_store: tokio::sync::mpsc::UnboundedSender<crate::control::coord::ToStore>) {
        *self.share.lock().unwrap_or_else(|e| e.into_inner()) = Some(to_store);
    }

    fn shared(&self, msg: crate::control::coord::ToStore) {
        if let Some(tx) = &*self.share.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(msg);
        }
    }

    /// Replicas: what the store holds for `hash` (a login through another replica, or its
    /// logout); not shared again.
    pub fn mirror(&self, hash: &str, info: Option<TokenInfo>) {
        let mut m = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match info {
            Some(i) if i.expires_unix > now() => m.insert(hash.to_string(), i.clone()).as_ref() != Some(&i),
            _ => m.remove(hash).is_some(),
        };
        if changed {
            self.save(&m);
        }
    }

    fn save(&self, tokens: &HashMap<String, TokenInfo>) {
        let Some(path) = &self.path else { return };
        let data = serde_json::to_vec(tokens).expect("serialises");
        if let Err(e) = crate::files::write_private(path, &data) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save editor tokens");
        }
    }

    pub fn insert(&self, token: &str, username: String, permissions: Value, expires_in: u64, issuer: &str) {
        let mut m = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let t = now();
        m.retain(|_, i| i.expires_unix > t);
        let expires_unix = t.saturating_add(expires_in);
        let info = TokenInfo { username, permissions, expires_unix, issuer: Some(issuer.to_string()) };
        let h = hash(token);
        m.insert(h.clone(), info.clone());
        self.save(&m);
        drop(m);
        self.confirm(token);
        self.shared(crate::control::coord::ToStore::Token { hash: h, info: Some(info) });
    }

    /// Its issuer accepted it just now.
    pub fn confirm(&self, token: &str) {
        let mut c = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        c.retain(|_, t| now.duration_since(*t) < CONFIRMED_FOR);
        c.insert(hash(token), now);
    }

    /// `issuer` came back (restarted, perhaps with other users): its logins are confirmed with
    /// it again before they are vouched for.
    pub fn unconfirm_issuer(&self, issuer: &str) {
        let m = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|h, _| m.get(h).is_none_or(|i| i.issuer.as_deref() != Some(issuer)));
    }

    fn confirmed_recently(&self, token: &str) -> bool {
        let c = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&hash(token)).is_some_and(|t| t.elapsed() < CONFIRMED_FOR)
    }

    pub fn remove(&self, token: &str) {
        let h = hash(token);
        let mut m = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if m.remove(&h).is_some() {
            self.save(&m);
        }
        drop(m);
        self.shared(crate::control::coord::ToStore::Token { hash: h, info: None });
    }

    pub fn lookup(&self, token: &str) -> Option<TokenInfo> {
        let m = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&hash(token)).filter(|i| i.expires_unix > now()).cloned()
    }
}

/// How long an issuer's acceptance of a token is relied on before it is asked again.
pub const CONFIRMED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What to answer an instance asking `GET /auth/token-info` about a remembered token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Vouch for it.
    Answer,
    /// Unknown: the asker is the instance that issued it, so that instance itself no longer
    /// accepts it (revoked, expired, its user deleted, its sessions lost).
    Refuse,
    /// Ask the issuer first whether it still accepts it.
    AskIssuer,
}

/// Pure. `asker`: the instance asking (`x-flowgate-instance`, sent by the documented hook);
/// `issuer_up`: its last probe answered; `fresh`: it accepted the token within
/// [`CONFIRMED_FOR`].
pub fn plan(asker: Option<&str>, issuer: Option<&str>, issuer_up: bool, fresh: bool) -> Plan {
    match (asker, issuer) {
        (Some(a), Some(i)) if a == i => Plan::Refuse,
        // Remembered by an older version, or the asker does not say who it is: as before.
        (_, None) | (None, _) => Plan::Answer,
        // Down (a failover): the login must survive it, and nobody can be asked.
        _ if fresh || !issuer_up => Plan::Answer,
        _ => Plan::AskIssuer,
    }
}

/// What the issuer's answer to `GET <admin>/settings` with the token says: `Some(true)` it
/// accepts the token, `Some(false)` it refuses it, `None` no answer to judge by.
pub fn accepted(answer: Result<http::StatusCode, &crate::backend::CallError>) -> Option<bool> {
    match answer {
        Ok(http::StatusCode::UNAUTHORIZED) => Some(false),
        Ok(s) if s.is_success() || s == http::StatusCode::FORBIDDEN => Some(true),
        _ => None,
    }
}

/// The answer to `GET /auth/token-info`: the remembered login, while its issuer still accepts
/// it. A user deleted from the issuer's settings, or a token revoked there behind flowgate's
/// back, is refused by the issuer, then forgotten here, so no other instance accepts it either.
pub async fn token_info(
    shared: &crate::state::Shared,
    client: &crate::backend::AdminClient,
    token: &str,
    asker: Option<&str>,
) -> Option<TokenInfo> {
    let info = shared.tokens.lookup(token)?;
    let issuer = info.issuer.as_deref().and_then(|id| shared.backends().position(|b| b.id.as_str() == id));
    let up = issuer.is_some_and(|i| shared.seen_up(i));
    let fresh = shared.tokens.confirmed_recently(token);
    match plan(asker, info.issuer.as_deref().filter(|_| issuer.is_some()), up, fresh) {
        Plan::Answer => Some(info),
        Plan::Refuse => None,
        Plan::AskIssuer => {
            let b = shared.backend(issuer.expect("planned with an issuer"));
            let mut h = http::HeaderMap::new();
            let bearer = http::HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
            h.insert(http::header::AUTHORIZATION, bearer);
            let path = format!("{}settings", b.admin_root);
            let timeout = shared.config.health.timeout;
            let r = b.exchange(client, http::Method::GET, &path, h, bytes::Bytes::new(), timeout).await;
            match accepted(r.as_ref().map(|r| r.0)) {
                Some(true) => {
                    shared.tokens.confirm(token);
                    Some(info)
                }
                Some(false) => {
                    tracing::warn!(user = %info.username, issuer = %b.id, "an editor login is no longer accepted by the instance that issued it; forgotten");
                    shared.tokens.remove(token);
                    None
                }
                None => Some(info),
            }
        }
    }
}

/// The `access_token` and `expires_in` of a Node-RED login answer.
pub fn parse_login(body: &[u8]) -> Option<(String, u64)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some((v.get("access_token")?.as_str()?.to_string(), v.get("expires_in").and_then(Value::as_u64).unwrap_or(604_800)))
}

/// A field of a request body as Node-RED's body parsers read it: JSON, or form-encoded (any
/// escape case, `+` for a space).
fn body_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim_start();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        return match &v[name] {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")),
            _ => None,
        };
    }
    form_urlencoded::parse(text.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The `token` field of an `auth/revoke` body.
pub fn revoked_token(body: &[u8]) -> Option<String> {
    body_field(body, "token").filter(|t| !t.is_empty())
}

/// The permissions a login asks for (`scope`, space-separated), which become the token's:
/// Node-RED gives a token the scope it was requested with, not all of the user's permissions.
/// None when the login asks for none (the user's permissions then apply).
pub fn requested_scope(body: &[u8]) -> Option<Value> {
    let scope = body_field(body, "scope")?;
    let mut parts: Vec<Value> = scope.split_whitespace().map(|s| Value::String(s.to_string())).collect();
    match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(Value::Array(parts)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_expire() {
        let d = std::env::temp_dir().join(format!("flowgate-auth-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let s = TokenStore::open(Some(&d));
        s.insert("tok-1", "admin".into(), Value::String("*".into()), 3600, "a");
        s.insert("tok-old", "admin".into(), Value::String("*".into()), 0, "a");
        assert_eq!(s.lookup("tok-1").unwrap().username, "admin");
        assert_eq!(s.lookup("tok-old"), None, "expired");
        assert_eq!(s.lookup("tok-2"), None);
        let on_disk = std::fs::read_to_string(d.join("tokens.json")).unwrap();
        assert!(!on_disk.contains("tok-1"), "only hashes are written");
        let again = TokenStore::open(Some(&d));
        assert!(again.lookup("tok-1").is_some(), "survives a restart");
        again.remove("tok-1");
        assert_eq!(TokenStore::open(Some(&d)).lookup("tok-1"), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_login_is_vouched_for_while_its_issuer_accepts_it() {
        use Plan::*;
        // (asker, issuer, issuer up, confirmed lately) -> plan
        let table = [
            (Some("a"), Some("a"), true, true, Refuse),
            (Some("a"), Some("a"), false, false, Refuse),
            (Some("b"), Some("a"), true, true, Answer),
            (Some("b"), Some("a"), true, false, AskIssuer),
            (Some("b"), Some("a"), false, false, Answer),
            (None, Some("a"), true, false, Answer),
            (Some("b"), None, true, false, Answer),
        ];
        for (asker, issuer, up, fresh, want) in table {
            assert_eq!(plan(asker, issuer, up, fresh), want, "{asker:?} {issuer:?} up={up} fresh={fresh}");
        }
        use crate::backend::CallError;
        use http::StatusCode as S;
        assert_eq!(accepted(Ok(S::OK)), Some(true));
        assert_eq!(accepted(Ok(S::FORBIDDEN)), Some(true), "valid, without the permission");
        assert_eq!(accepted(Ok(S::UNAUTHORIZED)), Some(false));
        assert_eq!(accepted(Ok(S::INTERNAL_SERVER_ERROR)), None);
        assert_eq!(accepted(Err(&CallError::Refused)), None);
        let store = TokenStore::default();
        store.insert("tok-1", "admin".into(), serde_json::json!("*"), 60, "a");
        assert!(store.confirmed_recently("tok-1"), "a login is confirmed by its issuer's answer");
        assert!(!store.confirmed_recently("tok-2"));
        store.insert("tok-2", "admin".into(), serde_json::json!("*"), 60, "b");
        store.unconfirm_issuer("a");
        assert!(!store.confirmed_recently("tok-1"), "its issuer came back: asked again");
        assert!(store.confirmed_recently("tok-2"), "another issuer's logins stay confirmed");
    }

    #[test]
    fn a_corrupt_store_is_kept_aside_not_overwritten() {
        let d = std::env::temp_dir().join(format!("flowgate-auth-corrupt-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("tokens.json"), b"{not json").unwrap();
        let s = TokenStore::open(Some(&d));
        assert_eq!(s.lookup("tok-1"), None);
        assert_eq!(std::fs::read(d.join("tokens.json.corrupt")).unwrap(), b"{not json", "kept for a person to look at");
        s.insert("tok-1", "admin".into(), Value::String("*".into()), 3600, "a");
        assert!(TokenStore::open(Some(&d)).lookup("tok-1").is_some(), "a fresh store is written beside it");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn parses_login_and_revoke_bodies() {
        assert_eq!(
            parse_login(br#"{"access_token":"abc","expires_in":60,"token_type":"Bearer"}"#),
            Some(("abc".into(), 60))
        );
        assert_eq!(parse_login(b"nope"), None);
        assert_eq!(revoked_token(b"token=ab%2Bc%3D"), Some("ab+c=".into()));
        assert_eq!(revoked_token(b"token=ab%2bc%2f%3d"), Some("ab+c/=".into()), "lower-case escapes");
        assert_eq!(revoked_token(br#"{"token":"ab+c/="}"#), Some("ab+c/=".into()), "a JSON body");
        assert_eq!(revoked_token(b"x=1&token=t%20u"), Some("t u".into()));
        assert_eq!(revoked_token(b"token="), None);
        assert_eq!(
            requested_scope(b"client_id=node-red-editor&grant_type=password&scope=read&username=a"),
            Some(serde_json::json!("read"))
        );
        assert_eq!(requested_scope(br#"{"scope":"*","username":"a"}"#), Some(serde_json::json!("*")));
        assert_eq!(
            requested_scope(b"scope=flows.read+nodes.read"),
            Some(serde_json::json!(["flows.read", "nodes.read"]))
        );
        assert_eq!(requested_scope(b"scope=&username=a"), None);
    }

    #[test]
    fn replicas_share_logins_and_logouts_and_mirror_what_the_store_holds() {
        use crate::control::coord::ToStore;
        let store = TokenStore::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        store.share_through(tx);
        store.insert("tok-1", "admin".into(), serde_json::json!("*"), 60, "a");
        let Ok(ToStore::Token { hash: h, info: Some(i) }) = rx.try_recv() else { panic!("the login is shared") };
        assert_eq!((h.as_str(), i.username.as_str()), (hash("tok-1").as_str(), "admin"));
        assert_ne!(h, "tok-1", "only its hash leaves this replica");
        store.remove("tok-1");
        assert!(matches!(rx.try_recv(), Ok(ToStore::Token { info: None, .. })), "the logout too");

        let other = TokenStore::default();
        other.mirror(&h, Some(i.clone()));
        assert_eq!(other.lookup("tok-1").map(|i| i.username), Some("admin".into()));
        other.mirror(&h, None);
        assert!(other.lookup("tok-1").is_none());
        other.mirror(&h, Some(TokenInfo { expires_unix: 1, ..i }));
        assert!(other.lookup("tok-1").is_none(), "an expired login is not taken");
    }
}

//! The admin listener (loopback by default).
//!
//! | Endpoint | Auth | What |
//! |---|---|---|
//! | `GET /` | none | the status page (live, embedded; no external assets) |
//! | `GET /events` | none | server-sent events: the `/status` JSON whenever it changes |
//! | `GET /metrics` | none | Prometheus text format |
//! | `GET /status` | none | JSON: each instance's health, role, flow state, last probe and error; the active; recent failovers |
//! | `GET /healthz` | none | 200 while flowgate runs |
//! | `GET /ready` | none | 200 while an active instance receives traffic, else 503 |
//! | `POST /switchover[?to=ID]` | bearer token | planned move of the active role (break-before-make); without `to`, the best standby |
//! | `POST /restart?id=ID` | bearer token | restarts a non-active instance with its restart command; answers once it is back up, stopped and in step (or the restart failed) |
//! | `POST /rolling-restart` | bearer token | restarts every instance, standbys first, then one switchover, then the old active; answers when done or at the step that failed |
//! | `POST /resync?to=ID` | bearer token | marks an instance out of step so it is brought back in step now |
//! | `POST /reload` | bearer token | re-reads the configuration file; 422 with every problem if it is rejected (the running configuration stays) |
//! | `GET /auth/token-info` | the token asked about | for Node-RED's `adminAuth.tokens`: 200 `{"username","permissions"}` for an editor token issued through flowgate, else 404 |
//!
//! Mutating endpoints need `Authorization: Bearer <admin.token>`, compared in constant time.
//! Without a configured token they answer 403. With `admin.read_token`, `/status`,
//! `/metrics` and `/events` need it (or the admin token), as a bearer token or, for
//! `/events` (a browser's EventSource cannot send headers), as `?token=`; `/`, `/healthz`
//! and `/ready` stay open (the page holds no data; load balancers check the others).

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::backend::BackendId;
use crate::control::cluster::driver::Command;
use crate::state::Shared;
use crate::traffic::body::Body;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    reply(status, "application/json", v.to_string())
}

fn authorised(shared: &Shared, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
    let Some(token) = &shared.config.admin_token else {
        return Err(Box::new(json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "mutating admin endpoints are disabled: set admin.token in the config"}),
        )));
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::crypto::constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        let mut r = json(StatusCode::UNAUTHORIZED, serde_json::json!({"error": "missing or wrong bearer token"}));
        r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"flowgate\""));
        Err(Box::new(r))
    }
}

/// The read endpoints with `admin.read_token` set: its token or the admin token, as a bearer
/// token or `?token=`.
fn may_read(shared: &Shared, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
    let Some(read) = &shared.config.admin_read_token else { return Ok(()) };
    let bearer = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()));
    let given = bearer.map(str::to_string).or(query).unwrap_or_default();
    let matches = |s: &crate::config::Secret| crate::crypto::constant_time_eq(given.as_bytes(), s.expose().as_bytes());
    if matches(read) || shared.config.admin_token.as_ref().is_some_and(matches) {
        return Ok(());
    }
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"error": "this endpoint needs admin.read_token (or the admin token)"}),
    );
    r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"flowgate\""));
    Err(Box::new(r))
}

const STATUS_PAGE: &str = include_str!("admin/status.html");

/// Server-sent events: the status JSON when it changes (checked every 250 ms), a comment
/// every 15 s to keep proxies from closing an idle stream.
fn events(app: Arc<crate::App>) -> Response<Body> {
    let (body, tx) = Body::channel(4);
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        let mut quiet = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = app.shutting_down() => return,
            }
            let now = serde_json::to_string(&**app.shared().status.load()).expect("status serialises");
            let chunk = if now != last {
                quiet = 0;
                let c = format!("data: {now}\n\n");
                last = now;
                c
            } else {
                quiet += 1;
                if quiet < 60 {
                    continue;
                }
                quiet = 0;
                ": keep-alive\n\n".to_string()
            };
            if tx.send(bytes::Bytes::from(chunk)).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    query_value(req.uri().query()?, key)
}

/// The value of `key` in a query string (as given, not decoded).
pub(crate) fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Sends an operator command to the driver and answers with its result: 200, or 409 with
/// why it was refused or failed.
async fn command(
    app: &crate::App,
    make: impl FnOnce(crate::control::cluster::driver::Reply) -> Command,
) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    let gone = || json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": "shutting down"}));
    if app.commands().send(make(tx)).await.is_err() {
        return gone();
    }
    match rx.await {
        Ok(Ok(msg)) => json(StatusCode::OK, serde_json::json!({"result": msg})),
        Ok(Err(e)) => json(StatusCode::CONFLICT, serde_json::json!({"error": e.to_string()})),
        Err(_) => gone(),
    }
}

pub async fn serve(app: Arc<crate::App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let shared = app.shared();
    if req.method() == Method::GET
        && matches!(req.uri().path(), "/events" | "/status" | "/metrics")
        && let Err(r) = may_read(&shared, &req)
    {
        return Ok(*r);
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => {
            let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE);
            r.headers_mut().insert(
                "content-security-policy",
                HeaderValue::from_static("default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"),
            );
            r
        }
        (&Method::GET, "/events") => events(app.clone()),
        (&Method::POST, "/resync") => match authorised(&shared, &req) {
            Err(r) => *r,
            Ok(()) => {
                match query_param(&req, "to").and_then(|id| shared.backends().position(|b| b.id.as_str() == id)) {
                    Some(i) => {
                        shared
                            .sync
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .mark_out_of_step(i, "resync requested by an operator");
                        shared.sync_changed.notify_one();
                        json(
                            StatusCode::ACCEPTED,
                            serde_json::json!({"result": format!("{} will be resynced", shared.backend(i).id)}),
                        )
                    }
                    None => json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"error": "give ?to=<backend id> of a configured backend"}),
                    ),
                }
            }
        },
        (&Method::POST, "/reload") => match authorised(&shared, &req) {
            Err(r) => *r,
            Ok(()) => match app.reload_file().await {
                Ok(msg) => json(StatusCode::OK, serde_json::json!({"result": msg})),
                Err(e) => json(StatusCode::UNPROCESSABLE_ENTITY, serde_json::json!({"error": e.to_string()})),
            },
        },
        (&Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.encode()),
        (&Method::GET, "/status") => {
            let status = shared.status.load();
            reply(StatusCode::OK, "application/json", serde_json::to_vec(&**status).expect("status serialises"))
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/auth/token-info") => {
            let token = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            // The documented hook says which instance asks (its backend id).
            let asker = req.headers().get("x-flowgate-instance").and_then(|v| v.to_str().ok());
            let proxy = app.proxy();
            match crate::editor::logins::token_info(&shared, proxy.client(), token, asker).await {
                Some(info) => json(
                    StatusCode::OK,
                    serde_json::json!({"username": info.username, "permissions": info.permissions}),
                ),
                None => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "unknown token"})),
            }
        }
        (&Method::GET, "/ready") => match &shared.view.load().active {
            Some(a) => reply(StatusCode::OK, "text/plain", format!("active: {}\n", a.backend.id)),
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no active instance\n"),
        },
        (&Method::POST, "/switchover") => match authorised(&shared, &req) {
            Err(r) => *r,
            Ok(()) => {
                let to = query_param(&req, "to").map(BackendId::from);
                command(&app, |reply| Command::Switchover { to, reply }).await
            }
        },
        (&Method::POST, "/restart") => match (authorised(&shared, &req), query_param(&req, "id")) {
            (Err(r), _) => *r,
            (Ok(()), None) => json(StatusCode::BAD_REQUEST, serde_json::json!({"error": "give ?id=<backend id>"})),
            (Ok(()), Some(id)) => {
                let id = BackendId::from(id);
                command(&app, |reply| Command::Restart { id, reply }).await
            }
        },
        (&Method::POST, "/rolling-restart") => match authorised(&shared, &req) {
            Err(r) => *r,
            Ok(()) => command(&app, |reply| Command::RollingRestart { reply }).await,
        },
        (
            _,
            "/" | "/events" | "/resync" | "/metrics" | "/status" | "/healthz" | "/ready" | "/switchover"
            | "/auth/token-info" | "/reload" | "/restart" | "/rolling-restart",
        ) => json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({"error": "method not allowed"})),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "not found"})),
    };
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use crate::crypto::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}

//! `flowgate ctl`: the admin API from a shell. It finds the admin address and token in the
//! config file (or `--url`, `--token`, `FLOWGATE_ADMIN_TOKEN`), sends one request, and prints
//! the answer: `status` as a table, the rest as the one line flowgate answered.
//!
//! Exit codes: 0 done; 1 refused or failed (the reason is printed); 69 flowgate unreachable;
//! 77 token missing or refused; 64 a bad config file or argument.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

/// One admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Status,
    Switchover { to: Option<String> },
    Restart { id: String },
    RollingRestart,
    Resync { id: String },
    Reload,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach flowgate's admin API at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Usage(_) => 64,
            CtlError::Unreachable { .. } => 69,
            CtlError::Token(_) => 77,
        }
    }
}

/// Where the admin API is and the token for it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`
    pub url: String,
    pub token: Option<String>,
}

impl Target {
    /// From the config's `listen.admin` (an unspecified address means this host) and
    /// `admin.token`.
    pub fn from_config(c: &crate::config::Config) -> Self {
        let mut addr = c.listen.admin;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        Target { url: format!("http://{addr}"), token: c.admin_token.as_ref().map(|t| t.expose().to_string()) }
    }
}

fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl Action {
    fn request(&self) -> (Method, String) {
        match self {
            Action::Status => (Method::GET, "/status".into()),
            Action::Switchover { to: None } => (Method::POST, "/switchover".into()),
            Action::Switchover { to: Some(id) } => (Method::POST, format!("/switchover?to={}", encode(id))),
            Action::Restart { id } => (Method::POST, format!("/restart?id={}", encode(id))),
            Action::RollingRestart => (Method::POST, "/rolling-restart".into()),
            Action::Resync { id } => (Method::POST, format!("/resync?to={}", encode(id))),
            Action::Reload => (Method::POST, "/reload".into()),
        }
    }
}

/// Sends `action` and returns what to print.
pub async fn run(target: &Target, action: &Action) -> Result<String, CtlError> {
    let (method, path) = action.request();
    if method == Method::POST && target.token.is_none() {
        return Err(CtlError::Token(
            "no admin token: set admin.token in the config, or give --token or FLOWGATE_ADMIN_TOKEN".into(),
        ));
    }
    let (status, body) = send(target, method, &path).await?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let said = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    match status {
        s if s.is_success() => match action {
            Action::Status => Ok(table(&v, now_ms())),
            _ => Ok(said("result").unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned())),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CtlError::Token(format!(
            "the admin token was refused ({status}): {}",
            said("error").unwrap_or_default()
        ))),
        _ => Err(CtlError::Refused(
            said("error").unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(&body).trim())),
        )),
    }
}

async fn send(target: &Target, method: Method, path: &str) -> Result<(StatusCode, bytes::Bytes), CtlError> {
    let unreachable = |why: String| CtlError::Unreachable { url: target.url.clone(), why };
    let uri: http::Uri = target.url.parse().map_err(|e| CtlError::Usage(format!("--url {}: {e}", target.url)))?;
    let authority = uri.authority().ok_or_else(|| CtlError::Usage(format!("--url {}: no host", target.url)))?.clone();
    if uri.scheme_str() != Some("http") {
        return Err(CtlError::Usage(format!("--url {}: the admin API speaks http://", target.url)));
    }
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let tcp = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("no answer within 5s".into())),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header(http::header::HOST, authority.as_str());
    if let Some(t) = &target.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).map_err(|e| CtlError::Usage(e.to_string()))?;
    // Restarts answer when the instance is back: no time limit here (flowgate bounds them).
    let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
    Ok((status, body))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `/status` as a table, one row per instance (like `patronictl list`).
pub fn table(v: &Value, now_ms: u64) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let mut out = format!("phase: {}   active: {}", s(v, "phase"), s(v, "active"));
    if let Some(c) = v.get("cluster").filter(|c| !c.is_null()) {
        out += &format!("   replica: {} ({})", s(c, "replica"), s(c, "role"));
    }
    out.push('\n');
    let head = ["INSTANCE", "ROLE", "HEALTH", "FLOWS", "REVISION", "IN STEP", "LAST PROBE", "RECOVERY"];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for b in v.get("backends").and_then(Value::as_array).into_iter().flatten() {
        let step = s(b, "step");
        let in_step = match step.as_str() {
            "in_step" => "yes".to_string(),
            "unknown" => "unknown".to_string(),
            other => format!("no ({})", other.trim_start_matches("out_of_step: ")),
        };
        let probe = match (b.get("last_probe_unix_ms").and_then(Value::as_u64), b.get("last_probe_latency_ms")) {
            (Some(at), lat) => {
                let ago = now_ms.saturating_sub(at) as f64 / 1e3;
                let lat = lat.and_then(Value::as_f64).map_or(String::new(), |l| format!(", {l:.1} ms"));
                format!("{ago:.1}s ago{lat}")
            }
            _ => "never".into(),
        };
        let r = b.get("recovery").cloned().unwrap_or(Value::Null);
        let recovery = match (r.get("restartable").and_then(Value::as_bool), r.get("state").and_then(Value::as_str)) {
            (Some(false), _) => "-".to_string(),
            (_, Some(state)) => state.to_string(),
            _ => format!("restarts: {}", r.get("restarts").and_then(Value::as_u64).unwrap_or(0)),
        };
        let rev: String = s(b, "revision").chars().take(12).collect();
        let health = match b.get("last_error").and_then(Value::as_str) {
            Some(e) if s(b, "health") != "up" => format!("{} ({e})", s(b, "health")),
            _ => s(b, "health"),
        };
        rows.push(vec![s(b, "id"), s(b, "role"), health, s(b, "flow_state"), rev, in_step, probe, recovery]);
    }
    let widths: Vec<usize> =
        (0..head.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    if let Some(r) = v.get("rolling_restart").filter(|r| !r.is_null()) {
        out += &format!("rolling restart: {} ({})\n", s(r, "state"), s(r, "detail"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_instance_with_role_flows_step_probe_and_recovery() {
        let v = serde_json::json!({
            "phase": "serving", "active": "nr-a",
            "backends": [
                {"id": "nr-a", "role": "active", "health": "up", "flow_state": "start", "revision": "0123456789abcdef",
                 "step": "in_step", "last_probe_unix_ms": 10_000, "last_probe_latency_ms": 1.25,
                 "recovery": {"restartable": true, "state": null, "restarts": 2}},
                {"id": "nr-b", "role": "down", "health": "down", "flow_state": null, "revision": null,
                 "step": "out_of_step: deploy failed", "last_error": "connection refused", "last_probe_unix_ms": null,
                 "recovery": {"restartable": true, "state": "gave_up", "restarts": 3}}
            ],
            "rolling_restart": {"state": "done", "detail": "restarted nr-b, nr-a; nr-b is active", "restarted": []}
        });
        let t = table(&v, 10_500);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "phase: serving   active: nr-a");
        assert!(lines[1].starts_with("INSTANCE  ROLE    HEALTH"), "{t}");
        assert!(lines[2].contains("nr-a") && lines[2].contains("active") && lines[2].contains("0123456789ab "));
        assert!(lines[2].contains("yes") && lines[2].contains("0.5s ago, 1.2 ms") && lines[2].contains("restarts: 2"));
        assert!(lines[3].contains("down (connection refused)") && lines[3].contains("no (deploy failed)"), "{t}");
        assert!(lines[3].contains("never") && lines[3].ends_with("gave_up"), "{t}");
        assert_eq!(lines[4], "rolling restart: done (restarted nr-b, nr-a; nr-b is active)");
    }

    #[tokio::test]
    async fn unreachable_and_missing_token_are_told_apart() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = Target { url: format!("http://127.0.0.1:{port}"), token: None };
        let e = run(&t, &Action::Status).await.unwrap_err();
        assert_eq!(e.exit_code(), 69, "{e}");
        assert!(e.to_string().starts_with("cannot reach flowgate's admin API at http://127.0.0.1:"), "{e}");
        let e = run(&t, &Action::Reload).await.unwrap_err();
        assert_eq!(e.exit_code(), 77, "{e}");
    }
}

//! Load-balanced mode against in-process fake instances (fast; no Node-RED): every instance
//! runs flows, requests are spread, sessions stick by cookie, a crash costs no request.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

const SECS: Duration = Duration::from_secs(5);
const ADM: &str = "balanced-admin-token";

fn set_cookies(r: &Reply) -> Vec<String> {
    r.headers.get_all(http::header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

async fn two(extra: &str) -> (FakeNodeRed, FakeNodeRed, EventLog, flowgate::Handle) {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let fb = FakeNodeRed::start("b", Options::default(), log.clone()).await;
    let extra = format!("mode: load-balanced\nadmin: {{ token: {{ env: ADM }} }}\n{extra}");
    let yaml = yaml(&[("a", fa.url(), 200), ("b", fb.url(), 100)], &extra);
    let h = start_flowgate(&yaml, Secrets(vec![("ADM", ADM.into())])).await;
    eventually(SECS, "both in rotation", || async { status(&h).await["rotation"].as_array().map(Vec::len) == Some(2) })
        .await;
    (fa, fb, log, h)
}

async fn answers(c: &HttpClient, url: &str, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = send_with(c, "GET", url, "", headers).await.unwrap();
        *seen.entry(format!("{} {}", r.status, r.body)).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn every_instance_runs_flows_and_requests_are_spread_over_them() {
    let (fa, fb, log, h) = two("").await;
    assert!(fa.started() && fb.started(), "both run their flows");
    assert!(!log.lock().unwrap().iter().any(|(_, what)| *what == "stop"), "nothing was stopped: {log:?}");
    let seen = answers(&client(), &format!("http://{}/hello", h.proxy_addr), 40, &[]).await;
    assert_eq!(seen.get("200 hello from a"), Some(&20), "{seen:?}");
    assert_eq!(seen.get("200 hello from b"), Some(&20), "{seen:?}");
    let s = status(&h).await;
    assert_eq!(s["mode"], "load-balanced");
    assert_eq!(s["phase"], "serving");
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_instances_running_flows"), Some(2.0), "{m}");
    assert_eq!(sample(&m, "flowgate_load_balanced"), Some(1.0), "{m}");
    // No active role to move.
    let auth = format!("Bearer {ADM}");
    let url = format!("http://{}/switchover", h.admin_addr);
    let r = send_with(&client(), "POST", &url, "", &[("authorization", &auth)]).await.unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("load-balanced"), "{}", r.body);
}

#[tokio::test]
async fn a_socket_io_session_and_the_editor_stick_to_one_instance_by_cookie() {
    let (_fa, _fb, _log, h) = two("").await;
    let c = client();
    // A socket.io handshake gets the affinity cookie of the instance that answered it.
    let url = format!("http://{}/socket.io/?EIO=4&transport=polling", h.proxy_addr);
    let first = send_with(&c, "GET", &url, "", &[]).await.unwrap();
    let cookie =
        set_cookies(&first).into_iter().find(|v| v.starts_with("flowgate_affinity=")).expect("affinity cookie");
    assert!(cookie.contains("Path=/") && cookie.contains("HttpOnly"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    // Its later requests (any runtime path) reach that instance only; without it they spread.
    let hello = format!("http://{}/hello", h.proxy_addr);
    let stuck = answers(&c, &hello, 10, &[("cookie", &pair)]).await;
    assert_eq!(stuck.len(), 1, "one instance: {stuck:?}");
    let again = send_with(&c, "GET", &format!("{url}&sid=abc"), "", &[("cookie", &pair)]).await.unwrap();
    assert!(set_cookies(&again).is_empty(), "not re-issued while it holds: {:?}", set_cookies(&again));
    assert_eq!(answers(&c, &hello, 10, &[]).await.len(), 2, "others spread");
    // A tampered cookie counts as none.
    let forged = format!("{pair}0");
    assert_eq!(answers(&c, &hello, 10, &[("cookie", &forged)]).await.len(), 2);
    // The editor: pinned by its own cookie.
    let ed = send_with(&c, "GET", &format!("http://{}/settings", h.proxy_addr), "", &[]).await.unwrap();
    let ecookie = set_cookies(&ed).into_iter().find(|v| v.starts_with("flowgate_editor=")).expect("editor cookie");
    let epair = ecookie.split(';').next().unwrap().to_string();
    for _ in 0..6 {
        let r = send_with(&c, "GET", &format!("http://{}/settings", h.proxy_addr), "", &[("cookie", &epair)])
            .await
            .unwrap();
        assert!(set_cookies(&r).is_empty(), "the editor stays where it is: {:?}", set_cookies(&r));
    }
}

#[tokio::test]
async fn a_crashed_instance_leaves_the_rotation_and_no_request_fails() {
    let (fa, fb, _log, h) = two("").await;
    let url = format!("http://{}/hello", h.proxy_addr);
    let c = client();
    let mut seen = BTreeMap::new();
    for i in 0..200 {
        if i == 50 {
            fb.crash();
        }
        let r = get(&c, &url).await.map(|r| format!("{} {}", r.status, r.body)).unwrap_or_else(|e| e);
        *seen.entry(r).or_insert(0) += 1;
    }
    assert!(seen.keys().all(|k| k.starts_with("200 hello from")), "no failure: {seen:?}");
    eventually(SECS, "b out of rotation", || async { status(&h).await["rotation"] == serde_json::json!(["a"]) }).await;
    let before = fb.inner.hello_count.load(Ordering::SeqCst);
    assert_eq!(answers(&c, &url, 10, &[]).await.get("200 hello from a"), Some(&10));
    assert_eq!(fb.inner.hello_count.load(Ordering::SeqCst), before);
    assert!(fa.started());
}

#[tokio::test]
async fn switching_mode_is_refused_by_a_reload() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let dir = support::node_red::temp_dir("mode-reload");
    let path = dir.join("flowgate.yaml");
    let text = yaml(&[("a", fa.url(), 200)], "");
    std::fs::write(&path, &text).unwrap();
    let cfg = flowgate::config::load(&path).unwrap();
    let listeners = flowgate::Listeners::plain(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let h = flowgate::start(cfg, listeners, Some(path.clone())).unwrap();
    wait_active(&h, "a", SECS).await;
    std::fs::write(&path, format!("{text}mode: load-balanced\n")).unwrap();
    let err = h.reload().await.unwrap_err().to_string();
    assert!(err.contains("mode changed from hot-spare to load-balanced"), "{err}");
    assert_eq!(h.shared().config.mode.as_str(), "hot-spare");
    assert_eq!(active(&h).await.as_deref(), Some("a"));
}

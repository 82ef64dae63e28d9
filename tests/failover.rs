//! Election, failover and routing against in-process fake instances (fast; no Node-RED).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

const SECS: Duration = Duration::from_secs(5);

async fn two(a: Options, b: Options, extra: &str) -> (FakeNodeRed, FakeNodeRed, EventLog, flowgate::Handle) {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", a, log.clone()).await;
    let fb = FakeNodeRed::start("b", b, log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 200), ("b", fb.url(), 100)], extra), Secrets(vec![])).await;
    (fa, fb, log, h)
}

#[tokio::test]
async fn elects_the_highest_priority_and_starts_only_its_flows() {
    let (fa, fb, log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    assert!(fa.started() && !fb.started());
    assert_eq!(*log.lock().unwrap(), vec![("b".to_string(), "stop"), ("a".to_string(), "start")]);
    let r = get(&client(), &format!("http://{}/hello", h.proxy_addr)).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello from a"));
    assert_eq!(fb.inner.hello_count.load(Ordering::SeqCst), 0, "the standby never sees traffic");
}

#[tokio::test]
async fn adopts_an_instance_already_running_and_stops_the_other() {
    // Both report flows started (e.g. flowgate restarted after a split): keep one, stop one.
    let started = || Options { started: true, ..Options::default() };
    let (fa, fb, _log, h) = two(started(), started(), "").await;
    wait_active(&h, "a", SECS).await;
    eventually(SECS, "b stopped", || async { !fb.started() }).await;
    assert!(fa.started());
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_instances_running_flows"), Some(1.0), "{m}");
}

#[tokio::test]
async fn keeps_a_running_lower_priority_instance_rather_than_switching() {
    let (fa, fb, log, h) = two(Options::default(), Options { started: true, ..Options::default() }, "").await;
    wait_active(&h, "b", SECS).await;
    assert!(!fa.started() && fb.started());
    assert!(!log.lock().unwrap().contains(&("b".to_string(), "stop")), "b was never stopped");
}

#[tokio::test]
async fn crash_fails_over_and_no_request_fails() {
    let (fa, fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    let c = client();
    let url = format!("http://{}/hello", h.proxy_addr);
    let stream = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut seen = Vec::new();
            for _ in 0..150 {
                seen.push(get(&c, &url).await.map(|r| (r.status, r.body)));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    fa.crash();
    let seen = stream.await.unwrap();
    let failed: Vec<_> = seen.iter().filter(|r| !matches!(r, Ok((200, _)))).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(seen.iter().any(|r| matches!(r, Ok((_, b)) if b == "hello from b")), "traffic moved to b");
    assert!(fb.started());
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_failovers_total{reason=\"crash\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "flowgate_failover_duration_seconds_count"), Some(1.0));
    let st = status(&h).await;
    assert_eq!(st["failovers"][0]["reason"], "crash");
    assert_eq!(st["failovers"][0]["from"], "a");
    assert_eq!(st["failovers"][0]["to"], "b");
}

#[tokio::test]
async fn hang_releases_in_flight_requests_retrying_only_safe_ones() {
    let (fa, fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    fa.hang();
    let c = client();
    let get_task = tokio::spawn({
        let c = c.clone();
        let url = format!("http://{}/hello", h.proxy_addr);
        async move { get(&c, &url).await }
    });
    let post_task = tokio::spawn({
        let c = c.clone();
        let url = format!("http://{}/echo", h.proxy_addr);
        async move { send(&c, "POST", &url, "payload").await }
    });
    let got = tokio::time::timeout(SECS, get_task).await.expect("GET not left hanging").unwrap().unwrap();
    assert_eq!((got.status, got.body.as_str()), (200, "hello from b"), "idempotent GET retried on b");
    let post = tokio::time::timeout(SECS, post_task).await.expect("POST not left hanging").unwrap().unwrap();
    assert_eq!(post.status, 502);
    assert_eq!(post.headers["x-flowgate-error"], "instance-failed");
    assert!(fb.started());
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_failovers_total{reason=\"hang\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "flowgate_inflight_aborted_total"), Some(1.0));
    fa.unhang();
}

#[tokio::test]
async fn a_request_body_is_resent_when_nothing_reached_the_crashed_active() {
    let (fa, _fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    fa.crash();
    // The proxy has not noticed yet: this POST's connect fails, and it is replayed on b.
    let r = send(&client(), "POST", &format!("http://{}/echo", h.proxy_addr), "keep me").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "keep me"));
}

#[tokio::test]
async fn without_any_instance_requests_wait_for_the_hold_time_then_get_503() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let y = yaml(&[("a", fa.url(), 100)], "failover: { hold: 300ms }\n");
    let h = start_flowgate(&y, Secrets(vec![])).await;
    wait_active(&h, "a", SECS).await;
    fa.crash();
    eventually(SECS, "no active", || async { active(&h).await.is_none() }).await;
    let t = tokio::time::Instant::now();
    let r = get(&client(), &format!("http://{}/hello", h.proxy_addr)).await.unwrap();
    let waited = t.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["x-flowgate-error"], "no-active-instance");
    assert!(waited >= Duration::from_millis(280), "held for {waited:?}");
}

#[tokio::test]
async fn held_requests_are_served_by_the_instance_that_comes_back() {
    let log = EventLog::default();
    let mut fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let h = start_flowgate(&yaml(&[("a", fa.url(), 100)], ""), Secrets(vec![])).await;
    wait_active(&h, "a", SECS).await;
    fa.crash();
    eventually(SECS, "no active", || async { active(&h).await.is_none() }).await;
    let c = client();
    let url = format!("http://{}/hello", h.proxy_addr);
    let held = tokio::spawn(async move { get(&c, &url).await });
    fa.restart(false).await;
    let r = held.await.unwrap().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello from a"));
}

#[tokio::test]
async fn a_rebooted_active_running_flows_is_stopped_and_stays_standby() {
    let (mut fa, fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    fa.crash();
    wait_active(&h, "b", SECS).await;
    fa.restart(true).await; // persisted "start" state
    eventually(SECS, "stray stopped", || async { !fa.started() }).await;
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_stray_starts_stopped_total{backend=\"a\"}"), Some(1.0), "{m}");
    // No failback by default: a stays standby through several probe rounds.
    eventually(SECS, "a up again", || async { status(&h).await["backends"][0]["health"] == "up" }).await;
    for _ in 0..10 {
        assert_eq!(active(&h).await.as_deref(), Some("b"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fb.started() && !fa.started());
}

#[tokio::test]
async fn fails_back_after_the_delay_when_configured_break_before_make() {
    let extra = "failover: { failback: true, failback_delay: 300ms, hold: 3s }\n";
    let (mut fa, fb, log, h) = two(Options::default(), Options::default(), extra).await;
    wait_active(&h, "a", SECS).await;
    fa.crash();
    wait_active(&h, "b", SECS).await;
    log.lock().unwrap().clear();
    fa.restart(false).await;
    let back = tokio::time::Instant::now();
    wait_active(&h, "a", SECS).await;
    assert!(back.elapsed() >= Duration::from_millis(300), "not before the delay");
    assert!(!fb.started());
    assert_eq!(*log.lock().unwrap(), vec![("b".to_string(), "stop"), ("a".to_string(), "start")]);
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_failovers_total{reason=\"failback\"}"), Some(1.0), "{m}");
}

#[tokio::test]
async fn an_instance_without_runtime_state_is_reported_and_never_promoted() {
    let (fa, fb, _log, h) = two(Options { runtime_state: false, ..Options::default() }, Options::default(), "").await;
    wait_active(&h, "b", SECS).await;
    assert!(fb.started() && !fa.started());
    let st = status(&h).await;
    assert_eq!(st["backends"][0]["role"], "unmanageable");
    assert_eq!(st["backends"][0]["runtime_state_enabled"], false);
    // The only other instance fails: a is still never promoted.
    fb.crash();
    eventually(SECS, "no active", || async { active(&h).await.is_none() }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(active(&h).await, None);
    assert!(!fa.started());
}

#[tokio::test]
async fn switchover_needs_the_token_and_moves_the_role_break_before_make() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let fb = FakeNodeRed::start("b", Options::default(), log.clone()).await;
    let y = yaml(&[("a", fa.url(), 200), ("b", fb.url(), 100)], "admin: { token: { env: ADM } }\n");
    let h = start_flowgate(&y, Secrets(vec![("ADM", "s3cret-admin-token-42".into())])).await;
    wait_active(&h, "a", SECS).await;
    eventually(SECS, "b standby", || async { status(&h).await["backends"][1]["role"] == "standby" }).await;
    let url = format!("http://{}/switchover?to=b", h.admin_addr);
    let c = client();
    assert_eq!(send(&c, "POST", &url, "").await.unwrap().status, 401);
    log.lock().unwrap().clear();
    let req = http::Request::post(&url)
        .header("authorization", "Bearer s3cret-admin-token-42")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(active(&h).await.as_deref(), Some("b"));
    assert!(fb.started() && !fa.started());
    assert_eq!(*log.lock().unwrap(), vec![("a".to_string(), "stop"), ("b".to_string(), "start")]);
    let r = get(&client(), &format!("http://{}/hello", h.proxy_addr)).await.unwrap();
    assert_eq!(r.body, "hello from b");
}

#[tokio::test]
async fn switchover_is_forbidden_without_a_configured_token() {
    let (_fa, _fb, _log, h) = two(Options::default(), Options::default(), "").await;
    let r = send(&client(), "POST", &format!("http://{}/switchover", h.admin_addr), "").await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.body.contains("admin.token"));
}

#[tokio::test]
async fn a_failing_canary_moves_the_active_role() {
    let extra = "health: { interval: 50ms, timeout: 150ms, rise: 2, fall: 2, promotion_grace: 0ms, canary: /canary }\n";
    let (fa, fb, _log, h) = two(Options::default(), Options::default(), extra).await;
    wait_active(&h, "a", SECS).await;
    eventually(SECS, "canary ok", || async { status(&h).await["backends"][0]["canary"] == "ok" }).await;
    fa.inner.canary_ok.store(false, Ordering::SeqCst);
    wait_active(&h, "b", SECS).await;
    assert!(fb.started() && !fa.started(), "a's flows stopped, b's started");
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_failovers_total{reason=\"canary\"}"), Some(1.0), "{m}");
}

#[tokio::test]
async fn instance_tokens_are_sent_and_a_wrong_token_keeps_it_down() {
    // b is preferred, but flowgate sends it the wrong token.
    let (_fa, fb, h) = token_pair(["right", "other"], ["right", "wrong"], [100, 200]).await;
    wait_active(&h, "a", SECS).await;
    let st = status(&h).await;
    assert_eq!(st["backends"][1]["health"], "down");
    assert!(st["backends"][1]["last_error"].as_str().unwrap().contains("adminAuth.tokens"), "{st}");
    assert!(!fb.started());
}

#[tokio::test]
async fn websockets_reach_the_active_and_close_when_it_is_demoted() {
    use futures_util::StreamExt;
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let fb = FakeNodeRed::start("b", Options::default(), log.clone()).await;
    let y = yaml(&[("a", fa.url(), 200), ("b", fb.url(), 100)], "admin: { token: { env: ADM } }\n");
    let h = start_flowgate(&y, Secrets(vec![("ADM", "test-admin-token-0123".into())])).await;
    wait_active(&h, "a", SECS).await;
    let url = format!("ws://{}/ws", h.proxy_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(first.to_text().unwrap(), "hello from a");
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_websocket_tunnels"), Some(1.0), "{m}");
    let req = http::Request::post(format!("http://{}/switchover?to=b", h.admin_addr))
        .header("authorization", "Bearer test-admin-token-0123")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 200);
    let end = tokio::time::timeout(SECS, ws.next()).await.expect("tunnel closed after demotion");
    assert!(!matches!(end, Some(Ok(ref m)) if m.is_text()), "{end:?}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "hello from b");
}

#[tokio::test]
async fn proxied_requests_reuse_upstream_connections() {
    let (fa, _fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    let c = client();
    let url = format!("http://{}/hello", h.proxy_addr);
    assert_eq!(get(&c, &url).await.unwrap().body, "hello from a");
    let before = fa.inner.connections.load(Ordering::SeqCst);
    for _ in 0..30 {
        assert_eq!(get(&c, &url).await.unwrap().body, "hello from a");
    }
    let opened = fa.inner.connections.load(Ordering::SeqCst) - before;
    // Probes have their own pooled connection; allow one more for a probe reconnecting.
    assert!(opened <= 1, "{opened} new connections for 30 requests");
}

#[tokio::test]
async fn websocket_tunnels_carry_small_and_large_messages_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (_fa, _fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", h.proxy_addr)).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "hello from a");
    // Sizes around the tunnel's small buffer (256 bytes) and far beyond its large one (16 KiB).
    for len in [1, 200, 255, 256, 257, 4_000, 16_384, 300_000] {
        let text: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = tokio::time::timeout(SECS, ws.next()).await.expect("echo in time").unwrap().unwrap();
        assert_eq!(back.to_text().unwrap().len(), len);
        assert!(back.to_text().unwrap() == text, "message of {len} bytes came back intact");
    }
    // Many small messages in a burst arrive complete and in order.
    for i in 0..200 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..200 {
        let m = tokio::time::timeout(SECS, ws.next()).await.expect("burst echo").unwrap().unwrap();
        assert_eq!(m.to_text().unwrap(), format!("m{i}"));
    }
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded_headers_set() {
    let (_fa, _fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    let c: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::get(format!("http://{}/headers", h.proxy_addr))
        .header("x-forwarded-for", "6.6.6.6")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    use http_body_util::BodyExt;
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "forged XFF replaced: {body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains(&format!("host: {}\n", h.proxy_addr)), "{body}");
}

#[tokio::test]
async fn metrics_and_status_describe_roles() {
    let (_fa, _fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    eventually(SECS, "b standby", || async { status(&h).await["backends"][1]["role"] == "standby" }).await;
    let _ = get(&client(), &format!("http://{}/hello", h.proxy_addr)).await.unwrap();
    let _ = get(&client(), &format!("http://{}/red/missing.js", h.proxy_addr)).await.unwrap();
    let m = metrics(&h).await;
    for (series, want) in [
        ("flowgate_backend_role{backend=\"a\",role=\"active\"}", 1.0),
        ("flowgate_backend_role{backend=\"b\",role=\"standby\"}", 1.0),
        ("flowgate_backend_role{backend=\"b\",role=\"active\"}", 0.0),
        ("flowgate_backend_flow_state{backend=\"a\",state=\"start\"}", 1.0),
        ("flowgate_backend_flow_state{backend=\"b\",state=\"stop\"}", 1.0),
        ("flowgate_backend_up{backend=\"b\"}", 1.0),
        ("flowgate_instances_running_flows", 1.0),
        ("flowgate_active_present", 1.0),
        ("flowgate_requests_total{code_class=\"2xx\",route=\"runtime\"}", 1.0),
        ("flowgate_requests_total{code_class=\"4xx\",route=\"editor\"}", 1.0),
    ] {
        assert_eq!(sample(&m, series), Some(want), "{series} in\n{m}");
    }
    assert!(m.contains("flowgate_probe_duration_seconds_bucket{backend=\"a\""));
    let st = status(&h).await;
    assert_eq!(st["active"], "a");
    assert_eq!(st["phase"], "serving");
    assert_eq!(st["backends"][0]["flow_state"], "start");
    assert!(st["backends"][0]["last_probe_latency_ms"].as_f64().is_some());
    assert_eq!(st["failovers"][0]["reason"], "initial");
    let ready = get(&client(), &format!("http://{}/ready", h.admin_addr)).await.unwrap();
    assert_eq!(ready.status, 200);
}

#[tokio::test]
async fn an_instance_that_will_not_stop_is_retried_calmly_and_reported() {
    let stubborn = Options { ignore_stop: true, ..Options::default() };
    let (fa, fb, _log, h) = two(Options::default(), stubborn, "").await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    assert!(fa.started());
    // b starts running flows on its own (a reboot with a persisted start) and refuses to stop.
    let posts = fb.inner.state_posts.load(Ordering::SeqCst);
    fb.inner.started.store(true, Ordering::SeqCst);
    // Within the retry pause (5 s) after a refused stop at the election, plus a margin.
    let retry = Duration::from_secs(5) + SECS;
    eventually(retry, "a stop attempt", || async { fb.inner.state_posts.load(Ordering::SeqCst) > posts }).await;
    let before = fb.inner.state_posts.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await; // many reconcile rounds at 50 ms probes
    let after = fb.inner.state_posts.load(Ordering::SeqCst);
    assert!(after - before <= 1, "stop retried {} times in 1.5 s", after - before);
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_instances_running_flows"), Some(2.0), "the alert metric shows it: {m}");
}

/// Requests left unanswered are evidence of a hang: with probes only every 3 s, a hung active
/// under traffic is still failed over within a fraction of a second (a probe starts once
/// requests have waited a quarter of the time-out, and the whole time-out counts as a failure).
#[tokio::test]
async fn requests_left_unanswered_are_evidence_of_a_hang() {
    let health = "health: { interval: 3s, timeout: 150ms, rise: 1, fall: 2, promotion_grace: 0ms }\n";
    let (fa, fb, _log, h) = two(Options::default(), Options::default(), health).await;
    wait_active(&h, "a", SECS).await;
    fa.hang();
    let hung = tokio::time::Instant::now();
    let got = get(&client(), &format!("http://{}/hello", h.proxy_addr)).await.unwrap();
    let took = hung.elapsed();
    assert_eq!((got.status, got.body.as_str()), (200, "hello from b"));
    println!("hang under traffic, probes every 3 s: answered by the spare after {took:?}");
    assert!(took < Duration::from_millis(1000), "took {took:?}: the hang waited for the next probe");
    assert!(fb.started());
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_failovers_total{reason=\"hang\"}"), Some(1.0), "{m}");
    fa.unhang();
}

/// A request that is slow on a healthy instance is not evidence: the probe it starts is
/// answered. With `fall: 1` one wrongly counted failure would fail the active over.
#[tokio::test]
async fn a_slow_request_on_a_healthy_instance_is_not_evidence() {
    let health = "health: { interval: 3s, timeout: 150ms, rise: 1, fall: 1, promotion_grace: 0ms }\n";
    let (_fa, fb, _log, h) = two(Options::default(), Options::default(), health).await;
    wait_active(&h, "a", SECS).await;
    let got = get(&client(), &format!("http://{}/slow?ms=700", h.proxy_addr)).await.unwrap();
    assert_eq!((got.status, got.body.as_str()), (200, "slow done"));
    assert_eq!(active(&h).await.as_deref(), Some("a"));
    assert!(!fb.started());
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_failovers_total{reason=\"hang\"}"), Some(0.0), "{m}");
}

/// At most `limits.upstream_connections` requests are in flight to an instance; the next waits
/// for a slot up to the queue time-out, then gets 503 with nothing sent.
#[tokio::test]
async fn requests_beyond_the_upstream_cap_wait_in_order_then_get_503() {
    let extra = "limits: { upstream_connections: 2, upstream_queue_timeout: 300ms }\n";
    let (fa, _fb, _log, h) = two(Options::default(), Options::default(), extra).await;
    wait_active(&h, "a", SECS).await;
    let url = format!("http://{}/slow?ms=1000", h.proxy_addr);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&client(), &url).await.unwrap().status })
        })
        .collect();
    eventually(SECS, "both slots taken", || async { fa.inner.slow_waiting.load(Ordering::SeqCst) == 2 }).await;
    let t = tokio::time::Instant::now();
    let third = get(&client(), &url).await.unwrap();
    assert_eq!(third.status, 503);
    assert_eq!(third.headers["x-flowgate-error"], "upstream-busy");
    assert_eq!(third.headers["retry-after"], "1");
    assert!(t.elapsed() >= Duration::from_millis(300), "waited for the queue time-out");
    assert_eq!(fa.inner.slow_waiting.load(Ordering::SeqCst), 2, "the third never reached the instance");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    // A slot that frees up within the queue time-out is taken by the request in line.
    let short = format!("http://{}/slow?ms=200", h.proxy_addr);
    let c = client();
    let (a, b, c) = tokio::join!(get(&c, &short), get(&c, &short), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(&c, &format!("http://{}/hello", h.proxy_addr)).await
    });
    assert_eq!([a.unwrap().status, b.unwrap().status], [200, 200]);
    assert_eq!(c.unwrap().body, "hello from a");
}

/// An instance that answers before reading a request's whole body (a 401 or 404 to an upload)
/// leaves that connection still busy sending the body. It must not go back to the pool: the
/// next request would wait there for someone else's upload.
#[tokio::test]
async fn a_connection_still_sending_an_upload_is_not_reused() {
    use tokio::io::AsyncWriteExt;
    let (_fa, _fb, _log, h) = two(Options::default(), Options::default(), "").await;
    wait_active(&h, "a", SECS).await;
    let mut upload = tokio::net::TcpStream::connect(h.proxy_addr).await.unwrap();
    // A chunked upload the instance answers (401) before reading it, never finished.
    upload
        .write_all(b"POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(SECS, tokio::io::AsyncReadExt::read(&mut upload, &mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"));
    let t = tokio::time::Instant::now();
    let got = tokio::time::timeout(SECS, get(&client(), &format!("http://{}/hello", h.proxy_addr)))
        .await
        .expect("the next request waited behind the unfinished upload")
        .unwrap();
    assert_eq!((got.status, got.body.as_str()), (200, "hello from a"));
    assert!(t.elapsed() < Duration::from_millis(500), "the next request waited {:?}", t.elapsed());
    drop(upload);
}

/// Probes run on a runtime of their own: with the runtime that runs everything else blocked
/// for 300 ms at a time, 20 times (a stand-in for a slow save to disk, or hundreds of status streams),
/// no probe times out and nothing fails over. The instances answer from a runtime of theirs.
#[test]
fn a_blocked_control_runtime_delays_no_probe() {
    let instances = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (fa, fb) = instances.block_on(async {
        let log = EventLog::default();
        (
            FakeNodeRed::start("a", Options::default(), log.clone()).await,
            FakeNodeRed::start("b", Options::default(), log.clone()).await,
        )
    });
    let control = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    control.block_on(async {
        // Probes back to back, so that the runtime often stops while one is on its way.
        let health = "health: { interval: 10ms, timeout: 150ms, rise: 2, fall: 2, promotion_grace: 0ms }\n";
        let y = yaml(&[("a", fa.url(), 200), ("b", fb.url(), 100)], health);
        let h = start_flowgate(&y, Secrets(vec![])).await;
        wait_active(&h, "a", SECS).await;
        for i in 0..20u64 {
            // Blocks this (current-thread) runtime: nothing else here runs meanwhile.
            tokio::task::spawn(async { std::thread::sleep(Duration::from_millis(300)) }).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1 + i % 7)).await;
        }
        let m = metrics(&h).await;
        let failures: f64 = m
            .lines()
            .filter(|l| l.starts_with("flowgate_probe_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(failures, 0.0, "no probe failed: {m}");
        assert_eq!(active(&h).await.as_deref(), Some("a"), "no failover");
        let s = status(&h).await;
        assert!(s["failovers"].as_array().unwrap().len() == 1, "only the first election: {s}");
    });
}

//! Editor sessions and deploy fan-out against in-process fake instances.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::fake_node_red::serde_json::{self, json};
use support::*;

const SECS: Duration = Duration::from_secs(5);

struct Cluster {
    fakes: Vec<FakeNodeRed>,
    log: EventLog,
    h: flowgate::Handle,
}

async fn cluster(n: usize, extra: &str) -> Cluster {
    let log = EventLog::default();
    let mut fakes = Vec::new();
    let names = ["a", "b", "c"];
    for name in &names[..n] {
        fakes.push(FakeNodeRed::start(name, Options::default(), log.clone()).await);
    }
    let list: Vec<(&str, String, i64)> =
        fakes.iter().enumerate().map(|(i, f)| (names[i], f.url(), 300 - 100 * i as i64)).collect();
    let h = start_flowgate(&yaml(&list, extra), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
    let c = Cluster { fakes, log, h };
    c.wait_in_step().await;
    c
}

impl Cluster {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.h.proxy_addr)
    }

    async fn wait_in_step(&self) {
        eventually(SECS, "every instance in step", || async {
            let st = status(&self.h).await;
            st["backends"].as_array().unwrap().iter().all(|b| b["step"] == "in_step")
        })
        .await;
    }

    fn revs(&self) -> Vec<String> {
        self.fakes.iter().map(|f| f.inner.rev()).collect()
    }
}

async fn deploy(url: &str, api: &str, body: &str) -> Reply {
    let req = http::Request::post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header("node-red-api-version", api)
        .header("node-red-deployment-type", "full")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Reply { status, headers, body }
}

fn flows_v2(n: u32, password: Option<&str>) -> String {
    let mut broker = json!({"id": "broker", "type": "mqtt-broker", "broker": "localhost"});
    if let Some(p) = password {
        broker["credentials"] = json!({"user": "u", "password": p});
    }
    json!({"flows": [{"id": "t1", "type": "tab", "label": format!("v{n}")}, broker]}).to_string()
}

#[tokio::test]
async fn a_deploy_reaches_every_instance_with_one_rev() {
    let c = cluster(3, "").await;
    c.log.lock().unwrap().clear();
    let r = deploy(&c.url("/flows"), "v2", &flows_v2(1, Some("p1"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-flowgate-deployed"], "3/3");
    let rev: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let revs = c.revs();
    assert!(revs.iter().all(|x| *x == revs[0]) && rev["rev"] == revs[0], "{revs:?} vs {rev}");
    let log = c.log.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|(_, w)| *w == "deploy").count(), 3, "{log:?}");
    assert!(!log.iter().any(|(_, what)| *what == "start"), "standbys stay stopped: {log:?}");
    assert!(!c.fakes[1].started() && !c.fakes[2].started());
    for f in &c.fakes {
        assert_eq!(f.inner.credentials()["broker"], json!({"user": "u", "password": "p1"}), "{}", f.inner.name);
    }
    let st = status(&c.h).await;
    assert_eq!(st["target_revision"], revs[0]);
    let m = metrics(&c.h).await;
    assert_eq!(sample(&m, "flowgate_deploy_fanout_total{backend=\"c\",result=\"ok\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "flowgate_backend_in_step{backend=\"b\"}"), Some(1.0));
}

/// Like the editor: read the rev through flowgate, then deploy with it.
async fn editor_deploy(c: &Cluster, body: &str) -> Reply {
    let req =
        http::Request::get(c.url("/flows")).header("node-red-api-version", "v2").body(Full::new(Bytes::new())).unwrap();
    let current = client().request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    let rev = serde_json::from_slice::<serde_json::Value>(&current).unwrap()["rev"].clone();
    let mut body: serde_json::Value = serde_json::from_str(body).unwrap();
    body["rev"] = rev;
    deploy(&c.url("/flows"), "v2", &body.to_string()).await
}

#[tokio::test]
async fn a_stale_rev_is_refused_by_the_active_and_in_step_standbys_alike() {
    let c = cluster(2, "").await;
    let (rev_a, rev_b) = (c.fakes[0].inner.rev(), c.fakes[1].inner.rev());
    let before = c.fakes[1].inner.deploys.load(Ordering::SeqCst);
    let body = json!({"flows": [{"id": "t", "type": "tab"}], "rev": "stale"}).to_string();
    let r = deploy(&c.url("/flows"), "v2", &body).await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("version_mismatch"));
    assert_eq!(r.headers["x-flowgate-deployed"], "0/2");
    assert_eq!(c.fakes[1].inner.deploys.load(Ordering::SeqCst), before + 1, "b got the editor's request too");
    assert_eq!((c.fakes[0].inner.rev(), c.fakes[1].inner.rev()), (rev_a, rev_b), "and refused it the same way");
    assert_eq!(status(&c.h).await["backends"][1]["step"], "in_step");
}

#[tokio::test]
async fn in_step_standbys_get_the_deploy_at_the_same_time_as_the_active() {
    let c = cluster(2, "").await;
    c.fakes[0].hang(); // the active takes its time...
    let deploying = tokio::spawn({
        let url = c.url("/flows");
        async move { deploy(&url, "v2", &flows_v2(7, None)).await }
    });
    let b = &c.fakes[1].inner;
    let before = b.rev();
    eventually(SECS, "b took the deploy before the active answered", || async { b.rev() != before }).await;
    c.fakes[0].unhang();
    let r = deploying.await.unwrap();
    assert_eq!((r.status, r.headers["x-flowgate-deployed"].to_str().unwrap()), (200, "2/2"));
    assert_eq!(c.fakes[0].inner.rev(), b.rev());
}

#[tokio::test]
async fn a_standby_refusing_editor_tokens_gets_the_copy_with_flowgates_token() {
    let (fa, fb, h) = token_pair(["ta", "tb"], ["ta", "tb"], [200, 100]).await;
    eventually(SECS, "in step", || async {
        let st = status(&h).await;
        st["active"] == "a" && st["backends"][1]["step"] == "in_step"
    })
    .await;
    // The editor's token is a's; b does not know it.
    for round in 0..2 {
        let req = http::Request::post(format!("http://{}/flows", h.proxy_addr))
            .header("node-red-api-version", "v2")
            .header("authorization", "Bearer ta")
            .body(Full::new(Bytes::from(flows_v2(round, None))))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-flowgate-deployed"], "2/2", "round {round}");
        assert_eq!(fa.inner.rev(), fb.inner.rev());
    }
}

#[tokio::test]
async fn a_drifted_standby_answers_409_and_is_resynced() {
    let c = cluster(2, "").await;
    // Someone changed b behind flowgate's back.
    c.fakes[1].inner.set_flows(json!([{"id": "rogue", "type": "tab"}]), None);
    let r = editor_deploy(&c, &flows_v2(2, None)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-flowgate-deployed"], "1/2", "b refused the deploy for its expected rev");
    c.wait_in_step().await;
    assert_eq!(c.fakes[1].inner.rev(), c.fakes[0].inner.rev());
    let m = metrics(&c.h).await;
    assert_eq!(sample(&m, "flowgate_deploy_fanout_total{backend=\"b\",result=\"conflict\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "flowgate_resyncs_total{backend=\"b\",result=\"ok\"}"), Some(1.0), "{m}");
}

#[tokio::test]
async fn a_standby_down_during_deploys_comes_back_with_flows_and_credentials() {
    let mut c = cluster(2, "").await;
    deploy(&c.url("/flows"), "v2", &flows_v2(1, Some("p1"))).await;
    c.wait_in_step().await;
    c.fakes[1].crash();
    eventually(SECS, "b down", || async { status(&c.h).await["backends"][1]["health"] == "down" }).await;
    let r = deploy(&c.url("/flows"), "v2", &flows_v2(2, Some("p2"))).await;
    assert_eq!(r.headers["x-flowgate-deployed"], "1/2");
    let r = deploy(&c.url("/flows"), "v2", &flows_v2(3, Some("__PWRD__"))).await;
    assert_eq!(r.status, 200);
    let st = status(&c.h).await;
    assert!(st["backends"][1]["step"].as_str().unwrap().starts_with("out_of_step"), "{st}");
    c.fakes[1].restart(false).await;
    c.wait_in_step().await;
    assert_eq!(c.fakes[1].inner.rev(), c.fakes[0].inner.rev());
    assert_eq!(c.fakes[1].inner.credentials()["broker"], json!({"user": "u", "password": "p2"}));
}

#[tokio::test]
async fn an_out_of_step_standby_is_not_promoted_while_an_in_step_one_exists() {
    let c = cluster(3, "").await;
    c.fakes[1].inner.refuse_deploys.store(true, Ordering::SeqCst);
    let r = deploy(&c.url("/flows"), "v2", &flows_v2(1, None)).await;
    assert_eq!(r.headers["x-flowgate-deployed"], "2/3");
    let st = status(&c.h).await;
    assert!(st["backends"][1]["step"].as_str().unwrap().contains("refused the deploy"), "{st}");
    c.fakes[0].crash();
    eventually(SECS, "c promoted over the higher-priority but out-of-step b", || async {
        active(&c.h).await.as_deref() == Some("c")
    })
    .await;
    assert!(!c.fakes[1].started());
}

#[tokio::test]
async fn partial_failure_shows_in_header_status_and_metrics() {
    let c = cluster(2, "").await;
    c.fakes[1].inner.refuse_deploys.store(true, Ordering::SeqCst);
    let r = deploy(&c.url("/flows"), "v2", &flows_v2(1, None)).await;
    assert_eq!((r.status, r.headers["x-flowgate-deployed"].to_str().unwrap()), (200, "1/2"));
    let m = metrics(&c.h).await;
    assert_eq!(sample(&m, "flowgate_deploy_fanout_total{backend=\"b\",result=\"error\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "flowgate_backend_in_step{backend=\"b\"}"), Some(0.0));
    // Once it accepts deploys again, the supervisor brings it back in step.
    c.fakes[1].inner.refuse_deploys.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "b resynced", || async { c.fakes[1].inner.rev() == c.fakes[0].inner.rev() })
        .await;
}

#[tokio::test]
async fn bad_deploys_are_refused_before_anything_is_sent() {
    let c = cluster(2, "deploy: { max_body: 1KiB }\n").await;
    let before: Vec<usize> = c.fakes.iter().map(|f| f.inner.deploys.load(Ordering::SeqCst)).collect();
    let r = deploy(&c.url("/flows"), "v2", "[]").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.headers["x-flowgate-error"], "bad-deploy");
    assert!(r.body.contains("API v2 deploys take an object"), "{}", r.body);
    let r = deploy(&c.url("/flows"), "v1", r#"{"flows":[]}"#).await;
    assert_eq!(r.status, 400);
    let big = json!({"flows": [{"id": "x", "info": "x".repeat(2000)}]}).to_string();
    let r = deploy(&c.url("/flows"), "v2", &big).await;
    assert_eq!(r.status, 413);
    let after: Vec<usize> = c.fakes.iter().map(|f| f.inner.deploys.load(Ordering::SeqCst)).collect();
    assert_eq!(before, after, "nothing reached any instance");
}

#[tokio::test]
async fn editors_cannot_start_or_stop_flows() {
    let c = cluster(2, "").await;
    let r = send(&client(), "POST", &c.url("/flows/state"), r#"{"state":"stop"}"#).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.body.contains("/switchover"));
    assert!(c.fakes[0].started(), "the active still runs");
}

#[tokio::test]
async fn v1_deploys_fan_out_too() {
    let c = cluster(2, "").await;
    let r = deploy(&c.url("/flows"), "v1", r#"[{"id":"t9","type":"tab"}]"#).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.headers["x-flowgate-deployed"], "2/2");
    c.wait_in_step().await;
    assert_eq!(c.fakes[0].inner.rev(), c.fakes[1].inner.rev());
}

#[tokio::test]
async fn an_added_flow_is_copied_to_the_others_by_resync() {
    let c = cluster(2, "").await;
    let r = send(&client(), "POST", &c.url("/flow"), r#"{"label":"new","nodes":[]}"#).await.unwrap();
    assert_eq!(r.status, 200);
    c.wait_in_step().await;
    assert_eq!(c.fakes[1].inner.rev(), c.fakes[0].inner.rev(), "b got a's flow with a's id");
}

#[tokio::test]
async fn the_sticky_cookie_is_issued_kept_and_reissued_after_a_failover() {
    let c = cluster(2, "").await;
    let r = get(&client(), &c.url("/settings")).await.unwrap();
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("flowgate_editor=v1:a:") && set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP");
    let cookie = set.split(';').next().unwrap().to_string();
    let with_cookie = |cookie: String| {
        let url = c.url("/settings");
        async move {
            let req = http::Request::get(url).header("cookie", cookie).body(Full::new(Bytes::new())).unwrap();
            client().request(req).await.unwrap()
        }
    };
    let again = with_cookie(cookie.clone()).await;
    assert!(again.headers().get("set-cookie").is_none(), "a valid cookie for the active is kept");
    let tampered = cookie.replace("v1:a:", "v1:b:");
    assert!(with_cookie(tampered).await.headers().get("set-cookie").is_some(), "a tampered cookie is re-issued");
    // Runtime traffic gets no cookie.
    assert!(get(&client(), &c.url("/hello")).await.unwrap().headers.get("set-cookie").is_none());
    c.fakes[0].crash();
    eventually(SECS, "b active", || async { active(&c.h).await.as_deref() == Some("b") }).await;
    let moved = with_cookie(cookie).await;
    let set = moved.headers()["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("flowgate_editor=v1:b:"), "{set}");
}

#[tokio::test]
async fn a_login_through_flowgate_is_known_to_token_info() {
    let c = cluster(2, "").await;
    let r = send(
        &client(),
        "POST",
        &c.url("/auth/token"),
        "client_id=node-red-editor&grant_type=password&scope=*&username=admin&password=password",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let token =
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["access_token"].as_str().unwrap().to_string();
    let info = |t: String| {
        let url = format!("http://{}/auth/token-info", c.h.admin_addr);
        async move {
            let req = http::Request::get(url)
                .header("authorization", format!("Bearer {t}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = client().request(req).await.unwrap();
            let status = resp.status().as_u16();
            (status, String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
        }
    };
    let (s, body) = info(token.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"username": "admin", "permissions": "*"})
    );
    assert_eq!(info("forged".into()).await.0, 404);
    let r = send(&client(), "POST", &c.url("/auth/revoke"), &format!("token={token}")).await.unwrap();
    assert!(r.status < 500);
    assert_eq!(info(token).await.0, 404, "forgotten after logout");
    // A read-only login: its token has the scope it asked for, not the user's "*".
    let r = send(
        &client(),
        "POST",
        &c.url("/auth/token"),
        "client_id=node-red-editor&grant_type=password&scope=read&username=admin&password=password",
    )
    .await
    .unwrap();
    let token =
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["access_token"].as_str().unwrap().to_string();
    let (_, body) = info(token).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["permissions"], "read");
}

/// A token issued by one instance and revoked through flowgate while another is active must be
/// forgotten by the issuing one too, or it accepts the token again after a failback.
#[tokio::test]
async fn a_revoke_reaches_every_instance() {
    let mut c = cluster(2, "").await;
    let login = "client_id=node-red-editor&grant_type=password&scope=*&username=admin&password=password";
    let r = send(&client(), "POST", &c.url("/auth/token"), login).await.unwrap();
    let token =
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["access_token"].as_str().unwrap().to_string();
    assert!(c.fakes[0].inner.issued().contains(&token), "a issued it");
    c.fakes[0].crash();
    eventually(SECS, "b active", || async { active(&c.h).await.as_deref() == Some("b") }).await;
    c.fakes[0].restart(false).await;
    eventually(SECS, "a back up", || async { status(&c.h).await["backends"][0]["health"] == "up" }).await;
    let r = send(&client(), "POST", &c.url("/auth/revoke"), &format!("token={token}")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-flowgate-deployed"], "2/2");
    assert!(!c.fakes[0].inner.issued().contains(&token), "the issuing instance forgot it too");
}

#[tokio::test]
async fn an_editor_write_waiting_for_the_lock_goes_to_the_active_after_a_failover() {
    let c = cluster(2, "deploy: { timeout: 1s }\n").await;
    let shared = c.h.shared();
    let held = shared.changes.lock(SECS).await.expect("lock");
    let writing = tokio::spawn({
        let url = c.url("/flow/t1");
        async move { send(&client(), "PUT", &url, r#"{"id":"t1"}"#).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // the write now waits for the lock
    c.fakes[0].crash();
    // The promotion waits deploy.timeout for the lock we hold, then goes ahead.
    wait_active(&c.h, "b", SECS).await;
    drop(held);
    let r = writing.await.unwrap();
    assert_eq!(r.status, 200, "{} {:?}", r.body, r.headers);
    assert!(c.log.lock().unwrap().contains(&("b".to_string(), "put-flow")), "written to the new active");
}

/// Node-RED's routes are case-insensitive (Express): `POST /FLOWS` deploys there as
/// `POST /flows` does, so through flowgate it must reach every instance too, and
/// `POST /Flows/State` is refused like `/flows/state`.
#[tokio::test]
async fn paths_in_another_case_are_the_same_editor_writes() {
    let c = cluster(3, "").await;
    for (i, path) in ["/FLOWS", "/Flows/"].iter().enumerate() {
        let r = deploy(&c.url(path), "v2", &flows_v2(10 + i as u32, None)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.headers["x-flowgate-deployed"], "3/3", "{path}");
        let revs = c.revs();
        assert!(revs.iter().all(|x| *x == revs[0]), "{path}: {revs:?}");
    }
    let r = send(&client(), "POST", &c.url("/Flows/State"), r#"{"state":"stop"}"#).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(c.fakes[0].started(), "the active still runs");
}

/// A client that goes away right after the active accepted a deploy (a fronting proxy's time-out,
/// a closed browser tab) does not cut the fan-out short: the slow standby still gets the deploy,
/// and every instance ends on one revision.
#[tokio::test]
async fn a_client_that_leaves_mid_deploy_does_not_cut_the_fan_out() {
    let c = cluster(2, "").await;
    c.fakes[1].inner.deploy_delay_ms.store(400, Ordering::SeqCst);
    let before = c.fakes[0].inner.deploys.load(Ordering::SeqCst);
    let url = c.url("/flows");
    let editor = tokio::spawn(async move { deploy(&url, "v2", &flows_v2(7, Some("p7"))).await });
    eventually(SECS, "the active took the deploy", || async {
        c.fakes[0].inner.deploys.load(Ordering::SeqCst) > before
    })
    .await;
    editor.abort(); // the client's connection closes here
    eventually(SECS, "both instances on one revision, in step", || async {
        let revs = c.revs();
        let st = status(&c.h).await;
        revs[0] == revs[1]
            && st["target_revision"] == revs[0]
            && st["backends"].as_array().unwrap().iter().all(|b| b["step"] == "in_step")
    })
    .await;
    assert_eq!(c.fakes[1].inner.credentials()["broker"], json!({"user": "u", "password": "p7"}));
}

/// A write's body is read only once the client's credentials are good on the active: an
/// unauthenticated 5 MiB deploy is answered 401 at once, before a byte of its body is read, and
/// at most four write bodies are buffered at a time (the next waits, then gets 503).
#[tokio::test]
async fn write_bodies_are_read_only_for_good_credentials_and_a_few_at_a_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let extra = "failover: { hold: 300ms }\nlimits: { header_read_timeout: 5s }\n";
    let (fa, _fb, h) = token_pair_with(["secret"; 2], ["secret"; 2], [200, 100], extra).await;
    wait_active(&h, "a", SECS).await;
    let head = |auth: &str| {
        format!(
            "POST /flows HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nNode-RED-API-Version: v2\r\nContent-Length: 5242880\r\n\r\n"
        )
    };
    // No credentials: 401 at once, nothing of the body sent.
    let t = tokio::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(head("").as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(SECS, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"), "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(t.elapsed() < Duration::from_secs(1), "refused before the body: {:?}", t.elapsed());
    // Good credentials, bodies that never finish: four are buffered, the fifth is turned away.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(h.proxy_addr).await.unwrap();
        s.write_all(head("Authorization: Bearer secret\r\n").as_bytes()).await.unwrap();
        s.write_all(b"{\"flows\":[").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the four are being read
    let mut s = tokio::net::TcpStream::connect(h.proxy_addr).await.unwrap();
    s.write_all(head("Authorization: Bearer secret\r\n").as_bytes()).await.unwrap();
    let n = tokio::time::timeout(SECS, s.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(fa.inner.deploys.load(Ordering::SeqCst), 0);
    drop(held);
}

//! Editor and deploy behaviour end to end against real Node-RED 4 processes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use support::fake_node_red::serde_json::{self, Value, json};
use support::node_red::{NodeRed, serial};
use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const BOOT: Duration = Duration::from_secs(30);

/// A bcrypt hash of "password" (Node-RED's adminAuth users).
const ADMIN_AUTH: &str = r#"    adminAuth: {
        type: "credentials",
        users: [{ username: "admin", password: "$2b$08$H4JdQ3ULo.JJMunRsKzxh.gv9d6U13p/82tWO3XMtKXH6qCOarCVy", permissions: "*" }],
        // flowgate's own token, and editor tokens issued through flowgate by any instance.
        tokens: async function (token) {
            if (token === process.env.FLOWGATE_TOKEN) return { username: "flowgate", permissions: "*" };
            try {
                const r = await fetch(process.env.FLOWGATE_ADMIN + "/auth/token-info", {
                    headers: { authorization: "Bearer " + token, "x-flowgate-instance": process.env.FG_NAME },
                    signal: AbortSignal.timeout(2000) });
                if (r.ok) return await r.json();
            } catch (e) {}
            return null;
        },
    },
"#;

fn fixture_flows() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flows.json")).unwrap(),
    )
    .unwrap()
}

/// The fixture flows with a changed tab label and, optionally, new credentials on the node
/// that uses them, as the editor would deploy them (API v2).
fn editor_body(label: &str, password: Option<&str>, rev: Option<&str>) -> String {
    let mut flows = fixture_flows();
    for n in flows.as_array_mut().unwrap() {
        if n["id"] == "fg_tab" {
            n["label"] = json!(label);
        }
        if n["id"] == "fg_cred_req"
            && let Some(p) = password
        {
            n["credentials"] = json!({"user": "u1", "password": p});
        }
    }
    let mut body = json!({ "flows": flows });
    if let Some(r) = rev {
        body["rev"] = json!(r);
    }
    body.to_string()
}

async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: String) -> Reply {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Reply { status, headers, body }
}

/// An editor-like deploy through `base`: read the rev, then POST the new flows with it.
async fn editor_deploy(base: &str, label: &str, password: Option<&str>, token: Option<&str>) -> Reply {
    deploy_at(base, "/flows", label, password, token).await
}

/// The same, posted to `path` (Node-RED answers its deploy route in any letter case).
async fn deploy_at(base: &str, path: &str, label: &str, password: Option<&str>, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("node-red-api-version", "v2")];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    let current = request("GET", &format!("{base}/flows"), &h, String::new()).await;
    assert_eq!(current.status, 200, "{}", current.body);
    let rev = serde_json::from_str::<Value>(&current.body).unwrap()["rev"].as_str().unwrap().to_string();
    h.push(("content-type", "application/json; charset=utf-8"));
    h.push(("node-red-deployment-type", "full"));
    request("POST", &format!("{base}{path}"), &h, editor_body(label, password, Some(&rev))).await
}

/// The rev an instance reports, read directly (not through flowgate).
async fn rev_of(n: &NodeRed, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let mut h = vec![("node-red-api-version", "v2")];
    if token.is_some() {
        h.push(("authorization", auth.as_str()));
    }
    let r = request("GET", &format!("{}/flows", n.url()), &h, String::new()).await;
    serde_json::from_str::<Value>(&r.body).unwrap()["rev"].as_str().unwrap().to_string()
}

fn yaml_for(nodes: &[&NodeRed], extra: &str) -> String {
    let mut y = String::from("backends:\n");
    for (i, n) in nodes.iter().enumerate() {
        y.push_str(&format!("  - {{ id: {}, url: \"{}\", priority: {} }}\n", n.name, n.url(), 300 - 100 * i));
    }
    y.push_str(extra);
    y
}

/// Every instance is up and in step.
async fn wait_in_step(h: &flowgate::Handle, limit: Duration) {
    eventually(limit, "every instance up and in step", || async {
        let st = status(h).await;
        st["backends"].as_array().unwrap().iter().all(|b| b["health"] == "up" && b["step"] == "in_step")
    })
    .await;
}

/// (a) A deploy through flowgate leaves every instance with the same rev and the standbys
/// stopped; and the deploy latency through flowgate (three instances) against a deploy
/// straight to one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_reaches_every_instance_and_standbys_stay_stopped() {
    let _serial = serial().await;
    let mut nodes = [NodeRed::create("nr-a", ""), NodeRed::create("nr-b", ""), NodeRed::create("nr-c", "")];
    let mut solo = NodeRed::create("solo", "");
    {
        let [a, b, c] = &mut nodes;
        tokio::join!(a.boot(true), b.boot(true), c.boot(true), solo.boot(false));
    }
    let h = start_flowgate(&yaml_for(&[&nodes[0], &nodes[1], &nodes[2]], ""), Secrets(vec![])).await;
    wait_active(&h, "nr-a", BOOT).await;
    wait_in_step(&h, BOOT).await;
    let base = format!("http://{}", h.proxy_addr);
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let t = Instant::now();
        let r = editor_deploy(&base, &format!("through {round}"), None, None).await;
        through.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-flowgate-deployed"], "3/3");
        let t = Instant::now();
        let r = editor_deploy(&solo.url(), &format!("direct {round}"), None, None).await;
        direct.push(t.elapsed());
        assert_eq!(r.status, 200);
        let revs = [rev_of(&nodes[0], None).await, rev_of(&nodes[1], None).await, rev_of(&nodes[2], None).await];
        assert!(revs.iter().all(|r| *r == revs[0]), "round {round}: {revs:?}");
        assert!(nodes[0].runs_flows().await, "the active runs the new flows");
        assert!(!nodes[1].runs_flows().await && !nodes[2].runs_flows().await, "standbys stay stopped");
    }
    let (t, d) = (median(through), median(direct));
    println!(
        "deploy (GET rev + POST flows, 10-node flow): through flowgate to 3 instances median {:.1} ms, straight to one instance median {:.1} ms, ratio {:.2}",
        t.as_secs_f64() * 1e3,
        d.as_secs_f64() * 1e3,
        t.as_secs_f64() / d.as_secs_f64()
    );
}

/// (b) A standby is down while two deploys happen, one changing a credential. It restarts and
/// is back in step (rev, and the credential works in a flow) before it can be promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_missed_deploys_is_back_in_step_before_promotion() {
    let _serial = serial().await;
    let mut a = NodeRed::create("nr-a", "");
    let mut b = NodeRed::create("nr-b", "");
    tokio::join!(a.boot(true), b.boot(true));
    let state = support::node_red::temp_dir("state");
    let extra = format!("state: {{ dir: \"{}\", key: {{ env: SK }} }}\n", state.display());
    let h = start_flowgate(&yaml_for(&[&a, &b], &extra), Secrets(vec![("SK", "state-key".into())])).await;
    wait_active(&h, "nr-a", BOOT).await;
    let base = format!("http://{}", h.proxy_addr);
    assert_eq!(editor_deploy(&base, "v1", Some("p1"), None).await.status, 200);
    wait_in_step(&h, BOOT).await;
    b.kill9();
    eventually(Duration::from_secs(5), "b down", || async { status(&h).await["backends"][1]["health"] == "down" })
        .await;
    let r = editor_deploy(&base, "v2", None, None).await;
    assert_eq!((r.status, r.headers["x-flowgate-deployed"].to_str().unwrap()), (200, "1/2"));
    let r = editor_deploy(&base, "v3", Some("p2"), None).await;
    assert_eq!(r.status, 200);
    let cred = get(&client(), &format!("{base}/credcheck")).await.unwrap();
    assert_eq!(cred.body, "Basic dTE6cDI=", "the active uses u1:p2");
    b.boot(true).await;
    wait_in_step(&h, Duration::from_secs(15)).await;
    assert_eq!(rev_of(&b, None).await, rev_of(&a, None).await);
    a.kill9();
    wait_active(&h, "nr-b", Duration::from_secs(5)).await;
    let cred = get(&client(), &format!("{base}/credcheck")).await.unwrap();
    assert_eq!((cred.status, cred.body.as_str()), (200, "Basic dTE6cDI="), "the resynced credential works in b's flow");
    let m = metrics(&h).await;
    assert!(sample(&m, "flowgate_resyncs_total{backend=\"nr-b\",result=\"ok\"}").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(!std::fs::read_to_string(state.join("target.json")).unwrap().contains("p2"), "no plaintext at rest");
    let _ = std::fs::remove_dir_all(state);
}

async fn comms(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("comms connects");
    ws.send(Message::text(r#"{"subscribe":"debug"}"#)).await.unwrap();
    ws
}

/// The `tick from <instance>` debug messages seen on a comms socket, until `n` arrived.
async fn ticks<S>(ws: &mut S, n: usize) -> Vec<String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < n {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.expect("ticks arrive").expect("open").unwrap();
        if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) {
            for it in items {
                if it["topic"] == "debug"
                    && let Some(s) = it["data"]["msg"].as_str()
                {
                    seen.push(s.to_string());
                }
            }
        }
    }
    seen
}

/// (c) An editor's /comms websocket through flowgate stays on one instance; after a failover
/// it is closed and reconnects to the new active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_comms_socket_follows_the_active() {
    let _serial = serial().await;
    let mut a = NodeRed::create("nr-a", "");
    let mut b = NodeRed::create("nr-b", "");
    tokio::join!(a.boot(true), b.boot(true));
    let h = start_flowgate(&yaml_for(&[&a, &b], ""), Secrets(vec![])).await;
    wait_active(&h, "nr-a", BOOT).await;
    let url = format!("ws://{}/comms", h.proxy_addr);
    let mut ws = comms(&url).await;
    let seen = ticks(&mut ws, 8).await;
    assert!(seen.iter().all(|s| s == "tick from nr-a"), "{seen:?}");
    a.kill9();
    // The socket is closed by flowgate (or by the dying instance): no more frames.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the comms socket was closed after the failover");
    wait_active(&h, "nr-b", Duration::from_secs(5)).await;
    let mut ws = comms(&url).await;
    let seen = ticks(&mut ws, 4).await;
    assert!(seen.iter().all(|s| s == "tick from nr-b"), "{seen:?}");
}

/// `/status` read in process (the admin listener of this test speaks HTTPS only).
fn status_in(h: &flowgate::Handle) -> Value {
    serde_json::to_value(&**h.shared().status.load()).unwrap()
}

async fn wait_active_in(h: &flowgate::Handle, id: &str, limit: Duration) {
    eventually(limit, &format!("{id} active"), || async { status_in(h)["active"] == id }).await;
}

/// (d) With adminAuth, a token obtained through flowgate before a failover still works after
/// it, over HTTP and on /comms. The instances reach flowgate's token-info over HTTPS
/// (`admin.tls`, the certificate trusted through NODE_EXTRA_CA_CERTS): their hook only works
/// if the TLS handshake and the certificate check succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_login_survives_a_failover() {
    let _serial = serial().await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("https://{}", admin.local_addr().unwrap());
    let certs = support::node_red::temp_dir("admin-certs");
    let (cert, key) = flowgate::traffic::tls::self_signed(&["127.0.0.1"]).unwrap();
    std::fs::write(certs.join("admin.crt"), cert).unwrap();
    std::fs::write(certs.join("admin.key"), key).unwrap();
    let mut a = NodeRed::create("nr-a", ADMIN_AUTH);
    let mut b = NodeRed::create("nr-b", ADMIN_AUTH);
    for n in [&mut a, &mut b] {
        n.env.push(("FLOWGATE_TOKEN".into(), "flowgate-static-token".into()));
        n.env.push(("FLOWGATE_ADMIN".into(), admin_url.clone()));
        n.env.push(("NODE_EXTRA_CA_CERTS".into(), certs.join("admin.crt").display().to_string()));
    }
    tokio::join!(a.boot(true), b.boot(true));
    let mut y = format!("admin: {{ tls: {{ certs: \"{}\" }} }}\nbackends:\n", certs.display());
    for (n, p) in [(&a, 200), (&b, 100)] {
        y.push_str(&format!("  - {{ id: {}, url: \"{}\", priority: {p}, token: {{ env: TOK }} }}\n", n.name, n.url()));
    }
    let cfg = flowgate::config::parse(
        &y,
        std::path::Path::new("t.yaml"),
        &Secrets(vec![("TOK", "flowgate-static-token".into())]),
    )
    .unwrap();
    let listeners = flowgate::Listeners::plain(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), admin);
    let h = flowgate::start(cfg, listeners, None).unwrap();
    wait_active_in(&h, "nr-a", BOOT).await;
    let base = format!("http://{}", h.proxy_addr);
    let login = request(
        "POST",
        &format!("{base}/auth/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "client_id=node-red-editor&grant_type=password&scope=*&username=admin&password=password".into(),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let token = serde_json::from_str::<Value>(&login.body).unwrap()["access_token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let flows = |who: &'static str| {
        let (base, bearer) = (base.clone(), bearer.clone());
        async move {
            let r = request("GET", &format!("{base}/flows"), &[("authorization", &bearer)], String::new()).await;
            assert_eq!(r.status, 200, "{who}: {}", r.body);
        }
    };
    flows("before the failover").await;
    let direct_b = request("GET", &format!("{}/flows", b.url()), &[("authorization", &bearer)], String::new()).await;
    assert_eq!(direct_b.status, 200, "nr-b accepts nr-a's token through flowgate's token-info");
    let forged = request("GET", &format!("{base}/flows"), &[("authorization", "Bearer forged")], String::new()).await;
    assert_eq!(forged.status, 401);
    // A read-only login cannot deploy, neither on the active that issued it nor on the standby
    // that learns about it from flowgate's token-info.
    let ro = request(
        "POST",
        &format!("{base}/auth/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "client_id=node-red-editor&grant_type=password&scope=read&username=admin&password=password".into(),
    )
    .await;
    let ro = format!("Bearer {}", serde_json::from_str::<Value>(&ro.body).unwrap()["access_token"].as_str().unwrap());
    for url in [base.clone(), b.url()] {
        let h = [("authorization", ro.as_str()), ("content-type", "application/json"), ("node-red-api-version", "v2")];
        let r = request("POST", &format!("{url}/flows"), &h, editor_body("read-only", None, None)).await;
        assert!(matches!(r.status, 401 | 403), "a scope=read token deployed through {url}: {} {}", r.status, r.body);
    }
    assert_eq!(rev_of(&a, Some("flowgate-static-token")).await, rev_of(&b, Some("flowgate-static-token")).await);
    a.kill9();
    wait_active_in(&h, "nr-b", Duration::from_secs(5)).await;
    flows("after the failover").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/comms", h.proxy_addr)).await.unwrap();
    ws.send(Message::text(json!({"auth": token}).to_string())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), r#"{"auth":"ok"}"#);
    // nr-a, which issued the token, comes back (its sessions are on disk); a logout through
    // flowgate while nr-b is active must reach it too.
    a.boot(true).await;
    eventually(Duration::from_secs(10), "nr-a back as a standby", || async {
        status_in(&h)["backends"][0]["role"] == "standby"
    })
    .await;
    let direct_a = request("GET", &format!("{}/flows", a.url()), &[("authorization", &bearer)], String::new()).await;
    assert_eq!(direct_a.status, 200, "nr-a still knows its token");
    let form = format!("token={}", token.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"));
    let h = [("authorization", bearer.as_str()), ("content-type", "application/x-www-form-urlencoded")];
    let out = request("POST", &format!("{base}/auth/revoke"), &h, form).await;
    assert_eq!(out.status, 200, "{}", out.body);
    for n in [&a, &b] {
        let r = request("GET", &format!("{}/flows", n.url()), &[("authorization", &bearer)], String::new()).await;
        assert_eq!(r.status, 401, "{} still accepts the revoked token", n.name);
    }
}

/// (e) A deploy racing a failover leaves no instance with different flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_racing_a_failover_leaves_the_instances_equal() {
    let _serial = serial().await;
    let mut nodes = [NodeRed::create("nr-a", ""), NodeRed::create("nr-b", "")];
    {
        let [a, b] = &mut nodes;
        tokio::join!(a.boot(true), b.boot(true));
    }
    let h = start_flowgate(&yaml_for(&[&nodes[0], &nodes[1]], ""), Secrets(vec![])).await;
    wait_active(&h, "nr-a", BOOT).await;
    wait_in_step(&h, BOOT).await;
    let base = format!("http://{}", h.proxy_addr);
    let mut active_ix = 0;
    for (round, offset_ms) in [0u64, 8, 20].into_iter().enumerate() {
        let deploying = tokio::spawn({
            let base = base.clone();
            async move { editor_deploy(&base, &format!("race {round}"), Some(&format!("r{round}")), None).await }
        });
        // The race itself: kill the active a few milliseconds into the deploy.
        tokio::time::sleep(Duration::from_millis(offset_ms)).await;
        nodes[active_ix].kill9();
        let r = deploying.await.unwrap();
        let spare = 1 - active_ix;
        wait_active(&h, &nodes[spare].name.clone(), Duration::from_secs(5)).await;
        nodes[active_ix].boot(true).await;
        wait_in_step(&h, Duration::from_secs(15)).await;
        let (ra, rb) = (rev_of(&nodes[0], None).await, rev_of(&nodes[1], None).await);
        println!("race round {round} (+{offset_ms} ms): deploy answered {}; revs equal: {}", r.status, ra == rb);
        assert_eq!(
            ra,
            rb,
            "round {round}: instances differ after the race (deploy answered {}): {}",
            r.status,
            status(&h).await
        );
        active_ix = spare;
    }
}

/// Node-RED routes `POST /FLOWS` to its deploy handler (Express matches paths in any letter
/// case): through flowgate such a deploy reaches every instance like `POST /flows`, and is
/// still there after a failover. Matched case-sensitively it reached the active alone, and the
/// failover lost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_to_flows_in_capitals_reaches_every_instance_and_survives_a_failover() {
    let _serial = serial().await;
    let (mut nodes, h) = support::node_red::pair(None, "").await;
    wait_in_step(&h, BOOT).await;
    let base = format!("http://{}", h.proxy_addr);
    let r = deploy_at(&base, "/FLOWS", "capitals", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["x-flowgate-deployed"], "2/2");
    let (a, b) = (rev_of(&nodes[0], None).await, rev_of(&nodes[1], None).await);
    assert_eq!(a, b, "both instances hold the deploy");
    nodes[0].kill9();
    wait_active(&h, "nr-b", Duration::from_secs(10)).await;
    let flows = request("GET", &format!("{base}/flows"), &[], String::new()).await;
    assert!(flows.body.contains("\"capitals\""), "the deploy survived the failover: {}", flows.body);
}

/// HA readiness: the active's flows are checked at start (the test flows' "tick" inject fires
/// once when flows start: again at every failover), and a deploy through flowgate of a flow
/// with a hazard succeeds, reaches both instances, and its finding shows in `/status` and the
/// metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_findings_of_the_active_flows_and_of_a_deploy_show_in_status() {
    let _serial = serial().await;
    let ([a, b], h) = support::node_red::pair(None, "").await;
    let hazard = |kind: &'static str, node: &'static str| {
        let h = &h;
        move || async move {
            let s = status(h).await;
            s["readiness"]["hot_spare"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x["kind"] == kind && x["node"] == node))
        }
    };
    eventually(Duration::from_secs(10), "the start-up finding", hazard("inject_once", "fg_tick")).await;
    let mut flows = fixture_flows();
    flows.as_array_mut().unwrap().push(json!({
        "id": "fg_remember", "type": "change", "z": "fg_tab", "name": "remember",
        "rules": [{"t": "set", "p": "last", "pt": "flow", "to": "payload", "tot": "msg"}], "x": 300, "y": 400, "wires": [[]]
    }));
    let base = format!("http://{}", h.proxy_addr);
    let mut hd = vec![("node-red-api-version", "v2")];
    let current = request("GET", &format!("{base}/flows"), &hd, String::new()).await;
    let rev = serde_json::from_str::<Value>(&current.body).unwrap()["rev"].as_str().unwrap().to_string();
    hd.push(("content-type", "application/json"));
    hd.push(("node-red-deployment-type", "full"));
    let r = request("POST", &format!("{base}/flows"), &hd, json!({"flows": flows, "rev": rev}).to_string()).await;
    assert_eq!(r.status, 200, "a flow with a hazard deploys: {}", r.body);
    let new_rev = serde_json::from_str::<Value>(&r.body).unwrap()["rev"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "the deploy's finding", hazard("memory_context", "fg_remember")).await;
    let s = status(&h).await;
    assert_eq!(s["readiness"]["rev"], json!(new_rev));
    let f =
        s["readiness"]["hot_spare"].as_array().unwrap().iter().find(|x| x["node"] == "fg_remember").unwrap().clone();
    println!("finding after the deploy: {f}");
    assert_eq!((f["name"].as_str(), f["tab"].as_str()), (Some("remember"), Some("flowgate test")));
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_flow_hazards{kind=\"memory_context\",mode=\"hot-spare\"}"), Some(1.0), "{m}");
    for n in [&a, &b] {
        let (_, body) = n.direct("/flows").await.unwrap();
        assert!(body.contains("fg_remember"), "{} has the deploy", n.name);
    }
}

/// A user deleted from the settings of the instance that issued their login is refused by
/// every instance once that instance is back: flowgate asks the issuer before it vouches for
/// the login elsewhere, and the issuer's own question (its hook, naming itself) is refused.
/// Another user's login, still accepted by the issuer, keeps working everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_is_refused_by_every_instance() {
    let _serial = serial().await;
    let hash = "$2b$08$H4JdQ3ULo.JJMunRsKzxh.gv9d6U13p/82tWO3XMtKXH6qCOarCVy";
    let two_users = ADMIN_AUTH.replace(
        r#"permissions: "*" }],"#,
        &format!(r#"permissions: "*" }}, {{ username: "operator", password: "{hash}", permissions: "*" }}],"#),
    );
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let mut a = NodeRed::create("nr-a", &two_users);
    let mut b = NodeRed::create("nr-b", &two_users);
    for n in [&mut a, &mut b] {
        n.env.push(("FLOWGATE_TOKEN".into(), "flowgate-static-token".into()));
        n.env.push(("FLOWGATE_ADMIN".into(), admin_url.clone()));
    }
    tokio::join!(a.boot(true), b.boot(true));
    let mut y = String::from("backends:\n");
    for (n, p) in [(&a, 200), (&b, 100)] {
        y.push_str(&format!("  - {{ id: {}, url: \"{}\", priority: {p}, token: {{ env: TOK }} }}\n", n.name, n.url()));
    }
    let secrets = Secrets(vec![("TOK", "flowgate-static-token".into())]);
    let cfg = flowgate::config::parse(&y, std::path::Path::new("t.yaml"), &secrets).unwrap();
    let listeners = flowgate::Listeners::plain(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), admin);
    let h = flowgate::start(cfg, listeners, None).unwrap();
    wait_active(&h, "nr-a", BOOT).await;
    let base = format!("http://{}", h.proxy_addr);
    let login = |user: &'static str| {
        let base = base.clone();
        async move {
            let body =
                format!("client_id=node-red-editor&grant_type=password&scope=*&username={user}&password=password");
            let r = request(
                "POST",
                &format!("{base}/auth/token"),
                &[("content-type", "application/x-www-form-urlencoded")],
                body,
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            format!("Bearer {}", serde_json::from_str::<Value>(&r.body).unwrap()["access_token"].as_str().unwrap())
        }
    };
    let (gone, kept) = (login("admin").await, login("operator").await);
    let on_b = |bearer: String| {
        let url = format!("{}/flows", b.url());
        async move { request("GET", &url, &[("authorization", &bearer)], String::new()).await.status }
    };
    assert_eq!(on_b(gone.clone()).await, 200, "nr-b accepts nr-a's login through flowgate");
    // nr-a is restarted without the user "admin" (its sessions file still holds the token).
    let settings = std::fs::read_to_string(a.user_dir.join("settings.js")).unwrap();
    let without = settings.replace(r#"{ username: "admin", password: "#, r#"{ username: "retired", password: "#);
    std::fs::write(a.user_dir.join("settings.js"), without).unwrap();
    a.kill9();
    wait_active(&h, "nr-b", Duration::from_secs(5)).await;
    assert_eq!(on_b(gone.clone()).await, 200, "its issuer is down: the login survives the failover");
    a.boot(true).await;
    eventually(Duration::from_secs(10), "nr-a back", || async { status(&h).await["backends"][0]["health"] == "up" })
        .await;
    assert_eq!(on_b(gone.clone()).await, 401, "the deleted user's login is refused on nr-b");
    assert_eq!(on_b(gone).await, 401, "and stays refused");
    assert_eq!(on_b(kept).await, 200, "another user's login still works");
}

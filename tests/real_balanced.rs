//! Load-balanced mode against real Node-RED 4 (and mosquitto): throughput of two instances
//! against one, kill -9 under a steady stream, a deploy reaching both running instances, and
//! MQTT work shared through `$share/` subscriptions, and a Dashboard 2.0 socket.io session.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::mosquitto::Mosquitto;
use support::node_red::{NodeRed, pair_yaml, serial};
use support::stream::{RequestStream, failures};
use support::*;
use tokio::time::Instant;

/// The test flows plus: `GET /work`, 20 ms of event-loop work per request (a synchronous
/// function, as a flow that parses or computes), answering the instance's name; and with a
/// broker, MQTT jobs taken from a shared subscription and answered on `lb/done`.
fn flows(broker_port: Option<u16>) -> serde_json::Value {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flows.json");
    let mut flows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(base).unwrap()).unwrap();
    let tab = flows[0]["id"].as_str().unwrap().to_string();
    flows.push(json!({"id": "lb_in", "type": "http in", "z": tab, "name": "", "url": "/work", "method": "get",
        "upload": false, "swaggerDoc": "", "x": 100, "y": 500, "wires": [["lb_fn"]]}));
    flows.push(json!({"id": "lb_fn", "type": "function", "z": tab, "name": "20 ms of work",
        "func": "const end = Date.now() + 20;\nwhile (Date.now() < end) {}\nmsg.payload = env.get('FG_NAME');\nreturn msg;",
        "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
        "x": 300, "y": 500, "wires": [["lb_out"]]}));
    flows.push(json!({"id": "lb_out", "type": "http response", "z": tab, "name": "", "statusCode": "",
        "headers": {}, "x": 500, "y": 500, "wires": []}));
    if let Some(port) = broker_port {
        // Every instance runs this flow: a generated client id each, one shared subscription.
        flows.push(json!({"id": "lb_broker", "type": "mqtt-broker", "name": "jobs broker",
            "broker": "127.0.0.1", "port": port.to_string(), "clientid": "", "autoConnect": true,
            "usetls": false, "protocolVersion": "4", "keepalive": "15", "cleansession": true,
            "autoUnsubscribe": true, "birthTopic": "", "birthQos": "0", "birthPayload": "", "birthMsg": {},
            "closeTopic": "", "closeQos": "0", "closePayload": "", "closeMsg": {},
            "willTopic": "", "willQos": "0", "willPayload": "", "willMsg": {}, "userProps": "", "sessionExpiry": ""}));
        flows.push(
            json!({"id": "lb_mq_in", "type": "mqtt in", "z": tab, "name": "", "topic": "$share/workers/lb/jobs",
            "qos": "1", "datatype": "utf8", "broker": "lb_broker", "nl": false, "rap": true, "rh": 0, "inputs": 0,
            "x": 100, "y": 560, "wires": [["lb_mq_fn"]]}),
        );
        flows.push(json!({"id": "lb_mq_fn", "type": "function", "z": tab, "name": "job",
            "func": "msg.payload = env.get('FG_NAME') + ' ' + msg.payload;\nreturn msg;",
            "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
            "x": 300, "y": 560, "wires": [["lb_mq_out"]]}));
        flows.push(json!({"id": "lb_mq_out", "type": "mqtt out", "z": tab, "name": "", "topic": "lb/done", "qos": "1",
            "retain": "false", "respTopic": "", "contentType": "", "userProps": "", "correl": "", "expiry": "",
            "broker": "lb_broker", "x": 500, "y": 560, "wires": []}));
    }
    serde_json::Value::Array(flows)
}

/// The test flows plus a Node-RED Dashboard 2.0 (`/dashboard`, one page with one widget),
/// whose socket.io server runs while the flows run.
fn dashboard_flows() -> serde_json::Value {
    let mut flows = flows(None);
    let tab = flows[0]["id"].as_str().unwrap().to_string();
    let list = flows.as_array_mut().unwrap();
    list.push(json!({"id": "ui_base", "type": "ui-base", "name": "UI", "path": "/dashboard",
        "includeClientData": true, "acceptsClientConfig": ["ui-notification", "ui-control"],
        "showPathInSidebar": false, "navigationStyle": "default"}));
    list.push(json!({"id": "ui_theme", "type": "ui-theme", "name": "Default",
        "colors": {"surface": "#ffffff", "primary": "#0094CE", "bgPage": "#eeeeee", "groupBg": "#ffffff", "groupOutline": "#cccccc"},
        "sizes": {"pagePadding": "12px", "groupGap": "12px", "groupBorderRadius": "4px", "widgetGap": "12px"}}));
    list.push(json!({"id": "ui_page", "type": "ui-page", "name": "Home", "ui": "ui_base", "path": "/home",
        "layout": "grid", "theme": "ui_theme", "order": 1}));
    list.push(json!({"id": "ui_group", "type": "ui-group", "name": "G", "page": "ui_page", "width": "6",
        "height": "1", "order": 1}));
    list.push(json!({"id": "ui_text", "type": "ui-text", "z": tab, "group": "ui_group", "order": 1, "width": 0,
        "height": 0, "name": "", "label": "who", "format": "{{msg.payload}}", "layout": "row-spread", "wires": []}));
    flows
}

/// nr-a and nr-b with `flows`, booted stopped, and flowgate in load-balanced mode in front,
/// once both are in rotation.
async fn balanced_pair(flows: &serde_json::Value, extra: &str) -> ([NodeRed; 2], flowgate::Handle) {
    let mut nodes = [NodeRed::create("nr-a", ""), NodeRed::create("nr-b", "")];
    {
        let [a, b] = &mut nodes;
        if flows.as_array().unwrap().iter().any(|n| n["type"] == "ui-base") {
            a.with_dashboard();
            b.with_dashboard();
        }
        a.set_flows(flows);
        b.set_flows(flows);
        tokio::join!(a.boot(true), b.boot(true));
    }
    let yaml = pair_yaml(&nodes[0], &nodes[1], &format!("mode: load-balanced\n{extra}"));
    let h = start_flowgate(&yaml, Secrets(vec![("ADM", "test-admin-token-0123".into())])).await;
    wait_rotation(&h, &["nr-a", "nr-b"], Duration::from_secs(30)).await;
    (nodes, h)
}

async fn rotation(h: &flowgate::Handle) -> Vec<String> {
    let s = status(h).await;
    s["rotation"].as_array().map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

async fn wait_rotation(h: &flowgate::Handle, want: &[&str], limit: Duration) {
    eventually(limit, &format!("rotation {want:?}"), || async {
        let mut got = rotation(h).await;
        got.sort();
        got == want
    })
    .await;
}

/// Closed-loop load: `conns` clients each sending GET `url` one after another for `run`.
/// Requests per second and the answers by body.
async fn load(url: &str, conns: usize, run: Duration) -> (f64, BTreeMap<String, usize>) {
    let end = Instant::now() + run;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let url = url.to_string();
        tasks.spawn(async move {
            let c = client();
            let mut seen = BTreeMap::new();
            while Instant::now() < end {
                let key = match get(&c, &url).await {
                    Ok(r) if r.status == 200 => r.body,
                    Ok(r) => format!("status {}", r.status),
                    Err(e) => format!("error {e}"),
                };
                *seen.entry(key).or_insert(0) += 1;
            }
            seen
        });
    }
    let started = Instant::now();
    let mut all = BTreeMap::new();
    while let Some(seen) = tasks.join_next().await {
        for (k, n) in seen.unwrap() {
            *all.entry(k).or_insert(0) += n;
        }
    }
    let ok: usize = all.iter().filter(|(k, _)| k.starts_with("nr-")).map(|(_, n)| n).sum();
    (ok as f64 / started.elapsed().as_secs_f64(), all)
}

/// With 20 ms of event-loop work per request, one instance serves at most 50 requests/s; two
/// in rotation serve close to twice that at the same concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_rotation_serve_nearly_twice_the_requests_of_one() {
    let _serial = serial().await;
    let f = flows(None);
    let (nodes, h) = balanced_pair(&f, "").await;
    // One instance alone, behind a flowgate of its own, at the same concurrency.
    let one = start_flowgate(
        &format!("mode: load-balanced\nbackends: [{{ id: nr-a, url: \"{}\" }}]\n", nodes[0].url()),
        Secrets(vec![]),
    )
    .await;
    wait_rotation(&one, &["nr-a"], Duration::from_secs(30)).await;
    let (conns, run) = (8, Duration::from_secs(4));
    // Warm both paths (JIT, connections), then measure one, two, one, two.
    load(&format!("http://{}/work", one.proxy_addr), conns, Duration::from_secs(1)).await;
    load(&format!("http://{}/work", h.proxy_addr), conns, Duration::from_secs(1)).await;
    let (mut singles, mut pairs) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let (r1, seen1) = load(&format!("http://{}/work", one.proxy_addr), conns, run).await;
        let (r2, seen2) = load(&format!("http://{}/work", h.proxy_addr), conns, run).await;
        assert!(seen1.keys().all(|k| k == "nr-a"), "one instance: {seen1:?}");
        assert!(seen2.keys().all(|k| k.starts_with("nr-")), "two instances, no failure: {seen2:?}");
        let (a, b) = (seen2.get("nr-a").copied().unwrap_or(0), seen2.get("nr-b").copied().unwrap_or(0));
        assert!(a.min(b) * 10 >= a.max(b) * 8, "spread evenly: {seen2:?}");
        singles.push(r1);
        pairs.push(r2);
    }
    // What this machine allows: both instances loaded directly, half the connections each.
    let (ua, ub) = (format!("{}/work", nodes[0].url()), format!("{}/work", nodes[1].url()));
    let (da, db) = tokio::join!(load(&ua, conns / 2, run), load(&ub, conns / 2, run));
    let ceiling = da.0 + db.0;
    println!("without flowgate, both instances directly: {ceiling:.1} req/s");
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (r1, r2) = (best(&singles), best(&pairs));
    println!(
        "20 ms of work per request, {conns} connections, {} s runs: one instance {singles:.1?} req/s, two {pairs:.1?} req/s; ratio {:.2}",
        run.as_secs(),
        r2 / r1
    );
    // Two busy Node.js processes fill both cores of a small machine: flowgate must come close to
    // what the instances give without it, and far above one instance.
    assert!(r2 >= 0.9 * ceiling, "two instances through flowgate: {r2:.1} req/s, directly {ceiling:.1}");
    assert!(r2 >= 1.7 * r1, "two instances serve at least 1.7× one: {r2:.1} against {r1:.1} req/s");
}

/// kill -9 of one instance under a steady stream of GETs: none fails (retried on the other),
/// it leaves the rotation at once, and after it is booted again (flows stopped, as a restart
/// leaves it) it is checked, started and back in rotation. The editor stays on its instance,
/// and a deploy through flowgate reaches both, both running the new flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fails_no_idempotent_request_and_the_instance_rejoins_after_a_reboot() {
    let _serial = serial().await;
    let f = flows(None);
    let (mut nodes, h) = balanced_pair(&f, "").await;
    assert!(nodes[0].runs_flows().await && nodes[1].runs_flows().await, "both run their flows");
    let url = format!("http://{}/hello", h.proxy_addr);
    let stream = RequestStream::start_for(url, Duration::from_millis(2), Duration::from_secs(20));
    stream.wait_for("hello from nr-b", Instant::now(), 20).await;
    let killed = Instant::now();
    nodes[1].kill9();
    wait_rotation(&h, &["nr-a"], Duration::from_secs(5)).await;
    let left = killed.elapsed();
    stream.wait_for("hello from nr-a", Instant::now(), 200).await;
    nodes[1].boot(true).await;
    let booted = Instant::now();
    wait_rotation(&h, &["nr-a", "nr-b"], Duration::from_secs(30)).await;
    let rejoined = booted.elapsed();
    stream.wait_for("hello from nr-b", Instant::now(), 20).await;
    let samples = stream.finish().await;
    let failed = failures(&samples);
    println!(
        "kill -9 of nr-b under {} GETs: {} failed; out of rotation {} ms after the kill; back in rotation {} ms after its reboot",
        samples.len(),
        failed.len(),
        left.as_millis(),
        rejoined.as_millis()
    );
    assert!(failed.is_empty(), "no request failed: {failed:?}");
    assert!(nodes[1].runs_flows().await, "nr-b runs its flows again");

    // The editor: pinned to one instance by its cookie, and a deploy reaches both.
    let c = client();
    let base = format!("http://{}", h.proxy_addr);
    let first = send_with(&c, "GET", &format!("{base}/settings"), "", &[]).await.unwrap();
    assert_eq!(first.status, 200);
    let flows_now =
        send_with(&c, "GET", &format!("{base}/flows"), "", &[("node-red-api-version", "v2")]).await.unwrap();
    let current: serde_json::Value = serde_json::from_str(&flows_now.body).unwrap();
    let mut new_flows = current["flows"].as_array().unwrap().clone();
    let tab = new_flows[0]["id"].as_str().unwrap().to_string();
    new_flows.push(json!({"id": "dep_in", "type": "http in", "z": tab, "url": "/deployed", "method": "get",
        "upload": false, "swaggerDoc": "", "x": 100, "y": 700, "wires": [["dep_out"]]}));
    new_flows.push(json!({"id": "dep_out", "type": "http response", "z": tab, "statusCode": "", "headers": {},
        "x": 300, "y": 700, "wires": []}));
    let body = json!({"flows": new_flows, "rev": current["rev"]}).to_string();
    let h2 =
        [("node-red-api-version", "v2"), ("content-type", "application/json"), ("node-red-deployment-type", "full")];
    let r = send_with(&c, "POST", &format!("{base}/flows"), &body, &h2).await.unwrap();
    assert_eq!(r.status, 200, "deploy through flowgate: {}", r.body);
    for n in &nodes {
        eventually(Duration::from_secs(10), &format!("{} serves the deployed route", n.name), || async {
            n.direct("/deployed").await.is_some_and(|(s, _)| s == 200)
        })
        .await;
        assert!(n.runs_flows().await, "{} still runs its flows after the deploy", n.name);
    }
    wait_rotation(&h, &["nr-a", "nr-b"], Duration::from_secs(10)).await;
}

/// MQTT jobs on a shared subscription (`$share/workers/lb/jobs`): with both instances running
/// the same flow, each of 2,000 jobs is processed by exactly one of them, and both take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_process_each_message_once_spread_over_both() {
    let _serial = serial().await;
    let m = Mosquitto::start().await;
    let f = flows(Some(m.port));
    let (_nodes, _h) = balanced_pair(&f, "").await;
    let sub = m.subscribe("lb/done");
    let mut publ = m.publisher("lb/jobs");
    // Both instances' broker nodes have subscribed: probe jobs come back from each.
    let mut k = 0;
    eventually(Duration::from_secs(20), "both instances take jobs", || {
        k += 1;
        publ.send(&format!("probe{k}"));
        let got = sub.got.lock().unwrap();
        let both = ["nr-a ", "nr-b "].iter().all(|p| got.iter().any(|(_, l)| l.starts_with(p)));
        async move { both }
    })
    .await;
    let before = sub.count();
    const N: usize = 2000;
    for i in 0..N {
        publ.send(&format!("job{i}"));
    }
    eventually(Duration::from_secs(30), "every job answered", || {
        let n = sub.got.lock().unwrap().iter().skip(before).filter(|(_, l)| l.contains(" job")).count();
        async move { n >= N }
    })
    .await;
    // Anything late (a duplicate) would arrive within this bounded wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sub.got.lock().unwrap();
    let mut per_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, l) in got.iter().skip(before).filter(|(_, l)| l.contains(" job")) {
        let (who, job) = l.split_once(' ').unwrap();
        per_job.entry(job.to_string()).or_default().push(who.to_string());
    }
    let dups: Vec<_> = per_job.iter().filter(|(_, w)| w.len() > 1).take(5).collect();
    let by = |n: &str| per_job.values().filter(|w| w[0] == n).count();
    println!(
        "{N} MQTT jobs: {} answered, nr-a took {}, nr-b took {}, {} twice",
        per_job.len(),
        by("nr-a"),
        by("nr-b"),
        dups.len()
    );
    assert_eq!(per_job.len(), N, "every job processed");
    assert!(dups.is_empty(), "no job processed twice: {dups:?}");
    assert!(by("nr-a") > N / 5 && by("nr-b") > N / 5, "both took part");
}

/// A socket.io client (`tests/support/sio-client.js`: polling first, then websocket, cookies
/// kept, as a browser) on the Dashboard 2.0 of both instances, through flowgate: the polling
/// requests of its session all reach one instance (else the upgrade fails with "Session ID
/// unknown"); when that instance is killed, the client reconnects to the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_socket_io_session_keeps_its_instance_and_moves_when_it_is_killed() {
    use tokio::io::AsyncBufReadExt;
    let _serial = serial().await;
    let (mut nodes, h) = balanced_pair(&dashboard_flows(), "").await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/sio-client.js");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .args([&format!("http://{}", h.proxy_addr), "/dashboard/socket.io", "40000"])
        .env("NODE_PATH", support::node_red::extras())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the socket.io client");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<serde_json::Value> = Vec::new();
    // Reads events until `want` holds for one, within `limit`.
    async fn until(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
        events: &mut Vec<serde_json::Value>,
        limit: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line()).await;
            let Ok(Ok(Some(line))) = line else { panic!("no such event in {limit:?}; events: {events:?}") };
            let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
            events.push(ev.clone());
            if want(&ev) {
                return ev;
            }
        }
    }
    // A session: its connect and its upgrade to a websocket, in either order (the upgrade may
    // finish before socket.io's connect packet is answered), both from one engine.io session.
    async fn session(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
        events: &mut Vec<serde_json::Value>,
        limit: Duration,
    ) -> serde_json::Value {
        let from = events.len();
        let connect = until(lines, events, limit, |e| e["ev"] == "connect").await;
        let upgraded = |events: &[serde_json::Value]| {
            events[from..].iter().any(|e| e["ev"] == "upgrade" && e["sid"] == connect["sid"])
        };
        if !upgraded(events) {
            until(lines, events, limit, |e| e["ev"] == "upgrade").await;
        }
        assert!(upgraded(events), "one session from polling to websocket: {events:?}");
        connect
    }
    let first = session(&mut lines, &mut events, Duration::from_secs(15)).await;
    assert!(!events.iter().any(|e| e["ev"] == "connect_error" || e["ev"] == "disconnect"), "{events:?}");
    let pinned = first["pinned"].as_str().expect("the session's affinity cookie").to_string();
    let (holder, other) = if pinned.starts_with("v1:nr-a:") { (0, 1) } else { (1, 0) };
    let killed = Instant::now();
    nodes[holder].kill9();
    until(&mut lines, &mut events, Duration::from_secs(10), |e| e["ev"] == "disconnect").await;
    let again = session(&mut lines, &mut events, Duration::from_secs(15)).await;
    let moved = killed.elapsed();
    assert_ne!(again["sid"], first["sid"]);
    let now = again["pinned"].as_str().unwrap_or_default();
    assert!(now.starts_with(&format!("v1:{}:", nodes[other].name)), "re-pinned to the other instance: {now}");
    println!(
        "socket.io session on {} (polling, then websocket); after its kill -9 a new session on {} {} ms later",
        nodes[holder].name,
        nodes[other].name,
        moved.as_millis()
    );
    let _ = child.kill().await;
}

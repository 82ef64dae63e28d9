//! Several flowgate replicas in front of the same Node-RED instances, agreeing through a real
//! etcd: real Node-RED 4 processes (with the epoch fence from `contrib/node-red`), replicas as
//! processes (so that one can be killed or frozen), etcd on free loopback ports.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::etcd::Etcd;
use support::node_red::{NodeRed, serial};
use support::relay::Relay;
use support::replica::Replica;
use support::stream::{RequestStream, failures, gap};
use support::*;
use tokio::time::Instant;

const BOOT: Duration = Duration::from_secs(30);

fn fenced_node_red(name: &str) -> NodeRed {
    let fence = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/node-red/flowgate-fence.js");
    NodeRed::create(name, &format!("    httpAdminMiddleware: require({:?}),", fence.to_str().unwrap()))
}

fn yaml(a: &NodeRed, b: &NodeRed) -> String {
    format!(
        "backends:\n  - {{ id: {}, url: \"{}\", priority: 200 }}\n  - {{ id: {}, url: \"{}\", priority: 100 }}\n",
        a.name,
        a.url(),
        b.name,
        b.url()
    )
}

/// etcd, two stopped instances behind the fence, two replicas; waits until one replica is
/// controller and both route to `nr-a`.
async fn cluster() -> (Etcd, NodeRed, NodeRed, Replica, Replica) {
    cluster_with("").await
}

/// As [`cluster`], with `extra` YAML in both replicas' configuration.
async fn cluster_with(extra: &str) -> (Etcd, NodeRed, NodeRed, Replica, Replica) {
    let etcd = Etcd::start().await;
    let mut a = fenced_node_red("nr-a");
    let mut b = fenced_node_red("nr-b");
    tokio::join!(a.boot(true), b.boot(true));
    let y = format!("{}{extra}", yaml(&a, &b));
    let (r1, r2) = tokio::join!(Replica::start("fg-1", &etcd.url, &y), Replica::start("fg-2", &etcd.url, &y));
    eventually(BOOT, "a controller, and both replicas routing to nr-a", || async {
        let roles = [r1.role().await, r2.role().await];
        roles.iter().filter(|r| *r == "controller").count() == 1
            && r1.active().await.as_deref() == Some("nr-a")
            && r2.active().await.as_deref() == Some("nr-a")
    })
    .await;
    (etcd, a, b, r1, r2)
}

async fn controller_first(r1: Replica, r2: Replica) -> (Replica, Replica) {
    if r1.role().await == "controller" { (r1, r2) } else { (r2, r1) }
}

/// Samples both instances' canaries directly every 20 ms; counts the samples where both ran
/// flows.
fn watch_canaries(a: &NodeRed, b: &NodeRed) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (both, samples) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let urls = [format!("{}/flowgate/canary", a.url()), format!("{}/flowgate/canary", b.url())];
    let (bo, sa) = (both.clone(), samples.clone());
    let task = tokio::spawn(async move {
        let c = client();
        for _ in 0..1000 {
            let (x, y) = tokio::join!(get(&c, &urls[0]), get(&c, &urls[1]));
            let runs = |r: Result<Reply, String>| r.is_ok_and(|r| r.status == 200);
            if runs(x) && runs(y) {
                bo.fetch_add(1, Ordering::SeqCst);
            }
            sa.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (both, samples, task)
}

fn failovers(status: &serde_json::Value) -> usize {
    status["failovers"].as_array().map_or(0, |f| f.iter().filter(|r| r["reason"] != "initial").count())
}

/// (a) kill -9 of the controller replica: the other takes over within the lease TTL, the
/// active keeps running (no failover), and no request through the survivor fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_replica_hands_control_over_without_a_failover() {
    let _serial = serial().await;
    let (_etcd, a, b, r1, r2) = cluster().await;
    let (mut ctl, other) = controller_first(r1, r2).await;
    let stream = RequestStream::start(format!("{}/hello", other.proxy), Duration::from_millis(5));
    stream.wait_for("hello from nr-a", Instant::now(), 20).await;
    let killed = Instant::now();
    ctl.kill9();
    eventually(Duration::from_secs(10), "the other replica becomes controller", || async {
        other.role().await == "controller"
    })
    .await;
    let takeover = killed.elapsed();
    println!("controller kill -9 -> {} is controller after {:.0} ms", other.id, takeover.as_secs_f64() * 1e3);
    assert!(takeover < Duration::from_secs(4), "lease TTL 2s: took {takeover:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = stream.finish().await;
    assert!(failures(&samples).is_empty(), "{:?}", failures(&samples));
    let s = other.status().await;
    assert_eq!(s["active"], "nr-a", "the active is kept");
    assert_eq!(failovers(&s), 0, "no failover: {s}");
    assert!(a.runs_flows().await && !b.runs_flows().await);
    assert!(s["cluster"]["record"]["epoch"].as_u64() > Some(0));
}

/// (b) kill -9 of the active Node-RED under load through both replicas: exactly one
/// promotion, never two instances running flows, both replicas serve from the new active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_under_two_replicas_promotes_once() {
    let _serial = serial().await;
    let (_etcd, mut a, b, r1, r2) = cluster().await;
    let roles = [r1.role().await, r2.role().await];
    let (both, samples, canaries) = watch_canaries(&a, &b);
    let s1 = RequestStream::start(format!("{}/hello", r1.proxy), Duration::from_millis(5));
    let s2 = RequestStream::start(format!("{}/hello", r2.proxy), Duration::from_millis(5));
    let t = Instant::now();
    tokio::join!(s1.wait_for("hello from nr-a", t, 20), s2.wait_for("hello from nr-a", t, 20));
    let killed = Instant::now();
    a.kill9();
    tokio::join!(s1.wait_for("hello from nr-b", killed, 20), s2.wait_for("hello from nr-b", killed, 20));
    let (x1, x2) = (s1.finish().await, s2.finish().await);
    for ((r, x), role) in [(&r1, &x1), (&r2, &x2)].into_iter().zip(&roles) {
        println!(
            "kill -9 nr-a -> first success from nr-b through {} ({role}) after {:.1} ms ({} requests, {} failed)",
            r.id,
            gap(x, killed, "nr-b").as_secs_f64() * 1e3,
            x.len(),
            failures(x).len()
        );
    }
    canaries.abort();
    assert_eq!(
        both.load(Ordering::SeqCst),
        0,
        "two instances ran flows at once ({} samples)",
        samples.load(Ordering::SeqCst)
    );
    let promotions = failovers(&r1.status().await) + failovers(&r2.status().await);
    assert_eq!(promotions, 1, "exactly one promotion");
    assert!(failures(&x1).is_empty() && failures(&x2).is_empty(), "{:?} {:?}", failures(&x1), failures(&x2));
    assert!(b.runs_flows().await);
    for r in [&r1, &r2] {
        let errors = sample(&r.metrics().await, "flowgate_cluster_store_errors_total");
        assert_eq!(errors, Some(0.0), "{}: etcd sessions ended while etcd was fine", r.id);
    }
}

/// (c) etcd frozen for 10 s: no flow-state change, traffic keeps flowing; the controller
/// steps down before its lease could expire; etcd back: a controller again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_changes_nothing_and_traffic_keeps_flowing() {
    let _serial = serial().await;
    let (etcd, a, b, r1, r2) = cluster().await;
    let (ctl, other) = controller_first(r1, r2).await;
    let s1 = RequestStream::start(format!("{}/hello", ctl.proxy), Duration::from_millis(20));
    let s2 = RequestStream::start(format!("{}/hello", other.proxy), Duration::from_millis(20));
    etcd.freeze();
    let frozen = Instant::now();
    eventually(Duration::from_secs(3), "the controller steps down", || async { ctl.role().await == "follower" }).await;
    println!("etcd frozen -> the controller stepped down after {:.0} ms", frozen.elapsed().as_secs_f64() * 1e3);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(frozen.elapsed())).await;
    assert!(a.runs_flows().await && !b.runs_flows().await, "no flow-state change");
    etcd.thaw();
    eventually(Duration::from_secs(10), "a controller again", || async {
        ctl.role().await == "controller" || other.role().await == "controller"
    })
    .await;
    let (x1, x2) = (s1.finish().await, s2.finish().await);
    assert!(failures(&x1).is_empty() && failures(&x2).is_empty(), "{:?} {:?}", failures(&x1), failures(&x2));
    println!("etcd frozen 10 s: {} + {} requests, none failed", x1.len(), x2.len());
    for r in [&ctl, &other] {
        let s = r.status().await;
        assert_eq!((s["active"].as_str(), failovers(&s)), (Some("nr-a"), 0), "{s}");
    }
}

/// (d) The controller frozen past its lease while the active dies: the other replica takes
/// over and promotes. The old controller resumes: what it would still send with its old
/// epoch is refused by the instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_controller_is_fenced_by_the_instances_when_it_resumes() {
    let _serial = serial().await;
    let (_etcd, mut a, b, r1, r2) = cluster().await;
    let (ctl, other) = controller_first(r1, r2).await;
    let old_epoch = ctl.status().await["cluster"]["store"]["epoch"].as_u64().expect("epoch");
    let (both, _, canaries) = watch_canaries(&a, &b);
    ctl.freeze();
    a.kill9();
    eventually(Duration::from_secs(10), "the other replica promotes nr-b", || async {
        other.role().await == "controller" && other.active().await.as_deref() == Some("nr-b")
    })
    .await;
    assert!(b.runs_flows().await);
    ctl.thaw();
    eventually(Duration::from_secs(10), "the old controller follows, routing to nr-b", || async {
        ctl.role().await == "follower" && ctl.active().await.as_deref() == Some("nr-b")
    })
    .await;
    canaries.abort();
    assert_eq!(both.load(Ordering::SeqCst), 0, "two instances ran flows at once");
    assert!(b.runs_flows().await, "nr-b still runs its flows");
    let fenced = sample(&ctl.metrics().await, "flowgate_cluster_fenced_total").unwrap_or(0.0);
    println!("old controller resumed: {fenced} of its flow-state commands refused for a stale epoch");
    // What a deposed controller would send is refused, whatever it believes.
    let c = client();
    let stale = tokio::time::timeout(
        Duration::from_secs(2),
        send_with(
            &c,
            "POST",
            &format!("{}/flows/state", b.url()),
            r#"{"state":"stop"}"#,
            &[("content-type", "application/json"), ("x-flowgate-epoch", &old_epoch.to_string())],
        ),
    )
    .await
    .expect("answers")
    .expect("reply");
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert!(b.runs_flows().await, "the stale stop changed nothing");
}

/// A follower waits in etcd's election for as long as the controller lives: its session must
/// not end and restart meanwhile (a request timeout once cut the waiting campaign every
/// 500 ms, so the follower reconnected twice a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_keeps_one_etcd_session_while_it_waits_to_lead() {
    let _serial = serial().await;
    let etcd = Etcd::start().await;
    let y = "backends: [{ id: a, url: \"http://127.0.0.1:9\" }]\n";
    let (r1, r2) = tokio::join!(Replica::start("fg-1", &etcd.url, y), Replica::start("fg-2", &etcd.url, y));
    eventually(Duration::from_secs(10), "one controller", || async {
        [r1.role().await, r2.role().await].iter().filter(|r| *r == "controller").count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in [&r1, &r2] {
        let errors = sample(&r.metrics().await, "flowgate_cluster_store_errors_total");
        assert_eq!(errors, Some(0.0), "{}: its etcd session ended while etcd was fine", r.id);
    }
}

/// The status page of a follower lists both replicas and marks the controller (headless
/// Chromium, as for the single-flowgate page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_the_replicas_and_the_controller() {
    let _serial = serial().await;
    let pw = tokio::task::spawn_blocking(support::browser::playwright).await.unwrap();
    let etcd = Etcd::start().await;
    let y = "backends: [{ id: a, url: \"http://127.0.0.1:9\" }]\n";
    let (r1, r2) = tokio::join!(Replica::start("fg-1", &etcd.url, y), Replica::start("fg-2", &etcd.url, y));
    // Settled: one replica holds the controller role, and the store names that one (a
    // replica elected in etcd may not have taken its role yet).
    eventually(Duration::from_secs(10), "one controller, both registered", || async {
        let s = r1.status().await;
        let roles = [r1.role().await, r2.role().await];
        let ctl = if roles[0] == "controller" { &r1.id } else { &r2.id };
        s["cluster"]["store"]["replicas"].as_array().is_some_and(|r| r.len() == 2)
            && roles.iter().filter(|r| *r == "controller").count() == 1
            && s["cluster"]["store"]["controller"].as_str() == Some(ctl.as_str())
    })
    .await;
    let (ctl, follower) = controller_first(r1, r2).await;
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts/replicas-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/replicas_page.cjs"))
        .args([pw.to_str().unwrap(), &follower.admin, &ctl.id, shot.to_str().unwrap()])
        .output()
        .await
        .expect("node runs the browser driver");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("OK"), "{said}{}", String::from_utf8_lossy(&out.stderr));
}

/// TLS to etcd: over https:// with a client certificate (etcd `--client-cert-auth`) a replica
/// connects and becomes controller, and `flowgate check --connect` reaches etcd; without the
/// client certificate, or trusting another CA, it cannot, and says so (exit 69).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reach_etcd_over_tls_with_a_client_certificate() {
    let _serial = serial().await;
    let (etcd, pki) = Etcd::start_tls().await;
    assert!(etcd.url.starts_with("https://"));
    let other = support::etcd::Pki::create(&pki.dir, "other");
    let config = |ca: &str, client: bool| {
        let identity = if client {
            format!(", cert: \"{}\", key: \"{}\"", pki.path("client.pem"), pki.path("client-key.pem"))
        } else {
            String::new()
        };
        let path = pki.dir.join(format!("check-{}-{client}.yaml", ca.len()));
        std::fs::write(
            &path,
            format!(
                "listen: {{ proxy: \"127.0.0.1:1\" }}\nbackends: [{{ id: a, url: \"http://127.0.0.1:9\" }}]\ncluster: {{ id: fg-1, etcd: [\"{}\"], tls: {{ ca: \"{ca}\"{identity} }} }}\n",
                etcd.url
            ),
        )
        .unwrap();
        path
    };
    let check = |path: std::path::PathBuf| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["check", "--connect", "-c", path.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let good = config(&pki.path("ca.pem"), true);
    eventually(Duration::from_secs(20), "check --connect over TLS", || async {
        check(good.clone()).await.0 == Some(0)
    })
    .await;
    let (_, said) = check(good).await;
    println!("{}", said.trim());
    assert!(said.contains(": ok; controller: none"), "{said}");
    let (code, said) = check(config(&pki.path("ca.pem"), false)).await;
    assert_eq!(code, Some(69), "no client certificate: {said}");
    let (code, said) = check(config(&other.path("ca.pem"), true)).await;
    assert_eq!(code, Some(69), "etcd's certificate is not from the trusted CA: {said}");
    println!("trusting another CA: {}", said.trim());

    let tls = format!(
        ", tls: {{ ca: \"{}\", cert: \"{}\", key: \"{}\" }}",
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client-key.pem")
    );
    let r = Replica::start_with("fg-1", &etcd.url, &tls, "backends: [{ id: a, url: \"http://127.0.0.1:9\" }]\n").await;
    eventually(Duration::from_secs(15), "the replica is controller over TLS", || async {
        let s = r.status().await;
        r.role().await == "controller" && s["cluster"]["store"]["connected"] == true
    })
    .await;
}

/// The rev of `base`'s flows (a flowgate or an instance), with API v2.
async fn flows_rev(base: &str) -> Option<String> {
    let r = send_with(&client(), "GET", &format!("{base}/flows"), "", &[("node-red-api-version", "v2")]).await.ok()?;
    serde_json::from_str::<serde_json::Value>(&r.body).ok()?["rev"].as_str().map(str::to_string)
}

/// A full deploy of the test flows with the tab labelled `label`, through `base`.
async fn deploy_label(base: &str, label: &str) -> Result<Reply, String> {
    let rev = flows_rev(base).await.ok_or("no rev")?;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flows.json")).unwrap();
    let mut flows: serde_json::Value = serde_json::from_str(&text).unwrap();
    for n in flows.as_array_mut().unwrap() {
        if n["id"] == "fg_tab" {
            n["label"] = serde_json::json!(label);
        }
    }
    let body = serde_json::json!({"flows": flows, "rev": rev}).to_string();
    let h =
        [("node-red-api-version", "v2"), ("content-type", "application/json"), ("node-red-deployment-type", "full")];
    send_with(&client(), "POST", &format!("{base}/flows"), &body, &h).await
}

/// (e) Deploys through a follower are carried out by the controller (serialised with its
/// promotions, seen by its in-step table); while the controller changes they are refused
/// until a controller is known again, and every instance ends on one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_through_the_follower_is_carried_out_by_the_controller_even_while_it_changes() {
    let _serial = serial().await;
    let (_etcd, a, b, r1, r2) = cluster().await;
    let (mut ctl, follower) = controller_first(r1, r2).await;
    eventually(Duration::from_secs(10), "the follower forwards to the controller", || async {
        let s = follower.status().await;
        s["cluster"]["store"]["forward"][&ctl.id].as_str() == Some(ctl.proxy.as_str())
    })
    .await;
    let r = deploy_label(&follower.proxy, "through the follower").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let rev1 = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["rev"].as_str().unwrap().to_string();
    for n in [&a, &b] {
        assert_eq!(flows_rev(&n.url()).await.as_deref(), Some(rev1.as_str()), "{} took the deploy", n.name);
    }
    let deploys = |m: String| sample(&m, "flowgate_deploys_total{result=\"ok\"}");
    assert_eq!(deploys(ctl.metrics().await), Some(1.0), "carried out by the controller");
    assert_eq!(deploys(follower.metrics().await), Some(0.0), "not by the follower");

    // The controller dies; deploys through the follower meanwhile.
    ctl.kill9();
    let t0 = Instant::now();
    let mut refused = Vec::new();
    let rev2 = loop {
        assert!(t0.elapsed() < Duration::from_secs(20), "no deploy succeeded; refusals: {refused:?}");
        match deploy_label(&follower.proxy, "while the controller changes").await {
            Ok(r) if r.status == 200 => {
                break serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["rev"].as_str().unwrap().to_string();
            }
            Ok(r) => refused.push(format!(
                "{} {}",
                r.status,
                r.headers.get("x-flowgate-error").map_or("", |v| v.to_str().unwrap())
            )),
            Err(e) => refused.push(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "deploy through the follower while the controller changed: accepted after {:.1} s, {} refused before: {:?}",
        t0.elapsed().as_secs_f64(),
        refused.len(),
        refused.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(follower.role().await, "controller", "the follower took over and carried it out");
    eventually(Duration::from_secs(15), "every instance on one revision", || async {
        let (ra, rb) = (flows_rev(&a.url()).await, flows_rev(&b.url()).await);
        ra.is_some() && ra == rb && ra.as_deref() == Some(rev2.as_str())
    })
    .await;
}

/// Item 6: the remembered credentials survive a change of controller. A deploy with a new
/// password while the standby is down; the controller replica dies; the new controller takes
/// the credentials its predecessor shared through etcd (sealed with `state.key`) and repairs
/// the standby when it is back: switched over to it, its flow uses the new password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_controller_repairs_an_instance_with_the_credentials_shared_through_etcd() {
    let _serial = serial().await;
    let keyfile = support::node_red::temp_dir("state-key").join("key");
    std::fs::write(&keyfile, "a-state-key-shared-by-both-replicas").unwrap();
    let tokenfile = keyfile.with_file_name("admin-token");
    std::fs::write(&tokenfile, "replica-admin-token-0123").unwrap();
    let extra = format!(
        "state: {{ key: {{ file: \"{}\" }} }}\nadmin: {{ token: {{ file: \"{}\" }} }}\n",
        keyfile.display(),
        tokenfile.display()
    );
    let (_etcd, a, mut b, r1, r2) = cluster_with(&extra).await;
    let (mut ctl, next) = controller_first(r1, r2).await;
    b.kill9();
    eventually(Duration::from_secs(10), "nr-b down", || async {
        next.status().await["backends"].as_array().unwrap().iter().any(|x| x["id"] == "nr-b" && x["health"] == "down")
    })
    .await;
    let rev = flows_rev(&ctl.proxy).await.unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flows.json")).unwrap();
    let mut flows: serde_json::Value = serde_json::from_str(&text).unwrap();
    for n in flows.as_array_mut().unwrap() {
        if n["id"] == "fg_cred_req" {
            n["credentials"] = serde_json::json!({"user": "u1", "password": "pw-shared"});
        }
    }
    let h =
        [("node-red-api-version", "v2"), ("content-type", "application/json"), ("node-red-deployment-type", "full")];
    let body = serde_json::json!({"flows": flows, "rev": rev}).to_string();
    let r = send_with(&client(), "POST", &format!("{}/flows", next.proxy), &body, &h).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let expected = "Basic dTE6cHctc2hhcmVk"; // u1:pw-shared
    let cred = |base: String| async move {
        get(&client(), &format!("{base}/credcheck")).await.map(|r| r.body).unwrap_or_default()
    };
    eventually(Duration::from_secs(5), "the active uses the new password", || async {
        cred(a.url()).await == expected
    })
    .await;

    ctl.kill9();
    eventually(Duration::from_secs(10), "the other replica is controller", || async {
        next.role().await == "controller"
    })
    .await;
    b.boot(true).await;
    eventually(Duration::from_secs(30), "nr-b back in step", || async {
        next.status().await["backends"].as_array().unwrap().iter().any(|x| x["id"] == "nr-b" && x["step"] == "in_step")
    })
    .await;
    let auth = [("authorization", "Bearer replica-admin-token-0123")];
    let r = send_with(&client(), "POST", &format!("{}/switchover?to=nr-b", next.admin), "", &auth).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let said = cred(b.url()).await;
    println!("nr-b after the new controller repaired it: /credcheck says {said:?}");
    assert_eq!(said, expected, "nr-b was repaired with the credentials shared through etcd");
}

/// Item 6: editor logins are shared. A login through one replica is known to the other (its
/// `/auth/token-info`, which the instances' token hook asks); a logout through the other is
/// forgotten by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_login_through_one_replica_is_known_to_every_replica() {
    let _serial = serial().await;
    let etcd = Etcd::start().await;
    let fence = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/node-red/flowgate-fence.js");
    let settings = format!(
        r#"    httpAdminMiddleware: require({:?}),
    adminAuth: {{
        type: "credentials",
        users: [{{ username: "admin", password: "$2b$08$H4JdQ3ULo.JJMunRsKzxh.gv9d6U13p/82tWO3XMtKXH6qCOarCVy", permissions: "*" }}],
        tokens: async (token) => token === process.env.FLOWGATE_TOKEN ? {{ username: "flowgate", permissions: "*" }} : null,
    }},"#,
        fence.to_str().unwrap()
    );
    let mut a = NodeRed::create("nr-a", &settings);
    let mut b = NodeRed::create("nr-b", &settings);
    for n in [&mut a, &mut b] {
        n.env.push(("FLOWGATE_TOKEN".into(), "flowgate-static-token".into()));
    }
    tokio::join!(a.boot(true), b.boot(true));
    let tokfile = support::node_red::temp_dir("tok").join("token");
    std::fs::write(&tokfile, "flowgate-static-token").unwrap();
    let y = format!(
        "backends:\n  - {{ id: nr-a, url: \"{}\", priority: 200, token: {{ file: \"{t}\" }} }}\n  - {{ id: nr-b, url: \"{}\", priority: 100, token: {{ file: \"{t}\" }} }}\n",
        a.url(),
        b.url(),
        t = tokfile.display()
    );
    let (r1, r2) = tokio::join!(Replica::start("fg-1", &etcd.url, &y), Replica::start("fg-2", &etcd.url, &y));
    eventually(BOOT, "both replicas route to nr-a", || async {
        r1.active().await.as_deref() == Some("nr-a") && r2.active().await.as_deref() == Some("nr-a")
    })
    .await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let body = "client_id=node-red-editor&grant_type=password&scope=*&username=admin&password=password";
    let login = send_with(&client(), "POST", &format!("{}/auth/token", r2.proxy), body, &form).await.unwrap();
    assert_eq!(login.status, 200, "{}", login.body);
    let token =
        serde_json::from_str::<serde_json::Value>(&login.body).unwrap()["access_token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let info = |r: &Replica| {
        let (url, bearer) = (format!("{}/auth/token-info", r.admin), bearer.clone());
        async move {
            send_with(&client(), "GET", &url, "", &[("authorization", &bearer)]).await.map(|r| r.status).unwrap_or(0)
        }
    };
    let t0 = Instant::now();
    eventually(Duration::from_secs(5), "fg-1 knows the login made through fg-2", || async { info(&r1).await == 200 })
        .await;
    println!("a login through fg-2 was known to fg-1 after {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
    assert_eq!(info(&r2).await, 200);
    let revoke = [("authorization", bearer.as_str()), ("content-type", "application/x-www-form-urlencoded")];
    let out = send_with(&client(), "POST", &format!("{}/auth/revoke", r1.proxy), &format!("token={token}"), &revoke)
        .await
        .unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    eventually(Duration::from_secs(5), "both replicas forgot the login", || async {
        info(&r1).await == 404 && info(&r2).await == 404
    })
    .await;
}

/// (f) Partition: the controller replica loses the active instance while the follower still
/// reaches it (each replica reaches each instance through its own relay; the controller's
/// relay to nr-a is cut). With the dead-man switch (fence middleware, FLOWGATE_DEADMAN_MS =
/// failover.deadman), nr-a hears no heartbeat and stops its own flows, and the controller
/// starts nr-b only after that bound: never two instances running flows (canaries read
/// directly every 20 ms), and requests through the follower keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_the_controller_and_the_active_never_leaves_two_running() {
    let _serial = serial().await;
    let etcd = Etcd::start().await;
    let mut a = fenced_node_red("nr-a");
    let mut b = fenced_node_red("nr-b");
    for n in [&mut a, &mut b] {
        n.env.push(("FLOWGATE_DEADMAN_MS".into(), "4000".into()));
    }
    tokio::join!(a.boot(true), b.boot(true));
    let addr = |n: &NodeRed| format!("127.0.0.1:{}", n.port).parse().unwrap();
    let relays = [
        [Relay::start(addr(&a)).await, Relay::start(addr(&b)).await],
        [Relay::start(addr(&a)).await, Relay::start(addr(&b)).await],
    ];
    let y = |r: &[Relay; 2]| {
        format!(
            "backends:\n  - {{ id: nr-a, url: \"{}\", priority: 200 }}\n  - {{ id: nr-b, url: \"{}\", priority: 100 }}\nfailover: {{ deadman: 4s, hold: 6s }}\n",
            r[0].url(),
            r[1].url()
        )
    };
    let (y1, y2) = (y(&relays[0]), y(&relays[1]));
    let (r1, r2) = tokio::join!(Replica::start("fg-1", &etcd.url, &y1), Replica::start("fg-2", &etcd.url, &y2));
    eventually(BOOT, "a controller, both routing to nr-a", || async {
        [r1.role().await, r2.role().await].iter().filter(|r| *r == "controller").count() == 1
            && r1.active().await.as_deref() == Some("nr-a")
            && r2.active().await.as_deref() == Some("nr-a")
    })
    .await;
    let controller_is_r1 = r1.role().await == "controller";
    let (ctl, follower, cut) = if controller_is_r1 { (&r1, &r2, &relays[0][0]) } else { (&r2, &r1, &relays[1][0]) };
    let (both, samples, canaries) = watch_canaries(&a, &b);
    let stream = RequestStream::start(format!("{}/hello", follower.proxy), Duration::from_millis(20));
    stream.wait_for("hello from nr-a", Instant::now(), 10).await;

    cut.cut();
    let t0 = Instant::now();
    eventually(Duration::from_secs(15), "nr-a stopped its own flows", || async {
        a.direct("/flows/state").await.is_some_and(|(_, b)| b.contains("stop"))
    })
    .await;
    let stopped_itself = t0.elapsed();
    eventually(Duration::from_secs(10), "both replicas route to nr-b", || async {
        ctl.active().await.as_deref() == Some("nr-b") && follower.active().await.as_deref() == Some("nr-b")
    })
    .await;
    let switched = t0.elapsed();
    stream.wait_for("hello from nr-b", Instant::now(), 10).await;
    let results = stream.finish().await;
    canaries.abort();
    let failed = failures(&results);
    println!(
        "partition (controller cut from nr-a): nr-a stopped its own flows after {:.0} ms, both replicas on nr-b after {:.0} ms; {} requests through the follower, {} failed; {} canary samples, {} with both running",
        stopped_itself.as_secs_f64() * 1e3,
        switched.as_secs_f64() * 1e3,
        results.len(),
        failed.len(),
        samples.load(Ordering::SeqCst),
        both.load(Ordering::SeqCst)
    );
    assert_eq!(both.load(Ordering::SeqCst), 0, "two instances ran flows");
    assert!(failed.is_empty(), "{failed:?}");
    assert!(b.runs_flows().await && !a.runs_flows().await);
}

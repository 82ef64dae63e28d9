//! Recovery, rolling restarts and `flowgate ctl` against real Node-RED 4. Each instance has a
//! restart command (`support::node_red` writes it: stop the process, SIGKILL if it ignores
//! SIGTERM, `flowgate prepare-standby`, boot a new one in its own session), as a service
//! manager's `systemctl restart` would.

mod support;

use std::process::Output;
use std::time::Duration;

use support::node_red::{NodeRed, serial};
use support::stream::{RequestStream, failures};
use support::*;
use tokio::time::Instant;

const ADM: &str = "test-admin-token-0123";

/// nr-a (priority 200) and nr-b (100) booted stopped, each with a restart command, and
/// flowgate in front with `extra`, once nr-a is active and past its promotion grace.
async fn restartable_pair(extra: &str) -> ([NodeRed; 2], flowgate::Handle) {
    let mut nodes = [NodeRed::create("nr-a", ""), NodeRed::create("nr-b", "")];
    {
        let [a, b] = &mut nodes;
        tokio::join!(a.boot(true), b.boot(true));
    }
    let [a, b] = &nodes;
    let yaml = format!(
        "backends:\n  - {{ id: nr-a, url: \"{}\", priority: 200, restart: {} }}\n  - {{ id: nr-b, url: \"{}\", priority: 100, restart: {} }}\nadmin: {{ token: {{ env: ADM }} }}\n{extra}",
        a.url(),
        a.restart_yaml(false),
        b.url(),
        b.restart_yaml(false)
    );
    let h = start_flowgate(&yaml, Secrets(vec![("ADM", ADM.into())])).await;
    wait_active(&h, "nr-a", Duration::from_secs(30)).await;
    eventually(Duration::from_secs(5), "promotion grace over", || async {
        let promoted = status(&h).await["failovers"][0]["at_unix_ms"].as_u64().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        now > promoted + 1100
    })
    .await;
    (nodes, h)
}

fn backend<'a>(s: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    s["backends"].as_array().unwrap().iter().find(|b| b["id"] == id).unwrap()
}

/// A standby again: up, flows stopped, in step, no restart pending.
fn spare_again(s: &serde_json::Value, id: &str) -> bool {
    let b = backend(s, id);
    b["role"] == "standby" && b["flow_state"] == "stop" && b["step"] == "in_step" && b["recovery"]["state"].is_null()
}

/// Gone, or a zombie waiting for this process to reap it.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(s) => s.lines().any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

async fn ctl(h: &flowgate::Handle, token: &str, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["ctl", "--url", &format!("http://{}", h.admin_addr), "--token", token])
        .args(args)
        .env_remove("FLOWGATE_ADMIN_TOKEN")
        .output();
    tokio::time::timeout(Duration::from_secs(120), out).await.expect("ctl ends").expect("ctl runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_active_is_failed_over_then_restarted_and_is_a_spare_again() {
    let _serial = serial().await;
    let ([a, b], h) = restartable_pair("recovery: { hung_for: 2s }\n").await;
    let old = a.current_pid().unwrap();
    let spin = tokio::spawn({
        let url = format!("{}/spin", a.url());
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), get(&client(), &url)).await;
        }
    });
    let hung_at = Instant::now();
    wait_active(&h, "nr-b", Duration::from_secs(5)).await;
    let failed_over = hung_at.elapsed();
    eventually(Duration::from_secs(60), "nr-a restarted and a stopped, in-step standby again", || async {
        spare_again(&status(&h).await, "nr-a")
    })
    .await;
    let spare = hung_at.elapsed();
    println!(
        "hung active: failed over after {:.0} ms; restarted and a spare again (up, stopped, in step) after {:.0} ms",
        failed_over.as_secs_f64() * 1e3,
        spare.as_secs_f64() * 1e3
    );
    let _ = spin.await;
    let new = a.current_pid().unwrap();
    assert_ne!(new, old, "a new process");
    assert!(process_gone(old), "the hung process {old} is gone");
    assert!(!process_gone(new));
    let s = status(&h).await;
    assert_eq!(backend(&s, "nr-a")["recovery"]["last"]["reason"], "hang", "{s}");
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_restarts_total{backend=\"nr-a\",reason=\"hang\",result=\"ok\"}"), Some(1.0), "{m}");
    assert!(b.runs_flows().await, "the new active runs flows");
    assert!(!a.runs_flows().await, "the restarted instance does not");
    assert_eq!(active(&h).await.as_deref(), Some("nr-b"));
    assert!(spare < Duration::from_secs(30), "hang to spare again in {spare:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_standby_is_restarted_and_a_crash_loop_is_left_down_after_the_limit() {
    let _serial = serial().await;
    let extra = "recovery: { down_for: 1s, start_timeout: 4s, backoff: 500ms, max_restarts: 3 }\n";
    let ([_a, mut b], h) = restartable_pair(extra).await;
    let old = b.current_pid().unwrap();
    b.kill9();
    let crashed = Instant::now();
    eventually(Duration::from_secs(60), "nr-b restarted and back", || async {
        let s = status(&h).await;
        spare_again(&s, "nr-b") && backend(&s, "nr-b")["recovery"]["restarts"] == 1
    })
    .await;
    println!(
        "crashed standby: back as a stopped, in-step standby after {:.0} ms",
        crashed.elapsed().as_secs_f64() * 1e3
    );
    assert_ne!(b.current_pid().unwrap(), old);
    assert_eq!(backend(&status(&h).await, "nr-b")["recovery"]["last"]["reason"], "crash");

    // From now on every process the command starts dies at once.
    b.restart_yaml(true);
    b.kill9();
    let looping = Instant::now();
    eventually(Duration::from_secs(60), "nr-b given up on", || async {
        backend(&status(&h).await, "nr-b")["recovery"]["state"] == "gave_up"
    })
    .await;
    println!("crash loop: given up after {:.0} ms", looping.elapsed().as_secs_f64() * 1e3);
    let s = status(&h).await;
    let r = &backend(&s, "nr-b")["recovery"];
    assert_eq!((r["restarts"].as_u64(), r["recent"].as_u64()), (Some(3), Some(3)), "{s}");
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_restarts_total{backend=\"nr-b\",reason=\"crash\",result=\"failed\"}"), Some(2.0));
    assert_eq!(sample(&m, "flowgate_backend_recovery_gave_up{backend=\"nr-b\"}"), Some(1.0));
    // Left down: no further restart (the next would have been due after down_for + backoff).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(backend(&status(&h).await, "nr-b")["recovery"]["restarts"], 3);
    let table = text(&ctl(&h, ADM, &["status"]).await);
    assert!(table.lines().any(|l| l.starts_with("nr-b") && l.ends_with("gave_up")), "{table}");

    // Fixed: an operator restart brings it back and clears the state.
    b.restart_yaml(false);
    let out = ctl(&h, ADM, &["restart", "nr-b"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nr-b restarted"), "{}", text(&out));
    assert!(spare_again(&status(&h).await, "nr-b"), "answered once it was back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_replaces_both_processes_with_one_switchover() {
    let _serial = serial().await;
    let ([a, b], h) = restartable_pair("").await;
    let old = (a.current_pid().unwrap(), b.current_pid().unwrap());
    let stream = RequestStream::start_for(
        format!("http://{}/hello", h.proxy_addr),
        Duration::from_millis(5),
        Duration::from_secs(60),
    );
    stream.wait_for("hello from nr-a", Instant::now(), 20).await;
    // Never two running flows: both canaries sampled every 20 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let canary = tokio::spawn({
        let (ua, ub, stop) = (a.url(), b.url(), stop.clone());
        async move {
            let c = client();
            let (mut samples, mut both) = (0, Vec::new());
            let t0 = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(90) {
                let runs = |u: String| {
                    let c = c.clone();
                    async move {
                        let url = format!("{u}/flowgate/canary");
                        let r = tokio::time::timeout(Duration::from_secs(2), get(&c, &url)).await;
                        matches!(r, Ok(Ok(r)) if r.status == 200)
                    }
                };
                let (ra, rb) = tokio::join!(runs(ua.clone()), runs(ub.clone()));
                samples += 1;
                if ra && rb {
                    both.push(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (samples, both)
        }
    });
    let t0 = Instant::now();
    let out = ctl(&h, ADM, &["rolling-restart"]).await;
    let took = t0.elapsed();
    stream.wait_for("hello from nr-b", Instant::now(), 20).await;
    let samples = stream.finish().await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (canaries, both) = canary.await.unwrap();
    println!(
        "rolling restart: {:.1} s, {} requests (GET every 5 ms), {} canary samples; ctl said: {}",
        took.as_secs_f64(),
        samples.len(),
        canaries,
        text(&out).trim()
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "restarted nr-b, nr-a; nr-b is active");
    let failed = failures(&samples);
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), samples.len());
    assert!(both.is_empty(), "two instances ran flows at {both:?}");
    let new = (a.current_pid().unwrap(), b.current_pid().unwrap());
    assert!(new.0 != old.0 && new.1 != old.1, "both processes replaced: {old:?} -> {new:?}");
    let s = status(&h).await;
    let switchovers = s["failovers"].as_array().unwrap().iter().filter(|f| f["reason"] != "initial").count();
    assert_eq!(switchovers, 1, "exactly one switchover: {s}");
    assert_eq!(s["rolling_restart"]["state"], "done", "{s}");
    assert!(spare_again(&s, "nr-a"), "{s}");
    let m = metrics(&h).await;
    assert_eq!(sample(&m, "flowgate_restarts_total{backend=\"nr-a\",reason=\"rolling\",result=\"ok\"}"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_shows_the_table_moves_the_active_and_rejects_a_wrong_token() {
    let _serial = serial().await;
    let ([_a, _b], h) = restartable_pair("").await;
    let out = ctl(&h, ADM, &["status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "phase: serving   active: nr-a");
    assert!(lines[1].starts_with("INSTANCE") && lines[1].contains("IN STEP") && lines[1].contains("LAST PROBE"));
    let row = |id: &str| lines.iter().find(|l| l.starts_with(id)).copied().unwrap_or_default().to_string();
    assert!(row("nr-a").contains("active") && row("nr-a").contains("start"), "{table}");
    assert!(row("nr-b").contains("standby") && row("nr-b").contains("stop") && row("nr-b").contains("yes"), "{table}");

    let out = ctl(&h, ADM, &["switchover"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nr-b is active");
    assert_eq!(active(&h).await.as_deref(), Some("nr-b"));
    let out = ctl(&h, ADM, &["switchover", "--to", "nr-a"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(active(&h).await.as_deref(), Some("nr-a"));

    let out = ctl(&h, "wrong-token-wrong-token", &["switchover"]).await;
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("the admin token was refused"), "{}", text(&out));
    assert_eq!(active(&h).await.as_deref(), Some("nr-a"), "nothing moved");
    let out = ctl(&h, ADM, &["restart", "nr-a"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is the active instance"), "{}", text(&out));
    let port = support::node_red::free_port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["ctl", "--url", &format!("http://127.0.0.1:{port}"), "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(text(&out).contains("cannot reach flowgate's admin API"), "{}", text(&out));
}

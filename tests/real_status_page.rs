//! The status page in a real browser (headless Debian Chromium via playwright-core) in front
//! of real Node-RED: it shows the active instance, and after a kill -9 of the active it shows
//! the new active and the failover without a reload, then nr-a restarted by its restart
//! command (recovery), again without a reload. Keeps a screenshot in
//! `target/artifacts/status-page.png`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::node_red::{NodeRed, serial};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_follows_a_failover_live() {
    let _serial = serial().await;
    let pw = tokio::task::spawn_blocking(support::browser::playwright).await.unwrap();
    let mut a = NodeRed::create("nr-a", "");
    let mut b = NodeRed::create("nr-b", "");
    tokio::join!(a.boot(true), b.boot(true));
    let y = format!(
        "backends:\n  - {{ id: nr-a, url: \"{}\", priority: 200, restart: {} }}\n  - {{ id: nr-b, url: \"{}\", priority: 100 }}\nhealth: {{ canary: /flowgate/canary }}\nrecovery: {{ down_for: 1s }}\n",
        a.url(),
        a.restart_yaml(false),
        b.url()
    );
    let h = start_flowgate(&y, Secrets(vec![])).await;
    eventually(Duration::from_secs(30), "nr-a active", || async { active(&h).await.as_deref() == Some("nr-a") }).await;

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let mut driver = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.cjs"))
        .args([pw.to_str().unwrap(), &format!("http://{}", h.admin_addr), shot.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs the browser driver");
    let mut stdin = driver.stdin.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = driver.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(90), rx.recv()).await.ok().flatten()
    }
    let first = next(&mut rx).await;
    assert_eq!(first.as_deref(), Some("READY"), "the page did not show nr-a as active");
    a.kill9();
    writeln!(stdin, "KILLED").unwrap();
    let verdict = next(&mut rx).await.unwrap_or_default();
    let _ = driver.wait();
    assert!(verdict.starts_with("OK"), "{verdict}");
    let png = std::fs::read(&shot).expect("a screenshot was saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    println!("status page after the failover: {verdict}; screenshot {}", shot.display());
}

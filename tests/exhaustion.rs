//! Clients that try to exhaust flowgate, at the scale the hardening issue names: 10,000
//! connections that send half a body and then nothing, and 200 unauthenticated 5 MiB deploys.
//! flowgate runs as its own process (the built binary) in front of an in-process fake
//! instance, so its file descriptors and memory are its own and can be read from /proc.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::node_red::{free_port, temp_dir};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

struct Flowgate {
    child: Child,
    proxy: String,
    admin: String,
}

impl Flowgate {
    async fn start(yaml: &str) -> Self {
        let dir = temp_dir("exhaust");
        let (proxy, admin) = (free_port(), free_port());
        let config = format!("listen: {{ proxy: \"127.0.0.1:{proxy}\", admin: \"127.0.0.1:{admin}\" }}\n{yaml}");
        std::fs::write(dir.join("flowgate.yaml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["run", "-c", dir.join("flowgate.yaml").to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn flowgate");
        let f = Flowgate { child, proxy: format!("127.0.0.1:{proxy}"), admin: format!("http://127.0.0.1:{admin}") };
        let url = format!("{}/ready", f.admin);
        eventually(Duration::from_secs(20), "flowgate routes to the instance", || async {
            get(&client(), &url).await.is_ok_and(|r| r.status == 200)
        })
        .await;
        f
    }

    /// `VmRSS` and `VmHWM` (peak) in MiB.
    fn memory(&self) -> (f64, f64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = |key: &str| -> f64 {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }
}

impl Drop for Flowgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lets this process hold `n` more sockets than the soft limit allows by default.
fn raise_fd_limit(n: u64) {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let want = n.min(hard);
    rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard).unwrap();
}

/// 10,000 connections each send a request head with `Content-Length: 100000` and one byte of
/// body, then nothing (half to an editor write, half to a flow endpoint). A new client is
/// served, and none of them keeps a slot past the body deadline (`header_read_timeout`):
/// each is answered or closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_half_sent_bodies_do_not_stop_a_new_client() {
    const N: usize = 10_000;
    raise_fd_limit(2 * N as u64 + 1024);
    let fake = FakeNodeRed::start("a", Options::default(), EventLog::default()).await;
    let fg = Flowgate::start(&format!(
        "backends: [{{ id: a, url: \"{}\" }}]\nlimits: {{ header_read_timeout: 15s, max_connections: {N} }}\n",
        fake.url()
    ))
    .await;
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(N);
    for i in 0..N {
        let Ok(mut s) = tokio::net::TcpStream::connect(&fg.proxy).await else { break };
        let path = if i % 2 == 0 { "/flows" } else { "/upload" };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n["
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            break;
        }
        held.push(s);
    }
    let opened = held.len();
    let open_for = t0.elapsed();
    println!("{opened} half-sent bodies open after {:.1} s", open_for.as_secs_f64());
    assert_eq!(opened, N, "every connection was accepted");
    let url = format!("http://{}/hello", fg.proxy);
    let since = Instant::now();
    eventually(Duration::from_secs(40), "a new client is served", || async {
        get(&client(), &url).await.is_ok_and(|r| r.status == 200)
    })
    .await;
    let served = since.elapsed();
    let (rss, peak) = fg.memory();
    // None of them keeps its slot past the body deadline: each was answered (408, 503...) or
    // closed by flowgate.
    let silent = |held: &Vec<tokio::net::TcpStream>| {
        let mut buf = [0u8; 64];
        held.iter()
            .filter(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
            .count()
    };
    eventually(Duration::from_secs(30), "every half-sent body answered or closed", || async { silent(&held) == 0 })
        .await;
    println!(
        "a new client was served {:.1} s after the {N} were open; all {N} answered or closed {:.1} s after they were open; flowgate RSS {rss:.0} MiB (peak {peak:.0} MiB)",
        served.as_secs_f64(),
        since.elapsed().as_secs_f64()
    );
}

/// 200 unauthenticated 5 MiB deploys at once: flowgate asks the active about the credentials
/// before it reads a body, so none is buffered: its memory stays bounded (printed), and a real
/// deploy with a token still succeeds afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_unauthenticated_5_mib_deploys_keep_memory_bounded() {
    let opts = Options { token: Some("the-instance-token".into()), ..Options::default() };
    let fake = FakeNodeRed::start("a", opts, EventLog::default()).await;
    let tokfile = temp_dir("exhaust-token").join("t");
    std::fs::write(&tokfile, "the-instance-token").unwrap();
    let fg = Flowgate::start(&format!(
        "backends: [{{ id: a, url: \"{}\", token: {{ file: \"{}\" }} }}]\n",
        fake.url(),
        tokfile.display()
    ))
    .await;
    let (before, _) = fg.memory();
    let body = bytes::Bytes::from(vec![b'0'; 5 << 20]);
    let url = format!("http://{}/flows", fg.proxy);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (url, body) = (url.clone(), body.clone());
        tasks.spawn(async move {
            let req = http::Request::post(&url)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(body))
                .unwrap();
            let r = tokio::time::timeout(Duration::from_secs(30), client().request(req)).await;
            match r {
                Ok(Ok(resp)) => Ok(resp.status().as_u16()),
                Ok(Err(e)) => Err(format!("{e:?}")),
                Err(_) => Err("no answer within 30 s".to_string()),
            }
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    while let Some(s) = tasks.join_next().await {
        match s.unwrap() {
            Ok(status) => *statuses.entry(status).or_insert(0) += 1,
            Err(e) => errors.push(e),
        }
    }
    let (after, peak) = fg.memory();
    println!(
        "200 unauthenticated 5 MiB deploys (1000 MiB in all): answers {statuses:?}, errors {errors:?}; flowgate RSS {before:.0} MiB before, {after:.0} MiB after, peak {peak:.0} MiB"
    );
    // Every client reads its answer: flowgate does not reset a connection whose upload it
    // refused before the client could read the refusal.
    assert!(errors.is_empty(), "every client got an answer: {errors:?}");
    assert!(
        statuses.keys().all(|s| [401, 503].contains(s)),
        "refused before any body was read (401, or 503 when the check could not be made): {statuses:?}"
    );
    assert!(peak < 150.0, "flowgate's peak RSS stayed bounded: {peak:.0} MiB");
    let h = [
        ("node-red-api-version", "v2"),
        ("content-type", "application/json"),
        ("authorization", "Bearer the-instance-token"),
    ];
    let current = send_with(&client(), "GET", &url, "", &h[..1]).await.unwrap();
    let rev =
        serde_json::from_str::<serde_json::Value>(&current.body).ok().and_then(|v| v["rev"].as_str().map(String::from));
    let body = serde_json::json!({"flows": [], "rev": rev}).to_string();
    let r = send_with(&client(), "POST", &url, &body, &h).await.unwrap();
    assert_eq!(r.status, 200, "a real deploy still succeeds: {}", r.body);
}

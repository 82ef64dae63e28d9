//! Load tool for the benchmark harness (wrk measures throughput; this measures the rest).
//!
//!   bench-load rate URL RPS SECONDS CONNS       fixed request rate; prints p50/p99/p99.9 in µs
//!   bench-load idle HOST:PORT N                 N keep-alive connections, one GET /hello each, then held
//!   bench-load ws HOST:PORT N                   N websocket upgrades (/ws), then held
//!   bench-load steady URL SECONDS PERIOD_MS KILL_AFTER_MS -- CMD...
//!       a GET every PERIOD_MS; runs CMD (e.g. kill -9 PID) after KILL_AFTER_MS; prints the
//!       failed requests and the gap from CMD to the first answer whose body differs from the
//!       body before it (the spare's)
//! `idle` and `ws` print READY once all are open and hold them until stdin closes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn rate(url: String, rps: u64, secs: u64, conns: usize) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(conns).build(connector);
    let uri: hyper::Uri = url.parse().unwrap();
    let period = Duration::from_nanos(1_000_000_000 / rps);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, ()>>();
    let mut sent = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let (c, u, tx) = (client.clone(), uri.clone(), tx.clone());
        // Latency counts from the scheduled send time (no coordinated omission).
        let t0 = Instant::now();
        tokio::spawn(async move {
            let r = async {
                let resp = c.get(u).await.map_err(|_| ())?;
                let ok = resp.status().is_success();
                resp.into_body().collect().await.map_err(|_| ())?;
                if ok { Ok(()) } else { Err(()) }
            }
            .await;
            let _ = tx.send(r.map(|_| t0.elapsed().as_micros() as u64));
        });
        sent += 1;
    }
    drop(tx);
    let mut lat = Vec::with_capacity(sent as usize);
    let mut errors = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Ok(us) => lat.push(us),
            Err(()) => errors += 1,
        }
    }
    lat.sort_unstable();
    println!(
        "{{\"sent\":{sent},\"errors\":{errors},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
}

async fn hold_until_stdin_closes() {
    println!("READY");
    let mut buf = [0u8; 16];
    let _ = tokio::io::stdin().read(&mut buf).await;
}

async fn idle(addr: String, n: usize) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/hello").header("host", "bench").body(Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.expect("request");
        resp.into_body().collect().await.unwrap();
        held.push(send);
    }
    hold_until_stdin_closes().await;
}

async fn ws(addr: String, n: usize) {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let got = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..got].starts_with(b"HTTP/1.1 101"),
            "upgrade {i} failed: {}",
            String::from_utf8_lossy(&buf[..got])
        );
        held.push(s);
    }
    hold_until_stdin_closes().await;
}

async fn steady(url: String, secs: u64, period_ms: u64, kill_after_ms: u64, cmd: Vec<String>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uri: hyper::Uri = url.parse().unwrap();
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Result<String, String>)>();
    let mut tick = tokio::time::interval(Duration::from_millis(period_ms));
    let mut killed_at = None;
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        if killed_at.is_none() && start.elapsed() >= Duration::from_millis(kill_after_ms) {
            killed_at = Some(Instant::now());
            let _ = std::process::Command::new(&cmd[0]).args(&cmd[1..]).status();
        }
        let (c, u, tx) = (client.clone(), uri.clone(), tx.clone());
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(15), async {
                let resp = c.get(u).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                if status.is_success() {
                    Ok(String::from_utf8_lossy(&body).into_owned())
                } else {
                    Err(format!("{status}"))
                }
            })
            .await
            .unwrap_or_else(|_| Err("timeout".into()));
            let _ = tx.send((Instant::now(), r));
        });
    }
    drop(tx);
    let mut results = Vec::new();
    while let Some(r) = rx.recv().await {
        results.push(r);
    }
    let killed_at = killed_at.expect("the command ran");
    let before = results.iter().filter(|(t, _)| *t < killed_at).find_map(|(_, r)| r.as_ref().ok().cloned());
    let gap = results
        .iter()
        .filter(|(t, r)| *t > killed_at && matches!(r, Ok(b) if Some(b) != before.as_ref()))
        .map(|(t, _)| t.duration_since(killed_at))
        .min();
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    println!(
        "{{\"requests\":{},\"failed\":{failed},\"gap_ms\":{}}}",
        results.len(),
        gap.map_or(-1.0, |g| g.as_secs_f64() * 1e3)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let n = |i: usize| args[i].parse::<u64>().expect("a number");
    rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("rate") => rate(args[1].clone(), n(2), n(3), n(4) as usize).await,
            Some("idle") => idle(args[1].clone(), n(2) as usize).await,
            Some("ws") => ws(args[1].clone(), n(2) as usize).await,
            Some("steady") => {
                let dash = args.iter().position(|a| a == "--").expect("-- CMD");
                steady(args[1].clone(), n(2), n(3), n(4), args[dash + 1..].to_vec()).await
            }
            _ => eprintln!("usage: see the top of benches/load.rs"),
        }
    });
}

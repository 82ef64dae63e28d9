//! A steady stream of requests through flowgate, and what came back: for measuring failovers
//! from a client's point of view.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{client, eventually, get};

pub struct Sample {
    pub done: Instant,
    pub result: Result<(u16, String), String>,
}

/// A steady stream of GET /hello through flowgate: one new request every `every`, each in
/// its own task (so a held request does not delay the next), until stopped.
pub struct RequestStream {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RequestStream {
    pub fn start(url: String, every: Duration) -> Self {
        Self::start_for(url, every, Duration::from_secs(20))
    }

    /// As [`RequestStream::start`], sending for at most `limit`.
    pub fn start_for(url: String, every: Duration, limit: Duration) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(every);
            let mut inflight = tokio::task::JoinSet::new();
            // Bounded in time.
            let end = Instant::now() + limit;
            while !st.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                tick.tick().await;
                let (c, url, s) = (c.clone(), url.clone(), s.clone());
                inflight.spawn(async move {
                    let r = tokio::time::timeout(Duration::from_secs(15), get(&c, &url)).await;
                    let result = match r {
                        Ok(Ok(r)) => Ok((r.status, r.body)),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err("no answer in 15 s".into()),
                    };
                    s.lock().unwrap().push(Sample { done: Instant::now(), result });
                });
            }
            while inflight.join_next().await.is_some() {}
        });
        RequestStream { samples, stop, task }
    }

    /// Waits until `body` has been answered `n` times after `since`.
    pub async fn wait_for(&self, body: &str, since: Instant, n: usize) {
        eventually(Duration::from_secs(15), &format!("{n} answers '{body}'"), || async {
            let s = self.samples.lock().unwrap();
            s.iter().filter(|x| x.done > since && matches!(&x.result, Ok((200, b)) if b == body)).count() >= n
        })
        .await;
    }

    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap();
        Arc::try_unwrap(self.samples).ok().unwrap().into_inner().unwrap()
    }
}

/// From `t0` to the first 200 answered by `spare`.
pub fn gap(samples: &[Sample], t0: Instant, spare: &str) -> Duration {
    let body = format!("hello from {spare}");
    samples
        .iter()
        .filter(|s| s.done > t0 && matches!(&s.result, Ok((200, b)) if *b == body))
        .map(|s| s.done - t0)
        .min()
        .expect("a success from the spare")
}

pub fn failures(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter_map(|s| match &s.result {
            Ok((200, _)) => None,
            Ok((st, b)) => Some(format!("{st} {b}")),
            Err(e) => Some(e.clone()),
        })
        .collect()
}

/// One request of an [`OpenLoop`] stream: when it was due, when it was answered (or given up
/// on), and what came back.
pub struct Timed {
    pub due: Instant,
    pub done: Instant,
    pub result: Result<(u16, String), String>,
}

/// An open-loop stream as load generators and many HTTP clients send it: a GET is due every
/// `every` whatever happens to earlier ones, and goes out on the first free connection of a
/// fixed pool of keep-alive connections (each carries one request at a time, as HTTP/1.1
/// does). A request not answered within `timeout` of being due is a time-out, and its
/// connection is dropped and replaced. Bounded: at most 90 s of requests.
pub struct OpenLoop {
    samples: Arc<Mutex<Vec<Timed>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl OpenLoop {
    pub fn start(addr: std::net::SocketAddr, path: &str, every: Duration, conns: usize, timeout: Duration) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st, path) = (samples.clone(), stop.clone(), path.to_string());
        let task = tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..conns {
                let (rx, s, path) = (rx.clone(), s.clone(), path.clone());
                workers.spawn(async move {
                    let mut conn = None;
                    loop {
                        let Some(due) = rx.lock().await.recv().await else { return };
                        let deadline = due + timeout;
                        let r = tokio::time::timeout_at(deadline, one_get(&mut conn, addr, &path)).await;
                        let result = match r {
                            Ok(r) => r,
                            Err(_) => {
                                conn = None;
                                Err(format!("no answer in {timeout:?}"))
                            }
                        };
                        s.lock().unwrap().push(Timed { due, done: Instant::now(), result });
                    }
                });
            }
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + Duration::from_secs(90);
            while !st.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                let due = tick.tick().await;
                let _ = tx.send(due);
            }
            drop(tx);
            while workers.join_next().await.is_some() {}
        });
        OpenLoop { samples, stop, task }
    }

    /// Waits until `body` has been answered `n` times by requests due after `since`.
    pub async fn wait_for(&self, body: &str, since: Instant, n: usize) {
        eventually(Duration::from_secs(15), &format!("{n} answers '{body}'"), || async {
            let s = self.samples.lock().unwrap();
            s.iter().filter(|x| x.due > since && matches!(&x.result, Ok((200, b)) if b == body)).count() >= n
        })
        .await;
    }

    /// Stops sending, waits for every request sent to be answered or to time out.
    pub async fn finish(self) -> Vec<Timed> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap();
        let mut v = Arc::try_unwrap(self.samples).ok().unwrap().into_inner().unwrap();
        v.sort_by_key(|t| t.due);
        v
    }
}

type Conn = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// One GET on the worker's keep-alive connection, opened (again) when there is none.
async fn one_get(conn: &mut Option<Conn>, addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    if conn.as_mut().is_none_or(|c| c.is_closed()) {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let (send, driver) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(driver);
        *conn = Some(send);
    }
    let c = conn.as_mut().unwrap();
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        c.ready().await.map_err(|e| format!("ready: {e}"))?;
        let resp = c.send_request(req).await.map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    if result.is_err() {
        *conn = None;
    }
    result
}

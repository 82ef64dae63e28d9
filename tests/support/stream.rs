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
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(every);
            let mut inflight = tokio::task::JoinSet::new();
            // Bounded: at most 20 s of requests.
            let end = Instant::now() + Duration::from_secs(20);
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

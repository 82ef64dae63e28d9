//! A TCP relay on loopback that a test can cut, to stand for a network partition between one
//! flowgate replica and one instance: while cut, open connections are dropped and new ones
//! are accepted and left unanswered (a black hole: probes time out).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    if *rx.borrow() {
                        // A black hole: hold it, answer nothing, until healed or closed.
                        let _ = rx.wait_for(|c| !*c).await;
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Relay { addr, cut, task }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

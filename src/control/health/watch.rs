//! Seeing a crash without traffic. Passive detection needs requests; without any (MQTT-driven
//! work, say), a crash would be seen at the next probe interval. The watcher holds one idle TCP
//! connection to the instance: when the process dies its kernel closes the connection at once,
//! and the watcher wakes the prober, which looks now. An idle close for other reasons (Node.js
//! drops connections that send no request after a while) only costs one extra probe.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Runs until `cancel`: connect to `addr` (`host:port`), wait for the connection to close,
/// kick, reconnect. While nothing listens, retries every 100 ms (the prober reports it down).
pub async fn watch(addr: String, kick: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr.as_str()));
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            c = connect => c,
        };
        match conn {
            Ok(Ok(mut stream)) => {
                let mut buf = [0u8; 1];
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    // Nothing is ever sent: any end of the read is the connection closing.
                    _ = stream.read(&mut buf) => kick.notify_one(),
                }
            }
            _ => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_connection_wakes_the_prober() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (kick, cancel) = (Arc::new(Notify::new()), CancellationToken::new());
        let task = tokio::spawn(watch(addr, kick.clone(), cancel.clone()));
        let (conn, _) = listener.accept().await.unwrap();
        let woken = tokio::time::timeout(Duration::from_millis(200), kick.notified()).await;
        assert!(woken.is_err(), "an open connection wakes nobody");
        drop(conn); // the process died: its kernel closes the connection
        tokio::time::timeout(Duration::from_secs(1), kick.notified()).await.expect("kicked");
        cancel.cancel();
        task.await.unwrap();
    }
}

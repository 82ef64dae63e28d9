//! Logs: the access log is off by default and one line per request when switched on; role
//! changes are logged once each with their reason.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs on one thread, so the thread's log subscriber sees every task of flowgate.
#[tokio::test(flavor = "current_thread")]
async fn the_access_log_follows_the_config_and_role_changes_are_logged_once() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber =
        tracing_subscriber::fmt().json().with_env_filter("info").with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fa = FakeNodeRed::start("a", Options::default(), EventLog::default()).await;
    let fb = FakeNodeRed::start("b", Options::default(), EventLog::default()).await;
    let backends = [("a", fa.url(), 200), ("b", fb.url(), 100)];
    for access in [false, true] {
        let h = start_flowgate(&yaml(&backends, &format!("log: {{ access: {access} }}\n")), Secrets(vec![])).await;
        eventually(Duration::from_secs(5), "a active", || async { active(&h).await.as_deref() == Some("a") }).await;
        let path = format!("/hello?access={access}");
        assert_eq!(get(&client(), &format!("http://{}{path}", h.proxy_addr)).await.unwrap().status, 200);
        let lines: Vec<String> =
            logs.text().lines().filter(|l| l.contains("flowgate::access")).map(str::to_string).collect();
        let this = lines.iter().filter(|l| l.contains("\"path\":\"/hello\"")).count();
        assert_eq!(this, usize::from(access), "access={access}: {lines:?}");
        h.shutdown().await;
    }
    let text = logs.text();
    let changes = text.lines().filter(|l| l.contains("active instance changed")).count();
    assert_eq!(changes, 2, "one line per role change (one initial election per start)");
    assert!(text.contains("\"reason\":\"initial\""), "{text}");
}

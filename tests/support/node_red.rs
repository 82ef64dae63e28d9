//! Real Node-RED 4 instances for end-to-end tests. Node-RED is installed by
//! `scripts/install-node-red.sh` on first use (npm, into a local cache). Each instance gets a
//! temp user directory, a free loopback port, and the flows in `tests/fixtures/flows.json`.
//! Instances are killed (SIGKILL, by PID) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// End-to-end tests measure failover times: run them one at a time so they do not compete
/// for the two cores.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn red_js() -> &'static Path {
    static RED: OnceLock<PathBuf> = OnceLock::new();
    RED.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-node-red.sh");
        let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("run install-node-red.sh");
        assert!(out.status.success(), "installing Node-RED failed");
        let home = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(home.trim()).join("node_modules/node-red/red.js")
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("flowgate-e2e-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct NodeRed {
    pub name: String,
    pub port: u16,
    pub user_dir: PathBuf,
    /// Extra environment for the process (read by settings.js).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NodeRed {
    /// A new instance with the test flows; `stopped` runs flowgate's prepare-standby first.
    pub fn create(name: &str, settings_extra: &str) -> Self {
        let user_dir = temp_dir(name);
        let settings = format!(
            r#"module.exports = {{
    uiHost: "127.0.0.1",
    flowFile: "flows.json",
    credentialSecret: "flowgate-e2e-secret",
    runtimeState: {{ enabled: true, ui: false }},
    telemetry: {{ enabled: false, updateNotification: false }},
    diagnostics: {{ enabled: false }},
    logging: {{ console: {{ level: "info", metrics: false, audit: false }} }},
    editorTheme: {{ tours: false, projects: {{ enabled: false }} }},
{settings_extra}
}};
"#
        );
        std::fs::write(user_dir.join("settings.js"), settings).unwrap();
        let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flows.json");
        std::fs::copy(flows, user_dir.join("flows.json")).unwrap();
        NodeRed { name: name.to_string(), port: free_port(), user_dir, env: Vec::new(), child: None }
    }

    /// Replaces the flows the instance boots with.
    pub fn set_flows(&self, flows: &serde_json::Value) {
        std::fs::write(self.user_dir.join("flows.json"), serde_json::to_vec_pretty(flows).unwrap()).unwrap();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Boots the process. With `prepare`, flowgate's prepare-standby runs first, so the
    /// instance comes up with its flows stopped whatever it persisted.
    pub async fn boot(&mut self, prepare: bool) {
        assert!(self.child.is_none(), "{} already running", self.name);
        if prepare {
            flowgate::ops::standby::prepare_standby(&self.user_dir).unwrap();
        }
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.user_dir.join("node-red.log")).unwrap();
        let child = Command::new("node")
            .arg(red_js())
            .args(["-u", self.user_dir.to_str().unwrap(), "-p", &self.port.to_string()])
            .args(["-s", self.user_dir.join("settings.js").to_str().unwrap()])
            .env("FG_NAME", &self.name)
            .env("FG_PORT", self.port.to_string())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        self.child = Some(child);
        let url = format!("{}/auth/login", self.url());
        let c = super::client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = super::get(&c, &url).await
                && r.status == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited during boot ({status}); log:\n{}", self.name, self.log_tail());
            }
            assert!(tokio::time::Instant::now() < deadline, "{} did not come up; log:\n{}", self.name, self.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.user_dir.join("node-red.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET a path on this instance directly (not through flowgate): (status, body).
    pub async fn direct(&self, path: &str) -> Option<(u16, String)> {
        let c = super::client();
        let url = format!("{}{path}", self.url());
        let fut = super::get(&c, &url);
        match tokio::time::timeout(Duration::from_secs(2), fut).await {
            Ok(Ok(r)) => Some((r.status, r.body)),
            _ => None,
        }
    }

    /// Whether this instance's flows really process messages (the canary http-in answers).
    pub async fn runs_flows(&self) -> bool {
        self.direct("/flowgate/canary").await.is_some_and(|(s, _)| s == 200)
    }
}

impl Drop for NodeRed {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.user_dir);
        } else {
            eprintln!("--- {} log ({}):\n{}", self.name, self.user_dir.display(), self.log_tail());
        }
    }
}

/// Two instances, "nr-a" (priority 200) and "nr-b" (100), with `flows` if given, booted
/// stopped; and flowgate in front of them with admin token "test-admin-token-0123" and `extra` YAML, once nr-a is
/// active.
pub async fn pair(flows: Option<&serde_json::Value>, extra: &str) -> ([NodeRed; 2], flowgate::Handle) {
    let mut nodes = [NodeRed::create("nr-a", ""), NodeRed::create("nr-b", "")];
    {
        let [a, b] = &mut nodes;
        if let Some(f) = flows {
            a.set_flows(f);
            b.set_flows(f);
        }
        tokio::join!(a.boot(true), b.boot(true));
    }
    let yaml = pair_yaml(&nodes[0], &nodes[1], extra);
    let h = super::start_flowgate(&yaml, super::Secrets(vec![("ADM", "test-admin-token-0123".into())])).await;
    super::wait_active(&h, "nr-a", Duration::from_secs(30)).await;
    (nodes, h)
}

/// flowgate's YAML for `a` (priority 200) and `b` (100), admin token from `ADM`, plus `extra`.
pub fn pair_yaml(a: &NodeRed, b: &NodeRed, extra: &str) -> String {
    format!(
        "backends:\n  - {{ id: {}, url: \"{}\", priority: 200 }}\n  - {{ id: {}, url: \"{}\", priority: 100 }}\nadmin: {{ token: {{ env: ADM }} }}\n{extra}",
        a.name,
        a.url(),
        b.name,
        b.url()
    )
}

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

/// Where `scripts/install-node-red.sh` installed Node-RED (installing it on first use).
fn nr_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-node-red.sh");
        let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("run install-node-red.sh");
        assert!(out.status.success(), "installing Node-RED failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn red_js() -> PathBuf {
    nr_home().join("node_modules/node-red/red.js")
}

/// The Node.js modules beside Node-RED: Dashboard 2.0 and socket.io-client.
pub fn extras() -> PathBuf {
    nr_home().join("extras/node_modules")
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

    /// Makes Node-RED Dashboard 2.0 available to this instance (its user directory's modules).
    pub fn with_dashboard(&self) {
        std::os::unix::fs::symlink(extras(), self.user_dir.join("node_modules")).unwrap();
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
        std::fs::write(self.user_dir.join("pid"), child.id().to_string()).unwrap();
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

    /// `kill -9`, of the process booted here and of one its restart command started since.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.current_pid().filter(|&p| Some(p) != self.pid()) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process serving now: the one booted here, or the one its restart command started.
    pub fn current_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.user_dir.join("pid")).ok()?.trim().parse().ok()
    }

    /// Writes `restart.sh` and returns flowgate's `restart:` YAML for it. The script stops the
    /// running process (SIGTERM, SIGKILL after 1 s: a blocked event loop ignores SIGTERM), runs
    /// `flowgate prepare-standby` and boots a new process in its own session, as a service
    /// manager would. `broken`: the new process exits at once (a crash loop).
    pub fn restart_yaml(&self, broken: bool) -> String {
        let settings = if broken {
            "/nonexistent/settings.js".to_string()
        } else {
            self.user_dir.join("settings.js").display().to_string()
        };
        let dir = self.user_dir.display();
        let env: String = self.env.iter().map(|(k, v)| format!("export {k}='{v}'\n")).collect();
        let script = format!(
            r#"#!/bin/sh
# Restart Node-RED "{name}" in {dir}.
gone() {{ [ ! -e /proc/$1 ] || grep -q '^State:[[:space:]]*Z' /proc/$1/status 2>/dev/null; }}
old=$(cat '{dir}/pid' 2>/dev/null)
if [ -n "$old" ]; then
  kill -TERM "$old" 2>/dev/null
  i=0
  while ! gone "$old" && [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done
  gone "$old" || kill -KILL "$old" 2>/dev/null
  while ! gone "$old"; do sleep 0.02; done
fi
'{flowgate}' prepare-standby --user-dir '{dir}' >/dev/null || exit 1
export FG_NAME='{name}' FG_PORT='{port}'
{env}setsid node '{red}' -u '{dir}' -p {port} -s '{settings}' </dev/null >>'{dir}/node-red.log' 2>&1 &
echo $! > '{dir}/pid'
"#,
            name = self.name,
            port = self.port,
            flowgate = env!("CARGO_BIN_EXE_flowgate"),
            red = red_js().display(),
        );
        let path = self.user_dir.join("restart.sh");
        std::fs::write(&path, script).unwrap();
        format!("{{ command: [/bin/sh, \"{}\"], timeout: 20s }}", path.display())
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

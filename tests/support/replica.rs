//! flowgate replicas as processes (the built binary), so that a test can kill -9 or freeze one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::node_red::{free_port, temp_dir};

pub struct Replica {
    pub id: String,
    pub proxy: String,
    pub admin: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Starts `flowgate run` with `yaml` (listen addresses and the cluster id are added).
    pub async fn start(id: &str, etcd: &str, yaml: &str) -> Self {
        Self::start_with(id, etcd, "", yaml).await
    }

    /// As [`Replica::start`], with `cluster_extra` inside the cluster section (e.g. `tls: {...}`).
    pub async fn start_with(id: &str, etcd: &str, cluster_extra: &str, yaml: &str) -> Self {
        let dir = temp_dir(id);
        let (proxy, admin) = (free_port(), free_port());
        let config = format!(
            "listen: {{ proxy: \"127.0.0.1:{proxy}\", admin: \"127.0.0.1:{admin}\" }}\ncluster: {{ id: {id}, etcd: [\"{etcd}\"], prefix: /t/{cluster_extra} }}\n{yaml}"
        );
        std::fs::write(dir.join("flowgate.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.join("flowgate.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["run", "-c", dir.join("flowgate.yaml").to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn flowgate");
        let r = Replica {
            id: id.to_string(),
            proxy: format!("http://127.0.0.1:{proxy}"),
            admin: format!("http://127.0.0.1:{admin}"),
            dir,
            child: Some(child),
        };
        let c = super::client();
        let url = format!("{}/status", r.admin);
        super::eventually(Duration::from_secs(20), &format!("{id} answers /status"), || async {
            super::get(&c, &url).await.is_ok_and(|r| r.status == 200)
        })
        .await;
        r
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = super::get(&super::client(), &format!("{}/status", self.admin)).await;
        r.ok().and_then(|r| serde_json::from_str(&r.body).ok()).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        let r = super::get(&super::client(), &format!("{}/metrics", self.admin)).await;
        r.map(|r| r.body).unwrap_or_default()
    }

    pub async fn role(&self) -> String {
        self.status().await["cluster"]["role"].as_str().unwrap_or("").to_string()
    }

    pub async fn active(&self) -> Option<String> {
        self.status().await["active"].as_str().map(str::to_string)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success(), "kill {sig} {}", self.id);
    }

    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("flowgate.log")).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process must be thawed to die promptly on SIGKILL's heels.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} log tail:\n{}", self.id, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

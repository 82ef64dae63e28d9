//! A real etcd (Debian's etcd-server, installed by `scripts/install-packages.sh`) on free loopback
//! ports with its data in a temp dir, killed (by PID) when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::node_red::{free_port, temp_dir};

pub struct Etcd {
    pub url: String,
    dir: PathBuf,
    child: Child,
}

impl Etcd {
    pub async fn start() -> Self {
        let dir = temp_dir("etcd");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir", dir.join("data").to_str().unwrap()])
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/install-packages.sh)");
        let e = Etcd { url, dir, child };
        let health = format!("{}/health", e.url);
        let c = super::client();
        super::eventually(Duration::from_secs(20), "etcd answers /health", || async {
            super::get(&c, &health).await.is_ok_and(|r| r.status == 200 && r.body.contains("true"))
        })
        .await;
        e
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} etcd");
    }

    /// SIGSTOP: etcd holds its connections but answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- etcd log tail:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

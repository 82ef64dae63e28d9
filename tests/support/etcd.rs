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

/// PEM files of a test CA, a server certificate for 127.0.0.1 and a client certificate, all
/// signed by that CA, in `dir`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn create(dir: &std::path::Path, tag: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let dir = dir.join(format!("pki-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, format!("flowgate test CA {tag}"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);
        for (name, san, usage) in [
            ("server", "127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth),
            ("client", "fg-1", ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, san);
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }
}

impl Etcd {
    pub async fn start() -> Self {
        Self::spawn(None).await
    }

    /// etcd on https:// that checks client certificates (`--client-cert-auth`), with the PKI
    /// that signed its certificate and the client's.
    pub async fn start_tls() -> (Self, Pki) {
        let dir = temp_dir("etcd-pki");
        let pki = Pki::create(&dir, "etcd");
        (Self::spawn(Some(&pki)).await, pki)
    }

    async fn spawn(tls: Option<&Pki>) -> Self {
        let dir = temp_dir("etcd");
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let mut cmd = Command::new("etcd");
        if let Some(pki) = tls {
            cmd.args(["--cert-file", &pki.path("server.pem"), "--key-file", &pki.path("server-key.pem")]).args([
                "--trusted-ca-file",
                &pki.path("ca.pem"),
                "--client-cert-auth",
            ]);
        }
        let child = cmd
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
        if tls.is_some() {
            // Its /health needs a client certificate: wait for the port, the test checks the rest.
            let addr = format!("127.0.0.1:{client}");
            super::eventually(Duration::from_secs(20), "etcd listens", || async {
                tokio::net::TcpStream::connect(&addr).await.is_ok()
            })
            .await;
            return e;
        }
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

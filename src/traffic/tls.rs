//! TLS termination (rustls, ring provider): TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
//!
//! Certificates come from a folder of pairs: `NAME.crt` (or `NAME.pem`), a PEM chain with the
//! leaf first, and `NAME.key`, its PEM private key. Each certificate serves the DNS names in
//! its subjectAltName (and CN); `*.example.com` wildcards are honoured. Clients without SNI,
//! or with an unknown name, get the default certificate (`tls.default`, else the first by name).
//!
//! Reload (SIGHUP, `POST /reload`, or a change seen by the periodic check) builds a new store
//! beside the current one and swaps it in: handshakes in progress and open connections are
//! untouched. A pair that fails to load keeps its last good certificate, and the reason is
//! logged and counted; nothing is swapped to a broken certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One loaded certificate.
#[derive(Clone)]
pub struct Entry {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub not_after: i64,
    stamp: Option<(SystemTime, SystemTime)>,
}

#[derive(Default)]
pub struct Store {
    pub entries: HashMap<String, Entry>,
    default: Option<String>,
}

impl Store {
    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.map(|s| s.to_ascii_lowercase()) {
            let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            let mut keys: Vec<&String> = self.entries.keys().collect();
            keys.sort();
            for want in std::iter::once(&name).chain(wildcard.as_ref()) {
                if let Some(e) = keys.iter().map(|k| &self.entries[*k]).find(|e| e.names.iter().any(|n| n == want)) {
                    return Some(e.key.clone());
                }
            }
        }
        self.default.as_ref().and_then(|d| self.entries.get(d)).map(|e| e.key.clone())
    }
}

#[derive(Debug)]
pub struct Resolver(ArcSwap<Store>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("names", &self.entries.keys().collect::<Vec<_>>()).finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().lookup(hello.server_name())
    }
}

fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Why certificates or TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that could not be read or parsed.
    #[error("{}: {detail}", path.display())]
    File { path: PathBuf, detail: String },
    #[error("{} does not match {}: {detail}", key.display(), cert.display())]
    Mismatch { key: PathBuf, cert: PathBuf, detail: String },
    /// Not one certificate could be loaded from the folder.
    #[error("{}: {why}", dir.display())]
    NoCertificate { dir: PathBuf, why: String },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Generate(#[from] rcgen::Error),
}

fn file(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), detail: detail.to_string() }
}

/// Loads one pair and checks that the key belongs to the certificate.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Entry, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file(cert, e))?;
    let leaf = chain.first().ok_or_else(|| file(cert, "no certificate in the file"))?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, e))?;
    let signer = provider::sign::any_supported_type(&der).map_err(|e| file(key, e))?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf).map_err(|e| file(cert, e))?;
    let mut names: Vec<String> = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(cn) = x509.subject().iter_common_name().next().and_then(|c| c.as_str().ok()) {
        names.push(cn.to_ascii_lowercase());
    }
    let not_after = x509.validity().not_after.timestamp();
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        key: key.to_owned(),
        cert: cert.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(Entry { key: Arc::new(ck), names, not_after, stamp: stamp(cert).zip(stamp(key)) })
}

/// The certificate folder and the live store.
pub struct Tls {
    dir: PathBuf,
    default: Option<String>,
    resolver: Arc<Resolver>,
    pub config: Arc<rustls::ServerConfig>,
}

/// Result of (re)loading the folder.
#[derive(Debug, Default)]
pub struct Loaded {
    pub changed: Vec<String>,
    pub errors: Vec<String>,
}

impl Tls {
    /// Loads the folder; fails when no certificate at all can be loaded.
    pub fn new(dir: &Path, default: Option<String>) -> Result<Self, TlsError> {
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(Store::default())));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = Tls { dir: dir.to_owned(), default, resolver, config: Arc::new(config) };
        let loaded = tls.reload();
        if tls.resolver.0.load().entries.is_empty() {
            let why = if loaded.errors.is_empty() {
                "no NAME.crt + NAME.key pairs".to_string()
            } else {
                loaded.errors.join("; ")
            };
            return Err(TlsError::NoCertificate { dir: dir.to_owned(), why });
        }
        for e in &loaded.errors {
            tracing::error!(error = %e, "certificate not loaded");
        }
        Ok(tls)
    }

    /// Re-reads changed pairs. A pair that fails keeps its last good certificate.
    pub fn reload(&self) -> Loaded {
        let current = self.resolver.0.load();
        let mut next = Store { entries: HashMap::new(), default: None };
        let mut out = Loaded::default();
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let p = e.path();
                        let ext = p.extension()?.to_str()?;
                        (ext == "crt" || ext == "pem").then(|| p.file_stem()?.to_str().map(str::to_string))?
                    })
                    .collect()
            })
            .unwrap_or_else(|e| {
                out.errors.push(format!("{}: {e}", self.dir.display()));
                Vec::new()
            });
        names.sort();
        names.dedup();
        for name in names {
            let crt = ["crt", "pem"].iter().map(|x| self.dir.join(format!("{name}.{x}"))).find(|p| p.is_file());
            let key = self.dir.join(format!("{name}.key"));
            let Some(crt) = crt else { continue };
            if !key.is_file() {
                continue; // e.g. a CA bundle without a key
            }
            let old = current.entries.get(&name);
            if let Some(old) = old
                && old.stamp.is_some()
                && old.stamp == stamp(&crt).zip(stamp(&key))
            {
                next.entries.insert(name, old.clone());
                continue;
            }
            match load_pair(&crt, &key) {
                Ok(e) => {
                    out.changed.push(name.clone());
                    next.entries.insert(name, e);
                }
                Err(why) => {
                    let keeping = old.is_some();
                    out.errors.push(if keeping {
                        format!("{why}; keeping the last good certificate for {name}")
                    } else {
                        why.to_string()
                    });
                    if let Some(old) = old {
                        next.entries.insert(name, old.clone());
                    }
                }
            }
        }
        // Pairs whose files disappeared are dropped only if something is left to serve.
        if next.entries.is_empty() {
            for (k, v) in &current.entries {
                next.entries.insert(k.clone(), v.clone());
            }
        }
        next.default = self
            .default
            .clone()
            .filter(|d| next.entries.contains_key(d))
            .or_else(|| next.entries.keys().min().cloned());
        if !out.changed.is_empty() || next.entries.len() != current.entries.len() {
            self.resolver.0.store(Arc::new(next));
        }
        out
    }

    /// (name, not-after as Unix seconds) of every loaded certificate.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let s = self.resolver.0.load();
        let mut v: Vec<_> = s.entries.iter().map(|(k, e)| (k.clone(), e.not_after)).collect();
        v.sort();
        v
    }
}

/// A self-signed certificate and key (PEM) for `names`, e.g. for the demo and tests.
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// A client config trusting the given CA files (for `https://` instances).
pub fn client_config(cas: &[PathBuf]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| file(ca, e))? {
            let cert = cert.map_err(|e| file(ca, e))?;
            roots.add(cert).map_err(|e| file(ca, e))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowgate-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(d: &Path, name: &str, names: &[&str]) {
        let (c, k) = self_signed(names).unwrap();
        std::fs::write(d.join(format!("{name}.crt")), c).unwrap();
        std::fs::write(d.join(format!("{name}.key")), k).unwrap();
    }

    #[test]
    fn sni_picks_the_certificate_by_name_and_falls_back_to_the_default() {
        let d = dir("sni");
        write(&d, "a", &["a.example"]);
        write(&d, "b", &["b.example", "*.wild.example"]);
        let tls = Tls::new(&d, Some("b".into())).unwrap();
        let store = tls.resolver.0.load();
        let a = &store.entries["a"].key;
        let b = &store.entries["b"].key;
        assert!(Arc::ptr_eq(&store.lookup(Some("a.example")).unwrap(), a));
        assert!(Arc::ptr_eq(&store.lookup(Some("A.EXAMPLE")).unwrap(), a));
        assert!(Arc::ptr_eq(&store.lookup(Some("x.wild.example")).unwrap(), b));
        assert!(Arc::ptr_eq(&store.lookup(Some("unknown")).unwrap(), b), "default");
        assert!(Arc::ptr_eq(&store.lookup(None).unwrap(), b));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_broken_replacement_keeps_the_last_good_certificate() {
        let d = dir("broken");
        write(&d, "a", &["a.example"]);
        let tls = Tls::new(&d, None).unwrap();
        let before = tls.resolver.0.load().entries["a"].key.clone();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("a.crt"), "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
            .unwrap();
        let r = tls.reload();
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].contains("keeping the last good certificate for a"), "{r:?}");
        assert!(Arc::ptr_eq(&tls.resolver.0.load().entries["a"].key, &before));
        // A key that belongs to another certificate is refused too.
        let (c, _) = self_signed(&["a.example"]).unwrap();
        std::fs::write(d.join("a.crt"), c).unwrap();
        let r = tls.reload();
        assert!(r.errors[0].contains("does not match"), "{r:?}");
        write(&d, "a", &["a.example"]);
        let r = tls.reload();
        assert!(r.errors.is_empty() && r.changed == ["a"], "{r:?}");
        assert!(!Arc::ptr_eq(&tls.resolver.0.load().entries["a"].key, &before));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_empty_folder_is_an_error() {
        let d = dir("empty");
        assert!(Tls::new(&d, None).err().unwrap().to_string().contains("no NAME.crt + NAME.key pairs"));
        std::fs::remove_dir_all(d).unwrap();
    }
}

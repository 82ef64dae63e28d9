//! The `cluster:` section (replicas): etcd endpoints, prefix, lease, authentication, TLS, and
//! where the other replicas reach this one.

use std::net::SocketAddr;
use std::time::Duration;

use super::super::model::{ClusterConfig, Secret};
use super::{Problems, SecretSource};

pub(super) fn cluster(
    p: &mut Problems,
    c: &crate::config::raw::RawCluster,
    secrets: &dyn SecretSource,
    at: &dyn Fn(&str) -> std::path::PathBuf,
    proxy: Option<SocketAddr>,
) -> ClusterConfig {
    if c.id.is_empty() || !c.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        p.add("cluster.id", format!("\"{}\" must be letters, digits, ., - and _", c.id));
    }
    if c.etcd.is_empty() {
        p.add("cluster.etcd", "list at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]");
    }
    for (i, e) in c.etcd.iter().enumerate() {
        let ok = e.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some_and(|a| a.port().is_some())
        });
        if !ok {
            p.add(format!("cluster.etcd[{i}]"), format!("\"{e}\" is not an endpoint; write http://HOST:PORT"));
        }
    }
    let mut prefix = c.prefix.clone().unwrap_or_else(|| "/flowgate/".into());
    if !prefix.starts_with('/') {
        p.add("cluster.prefix", format!("\"{prefix}\" must start with /"));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let lease_ttl = p.duration("cluster.lease_ttl", &c.lease_ttl, Duration::from_secs(2));
    if lease_ttl < Duration::from_secs(2) || lease_ttl.subsec_nanos() != 0 {
        p.add("cluster.lease_ttl", "must be whole seconds, at least 2s (etcd leases count in seconds)");
    }
    let auth = match (&c.user, p.secret("cluster.password", &c.password, secrets)) {
        (Some(u), Some(pw)) => Some((u.clone(), pw)),
        (None, None) => None,
        _ => {
            p.add("cluster.user", "give both `user` and `password`, or neither");
            None
        }
    };
    let https = c.etcd.iter().any(|e| e.starts_with("https://"));
    let tls = match &c.tls {
        None if https => {
            p.add(
                "cluster.tls",
                "https:// endpoints need `tls: { ca: PATH }` (the PEM of the CA that signed etcd's certificate)",
            );
            None
        }
        None => None,
        Some(_) if !https => {
            p.add("cluster.tls", "TLS is configured but the endpoints are http://: write https://HOST:PORT");
            None
        }
        Some(t) => {
            let mut read = |field: &str, path: &str| match std::fs::read(at(path)) {
                Ok(b) if String::from_utf8_lossy(&b).contains("-----BEGIN") => Some(b),
                Ok(_) => {
                    p.add(format!("cluster.tls.{field}"), format!("{path} is not PEM"));
                    None
                }
                Err(e) => {
                    p.add(format!("cluster.tls.{field}"), format!("cannot read {path}: {e}"));
                    None
                }
            };
            let ca = read("ca", &t.ca);
            let identity = match (&t.cert, &t.key) {
                (Some(cert), Some(key)) => match (read("cert", cert), read("key", key)) {
                    (Some(c), Some(k)) => Some((c, Secret::new(String::from_utf8_lossy(&k).into_owned()))),
                    _ => None,
                },
                (None, None) => None,
                _ => {
                    p.add("cluster.tls.cert", "give both `cert` and `key`, or neither");
                    None
                }
            };
            ca.map(|ca| crate::config::EtcdTls { ca, identity })
        }
    };
    let advertise = match (&c.advertise, proxy) {
        (Some(a), _) => {
            let ok = a.parse::<http::Uri>().is_ok_and(|u| {
                u.scheme_str() == Some("http")
                    && u.authority().is_some_and(|x| x.port().is_some())
                    && u.path_and_query().is_none_or(|pq| pq.as_str() == "/")
            });
            if !ok {
                p.add(
                    "cluster.advertise",
                    format!("\"{a}\" is not http://HOST:PORT (this replica's plain-HTTP proxy listener)"),
                );
            }
            a.trim_end_matches('/').to_string()
        }
        (None, Some(addr)) if !addr.ip().is_unspecified() => format!("http://{addr}"),
        (None, Some(addr)) => {
            p.add(
                "cluster.advertise",
                format!("listen.proxy is {addr}: give the http://HOST:PORT the other replicas reach this one at (a follower forwards editor writes to the controller)"),
            );
            String::new()
        }
        (None, None) => {
            p.add("cluster.advertise", "a follower forwards editor writes to the controller's plain-HTTP listener: set listen.proxy (a management address will do) and cluster.advertise");
            String::new()
        }
    };
    ClusterConfig { id: c.id.clone(), etcd: c.etcd.clone(), prefix, lease_ttl, auth, tls, advertise }
}

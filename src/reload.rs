//! Configuration reload (SIGHUP, `POST /reload`, a change of the file): load, validate, diff,
//! then swap in a new core. The running cluster driver hands its state over once no
//! promotion is in flight, so the active stays active; added instances are probed (never
//! promoted on sight), removed ones dropped. Listen addresses, TLS settings and `state.dir`
//! need a restart: a change to them is reported, not applied.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::app::{App, Clients, Handle};
use crate::backend::BackendId;
use crate::config::{self, Config, ConfigError};
use crate::control::cluster::driver::Command;
use crate::editor::sync::{StoreError, SyncTable};
use crate::traffic::tls::{self, TlsError};

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("flowgate was not started from a configuration file")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "backend {0} is active: it cannot be removed or moved by a reload; move the active role first (POST /switchover)"
    )]
    ActiveRemoved(BackendId),
    #[error(
        "mode changed from {0} to {1}: restart flowgate to switch modes (the README gives the sequence); the running configuration stays in force"
    )]
    ModeChanged(&'static str, &'static str),
    #[error("state.dir: {0}")]
    State(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("shutting down")]
    ShuttingDown,
    #[error("a promotion, a restart or a rolling restart is in progress; try again when it ended")]
    Busy,
    #[error("the cluster driver stopped")]
    DriverStopped,
}

impl App {
    /// Reloads the configuration file.
    pub async fn reload_file(&self) -> Result<String, ReloadError> {
        let Some(path) = &self.config_path else { return Err(ReloadError::NoFile) };
        match config::load(path) {
            Ok(c) => self.reload(c).await,
            Err(e) => {
                self.metrics().config_reloads.with_label_values(&["rejected"]).inc();
                error!(error = %e, "configuration rejected; the running one stays in force");
                Err(e.into())
            }
        }
    }

    /// Applies a validated configuration as a diff. In-flight requests and websockets are
    /// untouched.
    pub async fn reload(&self, config: Config) -> Result<String, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.swap(config).await;
        match &result {
            Ok(msg) => {
                self.metrics().config_reloads.with_label_values(&["ok"]).inc();
                info!(result = %msg, "configuration reloaded");
            }
            Err(e) => {
                self.metrics().config_reloads.with_label_values(&["rejected"]).inc();
                error!(error = %e, "configuration rejected; the running one stays in force");
            }
        }
        result
    }

    async fn swap(&self, config: Config) -> Result<String, ReloadError> {
        let old = self.core.load_full();
        let oc = &old.shared.config;
        if config.mode != oc.mode {
            return Err(ReloadError::ModeChanged(oc.mode.as_str(), config.mode.as_str()));
        }
        let notes = restart_notes(oc, &config);
        let address = |scheme: &http::uri::Scheme, a: &http::uri::Authority| format!("{scheme}://{a}");
        if let Some(a) = &old.shared.view.load().active {
            let kept = config.backends.iter().any(|b| {
                b.id == a.backend.id
                    && address(&b.scheme, &b.authority) == address(&a.backend.scheme, &a.backend.authority)
            });
            if !kept {
                return Err(ReloadError::ActiveRemoved(a.backend.id.clone()));
            }
        }
        let ids: Vec<String> = config.backends.iter().map(|b| b.id.to_string()).collect();
        let mut table =
            SyncTable::open(ids.clone(), oc.state.dir.as_deref(), config.state.key.as_ref().map(|k| k.expose()))?;
        table.carry_from(&old.shared.sync.lock().unwrap_or_else(|e| e.into_inner()));
        // Everything that can fail happens before the running driver hands over, so a rejected
        // reload never leaves the instances unsupervised.
        let clients = Clients::new(&config)?;
        let (tx, rx) = oneshot::channel();
        old.commands.send(Command::Handover { reply: tx }).await.map_err(|_| ReloadError::ShuttingDown)?;
        let wait = oc.failover.stop_timeout + oc.failover.start_timeout + Duration::from_secs(5);
        let seed = tokio::time::timeout(wait, rx)
            .await
            .map_err(|_| ReloadError::Busy)?
            .map_err(|_| ReloadError::DriverStopped)?;
        let removed: Vec<String> =
            oc.backends.iter().map(|b| b.id.to_string()).filter(|id| !ids.contains(id)).collect();
        let added: Vec<String> =
            ids.iter().filter(|id| !oc.backends.iter().any(|b| b.id.as_str() == id.as_str())).cloned().collect();
        let core = self.rt.build(config, clients, table, Some(seed));
        self.core.store(Arc::new(core));
        old.cancel.cancel();
        for id in &removed {
            self.metrics().forget_backend(id);
        }
        for tls in self.tls.iter().chain(self.admin_tls.iter()) {
            self.reload_certs(tls);
        }
        for n in &notes {
            warn!("{n}");
        }
        let mut msg = format!("added: [{}], removed: [{}]", added.join(", "), removed.join(", "));
        if !notes.is_empty() {
            msg.push_str("; ");
            msg.push_str(&notes.join("; "));
        }
        Ok(msg)
    }

    /// Loads changed certificates from the folder and updates their expiry gauges.
    pub(crate) fn reload_certs(&self, tls: &tls::Tls) {
        let r = tls.reload();
        for e in &r.errors {
            self.metrics().tls_reload_errors.inc();
            error!(error = %e, "certificate not loaded");
        }
        if !r.changed.is_empty() {
            info!(certs = ?r.changed, "certificates loaded");
        }
        for (name, not_after) in tls.expiries() {
            self.metrics().tls_not_after.with_label_values(&[&name]).set(not_after);
        }
    }
}

/// Settings that a reload does not apply, as notes for the operator.
fn restart_notes(old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    if new.listen != old.listen {
        notes.push("listen addresses changed: restart flowgate to apply them".to_string());
    }
    if new.tls != old.tls || new.admin_tls != old.admin_tls {
        notes.push(
            "tls or admin.tls settings changed: restart flowgate to apply them (certificates in the folders are reloaded)".into(),
        );
    }
    if new.cluster.as_ref().map(|c| (&c.id, &c.etcd, &c.prefix, c.lease_ttl))
        != old.cluster.as_ref().map(|c| (&c.id, &c.etcd, &c.prefix, c.lease_ttl))
    {
        notes.push("cluster settings changed: restart flowgate to apply them".into());
    }
    if new.state.dir != old.state.dir {
        notes.push("state.dir changed: restart flowgate to apply it".into());
    }
    // The listeners took these at start; upstream_connections and upstream_queue_timeout apply
    // at once (each configuration has its own pools).
    let listener =
        |l: &crate::config::Limits| (l.header_read_timeout, l.max_header_bytes, l.max_headers, l.max_connections);
    if listener(&new.limits) != listener(&old.limits) {
        notes.push(
            "limits.header_read_timeout, max_header_bytes, max_headers or max_connections changed: restart flowgate to apply them".into(),
        );
    }
    notes
}

impl Handle {
    /// Reloads the configuration file.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        self.app.reload_file().await
    }

    /// Watches the configuration file and reloads when it changes (checked every `every`).
    pub fn watch_config(&self, every: Duration) {
        let Some(path) = self.app.config_path.clone() else { return };
        let (app, cancel) = (self.app.clone(), self.app.rt.shutdown.clone());
        self.app.rt.tasks.spawn(async move {
            let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last = stamp(&path);
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = stamp(&path);
                if now != last {
                    last = now;
                    let _ = app.reload_file().await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!("backends: [{{id: a, url: \"http://127.0.0.1:9\"}}]\n{extra}");
        crate::config::parse(&yaml, std::path::Path::new("t.yaml"), &crate::config::System).unwrap()
    }

    #[test]
    fn settings_a_reload_cannot_apply_are_reported() {
        let old = config("");
        assert!(restart_notes(&old, &config("limits: { upstream_connections: 8 }")).is_empty(), "applied at once");
        let notes = restart_notes(&old, &config("limits: { max_connections: 5 }"));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("max_connections") && notes[0].contains("restart"), "{notes:?}");
        assert_eq!(restart_notes(&old, &config("listen: { proxy: \"127.0.0.1:1\" }")).len(), 1);
    }
}

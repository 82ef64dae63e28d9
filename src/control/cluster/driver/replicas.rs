//! What only replicas need: where editor writes are carried out, and the remembered
//! credentials shared through the store so the next controller has them.

use std::sync::Arc;

use tracing::info;

use super::Driver;
use crate::control::coord::ToStore;

/// etcd refuses values above 1.5 MiB by default; leave room for the request around it.
const SHARED_CREDENTIALS_MAX: usize = 1 << 20;

impl Driver {
    /// Replicas: the controller shares the remembered credentials (sealed with `state.key`)
    /// whenever a deploy changed them, so the next controller can still repair an instance
    /// that missed them. Without `state.key` nothing is shared.
    pub(super) fn share_credentials(&mut self) {
        let (Some(link), Some(key)) = (&self.link, &self.shared.config.state.key) else { return };
        if !matches!(self.core.mode(), crate::control::cluster::Mode::Controller { .. }) {
            self.shared_cred_gen = None;
            return;
        }
        let (cred_gen, plain) = {
            let t = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            if self.shared_cred_gen == Some(t.cred_gen) {
                return;
            }
            (t.cred_gen, serde_json::to_vec(&t.credentials).expect("serialises"))
        };
        self.shared_cred_gen = Some(cred_gen);
        let sealed = crate::crypto::seal(&crate::crypto::key_from_secret(key.expose()), &plain);
        if sealed.len() > SHARED_CREDENTIALS_MAX {
            tracing::warn!(
                bytes = sealed.len(),
                "the remembered credentials are too large to share through etcd; the next controller cannot repair them"
            );
            return;
        }
        let _ = link.to_store.send(ToStore::Credentials(sealed));
    }

    /// A new controller takes the credentials its predecessor shared (they are the newest:
    /// every deploy goes through the controller).
    pub(super) fn adopt_credentials(&mut self, sealed: &[u8]) {
        let Some(key) = &self.shared.config.state.key else { return };
        let key = crate::crypto::key_from_secret(key.expose());
        let Some(creds) = crate::crypto::open(&key, sealed).and_then(|p| serde_json::from_slice(&p).ok()) else {
            tracing::error!(
                "cannot open the credentials shared through etcd: state.key must be the same on every replica"
            );
            return;
        };
        let changed = {
            let mut t = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            let changed = t.credentials != creds;
            if changed {
                t.credentials = creds;
                // Every instance is checked again, and repaired with them where needed.
                t.cred_gen += 1;
            }
            changed
        };
        if changed {
            info!("took the remembered credentials the previous controller shared");
            crate::editor::fanout::save(&self.shared);
            self.shared.sync_changed.notify_one();
        }
    }

    /// Replicas: editor writes are carried out on the controller only; a follower forwards
    /// them there.
    pub(super) fn route_writes(&self) {
        use crate::state::WriteRoute;
        let route = match self.core.mode() {
            crate::control::cluster::Mode::Alone | crate::control::cluster::Mode::Controller { .. } => WriteRoute::Here,
            crate::control::cluster::Mode::Follower => match self.store.as_ref().and_then(|s| {
                let me = self.shared.config.cluster.as_ref().map(|c| c.id.as_str());
                s.controller.as_deref().filter(|c| Some(*c) != me).and_then(|c| s.forward.get(c))
            }) {
                Some(url) if !url.is_empty() => WriteRoute::Forward(url.clone()),
                _ => WriteRoute::NoController,
            },
        };
        if **self.shared.writes_to.load() != route {
            info!(route = ?route, "editor writes are carried out here or forwarded");
            self.shared.writes_to.store(Arc::new(route));
        }
    }
}

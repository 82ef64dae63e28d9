//! Coordination between flowgate replicas: the seam between the cluster driver and the store
//! the replicas agree through (etcd, `coord/etcd.rs`).
//!
//! The store elects one *controller* among the replicas (a leader key held under a lease that
//! the controller keeps alive; its revision is the controller's *epoch*, which only grows),
//! keeps the *active record* that every replica routes by, lists the replicas, and carries
//! *suspicions*: a follower that sees the active fail says so, and the controller probes at
//! once. The driver talks to it through two channels ([`Link`]), so the cluster core sees
//! the store only as events (`Leadership`, `Record`) and effects (`Publish`, `Suspect`).

pub mod etcd;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::control::cluster::{InstanceId, Record};

/// What the store tells the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum FromStore {
    /// This replica became controller with `Some(epoch)`, or is not (any more).
    Leadership(Option<u64>),
    /// The active record changed (or was read at start).
    Record(Record),
    /// A replica (maybe this one) suspects `id` failed: probe it now.
    Suspect(InstanceId),
    /// How the store and the other replicas look, for `/status`.
    View(StoreView),
    /// Sent just before `Leadership(Some(_))`: the remembered credentials the last controller
    /// shared (sealed with `state.key`), if any.
    Credentials(Vec<u8>),
    /// An editor login (by its hash) as the store holds it; `None`: logged out or expired.
    Token { hash: String, info: Option<crate::editor::logins::TokenInfo> },
}

/// What the driver asks of the store.
#[derive(Debug, Clone, PartialEq)]
pub enum ToStore {
    /// Write the record, only while this replica holds the leadership.
    Publish(Record),
    /// Share the remembered credentials (sealed), only while this replica holds the leadership.
    Credentials(Vec<u8>),
    /// Share an editor login (`Some`) or its logout (`None`); any replica may.
    Token {
        hash: String,
        info: Option<crate::editor::logins::TokenInfo>,
    },
    Suspect(InstanceId),
    /// The driver stepped down on its own (its lease renewal was not fresh when it was about
    /// to act): end the session, so that the election runs again.
    Resign,
}

/// The store as this replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreView {
    /// Reachable, with a live lease.
    pub connected: bool,
    /// The controller's replica id, if one holds the leadership.
    pub controller: Option<String>,
    pub epoch: Option<u64>,
    /// Every replica registered under a live lease.
    pub replicas: Vec<String>,
    /// Where each replica takes editor writes forwarded by followers (`cluster.advertise`).
    #[serde(default)]
    pub forward: std::collections::BTreeMap<String, String>,
    /// The last error talking to the store.
    pub error: Option<String>,
}

/// When the lease was last confirmed renewed, shared by the session (which writes it) and
/// the driver (which reads it before every flow-state command): a controller whose renewal
/// is not fresh must not act, whichever of its tasks wakes first after a freeze.
pub struct LeaseClock {
    base: Instant,
    renewed_ms: AtomicU64,
    /// How long a renewal counts as fresh (half the lease TTL).
    fresh_for: Duration,
}

impl LeaseClock {
    pub fn new(fresh_for: Duration) -> Self {
        LeaseClock { base: Instant::now(), renewed_ms: AtomicU64::new(0), fresh_for }
    }

    pub fn renewed(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.base).as_millis() as u64;
        self.renewed_ms.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    /// Whether a renewal was confirmed within `fresh_for` of `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        let ms = self.renewed_ms.load(Ordering::Relaxed);
        ms > 0 && now.saturating_duration_since(self.base + Duration::from_millis(ms)) <= self.fresh_for
    }
}

/// The driver's ends of the channels to the store's session task.
pub struct Link {
    pub to_store: mpsc::UnboundedSender<ToStore>,
    pub from_store: mpsc::UnboundedReceiver<FromStore>,
    pub lease: Arc<LeaseClock>,
}

/// The session task's ends.
pub struct StoreEnds {
    pub to_driver: mpsc::UnboundedSender<FromStore>,
    pub from_driver: mpsc::UnboundedReceiver<ToStore>,
    pub lease: Arc<LeaseClock>,
}

/// A connected pair of ends; a renewal counts as fresh for `fresh_for`.
pub fn link(fresh_for: Duration) -> (Link, StoreEnds) {
    let (to_store, from_driver) = mpsc::unbounded_channel();
    let (to_driver, from_store) = mpsc::unbounded_channel();
    let lease = Arc::new(LeaseClock::new(fresh_for));
    (Link { to_store, from_store, lease: lease.clone() }, StoreEnds { to_driver, from_driver, lease })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_is_fresh_for_its_window_only() {
        let c = LeaseClock::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(!c.fresh(t0), "never renewed");
        c.renewed(t0);
        assert!(c.fresh(t0 + Duration::from_millis(900)));
        assert!(!c.fresh(t0 + Duration::from_millis(1100)));
        c.renewed(t0 - Duration::from_secs(5));
        assert!(c.fresh(t0 + Duration::from_millis(900)), "an older renewal never moves it back");
    }
}

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

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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
}

/// What the driver asks of the store.
#[derive(Debug, Clone, PartialEq)]
pub enum ToStore {
    /// Write the record, only while this replica holds the leadership.
    Publish(Record),
    Suspect(InstanceId),
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
    /// The last error talking to the store.
    pub error: Option<String>,
}

/// The driver's ends of the channels to the store's session task.
pub struct Link {
    pub to_store: mpsc::UnboundedSender<ToStore>,
    pub from_store: mpsc::UnboundedReceiver<FromStore>,
}

/// The session task's ends.
pub struct StoreEnds {
    pub to_driver: mpsc::UnboundedSender<FromStore>,
    pub from_driver: mpsc::UnboundedReceiver<ToStore>,
}

/// A connected pair of ends.
pub fn link() -> (Link, StoreEnds) {
    let (to_store, from_driver) = mpsc::unbounded_channel();
    let (to_driver, from_store) = mpsc::unbounded_channel();
    (Link { to_store, from_store }, StoreEnds { to_driver, from_driver })
}

//! The control plane: which instance runs flows.
//!
//! - [`health`]: one prober per instance (I/O) and the pure rise/fall tracker.
//! - [`election`]: the pure choice of the active instance.
//! - [`cluster`]: the pure cluster core (`State::step`) and its driver, the one writer of HA
//!   state, which carries the core's effects out.
//! - [`coord`]: replicas agreeing through etcd (leadership, the active record, suspicions).
//!
//! Arrows point inwards: probes and the driver call the core; the core calls nothing.

pub mod cluster;
pub mod coord;
pub mod election;
pub mod health;

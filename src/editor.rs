//! The editor plane: Node-RED's editor behind flowgate.
//!
//! - [`cookie`]: the signed cookie that pins an editor to an instance, and which editor
//!   requests are writes.
//! - [`writes`]: deploys and the other editor writes; [`fanout`], the one executor they use
//!   to reach every instance.
//! - [`sync`]: the target every instance should hold (flows, rev, credentials) and who is in
//!   step; [`resync`] brings the others back.
//! - [`changes`]: the change lock that keeps writes, resyncs and promotions apart.
//! - [`logins`]: editor tokens remembered so every instance accepts them.
//! - [`forward`]: replicas: a follower forwards editor writes to the controller.

pub mod changes;
pub mod cookie;
pub mod fanout;
pub mod forward;
pub mod logins;
pub mod resync;
pub mod sync;
pub mod writes;

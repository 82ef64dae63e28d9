//! Operations: how people and tools see and steer flowgate.
//!
//! - [`admin`]: the admin API and the live status page.
//! - [`ctl`]: `flowgate ctl`, the admin API from a shell.
//! - [`metrics`]: Prometheus metrics, all registered in one place.
//! - [`restart`]: runs an instance's restart command.
//! - [`standby`]: `flowgate prepare-standby`, which makes an instance boot with flows stopped.

pub mod admin;
pub mod ctl;
pub mod metrics;
pub mod restart;
pub mod standby;

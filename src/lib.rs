//! flowgate: a front door that makes Node-RED highly available.
//!
//! It health-checks several Node-RED instances, keeps exactly one of them running flows (the
//! others are hot spares with flows stopped), routes all traffic to it, keeps editors pinned
//! to it, fans deploys out to every instance, and moves both flows and traffic to a spare when
//! the active crashes or hangs.
//!
//! # The map
//!
//! ```text
//!                          ┌──────────── control plane (control/) ────────────┐
//!  probers (health/) ─Probe─►  cluster core: State::step(event) -> [effect]   │
//!  admin API ─Switchover────►       (pure: no I/O, no clock, no tasks)        │
//!   (ctl)     Restart, Rolling │  cluster driver: carries effects out ──────────┼──► POST flows/state
//!                          └──────────┬────────────────────────────────────────┘    stop | start,
//!                                     │                                      restart commands
//!                                     │ View (ArcSwap), Status, metrics
//!  clients ──► traffic/server ──► traffic/proxy: classify ──► the active instance
//!                                     │   (one ArcSwap load per request; held during failover)
//!                                     └── editor writes ──► editor/writes: fan-out to every
//!                                                           instance, in-step table (editor/sync)
//!  ops/: admin API, status page, metrics   app.rs: composition   reload.rs   shutdown.rs
//! ```
//!
//! Arrows point from the edges to the cores: the cluster core and the election import
//! nothing that does I/O; the driver, the request path and the admin API import them.
//!
//! # Glossary
//! - *instance* (*backend* in the configuration): one Node-RED process.
//! - *active*: the instance running flows and receiving all traffic. Exactly one, or none
//!   while a failover is in progress.
//! - *standby*: a healthy instance with its flows stopped.
//! - *stray*: a non-active instance found running flows; it is stopped at once.
//! - *promotion*: making an instance active, break-before-make: every other reachable
//!   instance is stopped (and confirms) before the new one starts.
//! - *view*: what the request path reads (the active and its fencing signals).
//! - *target*: the flows, `rev` and credentials every instance should hold; an instance that
//!   holds them is *in step*, else it is *resynced*.
//! - *change lock*: deploys, resyncs and promotions take it; a promotion *fences* its holder.
//! - *core* (of a configuration): what a configuration builds; swapped whole on reload.
//! - *recovery*: restarting a failed (fenced) instance with its configured command until it
//!   is *back*: up, flows stopped, in step. A *rolling restart* restarts every instance with
//!   one switchover.
//!
//! # Modules
//! - [`config`]: YAML → validated, typed `Config`; errors name the field and line.
//! - [`backend`]: one instance's admin API client (flow state, settings, canary, exchanges).
//! - [`control`]: health probes, election, the cluster core and its driver.
//! - [`traffic`]: listeners, TLS, the proxy (with its HTTP/1.1 fast path), upstream pool,
//!   websocket tunnels, errors.
//! - [`editor`]: editor cookies, editor writes and their fan-out, the change lock, the
//!   in-step table and resyncs, remembered logins.
//! - [`ops`]: admin API and status page, metrics, `prepare-standby`, restart commands,
//!   `flowgate ctl`.
//! - [`readiness`]: pure: which nodes of a flow do not survive a HA mode, and the fix.
//! - [`state`]: what one configuration shares between the planes.
//! - [`app`], `reload`, `shutdown`: composition and lifecycle.
//! - [`crypto`], [`files`]: sealing at rest, private atomic files.
//!
//! The library never binds sockets: [`start`] takes pre-bound listeners, so tests run the
//! whole proxy in-process on port 0 and the binary is a thin wrapper.

pub mod app;
pub mod backend;
pub mod config;
pub mod control;
pub mod crypto;
pub mod editor;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod ops;
pub mod readiness;
pub mod reload;
mod shutdown;
pub mod state;
pub mod traffic;

pub use app::{App, Handle, Listeners, start, start_on};

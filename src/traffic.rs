//! The request path: everything a client's bytes pass through.
//!
//! - [`server`]: listeners, connection limits, parking of idle connections, worker runtimes.
//! - [`tls`]: rustls with certificates reloaded from a folder.
//! - [`proxy`]: classify a request, hold it during a failover, forward it to the active
//!   instance (pooled upstream connections), tunnel websockets.
//! - [`body`]: the one body type of the request path.
//! - [`error`]: every response flowgate makes itself, with its status.
//!
//! It reads the control plane's routing view (one `ArcSwap` load per request) and hands
//! editor writes to the editor plane.

pub mod body;
pub mod error;
pub mod proxy;
pub mod server;
pub mod tls;

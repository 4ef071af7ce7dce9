//! The edge gateway: the only public UniLink service.
//!
//! It terminates HTTP and WebSockets, and talks gRPC to the backend services
//! through load-balanced channels ([`clients`]). It holds no business rules
//! and no data of its own; it does carry the sockets' frames itself, over
//! the Redis relay ([`unilink_relay`]), asking signaling only who may join
//! a call and to change a call's state.
//!
//! * [`startup`] — `Application::build(settings)`, port 0 in tests,
//!   graceful shutdown;
//! * [`rest`] — the public routes (`/`, `/health`, `/metrics`, …);
//! * [`ws`] — the WebSockets: presence (registered and renewed in batches
//!   here) and call signaling (the data plane of calls);
//! * [`error`] — the one mapping of failures to `{"detail": …}` answers.

#[cfg(test)]
mod api_docs;
pub mod clients;
pub mod error;
pub mod identity;
pub mod middleware;
pub mod rest;
pub mod startup;
pub mod ws;

pub use startup::{Application, main};

/// The gateway's name in logs, traces and metrics.
pub const SERVICE: &str = "gateway";

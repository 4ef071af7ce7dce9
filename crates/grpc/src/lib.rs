//! gRPC plumbing shared by every UniLink service.
//!
//! * [`client`] — channels to another service: client-side load balancing
//!   over every endpoint (DNS names are re-resolved, so a Kubernetes headless
//!   Service's pods come and go), a deadline on every call (sent as
//!   `grpc-timeout`), and the W3C trace context in the metadata.
//! * [`server`] — [`server::ServiceHost`] serves a service's gRPC routes plus
//!   `grpc.health.v1` (readiness follows the dependency probes; the
//!   `liveness` service is always serving), and a small HTTP port with
//!   `/metrics`, `/livez` and `/readyz`. Every request gets a span joined to
//!   the caller's trace, and `grpc_server_handled_total` /
//!   `grpc_server_handling_seconds` metrics.

pub mod client;
pub mod server;

pub use client::{GrpcChannel, balanced_channel};
pub use server::{Probe, ServiceHost};

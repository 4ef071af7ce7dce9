//! The edge's middleware, outermost first: request id, CORS, security
//! headers, metrics, then [`edge`] (client IP, authentication, rate limits).

pub mod client_ip;
pub mod cors;
pub mod edge;
pub mod rate_limit;
pub mod request_id;

//! The integration tests of unilink-signaling, one binary (one module per area).

mod service;
mod transitions;

//! The integration tests of unilink-bus, one binary (one module per area).

mod redis;
mod tls;

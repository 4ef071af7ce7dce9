//! The integration tests of unilink-profile, one binary (one module per area).

mod call_eligibility;
mod common;
mod read_cache;
mod service;

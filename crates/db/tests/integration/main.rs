//! The integration tests of unilink-db, one binary (one module per area).

mod migrations;
mod read_pool;
mod tls;

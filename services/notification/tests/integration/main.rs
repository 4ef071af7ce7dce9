//! The integration tests of unilink-notification, one binary (one module per area).

mod common;
mod dead_letters;
mod email;
mod push;
mod replay;
mod service;

//! The gateway's integration tests, one binary: the fleet in process
//! ([`unilink_test_support::fleet`]) or as real processes behind nginx
//! ([`unilink_test_support::cluster`]), driven through the public REST and
//! WebSocket API. One module per area.

mod accounts;
mod authorization;
mod brute_force;
mod call_lifecycle;
mod calls;
mod edge;
mod fleet_faults;
mod health;
mod mail_delivery;
mod moderation;
mod observability;
mod openapi;
mod operations;
mod original_client;
mod personal_data;
mod profiles;
mod read_replica;
mod rebalance;
mod redis_failover;
mod relay_bounds;
mod security_input;
mod security_tokens;
mod signaling_failover;
mod ws_protocol;

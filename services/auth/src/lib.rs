//! The auth service: accounts and credentials.
//!
//! * [`service`] — the core (registration, verification, login with an
//!   emailed code, refresh-token rotation, logout), transport-agnostic;
//! * [`crypto`] — tokens, code hashes, argon2id off the executor;
//! * [`repo`] — SQL on the `auth` schema;
//! * [`grpc`] — the `unilink.auth.v1.AuthService` adapter;
//! * [`Auth`] — how the shared runtime starts it (`Application::build`),
//!   including the outbox relay that publishes its events to `events:auth`.

pub mod crypto;
pub mod error;
pub mod grpc;
pub mod repo;
pub mod service;

use unilink_db::Migration;
use unilink_runtime::{BackendService, Built, Resources, StartupError};

pub use error::AuthError;

/// The auth service, as the runtime sees it.
#[derive(Debug)]
pub struct Auth;

/// `Application::build(settings)` starts the auth service.
pub type Application = unilink_runtime::Application<Auth>;

impl BackendService for Auth {
    const NAME: &'static str = "auth";
    const SCHEMA: &'static str = "auth";
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 1,
            name: "accounts",
            sql: include_str!("../migrations/0001_accounts.sql"),
        },
        Migration {
            version: 2,
            name: "credentials",
            sql: include_str!("../migrations/0002_credentials.sql"),
        },
        Migration {
            version: 3,
            name: "outbox",
            sql: unilink_events::outbox::MIGRATION_SQL,
        },
        Migration {
            version: 4,
            name: "otp_failures",
            sql: include_str!("../migrations/0004_otp_failures.sql"),
        },
    ];

    fn build(resources: &Resources) -> Result<Built, StartupError> {
        let core = service::AuthService::new(
            repo::AccountRepository::new(resources.db.clone()),
            resources.redis.clone(),
            &resources.settings,
        )
        .map_err(|e| StartupError::Other(e.to_string()))?;
        let relay = unilink_runtime::outbox_relay::<Auth>(resources);
        Ok(Built::new(tonic::service::Routes::new(grpc::server(core))).with_worker(move |stop| relay.run(stop)))
    }
}

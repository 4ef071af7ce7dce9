//! The auth service: accounts and credentials.
//!
//! * [`service`] — the core (transport-agnostic rules),
//! * [`repo`] — SQL on the `auth` schema,
//! * [`grpc`] — the `unilink.auth.v1.AuthService` adapter,
//! * [`Auth`] — how the shared runtime starts it (`Application::build`).

pub mod error;
pub mod grpc;
pub mod repo;
pub mod service;

use unilink_db::Migration;
use unilink_runtime::{BackendService, Resources, StartupError};

pub use error::AuthError;

/// The auth service, as the runtime sees it.
#[derive(Debug)]
pub struct Auth;

/// `Application::build(settings)` starts the auth service.
pub type Application = unilink_runtime::Application<Auth>;

impl BackendService for Auth {
    const NAME: &'static str = "auth";
    const SCHEMA: &'static str = "auth";
    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 1,
        name: "accounts",
        sql: include_str!("../migrations/0001_accounts.sql"),
    }];

    fn routes(resources: &Resources) -> Result<tonic::service::Routes, StartupError> {
        let core = service::AccountService::new(repo::AccountRepository::new(resources.db.clone()));
        Ok(tonic::service::Routes::new(grpc::server(core)))
    }
}

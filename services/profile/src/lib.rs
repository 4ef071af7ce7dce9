//! The profile service: public profiles (and, as it grows, blocks, reports,
//! discovery and moderation).
//!
//! * [`service`] — the core, [`repo`] — SQL on the `profile` schema,
//! * [`grpc`] — the `unilink.profile.v1.ProfileService` adapter,
//! * [`Profiles`] — how the shared runtime starts it.

pub mod error;
pub mod grpc;
pub mod repo;
pub mod service;

use unilink_db::Migration;
use unilink_runtime::{BackendService, Resources, StartupError};

pub use error::ProfileError;

/// The profile service, as the runtime sees it.
#[derive(Debug)]
pub struct Profiles;

/// `Application::build(settings)` starts the profile service.
pub type Application = unilink_runtime::Application<Profiles>;

impl BackendService for Profiles {
    const NAME: &'static str = "profile";
    const SCHEMA: &'static str = "profile";
    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 1,
        name: "profiles",
        sql: include_str!("../migrations/0001_profiles.sql"),
    }];

    fn routes(resources: &Resources) -> Result<tonic::service::Routes, StartupError> {
        let core = service::ProfileService::new(repo::ProfileRepository::new(resources.db.clone()));
        Ok(tonic::service::Routes::new(grpc::server(core)))
    }
}

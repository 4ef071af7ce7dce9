//! The profile service: public profiles, blocks, reports and discovery of who
//! can be called.
//!
//! * [`service`] — the core, [`repo`] — SQL on the `profile` schema,
//! * [`worker`] — creates and updates profiles from auth's durable events,
//! * [`grpc`] — the `unilink.profile.v1.ProfileService` adapter,
//! * [`Profiles`] — how the shared runtime starts it.
//!
//! `GET /calls/available` is served here: discovery needs profiles, blocks
//! and presence, all of which this service reads without another hop.
//! For the same reason signaling asks here, with `CallEligibility`, whether a
//! receiver exists, may be called and is not blocked either way.

pub mod cache;
pub mod error;
pub mod grpc;
pub mod repo;
pub mod service;
pub mod worker;

use unilink_db::Migration;
use unilink_presence::PresenceRegistry;
use unilink_runtime::{BackendService, Built, Resources, StartupError};

pub use error::ProfileError;

/// The profile service, as the runtime sees it.
#[derive(Debug)]
pub struct Profiles;

/// `Application::build(settings)` starts the profile service.
pub type Application = unilink_runtime::Application<Profiles>;

impl BackendService for Profiles {
    const NAME: &'static str = "profile";
    const SCHEMA: &'static str = "profile";
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 1,
            name: "profiles",
            sql: include_str!("../migrations/0001_profiles.sql"),
        },
        Migration {
            version: 2,
            name: "accounts_blocks_reports",
            sql: include_str!("../migrations/0002_accounts_blocks_reports.sql"),
        },
        Migration {
            version: 3,
            name: "erased_users",
            sql: include_str!("../migrations/0003_erased_users.sql"),
        },
        Migration {
            version: 4,
            name: "unset_bio_is_null",
            sql: include_str!("../migrations/0004_unset_bio_is_null.sql"),
        },
    ];

    fn build(resources: &Resources) -> Result<Built, StartupError> {
        let presence = PresenceRegistry::new(resources.redis.clone(), unilink_presence::DEFAULT_TTL);
        let read = unilink_db::read_pool(&resources.settings.database, &resources.db, Self::SCHEMA, Self::NAME)?;
        // The worker writes: it keeps the primary-only repository.
        let writer = repo::ProfileRepository::new(resources.db.clone());
        let profiles = writer.clone().with_read_pool(read);
        let core = service::ProfileService::new(profiles, presence, resources.redis.clone());
        let redis = resources.redis.clone();
        Ok(Built::new(tonic::service::Routes::new(grpc::server(core)))
            .with_worker(move |stop| worker::run(redis, writer, stop)))
    }
}

//! The signaling service: calls (and, as it grows, presence and the WebRTC
//! signaling relay across replicas).
//!
//! * [`service`] — the core, [`repo`] — SQL on the `signaling` schema,
//! * [`grpc`] — the `unilink.signaling.v1.SignalingService` adapter,
//! * [`Signaling`] — how the shared runtime starts it.

pub mod error;
pub mod grpc;
pub mod repo;
pub mod service;

use unilink_db::Migration;
use unilink_runtime::{BackendService, Resources, StartupError};

pub use error::SignalingError;

/// The signaling service, as the runtime sees it.
#[derive(Debug)]
pub struct Signaling;

/// `Application::build(settings)` starts the signaling service.
pub type Application = unilink_runtime::Application<Signaling>;

impl BackendService for Signaling {
    const NAME: &'static str = "signaling";
    const SCHEMA: &'static str = "signaling";
    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 1,
        name: "calls",
        sql: include_str!("../migrations/0001_calls.sql"),
    }];

    fn routes(resources: &Resources) -> Result<tonic::service::Routes, StartupError> {
        let core = service::CallService::new(repo::CallRepository::new(resources.db.clone()));
        Ok(tonic::service::Routes::new(grpc::server(core)))
    }
}

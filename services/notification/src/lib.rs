//! The notification service: takes durable events from the streams and
//! delivers them (emails over SMTP, pushes to live connections), recording
//! each in a ledger so nothing is sent twice.
//!
//! * [`service`] — the core, [`repo`] — SQL on the `notification` schema,
//! * [`grpc`] — the `unilink.notification.v1.NotificationService` adapter,
//! * [`Notification`] — how the shared runtime starts it.

pub mod error;
pub mod grpc;
pub mod repo;
pub mod service;

use unilink_db::Migration;
use unilink_runtime::{BackendService, Resources, StartupError};

pub use error::NotificationError;

/// The notification service, as the runtime sees it.
#[derive(Debug)]
pub struct Notification;

/// `Application::build(settings)` starts the notification service.
pub type Application = unilink_runtime::Application<Notification>;

impl BackendService for Notification {
    const NAME: &'static str = "notification";
    const SCHEMA: &'static str = "notification";
    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 1,
        name: "deliveries",
        sql: include_str!("../migrations/0001_deliveries.sql"),
    }];

    fn routes(resources: &Resources) -> Result<tonic::service::Routes, StartupError> {
        let core =
            service::DeliveryService::new(repo::DeliveryRepository::new(resources.db.clone()));
        Ok(tonic::service::Routes::new(grpc::server(core)))
    }
}

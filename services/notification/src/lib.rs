//! The notification service: takes durable events from the streams and
//! delivers them (emails over SMTP, pushes to live connections), recording
//! each in a ledger so nothing is sent twice.
//!
//! * [`service`] — the core: the delivery ledger and the emails of
//!   `events:auth`, sent once each ([`email`] says what the mails say,
//!   [`mailer`] sends them over SMTP or, in development, to a folder),
//! * [`push`] — the pushes of `events:signaling`: call events to the
//!   participants' presence sockets (ephemeral, so not in the ledger),
//! * [`domain`] — the delivery ledger's state machine, pure,
//! * [`repo`] — SQL on the `notification` schema,
//! * [`grpc`] — the `unilink.notification.v1.NotificationService` adapter,
//! * [`worker`] — the stream adapter: the consumer loops feeding the core,
//! * [`Notification`] — how the shared runtime starts it.

pub mod domain;
pub mod email;
pub mod error;
pub mod grpc;
pub mod mailer;
pub mod push;
pub mod repo;
pub mod service;
pub mod worker;

use unilink_db::Migration;
use unilink_runtime::{BackendService, Built, Resources, StartupError};

pub use error::NotificationError;

/// The notification service, as the runtime sees it.
#[derive(Debug)]
pub struct Notification;

/// `Application::build(settings)` starts the notification service.
pub type Application = unilink_runtime::Application<Notification>;

impl BackendService for Notification {
    const NAME: &'static str = "notification";
    const SCHEMA: &'static str = "notification";
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 1,
            name: "deliveries",
            sql: include_str!("../migrations/0001_deliveries.sql"),
        },
        Migration {
            version: 2,
            name: "delivery_recipient",
            sql: include_str!("../migrations/0002_delivery_recipient.sql"),
        },
    ];

    fn build(resources: &Resources) -> Result<Built, StartupError> {
        // Refuses to start on mail settings the worker could not use.
        let email = service::EmailDelivery::new(resources).map_err(StartupError::Other)?;
        let push = push::PushDelivery::new(resources);
        let core = service::DeliveryService::new(repo::DeliveryRepository::new(resources.db.clone()));
        let (pushes, emails) = (resources.redis.clone(), resources.redis.clone());
        Ok(Built::new(tonic::service::Routes::new(grpc::server(core)))
            .with_worker(move |stop| worker::pushes(push, pushes, stop))
            .with_worker(move |stop| worker::emails(email, emails, stop)))
    }
}

//! The notification service: takes durable events from the streams and
//! delivers them (emails over SMTP, pushes to live connections), recording
//! each in a ledger so nothing is sent twice.
//!
//! * [`service`] — the core, [`repo`] — SQL on the `notification` schema,
//! * [`grpc`] — the `unilink.notification.v1.NotificationService` adapter,
//! * [`worker`] — the email worker on `events:auth` ([`email`] says what the
//!   mails say, [`mailer`] sends them over SMTP or, in development, to a folder),
//! * [`push`] — the push worker on `events:signaling`: call events to the
//!   participants' presence sockets (ephemeral, so not in the ledger),
//! * [`Notification`] — how the shared runtime starts it.

pub mod email;
pub mod error;
pub mod grpc;
pub mod mailer;
pub mod push;
pub mod repo;
pub mod service;
pub mod worker;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
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

    fn routes(resources: &Resources) -> Result<tonic::service::Routes, StartupError> {
        // Refuse to start on mail settings the worker could not use.
        worker::EmailWorker::new(resources).map_err(StartupError::Other)?;
        let core = service::DeliveryService::new(repo::DeliveryRepository::new(resources.db.clone()));
        Ok(tonic::service::Routes::new(grpc::server(core)))
    }

    fn spawn_workers(resources: &Resources, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut workers = vec![push::PushWorker::new(resources).spawn(resources, stop.clone())];
        match worker::EmailWorker::new(resources) {
            Ok(worker) => workers.push(worker.spawn(resources, stop)),
            // `routes` already refused these settings; this is not reached.
            Err(e) => tracing::error!(error = %e, "email worker not started"),
        }
        workers
    }
}

//! The signaling service: the control plane of calls. It owns the call
//! state machine, its timers and history, who may join a call's signaling,
//! and the WebRTC connection states; the frames themselves travel between
//! the gateways over Redis ([`unilink_relay`]) and never pass through here.
//!
//! * [`service`] — the call rules (state machine, eligibility, history,
//!   joining, `call_ended` into both mailboxes), [`repo`] — SQL on the
//!   `signaling` schema,
//! * [`timers`] — ring timeout, maximum duration, abandoned calls,
//! * [`worker`] — follows account deactivation and deletion,
//! * [`ice`] — STUN/TURN configuration with TURN REST credentials,
//! * [`grpc`] — the `unilink.signaling.v1.SignalingService` adapter,
//! * [`Signaling`] — how the shared runtime starts it.

pub mod error;
pub mod grpc;
pub mod ice;
pub mod repo;
pub mod service;
pub mod timers;
pub mod worker;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use unilink_db::Migration;
use unilink_presence::PresenceRegistry;
use unilink_runtime::{BackendService, Resources, StartupError};

pub use error::SignalingError;

/// The signaling service, as the runtime sees it.
#[derive(Debug)]
pub struct Signaling;

/// `Application::build(settings)` starts the signaling service.
pub type Application = unilink_runtime::Application<Signaling>;

/// The core as every part of this service sees it.
fn core(resources: &Resources) -> Result<service::CallService, StartupError> {
    let upstreams = &resources.settings.upstreams;
    let profiles = unilink_grpc::balanced_channel(
        "profile",
        &upstreams.profile,
        upstreams.connect_timeout,
        upstreams.request_timeout,
    )
    .map_err(|e| StartupError::Other(e.to_string()))?;
    let calls = &resources.settings.calls;
    Ok(service::CallService::new(
        repo::CallRepository::new(resources.db.clone()).with_read_pool(unilink_db::read_pool(
            &resources.settings.database,
            &resources.db,
            Signaling::SCHEMA,
            Signaling::NAME,
        )?),
        profiles,
        PresenceRegistry::new(resources.redis.clone(), unilink_presence::DEFAULT_TTL),
        unilink_relay::CallConnections::new(resources.redis.clone(), calls.disconnect_grace),
        unilink_relay::SignalRelay::new(resources.redis.clone(), resources.stopped.clone()),
        calls.clone(),
    ))
}

impl BackendService for Signaling {
    const NAME: &'static str = "signaling";
    const SCHEMA: &'static str = "signaling";
    const MIGRATIONS: &'static [Migration] = &[
        Migration {
            version: 1,
            name: "calls",
            sql: include_str!("../migrations/0001_calls.sql"),
        },
        Migration {
            version: 2,
            name: "call_lifecycle",
            sql: include_str!("../migrations/0002_call_lifecycle.sql"),
        },
        Migration {
            version: 3,
            name: "outbox",
            sql: unilink_events::outbox::MIGRATION_SQL,
        },
    ];

    fn routes(resources: &Resources) -> Result<tonic::service::Routes, StartupError> {
        Ok(tonic::service::Routes::new(grpc::server(grpc::SignalingApi {
            core: core(resources)?,
        })))
    }

    fn spawn_workers(resources: &Resources, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let core = match core(resources) {
            Ok(core) => core,
            Err(e) => {
                tracing::error!(error = %e, "signaling workers not started");
                return Vec::new();
            }
        };
        vec![
            tokio::spawn(unilink_runtime::outbox_relay::<Signaling>(resources).run(stop.clone())),
            tokio::spawn(timers::run(core.clone(), stop.clone())),
            tokio::spawn(worker::run(resources.redis.clone(), core, stop)),
        ]
    }
}

//! The signaling service: the control plane of calls. It owns the call
//! state machine, its timers and history, who may join a call's signaling,
//! and the WebRTC connection states; the frames themselves travel between
//! the gateways over Redis ([`unilink_relay`]) and never pass through here.
//!
//! * [`domain`] — the call state machine (statuses, actions, transitions)
//!   and the events announcing changes, pure,
//! * [`service`] — the call rules (who may act, eligibility, history,
//!   joining, `call_ended` into both mailboxes), [`repo`] — SQL on the
//!   `signaling` schema,
//! * [`timers`] — ring timeout, maximum duration, abandoned calls,
//! * [`worker`] — follows account deactivation and deletion,
//! * [`ice`] — STUN/TURN configuration with TURN REST credentials,
//! * [`grpc`] — the `unilink.signaling.v1.SignalingService` adapter,
//! * [`Signaling`] — how the shared runtime starts it.

pub mod domain;
pub mod error;
pub mod grpc;
pub mod ice;
pub mod repo;
pub mod service;
pub mod timers;
pub mod worker;

use unilink_db::Migration;
use unilink_presence::PresenceRegistry;
use unilink_runtime::{BackendService, Built, Resources, StartupError};

pub use error::SignalingError;

/// The signaling service, as the runtime sees it.
#[derive(Debug)]
pub struct Signaling;

/// `Application::build(settings)` starts the signaling service.
pub type Application = unilink_runtime::Application<Signaling>;

/// The core, built once: the gRPC adapter and the workers share it.
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

    fn build(resources: &Resources) -> Result<Built, StartupError> {
        let core = core(resources)?;
        let relay = unilink_runtime::outbox_relay::<Signaling>(resources);
        let (timers, follower) = (core.clone(), core.clone());
        let redis = resources.redis.clone();
        Ok(Built::new(tonic::service::Routes::new(grpc::server(core)))
            .with_worker(move |stop| relay.run(stop))
            .with_worker(move |stop| timers::run(timers, stop))
            .with_worker(move |stop| worker::run(redis, follower, stop)))
    }
}

//! The life of a UniLink backend service (auth, profile, signaling,
//! notification), written once.
//!
//! A service describes itself with [`BackendService`] (name, schema,
//! migrations, and how to build its gRPC routes from [`Resources`]);
//! [`Application::build`] applies the migrations under the schema's advisory
//! lock, opens the pool and Redis, binds the listeners (port 0 in tests) and
//! builds the routes; [`Application::run_until_stopped`] serves until the
//! shutdown future resolves. [`main`] is a service binary's whole `main`.

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use unilink_bus::{BusError, Redis};
use unilink_config::Settings;
use unilink_db::{DbError, Migration, MigrationReport, PgPool};
use unilink_grpc::process::Command;
use unilink_grpc::server::PROBE_TIMEOUT;
use unilink_grpc::{Probe, ServiceHost};

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] BusError),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Other(String),
}

/// What a backend service is made of.
pub trait BackendService: Send + 'static {
    /// Service name: logs, metrics, health.
    const NAME: &'static str;
    /// The PostgreSQL schema the service owns; its connections see only it.
    const SCHEMA: &'static str;
    /// Embedded migrations of [`Self::SCHEMA`], numbered from 1.
    const MIGRATIONS: &'static [Migration];

    /// Builds the gRPC routes over the service's resources.
    fn routes(resources: &Resources) -> Result<Routes, StartupError>;

    /// Starts the service's background tasks (outbox relay, event consumers,
    /// timers). Each must end soon after `stop` is cancelled; the runtime
    /// cancels it when the server has drained and waits for them.
    fn spawn_workers(resources: &Resources, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let _ = (resources, stop);
        Vec::new()
    }
}

/// The connections and settings a service's core is built from.
#[derive(Debug, Clone)]
pub struct Resources {
    pub settings: Settings,
    pub db: PgPool,
    pub redis: Redis,
    /// Cancelled when shutdown begins: long-lived streams should tell their
    /// clients to reconnect elsewhere and end, so the server can drain.
    pub draining: CancellationToken,
    /// Cancelled once the server has stopped: background tasks end.
    pub stopped: CancellationToken,
}

/// Applies the service's migrations (the `migrate` command; also run by
/// [`Application::build`]).
pub async fn migrate<S: BackendService>(settings: &Settings) -> Result<MigrationReport, StartupError> {
    let report = unilink_db::migrate(&settings.database, S::SCHEMA, S::MIGRATIONS).await?;
    tracing::info!(service = S::NAME, schema = S::SCHEMA, version = report.version, applied = ?report.applied, "schema up to date");
    Ok(report)
}

/// How long background tasks get to finish after the server stopped.
const WORKER_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The outbox relay of a producer service, publishing to `events:<name>`.
pub fn outbox_relay<S: BackendService>(resources: &Resources) -> unilink_events::outbox::OutboxRelay {
    unilink_events::outbox::OutboxRelay {
        db: resources.db.clone(),
        redis: resources.redis.clone(),
        stream: unilink_events::stream_of(S::NAME),
        database: resources.settings.database.clone(),
        schema: S::SCHEMA,
    }
}

/// A name for this process's stream consumers: unique per replica.
pub fn consumer_name(service: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    format!("{service}-{host}-{}", std::process::id())
}

/// A built, not yet running, backend service.
#[derive(Debug)]
pub struct Application<S> {
    resources: Resources,
    host: ServiceHost,
    routes: Routes,
    service: PhantomData<fn() -> S>,
}

impl<S: BackendService> Application<S> {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        migrate::<S>(&settings).await?;
        let db = unilink_db::connect(&settings.database, S::SCHEMA, S::NAME)?;
        let redis = Redis::connect(&settings.redis).await?;
        let host = ServiceHost::bind(S::NAME, &settings.listen).await?;
        let resources = Resources {
            settings,
            db,
            redis,
            draining: CancellationToken::new(),
            stopped: CancellationToken::new(),
        };
        let routes = S::routes(&resources)?;
        Ok(Application {
            resources,
            host,
            routes,
            service: PhantomData,
        })
    }

    /// The bound gRPC port (useful when `GRPC_ADDR` asked for port 0).
    pub fn grpc_port(&self) -> u16 {
        self.host.grpc_addr().port()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.host.grpc_addr()
    }

    /// The bound probe/metrics HTTP port.
    pub fn http_port(&self) -> u16 {
        self.host.http_addr().port()
    }

    /// Serves until `shutdown` resolves, then drains and closes connections.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Application {
            resources,
            host,
            routes,
            ..
        } = self;
        let db = resources.db.clone();
        let redis = resources.redis.clone();
        let probes = vec![
            Probe::new("database", move || {
                let db = db.clone();
                async move { unilink_db::ping(&db, PROBE_TIMEOUT).await.map_err(|e| e.to_string()) }
            }),
            Probe::new("redis", move || {
                let redis = redis.clone();
                async move { redis.ping(PROBE_TIMEOUT).await.map_err(|e| e.to_string()) }
            }),
        ];
        let pool = resources.db.clone();
        let metrics = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                unilink_db::record_pool_metrics(&pool, S::SCHEMA);
            }
        });
        let stop_workers = resources.stopped.clone();
        let workers = S::spawn_workers(&resources, stop_workers.clone());
        let draining = resources.draining.clone();
        let shutdown = async move {
            shutdown.await;
            draining.cancel();
        };
        let result = host.serve(routes, probes, shutdown).await;
        stop_workers.cancel();
        for worker in workers {
            if tokio::time::timeout(WORKER_STOP_WAIT, worker).await.is_err() {
                tracing::warn!(service = S::NAME, "a background task did not stop in time");
            }
        }
        metrics.abort();
        resources.redis.close().await;
        resources.db.close();
        Ok(result?)
    }
}

/// The whole `main` of a backend service binary: `serve` (default) or `migrate`.
pub async fn main<S: BackendService>(version: &'static str) -> ExitCode {
    unilink_grpc::process::run(S::NAME, version, |settings, command| async move {
        match command {
            Command::Migrate => migrate::<S>(&settings).await.map(|_| ()),
            Command::Serve => {
                Application::<S>::build(settings)
                    .await?
                    .run_until_stopped(unilink_grpc::shutdown_signal())
                    .await
            }
        }
    })
    .await
}

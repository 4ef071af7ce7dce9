//! The life of a UniLink backend service (auth, profile, signaling,
//! notification), written once.
//!
//! A service describes itself with [`BackendService`] (name, schema,
//! migrations, and how to build its gRPC routes and background workers from
//! [`Resources`], once);
//! [`Application::build`] applies the migrations under the schema's advisory
//! lock, opens the pool and Redis, binds the listeners (port 0 in tests) and
//! builds the service; [`Application::run_until_stopped`] serves until the
//! shutdown future resolves. [`main`] is a service binary's whole `main`;
//! [`process`] is the lifecycle every binary shares (the gateway's too).
//!
//! Start-up waits for a database that is not there yet (a rolling restart of
//! the cluster, a managed failover, compose starting everything at once):
//! [`migrate_when_reachable`] retries transient failures with backoff for up
//! to [`DATABASE_STARTUP_RETRY`] instead of exiting and crash-looping, and
//! stops at once on errors that waiting cannot fix (see [`is_transient`]).

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use unilink_bus::{BusError, Redis};
use unilink_config::Settings;
use unilink_db::{DbError, Migration, MigrationReport, PgPool, SqlState};
use unilink_grpc::server::PROBE_TIMEOUT;
use unilink_grpc::{Probe, ServiceHost};

use crate::process::Command;

pub mod process;

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("database still unreachable after {waited:?} ({attempts} attempts): {source}")]
    DatabaseUnreachable {
        attempts: u32,
        waited: Duration,
        source: DbError,
    },
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

    /// Builds the service once over its resources: its gRPC routes and its
    /// background tasks (outbox relay, event consumers, timers), which share
    /// whatever they need with the routes (one core, one pool).
    fn build(resources: &Resources) -> Result<Built, StartupError>;
}

/// A background task, started by the runtime when the server starts: it
/// gets the token that is cancelled once the server has drained, and must
/// end soon after; the runtime waits for it.
pub type Worker = Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A service as [`BackendService::build`] makes it: routes and workers.
pub struct Built {
    routes: Routes,
    workers: Vec<Worker>,
}

impl Built {
    /// A service serving `routes`, with no background task yet.
    pub fn new(routes: Routes) -> Self {
        Built {
            routes,
            workers: Vec::new(),
        }
    }

    /// Adds a background task (see [`Worker`]).
    pub fn with_worker<F, Fut>(mut self, worker: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.workers.push(Box::new(move |stop| Box::pin(worker(stop))));
        self
    }
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("routes", &self.routes)
            .field("workers", &self.workers.len())
            .finish()
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

/// Applies the service's migrations in one attempt; the `migrate` command
/// and [`Application::build`] use [`migrate_when_reachable`], which retries.
pub async fn migrate<S: BackendService>(settings: &Settings) -> Result<MigrationReport, StartupError> {
    let report = unilink_db::migrate(&settings.database, S::SCHEMA, S::MIGRATIONS).await?;
    tracing::info!(service = S::NAME, schema = S::SCHEMA, version = report.version, applied = ?report.applied, "schema up to date");
    Ok(report)
}

/// How long start-up keeps retrying a database that does not answer before
/// giving up (the process then exits 1 and the orchestrator's restart policy
/// takes over, so an outage longer than this shows up as restarts). Five
/// minutes covers a managed PostgreSQL failover or restart (typically 30–120
/// s) with room to spare; SIGTERM still stops the process at once meanwhile
/// (no signal handler is installed before the server runs). The Kubernetes
/// startup probes give at least this long (`scripts/validate_deploy.py`
/// reads this constant and checks them).
pub const DATABASE_STARTUP_RETRY: Duration = Duration::from_secs(300);

/// How start-up retries a database that is not reachable yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupRetry {
    /// Wait after the first failure; doubled after each further one.
    pub first_delay: Duration,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
    /// No attempt starts after this long; the last error is returned.
    pub give_up_after: Duration,
}

impl Default for StartupRetry {
    /// 0.5 s doubling to 10 s, for [`DATABASE_STARTUP_RETRY`].
    fn default() -> Self {
        StartupRetry {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            give_up_after: DATABASE_STARTUP_RETRY,
        }
    }
}

/// Whether waiting may fix `error`: the server is not reachable, not ready,
/// or went away in the middle (connection refused or reset, DNS not there
/// yet, timeouts, "the database system is starting up", "too many clients"
/// while old replicas drain, another replica holding the migration lock).
/// Errors from a wrong setting or a wrong schema are permanent: invalid
/// configuration, TLS failures (wrong CA, name mismatch, no TLS under
/// `require`), authentication, a missing database, a failing migration,
/// checksum mismatches and a schema newer than this build.
pub fn is_transient(error: &DbError) -> bool {
    fn transient_state(state: &SqlState) -> bool {
        let code = state.code();
        // Class 08: connection exception.
        code.starts_with("08")
            || [
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(state)
    }
    match error {
        DbError::Pool(_) | DbError::Timeout(_) | DbError::LockTimeout(..) => {
            error.sql_state().is_none_or(transient_state)
        }
        DbError::Postgres(e) | DbError::Migration { source: e, .. } => {
            e.is_closed() || e.code().is_none_or(transient_state)
        }
        DbError::Config(_) | DbError::Tls(_) | DbError::ChecksumMismatch { .. } | DbError::SchemaTooNew { .. } => false,
    }
}

/// Runs `attempt` until it succeeds, fails with a permanent error, or
/// `retry.give_up_after` has passed; one WARN per failed attempt.
pub async fn retry_transient<T, F, Fut>(what: &str, retry: StartupRetry, mut attempt: F) -> Result<T, StartupError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = retry.first_delay;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(
                        what,
                        attempts,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "database reachable"
                    );
                }
                return Ok(value);
            }
            Err(e) if !is_transient(&e) => return Err(e.into()),
            Err(e) => e,
        };
        let waited = started.elapsed();
        if waited + delay > retry.give_up_after {
            return Err(StartupError::DatabaseUnreachable {
                attempts,
                waited,
                source: error,
            });
        }
        tracing::warn!(
            what,
            attempt = attempts,
            retry_in_ms = delay.as_millis() as u64,
            error = %error,
            "database not reachable yet; retrying"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(retry.max_delay);
    }
}

/// [`migrate`], retried while the database is not reachable (see
/// [`StartupRetry`]); what [`Application::build`] and the `migrate` command run.
pub async fn migrate_when_reachable<S: BackendService>(
    settings: &Settings,
    retry: StartupRetry,
) -> Result<MigrationReport, StartupError> {
    let report = retry_transient(S::NAME, retry, || {
        unilink_db::migrate(&settings.database, S::SCHEMA, S::MIGRATIONS)
    })
    .await?;
    tracing::info!(service = S::NAME, schema = S::SCHEMA, version = report.version, applied = ?report.applied, "schema up to date");
    Ok(report)
}

/// How long background tasks get to finish after the server stopped.
const WORKER_STOP_WAIT: Duration = Duration::from_secs(5);

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
    built: Built,
    service: PhantomData<fn() -> S>,
}

impl<S: BackendService> Application<S> {
    /// Migrates (waiting for the database with [`StartupRetry::default`]),
    /// opens the pool and Redis, binds the listeners and builds the service
    /// ([`BackendService::build`]); its workers start with the server.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_retry(settings, StartupRetry::default()).await
    }

    /// [`Application::build`] with its own start-up retry policy.
    pub async fn build_with_retry(settings: Settings, retry: StartupRetry) -> Result<Self, StartupError> {
        migrate_when_reachable::<S>(&settings, retry).await?;
        // Lazy: opens connections on first use, never fails for a down server.
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
        let built = S::build(&resources)?;
        Ok(Application {
            resources,
            host,
            built,
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
            built: Built { routes, workers },
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
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                unilink_db::record_pool_metrics(&pool, S::SCHEMA);
            }
        });
        let stop_workers = resources.stopped.clone();
        let workers: Vec<_> = workers
            .into_iter()
            .map(|worker| tokio::spawn(worker(stop_workers.clone())))
            .collect();
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
    process::run(S::NAME, version, |settings, command| async move {
        match command {
            Command::Migrate => migrate_when_reachable::<S>(&settings, StartupRetry::default())
                .await
                .map(|_| ()),
            Command::Serve => {
                Application::<S>::build(settings)
                    .await?
                    .run_until_stopped(process::shutdown_signal())
                    .await
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick(give_up_after: Duration) -> StartupRetry {
        StartupRetry {
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            give_up_after,
        }
    }

    fn checksum_mismatch() -> DbError {
        DbError::ChecksumMismatch {
            schema: "s".into(),
            version: 1,
            applied: "a".into(),
            embedded: "b".into(),
        }
    }

    #[test]
    fn only_errors_that_waiting_can_fix_are_transient() {
        assert!(is_transient(&DbError::Timeout(Duration::from_secs(1))));
        assert!(is_transient(&DbError::LockTimeout("s".into(), Duration::from_secs(1))));
        assert!(!is_transient(&DbError::Config("bad sslmode".into())));
        assert!(!is_transient(&DbError::Tls("unknown issuer".into())));
        assert!(!is_transient(&checksum_mismatch()));
        assert!(!is_transient(&DbError::SchemaTooNew {
            schema: "s".into(),
            applied: 3,
            known: 2
        }));
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let settings = Settings::from_vars([
            ("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/postgres")),
            ("DATABASE_CONNECT_TIMEOUT_SECONDS", "2".to_owned()),
        ])
        .expect("settings");
        let error = unilink_db::connect_direct(&settings.database, "test")
            .await
            .err()
            .expect("nothing listens there");
        assert!(matches!(error, DbError::Postgres(_)), "{error:?}");
        assert!(is_transient(&error), "{error}");
    }

    #[tokio::test]
    async fn a_permanent_error_is_returned_after_one_attempt() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_transient("test", quick(Duration::from_secs(5)), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(checksum_mismatch()) }
        })
        .await;
        assert!(
            matches!(result, Err(StartupError::Database(DbError::ChecksumMismatch { .. }))),
            "{result:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = retry_transient("test", quick(Duration::from_secs(5)), || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    Err(DbError::Timeout(Duration::from_millis(1)))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.expect("third attempt succeeds"), 3);
    }

    #[tokio::test]
    async fn retrying_stops_at_the_bound_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let result: Result<(), _> = retry_transient("test", quick(Duration::from_millis(300)), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(DbError::Timeout(Duration::from_millis(1))) }
        })
        .await;
        let took = started.elapsed();
        let Err(StartupError::DatabaseUnreachable { attempts, source, .. }) = result else {
            panic!("expected DatabaseUnreachable, got {result:?}");
        };
        // Delays 10, 20, 40, 40… ms: about eight attempts fit in 300 ms.
        assert_eq!(attempts, calls.load(Ordering::SeqCst));
        assert!(attempts >= 4, "only {attempts} attempts");
        assert!(matches!(source, DbError::Timeout(_)));
        assert!(
            took <= Duration::from_millis(300) + Duration::from_millis(200),
            "took {took:?}"
        );
    }
}

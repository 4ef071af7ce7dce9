//! Start-up against data stores that are not there yet: a PostgreSQL that
//! starts listening late is waited for, an error that waiting cannot fix
//! stops start-up at once, and a Redis that is down does not stop it.
//!
//! Needs the test PostgreSQL (`TEST_DATABASE_URL`) and Redis
//! (`TEST_REDIS_URL`); `scripts/test.sh` makes sure both answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::service::Routes;
use unilink_db::{DbError, Migration};
use unilink_runtime::{Application, BackendService, Built, Resources, StartupError};
use unilink_test_support::faults::CutProxy;
use unilink_test_support::{TestDatabase, admin_database_url, closed_port, eventually, settings, unique_prefix};

/// A backend with one table and no routes: enough to run the start-up path.
struct Marker;

impl BackendService for Marker {
    const NAME: &'static str = "startup-marker";
    const SCHEMA: &'static str = "startup_marker";
    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 1,
        name: "marker",
        sql: "CREATE TABLE startup_marker.marker (id integer PRIMARY KEY)",
    }];

    fn build(_: &Resources) -> Result<Built, StartupError> {
        Ok(Built::new(Routes::default()))
    }
}

/// The same schema with migration 1 edited after it was applied.
struct EditedMarker;

impl BackendService for EditedMarker {
    const NAME: &'static str = "startup-marker";
    const SCHEMA: &'static str = "startup_marker";
    const MIGRATIONS: &'static [Migration] = &[Migration {
        version: 1,
        name: "marker",
        sql: "CREATE TABLE startup_marker.marker (id bigint PRIMARY KEY)",
    }];

    fn build(_: &Resources) -> Result<Built, StartupError> {
        Ok(Built::new(Routes::default()))
    }
}

/// `host:port` of a PostgreSQL URL.
fn authority(url: &str) -> &str {
    let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
    let rest = &rest[rest.rfind('@').map_or(0, |i| i + 1)..];
    &rest[..rest.find(['/', '?']).unwrap_or(rest.len())]
}

async fn postgres_addr() -> SocketAddr {
    let admin = admin_database_url();
    tokio::net::lookup_host(authority(&admin))
        .await
        .expect("resolve the test PostgreSQL")
        .next()
        .expect("an address for the test PostgreSQL")
}

#[tokio::test]
async fn build_waits_for_a_database_that_starts_listening_later() {
    let db = TestDatabase::create().await;
    // Nothing listens on the proxy's port (connections are refused) until
    // it starts forwarding to the real server 2 s later.
    let proxy = CutProxy::start(postgres_addr().await).await;
    proxy.cut().await;
    let through_proxy = db.url().replacen(authority(db.url()), &proxy.addr().to_string(), 1);
    let settings = settings(&db, &unique_prefix(), &[("DATABASE_URL", &through_proxy)]);

    let started = Instant::now();
    let listening_at = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore().await;
        (Instant::now(), proxy)
    });
    let app = Application::<Marker>::build(settings).await;
    let took = started.elapsed();
    let (listening_at, _proxy) = listening_at.await.expect("proxy task");

    let app = app.expect("start-up waits for the database instead of failing");
    assert!(app.grpc_port() > 0);
    assert!(
        Instant::now() >= listening_at && took >= Duration::from_secs(2),
        "built before the database listened ({took:?})"
    );
    // Attempts at about 0, 0.5, 1.5 and 3.5 s: the fourth gets through.
    assert!(
        took < Duration::from_secs(8),
        "waited too long after the database came ({took:?})"
    );
    let applied: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM startup_marker.schema_migrations", &[])
        .await
        .expect("migrations table")
        .get(0);
    assert_eq!(applied, 1, "the migration ran once the database answered");
    eprintln!("start-up waited {took:.1?} for a database that listened after 2 s");
}

#[tokio::test]
async fn build_stops_at_once_on_an_edited_migration() {
    let db = TestDatabase::create().await;
    let prefix = unique_prefix();
    Application::<Marker>::build(settings(&db, &prefix, &[]))
        .await
        .expect("first start applies migration 1");

    let started = Instant::now();
    let result = Application::<EditedMarker>::build(settings(&db, &prefix, &[])).await;
    let took = started.elapsed();
    let error = result.err().expect("an edited migration is refused");
    assert!(
        matches!(error, StartupError::Database(DbError::ChecksumMismatch { .. })),
        "{error:?}"
    );
    // A retried error would only be returned after DATABASE_STARTUP_RETRY (300 s).
    assert!(took < Duration::from_secs(5), "took {took:?}: the error was retried");
    eprintln!("refused in {took:.1?}: {error}");
}

/// A CA that signed nothing the test server presents.
const UNRELATED_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUDR+8Z6kHIQSdyDIWim2nCclYKvMwCgYIKoZIzj0EAwIw
JDEiMCAGA1UEAwwZdW5pbGluay10ZXN0LXVucmVsYXRlZC1jYTAgFw0yNjEyMDMw
NjQwMDRaGA8yMTI2MTEwOTA2NDAwNFowJDEiMCAGA1UEAwwZdW5pbGluay10ZXN0
LXVucmVsYXRlZC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABAD9J0fbq0mg
bb+9k2Y0aC/6jtCzSbroAUTaDrB6Nhr1u1lcoeZxEH3CUPWw3PtNkRsgVagmsgT/
HfE9uMQ4EmyjUzBRMB0GA1UdDgQWBBTD7AHDg7BfX4LQfZFwQfo5t3MrvTAfBgNV
HSMEGDAWgBTD7AHDg7BfX4LQfZFwQfo5t3MrvTAPBgNVHRMBAf8EBTADAQH/MAoG
CCqGSM49BAMCA0gAMEUCIQCY2YgBRhOqcI/VaniPnDKJ8seV1IXrLe9bRopR+m6X
2AIgecpbI6I99+wMRCYC9GJcQRmz8SxDQ+pgTKXn5bRm/ZY=
-----END CERTIFICATE-----
";

#[tokio::test]
async fn build_stops_at_once_on_a_tls_error() {
    let db = TestDatabase::create().await;
    let ca = std::env::temp_dir().join(format!("unilink-unrelated-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, UNRELATED_CA).expect("write the CA file");
    // verify-full with a CA that did not sign the server's certificate (or
    // against a server without TLS): a setting is wrong, waiting won't help.
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", db.url(), ca.display());

    let started = Instant::now();
    let result = Application::<Marker>::build(settings(&db, &unique_prefix(), &[("DATABASE_URL", &url)])).await;
    let took = started.elapsed();
    let _ = std::fs::remove_file(&ca);
    let error = result.err().expect("an unverifiable server is refused");
    assert!(matches!(error, StartupError::Database(DbError::Tls(_))), "{error:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}: the error was retried");
    eprintln!("refused in {took:.1?}: {error}");
}

#[tokio::test]
async fn build_does_not_wait_for_redis() {
    // fred reconnects in the background (no fail-fast, unbounded attempts):
    // a Redis that is down delays start-up by the first-connect wait only.
    let db = TestDatabase::create().await;
    let down = format!("redis://127.0.0.1:{}", closed_port());
    let started = Instant::now();
    let app = Application::<Marker>::build(settings(&db, &unique_prefix(), &[("REDIS_URL", &down)])).await;
    let took = started.elapsed();
    app.expect("start-up goes on while Redis is down");
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

/// Counts what the runtime does with a service's parts.
static BUILDS: AtomicUsize = AtomicUsize::new(0);
static WORKER_STARTED: AtomicUsize = AtomicUsize::new(0);
static WORKER_STOPPED: AtomicUsize = AtomicUsize::new(0);

/// A backend with one worker that records when it starts and stops.
struct WithWorker;

impl BackendService for WithWorker {
    const NAME: &'static str = "startup-worker";
    const SCHEMA: &'static str = "startup_worker";
    const MIGRATIONS: &'static [Migration] = &[];

    fn build(_: &Resources) -> Result<Built, StartupError> {
        BUILDS.fetch_add(1, Ordering::SeqCst);
        Ok(Built::new(Routes::default()).with_worker(|stop| async move {
            WORKER_STARTED.fetch_add(1, Ordering::SeqCst);
            stop.cancelled().await;
            WORKER_STOPPED.fetch_add(1, Ordering::SeqCst);
        }))
    }
}

#[tokio::test]
async fn a_service_is_built_once_and_its_workers_run_with_the_server() {
    let db = TestDatabase::create().await;
    let app = Application::<WithWorker>::build(settings(&db, &unique_prefix(), &[]))
        .await
        .expect("build");
    assert_eq!(BUILDS.load(Ordering::SeqCst), 1);
    assert_eq!(WORKER_STARTED.load(Ordering::SeqCst), 0, "workers wait for the server");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    eventually("the worker to start", Duration::from_secs(5), || async {
        (WORKER_STARTED.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(WORKER_STOPPED.load(Ordering::SeqCst), 0);
    stop.send(()).expect("the server is running");
    running.await.expect("server task").expect("clean stop");
    assert_eq!(
        WORKER_STOPPED.load(Ordering::SeqCst),
        1,
        "the worker ended with the server"
    );
    assert_eq!(BUILDS.load(Ordering::SeqCst), 1, "nothing was built twice");
}

//! Test harness shared by the integration tests of every crate.
//!
//! * [`TestDatabase::create`] makes a brand-new PostgreSQL database per test
//!   (dropped when the value is dropped), so tests run in parallel without
//!   seeing each other's rows.
//! * [`unique_prefix`] gives each test its own Redis key prefix.
//! * [`settings`] builds [`Settings`] pointing at both, with every listener on
//!   port 0.
//! * [`eventually`] polls a condition instead of sleeping for a fixed time.
//! * With the `fleet` feature: [`fleet`] runs the whole fleet in one test
//!   process, [`cluster`] runs it as real processes (two replicas of every
//!   service behind nginx) with faults to inject. Only the gateway's tests
//!   use them; the feature pulls in every service crate.
//!
//! The admin URL comes from `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), Redis from
//! `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); `scripts/test.sh`
//! makes sure both answer.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::NoTls;
use unilink_config::Settings;

/// The PostgreSQL URL tests use to create and drop their databases.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `RATE_LIMIT_WINDOW_SECONDS` in the fleet and cluster harnesses: a day,
/// so a test that counts requests against a limit does not see its window
/// reset (see [`away_from_a_rate_window_boundary`]).
pub const RATE_WINDOW_SECONDS: u64 = 86_400;

/// Waits until the next rate-limit window has begun if the current one
/// (windows of [`RATE_WINDOW_SECONDS`] are aligned to the Unix epoch) ends
/// within a minute, so a count is not reset mid-test. It waits in one run
/// in 1,440.
pub async fn away_from_a_rate_window_boundary() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let left = RATE_WINDOW_SECONDS - now % RATE_WINDOW_SECONDS;
    if left <= 60 {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// A database created for one test and dropped after it.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `unilink_test_<random>` on the test server.
    pub async fn create() -> TestDatabase {
        let name = format!("unilink_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_client().await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let url = with_database(&admin_database_url(), &name);
        TestDatabase { name, url }
    }

    /// Connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain client on this database (for assertions and fixtures).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name));
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Dropping needs async I/O; do it on a private runtime in a helper
        // thread so it works from inside or outside a Tokio runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_database_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn admin_client() -> tokio_postgres::Client {
    let url = admin_database_url();
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap_or_else(|e| {
        panic!("connecting to TEST_DATABASE_URL {url}: {e} (is PostgreSQL running? scripts/test.sh starts it)")
    });
    tokio::spawn(connection);
    client
}

/// Replaces the database name (the URL path) of a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Settings for a service under test: its own database and Redis prefix,
/// listeners on 127.0.0.1 port 0, short timeouts, plus `extra` overrides
/// (later entries win).
pub fn settings(db: &TestDatabase, redis_prefix: &str, extra: &[(&str, &str)]) -> Settings {
    let mut vars: Vec<(String, String)> = vec![
        ("ENVIRONMENT".into(), "test".into()),
        ("DATABASE_URL".into(), db.url().to_owned()),
        ("DATABASE_POOL_SIZE".into(), "4".into()),
        ("DATABASE_MAX_OVERFLOW".into(), "4".into()),
        ("DATABASE_CONNECT_TIMEOUT_SECONDS".into(), "2".into()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_KEY_PREFIX".into(), redis_prefix.to_owned()),
        ("GRPC_ADDR".into(), "127.0.0.1:0".into()),
        ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("GRPC_CONNECT_TIMEOUT_MS".into(), "500".into()),
        ("GRPC_REQUEST_TIMEOUT_MS".into(), "2000".into()),
        ("SHUTDOWN_GRACE_SECONDS".into(), "5".into()),
        ("LOG_LEVEL".into(), "warn".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::from_vars(vars).expect("test settings are valid")
}

/// A loopback address where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `check` every 25 ms until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "y"),
            "postgres://u:p@h/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5432", "z"), "postgres://h:5432/z");
    }
}

#[cfg(feature = "fleet")]
pub mod cluster;
pub mod faults;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod sentry;
pub mod smtp;
pub mod stores;

pub mod service {
    //! Starting services for a test: in-process on port 0, or as the real binary.

    use std::net::SocketAddr;
    use std::process::{Child, Stdio};
    use std::time::Duration;

    use tokio::sync::oneshot;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use unilink_config::Settings;
    use unilink_runtime::{Application, BackendService};

    /// A backend service running inside the test process.
    #[derive(Debug)]
    pub struct RunningService {
        pub grpc_addr: SocketAddr,
        pub http_port: u16,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), unilink_runtime::StartupError>>,
    }

    impl RunningService {
        /// `http://127.0.0.1:<port>`, the form `*_GRPC_URL` takes.
        pub fn url(&self) -> String {
            format!("http://{}", self.grpc_addr)
        }

        /// Triggers graceful shutdown and waits for it.
        pub async fn stop(mut self) -> Result<(), unilink_runtime::StartupError> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            (&mut self.task).await.expect("service task panicked")
        }
    }

    /// Builds and starts `S` with `settings`; returns once it reports `SERVING`.
    pub async fn spawn<S: BackendService>(settings: Settings) -> RunningService {
        let app = Application::<S>::build(settings)
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", S::NAME));
        let grpc_addr = app.grpc_addr();
        let http_port = app.http_port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        wait_serving(grpc_addr, Duration::from_secs(20)).await;
        RunningService {
            grpc_addr,
            http_port,
            stop: Some(stop),
            task,
        }
    }

    /// The overall `grpc.health.v1` status of the server at `addr`.
    pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1))
            .connect()
            .await
            .ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    /// Waits until the server at `addr` reports `SERVING`.
    pub async fn wait_serving(addr: SocketAddr, timeout: Duration) {
        crate::eventually(&format!("{addr} to report SERVING"), timeout, || async move {
            (health(addr, "").await == Some(ServingStatus::Serving)).then_some(())
        })
        .await
    }

    /// A service binary started as a child process; killed if dropped.
    #[derive(Debug)]
    pub struct ChildService {
        child: Option<Child>,
        /// Where its stdout (the JSON log) goes, when captured.
        log: Option<std::path::PathBuf>,
    }

    impl ChildService {
        /// Starts `binary` with exactly `env` (plus `PATH`); its stdout is discarded.
        pub fn start(binary: &str, env: &[(String, String)]) -> ChildService {
            ChildService::spawn(binary, env, None)
        }

        /// Starts `binary` like [`ChildService::start`], writing its stdout
        /// (the JSON log lines) to a temporary file read by
        /// [`ChildService::logs`]; the file is removed when the value is dropped.
        pub fn start_logged(binary: &str, env: &[(String, String)]) -> ChildService {
            let name = std::path::Path::new(binary)
                .file_name()
                .map_or_else(|| "service".into(), |n| n.to_string_lossy().into_owned());
            let path = std::env::temp_dir().join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
            ChildService::spawn(binary, env, Some(path))
        }

        fn spawn(binary: &str, env: &[(String, String)], log: Option<std::path::PathBuf>) -> ChildService {
            let stdout = match &log {
                Some(path) => Stdio::from(
                    std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display())),
                ),
                None => Stdio::null(),
            };
            let child = std::process::Command::new(binary)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(stdout)
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
            ChildService {
                child: Some(child),
                log,
            }
        }

        /// Everything the process wrote to stdout so far (empty unless
        /// started with [`ChildService::start_logged`]).
        pub fn logs(&self) -> String {
            self.log
                .as_ref()
                .and_then(|path| std::fs::read_to_string(path).ok())
                .unwrap_or_default()
        }

        /// The JSON log lines written so far (lines that are not JSON are skipped).
        pub fn log_lines(&self) -> Vec<serde_json::Value> {
            self.logs()
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect()
        }

        pub fn id(&self) -> u32 {
            self.child.as_ref().map_or(0, Child::id)
        }

        /// Sends SIGTERM and waits up to `timeout` for the exit; returns its status.
        pub async fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
            let mut child = self.child.take().expect("child present");
            let status = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -TERM failed");
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if let Some(status) = child.try_wait().expect("wait for child") {
                    return status;
                }
                if tokio::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    panic!("process {} did not exit within {timeout:?} of SIGTERM", child.id());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    impl Drop for ChildService {
        fn drop(&mut self) {
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(path) = &self.log {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// The path of a workspace binary (`unilink-signaling`, …) built next to
    /// the running test (`cargo nextest run --workspace` and `cargo test
    /// --workspace` build every binary).
    pub fn workspace_binary(name: &str) -> String {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> → target/<profile>/<name>
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test binary sits in target/<profile>/deps");
        let path = dir.join(name);
        assert!(
            path.exists(),
            "{} is not built; run the tests with --workspace (or cargo build --bins)",
            path.display()
        );
        path.to_string_lossy().into_owned()
    }

    /// Environment for a service binary under test: the test database and
    /// Redis prefix, both listeners on port 0 (the kernel picks free ports,
    /// so parallel tests never race for one), and a log filter that keeps the
    /// `serving` line that says where they are (see [`ServingChild::start`]).
    pub fn child_env(database_url: &str, redis_prefix: &str) -> Vec<(String, String)> {
        [
            ("ENVIRONMENT", "test".to_owned()),
            ("DATABASE_URL", database_url.to_owned()),
            ("DATABASE_POOL_SIZE", "2".to_owned()),
            ("DATABASE_MAX_OVERFLOW", "0".to_owned()),
            ("REDIS_URL", crate::redis_url()),
            ("REDIS_KEY_PREFIX", redis_prefix.to_owned()),
            ("GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SHUTDOWN_GRACE_SECONDS", "5".to_owned()),
            ("LOG_LEVEL", "warn,unilink_grpc::server=info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// How long a child process may take to start (the test machine may be busy).
    pub const CHILD_STARTUP: Duration = Duration::from_secs(90);

    impl ChildService {
        /// Waits for the first log line whose `message` is `message` and
        /// returns its address field `field`; panics at once if the process
        /// exits first, or after `timeout`. Needs [`ChildService::start_logged`].
        pub async fn logged_addr(&mut self, message: &str, field: &str, timeout: Duration) -> SocketAddr {
            self.try_logged_addr(message, field, timeout)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }

        /// [`ChildService::logged_addr`], with the failure as an error (a
        /// caller may retry: the process could not bind its port, say).
        pub async fn try_logged_addr(
            &mut self,
            message: &str,
            field: &str,
            timeout: Duration,
        ) -> Result<SocketAddr, String> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let found = self
                    .log_lines()
                    .into_iter()
                    .find(|l| l["message"] == message)
                    .and_then(|l| l[field].as_str()?.parse().ok());
                if let Some(addr) = found {
                    return Ok(addr);
                }
                if let Some(child) = self.child.as_mut()
                    && let Some(status) = child.try_wait().expect("wait for child")
                {
                    return Err(format!(
                        "process {} exited with {status} before logging {message:?}",
                        child.id()
                    ));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "timed out after {timeout:?} waiting for the log line {message:?} with its {field}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    /// A backend service binary running as a child process, and where it serves.
    #[derive(Debug)]
    pub struct ServingChild {
        pub process: ChildService,
        pub grpc: SocketAddr,
        pub http: SocketAddr,
    }

    impl ServingChild {
        /// Starts `binary` with `env` (built on [`child_env`]: listeners on
        /// port 0), reads the addresses it logs and waits for `SERVING`.
        pub async fn start(binary: &str, env: &[(String, String)]) -> ServingChild {
            let mut process = ChildService::start_logged(binary, env);
            let grpc = process.logged_addr("serving", "grpc_addr", CHILD_STARTUP).await;
            let http = process.logged_addr("serving", "http_addr", CHILD_STARTUP).await;
            wait_serving(grpc, CHILD_STARTUP).await;
            ServingChild { process, grpc, http }
        }

        /// `http://127.0.0.1:<grpc port>`, the form `*_GRPC_URL` takes.
        pub fn url(&self) -> String {
            format!("http://{}", self.grpc)
        }
    }

    /// Starts the real binary, waits for it to serve, sends SIGTERM and
    /// asserts a clean exit within `within`.
    pub async fn assert_stops_cleanly_on_sigterm(binary: &str, database_url: &str, within: Duration) {
        let env = child_env(database_url, &crate::unique_prefix());
        let child = ServingChild::start(binary, &env).await;
        let started = std::time::Instant::now();
        let status = child.process.terminate(within).await;
        assert!(status.success(), "{binary} exited with {status} after SIGTERM");
        assert!(started.elapsed() <= within, "took {:?}", started.elapsed());
        // The port is released.
        assert!(
            tokio::net::TcpStream::connect(child.grpc).await.is_err(),
            "{} still accepting after exit",
            child.grpc
        );
    }
}

//! PostgreSQL access shared by every UniLink service.
//!
//! * [`connect`] builds a deadpool pool whose connections have `search_path`
//!   set to the service's own schema, a statement timeout, and an application
//!   name, so a service's SQL never names (or reads) another service's schema.
//! * [`migrate`] applies the service's embedded [`Migration`]s in order, each in
//!   its own transaction, while holding a PostgreSQL advisory lock keyed by the
//!   schema; replicas starting together wait for each other instead of
//!   colliding. Applied migrations are recorded with a checksum in
//!   `<schema>.schema_migrations`; an edited migration is refused.
//! * [`read_pool`] is the pool for read-only queries: on the replica named by
//!   `DATABASE_READ_URL` (its sessions read-only) when set, otherwise the
//!   primary pool itself.
//! * [`ping`] is the readiness probe.
//! * [`QueryTimer`] times a repository call into the
//!   `db_query_duration_seconds{schema,op}` histogram (the alert on p95 DB
//!   latency reads it); [`record_pool_metrics`] exports the pool's gauges.

use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use unilink_config::DatabaseSettings;

pub mod tls;
pub use tls::{Endpoint, SslMode};
use unilink_errors::{ErrorCode, HasErrorCode};

pub use deadpool_postgres::{Client, GenericClient, Pool as PgPool, Transaction};
pub use tokio_postgres::{Row, error::SqlState, types::ToSql};
/// The UUID type stored in `uuid` columns.
pub use uuid::Uuid;

/// One embedded migration. `version`s start at 1 and increase by one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Failures talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// The TLS handshake failed (wrong CA, name mismatch, a server without
    /// TLS under `sslmode=require`…): a setting is wrong, retrying won't help.
    #[error("database TLS failed: {0}")]
    Tls(String),
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("migration {version} ({name}) of schema {schema} failed: {source}")]
    Migration {
        schema: String,
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {version} of schema {schema} was changed after it was applied (checksum {applied} != {embedded})"
    )]
    ChecksumMismatch {
        schema: String,
        version: i32,
        applied: String,
        embedded: String,
    },
    #[error("schema {schema} is at version {applied}, newer than this build knows ({known})")]
    SchemaTooNew { schema: String, applied: i32, known: i32 },
    #[error("could not take the migration lock of schema {0} within {1:?}")]
    LockTimeout(String, Duration),
}

impl DbError {
    /// The SQLSTATE of a database error, when PostgreSQL sent one.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            DbError::Postgres(e) => e.code(),
            DbError::Pool(deadpool_postgres::PoolError::Backend(e)) => e.code(),
            _ => None,
        }
    }

    /// Whether a unique constraint refused the write.
    pub fn is_unique_violation(&self) -> bool {
        self.sql_state() == Some(&SqlState::UNIQUE_VIOLATION)
    }
}

impl HasErrorCode for DbError {
    fn code(&self) -> ErrorCode {
        match self {
            DbError::Pool(_) | DbError::Timeout(_) => ErrorCode::Unavailable,
            DbError::Postgres(e) if e.is_closed() || e.code().is_none() => ErrorCode::Unavailable,
            DbError::Postgres(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => ErrorCode::Timeout,
            DbError::Postgres(_)
            | DbError::Config(_)
            | DbError::Tls(_)
            | DbError::Migration { .. }
            | DbError::ChecksumMismatch { .. }
            | DbError::SchemaTooNew { .. }
            | DbError::LockTimeout(..) => ErrorCode::Internal,
        }
    }
}

/// Checks that `schema` is a plain lower-case identifier, so it can be quoted into DDL.
fn check_schema(schema: &str) -> Result<(), DbError> {
    let mut chars = schema.chars();
    let ok = matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && schema.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(DbError::Config(format!("{schema:?} is not a valid schema name")))
    }
}

/// Which server a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Primary,
    /// `DATABASE_READ_URL`: sessions are read-only, so a query routed here by
    /// mistake fails instead of writing (on a replica it would fail anyway).
    ReadReplica,
}

impl Target {
    fn variable(self) -> &'static str {
        match self {
            Target::Primary => "DATABASE_URL",
            Target::ReadReplica => "DATABASE_READ_URL",
        }
    }
}

fn pg_endpoint(
    url: &str,
    settings: &DatabaseSettings,
    schema: &str,
    app: &str,
    target: Target,
) -> Result<Endpoint, DbError> {
    check_schema(schema)?;
    let mut endpoint = base_endpoint(url, settings, app, target)?;
    let read_only = if target == Target::ReadReplica {
        " -c default_transaction_read_only=on"
    } else {
        ""
    };
    endpoint.config.options(format!(
        "-c search_path={schema} -c statement_timeout={} -c idle_in_transaction_session_timeout=60000{read_only}",
        settings.statement_timeout.as_millis()
    ));
    Ok(endpoint)
}

/// `url` with its TLS, the connect deadline, `app` as the application name
/// and TCP keepalives: what every connection of a service shares.
fn base_endpoint(url: &str, settings: &DatabaseSettings, app: &str, target: Target) -> Result<Endpoint, DbError> {
    let mut endpoint = tls::endpoint(url, target.variable())?;
    endpoint
        .config
        .connect_timeout(settings.connect_timeout)
        .application_name(app)
        .keepalives(true);
    Ok(endpoint)
}

/// A connection of its own (not the pool's) to `DATABASE_URL`, with the
/// TLS it asks for, e.g. for `LISTEN`. Drive the returned connection.
pub async fn connect_direct(
    settings: &DatabaseSettings,
    app: &str,
) -> Result<(tokio_postgres::Client, DirectConnection), DbError> {
    let endpoint = base_endpoint(settings.url.expose(), settings, app, Target::Primary)?;
    let tls = endpoint.tls.clone();
    endpoint.config.connect(tls).await.map_err(|e| endpoint.explain(e))
}

/// The connection half of [`connect_direct`].
pub type DirectConnection =
    tokio_postgres::Connection<tokio_postgres::Socket, tls::RustlsStream<tokio_postgres::Socket>>;

/// Builds the pool of a service whose tables live in `schema`. Connections are
/// opened lazily; use [`ping`] to check the database is there.
pub fn connect(settings: &DatabaseSettings, schema: &str, app: &str) -> Result<Pool, DbError> {
    pool_for(settings.url.expose(), settings, schema, app, Target::Primary)
}

/// Builds a pool for the read replica (`DATABASE_READ_URL`), or for the
/// primary when no replica is configured; its sessions are read-only either
/// way. Prefer [`read_pool`], which shares the primary pool instead of
/// opening a second one when there is no replica.
pub fn connect_read(settings: &DatabaseSettings, schema: &str, app: &str) -> Result<Pool, DbError> {
    let url = settings.read_url.as_ref().unwrap_or(&settings.url);
    pool_for(url.expose(), settings, schema, app, Target::ReadReplica)
}

/// The pool read-only queries use: a (lazily connecting, read-only) pool on
/// `DATABASE_READ_URL` when it is set, else a clone of `primary`.
///
/// A replica lags behind the primary: use it for reads that may be a moment
/// old (profiles, discovery, history), never to read back a write just made
/// or for a check that guards a write.
pub fn read_pool(settings: &DatabaseSettings, primary: &Pool, schema: &str, app: &str) -> Result<Pool, DbError> {
    match &settings.read_url {
        Some(url) => pool_for(url.expose(), settings, schema, app, Target::ReadReplica),
        None => Ok(primary.clone()),
    }
}

fn pool_for(url: &str, settings: &DatabaseSettings, schema: &str, app: &str, target: Target) -> Result<Pool, DbError> {
    let endpoint = pg_endpoint(url, settings, schema, app, target)?;
    let manager = Manager::from_config(
        endpoint.config,
        endpoint.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.max_connections())
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// Runs `body` in one transaction on a connection from `pool`: commits
/// when it returns `Ok`, rolls back when it returns `Err` (the transaction
/// is dropped). Pool, begin and commit failures come back as `E` through
/// `From<DbError>`, so a core writes only its statements:
///
/// ```ignore
/// let call = unilink_db::transaction(&pool, async |tx| {
///     let row = tx.query_one("…", &[]).await.map_err(DbError::from)?;
///     Ok::<_, MyError>(row.get(0))
/// })
/// .await?;
/// ```
///
/// To keep what a failing body wrote (a failed-attempt counter, a revoked
/// token family), return `Ok(Err(e))`: it commits, and the caller flattens.
pub async fn transaction<T, E, F>(pool: &Pool, body: F) -> Result<T, E>
where
    F: AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
    E: From<DbError>,
{
    let mut client = pool.get().await.map_err(DbError::from)?;
    transaction_on(&mut client, body).await
}

/// [`transaction`] on a connection the caller already holds (when it runs
/// statements outside the transaction on the same connection first).
pub async fn transaction_on<T, E, F>(client: &mut Client, body: F) -> Result<T, E>
where
    F: AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
    E: From<DbError>,
{
    let tx = client.transaction().await.map_err(DbError::from)?;
    let value = body(&tx).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(value)
}

/// Checks out a connection and runs `SELECT 1`, within `timeout`.
pub async fn ping(pool: &Pool, timeout: Duration) -> Result<(), DbError> {
    let probe = async {
        let client = pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok::<_, DbError>(())
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| DbError::Timeout(timeout))?
}

/// Records the pool's size and use as gauges (`db_pool_connections{state}`).
pub fn record_pool_metrics(pool: &Pool, schema: &'static str) {
    let status = pool.status();
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!("db_pool_connections", "schema" => schema, "state" => "open").set(status.size as f64);
    metrics::gauge!("db_pool_connections", "schema" => schema, "state" => "in_use").set(in_use as f64);
    metrics::gauge!("db_pool_connections", "schema" => schema, "state" => "max").set(status.max_size as f64);
    metrics::gauge!("db_pool_waiting", "schema" => schema).set(status.waiting as f64);
}

/// Times one database operation (a repository call: a query or a short
/// transaction) into `db_query_duration_seconds{schema, op}` when dropped,
/// whether it succeeded or not. One line at the top of a repository method:
///
/// ```ignore
/// let _timer = unilink_db::QueryTimer::start("profile", "find");
/// ```
#[derive(Debug)]
#[must_use = "the timer records when it is dropped"]
pub struct QueryTimer {
    schema: &'static str,
    op: &'static str,
    started: Instant,
}

impl QueryTimer {
    pub fn start(schema: &'static str, op: &'static str) -> QueryTimer {
        QueryTimer {
            schema,
            op,
            started: Instant::now(),
        }
    }
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        metrics::histogram!("db_query_duration_seconds", "schema" => self.schema, "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call.
    pub applied: Vec<i32>,
    /// The schema's version afterwards.
    pub version: i32,
}

/// FNV-1a over the SQL text: stable across builds and platforms.
fn checksum(sql: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// How long [`migrate`] waits for another replica's migration to finish.
pub const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);

/// Applies `migrations` to `schema` on its own connection (not the pool's),
/// holding an advisory lock for the schema; the lock goes with the connection
/// even if this process dies half way.
pub async fn migrate(
    settings: &DatabaseSettings,
    schema: &str,
    migrations: &[Migration],
) -> Result<MigrationReport, DbError> {
    for (i, m) in migrations.iter().enumerate() {
        if m.version != i as i32 + 1 {
            return Err(DbError::Config(format!(
                "migrations of {schema} must be numbered 1, 2, 3…; found {} at position {}",
                m.version,
                i + 1
            )));
        }
    }
    let endpoint = pg_endpoint(
        settings.url.expose(),
        settings,
        schema,
        &format!("unilink-migrate-{schema}"),
        Target::Primary,
    )?;
    let (mut client, connection) = endpoint
        .config
        .connect(endpoint.tls.clone())
        .await
        .map_err(|e| endpoint.explain(e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection closed with an error");
        }
    });
    let result = migrate_locked(&mut client, schema, migrations).await;
    drop(client);
    let _ = driver.await;
    result
}

async fn migrate_locked(
    client: &mut tokio_postgres::Client,
    schema: &str,
    migrations: &[Migration],
) -> Result<MigrationReport, DbError> {
    let lock_key = format!("unilink-migrate:{schema}");
    let started = tokio::time::Instant::now();
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&lock_key])
            .await?;
        if row.get::<_, bool>(0) {
            break;
        }
        if started.elapsed() > MIGRATION_LOCK_WAIT {
            return Err(DbError::LockTimeout(schema.to_owned(), MIGRATION_LOCK_WAIT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::debug!(schema, "migration lock taken");

    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await?;
    let rows = client
        .query(
            &format!("SELECT version, checksum FROM \"{schema}\".schema_migrations ORDER BY version"),
            &[],
        )
        .await?;
    let mut version = 0;
    for row in &rows {
        let applied_version: i32 = row.get(0);
        let applied_sum: String = row.get(1);
        let Some(known) = migrations.get(applied_version as usize - 1) else {
            return Err(DbError::SchemaTooNew {
                schema: schema.to_owned(),
                applied: applied_version,
                known: migrations.len() as i32,
            });
        };
        let embedded = checksum(known.sql);
        if embedded != applied_sum {
            return Err(DbError::ChecksumMismatch {
                schema: schema.to_owned(),
                version: applied_version,
                applied: applied_sum,
                embedded,
            });
        }
        version = applied_version;
    }

    let mut applied = Vec::new();
    for m in migrations.iter().skip(version as usize) {
        let failed = |source| DbError::Migration {
            schema: schema.to_owned(),
            version: m.version,
            name: m.name,
            source,
        };
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
            .await?;
        tx.batch_execute(m.sql).await.map_err(failed)?;
        tx.execute(
            &format!("INSERT INTO \"{schema}\".schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"),
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(schema, version = m.version, name = m.name, "migration applied");
        applied.push(m.version);
        version = m.version;
    }
    client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_key])
        .await?;
    Ok(MigrationReport { applied, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema("auth").is_ok());
        assert!(check_schema("signaling_v2").is_ok());
        assert!(check_schema("Auth").is_err());
        assert!(check_schema("a;drop").is_err());
        assert!(check_schema("").is_err());
        assert!(check_schema("1abc").is_err());
    }

    #[test]
    fn checksum_is_stable() {
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_ne!(checksum("CREATE TABLE a()"), checksum("CREATE TABLE b()"));
    }
}

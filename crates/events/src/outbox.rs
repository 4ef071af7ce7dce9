//! The transactional outbox and its relay to Redis Streams.
//!
//! A producer writes each event into its schema's `outbox` table with
//! [`enqueue`], in the same transaction as the change it describes. The
//! [`OutboxRelay`] (one per replica; `FOR UPDATE SKIP LOCKED` keeps two
//! relays from publishing one row at once) appends unpublished rows to
//! `events:<producer>` in `seq` order and sets their `published_at`.
//! Published rows are kept for [`RETENTION`], then deleted.
//!
//! # When Redis loses the stream
//!
//! Redis keeps nothing on disk: after a restart every entry consumers had not
//! read yet is gone, while the outbox says it was published. So the relay
//! keeps a marker key next to each stream, `outbox:mark:<stream>` (see
//! [`marker_key`]), which says "this Redis holds what the outbox published".
//! Every append is conditional on it (`XADD` inside a script that first
//! checks the marker: still one round trip), so nothing new goes into a
//! stream Redis lost ahead of what it lost. The relay also looks for the
//! marker at start, then at most every [`MARKER_CHECK_EVERY`] while idle, and
//! before publishing again after any Redis error. When the marker is missing,
//! Redis lost the stream (or never had it) and the relay replays
//! ([`OutboxRelay::check_stream`]):
//!
//! 1. it claims the replay in Redis (`outbox:replay:<stream>`, `SET NX` with
//!    a random token, [`REPLAY_CLAIM_TTL`]), atomically with a second look
//!    at the marker, so of two replicas that both saw it missing only one
//!    replays (the other finds the claim or, later, the marker);
//! 2. it waits for relays publishing right now (it locks the unpublished
//!    rows) and marks every retained published row unpublished again
//!    (`published_at = NULL`); the normal loop then republishes them in
//!    `seq` order, together with the new ones;
//! 3. only then it sets the marker, and only if its claim is still there:
//!    if Redis restarted again in between, the claim went with it, the
//!    marker stays unset and the next check replays again.
//!
//! Resetting before marking means a crash between the two replays again
//! rather than losing anything. A replay logs one WARN line with the number
//! of rows and counts `outbox_replays_total{schema}`; one that finds no
//! retained rows (a new Redis with an empty outbox, a first start) only sets
//! the marker. Republished rows are counted again in `outbox_published_total`
//! and their retention starts again from the republication.
//!
//! Consumer groups (recreated at id 0 on the new stream) then read every
//! retained event again, with its original id and `occurred_at`: the ones
//! Redis lost for the first time, the others a second time. So handlers must
//! be idempotent by event id (the consumer loop already delivers at least
//! once), and those whose effect only matters for a short while (call
//! pushes) drop old events.
//!
//! # When Redis fails over
//!
//! With Sentinel, a replica takes over when the master dies; replication is
//! asynchronous, so the new master may lack the last entries the old one
//! accepted (the marker, older, is there). The relay notes the server's run
//! id whenever it finds the marker; when it changes with the marker intact,
//! it publishes the rows of the last [`FAILOVER_REPLAY_WINDOW`] again
//! (`outbox_failover_replays_total{schema}`).
//!
//! What this does not cover: rows already deleted after [`RETENTION`]; a
//! replay of more than [`STREAM_MAX_LEN`] rows (the stream is trimmed to
//! about that many entries, so a consumer far behind could miss the oldest
//! ones); a
//! stream evicted or deleted from a Redis that kept its marker (nothing in
//! UniLink deletes streams; run Redis with `maxmemory-policy noeviction`, as
//! the compose file does); and a Redis that restarts from an append-only file
//! missing its last second of writes (the marker survives, the newest entries
//! may not).

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use unilink_bus::{BusError, LuaScript, Redis};
use unilink_db::{DbError, PgPool, Transaction, Uuid};

use crate::Event;

/// The outbox table, for a producer's migrations (it lives in the producer's schema).
pub const MIGRATION_SQL: &str = "
CREATE TABLE outbox (
    seq          bigserial PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,
    event_type   text NOT NULL,
    payload      jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL,
    traceparent  text,
    published_at timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
";

/// The `NOTIFY` channel the relay of a schema listens on is this plus the schema.
const CHANNEL_PREFIX: &str = "unilink_outbox_";
/// Events kept after publication, so a Redis that lost its data can be refilled.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Stream length kept in Redis (approximate trimming).
pub const STREAM_MAX_LEN: u64 = 100_000;

/// Records `event` in the outbox inside the caller's transaction; it is
/// published once the transaction commits.
pub async fn enqueue(tx: &Transaction<'_>, event: &Event) -> Result<(), DbError> {
    // Hot path (every event): prepared once per connection, not parsed and
    // planned per call.
    let insert = tx
        .prepare_cached(
            "INSERT INTO outbox (id, event_type, payload, occurred_at, traceparent) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &event.id.as_uuid(),
            &event.event_type,
            &event.payload,
            &event.occurred_at,
            &event.traceparent,
        ],
    )
    .await?;
    let notify = tx
        .prepare_cached("SELECT pg_notify($1 || current_schema(), '')")
        .await?;
    tx.execute(&notify, &[&CHANNEL_PREFIX]).await?;
    Ok(())
}

/// Appends `event` to `stream` as the relay does, but without the marker
/// check: for tests and tools that stand in for a producer's relay.
pub async fn append(redis: &Redis, stream: &str, event: &Event) -> Result<String, BusError> {
    let fields = event.to_fields();
    redis.append(stream, &as_pairs(&fields), STREAM_MAX_LEN).await
}

/// Stream fields as the Redis client takes them.
fn as_pairs<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Rows published per transaction.
const BATCH: i64 = 200;
/// How often the relay measures its backlog (`outbox_pending`, `outbox_lag_seconds`).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// After a failover, rows published this recently are published again:
/// far more than Redis's replication lag, so whatever the old master had
/// not passed on is covered.
pub const FAILOVER_REPLAY_WINDOW: Duration = Duration::from_secs(60);

/// How often the relay looks for the stream's marker (see the module docs).
pub const MARKER_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a replica's claim on a replay lasts if it dies half way; another
/// replica replays once it expires.
pub const REPLAY_CLAIM_TTL: Duration = Duration::from_secs(60);
/// Server-side deadline of each of the replay's two statements (instead of
/// the pool's shorter one: a day of events can take a while to update).
/// Both together fit in [`REPLAY_CLAIM_TTL`].
const REPLAY_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Key (before the Redis prefix) of the marker that says Redis holds what the
/// outbox published to `stream`.
pub fn marker_key(stream: &str) -> String {
    format!("outbox:mark:{stream}")
}

/// Key (before the Redis prefix) of the claim a replica holds while it replays
/// the outbox into `stream`.
pub fn replay_claim_key(stream: &str) -> String {
    format!("outbox:replay:{stream}")
}

/// KEYS: marker, claim. ARGV: token, claim TTL in ms. The marker is there
/// → `marked`; else the claim is taken → `claimed`, or held by someone else → `busy`.
static CHECK_OR_CLAIM: LuaScript = LuaScript::new(
    r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'marked' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'claimed' end
return 'busy'
"#,
);

/// KEYS: marker, claim. ARGV: token, marker value. Sets the marker and drops
/// the claim if the claim is still ours (1); else leaves both alone (0).
static MARK_IF_CLAIMED: LuaScript = LuaScript::new(
    r#"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"#,
);

/// KEYS: claim. ARGV: token. Drops the claim if it is ours.
static RELEASE_CLAIM: LuaScript = LuaScript::new(
    r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
);

/// What [`OutboxRelay::check_stream`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCheck {
    /// The marker is there: Redis holds what was published.
    Intact,
    /// The marker was missing: `rows` published rows were marked unpublished
    /// again (the relay republishes them), then the marker was set.
    Replayed { rows: u64 },
    /// The marker is missing and another relay is replaying right now.
    ReplayingElsewhere,
    /// `rows` rows were marked unpublished, but Redis lost the claim before
    /// the marker could be set (it restarted again): the next check replays
    /// again.
    Interrupted { rows: u64 },
}

/// Publishes outbox rows to `events:<producer>`, oldest first, and refills
/// the stream when Redis lost it (see the module docs).
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    pub db: PgPool,
    pub redis: Redis,
    /// Stream name before the Redis prefix, e.g. `events:auth`.
    pub stream: String,
    /// `DATABASE_URL` and its TLS, for the listening connection.
    pub database: unilink_config::DatabaseSettings,
    /// The producer's schema (the pool's search path).
    pub schema: &'static str,
}

impl OutboxRelay {
    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let channel = format!("{CHANNEL_PREFIX}{}", self.schema);
        let listener = tokio::spawn(listen(self.database.clone(), channel, wake.clone(), stop.clone()));
        let mut last_cleanup = tokio::time::Instant::now();
        let mut last_lag: Option<tokio::time::Instant> = None;
        // When the marker was last found (or set); `None`: look before publishing.
        let mut marker_seen: Option<tokio::time::Instant> = None;
        let mut check_failing = false;
        // The Redis server (its run id) the stream was last found intact on.
        let mut server: Option<String> = None;
        while !stop.is_cancelled() {
            // Go round again at once (more rows, or a marker to check now).
            let mut again = false;
            if marker_seen.is_none_or(|at| at.elapsed() >= MARKER_CHECK_EVERY) {
                marker_seen = None;
                match self.check_stream().await {
                    Ok(StreamCheck::Intact | StreamCheck::Replayed { .. }) => {
                        marker_seen = Some(tokio::time::Instant::now());
                        check_failing = false;
                        match self.follow_server(server.as_deref()).await {
                            Ok(now) => server = Some(now),
                            Err(e) => {
                                tracing::warn!(stream = %self.stream, error = %e, "outbox relay cannot tell which redis it talks to; checking again");
                                marker_seen = None;
                            }
                        }
                    }
                    // Wait for the marker before publishing.
                    Ok(StreamCheck::ReplayingElsewhere | StreamCheck::Interrupted { .. }) => check_failing = false,
                    Err(e) => {
                        // Once per outage, not every round while Redis is down.
                        if check_failing {
                            tracing::debug!(stream = %self.stream, error = %e, "outbox relay cannot check the stream's marker");
                        } else {
                            tracing::warn!(stream = %self.stream, error = %e, "outbox relay cannot check the stream's marker; retrying");
                        }
                        check_failing = true;
                    }
                }
            }
            if marker_seen.is_some() {
                match self.publish_batch(BATCH).await {
                    // A short batch took every row there was: rows committed
                    // since then have notified, and wake this loop.
                    Ok(n) => again = n as i64 >= BATCH,
                    Err(RelayError::NotMarked) => {
                        tracing::debug!(stream = %self.stream, "stream marker gone; checking it before publishing more");
                        marker_seen = None;
                        again = true;
                    }
                    Err(e) => {
                        if matches!(e, RelayError::Redis(_)) {
                            marker_seen = None;
                        }
                        tracing::warn!(stream = %self.stream, error = %e, "outbox relay failed; retrying");
                    }
                }
            }
            if last_lag.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
                last_lag = Some(tokio::time::Instant::now());
                if let Err(e) = self.record_lag().await {
                    tracing::debug!(error = %e, "outbox lag not measured");
                }
            }
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = tokio::time::Instant::now();
                if let Err(e) = self.cleanup().await {
                    tracing::warn!(error = %e, "outbox cleanup failed");
                }
            }
            if !again {
                // Woken by NOTIFY at commit; the timeout covers lost notifications and a
                // Redis that is down.
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
        let _ = listener.await;
    }

    /// Publishes up to `limit` rows; returns how many. Appends only while the
    /// stream's marker exists (checked by Redis with each append, in the same
    /// round trip). A Redis failure or a missing marker is an error once the
    /// rows published before it are recorded.
    pub async fn publish_batch(&self, limit: i64) -> Result<usize, RelayError> {
        let mut client = self.db.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let select = tx
            .prepare_cached(
                "SELECT seq, id, event_type, payload, occurred_at, traceparent FROM outbox
                 WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
            )
            .await
            .map_err(DbError::from)?;
        let rows = tx.query(&select, &[&limit]).await.map_err(DbError::from)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let marker = marker_key(&self.stream);
        let mut done: Vec<i64> = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in &rows {
            let event = Event {
                id: row.get::<_, Uuid>("id").into(),
                event_type: row.get("event_type"),
                occurred_at: row.get("occurred_at"),
                payload: row.get("payload"),
                traceparent: row.get("traceparent"),
            };
            let fields = event.to_fields();
            match self
                .redis
                .append_if_exists(&marker, &self.stream, &as_pairs(&fields), STREAM_MAX_LEN)
                .await
            {
                Ok(Some(_)) => done.push(row.get("seq")),
                // Keep what was published; the rest waits for the next round.
                Ok(None) => {
                    failure = Some(RelayError::NotMarked);
                    break;
                }
                Err(e) => {
                    failure = Some(RelayError::Redis(e));
                    break;
                }
            }
        }
        if !done.is_empty() {
            let update = tx
                .prepare_cached("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
                .await
                .map_err(DbError::from)?;
            tx.execute(&update, &[&done]).await.map_err(DbError::from)?;
        }
        tx.commit().await.map_err(DbError::from)?;
        metrics::counter!("outbox_published_total", "schema" => self.schema).increment(done.len() as u64);
        match failure {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }

    /// Looks for the stream's marker and, when it is missing, replays the
    /// retained rows (see the module docs). The run loop calls this at start,
    /// about every [`MARKER_CHECK_EVERY`] and after Redis errors.
    pub async fn check_stream(&self) -> Result<StreamCheck, RelayError> {
        let marker = self.redis.key(&marker_key(&self.stream));
        let claim = self.redis.key(&replay_claim_key(&self.stream));
        let token = Uuid::new_v4().to_string();
        let found = self
            .redis
            .run(
                &CHECK_OR_CLAIM,
                vec![marker.clone(), claim.clone()],
                vec![token.clone(), REPLAY_CLAIM_TTL.as_millis().to_string()],
            )
            .await?;
        match found.first().and_then(|v| v.as_deref()) {
            Some("marked") => return Ok(StreamCheck::Intact),
            Some("busy") => {
                tracing::debug!(stream = %self.stream, "another relay is replaying the outbox");
                return Ok(StreamCheck::ReplayingElsewhere);
            }
            _ => {} // "claimed"
        }
        let rows = match self.mark_all_unpublished().await {
            Ok(rows) => rows,
            Err(e) => {
                // Let the next check (ours or another replica's) claim again at once.
                let _ = self.redis.run(&RELEASE_CLAIM, vec![claim], vec![token]).await;
                return Err(e.into());
            }
        };
        let value = format!("{} {}", self.schema, chrono::Utc::now().to_rfc3339());
        let marked = match self
            .redis
            .run(
                &MARK_IF_CLAIMED,
                vec![marker, claim.clone()],
                vec![token.clone(), value],
            )
            .await
        {
            Ok(marked) => marked,
            Err(e) => {
                // The rows are reset; the next check marks (or replays again).
                let _ = self.redis.run(&RELEASE_CLAIM, vec![claim], vec![token]).await;
                return Err(e.into());
            }
        };
        if marked.first().and_then(|v| v.as_deref()) != Some("1") {
            tracing::warn!(stream = %self.stream, rows, "redis lost the replay claim before the stream was marked; replaying again");
            return Ok(StreamCheck::Interrupted { rows });
        }
        if rows > 0 {
            tracing::warn!(stream = %self.stream, schema = self.schema, rows, "redis lost the event stream; replaying the retained outbox");
            metrics::counter!("outbox_replays_total", "schema" => self.schema).increment(1);
        } else {
            tracing::info!(stream = %self.stream, "event stream marked; no retained outbox rows to replay");
        }
        Ok(StreamCheck::Replayed { rows })
    }

    /// After a failover (the stream is intact but on another server: a
    /// replica promoted by Sentinel), the new master may miss the last
    /// writes the old one had not replicated yet: the rows published in the
    /// last [`FAILOVER_REPLAY_WINDOW`] are published again (consumers skip
    /// what they already had, by event id). Returns the server's run id.
    async fn follow_server(&self, before: Option<&str>) -> Result<String, RelayError> {
        let now = self.redis.server_id().await?;
        if let Some(before) = before
            && before != now
        {
            let rows = self.mark_unpublished(Some(FAILOVER_REPLAY_WINDOW)).await?;
            tracing::warn!(
                stream = %self.stream,
                schema = self.schema,
                rows,
                "redis is another server now (a failover); publishing the last {}s of events again",
                FAILOVER_REPLAY_WINDOW.as_secs()
            );
            metrics::counter!("outbox_failover_replays_total", "schema" => self.schema).increment(1);
        }
        Ok(now)
    }

    /// Marks every published row unpublished again, once the relays
    /// publishing right now have committed (their rows are reset too).
    async fn mark_all_unpublished(&self) -> Result<u64, DbError> {
        self.mark_unpublished(None).await
    }

    /// Like [`Self::mark_all_unpublished`], for the rows published within
    /// `window` only (or all of them).
    async fn mark_unpublished(&self, window: Option<Duration>) -> Result<u64, DbError> {
        let mut client = self.db.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            REPLAY_STATEMENT_TIMEOUT.as_millis()
        ))
        .await?;
        // A relay between XADD (possibly to the Redis that is gone) and
        // `published_at = now()` holds these row locks: wait for it, so that
        // the UPDATE below, with a snapshot taken after its commit, resets
        // what it published.
        tx.execute(
            "SELECT seq FROM outbox WHERE published_at IS NULL ORDER BY seq FOR UPDATE",
            &[],
        )
        .await?;
        let rows = match window {
            None => {
                tx.execute(
                    "UPDATE outbox SET published_at = NULL WHERE published_at IS NOT NULL",
                    &[],
                )
                .await?
            }
            Some(window) => {
                let window = format!("{} milliseconds", window.as_millis());
                tx.execute(
                    "UPDATE outbox SET published_at = NULL WHERE published_at > now() - $1::text::interval",
                    &[&window],
                )
                .await?
            }
        };
        tx.commit().await?;
        Ok(rows)
    }

    async fn record_lag(&self) -> Result<(), DbError> {
        let client = self.db.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(occurred_at)), 0)::float8
                 FROM outbox WHERE published_at IS NULL",
                &[],
            )
            .await?;
        metrics::gauge!("outbox_pending", "schema" => self.schema).set(row.get::<_, i64>(0) as f64);
        metrics::gauge!("outbox_lag_seconds", "schema" => self.schema).set(row.get::<_, f64>(1));
        Ok(())
    }

    async fn cleanup(&self) -> Result<u64, DbError> {
        let client = self.db.get().await?;
        let retention = format!("{} seconds", RETENTION.as_secs());
        Ok(client
            .execute(
                "DELETE FROM outbox WHERE published_at < now() - $1::text::interval",
                &[&retention],
            )
            .await?)
    }
}

/// Why a relay round failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] BusError),
    /// The stream's marker is missing: Redis lost the stream, which must be
    /// refilled ([`OutboxRelay::check_stream`]) before anything new goes in.
    #[error("the stream's marker is missing (redis lost the stream)")]
    NotMarked,
}

/// Keeps a `LISTEN` connection open and pokes `wake` on every notification;
/// reconnects after errors until `stop`.
async fn listen(
    database: unilink_config::DatabaseSettings,
    channel: String,
    wake: std::sync::Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        match unilink_db::connect_direct(&database, "unilink-outbox-listener").await {
            Ok((client, mut connection)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN {channel}")).await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The LISTEN command is driven by polling the connection below.
                let mut listening = Box::pin(listening);
                let mut listened = false;
                loop {
                    tokio::select! {
                        result = &mut listening, if !listened => {
                            listened = true;
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "LISTEN failed");
                                break;
                            }
                            wake.notify_one();
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "outbox listener connection failed");
                                break;
                            }
                            None => break,
                        },
                        _ = stop.cancelled() => return,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "outbox listener cannot connect"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

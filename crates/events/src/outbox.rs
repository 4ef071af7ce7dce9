//! The transactional outbox and its relay to Redis Streams.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
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
    tx.execute(
        "INSERT INTO outbox (id, event_type, payload, occurred_at, traceparent) VALUES ($1, $2, $3, $4, $5)",
        &[
            &event.id.as_uuid(),
            &event.event_type,
            &event.payload,
            &event.occurred_at,
            &event.traceparent,
        ],
    )
    .await?;
    tx.execute("SELECT pg_notify($1 || current_schema(), '')", &[&CHANNEL_PREFIX])
        .await?;
    Ok(())
}

/// Publishes outbox rows to `events:<producer>`, oldest first.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    pub db: PgPool,
    pub redis: Redis,
    /// Stream name before the Redis prefix, e.g. `events:auth`.
    pub stream: String,
    /// `DATABASE_URL`, for the listening connection.
    pub listen_url: String,
    /// The producer's schema (the pool's search path).
    pub schema: &'static str,
}

impl OutboxRelay {
    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let channel = format!("{CHANNEL_PREFIX}{}", self.schema);
        let listener = tokio::spawn(listen(self.listen_url.clone(), channel, wake.clone(), stop.clone()));
        let mut last_cleanup = tokio::time::Instant::now();
        while !stop.is_cancelled() {
            let published = match self.publish_batch(200).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %e, "outbox relay failed; retrying");
                    0
                }
            };
            if let Err(e) = self.record_lag().await {
                tracing::debug!(error = %e, "outbox lag not measured");
            }
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = tokio::time::Instant::now();
                if let Err(e) = self.cleanup().await {
                    tracing::warn!(error = %e, "outbox cleanup failed");
                }
            }
            if published == 0 {
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

    /// Publishes up to `limit` rows; returns how many.
    pub async fn publish_batch(&self, limit: i64) -> Result<usize, RelayError> {
        let mut client = self.db.get().await.map_err(DbError::from)?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let rows = tx
            .query(
                "SELECT seq, id, event_type, payload, occurred_at, traceparent FROM outbox
                 WHERE published_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await
            .map_err(DbError::from)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut done: Vec<i64> = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = Event {
                id: row.get::<_, Uuid>("id").into(),
                event_type: row.get("event_type"),
                occurred_at: row.get("occurred_at"),
                payload: row.get("payload"),
                traceparent: row.get("traceparent"),
            };
            let fields = event.to_fields();
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            if let Err(e) = self.redis.append(&self.stream, &pairs, STREAM_MAX_LEN).await {
                // Keep what was published; the rest waits for the next round.
                tracing::warn!(stream = %self.stream, error = %e, "publishing to the stream failed");
                break;
            }
            done.push(row.get("seq"));
        }
        if !done.is_empty() {
            tx.execute("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)", &[&done])
                .await
                .map_err(DbError::from)?;
        }
        tx.commit().await.map_err(DbError::from)?;
        metrics::counter!("outbox_published_total", "schema" => self.schema).increment(done.len() as u64);
        Ok(done.len())
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
}

/// Keeps a `LISTEN` connection open and pokes `wake` on every notification;
/// reconnects after errors until `stop`.
async fn listen(url: String, channel: String, wake: std::sync::Arc<tokio::sync::Notify>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match tokio_postgres::connect(&url, NoTls).await {
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

//! The at-least-once consumer loop.
//!
//! Reads a stream through a consumer group and hands each [`Event`] to a
//! handler; acknowledges only when the handler succeeded. A failed event stays
//! pending and is retried with exponential backoff (capped); events that a dead
//! consumer left pending for longer than `EVENTS_RECLAIM_IDLE_SECONDS`
//! ([`RedisSettings::stream_reclaim_idle`](unilink_config::RedisSettings))
//! are taken over.
//! Handlers must be idempotent (by event id): an event can arrive twice.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use unilink_bus::{Redis, StreamConsumer, StreamEntry};

use crate::Event;

/// How often the pending and lag gauges are read from Redis.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// First retry delay; doubled per failure up to `EVENTS_MAX_BACKOFF_SECONDS`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// What a handler says about an event it could not process.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (the SMTP server is down, the database is unreachable…).
    #[error("retryable: {0}")]
    Retry(String),
    /// The event can never be processed; it is acknowledged and logged.
    #[error("rejected: {0}")]
    Reject(String),
}

/// Where to read from.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Stream name before the Redis prefix, e.g. `events:auth`.
    pub stream: String,
    /// Consumer group, e.g. `notification`.
    pub group: String,
    /// This replica's consumer name (unique per process).
    pub consumer: String,
}

struct Retry {
    attempts: u32,
    next: Instant,
}

/// Runs the loop until `stop` is cancelled.
pub async fn run<H, Fut>(redis: Redis, subscription: Subscription, handler: H, stop: CancellationToken)
where
    H: Fn(Event) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    let consumer = loop {
        match StreamConsumer::join(
            &redis,
            &subscription.stream,
            &subscription.group,
            &subscription.consumer,
        )
        .await
        {
            Ok(consumer) => break consumer,
            Err(e) => {
                tracing::warn!(stream = %subscription.stream, error = %e, "cannot join consumer group; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    let mut retries: HashMap<String, Retry> = HashMap::new();
    let reclaim_idle = redis.settings().stream_reclaim_idle;
    let max_backoff = redis.settings().stream_max_backoff;
    let mut last_reclaim = Instant::now() - reclaim_idle;
    let mut last_gauges = Instant::now() - GAUGES_EVERY;
    while !stop.is_cancelled() {
        let mut batch: Vec<StreamEntry> = Vec::new();
        // 1. Our own failed entries whose backoff has passed.
        let now = Instant::now();
        if retries.values().any(|r| r.next <= now) {
            match consumer.read_own_pending(100).await {
                Ok(pending) => {
                    let pending_ids: std::collections::HashSet<&str> = pending.iter().map(|e| e.id.as_str()).collect();
                    retries.retain(|id, _| pending_ids.contains(id.as_str()));
                    batch.extend(
                        pending
                            .into_iter()
                            .filter(|e| retries.get(&e.id).is_none_or(|r| r.next <= now)),
                    );
                }
                Err(e) => tracing::warn!(error = %e, "reading pending entries failed"),
            }
        }
        // 2. Entries a dead consumer left behind.
        if last_reclaim.elapsed() >= reclaim_idle / 2 {
            last_reclaim = Instant::now();
            match consumer.claim_stale(reclaim_idle, 100).await {
                Ok(claimed) => {
                    if !claimed.is_empty() {
                        tracing::info!(count = claimed.len(), stream = %subscription.stream, "reclaimed stale entries");
                    }
                    batch.extend(claimed.into_iter().filter(|e| !e.fields.is_empty()));
                }
                Err(e) => tracing::warn!(error = %e, "reclaiming stale entries failed"),
            }
        }
        // 3. New entries (blocking briefly when there is nothing else to do).
        let block = if batch.is_empty() {
            Duration::from_millis(1000)
        } else {
            Duration::from_millis(1)
        };
        let read = tokio::select! {
            read = consumer.read(64, block) => read,
            _ = stop.cancelled() => break,
        };
        match read {
            Ok(entries) => batch.extend(entries),
            Err(e) => {
                tracing::warn!(stream = %subscription.stream, error = %e, "reading the stream failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => break,
                }
                // The group may be gone if Redis lost its data.
                let _ = consumer.ensure_group().await;
                continue;
            }
        }

        let mut seen = std::collections::HashSet::new();
        for entry in batch {
            if !seen.insert(entry.id.clone()) {
                continue;
            }
            let outcome = match Event::from_fields(&entry.fields) {
                Ok(event) => {
                    let span = tracing::info_span!(
                        "event.consume",
                        event.id = %event.id,
                        event.r#type = %event.event_type,
                        trace_id = tracing::field::Empty,
                    );
                    unilink_telemetry::adopt_remote_parent(&span, &event.trace_headers());
                    handler(event).instrument(span).await
                }
                Err(e) => Err(HandlerError::Reject(e.to_string())),
            };
            match outcome {
                Ok(()) => {
                    retries.remove(&entry.id);
                    ack(&consumer, &entry.id).await;
                }
                Err(HandlerError::Reject(reason)) => {
                    tracing::error!(entry = %entry.id, reason, "event rejected; acknowledging it so it does not block the stream");
                    metrics::counter!("events_rejected_total", "stream" => subscription.stream.clone()).increment(1);
                    retries.remove(&entry.id);
                    ack(&consumer, &entry.id).await;
                }
                Err(HandlerError::Retry(reason)) => {
                    let retry = retries.entry(entry.id.clone()).or_insert(Retry {
                        attempts: 0,
                        next: Instant::now(),
                    });
                    retry.attempts += 1;
                    let delay = FIRST_BACKOFF
                        .saturating_mul(2u32.saturating_pow(retry.attempts - 1))
                        .min(max_backoff);
                    retry.next = Instant::now() + delay;
                    tracing::warn!(entry = %entry.id, attempts = retry.attempts, ?delay, reason, "event failed; will retry");
                    metrics::counter!("events_retried_total", "stream" => subscription.stream.clone()).increment(1);
                }
            }
        }
        if last_gauges.elapsed() < GAUGES_EVERY {
            continue;
        }
        last_gauges = Instant::now();
        if let Ok(pending) = consumer.pending_count().await {
            metrics::gauge!("stream_consumer_pending", "stream" => subscription.stream.clone(), "group" => subscription.group.clone())
                .set(pending as f64);
        }
        // Entries not read by the group yet: how far behind the consumers are.
        if let Ok(Some(lag)) = consumer.lag().await {
            metrics::gauge!("stream_consumer_lag", "stream" => subscription.stream.clone(), "group" => subscription.group.clone())
                .set(lag as f64);
        }
    }
    consumer.close().await;
}

async fn ack(consumer: &StreamConsumer, id: &str) {
    if let Err(e) = consumer.ack(id).await {
        // Not acknowledged: it will be redelivered, and the idempotent handler skips it.
        tracing::warn!(entry = id, error = %e, "acknowledging failed");
    }
}

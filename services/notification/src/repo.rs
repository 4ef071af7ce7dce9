//! SQL on the `notification` schema (the pool's `search_path`).

use unilink_db::{DbError, PgPool, Row, Uuid};
use unilink_domain::EventId;

use crate::domain::{Delivery, DeliveryStatus};
use crate::error::NotificationError;

/// A delivery as its row holds it.
fn delivery_from_row(row: &Row) -> Result<Delivery, NotificationError> {
    let event_id = EventId::from(row.get::<_, Uuid>("event_id"));
    let status: String = row.get("status");
    Ok(Delivery {
        event_id,
        event_type: row.get("event_type"),
        channel: row.get("channel"),
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| NotificationError::CorruptStatus(event_id.to_string(), status))?,
        attempts: row.get("attempts"),
        created_at: row.get("created_at"),
        delivered_at: row.get("delivered_at"),
    })
}

#[derive(Debug, Clone)]
pub struct DeliveryRepository {
    db: PgPool,
}

impl DeliveryRepository {
    pub fn new(db: PgPool) -> Self {
        DeliveryRepository { db }
    }

    pub async fn find(&self, event_id: EventId) -> Result<Option<Delivery>, NotificationError> {
        let _timer = unilink_db::QueryTimer::start("notification", "find");
        let client = self.db.get().await.map_err(DbError::from)?;
        let row = client
            .query_opt(
                "SELECT event_id, event_type, channel, status, attempts, created_at, delivered_at
                 FROM deliveries WHERE event_id = $1",
                &[&event_id.as_uuid()],
            )
            .await
            .map_err(DbError::from)?;
        row.as_ref().map(delivery_from_row).transpose()
    }
}

/// The ledger row a delivery starts from.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub event_id: EventId,
    pub event_type: &'a str,
    pub channel: &'a str,
    pub recipient: Option<&'a str>,
}

/// What [`DeliveryRepository::deliver_once`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Sent now and recorded as delivered.
    Delivered,
    /// The ledger says it was delivered before: nothing was sent.
    AlreadyDelivered,
    /// Another consumer holds the row (it is sending right now): try later.
    InProgress,
    /// Sending failed; the attempt and its error were recorded. Try later.
    Failed(String),
    /// Given up, now or earlier: the failure was permanent (the server
    /// refused the mail for good) or this was the last allowed attempt, or
    /// the ledger already says `failed`. The row stays `failed`; nothing will
    /// be sent for this event.
    GaveUp { error: String, attempts: i32 },
}

/// Why one try to send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    pub error: String,
    /// Trying again cannot help (an SMTP 5xx answer).
    pub permanent: bool,
}

impl DeliveryRepository {
    /// Sends at most once per event id: creates (or finds) the ledger row,
    /// locks it for the duration of `send` (another consumer of the same
    /// event gets [`DeliveryOutcome::InProgress`]), skips it when already
    /// delivered or given up, and records the attempt: `delivered` +
    /// `delivered_at` when `send` succeeded; `last_error` when it failed —
    /// and `failed` (given up) when the failure was permanent or this was
    /// attempt `max_attempts`. Attempts are counted in the ledger, so a
    /// restart or another replica does not start the count again.
    pub async fn deliver_once<F, Fut>(
        &self,
        delivery: NewDelivery<'_>,
        max_attempts: i32,
        send: F,
    ) -> Result<DeliveryOutcome, NotificationError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), SendFailure>>,
    {
        let id = delivery.event_id.as_uuid();
        let mut client = self.db.get().await.map_err(DbError::from)?;
        client
            .execute(
                "INSERT INTO deliveries (event_id, event_type, channel, recipient)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
                &[&id, &delivery.event_type, &delivery.channel, &delivery.recipient],
            )
            .await
            .map_err(DbError::from)?;
        // The row stays locked while this replica sends; an early `Ok` (in
        // progress elsewhere, settled before) commits nothing.
        unilink_db::transaction_on(&mut client, async |tx| {
            let row = tx
                .query_opt(
                    "SELECT status, attempts, last_error FROM deliveries WHERE event_id = $1 FOR UPDATE SKIP LOCKED",
                    &[&id],
                )
                .await
                .map_err(DbError::from)?;
            let Some(row) = row else {
                return Ok(DeliveryOutcome::InProgress);
            };
            let status: String = row.get("status");
            let attempts: i32 = row.get("attempts");
            match DeliveryStatus::parse(&status) {
                Some(DeliveryStatus::Delivered) => return Ok(DeliveryOutcome::AlreadyDelivered),
                Some(DeliveryStatus::Failed) => {
                    return Ok(DeliveryOutcome::GaveUp {
                        error: row.get::<_, Option<String>>("last_error").unwrap_or_default(),
                        attempts,
                    });
                }
                _ => {}
            }
            let outcome = match send().await {
                Ok(()) => {
                    tx.execute(
                        "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,
                                last_error = NULL, delivered_at = now()
                         WHERE event_id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(DbError::from)?;
                    DeliveryOutcome::Delivered
                }
                Err(failure) => {
                    let attempts = attempts + 1;
                    let status = DeliveryStatus::after_failure(failure.permanent, attempts, max_attempts);
                    let give_up = status.is_final();
                    tx.execute(
                        "UPDATE deliveries SET status = $3, attempts = $4, last_error = $2
                         WHERE event_id = $1",
                        &[&id, &failure.error, &status.as_str(), &attempts],
                    )
                    .await
                    .map_err(DbError::from)?;
                    if give_up {
                        DeliveryOutcome::GaveUp {
                            error: failure.error,
                            attempts,
                        }
                    } else {
                        DeliveryOutcome::Failed(failure.error)
                    }
                }
            };
            Ok(outcome)
        })
        .await
    }

    /// Records an event that can never be delivered (malformed payload,
    /// invalid address), unless it was delivered already; says whether it
    /// recorded it (false: delivered before).
    pub async fn mark_failed(&self, delivery: NewDelivery<'_>, error: &str) -> Result<bool, NotificationError> {
        let _timer = unilink_db::QueryTimer::start("notification", "mark_failed");
        let client = self.db.get().await.map_err(DbError::from)?;
        let changed = client
            .execute(
                "INSERT INTO deliveries (event_id, event_type, channel, recipient, status, attempts, last_error)
                 VALUES ($1, $2, $3, $4, 'failed', 1, $5)
                 ON CONFLICT (event_id) DO UPDATE
                   SET status = 'failed', attempts = deliveries.attempts + 1, last_error = EXCLUDED.last_error
                   WHERE deliveries.status <> 'delivered'",
                &[
                    &delivery.event_id.as_uuid(),
                    &delivery.event_type,
                    &delivery.channel,
                    &delivery.recipient,
                    &error,
                ],
            )
            .await
            .map_err(DbError::from)?;
        Ok(changed == 1)
    }
}

impl DeliveryRepository {
    /// A deleted user's address leaves the delivery log (the records stay,
    /// anonymous, for idempotency).
    pub async fn forget_recipient(&self, email: &str) -> Result<u64, NotificationError> {
        let _timer = unilink_db::QueryTimer::start("notification", "forget_recipient");
        let client = self.db.get().await.map_err(unilink_db::DbError::from)?;
        Ok(client
            .execute(
                "UPDATE deliveries SET recipient = NULL WHERE lower(recipient) = lower($1)",
                &[&email],
            )
            .await
            .map_err(unilink_db::DbError::from)?)
    }
}

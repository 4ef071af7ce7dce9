//! SQL on the `notification` schema (the pool's `search_path`).

use chrono::{DateTime, Utc};
use unilink_db::{DbError, PgPool, Row, Uuid};
use unilink_domain::EventId;

use crate::error::NotificationError;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn parse(value: &str) -> Option<DeliveryStatus> {
        match value {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: EventId,
    pub event_type: String,
    pub channel: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Delivery {
    fn from_row(row: &Row) -> Result<Self, NotificationError> {
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
        let client = self.db.get().await.map_err(DbError::from)?;
        let row = client
            .query_opt(
                "SELECT event_id, event_type, channel, status, attempts, created_at, delivered_at
                 FROM deliveries WHERE event_id = $1",
                &[&event_id.as_uuid()],
            )
            .await
            .map_err(DbError::from)?;
        row.as_ref().map(Delivery::from_row).transpose()
    }
}

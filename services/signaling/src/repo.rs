//! SQL on the `signaling` schema (the pool's `search_path`).

use chrono::{DateTime, Utc};
use unilink_db::{DbError, PgPool, Row, Uuid};
use unilink_domain::{CallId, UserId};

use crate::error::SignalingError;

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    Pending,
    Ongoing,
    Completed,
    Rejected,
    Missed,
    Cancelled,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Pending => "pending",
            CallStatus::Ongoing => "ongoing",
            CallStatus::Completed => "completed",
            CallStatus::Rejected => "rejected",
            CallStatus::Missed => "missed",
            CallStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<CallStatus> {
        [
            CallStatus::Pending,
            CallStatus::Ongoing,
            CallStatus::Completed,
            CallStatus::Rejected,
            CallStatus::Missed,
            CallStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: CallId,
    pub initiator_id: UserId,
    pub receiver_id: UserId,
    pub status: CallStatus,
    pub call_token: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i64>,
}

impl Call {
    fn from_row(row: &Row) -> Result<Self, SignalingError> {
        let id = CallId::from(row.get::<_, Uuid>("id"));
        let status: String = row.get("status");
        Ok(Call {
            id,
            initiator_id: UserId::from(row.get::<_, Uuid>("initiator_id")),
            receiver_id: UserId::from(row.get::<_, Uuid>("receiver_id")),
            status: CallStatus::parse(&status).ok_or_else(|| SignalingError::CorruptStatus(id.to_string(), status))?,
            call_token: row.get("call_token"),
            created_at: row.get("created_at"),
            started_at: row.get("started_at"),
            ended_at: row.get("ended_at"),
            duration_seconds: row.get("duration_seconds"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct CallRepository {
    db: PgPool,
}

impl CallRepository {
    pub fn new(db: PgPool) -> Self {
        CallRepository { db }
    }

    pub async fn find(&self, id: CallId) -> Result<Option<Call>, SignalingError> {
        let client = self.db.get().await.map_err(DbError::from)?;
        let row = client
            .query_opt(
                "SELECT id, initiator_id, receiver_id, status, call_token, created_at, started_at, ended_at, duration_seconds
                 FROM calls WHERE id = $1",
                &[&id.as_uuid()],
            )
            .await
            .map_err(DbError::from)?;
        row.as_ref().map(Call::from_row).transpose()
    }
}

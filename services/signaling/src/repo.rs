//! SQL on the `signaling` schema (the pool's `search_path`).
//!
//! Every change of a call's state happens in one transaction that locks the
//! row, checks the state machine, updates it, frees the participants
//! (`busy_users`) when the call closes and records the `call.*` event in the
//! outbox — so an event is published if and only if the change committed.

use chrono::{DateTime, Utc};
use unilink_db::{DbError, PgPool, Row, Transaction, Uuid};
use unilink_domain::{CallId, UserId};
use unilink_events::Event;
use unilink_events::payload::{CALL_ACCEPTED, CALL_ENDED, CALL_INITIATED, CALL_MISSED, CALL_REJECTED, CallEvent};

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

    /// Pending or ongoing: the participants are busy.
    pub fn is_open(self) -> bool {
        matches!(self, CallStatus::Pending | CallStatus::Ongoing)
    }

    /// The event announcing that a call reached this state.
    fn event_type(self) -> &'static str {
        match self {
            CallStatus::Pending => CALL_INITIATED,
            CallStatus::Ongoing => CALL_ACCEPTED,
            CallStatus::Rejected => CALL_REJECTED,
            CallStatus::Missed => CALL_MISSED,
            CallStatus::Completed | CallStatus::Cancelled => CALL_ENDED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: CallId,
    pub initiator_id: UserId,
    pub receiver_id: UserId,
    pub initiator_username: String,
    pub receiver_username: String,
    pub status: CallStatus,
    pub call_token: String,
    /// When the call was placed (the public API's `started_at`).
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it (the `started_at` column, named before
    /// the public API's `started_at` became the creation time).
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Whole seconds from acceptance to end; 0 until a call has ended.
    pub duration_seconds: i64,
}

impl Call {
    pub fn is_participant(&self, user: UserId) -> bool {
        self.initiator_id == user || self.receiver_id == user
    }

    /// The other participant.
    pub fn peer_of(&self, user: UserId) -> UserId {
        if self.initiator_id == user {
            self.receiver_id
        } else {
            self.initiator_id
        }
    }

    fn from_row(row: &Row) -> Result<Self, SignalingError> {
        let id = CallId::from(row.get::<_, Uuid>("id"));
        let status: String = row.get("status");
        Ok(Call {
            id,
            initiator_id: UserId::from(row.get::<_, Uuid>("initiator_id")),
            receiver_id: UserId::from(row.get::<_, Uuid>("receiver_id")),
            initiator_username: row.get("initiator_username"),
            receiver_username: row.get("receiver_username"),
            status: CallStatus::parse(&status).ok_or_else(|| SignalingError::CorruptStatus(id.to_string(), status))?,
            call_token: row.get("call_token"),
            created_at: row.get("created_at"),
            answered_at: row.get("started_at"),
            ended_at: row.get("ended_at"),
            duration_seconds: row.get::<_, Option<i64>>("duration_seconds").unwrap_or(0),
        })
    }

    fn event(&self, actor: Option<UserId>, reason: Option<&str>) -> Event {
        let payload = CallEvent {
            call_id: self.id.to_string(),
            initiator_id: self.initiator_id.to_string(),
            receiver_id: self.receiver_id.to_string(),
            initiator_username: self.initiator_username.clone(),
            receiver_username: self.receiver_username.clone(),
            status: self.status.as_str().to_owned(),
            actor_id: actor.map(|a| a.to_string()),
            reason: reason.map(str::to_owned),
            call_token: Some(self.call_token.clone()),
            created_at: Some(self.created_at),
            answered_at: self.answered_at,
            ended_at: self.ended_at,
            duration_seconds: Some(self.duration_seconds),
        };
        Event::new(
            self.status.event_type(),
            serde_json::to_value(payload).unwrap_or_default(),
        )
    }
}

const COLUMNS: &str = "id, initiator_id, receiver_id, initiator_username, receiver_username, status, call_token, \
                       created_at, started_at, ended_at, duration_seconds";

/// A call about to be created.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub id: CallId,
    pub initiator_id: UserId,
    pub receiver_id: UserId,
    pub initiator_username: String,
    pub receiver_username: String,
    pub call_token: String,
}

/// A change of state asked for by a participant or by the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: CallStatus,
    /// The participant who caused it; `None` for the system.
    pub actor: Option<UserId>,
    /// Why the system did it.
    pub reason: Option<&'static str>,
}

/// A page of history: `(created_at, id)` of the last call shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at.timestamp_micros(), self.id.simple())
    }

    pub fn decode(raw: &str) -> Option<Cursor> {
        let (micros, id) = raw.split_once('_')?;
        Some(Cursor {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct CallRepository {
    db: PgPool,
    /// Read-only queries that may lag a moment (history): the replica when
    /// `DATABASE_READ_URL` is set, else `db`.
    read: PgPool,
}

/// The `schema` label of this repository's query timings.
const SCHEMA: &str = "signaling";

impl CallRepository {
    pub fn new(db: PgPool) -> Self {
        CallRepository { read: db.clone(), db }
    }

    /// Sends history reads to `read` (see [`unilink_db::read_pool`]).
    pub fn with_read_pool(self, read: PgPool) -> Self {
        CallRepository { read, ..self }
    }

    async fn client(&self) -> Result<unilink_db::Client, SignalingError> {
        Ok(self.db.get().await.map_err(DbError::from)?)
    }

    pub async fn find(&self, id: CallId) -> Result<Option<Call>, SignalingError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "find_call");
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM calls WHERE id = $1"))
            .await
            .map_err(DbError::from)?;
        let row = client
            .query_opt(&statement, &[&id.as_uuid()])
            .await
            .map_err(DbError::from)?;
        row.as_ref().map(Call::from_row).transpose()
    }

    /// Creates a pending call; [`SignalingError::Busy`] when either participant
    /// already has an open call (decided by the `busy_users` primary key, so
    /// of two racing calls exactly one commits).
    pub async fn create(&self, call: &NewCall) -> Result<Call, SignalingError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "create_call");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        // Hot path (every call attempt): statements prepared once per connection.
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO calls (id, initiator_id, receiver_id, initiator_username, receiver_username, call_token)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
            ))
            .await
            .map_err(DbError::from)?;
        let row = tx
            .query_one(
                &insert,
                &[
                    &call.id.as_uuid(),
                    &call.initiator_id.as_uuid(),
                    &call.receiver_id.as_uuid(),
                    &call.initiator_username,
                    &call.receiver_username,
                    &call.call_token,
                ],
            )
            .await
            .map_err(DbError::from)?;
        let created = Call::from_row(&row)?;
        let busy = tx
            .prepare_cached("INSERT INTO busy_users (user_id, call_id) VALUES ($1, $3), ($2, $3)")
            .await
            .map_err(DbError::from)?;
        let busy = tx
            .execute(
                &busy,
                &[
                    &call.initiator_id.as_uuid(),
                    &call.receiver_id.as_uuid(),
                    &call.id.as_uuid(),
                ],
            )
            .await
            .map_err(DbError::from);
        match busy {
            Ok(_) => {}
            Err(e) if e.is_unique_violation() => return Err(SignalingError::Busy),
            Err(e) => return Err(e.into()),
        }
        unilink_events::outbox::enqueue(&tx, &created.event(Some(call.initiator_id), None)).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(created)
    }

    /// Applies `change` to the call if `allowed` says the current state (and
    /// actor) permit it; returns the call after the change.
    pub async fn transition(
        &self,
        id: CallId,
        allowed: impl FnOnce(&Call) -> Result<Transition, SignalingError>,
    ) -> Result<Call, SignalingError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "transition_call");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let select = tx
            .prepare_cached(&format!("SELECT {COLUMNS} FROM calls WHERE id = $1 FOR UPDATE"))
            .await
            .map_err(DbError::from)?;
        let row = tx.query_opt(&select, &[&id.as_uuid()]).await.map_err(DbError::from)?;
        let call = row
            .as_ref()
            .map(Call::from_row)
            .transpose()?
            .ok_or(SignalingError::CallNotFound)?;
        let change = allowed(&call)?;
        let changed = apply(&tx, &call, change).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(changed)
    }

    /// Applies `change` to every open call matched by `select` (a query on
    /// `calls` returning its id, with `FOR UPDATE SKIP LOCKED`, so replicas
    /// running the same timer never process one call twice).
    pub async fn close_due(
        &self,
        select: &str,
        params: &[&(dyn unilink_db::ToSql + Sync)],
        change: Transition,
    ) -> Result<Vec<Call>, SignalingError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(DbError::from)?;
        let rows = tx
            .query(
                &format!("SELECT {COLUMNS} FROM calls WHERE id IN ({select}) FOR UPDATE SKIP LOCKED"),
                params,
            )
            .await
            .map_err(DbError::from)?;
        let mut closed = Vec::with_capacity(rows.len());
        for row in &rows {
            let call = Call::from_row(row)?;
            if call.status.is_open() {
                closed.push(apply(&tx, &call, change).await?);
            }
        }
        tx.commit().await.map_err(DbError::from)?;
        Ok(closed)
    }

    /// Ongoing calls that started before `cutoff` (candidates for the
    /// abandoned-call check).
    pub async fn ongoing_started_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<CallId>, SignalingError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id FROM calls WHERE status = 'ongoing' AND started_at < $1 ORDER BY started_at LIMIT $2",
                &[&cutoff, &limit],
            )
            .await
            .map_err(DbError::from)?;
        Ok(rows.iter().map(|r| CallId::from(r.get::<_, Uuid>(0))).collect())
    }

    /// The user's open call in `status`, if any.
    pub async fn open_call_of(&self, user: UserId, status: CallStatus) -> Result<Option<Call>, SignalingError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "open_call_of");
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM calls WHERE id = (SELECT call_id FROM busy_users WHERE user_id = $1) AND status = $2"
            ))
            .await
            .map_err(DbError::from)?;
        let row = client
            .query_opt(&statement, &[&user.as_uuid(), &status.as_str()])
            .await
            .map_err(DbError::from)?;
        row.as_ref().map(Call::from_row).transpose()
    }

    /// The user's calls, newest first, after `cursor`.
    pub async fn history(&self, user: UserId, limit: i64, cursor: Option<Cursor>) -> Result<Vec<Call>, SignalingError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "call_history");
        let client = self.read.get().await.map_err(DbError::from)?;
        let (created, id) = match cursor {
            Some(c) => (c.created_at, c.id),
            None => (DateTime::<Utc>::MAX_UTC, Uuid::max()),
        };
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM calls
                 WHERE (initiator_id = $1 OR receiver_id = $1) AND (created_at, id) < ($2, $3)
                 ORDER BY created_at DESC, id DESC LIMIT $4"
            ))
            .await
            .map_err(DbError::from)?;
        let rows = client
            .query(&statement, &[&user.as_uuid(), &created, &id, &limit])
            .await
            .map_err(DbError::from)?;
        rows.iter().map(Call::from_row).collect()
    }

    /// The ids of the user's open calls.
    pub async fn open_calls_of(&self, user: UserId) -> Result<Vec<CallId>, SignalingError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT call_id FROM busy_users WHERE user_id = $1", &[&user.as_uuid()])
            .await
            .map_err(DbError::from)?;
        Ok(rows.iter().map(|r| CallId::from(r.get::<_, Uuid>(0))).collect())
    }

    /// Blanks a deleted user's name in everyone's history (the calls stay:
    /// they are the other participant's history too).
    pub async fn forget_user(&self, user: UserId) -> Result<(), SignalingError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE calls SET
                    initiator_username = CASE WHEN initiator_id = $1 THEN '' ELSE initiator_username END,
                    receiver_username  = CASE WHEN receiver_id  = $1 THEN '' ELSE receiver_username END
                 WHERE initiator_id = $1 OR receiver_id = $1",
                &[&user.as_uuid()],
            )
            .await
            .map_err(DbError::from)?;
        Ok(())
    }
}

/// Writes one state change, frees the participants when the call closes and
/// records the event — inside the caller's transaction.
async fn apply(tx: &Transaction<'_>, call: &Call, change: Transition) -> Result<Call, SignalingError> {
    let update = tx
        .prepare_cached(&format!(
            "UPDATE calls SET
                    status = $2,
                    started_at = CASE WHEN $2 = 'ongoing' THEN now() ELSE started_at END,
                    ended_at = CASE WHEN $2 IN ('pending', 'ongoing') THEN ended_at ELSE now() END,
                    duration_seconds = CASE
                        WHEN $2 = 'completed' AND started_at IS NOT NULL
                        THEN GREATEST(0, round(extract(epoch FROM now() - started_at)))::bigint
                        WHEN $2 IN ('rejected', 'missed', 'cancelled') THEN 0
                        ELSE duration_seconds END,
                    ended_by = $3,
                    end_reason = $4
                 WHERE id = $1
                 RETURNING {COLUMNS}"
        ))
        .await
        .map_err(DbError::from)?;
    let row = tx
        .query_one(
            &update,
            &[
                &call.id.as_uuid(),
                &change.to.as_str(),
                &change.actor.map(|a| a.as_uuid()),
                &change.reason,
            ],
        )
        .await
        .map_err(DbError::from)?;
    let changed = Call::from_row(&row)?;
    if !changed.status.is_open() {
        let free = tx
            .prepare_cached("DELETE FROM busy_users WHERE call_id = $1")
            .await
            .map_err(DbError::from)?;
        tx.execute(&free, &[&call.id.as_uuid()]).await.map_err(DbError::from)?;
    }
    unilink_events::outbox::enqueue(tx, &changed.event(change.actor, change.reason)).await?;
    Ok(changed)
}

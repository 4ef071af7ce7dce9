//! SQL on the `signaling` schema (the pool's `search_path`).
//!
//! Every change of a call's state happens in one transaction that locks the
//! row, checks the change against the state machine ([`crate::domain`];
//! the timers' `status IN (…)` guards come from [`may_take`]), updates it, frees the participants
//! (`busy_users`) when the call closes and records the `call.*` event in the
//! outbox — so an event is published if and only if the change committed.

use chrono::{DateTime, Utc};
use unilink_db::{DbError, PgPool, Row, Transaction, Uuid};
use unilink_domain::{CallId, UserId};

use crate::domain::{Call, CallAction, CallStatus, Change};
use crate::error::SignalingError;

/// A call as its row holds it.
fn call_from_row(row: &Row) -> Result<Call, SignalingError> {
    let id = CallId::from(row.get::<_, Uuid>("id"));
    let status: String = row.get("status");
    Ok(Call {
        id,
        initiator_id: UserId::from(row.get::<_, Uuid>("initiator_id")),
        receiver_id: UserId::from(row.get::<_, Uuid>("receiver_id")),
        initiator_username: row.get("initiator_username"),
        receiver_username: row.get("receiver_username"),
        status: status
            .parse()
            .map_err(|_| SignalingError::CorruptStatus(id.to_string(), status))?,
        call_token: row.get("call_token"),
        created_at: row.get("created_at"),
        answered_at: row.get("started_at"),
        ended_at: row.get("ended_at"),
        duration_seconds: row.get::<_, Option<i64>>("duration_seconds").unwrap_or(0),
    })
}

/// `status IN (…)` of the statuses `action` may start from: the SQL guard
/// of a change, built from the state machine rather than written again.
pub fn may_take(action: CallAction) -> String {
    let statuses: Vec<String> = action.sources().iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("status IN ({})", statuses.join(", "))
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
        row.as_ref().map(call_from_row).transpose()
    }

    /// Creates a pending call; [`SignalingError::Busy`] when either participant
    /// already has an open call (decided by the `busy_users` primary key, so
    /// of two racing calls exactly one commits).
    pub async fn create(&self, call: &NewCall) -> Result<Call, SignalingError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "create_call");
        unilink_db::transaction(&self.db, async |tx| {
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
            let created = call_from_row(&row)?;
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
            unilink_events::outbox::enqueue(tx, &created.event(Some(call.initiator_id), None)).await?;
            Ok(created)
        })
        .await
    }

    /// Applies the change `allowed` makes of the call (checked against the
    /// state machine, with the actor) and returns the call after it.
    pub async fn transition(
        &self,
        id: CallId,
        allowed: impl FnOnce(&Call) -> Result<Change, SignalingError>,
    ) -> Result<(Call, Change), SignalingError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "transition_call");
        unilink_db::transaction(&self.db, async |tx| {
            let select = tx
                .prepare_cached(&format!("SELECT {COLUMNS} FROM calls WHERE id = $1 FOR UPDATE"))
                .await
                .map_err(DbError::from)?;
            let row = tx.query_opt(&select, &[&id.as_uuid()]).await.map_err(DbError::from)?;
            let call = row
                .as_ref()
                .map(call_from_row)
                .transpose()?
                .ok_or(SignalingError::CallNotFound)?;
            let change = allowed(&call)?;
            Ok((apply(tx, &call, change).await?, change))
        })
        .await
    }

    /// Applies `action` (by the system) to every call matched by `due` (a
    /// condition on `calls`, which may end in a `LIMIT`) that the action may
    /// start from, locking them `FOR UPDATE SKIP LOCKED` so replicas running
    /// the same timer never process one call twice.
    pub async fn close_due(
        &self,
        action: CallAction,
        due: &str,
        params: &[&(dyn unilink_db::ToSql + Sync)],
    ) -> Result<Vec<(Call, Change)>, SignalingError> {
        unilink_db::transaction(&self.db, async |tx| {
            let rows = tx
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM calls WHERE id IN (SELECT id FROM calls WHERE {} AND {due}) \
                         FOR UPDATE SKIP LOCKED",
                        may_take(action)
                    ),
                    params,
                )
                .await
                .map_err(DbError::from)?;
            let mut closed = Vec::with_capacity(rows.len());
            for row in &rows {
                let call = call_from_row(row)?;
                // Changed since the subquery saw it (accepted, ended): not due any more.
                if let Ok(change) = call.change(action, None) {
                    closed.push((apply(tx, &call, change).await?, change));
                }
            }
            Ok(closed)
        })
        .await
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
                &format!(
                    "SELECT id FROM calls WHERE {} AND started_at < $1 ORDER BY started_at LIMIT $2",
                    may_take(CallAction::Abandon)
                ),
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
        row.as_ref().map(call_from_row).transpose()
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
        rows.iter().map(call_from_row).collect()
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
/// records the event — inside the caller's transaction. Which timestamps the
/// change sets follows from the status it reaches.
async fn apply(tx: &Transaction<'_>, call: &Call, change: Change) -> Result<Call, SignalingError> {
    let update = tx
        .prepare_cached(&format!(
            "UPDATE calls SET
                    status = $2,
                    started_at = CASE WHEN $5 THEN now() ELSE started_at END,
                    ended_at = CASE WHEN $6 THEN now() ELSE ended_at END,
                    duration_seconds = CASE
                        WHEN $7 AND started_at IS NOT NULL
                        THEN GREATEST(0, round(extract(epoch FROM now() - started_at)))::bigint
                        WHEN $6 AND NOT $7 THEN 0
                        ELSE duration_seconds END,
                    ended_by = $3,
                    end_reason = $4
                 WHERE id = $1
                 RETURNING {COLUMNS}"
        ))
        .await
        .map_err(DbError::from)?;
    let answered = change.to == CallStatus::Ongoing;
    let closed = !change.to.is_open();
    let completed = change.to == CallStatus::Completed;
    let row = tx
        .query_one(
            &update,
            &[
                &call.id.as_uuid(),
                &change.to.as_str(),
                &change.actor.map(|a| a.as_uuid()),
                &change.action.reason(),
                &answered,
                &closed,
                &completed,
            ],
        )
        .await
        .map_err(DbError::from)?;
    let changed = call_from_row(&row)?;
    if !changed.status.is_open() {
        let free = tx
            .prepare_cached("DELETE FROM busy_users WHERE call_id = $1")
            .await
            .map_err(DbError::from)?;
        tx.execute(&free, &[&call.id.as_uuid()]).await.map_err(DbError::from)?;
    }
    unilink_events::outbox::enqueue(tx, &changed.event(change.actor, change.action.reason())).await?;
    Ok(changed)
}

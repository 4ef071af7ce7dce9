//! SQL on the `profile` schema (the pool's `search_path`).

use chrono::{DateTime, Utc};
use unilink_db::{DbError, PgPool, Row, Uuid};
use unilink_domain::UserId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub user_id: UserId,
    pub email: String,
    pub username: String,
    pub full_name: String,
    /// `None` when the user has not written one.
    pub bio: Option<String>,
    pub profile_picture: Option<String>,
    pub is_verified: bool,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "user_id, email, username, full_name, bio, profile_picture, is_verified, is_active, created_at, updated_at";

impl Profile {
    fn from_row(row: &Row) -> Self {
        Profile {
            user_id: UserId::from(row.get::<_, Uuid>("user_id")),
            email: row.get("email"),
            username: row.get("username"),
            full_name: row.get("full_name"),
            bio: row.get("bio"),
            profile_picture: row.get("profile_picture"),
            is_verified: row.get("is_verified"),
            is_active: row.get("is_active"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }
}

/// What this service knows about a would-be call from one user to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallParties {
    /// Empty when the caller has no profile (yet).
    pub caller_username: String,
    pub receiver_username: String,
    /// The receiver is verified and active.
    pub receiver_available: bool,
    /// A block exists in either direction.
    pub blocked: bool,
}

/// A report as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: Uuid,
    pub reporter_id: Uuid,
    pub reported_id: Uuid,
    pub reason: String,
    pub description: Option<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<Uuid>,
}

const REPORT_COLUMNS: &str =
    "id, reporter_id, reported_id, reason, description, status, created_at, resolved_at, resolved_by";

impl Report {
    fn from_row(row: &Row) -> Self {
        Report {
            id: row.get("id"),
            reporter_id: row.get("reporter_id"),
            reported_id: row.get("reported_id"),
            reason: row.get("reason"),
            description: row.get("description"),
            status: row.get("status"),
            created_at: row.get("created_at"),
            resolved_at: row.get("resolved_at"),
            resolved_by: row.get("resolved_by"),
        }
    }
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub full_name: Option<String>,
    /// `Some("")` unsets the bio (stored as NULL).
    pub bio: Option<String>,
    /// `Some(None)` removes the picture.
    pub profile_picture: Option<Option<String>>,
}

#[derive(Debug, Clone)]
pub struct ProfileRepository {
    db: PgPool,
    /// Read-only queries that may lag a moment (profiles, discovery): the
    /// replica when `DATABASE_READ_URL` is set, else `db`.
    read: PgPool,
}

/// The `schema` label of this repository's query timings.
const SCHEMA: &str = "profile";

impl ProfileRepository {
    pub fn new(db: PgPool) -> Self {
        ProfileRepository { read: db.clone(), db }
    }

    /// Sends profile and discovery reads to `read` (see [`unilink_db::read_pool`]).
    pub fn with_read_pool(self, read: PgPool) -> Self {
        ProfileRepository { read, ..self }
    }

    pub async fn find(&self, user_id: UserId) -> Result<Option<Profile>, DbError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "find_profile");
        let client = self.read.get().await?;
        // Hot path: prepared once per connection, not planned per call.
        let statement = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM profiles WHERE user_id = $1"))
            .await?;
        let row = client.query_opt(&statement, &[&user_id.as_uuid()]).await?;
        Ok(row.as_ref().map(Profile::from_row))
    }

    /// The profiles of `users` that exist, in no particular order, read from
    /// the primary (a read cache must not fill itself from a lagging replica).
    pub async fn find_many(&self, users: &[Uuid]) -> Result<Vec<Profile>, DbError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "find_profiles");
        let client = self.db.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM profiles WHERE user_id = ANY($1::uuid[])"
            ))
            .await?;
        let rows = client.query(&statement, &[&users]).await?;
        Ok(rows.iter().map(Profile::from_row).collect())
    }

    /// Whom `user` has blocked, and who has blocked `user` (from the primary).
    pub async fn blocks_of(&self, user: UserId) -> Result<(Vec<Uuid>, Vec<Uuid>), DbError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "blocks_of");
        let client = self.db.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT blocked_id AS other, true AS made FROM blocks WHERE blocker_id = $1
                 UNION ALL
                 SELECT blocker_id, false FROM blocks WHERE blocked_id = $1",
            )
            .await?;
        let rows = client.query(&statement, &[&user.as_uuid()]).await?;
        let (mut made, mut received) = (Vec::new(), Vec::new());
        for row in &rows {
            if row.get::<_, bool>("made") {
                made.push(row.get("other"));
            } else {
                received.push(row.get("other"));
            }
        }
        Ok((made, received))
    }

    /// Creates the profile of a new account (a redelivered event changes
    /// nothing, and one for an account erased since creates nothing).
    pub async fn create(&self, user_id: UserId, email: &str, username: &str, full_name: &str) -> Result<(), DbError> {
        unilink_db::transaction(&self.db, async |tx| {
            lock_user(tx, user_id).await?;
            tx.execute(
                "INSERT INTO profiles (user_id, email, username, full_name)
                 SELECT $1::uuid, $2::text, $3::text, $4::text
                 WHERE NOT EXISTS (SELECT 1 FROM erased_users WHERE user_id = $1::uuid)
                 ON CONFLICT (user_id) DO NOTHING",
                &[&user_id.as_uuid(), &email, &username, &full_name],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Whether the account was erased (`user.deleted` handled).
    pub async fn is_erased(&self, user_id: UserId) -> Result<bool, DbError> {
        let client = self.db.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM erased_users WHERE user_id = $1)",
                &[&user_id.as_uuid()],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Marks the account verified; false when the profile does not exist yet.
    pub async fn set_verified(&self, user_id: UserId) -> Result<bool, DbError> {
        let client = self.db.get().await?;
        let n = client
            .execute(
                "UPDATE profiles SET is_verified = true, updated_at = now() WHERE user_id = $1",
                &[&user_id.as_uuid()],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn update(&self, user_id: UserId, changes: &Changes) -> Result<Option<Profile>, DbError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "update_profile");
        let client = self.db.get().await?;
        let (set_picture, picture) = match &changes.profile_picture {
            None => (false, None),
            Some(p) => (true, p.clone()),
        };
        let row = client
            .query_opt(
                &format!(
                    "UPDATE profiles SET
                         full_name = COALESCE($2, full_name),
                         bio = CASE WHEN $3::text IS NULL THEN bio ELSE NULLIF($3, '') END,
                         profile_picture = CASE WHEN $4 THEN $5 ELSE profile_picture END,
                         updated_at = now()
                     WHERE user_id = $1 RETURNING {COLUMNS}"
                ),
                &[
                    &user_id.as_uuid(),
                    &changes.full_name,
                    &changes.bio,
                    &set_picture,
                    &picture,
                ],
            )
            .await?;
        Ok(row.as_ref().map(Profile::from_row))
    }

    /// Whether `blocker` has blocked `blocked`.
    pub async fn has_blocked(&self, blocker: UserId, blocked: UserId) -> Result<bool, DbError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "has_blocked");
        let client = self.db.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker_id = $1 AND blocked_id = $2)",
                &[&blocker.as_uuid(), &blocked.as_uuid()],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn block(&self, blocker: UserId, blocked: UserId) -> Result<(), DbError> {
        let client = self.db.get().await?;
        client
            .execute(
                "INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&blocker.as_uuid(), &blocked.as_uuid()],
            )
            .await?;
        Ok(())
    }

    /// Removes a block; false when there was none.
    pub async fn unblock(&self, blocker: UserId, blocked: UserId) -> Result<bool, DbError> {
        let client = self.db.get().await?;
        let n = client
            .execute(
                "DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2",
                &[&blocker.as_uuid(), &blocked.as_uuid()],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn report(
        &self,
        reporter: UserId,
        reported: UserId,
        reason: &str,
        description: Option<&str>,
    ) -> Result<(), DbError> {
        let client = self.db.get().await?;
        client
            .execute(
                "INSERT INTO reports (id, reporter_id, reported_id, reason, description) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &Uuid::new_v4(),
                    &reporter.as_uuid(),
                    &reported.as_uuid(),
                    &reason,
                    &description,
                ],
            )
            .await?;
        Ok(())
    }

    /// The facts about `caller` calling `receiver`, in one round trip;
    /// `None` when the receiver has no profile. Each direction of the block
    /// check is one index-only probe (primary key or `blocks_blocked_idx`).
    pub async fn call_parties(&self, caller: UserId, receiver: UserId) -> Result<Option<CallParties>, DbError> {
        let _timer = unilink_db::QueryTimer::start(SCHEMA, "call_parties");
        let client = self.db.get().await?;
        // Hot path (every call attempt): prepared once per connection.
        let statement = client
            .prepare_cached(
                "SELECT r.username AS receiver_username,
                        r.is_verified AND r.is_active AS receiver_available,
                        COALESCE((SELECT c.username FROM profiles c WHERE c.user_id = $1), '') AS caller_username,
                        EXISTS (SELECT 1 FROM blocks WHERE blocker_id = $1 AND blocked_id = $2)
                          OR EXISTS (SELECT 1 FROM blocks WHERE blocker_id = $2 AND blocked_id = $1) AS blocked
                 FROM profiles r WHERE r.user_id = $2",
            )
            .await?;
        let row = client
            .query_opt(&statement, &[&caller.as_uuid(), &receiver.as_uuid()])
            .await?;
        Ok(row.map(|row| CallParties {
            caller_username: row.get("caller_username"),
            receiver_username: row.get("receiver_username"),
            receiver_available: row.get("receiver_available"),
            blocked: row.get("blocked"),
        }))
    }
}

impl ProfileRepository {
    /// Marks the account deactivated; false when the profile does not exist yet.
    pub async fn set_inactive(&self, user_id: UserId) -> Result<bool, DbError> {
        let client = self.db.get().await?;
        let n = client
            .execute(
                "UPDATE profiles SET is_active = false, updated_at = now() WHERE user_id = $1",
                &[&user_id.as_uuid()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Reports with `status` (every status when `None`), newest first, and how many there are.
    pub async fn reports(&self, status: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<Report>, i64), DbError> {
        let client = self.db.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {REPORT_COLUMNS} FROM reports WHERE ($1::text IS NULL OR status = $1)
                     ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
                ),
                &[&status, &limit, &offset],
            )
            .await?;
        let total: i64 = client
            .query_one(
                "SELECT count(*) FROM reports WHERE ($1::text IS NULL OR status = $1)",
                &[&status],
            )
            .await?
            .get(0);
        Ok((rows.iter().map(Report::from_row).collect(), total))
    }

    /// Resolves a report (idempotent); `None` when it does not exist.
    pub async fn resolve_report(&self, id: Uuid, admin: UserId) -> Result<Option<Report>, DbError> {
        let client = self.db.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE reports SET
                         status = 'resolved',
                         resolved_at = COALESCE(resolved_at, now()),
                         resolved_by = COALESCE(resolved_by, $2)
                     WHERE id = $1 RETURNING {REPORT_COLUMNS}"
                ),
                &[&id, &admin.as_uuid()],
            )
            .await?;
        Ok(row.as_ref().map(Report::from_row))
    }
}

/// A block the user made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMade {
    pub blocked_id: Uuid,
    pub created_at: DateTime<Utc>,
}

impl ProfileRepository {
    pub async fn blocks_made(&self, user: UserId) -> Result<Vec<BlockMade>, DbError> {
        let client = self.db.get().await?;
        let rows = client
            .query(
                "SELECT blocked_id, created_at FROM blocks WHERE blocker_id = $1 ORDER BY created_at",
                &[&user.as_uuid()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| BlockMade {
                blocked_id: r.get(0),
                created_at: r.get(1),
            })
            .collect())
    }

    pub async fn reports_made(&self, user: UserId) -> Result<Vec<Report>, DbError> {
        let client = self.db.get().await?;
        let rows = client
            .query(
                &format!("SELECT {REPORT_COLUMNS} FROM reports WHERE reporter_id = $1 ORDER BY created_at"),
                &[&user.as_uuid()],
            )
            .await?;
        Ok(rows.iter().map(Report::from_row).collect())
    }

    /// Erases a deleted user: their profile, blocks either way, and reports
    /// they made or that name them; remembers the id so that a replayed
    /// `user.registered` does not recreate the profile. Idempotent. Returns
    /// the users a removed block involved.
    pub async fn erase(&self, user: UserId) -> Result<Vec<UserId>, DbError> {
        unilink_db::transaction(&self.db, async |tx| {
            lock_user(tx, user).await?;
            let id = user.as_uuid();
            tx.execute(
                "INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING",
                &[&id],
            )
            .await?;
            let others = tx
                .query(
                    "DELETE FROM blocks WHERE blocker_id = $1 OR blocked_id = $1
                     RETURNING CASE WHEN blocker_id = $1 THEN blocked_id ELSE blocker_id END AS other",
                    &[&id],
                )
                .await?;
            tx.execute("DELETE FROM reports WHERE reporter_id = $1 OR reported_id = $1", &[&id])
                .await?;
            tx.execute("DELETE FROM profiles WHERE user_id = $1", &[&id]).await?;
            Ok(others
                .iter()
                .map(|row| UserId::from(row.get::<_, Uuid>("other")))
                .collect())
        })
        .await
    }
}

/// Serialises creating and erasing one user's profile (two consumers may
/// handle that user's `user.registered` and `user.deleted` at once): without
/// it, a create that does not yet see the erasure could commit after it.
async fn lock_user(tx: &unilink_db::Transaction<'_>, user: UserId) -> Result<(), DbError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('profile.user:' || $1::uuid::text, 0))",
        &[&user.as_uuid()],
    )
    .await?;
    Ok(())
}

//! SQL on the `auth` schema (the pool's `search_path`).

use chrono::{DateTime, Utc};
use unilink_db::{DbError, GenericClient, PgPool, Row, Transaction, Uuid};
use unilink_domain::UserId;

/// An account as stored (the password hash is read only where it is checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: UserId,
    pub email: String,
    pub username: String,
    pub full_name: String,
    pub is_verified: bool,
    pub is_active: bool,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

const ACCOUNT_COLUMNS: &str = "id, email, username, full_name, is_verified, is_active, role, created_at";

impl Account {
    fn from_row(row: &Row) -> Self {
        Account {
            id: UserId::from(row.get::<_, Uuid>("id")),
            email: row.get("email"),
            username: row.get("username"),
            full_name: row.get("full_name"),
            is_verified: row.get("is_verified"),
            is_active: row.get("is_active"),
            role: row.get("role"),
            created_at: row.get("created_at"),
        }
    }
}

/// Which unique rule an insert broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Email,
    Username,
}

/// Reads `DbError` of a failed account insert.
pub fn taken(err: &DbError) -> Option<Taken> {
    if !err.is_unique_violation() {
        return None;
    }
    let constraint = match err {
        DbError::Postgres(e) => e.as_db_error().and_then(|d| d.constraint()).unwrap_or_default(),
        _ => "",
    };
    Some(if constraint.contains("username") {
        Taken::Username
    } else {
        Taken::Email
    })
}

/// A stored refresh token, locked for rotation.
#[derive(Debug, Clone)]
pub struct RefreshRow {
    pub family_id: Uuid,
    pub user_id: UserId,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
    pub revoked: bool,
}

/// A stored login code.
#[derive(Debug, Clone)]
pub struct OtpRow {
    pub code_hash: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct AccountRepository {
    db: PgPool,
}

impl AccountRepository {
    pub fn new(db: PgPool) -> Self {
        AccountRepository { db }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db
    }

    pub async fn find(&self, id: UserId) -> Result<Option<Account>, DbError> {
        let _timer = unilink_db::QueryTimer::start("auth", "find");
        let client = self.db.get().await?;
        // Hot path: prepared once per connection, not planned per call.
        let statement = client
            .prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"))
            .await?;
        let row = client.query_opt(&statement, &[&id.as_uuid()]).await?;
        Ok(row.as_ref().map(Account::from_row))
    }

    /// The account with this email (case-insensitive) and its password hash.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<(Account, String)>, DbError> {
        let _timer = unilink_db::QueryTimer::start("auth", "find_by_email");
        let client = self.db.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {ACCOUNT_COLUMNS}, password_hash FROM accounts WHERE lower(email) = lower($1)"),
                &[&email],
            )
            .await?;
        Ok(row.map(|r| (Account::from_row(&r), r.get("password_hash"))))
    }

    pub async fn set_password_hash(&self, id: UserId, hash: &str) -> Result<(), DbError> {
        let _timer = unilink_db::QueryTimer::start("auth", "set_password_hash");
        let client = self.db.get().await?;
        client
            .execute(
                "UPDATE accounts SET password_hash = $2, updated_at = now() WHERE id = $1",
                &[&id.as_uuid(), &hash],
            )
            .await?;
        Ok(())
    }
}

pub async fn insert_account(
    tx: &Transaction<'_>,
    id: UserId,
    email: &str,
    username: &str,
    full_name: &str,
    password_hash: &str,
) -> Result<Account, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "insert_account");
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO accounts (id, email, username, full_name, password_hash)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {ACCOUNT_COLUMNS}"
            ),
            &[&id.as_uuid(), &email, &username, &full_name, &password_hash],
        )
        .await?;
    Ok(Account::from_row(&row))
}

/// Replaces every live verification token of the user with a new one.
pub async fn replace_verification_token(
    tx: &Transaction<'_>,
    user: UserId,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "replace_verification_token");
    tx.execute(
        "DELETE FROM verification_tokens WHERE user_id = $1 AND used_at IS NULL",
        &[&user.as_uuid()],
    )
    .await?;
    tx.execute(
        "INSERT INTO verification_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        &[&token_hash, &user.as_uuid(), &expires_at],
    )
    .await?;
    Ok(())
}

/// Uses a live verification token: marks it used and the account verified;
/// returns the account, or `None` when the token is unknown, used or expired.
pub async fn use_verification_token(tx: &Transaction<'_>, token_hash: &str) -> Result<Option<Account>, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "use_verification_token");
    let Some(row) = tx
        .query_opt(
            "UPDATE verification_tokens SET used_at = now()
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
             RETURNING user_id",
            &[&token_hash],
        )
        .await?
    else {
        return Ok(None);
    };
    let user: Uuid = row.get(0);
    let row = tx
        .query_one(
            &format!(
                "UPDATE accounts SET is_verified = true, updated_at = now() WHERE id = $1 RETURNING {ACCOUNT_COLUMNS}"
            ),
            &[&user],
        )
        .await?;
    Ok(Some(Account::from_row(&row)))
}

pub async fn replace_otp(
    tx: &Transaction<'_>,
    user: UserId,
    code_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "replace_otp");
    tx.execute(
        "INSERT INTO login_otps (user_id, code_hash, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET code_hash = $2, expires_at = $3, attempts = 0, created_at = now()",
        &[&user.as_uuid(), &code_hash, &expires_at],
    )
    .await?;
    Ok(())
}

/// The user's login code, locked until the transaction ends.
pub async fn lock_otp(tx: &Transaction<'_>, user: UserId) -> Result<Option<OtpRow>, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "lock_otp");
    let row = tx
        .query_opt(
            "SELECT code_hash, expires_at FROM login_otps WHERE user_id = $1 FOR UPDATE",
            &[&user.as_uuid()],
        )
        .await?;
    Ok(row.map(|r| OtpRow {
        code_hash: r.get(0),
        expires_at: r.get(1),
    }))
}

/// Until when the user's codes (and new logins) are locked after too many
/// wrong codes, if they are.
pub async fn otp_locked_until(client: &impl GenericClient, user: UserId) -> Result<Option<DateTime<Utc>>, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "otp_locked_until");
    let row = client
        .query_opt(
            "SELECT locked_until FROM otp_failures WHERE user_id = $1 AND locked_until > now()",
            &[&user.as_uuid()],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Counts one more wrong code of `user` (across codes): the count so far.
pub async fn count_failed_otp(tx: &Transaction<'_>, user: UserId) -> Result<i32, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "count_failed_otp");
    let row = tx
        .query_one(
            "INSERT INTO otp_failures (user_id, failures) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE SET failures = otp_failures.failures + 1
             RETURNING failures",
            &[&user.as_uuid()],
        )
        .await?;
    Ok(row.get(0))
}

/// Locks the user's codes and logins until `until`.
pub async fn lock_otp_until(tx: &Transaction<'_>, user: UserId, until: DateTime<Utc>) -> Result<(), DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "lock_otp_until");
    tx.execute(
        "UPDATE otp_failures SET locked_until = $2 WHERE user_id = $1",
        &[&user.as_uuid(), &until],
    )
    .await?;
    Ok(())
}

/// A correct code: the count starts again.
pub async fn clear_otp_failures(tx: &Transaction<'_>, user: UserId) -> Result<(), DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "clear_otp_failures");
    tx.execute("DELETE FROM otp_failures WHERE user_id = $1", &[&user.as_uuid()])
        .await?;
    Ok(())
}

pub async fn delete_otp(tx: &Transaction<'_>, user: UserId) -> Result<(), DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "delete_otp");
    tx.execute("DELETE FROM login_otps WHERE user_id = $1", &[&user.as_uuid()])
        .await?;
    Ok(())
}

pub async fn account_in_tx(tx: &Transaction<'_>, user: UserId) -> Result<Option<Account>, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "account_in_tx");
    let row = tx
        .query_opt(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"),
            &[&user.as_uuid()],
        )
        .await?;
    Ok(row.as_ref().map(Account::from_row))
}

pub async fn insert_refresh_token(
    tx: &Transaction<'_>,
    token_hash: &str,
    family: Uuid,
    user: UserId,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "insert_refresh_token");
    tx.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)",
        &[&token_hash, &family, &user.as_uuid(), &expires_at],
    )
    .await?;
    Ok(())
}

/// A refresh token locked for rotation.
pub async fn lock_refresh_token(tx: &Transaction<'_>, token_hash: &str) -> Result<Option<RefreshRow>, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "lock_refresh_token");
    let row = tx
        .query_opt(
            "SELECT family_id, user_id, expires_at, used_at IS NOT NULL, revoked_at IS NOT NULL
             FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
            &[&token_hash],
        )
        .await?;
    Ok(row.map(|r| RefreshRow {
        family_id: r.get(0),
        user_id: UserId::from(r.get::<_, Uuid>(1)),
        expires_at: r.get(2),
        used: r.get(3),
        revoked: r.get(4),
    }))
}

pub async fn mark_refresh_used(tx: &Transaction<'_>, token_hash: &str) -> Result<(), DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "mark_refresh_used");
    tx.execute(
        "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
        &[&token_hash],
    )
    .await?;
    Ok(())
}

/// Revokes every token of a family; returns how many were still live.
pub async fn revoke_family(client: &impl GenericClient, family: Uuid) -> Result<u64, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "revoke_family");
    Ok(client
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
            &[&family],
        )
        .await?)
}

/// Deactivates an account; `None` when it does not exist.
pub async fn deactivate(tx: &Transaction<'_>, user: UserId) -> Result<Option<Account>, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "deactivate");
    let row = tx
        .query_opt(
            &format!(
                "UPDATE accounts SET is_active = false, updated_at = now() WHERE id = $1 RETURNING {ACCOUNT_COLUMNS}"
            ),
            &[&user.as_uuid()],
        )
        .await?;
    Ok(row.as_ref().map(Account::from_row))
}

/// Revokes every refresh token of a user.
pub async fn revoke_all_sessions(tx: &Transaction<'_>, user: UserId) -> Result<u64, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "revoke_all_sessions");
    Ok(tx
        .execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
            &[&user.as_uuid()],
        )
        .await?)
}

/// Deletes an account; its tokens and codes go with it (foreign keys cascade).
pub async fn delete_account(tx: &Transaction<'_>, user: UserId) -> Result<bool, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "delete_account");
    Ok(tx
        .execute("DELETE FROM accounts WHERE id = $1", &[&user.as_uuid()])
        .await?
        == 1)
}

/// The password hash of an account.
pub async fn password_hash(tx: &Transaction<'_>, user: UserId) -> Result<Option<(Account, String)>, DbError> {
    let _timer = unilink_db::QueryTimer::start("auth", "password_hash");
    let row = tx
        .query_opt(
            &format!("SELECT {ACCOUNT_COLUMNS}, password_hash FROM accounts WHERE id = $1 FOR UPDATE"),
            &[&user.as_uuid()],
        )
        .await?;
    Ok(row.map(|r| (Account::from_row(&r), r.get("password_hash"))))
}

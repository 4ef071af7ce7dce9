//! SQL on the `auth` schema (the pool's `search_path`).

use chrono::{DateTime, Utc};
use unilink_db::{DbError, PgPool, Row, Uuid};
use unilink_domain::UserId;

/// An account as stored (the password hash never leaves this crate).
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

#[derive(Debug, Clone)]
pub struct AccountRepository {
    db: PgPool,
}

impl AccountRepository {
    pub fn new(db: PgPool) -> Self {
        AccountRepository { db }
    }

    pub async fn find(&self, id: UserId) -> Result<Option<Account>, DbError> {
        let client = self.db.get().await?;
        let row = client
            .query_opt(
                "SELECT id, email, username, full_name, is_verified, is_active, role, created_at
                 FROM accounts WHERE id = $1",
                &[&id.as_uuid()],
            )
            .await?;
        Ok(row.as_ref().map(Account::from_row))
    }
}

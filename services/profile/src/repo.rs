//! SQL on the `profile` schema (the pool's `search_path`).

use chrono::{DateTime, Utc};
use unilink_db::{DbError, PgPool, Row, Uuid};
use unilink_domain::UserId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub user_id: UserId,
    pub username: String,
    pub full_name: String,
    pub bio: String,
    pub profile_picture: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Profile {
    fn from_row(row: &Row) -> Self {
        Profile {
            user_id: UserId::from(row.get::<_, Uuid>("user_id")),
            username: row.get("username"),
            full_name: row.get("full_name"),
            bio: row.get("bio"),
            profile_picture: row.get("profile_picture"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProfileRepository {
    db: PgPool,
}

impl ProfileRepository {
    pub fn new(db: PgPool) -> Self {
        ProfileRepository { db }
    }

    pub async fn find(&self, user_id: UserId) -> Result<Option<Profile>, DbError> {
        let client = self.db.get().await?;
        let row = client
            .query_opt(
                "SELECT user_id, username, full_name, bio, profile_picture, created_at, updated_at
                 FROM profiles WHERE user_id = $1",
                &[&user_id.as_uuid()],
            )
            .await?;
        Ok(row.as_ref().map(Profile::from_row))
    }
}

//! The user JSON of the public API:
//! `id, email, username, full_name, profile_picture, bio, is_verified, is_online, created_at`.

use chrono::SecondsFormat;
use serde::Serialize;
use unilink_proto::auth::Account;

#[derive(Debug, Serialize)]
pub struct UserJson {
    pub id: String,
    pub email: String,
    pub username: String,
    pub full_name: String,
    pub profile_picture: Option<String>,
    pub bio: Option<String>,
    pub is_verified: bool,
    pub is_online: bool,
    pub created_at: Option<String>,
}

/// RFC 3339 in UTC with a `Z`, as the contract asks.
pub fn rfc3339(ts: Option<&unilink_proto::Timestamp>) -> Option<String> {
    ts.and_then(unilink_proto::from_timestamp)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

impl UserJson {
    /// From auth's account (the profile service adds picture and bio later).
    pub fn from_account(account: Account, is_online: bool) -> UserJson {
        UserJson {
            created_at: rfc3339(account.created_at.as_ref()),
            id: account.id,
            email: account.email,
            username: account.username,
            full_name: account.full_name,
            profile_picture: None,
            bio: None,
            is_verified: account.is_verified,
            is_online,
        }
    }
}

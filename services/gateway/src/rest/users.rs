//! The user JSON of the public API:
//! `id, email, username, full_name, profile_picture, bio, is_verified, is_online, created_at`.

use actix_web::{HttpResponse, web};
use chrono::SecondsFormat;
use serde::Serialize;
use unilink_proto::auth::auth_service_client::AuthServiceClient;
use unilink_proto::auth::{Account, GetAccountRequest};

use crate::clients::Upstreams;
use crate::error::ApiError;
use crate::identity::Authenticated;

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

/// `GET /users/me`: the caller's account (the user id comes from the verified
/// token, never from the client).
pub async fn me(upstreams: web::Data<Upstreams>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let account = AuthServiceClient::new(upstreams.auth.clone())
        .get_account(GetAccountRequest {
            user_id: caller.0.user_id.to_string(),
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(UserJson::from_account(account, false)))
}

//! The user JSON of the public API:
//! `id, email, username, full_name, profile_picture, bio, is_verified, is_online, created_at`.

use actix_web::{HttpResponse, web};
use chrono::SecondsFormat;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use unilink_domain::UserId;
use unilink_errors::ErrorCode;
use unilink_grpc::GrpcChannel;
use unilink_proto::auth::GetAccountRequest;
use unilink_proto::auth::auth_service_client::AuthServiceClient;
use unilink_proto::profile::profile_service_client::ProfileServiceClient;
use unilink_proto::profile::{
    BlockRequest, GetProfileRequest, ListAvailableRequest, ReportRequest, UpdateProfileRequest, ViewProfileRequest,
};

use crate::clients::Upstreams;
use crate::error::ApiError;
use crate::identity::Authenticated;
use crate::rest::views::{CallJson, ReportJson, UserJson, rfc3339};

fn profiles(upstreams: &Upstreams) -> ProfileServiceClient<GrpcChannel> {
    ProfileServiceClient::new(upstreams.profile.clone())
}

/// A user id from the path.
fn path_user(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}

/// `GET /users/me`: the caller (the id comes from the verified token, never
/// from the client).
pub async fn me(upstreams: web::Data<Upstreams>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let user_id = caller.0.user_id.to_string();
    match profiles(&upstreams)
        .get_profile(GetProfileRequest {
            user_id: user_id.clone(),
        })
        .await
    {
        Ok(profile) => Ok(HttpResponse::Ok().json(UserJson::from_profile(profile.into_inner()))),
        // The profile is created from auth's event a few milliseconds after
        // sign-up; until then the account alone answers.
        Err(status) if status.code() == tonic::Code::NotFound => {
            let account = AuthServiceClient::new(upstreams.auth.clone())
                .get_account(GetAccountRequest { user_id })
                .await?
                .into_inner();
            Ok(HttpResponse::Ok().json(UserJson::from_account(account, false)))
        }
        Err(status) => Err(status.into()),
    }
}

/// `null` in JSON is `Some(None)`; an absent field is `None`.
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
pub struct UpdateBody {
    full_name: Option<String>,
    bio: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    profile_picture: Option<Option<String>>,
}

/// `PUT /users/me`: partial update of the caller's own profile.
pub async fn update_me(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (profile_picture, clear) = match body.profile_picture {
        None => (None, false),
        Some(None) => (None, true),
        Some(Some(url)) => (Some(url), false),
    };
    let profile = profiles(&upstreams)
        .update_profile(UpdateProfileRequest {
            user_id: caller.0.user_id.to_string(),
            full_name: body.full_name,
            bio: body.bio,
            profile_picture,
            clear_profile_picture: clear,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(UserJson::from_profile(profile)))
}

/// `GET /users/{id}`: 403 when that user blocked the caller, 404 when absent.
pub async fn get_user(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user(&path)?;
    let profile = profiles(&upstreams)
        .view_profile(ViewProfileRequest {
            viewer_id: caller.0.user_id.to_string(),
            user_id: user.to_string(),
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(UserJson::from_profile(profile)))
}

/// `POST /users/block/{id}`: idempotent; 400 for yourself, 404 for nobody.
pub async fn block(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_block(&upstreams, &caller, &path, true).await
}

/// `POST /users/unblock/{id}`: 404 when not blocked.
pub async fn unblock(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_block(&upstreams, &caller, &path, false).await
}

async fn change_block(
    upstreams: &Upstreams,
    caller: &Authenticated,
    path: &str,
    block: bool,
) -> Result<HttpResponse, ApiError> {
    let request = BlockRequest {
        user_id: caller.0.user_id.to_string(),
        target_id: path_user(path)?.to_string(),
    };
    let mut client = profiles(upstreams);
    let ack = if block {
        client.block(request).await?
    } else {
        client.unblock(request).await?
    }
    .into_inner();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": ack.message })))
}

#[derive(Debug, Deserialize)]
pub struct ReportBody {
    reason: String,
    description: Option<String>,
    /// The frontend sends the reported id again; it must match the path.
    user_id: Option<String>,
}

pub async fn report(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<ReportBody>,
) -> Result<HttpResponse, ApiError> {
    let target = path_user(&path)?;
    let body = body.into_inner();
    if let Some(claimed) = &body.user_id
        && UserId::parse(claimed).ok() != Some(target)
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "user_id in the body does not match the URL",
        ));
    }
    let ack = profiles(&upstreams)
        .report(ReportRequest {
            reporter_id: caller.0.user_id.to_string(),
            reported_id: target.to_string(),
            reason: body.reason,
            description: body.description,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": ack.message })))
}

#[derive(Debug, Deserialize)]
pub struct AvailableQuery {
    limit: Option<u32>,
}

/// One entry of `GET /calls/available`.
#[derive(Debug, Serialize)]
pub struct AvailableJson {
    id: String,
    username: String,
    full_name: String,
    profile_picture: Option<String>,
    bio: Option<String>,
    is_online: bool,
}

/// `GET /calls/available?limit=1..50` (default 20).
pub async fn available(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    query: web::Query<AvailableQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::new(ErrorCode::BadRequest, "limit must be between 1 and 50"));
    }
    let users = profiles(&upstreams)
        .list_available(ListAvailableRequest {
            user_id: caller.0.user_id.to_string(),
            limit,
        })
        .await?
        .into_inner()
        .users;
    let list: Vec<AvailableJson> = users
        .into_iter()
        .map(|p| AvailableJson {
            id: p.user_id,
            username: p.username,
            full_name: p.full_name,
            profile_picture: p.profile_picture,
            bio: p.bio,
            is_online: p.is_online,
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// `GET /users/me/export`: everything stored about the caller, across services.
pub async fn export(upstreams: web::Data<Upstreams>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let user_id = caller.0.user_id.to_string();
    let mut auth = AuthServiceClient::new(upstreams.auth.clone());
    let mut profile = profiles(&upstreams);
    let mut signaling =
        unilink_proto::signaling::signaling_service_client::SignalingServiceClient::new(upstreams.signaling.clone());
    let (account, data, calls) = tokio::join!(
        auth.get_account(GetAccountRequest {
            user_id: user_id.clone()
        }),
        profile.export_user_data(GetProfileRequest {
            user_id: user_id.clone()
        }),
        signaling.export_calls(unilink_proto::signaling::UserRequest { user_id }),
    );
    let account = account?.into_inner();
    let data = data?.into_inner();
    let calls: Vec<CallJson> = calls?.into_inner().calls.into_iter().map(Into::into).collect();
    let blocks: Vec<Value> = data
        .blocks
        .into_iter()
        .map(|b| serde_json::json!({ "blocked_id": b.blocked_id, "created_at": rfc3339(b.created_at.as_ref()) }))
        .collect();
    let reports: Vec<ReportJson> = data.reports.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Content-Disposition", "attachment; filename=\"unilink-data.json\""))
        .json(serde_json::json!({
            "exported_at": chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            "account": {
                "id": account.id,
                "email": account.email,
                "username": account.username,
                "full_name": account.full_name,
                "is_verified": account.is_verified,
                "is_active": account.is_active,
                "role": account.role,
                "created_at": rfc3339(account.created_at.as_ref()),
            },
            "profile": data.profile.map(UserJson::from_profile),
            "blocks": blocks,
            "reports": reports,
            "calls": calls,
        })))
}

#[derive(Debug, Deserialize)]
pub struct DeleteBody {
    password: String,
}

/// `DELETE /users/me` with `{password}`: deletes the account; every service
/// erases its data through the durable `user.deleted` event.
pub async fn delete_me(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    body: web::Json<DeleteBody>,
) -> Result<HttpResponse, ApiError> {
    let ack = AuthServiceClient::new(upstreams.auth.clone())
        .delete_account(unilink_proto::auth::DeleteAccountRequest {
            user_id: caller.0.user_id.to_string(),
            password: body.into_inner().password,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": ack.message })))
}

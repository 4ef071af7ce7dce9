//! `/admin/*`: moderation, for tokens with `role = admin` only (403 otherwise).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use unilink_errors::ErrorCode;
use unilink_proto::auth::auth_service_client::AuthServiceClient;
use unilink_proto::auth::{DeactivateAccountRequest, GetAccountRequest};
use unilink_proto::profile::profile_service_client::ProfileServiceClient;
use unilink_proto::profile::{ListReportsRequest, ResolveReportRequest};

use crate::clients::Upstreams;
use crate::error::ApiError;
use crate::identity::{Authenticated, Identity};
use crate::rest::views::{ReportJson, UserJson};

/// The caller, if they are an administrator now: the token must say so,
/// and auth must still say so (a demotion or deactivation takes effect at
/// the next admin request, not when the token expires).
pub async fn admin(upstreams: &Upstreams, caller: Authenticated) -> Result<Identity, ApiError> {
    let refused = || ApiError::new(ErrorCode::Forbidden, "administrator role required");
    if !caller.0.claims.is_admin() {
        return Err(refused());
    }
    let account = AuthServiceClient::new(upstreams.auth.clone())
        .get_account(GetAccountRequest {
            user_id: caller.0.user_id.to_string(),
        })
        .await?
        .into_inner();
    if account.role != "admin" || !account.is_active {
        return Err(refused());
    }
    Ok(caller.0)
}

#[derive(Debug, Deserialize)]
pub struct ReportsQuery {
    status: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /admin/reports?status=open&limit=50&offset=0`, newest first.
pub async fn reports(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    query: web::Query<ReportsQuery>,
) -> Result<HttpResponse, ApiError> {
    admin(&upstreams, caller).await?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(ErrorCode::BadRequest, "limit must be between 1 and 100"));
    }
    let offset = query.offset.unwrap_or(0);
    let answer = ProfileServiceClient::new(upstreams.profile.clone())
        .list_reports(ListReportsRequest {
            status: query.status.clone().unwrap_or_default(),
            limit,
            offset,
        })
        .await?
        .into_inner();
    let reports: Vec<ReportJson> = answer.reports.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "reports": reports,
        "total": answer.total,
        "limit": limit,
        "offset": offset,
    })))
}

/// `POST /admin/reports/{id}/resolve`.
pub async fn resolve(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&upstreams, caller).await?;
    let report = ProfileServiceClient::new(upstreams.profile.clone())
        .resolve_report(ResolveReportRequest {
            report_id: path.into_inner(),
            admin_id: admin.user_id.to_string(),
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(ReportJson::from(report)))
}

/// `POST /admin/users/{id}/deactivate`: tokens stop working at once, the
/// user goes offline and cannot log in.
pub async fn deactivate(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&upstreams, caller).await?;
    let account = AuthServiceClient::new(upstreams.auth.clone())
        .deactivate_account(DeactivateAccountRequest {
            admin_id: admin.user_id.to_string(),
            user_id: path.into_inner(),
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "message": "User deactivated",
        "user": UserJson::from_account(account, false),
    })))
}

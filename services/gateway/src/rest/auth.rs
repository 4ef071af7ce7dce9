//! `/auth/*`: sign-up, verification, login with an emailed code, refresh, logout.
//! Shapes follow the existing frontend (ARCHITECTURE.md, "Public API").

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use unilink_proto::auth::auth_service_client::AuthServiceClient;
use unilink_proto::auth::{
    LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, ResendVerificationRequest, Session,
    VerifyEmailRequest, VerifyLoginOtpRequest,
};

use crate::clients::Upstreams;
use crate::error::ApiError;
use crate::identity::Authenticated;
use crate::rest::views::UserJson;

fn auth(upstreams: &Upstreams) -> AuthServiceClient<unilink_grpc::GrpcChannel> {
    AuthServiceClient::new(upstreams.auth.clone())
}

#[derive(Debug, Deserialize)]
pub struct RegisterBody {
    email: String,
    username: String,
    full_name: String,
    password: String,
}

pub async fn register(
    upstreams: web::Data<Upstreams>,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let account = auth(&upstreams)
        .register(RegisterRequest {
            email: body.email,
            username: body.username,
            full_name: body.full_name,
            password: body.password,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(UserJson::from_account(account, false)))
}

/// A logged-in session as the frontend expects it.
#[derive(Debug, Serialize)]
pub struct TokenJson {
    access_token: String,
    token_type: &'static str,
    refresh_token: String,
    expires_in: u64,
    user: UserJson,
}

impl TokenJson {
    fn from_session(session: Session) -> Result<TokenJson, ApiError> {
        let account = session
            .account
            .ok_or_else(|| ApiError::internal("auth answered a session without an account"))?;
        Ok(TokenJson {
            access_token: session.access_token,
            token_type: "bearer",
            refresh_token: session.refresh_token,
            expires_in: session.expires_in,
            user: UserJson::from_account(account, true),
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct TokenBody {
    token: String,
}

pub async fn verify_email(
    upstreams: web::Data<Upstreams>,
    body: web::Json<TokenBody>,
) -> Result<HttpResponse, ApiError> {
    let session = auth(&upstreams)
        .verify_email(VerifyEmailRequest {
            token: body.into_inner().token,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(TokenJson::from_session(session)?))
}

#[derive(Debug, Deserialize)]
pub struct EmailBody {
    email: String,
}

pub async fn resend_verification(
    upstreams: web::Data<Upstreams>,
    body: web::Json<EmailBody>,
) -> Result<HttpResponse, ApiError> {
    let ack = auth(&upstreams)
        .resend_verification(ResendVerificationRequest {
            email: body.into_inner().email,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "message": ack.message })))
}

#[derive(Debug, Deserialize)]
pub struct LoginBody {
    email: String,
    password: String,
}

pub async fn login(upstreams: web::Data<Upstreams>, body: web::Json<LoginBody>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let ack = auth(&upstreams)
        .login(LoginRequest {
            email: body.email,
            password: body.password,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "otp_required": true, "message": ack.message })))
}

#[derive(Debug, Deserialize)]
pub struct OtpBody {
    email: String,
    otp: String,
}

pub async fn verify_otp(upstreams: web::Data<Upstreams>, body: web::Json<OtpBody>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let session = auth(&upstreams)
        .verify_login_otp(VerifyLoginOtpRequest {
            email: body.email,
            otp: body.otp,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(TokenJson::from_session(session)?))
}

#[derive(Debug, Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

pub async fn refresh(upstreams: web::Data<Upstreams>, body: web::Json<RefreshBody>) -> Result<HttpResponse, ApiError> {
    let session = auth(&upstreams)
        .refresh(RefreshRequest {
            refresh_token: body.into_inner().refresh_token,
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(TokenJson::from_session(session)?))
}

/// The optional body of `POST /auth/logout`.
#[derive(Debug, Default, Deserialize)]
pub struct LogoutBody {
    refresh_token: Option<String>,
}

/// `POST /auth/logout`. Without a body (the original web client, on every
/// page unload, keeping its token afterwards) it marks the user offline and
/// revokes nothing. With `{"refresh_token"}` it is a full logout: that
/// session's refresh family and this access token are refused by every
/// gateway at once, and the session's sockets are closed.
pub async fn logout(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: LogoutBody = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(unilink_errors::ErrorCode::BadRequest, format!("invalid JSON body: {e}")))?
    };
    let claims = caller.0.claims;
    let ack = auth(&upstreams)
        .logout(LogoutRequest {
            user_id: claims.sub,
            token_id: claims.jti,
            family_id: claims.fid,
            expires_at: claims.exp,
            refresh_token: body.refresh_token.unwrap_or_default(),
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": ack.message })))
}

//! `unilink.auth.v1.AuthService`: converts, calls the core, converts back.

use tonic::{Request, Response, Status};
use unilink_domain::UserId;
use unilink_proto::auth::auth_service_server::{AuthService as AuthRpc, AuthServiceServer};
use unilink_proto::auth::{
    Account as AccountMessage, Ack, DeactivateAccountRequest, DeleteAccountRequest, GetAccountRequest,
    GetVerificationKeysRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
    ResendVerificationRequest, Session as SessionMessage, VerificationKey, VerificationKeys, VerifyEmailRequest,
    VerifyLoginOtpRequest,
};

use crate::error::AuthError;
use crate::repo::Account;
use crate::service::{AuthService, LogoutClaims, Registration, Session};

/// The gRPC face of the core: parses requests, calls it, converts results.
#[derive(Debug, Clone)]
pub struct AuthApi {
    core: AuthService,
}

pub fn server(core: AuthService) -> AuthServiceServer<AuthApi> {
    AuthServiceServer::new(AuthApi { core })
}

impl From<Account> for AccountMessage {
    fn from(a: Account) -> Self {
        AccountMessage {
            id: a.id.to_string(),
            email: a.email,
            username: a.username,
            full_name: a.full_name,
            is_verified: a.is_verified,
            is_active: a.is_active,
            role: a.role,
            created_at: Some(unilink_proto::timestamp(a.created_at)),
        }
    }
}

impl From<Session> for SessionMessage {
    fn from(s: Session) -> Self {
        SessionMessage {
            access_token: s.access_token,
            refresh_token: s.refresh_token,
            expires_in: s.expires_in,
            account: Some(s.account.into()),
        }
    }
}

fn ack(message: &str) -> Response<Ack> {
    Response::new(Ack {
        message: message.to_owned(),
    })
}

/// What resend-verification always answers.
pub const RESEND_MESSAGE: &str =
    "If an unverified account exists for this email, a new verification email has been sent.";
/// What a successful password check answers.
pub const OTP_SENT_MESSAGE: &str = "A 6-digit login code has been sent to your email. It is valid for 10 minutes.";

#[tonic::async_trait]
impl AuthRpc for AuthApi {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn get_account(&self, request: Request<GetAccountRequest>) -> Result<Response<AccountMessage>, Status> {
        let id = UserId::parse(&request.get_ref().user_id).map_err(AuthError::from)?;
        Ok(Response::new(self.core.get_account(id).await?.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<AccountMessage>, Status> {
        let r = request.into_inner();
        let account = self
            .core
            .register(Registration {
                email: r.email,
                username: r.username,
                full_name: r.full_name,
                password: r.password,
            })
            .await?;
        Ok(Response::new(account.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_email(&self, request: Request<VerifyEmailRequest>) -> Result<Response<SessionMessage>, Status> {
        Ok(Response::new(
            self.core.verify_email(&request.get_ref().token).await?.into(),
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn resend_verification(&self, request: Request<ResendVerificationRequest>) -> Result<Response<Ack>, Status> {
        self.core.resend_verification(&request.get_ref().email).await?;
        Ok(ack(RESEND_MESSAGE))
    }

    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<Ack>, Status> {
        let r = request.get_ref();
        self.core.login(&r.email, &r.password).await?;
        Ok(ack(OTP_SENT_MESSAGE))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_login_otp(
        &self,
        request: Request<VerifyLoginOtpRequest>,
    ) -> Result<Response<SessionMessage>, Status> {
        let r = request.get_ref();
        Ok(Response::new(
            self.core.verify_login_otp(&r.email, &r.otp).await?.into(),
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<Response<SessionMessage>, Status> {
        Ok(Response::new(
            self.core.refresh(&request.get_ref().refresh_token).await?.into(),
        ))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<Ack>, Status> {
        let r = request.into_inner();
        let user_id = UserId::parse(&r.user_id).map_err(AuthError::from)?;
        self.core
            .logout(LogoutClaims {
                user_id,
                token_id: r.token_id,
                family_id: r.family_id,
                expires_at: r.expires_at,
                refresh_token: Some(r.refresh_token).filter(|t| !t.is_empty()),
            })
            .await?;
        Ok(ack("Successfully logged out"))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn deactivate_account(
        &self,
        request: Request<DeactivateAccountRequest>,
    ) -> Result<Response<AccountMessage>, Status> {
        let r = request.get_ref();
        let admin = UserId::parse(&r.admin_id).map_err(AuthError::from)?;
        let user = UserId::parse(&r.user_id).map_err(AuthError::from)?;
        Ok(Response::new(self.core.deactivate(admin, user).await?.into()))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn delete_account(&self, request: Request<DeleteAccountRequest>) -> Result<Response<Ack>, Status> {
        let r = request.get_ref();
        let user = UserId::parse(&r.user_id).map_err(AuthError::from)?;
        self.core.delete_account(user, &r.password).await?;
        Ok(ack("Your account and personal data have been deleted"))
    }

    async fn get_verification_keys(
        &self,
        _request: Request<GetVerificationKeysRequest>,
    ) -> Result<Response<VerificationKeys>, Status> {
        let keys = self.core.keys();
        Ok(Response::new(VerificationKeys {
            keys: keys
                .public_keys()
                .iter()
                .map(|k| VerificationKey {
                    kid: k.kid.clone(),
                    algorithm: k.algorithm.clone(),
                    material: k.material.clone(),
                })
                .collect(),
            issuer: keys.issuer().to_owned(),
            audience: keys.audience().to_owned(),
        }))
    }
}

//! Everything the auth service can answer instead of a result.

use unilink_bus::BusError;
use unilink_db::DbError;
use unilink_domain::DomainError;
use unilink_errors::{ErrorCode, HasErrorCode};
use unilink_tokens::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("registration is open to university emails only ({0})")]
    DomainNotAllowed(String),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("this username is already taken")]
    UsernameTaken,
    #[error("account not found")]
    AccountNotFound,
    #[error("only administrators may do this")]
    NotAdmin,
    #[error("incorrect password")]
    WrongPassword,
    #[error("incorrect email or password")]
    BadCredentials,
    #[error("email address not verified; check your inbox or request a new verification email")]
    NotVerified,
    #[error("this account has been deactivated")]
    Inactive,
    #[error("invalid or expired verification token")]
    InvalidVerificationToken,
    #[error("invalid or expired code")]
    InvalidOtp,
    #[error("too many wrong codes; try again in {0} seconds")]
    OtpLocked(u64),
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    #[error("refresh token was already used; every session of this login has been revoked")]
    RefreshReuse,
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] BusError),
    #[error("token signing failed: {0}")]
    Token(#[from] TokenError),
    #[error("sealing a secret for notification failed: {0}")]
    Seal(#[from] unilink_events::seal::SealError),
    #[error("{0}")]
    Internal(String),
}

impl HasErrorCode for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            AuthError::Invalid(_)
            | AuthError::DomainNotAllowed(_)
            | AuthError::InvalidVerificationToken
            | AuthError::InvalidOtp
            | AuthError::OtpLocked(_) => ErrorCode::BadRequest,
            AuthError::EmailTaken | AuthError::UsernameTaken => ErrorCode::Conflict,
            AuthError::AccountNotFound => ErrorCode::NotFound,
            AuthError::BadCredentials
            | AuthError::InvalidRefreshToken
            | AuthError::RefreshReuse
            | AuthError::WrongPassword => ErrorCode::Unauthenticated,
            AuthError::NotVerified | AuthError::Inactive | AuthError::NotAdmin => ErrorCode::Forbidden,
            AuthError::Database(e) => e.code(),
            AuthError::Redis(e) => e.code(),
            AuthError::Token(_) | AuthError::Seal(_) | AuthError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        unilink_errors::to_status(&err)
    }
}

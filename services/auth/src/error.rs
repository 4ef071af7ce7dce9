//! Everything the auth service can answer instead of a result.

use unilink_db::DbError;
use unilink_domain::DomainError;
use unilink_errors::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("account not found")]
    AccountNotFound,
    #[error(transparent)]
    Database(#[from] DbError),
}

impl HasErrorCode for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            AuthError::Invalid(_) => ErrorCode::BadRequest,
            AuthError::AccountNotFound => ErrorCode::NotFound,
            AuthError::Database(e) => e.code(),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        unilink_errors::to_status(&err)
    }
}

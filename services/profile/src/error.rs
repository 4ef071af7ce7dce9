//! Everything the profile service can answer instead of a result.

use unilink_db::DbError;
use unilink_domain::DomainError;
use unilink_errors::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("user not found")]
    ProfileNotFound,
    #[error(transparent)]
    Database(#[from] DbError),
}

impl HasErrorCode for ProfileError {
    fn code(&self) -> ErrorCode {
        match self {
            ProfileError::Invalid(_) => ErrorCode::BadRequest,
            ProfileError::ProfileNotFound => ErrorCode::NotFound,
            ProfileError::Database(e) => e.code(),
        }
    }
}

impl From<ProfileError> for tonic::Status {
    fn from(err: ProfileError) -> Self {
        unilink_errors::to_status(&err)
    }
}

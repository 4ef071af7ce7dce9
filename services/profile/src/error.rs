//! Everything the profile service can answer instead of a result.

use unilink_bus::BusError;
use unilink_db::DbError;
use unilink_domain::DomainError;
use unilink_errors::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("user not found")]
    ProfileNotFound,
    #[error("this user has blocked you")]
    BlockedByUser,
    #[error("you cannot {0} yourself")]
    SelfAction(&'static str),
    #[error("this user is not blocked")]
    NotBlocked,
    #[error("you already have an open report about this user")]
    ReportAlreadyOpen,
    #[error("report not found")]
    ReportNotFound,
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] BusError),
}

impl HasErrorCode for ProfileError {
    fn code(&self) -> ErrorCode {
        match self {
            ProfileError::Invalid(_) | ProfileError::SelfAction(_) => ErrorCode::BadRequest,
            ProfileError::ProfileNotFound | ProfileError::NotBlocked | ProfileError::ReportNotFound => {
                ErrorCode::NotFound
            }
            ProfileError::BlockedByUser => ErrorCode::Forbidden,
            ProfileError::ReportAlreadyOpen => ErrorCode::Conflict,
            ProfileError::Database(e) => e.code(),
            ProfileError::Redis(e) => e.code(),
        }
    }
}

impl From<ProfileError> for tonic::Status {
    fn from(err: ProfileError) -> Self {
        unilink_errors::to_status(&err)
    }
}

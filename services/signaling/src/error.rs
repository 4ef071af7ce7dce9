//! Everything the signaling service can answer instead of a result.

use unilink_db::DbError;
use unilink_domain::DomainError;
use unilink_errors::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("call not found")]
    CallNotFound,
    #[error("call {0} has an unknown status {1:?}")]
    CorruptStatus(String, String),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl HasErrorCode for SignalingError {
    fn code(&self) -> ErrorCode {
        match self {
            SignalingError::Invalid(_) => ErrorCode::BadRequest,
            SignalingError::CallNotFound => ErrorCode::NotFound,
            SignalingError::CorruptStatus(..) => ErrorCode::Internal,
            SignalingError::Database(e) => e.code(),
        }
    }
}

impl From<SignalingError> for tonic::Status {
    fn from(err: SignalingError) -> Self {
        unilink_errors::to_status(&err)
    }
}

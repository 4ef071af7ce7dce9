//! Everything the notification service can answer instead of a result.

use unilink_db::DbError;
use unilink_domain::DomainError;
use unilink_errors::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("no delivery recorded for this event")]
    DeliveryNotFound,
    #[error("delivery of event {0} has an unknown status {1:?}")]
    CorruptStatus(String, String),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl HasErrorCode for NotificationError {
    fn code(&self) -> ErrorCode {
        match self {
            NotificationError::Invalid(_) => ErrorCode::BadRequest,
            NotificationError::DeliveryNotFound => ErrorCode::NotFound,
            NotificationError::CorruptStatus(..) => ErrorCode::Internal,
            NotificationError::Database(e) => e.code(),
        }
    }
}

impl From<NotificationError> for tonic::Status {
    fn from(err: NotificationError) -> Self {
        unilink_errors::to_status(&err)
    }
}

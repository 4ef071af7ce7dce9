//! Everything the signaling service can answer instead of a result.

use unilink_bus::BusError;
use unilink_db::DbError;
use unilink_domain::DomainError;
use unilink_errors::{ErrorCode, HasErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("call not found")]
    CallNotFound,
    #[error("user not found")]
    UserNotFound,
    #[error("you are not a participant of this call")]
    NotParticipant,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("you or the receiver already have a call in progress")]
    Busy,
    #[error("{0}")]
    WrongState(String),
    #[error("this replica is shutting down; reconnect")]
    Draining,
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("call {0} has an unknown status {1:?}")]
    CorruptStatus(String, String),
    #[error("the profile service did not answer: {0}")]
    Profiles(tonic::Status),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Redis(#[from] BusError),
}

impl HasErrorCode for SignalingError {
    fn code(&self) -> ErrorCode {
        match self {
            SignalingError::Invalid(_) | SignalingError::BadRequest(_) => ErrorCode::BadRequest,
            SignalingError::CallNotFound | SignalingError::UserNotFound => ErrorCode::NotFound,
            SignalingError::NotParticipant | SignalingError::Forbidden(_) => ErrorCode::Forbidden,
            SignalingError::Busy | SignalingError::WrongState(_) => ErrorCode::Conflict,
            SignalingError::CorruptStatus(..) | SignalingError::Internal(_) => ErrorCode::Internal,
            SignalingError::Profiles(status) => match ErrorCode::from_upstream(status.code()) {
                code @ (ErrorCode::Unavailable | ErrorCode::Timeout) => code,
                _ => ErrorCode::Internal,
            },
            SignalingError::Draining => ErrorCode::Unavailable,
            SignalingError::Database(e) => e.code(),
            SignalingError::Redis(e) => e.code(),
        }
    }
}

impl From<SignalingError> for tonic::Status {
    fn from(err: SignalingError) -> Self {
        unilink_errors::to_status(&err)
    }
}

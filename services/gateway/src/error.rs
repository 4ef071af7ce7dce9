//! Failures as HTTP answers: always `{"detail": "..."}`, with the status from
//! the shared error-code table.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use unilink_errors::ErrorCode;

/// An error answer of the public API.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
        }
    }

    /// A bug on our side: logged, answered with the generic sentence.
    pub fn internal(what: &str) -> Self {
        tracing::error!(what, "internal error");
        ApiError::new(ErrorCode::Internal, ErrorCode::Internal.public_message())
    }
}

impl From<tonic::Status> for ApiError {
    /// Maps a backend's gRPC status through the table; messages of server-side
    /// failures are replaced (they were already logged where they happened).
    fn from(status: tonic::Status) -> Self {
        let code = ErrorCode::from_upstream(status.code());
        let detail = if code.is_client_error() {
            status.message().to_owned()
        } else {
            // A 500 is a bug somewhere: an error (reported to Sentry with the
            // request's context); 503/504 are outages, for metrics and alerts.
            if code == ErrorCode::Internal {
                tracing::error!(grpc.code = ?status.code(), grpc.message = status.message(), "upstream call failed");
            } else {
                tracing::warn!(grpc.code = ?status.code(), grpc.message = status.message(), "upstream call failed");
            }
            code.public_message().to_owned()
        };
        ApiError { code, detail }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::Unauthenticated {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(serde_json::json!({ "detail": self.detail }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_become_http_answers() {
        let e = ApiError::from(tonic::Status::not_found("user not found"));
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(e.detail, "user not found");
        let e = ApiError::from(tonic::Status::internal("connection refused at 10.0.0.3"));
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.detail, "internal server error");
        let e = ApiError::from(tonic::Status::unavailable("x"));
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(tonic::Status::unknown("transport error"));
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::new(ErrorCode::Unauthenticated, "missing token");
        assert_eq!(e.error_response().headers().get("WWW-Authenticate").unwrap(), "Bearer");
    }
}

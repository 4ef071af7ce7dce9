//! The one error-code table.
//!
//! Every service has its own `thiserror` enum; each variant names an
//! [`ErrorCode`]. The code alone decides the HTTP status (at the gateway) and the
//! gRPC code (between services), so a failure keeps its meaning across hops:
//! a `NotFound` raised in the profile service is a gRPC `NOT_FOUND` on the wire
//! and a 404 at the edge.
//!
//! Messages of [`ErrorCode::Internal`] and [`ErrorCode::Unavailable`] errors
//! never reach a client: they are logged and replaced by a generic sentence.

use std::fmt;

/// What kind of failure happened, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The input is malformed or breaks a validation rule (400).
    BadRequest,
    /// No or bad credentials (401).
    Unauthenticated,
    /// Authenticated, but not allowed (403).
    Forbidden,
    /// The thing does not exist, or the caller may not know it does (404).
    NotFound,
    /// The action conflicts with the current state (409).
    Conflict,
    /// The body or frame is too large (413).
    PayloadTooLarge,
    /// Too many requests (429).
    RateLimited,
    /// A bug or an unexpected failure (500).
    Internal,
    /// A dependency is down; retrying later may work (503).
    Unavailable,
    /// A deadline passed before the work finished (504).
    Timeout,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
    ];

    /// The HTTP status the gateway answers with.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// The gRPC code services answer with.
    pub const fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::BadRequest => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::Forbidden => tonic::Code::PermissionDenied,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::Conflict => tonic::Code::FailedPrecondition,
            ErrorCode::PayloadTooLarge => tonic::Code::OutOfRange,
            ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Timeout => tonic::Code::DeadlineExceeded,
        }
    }

    /// The code for a gRPC status received from another service.
    ///
    /// Codes a UniLink service never sends on purpose (`Unknown`, `DataLoss`,
    /// `Unimplemented`…) are internal errors; `Cancelled` and `Aborted` mean
    /// the work did not happen and may be retried, so they are `Unavailable`.
    pub const fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::InvalidArgument => ErrorCode::BadRequest,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorCode::Forbidden,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => ErrorCode::Conflict,
            tonic::Code::OutOfRange => ErrorCode::PayloadTooLarge,
            tonic::Code::ResourceExhausted => ErrorCode::RateLimited,
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Aborted => ErrorCode::Unavailable,
            tonic::Code::DeadlineExceeded => ErrorCode::Timeout,
            tonic::Code::Ok
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unimplemented
            | tonic::Code::DataLoss => ErrorCode::Internal,
        }
    }

    /// The code for the status of a call this service made to another one.
    /// Like [`ErrorCode::from_grpc`], except that `Unknown` is
    /// `Unavailable`: our services never answer it themselves, it is
    /// tonic's report of a connection that broke mid-call (a replica died
    /// or restarted), an outage to retry rather than a bug.
    pub const fn from_upstream(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::Unknown => ErrorCode::Unavailable,
            other => ErrorCode::from_grpc(other),
        }
    }

    /// Whether the message may be shown to a client. Internal details of
    /// server-side failures are logged, never sent.
    pub const fn is_client_error(self) -> bool {
        self.http_status() < 500
    }

    /// The sentence a client sees instead of the message of a server-side failure.
    pub const fn public_message(self) -> &'static str {
        match self {
            ErrorCode::Unavailable => "service temporarily unavailable, please retry",
            ErrorCode::Timeout => "the request took too long, please retry",
            _ => "internal server error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A service error that knows its [`ErrorCode`]. Implemented by every
/// service's error enum, so the gRPC adapter converts all of them the same way.
pub trait HasErrorCode: std::error::Error {
    fn code(&self) -> ErrorCode;
}

/// Turns a service error into a gRPC status: client errors keep their message,
/// server errors are logged with their cause and sent as a generic sentence.
pub fn to_status<E: HasErrorCode>(err: &E) -> tonic::Status {
    let code = err.code();
    if code.is_client_error() {
        tonic::Status::new(code.grpc_code(), err.to_string())
    } else {
        tracing::error!(error = %err, error.code = %code, "request failed");
        tonic::Status::new(code.grpc_code(), code.public_message())
    }
}

/// An error and its causes on one line (`outer: cause: root cause`), each
/// cause once even when an outer message already quotes it.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_grpc() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_grpc(code.grpc_code()), code, "{code}");
        }
    }

    #[test]
    fn a_broken_upstream_connection_is_an_outage_and_everything_else_maps_as_received() {
        assert_eq!(ErrorCode::from_grpc(tonic::Code::Unknown), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_upstream(tonic::Code::Unknown), ErrorCode::Unavailable);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_upstream(code.grpc_code()), code, "{code}");
        }
    }

    #[test]
    fn http_statuses_are_distinct_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let status = code.http_status();
            assert!((400..600).contains(&status), "{code} -> {status}");
            assert!(seen.insert(status), "{code} reuses {status}");
        }
    }

    #[derive(Debug)]
    struct Broken(&'static str, ErrorCode);
    impl fmt::Display for Broken {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Broken {}
    impl HasErrorCode for Broken {
        fn code(&self) -> ErrorCode {
            self.1
        }
    }

    #[test]
    fn server_errors_hide_their_message() {
        let status = to_status(&Broken("password=hunter2 connection refused", ErrorCode::Internal));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal server error");
        let status = to_status(&Broken("username taken", ErrorCode::Conflict));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "username taken");
    }
}

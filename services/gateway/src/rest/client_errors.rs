//! `POST /client-errors`: error reports from the web frontend (its error
//! boundary and `window.onerror`), as the seed's frontend error logging
//! expects.
//!
//! * Anyone may report (a token is optional; a valid one adds the user id),
//!   within the edge's per-user/per-address rate limit (`RATE_LIMIT_API`).
//! * At most [`MAX_REPORT_BYTES`] of body (413 beyond); any content type, so
//!   `navigator.sendBeacon` (`text/plain`) works too.
//! * `{"message" (required, ≤ 2000 chars), "stack"?, "url"?, "user_agent"?,
//!   "level"? (error|warning|info|debug|fatal), "context"? (object)}`;
//!   anything else is a 400 with `{"detail"}`.
//! * Accepted reports answer 202 `{"message": "reported"}`, are logged as one
//!   `warn` record with `client_error = true`, and are sent to Sentry as a
//!   message event. JWTs, bearer credentials and password/token values are
//!   removed from every text first.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use unilink_errors::ErrorCode;
use unilink_telemetry::ClientErrorReport;

use crate::error::ApiError;
use crate::identity::Caller;
use crate::middleware::edge::ClientAddr;
use crate::middleware::request_id::RequestId;

/// Largest report accepted.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Longest `message`, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest `url` and `user_agent`, in characters.
const MAX_SHORT_FIELD_CHARS: usize = 2048;

const LEVELS: &[&str] = &["error", "warning", "info", "debug", "fatal"];

#[derive(Debug, Deserialize)]
struct ReportBody {
    message: String,
    stack: Option<String>,
    url: Option<String>,
    user_agent: Option<String>,
    level: Option<String>,
    context: Option<serde_json::Value>,
}

fn too_large() -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, "error report is larger than 16 KiB")
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, detail)
}

/// Reads at most [`MAX_REPORT_BYTES`] of body.
async fn read_capped(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(MAX_REPORT_BYTES));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("invalid request body: {e}")))?;
        if body.len() + chunk.len() > MAX_REPORT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn validate(body: &[u8]) -> Result<ReportBody, ApiError> {
    let report: ReportBody = serde_json::from_slice(body).map_err(|e| invalid(format!("invalid JSON body: {e}")))?;
    if report.message.trim().is_empty() {
        return Err(invalid("message must not be empty"));
    }
    if report.message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(invalid("message must be at most 2000 characters"));
    }
    for (name, value) in [("url", &report.url), ("user_agent", &report.user_agent)] {
        if value
            .as_ref()
            .is_some_and(|v| v.chars().count() > MAX_SHORT_FIELD_CHARS)
        {
            return Err(invalid(format!(
                "{name} must be at most {MAX_SHORT_FIELD_CHARS} characters"
            )));
        }
    }
    if let Some(level) = &report.level
        && !LEVELS.contains(&level.to_ascii_lowercase().as_str())
    {
        return Err(invalid("level must be one of error, warning, info, debug, fatal"));
    }
    if report.context.as_ref().is_some_and(|c| !c.is_object()) {
        return Err(invalid("context must be an object"));
    }
    Ok(report)
}

pub async fn report(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let body = read_capped(&req, payload).await?;
    let body = validate(&body)?;
    let extensions = req.extensions();
    let user_id = match extensions.get::<Caller>() {
        Some(Caller::Authenticated(identity)) => Some(identity.user_id.to_string()),
        _ => None,
    };
    let client_ip = extensions.get::<ClientAddr>().map(|a| a.0.clone());
    let request_id = extensions.get::<RequestId>().map(|r| r.0.clone());
    drop(extensions);
    let report = ClientErrorReport {
        message: body.message,
        stack: body.stack,
        url: body.url,
        user_agent: body.user_agent,
        level: Some(body.level.unwrap_or_else(|| "error".to_owned()).to_ascii_lowercase()),
        context: body.context,
        user_id,
        request_id,
    }
    .scrubbed();
    tracing::warn!(
        client_error = true,
        error_message = %report.message,
        report_level = report.level.as_deref(),
        url = report.url.as_deref(),
        user_agent = report.user_agent.as_deref(),
        stack = report.stack.as_deref(),
        context = report.context.as_ref().map(tracing::field::display),
        user_id = report.user_id.as_deref(),
        client_ip = client_ip.as_deref(),
        "client error reported"
    );
    metrics::counter!("client_errors_total", "level" => report.level.clone().unwrap_or_default()).increment(1);
    unilink_telemetry::report_client_error(&report);
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "message": "reported" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_validated() {
        assert!(validate(br#"{"message":"boom"}"#).is_ok());
        assert!(validate(br#"{"message":"boom","level":"WARNING","context":{"a":1},"extra":1}"#).is_ok());
        for bad in [
            &br#"{}"#[..],
            br#"{"message":"  "}"#,
            br#"{"message":"x","level":"loud"}"#,
            br#"{"message":"x","context":[1]}"#,
            br#"not json"#,
        ] {
            let err = validate(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"message":"{}"}}"#, "é".repeat(MAX_MESSAGE_CHARS + 1));
        assert!(validate(long.as_bytes()).is_err());
        let fits = format!(r#"{{"message":"{}"}}"#, "é".repeat(MAX_MESSAGE_CHARS));
        assert!(validate(fits.as_bytes()).is_ok());
    }
}

//! `X-Request-Id` on every response: the client's when well-formed
//! (1–128 of `[A-Za-z0-9._-]`), else a new UUID. The request span carries it.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of a request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn well_formed(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| well_formed(v))
        .map_or_else(uuid_v4, str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "http.request",
        request_id = %id,
        http.method = %req.method(),
        http.route = %req.match_pattern().unwrap_or_else(|| "unmatched".to_owned()),
        trace_id = tracing::field::Empty,
    );
    unilink_telemetry::record_trace_id(&span);
    let mut response = next.call(req).instrument(span).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    Ok(response)
}

fn uuid_v4() -> String {
    unilink_domain::EventId::new().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_sane_ids_are_accepted() {
        assert!(super::well_formed("abc-123_x.y"));
        assert!(!super::well_formed(""));
        assert!(!super::well_formed("a b"));
        assert!(!super::well_formed("<script>"));
        assert!(!super::well_formed(&"a".repeat(129)));
    }
}

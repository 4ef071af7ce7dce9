//! Per request: who the client is (address, verified token) and whether it
//! is within its rate limit. Limits are kept per actor, so clients behind
//! one NAT (a campus, a mobile carrier) do not share one budget:
//!
//! * `/auth/login`, `/auth/login/verify-otp`, `/auth/resend-verification` —
//!   `RATE_LIMIT_AUTH` per minute per (email, client address), what a
//!   password or code guesser varies, and then `RATE_LIMIT_AUTH_ADDRESS`
//!   per client address across emails. The email is read from the JSON body,
//!   which is handed back to the handler untouched;
//! * the other `/auth/*` (sign-up, email verification, refresh, logout
//!   without a token) — `RATE_LIMIT_AUTH_ADDRESS` per client address;
//! * everything else, and `/auth/logout` with a token — `RATE_LIMIT_API` per
//!   minute per account (per address when anonymous);
//! * `/health`, `/livez`, `/readyz`, `/metrics`, `/openapi.json` and CORS
//!   preflights are exempt.
//!
//! The verified caller is stored in the request for the
//! [`Authenticated`](crate::identity::Authenticated) extractor, so a token is
//! checked once per request.

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError, web};
use sha2::{Digest, Sha256};
use unilink_errors::ErrorCode;

use crate::error::ApiError;
use crate::identity::{Caller, KeyStore, bearer_token, revocation_keys, websocket_token};
use crate::middleware::client_ip::TrustedProxies;
use crate::middleware::rate_limit::{Decision, RateLimiter, Revocation};

/// What the edge middleware needs.
#[derive(Debug, Clone)]
pub struct Edge {
    pub keys: Arc<KeyStore>,
    pub limiter: Arc<RateLimiter>,
    pub proxies: TrustedProxies,
    /// Per (email, address) on the routes of [`keyed_by_email`].
    pub auth_limit: u32,
    /// Per address on `/auth/*`.
    pub auth_address_limit: u32,
    pub api_limit: u32,
}

/// Paths that are never rate-limited (probes, scrapes and the static API description).
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/livez" | "/readyz" | "/metrics" | "/" | "/openapi.json"
    )
}

/// The routes a password or login-code guesser (or a mail bomber) aims at
/// one account through: limited per (email, address).
fn keyed_by_email(path: &str) -> bool {
    matches!(
        path,
        "/auth/login" | "/auth/login/verify-otp" | "/auth/resend-verification"
    )
}

/// What a request's budget is counted against.
enum Budget {
    /// `RATE_LIMIT_AUTH` for this email from this address, then the address's
    /// `RATE_LIMIT_AUTH_ADDRESS`.
    EmailAndAddress(String),
    /// `RATE_LIMIT_AUTH_ADDRESS` for this address.
    AuthAddress,
    /// `RATE_LIMIT_API` for this account, or this address when anonymous.
    Api(String),
}

#[derive(serde::Deserialize)]
struct EmailField {
    email: Option<String>,
}

/// The limiter's key for the body's `email`: trimmed, lower-cased and
/// hashed (no address sits in Redis keys), or `-` when the body has none (the
/// handler refuses it).
fn email_key(body: &[u8]) -> String {
    let email = serde_json::from_slice::<EmailField>(body)
        .ok()
        .and_then(|b| b.email)
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty());
    match email {
        Some(email) => {
            let digest = Sha256::digest(email.as_bytes());
            digest[..12].iter().map(|b| format!("{b:02x}")).collect()
        }
        None => "-".to_owned(),
    }
}

/// The verdict to report: a refusal, else the one with the least left.
fn tighter(a: Decision, b: Decision) -> Decision {
    match (a.allowed, b.allowed) {
        (false, _) => a,
        (true, false) => b,
        (true, true) if b.remaining < a.remaining => b,
        (true, true) => a,
    }
}

fn set_rate_headers(headers: &mut actix_web::http::header::HeaderMap, d: &Decision) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-ratelimit-limit", d.limit.to_string());
    put("x-ratelimit-remaining", d.remaining.to_string());
    put("x-ratelimit-reset", d.reset.to_string());
    if !d.allowed {
        put("retry-after", d.reset.max(1).to_string());
    }
}

pub async fn edge(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let Some(edge) = req.app_data::<web::Data<Edge>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let client = edge
        .proxies
        .client_ip(req.request())
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());

    let mut caller = match bearer_token(req.request()).or_else(|| websocket_token(req.request())) {
        None => Caller::Anonymous,
        Some(token) => match edge.keys.authenticate(token).await {
            Ok(identity) => Caller::Authenticated(identity),
            Err(e) => Caller::Rejected(e.code, e.detail),
        },
    };
    let flags = match &caller {
        Caller::Authenticated(identity) => revocation_keys(identity),
        _ => Vec::new(),
    };

    let path = req.path().to_owned();
    let budget = if req.method() == Method::OPTIONS || exempt(&path) {
        None
    } else if keyed_by_email(&path) {
        // Read the body for its email and put it back for the handler (the
        // payload limit of the application applies).
        let body = match req.extract::<web::Bytes>().await {
            Ok(body) => body,
            Err(e) => return Ok(req.error_response(e).map_into_right_body()),
        };
        let key = email_key(&body);
        req.set_payload(actix_web::dev::Payload::from(body));
        Some(Budget::EmailAndAddress(key))
    } else if path.starts_with("/auth/") && !(path == "/auth/logout" && matches!(caller, Caller::Authenticated(_))) {
        Some(Budget::AuthAddress)
    } else {
        Some(Budget::Api(match &caller {
            Caller::Authenticated(identity) => format!("user:{}", identity.user_id),
            _ => format!("ip:{client}"),
        }))
    };
    let (decision, revocation) = match budget {
        None => (None, Revocation::Clear),
        Some(Budget::EmailAndAddress(email)) => {
            let who = format!("{client}|{email}");
            let (d, revocation) = edge.limiter.hit("auth", &who, edge.auth_limit, &flags).await;
            // A refused guess does not spend the address's budget: one
            // email hammered from a NAT leaves the others their logins.
            if d.allowed {
                let (per_address, _) = edge
                    .limiter
                    .hit("auth_address", &client, edge.auth_address_limit, &[])
                    .await;
                (Some(tighter(d, per_address)), revocation)
            } else {
                (Some(d), revocation)
            }
        }
        Some(Budget::AuthAddress) => {
            let (d, revocation) = edge
                .limiter
                .hit("auth_address", &client, edge.auth_address_limit, &flags)
                .await;
            (Some(d), revocation)
        }
        Some(Budget::Api(who)) => {
            let (d, revocation) = edge.limiter.hit("api", &who, edge.api_limit, &flags).await;
            (Some(d), revocation)
        }
    };
    match revocation {
        Revocation::Revoked => {
            caller = Caller::Rejected(ErrorCode::Unauthenticated, "access token has been revoked".to_owned());
        }
        // Reads stay available while Redis is away (tokens are short-lived);
        // what changes state, and what only admins may do, waits for it.
        Revocation::Unknown if changes_state(req.method(), &path) => {
            metrics::counter!("revocation_unchecked_refused_total").increment(1);
            let mut response = ApiError::new(
                ErrorCode::Unavailable,
                "cannot check that this session is still valid right now; try again shortly",
            )
            .error_response();
            response
                .headers_mut()
                .insert(HeaderName::from_static("retry-after"), HeaderValue::from_static("5"));
            return Ok(req.into_response(response).map_into_right_body());
        }
        Revocation::Unknown | Revocation::Clear => {}
    }

    if let Some(d) = decision.filter(|d| !d.allowed) {
        tracing::info!(client = %client, path = %path, "rate limited");
        let mut response =
            ApiError::new(ErrorCode::RateLimited, "too many requests; slow down and retry later").error_response();
        set_rate_headers(response.headers_mut(), &d);
        return Ok(req.into_response(response).map_into_right_body());
    }

    req.extensions_mut().insert(caller);
    req.extensions_mut().insert(ClientAddr(client.clone()));
    // Backends learn the client's address with every call made for it.
    let mut response = unilink_grpc::client::CLIENT_IP.scope(client, next.call(req)).await?;
    if let Some(d) = decision {
        set_rate_headers(response.headers_mut(), &d);
    }
    Ok(response.map_into_left_body())
}

/// The client address as the edge saw it (for logs and audit).
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

/// Whether a request changes state or needs an administrator: those are
/// refused while the token deny-list cannot be read.
fn changes_state(method: &Method, path: &str) -> bool {
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    !read || path.starts_with("/admin/") || path == "/ws/webrtc/active-connections"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_is_one_key_however_it_is_spelled_and_never_stored_in_clear() {
        let key = email_key(br#"{"email": "ada@kiit.ac.in", "password": "x"}"#);
        assert_eq!(key, email_key(br#"{"password": "y", "email": "  ADA@Kiit.AC.in "}"#));
        assert_ne!(key, email_key(br#"{"email": "bob@kiit.ac.in"}"#));
        assert!(!key.contains("ada"), "{key}");
        for body in [&b"{}"[..], b"not json", br#"{"email": 7}"#, br#"{"email": " "}"#] {
            assert_eq!(email_key(body), "-", "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_tighter_verdict_is_reported() {
        let verdict = |allowed, remaining| Decision {
            allowed,
            limit: 5,
            remaining,
            reset: 30,
        };
        assert_eq!(tighter(verdict(true, 3), verdict(true, 1)), verdict(true, 1));
        assert_eq!(tighter(verdict(true, 1), verdict(true, 3)), verdict(true, 1));
        assert_eq!(tighter(verdict(true, 4), verdict(false, 0)), verdict(false, 0));
        assert_eq!(tighter(verdict(false, 0), verdict(true, 4)), verdict(false, 0));
    }
}

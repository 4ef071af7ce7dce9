//! Per request: who the client is (address, verified token) and whether it
//! is within its rate limit.
//!
//! * `/auth/*` — `RATE_LIMIT_AUTH` per minute per client address;
//! * everything else — `RATE_LIMIT_API` per minute per user (per address when
//!   anonymous);
//! * `/health`, `/livez`, `/metrics`, `/openapi.json` and CORS preflights are exempt.
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
    pub auth_limit: u32,
    pub api_limit: u32,
}

/// Paths that are never rate-limited (probes, scrapes and the static API description).
fn exempt(path: &str) -> bool {
    matches!(path, "/health" | "/livez" | "/metrics" | "/" | "/openapi.json")
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
    req: ServiceRequest,
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
    let (decision, revocation) = if req.method() == Method::OPTIONS || exempt(&path) {
        (None, Revocation::Clear)
    } else if path.starts_with("/auth/") {
        let (d, revocation) = edge.limiter.hit("auth", &client, edge.auth_limit, &flags).await;
        (Some(d), revocation)
    } else {
        let who = match &caller {
            Caller::Authenticated(identity) => format!("user:{}", identity.user_id),
            _ => format!("ip:{client}"),
        };
        let (d, revocation) = edge.limiter.hit("api", &who, edge.api_limit, &flags).await;
        (Some(d), revocation)
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

//! Who is calling: access tokens verified at the edge, with keys obtained
//! from auth over gRPC (cached; fetched again when a token names an unknown
//! `kid`, so keys rotate without a restart). The deny-list in Redis (logout,
//! deactivation, deletion) is checked by the edge middleware in the same round
//! trip as the rate limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{Ready, ready};
use tokio::sync::{Mutex, RwLock};
use unilink_domain::UserId;
use unilink_errors::ErrorCode;
use unilink_grpc::GrpcChannel;
use unilink_proto::auth::GetVerificationKeysRequest;
use unilink_proto::auth::auth_service_client::AuthServiceClient;
use unilink_tokens::{Claims, PublicKey, TokenError, Verifier};

use crate::error::ApiError;

/// Keys are fetched again at most this often when unknown kids show up.
const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// The verified caller.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: UserId,
    pub claims: Claims,
}

/// The access-token verifier and the keys behind it.
#[derive(Debug)]
pub struct KeyStore {
    auth: GrpcChannel,
    verifier: RwLock<Option<Arc<Verifier>>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl KeyStore {
    pub fn new(auth: GrpcChannel) -> KeyStore {
        KeyStore {
            auth,
            verifier: RwLock::new(None),
            last_fetch: Mutex::new(None),
        }
    }

    /// Fetches the keys from auth (no more often than [`REFRESH_INTERVAL`]).
    pub async fn refresh(&self) -> Result<(), ApiError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let answer = AuthServiceClient::new(self.auth.clone())
            .get_verification_keys(GetVerificationKeysRequest {})
            .await
            .map_err(ApiError::from)?
            .into_inner();
        let keys = answer
            .keys
            .into_iter()
            .map(|k| PublicKey {
                kid: k.kid,
                algorithm: k.algorithm,
                material: k.material,
            })
            .collect();
        let verifier = Verifier::new(keys, &answer.issuer, &answer.audience).map_err(|e| {
            tracing::error!(error = %e, "auth handed out keys that cannot be loaded");
            ApiError::new(ErrorCode::Unavailable, ErrorCode::Unavailable.public_message())
        })?;
        *self.verifier.write().await = Some(Arc::new(verifier));
        tracing::info!("access-token verification keys loaded");
        Ok(())
    }

    /// Fetches the keys again every `interval` until `stop`, so a key that
    /// auth no longer lists (a retired signing key) stops being trusted
    /// without waiting for a token with an unknown `kid`.
    pub async fn refresh_every(self: Arc<Self>, interval: Duration, stop: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(detail = %e.detail, "verification keys not refreshed; the current ones stay");
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }

    /// Verifies a bearer token: signature, expiry, issuer, audience. Whether
    /// it was revoked is asked of Redis by the edge, together with the rate
    /// limit ([`revocation_keys`]).
    pub async fn authenticate(&self, token: &str) -> Result<Identity, ApiError> {
        let unauthorized = |detail: &str| ApiError::new(ErrorCode::Unauthenticated, detail);
        let kid = Verifier::kid_of(token)
            .map_err(|_| unauthorized("malformed access token"))?
            .ok_or_else(|| unauthorized("access token has no key id"))?;
        let current = self.verifier.read().await.clone().filter(|v| v.knows(&kid));
        let verifier = match current {
            Some(verifier) => verifier,
            None => {
                self.refresh().await?;
                self.verifier
                    .read()
                    .await
                    .clone()
                    .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, ErrorCode::Unavailable.public_message()))?
            }
        };
        let claims = verifier.verify(token).map_err(|e| match e {
            TokenError::Expired => unauthorized("access token has expired"),
            TokenError::UnknownKey => unauthorized("access token is signed with an unknown key"),
            _ => unauthorized("invalid access token"),
        })?;
        let user_id = claims.user_id().map_err(|_| unauthorized("invalid access token"))?;
        Ok(Identity { user_id, claims })
    }
}

/// The deny-list keys that refuse a verified token: its own `jti` (full
/// logout), its session's family (full logout, refresh-token reuse) and its
/// user (deactivated or deleted).
pub fn revocation_keys(identity: &Identity) -> Vec<String> {
    let mut keys = vec![
        unilink_tokens::revoked_jti_key(&identity.claims.jti),
        unilink_tokens::revoked_user_key(&identity.claims.sub),
    ];
    if !identity.claims.fid.is_empty() {
        keys.push(unilink_tokens::revoked_family_key(&identity.claims.fid));
    }
    keys
}

/// The bearer token of a request, if any: `Authorization: Bearer <token>`.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The token of a WebSocket upgrade, which browsers cannot send as a
/// header: `?token=<jwt>` or `?token=Bearer <jwt>`. Only upgrade requests
/// may carry a token in the URL.
pub fn websocket_token(req: &HttpRequest) -> Option<&str> {
    let upgrade = req
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    let raw = req
        .query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    let token = raw
        .strip_prefix("Bearer%20")
        .or_else(|| raw.strip_prefix("Bearer+"))
        .or_else(|| raw.strip_prefix("Bearer "))
        .unwrap_or(raw);
    Some(token).filter(|t| !t.is_empty())
}

/// What the authentication middleware found out about a request.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    Authenticated(Identity),
    Rejected(ErrorCode, String),
}

/// Extractor for routes that need a verified caller: 401 with
/// `WWW-Authenticate: Bearer` otherwise.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Identity);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let caller = req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous);
        ready(match caller {
            Caller::Authenticated(identity) => Ok(Authenticated(identity)),
            Caller::Anonymous => Err(ApiError::new(ErrorCode::Unauthenticated, "not authenticated")),
            Caller::Rejected(code, detail) => Err(ApiError::new(code, detail)),
        })
    }
}

//! The auth core: registration, verification, login with an emailed code,
//! sessions (access token + rotating refresh token) and logout. Transport
//! agnostic: the gRPC adapter only converts.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use unilink_bus::Redis;
use unilink_config::Settings;
use unilink_db::{DbError, Uuid};
use unilink_domain::{Email, FullName, NewPassword, Otp, UserId, Username};
use unilink_events::payload::{
    LoginOtpRequested, USER_DEACTIVATED, USER_DELETED, USER_LOGIN_OTP_REQUESTED, USER_REGISTERED,
    USER_VERIFICATION_REQUESTED, USER_VERIFIED, UserDeleted, UserRef, UserRegistered, UserVerified,
    VerificationRequested, push_channel,
};
use unilink_events::seal::{self, SealKeys};
use unilink_events::{Event, outbox};
use unilink_presence::PresenceRegistry;
use unilink_protocol::{CLOSE_POLICY, Control};
use unilink_tokens::SigningKeys;

use crate::crypto::{self, PasswordHasher};
use crate::error::AuthError;
use crate::repo::{self, Account, AccountRepository, Taken};

/// How long a verification link works.
pub const VERIFICATION_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a login code works.
pub const OTP_TTL: Duration = Duration::from_secs(10 * 60);
/// Wrong codes allowed before the code is locked.
pub const OTP_MAX_ATTEMPTS: i32 = 5;
/// The longest lockout after wrong codes (the delay doubles up to this).
pub const OTP_MAX_LOCK: Duration = Duration::from_secs(15 * 60);

/// How long the codes of an account with `failures` wrong codes are locked:
/// nothing until the fifth, then `base` doubling at every further fifth, up
/// to [`OTP_MAX_LOCK`].
pub fn otp_lock_for(failures: i32, base: Duration) -> Option<Duration> {
    if failures <= 0 || failures % OTP_MAX_ATTEMPTS != 0 {
        return None;
    }
    let doublings = (failures / OTP_MAX_ATTEMPTS - 1).clamp(0, 20) as u32;
    Some(base.saturating_mul(1 << doublings).min(OTP_MAX_LOCK.max(base)))
}

/// Whole seconds until `until` (at least 1).
fn seconds_until(until: chrono::DateTime<Utc>) -> u64 {
    (until - Utc::now()).num_seconds().max(1) as u64
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub account: Account,
}

/// Registration input, as received.
#[derive(Debug, Clone)]
pub struct Registration {
    pub email: String,
    pub username: String,
    pub full_name: String,
    pub password: String,
}

/// The verified claims of the access token being logged out.
#[derive(Debug, Clone)]
pub struct LogoutClaims {
    pub user_id: UserId,
    pub token_id: String,
    pub family_id: String,
    pub expires_at: u64,
    /// Present for a full logout (its family is revoked); absent for the
    /// original web client's logout on every page unload.
    pub refresh_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuthService {
    accounts: AccountRepository,
    redis: Redis,
    presence: PresenceRegistry,
    hasher: PasswordHasher,
    keys: Arc<SigningKeys>,
    allowed_domains: Arc<[String]>,
    otp_secret: Arc<str>,
    /// Seals login codes and verification tokens for notification.
    seal: Arc<SealKeys>,
    refresh_ttl: Duration,
    /// The first lockout after [`OTP_MAX_ATTEMPTS`] wrong codes (`OTP_LOCK_SECONDS`).
    otp_lock: Duration,
}

fn chrono_after(ttl: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::days(1))
}

impl AuthService {
    pub fn new(accounts: AccountRepository, redis: Redis, settings: &Settings) -> Result<AuthService, AuthError> {
        Ok(AuthService {
            accounts,
            presence: PresenceRegistry::new(redis.clone(), unilink_presence::DEFAULT_TTL),
            redis,
            hasher: PasswordHasher::new()?,
            keys: Arc::new(SigningKeys::from_settings(&settings.jwt)?),
            allowed_domains: settings.allowed_email_domains.clone().into(),
            otp_secret: settings
                .jwt
                .secret_key
                .as_ref()
                .ok_or_else(|| {
                    AuthError::Internal("SECRET_KEY is not set (auth hashes login codes with it)".to_owned())
                })?
                .expose()
                .into(),
            seal: Arc::new(
                SealKeys::from_settings(&settings.event_seal_keys).map_err(|e| AuthError::Internal(e.to_string()))?,
            ),
            refresh_ttl: settings.jwt.refresh_token_ttl,
            otp_lock: settings.otp_lock,
        })
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    pub async fn get_account(&self, id: UserId) -> Result<Account, AuthError> {
        self.accounts.find(id).await?.ok_or(AuthError::AccountNotFound)
    }

    /// Creates an unverified account and queues the verification email, in one transaction.
    pub async fn register(&self, input: Registration) -> Result<Account, AuthError> {
        let email = Email::parse(&input.email)?;
        if !self.allowed_domains.iter().any(|d| d == email.domain()) {
            return Err(AuthError::DomainNotAllowed(self.allowed_domains.join(", ")));
        }
        let username = Username::parse(&input.username)?;
        let full_name = FullName::parse(&input.full_name)?;
        let password = NewPassword::parse(&input.password, &email, &username)?;
        let hash = self.hasher.hash(password.expose()).await?;

        let token = crypto::random_token()?;
        let expires_at = chrono_after(VERIFICATION_TTL);
        let account = unilink_db::transaction(self.accounts.pool(), async |tx| {
            let account = match repo::insert_account(
                tx,
                UserId::new(),
                email.as_str(),
                username.as_str(),
                full_name.as_str(),
                &hash,
            )
            .await
            {
                Ok(account) => account,
                Err(e) => {
                    return Err(match repo::taken(&e) {
                        Some(Taken::Email) => AuthError::EmailTaken,
                        Some(Taken::Username) => AuthError::UsernameTaken,
                        None => e.into(),
                    });
                }
            };
            repo::replace_verification_token(tx, account.id, &crypto::token_hash(&token), expires_at).await?;
            let registered = UserRegistered {
                user_id: account.id.to_string(),
                email: account.email.clone(),
                username: account.username.clone(),
                full_name: account.full_name.clone(),
            };
            outbox::enqueue(tx, &Event::new(USER_REGISTERED, json(&registered)?)).await?;
            self.enqueue_verification(tx, &account, token, expires_at).await?;
            Ok::<_, AuthError>(account)
        })
        .await?;
        tracing::info!(audit = true, action = "user.registered", user_id = %account.id, "account created");
        metrics::counter!("signups_total").increment(1);
        Ok(account)
    }

    async fn enqueue_verification(
        &self,
        tx: &unilink_db::Transaction<'_>,
        account: &Account,
        token: String,
        expires_at: chrono::DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let payload = VerificationRequested {
            user_id: account.id.to_string(),
            email: account.email.clone(),
            username: account.username.clone(),
            full_name: account.full_name.clone(),
            token: self.seal.seal(
                &token,
                &seal::context(USER_VERIFICATION_REQUESTED, &account.id.to_string()),
            )?,
            expires_at,
        };
        outbox::enqueue(tx, &Event::new(USER_VERIFICATION_REQUESTED, json(&payload)?)).await?;
        Ok(())
    }

    /// Uses a verification token and logs the user in.
    pub async fn verify_email(&self, token: &str) -> Result<Session, AuthError> {
        let token = token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::InvalidVerificationToken);
        }
        let session = unilink_db::transaction(self.accounts.pool(), async |tx| {
            let account = repo::use_verification_token(tx, &crypto::token_hash(token))
                .await?
                .ok_or(AuthError::InvalidVerificationToken)?;
            if !account.is_active {
                return Err(AuthError::Inactive);
            }
            let verified = UserVerified {
                user_id: account.id.to_string(),
            };
            outbox::enqueue(tx, &Event::new(USER_VERIFIED, json(&verified)?)).await?;
            let session = self.open_session(tx, account, None).await?;
            Ok::<_, AuthError>(session)
        })
        .await?;
        tracing::info!(audit = true, action = "user.verified", user_id = %session.account.id, "email verified");
        Ok(session)
    }

    /// Sends a new verification email when the account exists and is not
    /// verified yet; silent otherwise (the caller answers the same either way).
    pub async fn resend_verification(&self, email: &str) -> Result<(), AuthError> {
        let Ok(email) = Email::parse(email) else {
            return Ok(());
        };
        let Some((account, _)) = self.accounts.find_by_email(email.as_str()).await? else {
            return Ok(());
        };
        if account.is_verified || !account.is_active {
            return Ok(());
        }
        let token = crypto::random_token()?;
        let expires_at = chrono_after(VERIFICATION_TTL);
        unilink_db::transaction(self.accounts.pool(), async |tx| {
            repo::replace_verification_token(tx, account.id, &crypto::token_hash(&token), expires_at).await?;
            self.enqueue_verification(tx, &account, token, expires_at).await?;
            Ok::<_, AuthError>(())
        })
        .await?;
        Ok(())
    }

    /// Checks the password and emails a login code.
    pub async fn login(&self, email: &str, password: &str) -> Result<(), AuthError> {
        // A malformed email is simply an unknown one: same answer, same work.
        let found = match Email::parse(email) {
            Ok(email) => self.accounts.find_by_email(email.as_str()).await?,
            Err(_) => None,
        };
        let password = checkable(password);
        let check = self
            .hasher
            .verify(password, found.as_ref().map(|(_, hash)| hash.as_str()))
            .await?;
        let known = found.as_ref().map(|(account, _)| account.id);
        let Some((account, _)) = found.filter(|_| check.matches) else {
            tracing::info!(
                audit = true,
                action = "login.failed",
                user_id = known.map(tracing::field::display),
                reason = if known.is_some() {
                    "wrong_password"
                } else {
                    "unknown_email"
                },
                "bad credentials"
            );
            metrics::counter!("logins_total", "outcome" => "bad_credentials").increment(1);
            return Err(AuthError::BadCredentials);
        };
        if !account.is_active {
            tracing::info!(audit = true, action = "login.refused", user_id = %account.id, reason = "deactivated", "login refused");
            return Err(AuthError::Inactive);
        }
        if !account.is_verified {
            tracing::info!(audit = true, action = "login.refused", user_id = %account.id, reason = "not_verified", "login refused");
            return Err(AuthError::NotVerified);
        }
        // No fresh codes while the account's codes are locked: a new code
        // must not buy a thief another round of guesses.
        let locked = {
            let client = self.accounts.pool().get().await.map_err(DbError::from)?;
            repo::otp_locked_until(&client, account.id).await?
        };
        if let Some(until) = locked {
            return Err(AuthError::OtpLocked(seconds_until(until)));
        }
        if check.needs_rehash {
            let hash = self.hasher.hash(password).await?;
            self.accounts.set_password_hash(account.id, &hash).await?;
            tracing::info!(user_id = %account.id, "password hash upgraded to current parameters");
        }
        let otp = crypto::random_otp()?;
        let expires_at = chrono_after(OTP_TTL);
        unilink_db::transaction(self.accounts.pool(), async |tx| {
            let code_hash = crypto::otp_hash(&self.otp_secret, &account.id.to_string(), &otp);
            repo::replace_otp(tx, account.id, &code_hash, expires_at).await?;
            let payload = LoginOtpRequested {
                user_id: account.id.to_string(),
                email: account.email.clone(),
                username: account.username.clone(),
                otp: self
                    .seal
                    .seal(&otp, &seal::context(USER_LOGIN_OTP_REQUESTED, &account.id.to_string()))?,
                expires_at,
            };
            outbox::enqueue(tx, &Event::new(USER_LOGIN_OTP_REQUESTED, json(&payload)?)).await?;
            Ok::<_, AuthError>(())
        })
        .await?;
        tracing::info!(audit = true, action = "login.password_ok", user_id = %account.id, "login code sent");
        Ok(())
    }

    /// Exchanges the emailed code for a session.
    pub async fn verify_login_otp(&self, email: &str, otp: &str) -> Result<Session, AuthError> {
        let otp = Otp::parse(otp)?;
        let email = Email::parse(email).map_err(|_| AuthError::InvalidOtp)?;
        let (account, _) = self
            .accounts
            .find_by_email(email.as_str())
            .await?
            .ok_or(AuthError::InvalidOtp)?;
        // A wrong code commits its failure (and any lock) before the answer.
        let outcome = unilink_db::transaction(self.accounts.pool(), async |tx| {
            let stored = repo::lock_otp(tx, account.id).await?.ok_or(AuthError::InvalidOtp)?;
            if let Some(until) = repo::otp_locked_until(tx, account.id).await? {
                return Err(AuthError::OtpLocked(seconds_until(until)));
            }
            if stored.expires_at <= Utc::now() {
                return Err(AuthError::InvalidOtp);
            }
            let given = crypto::otp_hash(&self.otp_secret, &account.id.to_string(), otp.expose());
            if !crypto::same_hash(&given, &stored.code_hash) {
                let attempts = repo::count_failed_otp(tx, account.id).await?;
                let lock = otp_lock_for(attempts, self.otp_lock);
                if let Some(lock) = lock {
                    repo::lock_otp_until(tx, account.id, chrono_after(lock)).await?;
                }
                return Ok(Err((attempts, lock)));
            }
            repo::delete_otp(tx, account.id).await?;
            repo::clear_otp_failures(tx, account.id).await?;
            let account = repo::account_in_tx(tx, account.id)
                .await?
                .ok_or(AuthError::InvalidOtp)?;
            if !account.is_active {
                return Err(AuthError::Inactive);
            }
            Ok(Ok(self.open_session(tx, account, None).await?))
        })
        .await?;
        let session = match outcome {
            Ok(session) => session,
            Err((attempts, Some(lock))) => {
                tracing::warn!(audit = true, action = "otp.locked", user_id = %account.id, attempts, seconds = lock.as_secs(), "login codes locked");
                return Err(AuthError::OtpLocked(lock.as_secs().max(1)));
            }
            Err((attempts, None)) => {
                tracing::info!(audit = true, action = "login.otp_failed", user_id = %account.id, attempts, "wrong login code");
                return Err(AuthError::InvalidOtp);
            }
        };
        tracing::info!(audit = true, action = "login.succeeded", user_id = %session.account.id, "logged in");
        metrics::counter!("logins_total", "outcome" => "succeeded").increment(1);
        Ok(session)
    }

    /// Rotates a refresh token. A token that was already rotated means it was
    /// stolen or replayed: the whole family is revoked.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, AuthError> {
        let hash = refresh_token_hash(refresh_token)?;
        // A reused token commits the family's revocation before the answer.
        let outcome = unilink_db::transaction(self.accounts.pool(), async |tx| {
            let stored = repo::lock_refresh_token(tx, &hash)
                .await?
                .ok_or(AuthError::InvalidRefreshToken)?;
            if stored.revoked {
                return Err(AuthError::InvalidRefreshToken);
            }
            if stored.used {
                repo::revoke_family(tx, stored.family_id).await?;
                // The thief's access tokens of the family go too, not only its refresh tokens.
                self.revoke_family_tokens(stored.family_id).await?;
                return Ok(Err(stored));
            }
            if stored.expires_at <= Utc::now() {
                return Err(AuthError::InvalidRefreshToken);
            }
            let account = repo::account_in_tx(tx, stored.user_id)
                .await?
                .filter(|a| a.is_active)
                .ok_or(AuthError::InvalidRefreshToken)?;
            repo::mark_refresh_used(tx, &hash).await?;
            Ok(Ok(self.open_session(tx, account, Some(stored.family_id)).await?))
        })
        .await?;
        let session = match outcome {
            Ok(session) => session,
            Err(stored) => {
                self.close_session_sockets(stored.user_id, stored.family_id, "session revoked")
                    .await?;
                tracing::warn!(audit = true, action = "token.reuse_detected", user_id = %stored.user_id, family = %stored.family_id, "refresh token reused; family revoked");
                return Err(AuthError::RefreshReuse);
            }
        };
        tracing::info!(audit = true, action = "token.refreshed", user_id = %session.account.id, "session refreshed");
        Ok(session)
    }

    /// Logs a session out.
    ///
    /// Without a refresh token (the original web client sends none, on every
    /// page unload, and then goes on with the same access token) the user is
    /// only marked offline, as the original backend did; their open sockets
    /// beat again and put them back within a heartbeat. With the session's
    /// refresh token it is a full logout: the refresh family and the access
    /// token are refused from now on by every gateway, and the session's
    /// sockets are told to close wherever they are.
    pub async fn logout(&self, claims: LogoutClaims) -> Result<(), AuthError> {
        let Some(refresh_token) = claims.refresh_token.as_deref() else {
            self.presence.disconnect_all(claims.user_id).await?;
            tracing::info!(audit = true, action = "logout", full = false, user_id = %claims.user_id, "marked offline");
            return Ok(());
        };
        let hash = refresh_token_hash(refresh_token)?;
        let families = unilink_db::transaction(self.accounts.pool(), async |tx| {
            // Someone else's refresh token is not the caller's to revoke.
            let stored = repo::lock_refresh_token(tx, &hash)
                .await?
                .filter(|s| s.user_id == claims.user_id)
                .ok_or(AuthError::InvalidRefreshToken)?;
            let mut families = vec![stored.family_id];
            if let Ok(own) = Uuid::parse_str(&claims.family_id)
                && own != stored.family_id
            {
                families.push(own);
            }
            for family in &families {
                repo::revoke_family(tx, *family).await?;
            }
            // Refused at the edge before the commit makes the logout visible.
            let remaining = claims.expires_at.saturating_sub(unilink_tokens::now());
            if remaining > 0 {
                self.redis
                    .set_with_ttl(
                        &unilink_tokens::revoked_jti_key(&claims.token_id),
                        "1",
                        Duration::from_secs(remaining + 5),
                    )
                    .await?;
            }
            for family in &families {
                self.revoke_family_tokens(*family).await?;
            }
            Ok::<_, AuthError>(families)
        })
        .await?;
        for family in &families {
            self.close_session_sockets(claims.user_id, *family, "logged out")
                .await?;
        }
        tracing::info!(audit = true, action = "logout", full = true, user_id = %claims.user_id, "logged out");
        Ok(())
    }

    /// Tells every signaling replica to close the sockets of `user` opened
    /// with a token of `family` (1008 and `reason`).
    async fn close_session_sockets(&self, user: UserId, family: Uuid, reason: &str) -> Result<(), AuthError> {
        let close = Control::close(CLOSE_POLICY, reason, Some(&family.to_string())).to_text();
        self.redis.publish(&push_channel(&user.to_string()), &close).await?;
        Ok(())
    }

    /// Every access token of `user` is refused by the gateways from now on
    /// (for as long as any of them can live), `why` being the account's fate.
    async fn revoke_user_tokens(&self, user: UserId, why: &str) -> Result<(), AuthError> {
        self.redis
            .set_with_ttl(
                &unilink_tokens::revoked_user_key(&user.to_string()),
                why,
                self.keys.ttl() + Duration::from_secs(60),
            )
            .await?;
        Ok(())
    }

    /// Every access token of `family` is refused by the gateways from now on
    /// (for as long as any of them can live).
    async fn revoke_family_tokens(&self, family: Uuid) -> Result<(), AuthError> {
        self.redis
            .set_with_ttl(
                &unilink_tokens::revoked_family_key(&family.to_string()),
                "1",
                self.keys.ttl() + Duration::from_secs(60),
            )
            .await?;
        Ok(())
    }

    /// Moderation: deactivates `user`. Their refresh tokens are revoked, every
    /// access token they hold is refused from now on (until the longest could
    /// expire), they go offline, and `user.deactivated` tells the other services.
    pub async fn deactivate(&self, admin: UserId, user: UserId) -> Result<Account, AuthError> {
        let admin_account = self.accounts.find(admin).await?.ok_or(AuthError::NotAdmin)?;
        if admin_account.role != "admin" || !admin_account.is_active {
            return Err(AuthError::NotAdmin);
        }
        let account = unilink_db::transaction(self.accounts.pool(), async |tx| {
            let account = repo::deactivate(tx, user).await?.ok_or(AuthError::AccountNotFound)?;
            repo::revoke_all_sessions(tx, user).await?;
            let payload = UserRef {
                user_id: user.to_string(),
            };
            outbox::enqueue(tx, &Event::new(USER_DEACTIVATED, json(&payload)?)).await?;
            // Refuse tokens before the commit makes the deactivation visible.
            self.revoke_user_tokens(user, "deactivated").await?;
            Ok::<_, AuthError>(account)
        })
        .await?;
        self.presence.disconnect_all(user).await?;
        tracing::info!(audit = true, action = "admin.deactivate", admin_id = %admin, user_id = %user, "account deactivated");
        Ok(account)
    }

    /// Deletes the caller's account once they re-entered their password. The
    /// account row (and its tokens and codes) goes; `user.deleted` makes every
    /// other service erase what it holds; access tokens are refused at once.
    pub async fn delete_account(&self, user: UserId, password: &str) -> Result<(), AuthError> {
        unilink_db::transaction(self.accounts.pool(), async |tx| {
            let (account, hash) = repo::password_hash(tx, user)
                .await?
                .ok_or(AuthError::AccountNotFound)?;
            let password = checkable(password);
            if !self.hasher.verify(password, Some(&hash)).await?.matches {
                tracing::info!(audit = true, action = "user.delete_refused", user_id = %user, reason = "wrong_password", "account deletion refused");
                return Err(AuthError::WrongPassword);
            }
            repo::delete_account(tx, user).await?;
            let payload = UserDeleted {
                user_id: user.to_string(),
                email: account.email.clone(),
            };
            outbox::enqueue(tx, &Event::new(USER_DELETED, json(&payload)?)).await?;
            self.revoke_user_tokens(user, "deleted").await?;
            Ok::<_, AuthError>(())
        })
        .await?;
        self.presence.disconnect_all(user).await?;
        tracing::info!(audit = true, action = "user.deleted", user_id = %user, "account deleted");
        Ok(())
    }

    async fn open_session(
        &self,
        tx: &unilink_db::Transaction<'_>,
        account: Account,
        family: Option<Uuid>,
    ) -> Result<Session, AuthError> {
        let family = family.unwrap_or_else(Uuid::new_v4);
        let refresh_token = crypto::random_token()?;
        repo::insert_refresh_token(
            tx,
            &crypto::token_hash(&refresh_token),
            family,
            account.id,
            chrono_after(self.refresh_ttl),
        )
        .await?;
        let (access_token, _) = self.keys.issue(account.id, &account.role, &family.to_string())?;
        self.count_active(account.id);
        Ok(Session {
            access_token,
            refresh_token,
            expires_in: self.keys.ttl().as_secs(),
            account,
        })
    }
}

/// Adds a user to today's HyperLogLog and answers its count; the key lives
/// two days (a day is counted in UTC).
static ACTIVE_USERS: unilink_bus::LuaScript = unilink_bus::LuaScript::new(
    "redis.call('PFADD', KEYS[1], ARGV[1]) redis.call('EXPIRE', KEYS[1], 172800) return redis.call('PFCOUNT', KEYS[1])",
);

impl AuthService {
    /// Counts `user` as active today (`daily_active_users`, the dashboard's
    /// active users) on every login and refresh. In the background: a session
    /// never waits for it nor fails because of it.
    fn count_active(&self, user: UserId) {
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let key = redis.key(&format!("dau:{}", Utc::now().format("%Y-%m-%d")));
            match redis.run(&ACTIVE_USERS, vec![key], vec![user.to_string()]).await {
                Ok(answer) => {
                    if let Some(count) = answer.first().cloned().flatten().and_then(|n| n.parse::<f64>().ok()) {
                        metrics::gauge!("daily_active_users").set(count);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "daily active users not counted"),
            }
        });
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, AuthError> {
    serde_json::to_value(value).map_err(|e| AuthError::Internal(format!("event payload: {e}")))
}

/// The stored hash of a refresh token as presented (trimmed); anything that
/// cannot be one is refused before the database is asked.
fn refresh_token_hash(presented: &str) -> Result<String, AuthError> {
    let token = presented.trim();
    if token.is_empty() || token.len() > 256 {
        return Err(AuthError::InvalidRefreshToken);
    }
    Ok(crypto::token_hash(token))
}

/// The password to check: one longer than any account can have is checked
/// as the empty one (the same hashing work, and it never matches), so an
/// oversized guess costs no more than a normal one.
fn checkable(password: &str) -> &str {
    if password.len() > unilink_domain::MAX_PASSWORD_BYTES {
        ""
    } else {
        password
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_codes_lock_for_a_delay_that_doubles_up_to_a_cap() {
        let base = Duration::from_secs(30);
        for failures in [0, 1, 4, 6, 9] {
            assert_eq!(otp_lock_for(failures, base), None, "{failures}");
        }
        assert_eq!(otp_lock_for(5, base), Some(Duration::from_secs(30)));
        assert_eq!(otp_lock_for(10, base), Some(Duration::from_secs(60)));
        assert_eq!(otp_lock_for(15, base), Some(Duration::from_secs(120)));
        assert_eq!(otp_lock_for(50, base), Some(OTP_MAX_LOCK));
        assert_eq!(otp_lock_for(5_000_000, base), Some(OTP_MAX_LOCK));
    }
}

//! Event types and their payloads: the contract between producers and consumers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::seal::SealedText;

/// `user.registered` (auth): a new account exists.
pub const USER_REGISTERED: &str = "user.registered";
/// `user.verified` (auth): the account's email is verified.
pub const USER_VERIFIED: &str = "user.verified";
/// `user.verification_requested` (auth): send the verification email.
pub const USER_VERIFICATION_REQUESTED: &str = "user.verification_requested";
/// `user.login_otp_requested` (auth): send the login code.
pub const USER_LOGIN_OTP_REQUESTED: &str = "user.login_otp_requested";
/// `user.deactivated` (auth): a moderator deactivated the account.
pub const USER_DEACTIVATED: &str = "user.deactivated";
/// `user.deleted` (auth): erase everything about the user.
pub const USER_DELETED: &str = "user.deleted";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: String,
    pub email: String,
    pub username: String,
    pub full_name: String,
}

/// Carries the verification token sealed for notification
/// ([`crate::seal`]): the outbox row, the stream entry and every other
/// consumer see only ciphertext; the plaintext is in the email alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRequested {
    pub user_id: String,
    pub email: String,
    pub username: String,
    pub full_name: String,
    pub token: SealedText,
    pub expires_at: DateTime<Utc>,
}

/// Carries the login code sealed, like [`VerificationRequested`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOtpRequested {
    pub user_id: String,
    pub email: String,
    pub username: String,
    pub otp: SealedText,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserVerified {
    pub user_id: String,
}

/// Payload of `user.deactivated` and `user.deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub user_id: String,
}

/// Payload of `user.deleted`: who, and the address mails went to (so the
/// delivery log can forget it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeleted {
    pub user_id: String,
    pub email: String,
}

/// `call.initiated` (signaling): the receiver's phone rings.
pub const CALL_INITIATED: &str = "call.initiated";
/// `call.accepted` (signaling): the receiver answered.
pub const CALL_ACCEPTED: &str = "call.accepted";
/// `call.rejected` (signaling): the receiver declined.
pub const CALL_REJECTED: &str = "call.rejected";
/// `call.missed` (signaling): nobody answered within `CALL_RING_TIMEOUT`.
pub const CALL_MISSED: &str = "call.missed";
/// `call.ended` (signaling): an ongoing call ended, or the caller cancelled a
/// ringing one (`status` tells which).
pub const CALL_ENDED: &str = "call.ended";

/// Payload of every `call.*` event: the call as it is after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEvent {
    pub call_id: String,
    pub initiator_id: String,
    pub receiver_id: String,
    pub initiator_username: String,
    pub receiver_username: String,
    /// `pending`, `ongoing`, `completed`, `rejected`, `missed` or `cancelled`.
    pub status: String,
    /// The participant who caused the change; `None` when the system did
    /// (ring timeout, maximum duration, abandoned call, account closed).
    pub actor_id: Option<String>,
    /// Why the system ended it (`ring_timeout`, `max_duration`, `abandoned`,
    /// `account_closed`); `None` when a participant did.
    pub reason: Option<String>,
    /// The call's own token (participants only ever see these events'
    /// pushes); absent in events written before it was carried.
    #[serde(default)]
    pub call_token: Option<String>,
    /// When the call was placed; absent in events written before it was carried.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// When the receiver accepted (older events called it `started_at`).
    #[serde(alias = "started_at")]
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i64>,
}

impl CallEvent {
    /// The participants who did not cause the change: they are the ones to
    /// tell (both when the system caused it).
    pub fn to_notify(&self) -> Vec<&str> {
        [self.initiator_id.as_str(), self.receiver_id.as_str()]
            .into_iter()
            .filter(|id| self.actor_id.as_deref() != Some(*id))
            .collect()
    }
}

/// Redis pub/sub channel (before the deployment prefix) of one user: pushes
/// for their presence sockets and control messages for all their sockets
/// (`unilink_protocol::Control`), on whichever gateway replica holds them.
pub fn push_channel(user_id: &str) -> String {
    format!("push:{user_id}")
}

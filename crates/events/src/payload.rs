//! Event types and their payloads: the contract between producers and consumers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

/// Carries the plaintext token: it exists only in the outbox row (deleted a
/// day after publication), the stream entry (trimmed) and the email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRequested {
    pub user_id: String,
    pub email: String,
    pub username: String,
    pub full_name: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Carries the plaintext code, like [`VerificationRequested`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOtpRequested {
    pub user_id: String,
    pub email: String,
    pub username: String,
    pub otp: String,
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

//! Events the notification tests append, as auth's outbox relay writes them.

#![allow(dead_code)]

use chrono::Utc;
use unilink_events::Event;
use unilink_events::payload::USER_VERIFICATION_REQUESTED;

/// A `user.verification_requested` event for `email` with `token` (the full
/// name carries markup, which the mail must escape).
pub fn verification_event(email: &str, token: &str) -> Event {
    Event::new(
        USER_VERIFICATION_REQUESTED,
        serde_json::json!({
            "user_id": uuid::Uuid::new_v4().to_string(),
            "email": email,
            "username": "ana_k",
            "full_name": "Ana <b>Kumar</b>",
            "token": token,
            "expires_at": (Utc::now() + chrono::Duration::hours(24)).to_rfc3339(),
        }),
    )
}

/// A token like auth's: base64url, at least 128 bits.
pub fn random_token() -> String {
    format!("{}-{}_x", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

//! The JSON views of the public API, shared by the route modules (users,
//! auth, admin and calls all show users, calls or reports): each route
//! module depends on this one, never on another route module for a view.

use chrono::SecondsFormat;
use serde::Serialize;
use unilink_proto::auth::Account;
use unilink_proto::profile::{Profile, ReportEntry};
use unilink_proto::signaling::{Call, CallStatus};

#[derive(Debug, Serialize)]
pub struct UserJson {
    pub id: String,
    pub email: String,
    pub username: String,
    pub full_name: String,
    pub profile_picture: Option<String>,
    pub bio: Option<String>,
    pub is_verified: bool,
    pub is_online: bool,
    pub created_at: Option<String>,
}

/// RFC 3339 in UTC with a `Z`, as the contract asks.
pub fn rfc3339(ts: Option<&unilink_proto::Timestamp>) -> Option<String> {
    ts.and_then(unilink_proto::from_timestamp)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

impl UserJson {
    /// From auth's account (the profile service adds picture and bio later).
    pub fn from_account(account: Account, is_online: bool) -> UserJson {
        UserJson {
            created_at: rfc3339(account.created_at.as_ref()),
            id: account.id,
            email: account.email,
            username: account.username,
            full_name: account.full_name,
            profile_picture: None,
            bio: None,
            is_verified: account.is_verified,
            is_online,
        }
    }
}

impl UserJson {
    /// From the profile service's view (which carries live presence).
    pub fn from_profile(p: Profile) -> UserJson {
        UserJson {
            created_at: rfc3339(p.created_at.as_ref()),
            id: p.user_id,
            email: p.email,
            username: p.username,
            full_name: p.full_name,
            profile_picture: p.profile_picture,
            bio: p.bio,
            is_verified: p.is_verified,
            is_online: p.is_online,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReportJson {
    id: String,
    reporter_id: String,
    reported_id: String,
    reason: String,
    description: Option<String>,
    status: String,
    created_at: Option<String>,
    resolved_at: Option<String>,
    resolved_by: Option<String>,
}

impl From<ReportEntry> for ReportJson {
    fn from(r: ReportEntry) -> Self {
        ReportJson {
            created_at: rfc3339(r.created_at.as_ref()),
            resolved_at: rfc3339(r.resolved_at.as_ref()),
            id: r.id,
            reporter_id: r.reporter_id,
            reported_id: r.reported_id,
            reason: r.reason,
            description: r.description,
            status: r.status,
            resolved_by: r.resolved_by,
        }
    }
}

/// The call JSON of the public API, as the original frontend reads it:
/// `started_at` is when the call was placed (never null), `duration_seconds`
/// an integer (0 until the call has ended), `call_token` always present.
/// `answered_at` is when the receiver accepted. Only participants ever get a
/// call.
#[derive(Debug, Serialize)]
pub struct CallJson {
    id: String,
    initiator_id: String,
    receiver_id: String,
    initiator_username: String,
    receiver_username: String,
    status: &'static str,
    call_token: String,
    created_at: Option<String>,
    started_at: Option<String>,
    answered_at: Option<String>,
    ended_at: Option<String>,
    duration_seconds: i64,
}

/// A call's status as the JSON shows it (`unknown` for none).
fn status_name(status: CallStatus) -> &'static str {
    unilink_domain::CallStatus::try_from(status).map_or("unknown", unilink_domain::CallStatus::as_str)
}

impl From<Call> for CallJson {
    fn from(c: Call) -> Self {
        let status = c.status();
        CallJson {
            status: status_name(status),
            call_token: c.call_token,
            created_at: rfc3339(c.created_at.as_ref()),
            started_at: rfc3339(c.created_at.as_ref()),
            answered_at: rfc3339(c.answered_at.as_ref()),
            ended_at: rfc3339(c.ended_at.as_ref()),
            id: c.id,
            initiator_id: c.initiator_id,
            receiver_id: c.receiver_id,
            initiator_username: c.initiator_username,
            receiver_username: c.receiver_username,
            duration_seconds: c.duration_seconds,
        }
    }
}

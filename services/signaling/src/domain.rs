//! The call state machine, pure: which action may move a call from which
//! status to which, what a call is, and the event that announces a change.
//! No I/O: [`crate::service`] decides who may act, [`crate::repo`] writes the
//! change (its SQL guards are built from [`CallAction::sources`]).
//!
//! ```text
//!            accept                 hangup, max duration, abandoned, account closed
//! pending ─────────────▶ ongoing ───────────────────────────────────────────▶ completed
//!    │ reject ─────────▶ rejected
//!    │ cancel, account closed ─▶ cancelled
//!    └ ring timeout ───▶ missed
//! ```
//!
//! Completed, rejected, cancelled and missed are final.

use chrono::{DateTime, Utc};
use unilink_domain::{CallId, UserId};
use unilink_events::Event;
use unilink_events::payload::{
    CALL_ACCEPTED, CALL_ENDED, CALL_INITIATED, CALL_MISSED, CALL_REJECTED, CallEvent as CallPayload,
};

pub use unilink_domain::CallStatus;

/// Something that happens to a call: a participant's action or a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallAction {
    /// The receiver answers a ringing call.
    Accept,
    /// The receiver declines a ringing call.
    Reject,
    /// The caller hangs up before the call is answered.
    Cancel,
    /// A participant hangs up an ongoing call.
    Hangup,
    /// Nobody answered within `CALL_RING_TIMEOUT`.
    RingTimeout,
    /// The call reached `CALL_MAX_DURATION`.
    MaxDuration,
    /// No signaling socket anywhere for `CALL_DISCONNECT_GRACE`.
    Abandon,
    /// A participant's account was deactivated or deleted.
    CloseAccount,
}

impl CallAction {
    pub const ALL: [CallAction; 8] = [
        CallAction::Accept,
        CallAction::Reject,
        CallAction::Cancel,
        CallAction::Hangup,
        CallAction::RingTimeout,
        CallAction::MaxDuration,
        CallAction::Abandon,
        CallAction::CloseAccount,
    ];

    /// The statuses this action may start from.
    pub const fn sources(self) -> &'static [CallStatus] {
        match self {
            CallAction::Accept | CallAction::Reject | CallAction::Cancel | CallAction::RingTimeout => {
                &[CallStatus::Pending]
            }
            CallAction::Hangup | CallAction::MaxDuration | CallAction::Abandon => &[CallStatus::Ongoing],
            CallAction::CloseAccount => &[CallStatus::Pending, CallStatus::Ongoing],
        }
    }

    /// Why the system acted (the `end_reason` column and the event's
    /// `reason`); `None` for a participant's action.
    pub const fn reason(self) -> Option<&'static str> {
        match self {
            CallAction::RingTimeout => Some("ring_timeout"),
            CallAction::MaxDuration => Some("max_duration"),
            CallAction::Abandon => Some("abandoned"),
            CallAction::CloseAccount => Some("account_closed"),
            CallAction::Accept | CallAction::Reject | CallAction::Cancel | CallAction::Hangup => None,
        }
    }

    /// What a participant ending a call in `status` does: hangs up an
    /// ongoing call; cancels a pending one as its caller, rejects it as its
    /// receiver.
    pub const fn end_by(status: CallStatus, initiator: bool) -> CallAction {
        match status {
            CallStatus::Pending if initiator => CallAction::Cancel,
            CallStatus::Pending => CallAction::Reject,
            _ => CallAction::Hangup,
        }
    }

    /// The status this action moves a call in `from` to.
    pub fn apply(self, from: CallStatus) -> Result<CallStatus, InvalidTransition> {
        if !self.sources().contains(&from) {
            return Err(InvalidTransition { from, action: self });
        }
        Ok(match (self, from) {
            (CallAction::Accept, _) => CallStatus::Ongoing,
            (CallAction::Reject, _) => CallStatus::Rejected,
            (CallAction::Cancel, _) | (CallAction::CloseAccount, CallStatus::Pending) => CallStatus::Cancelled,
            (CallAction::RingTimeout, _) => CallStatus::Missed,
            (CallAction::Hangup | CallAction::MaxDuration | CallAction::Abandon | CallAction::CloseAccount, _) => {
                CallStatus::Completed
            }
        })
    }
}

/// An action that the call's status does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} call cannot take {action:?}")]
pub struct InvalidTransition {
    pub from: CallStatus,
    pub action: CallAction,
}

/// A change of state, checked against the machine, about to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub action: CallAction,
    pub to: CallStatus,
    /// The participant who caused it; `None` for the system.
    pub actor: Option<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: CallId,
    pub initiator_id: UserId,
    pub receiver_id: UserId,
    pub initiator_username: String,
    pub receiver_username: String,
    pub status: CallStatus,
    pub call_token: String,
    /// When the call was placed (the public API's `started_at`).
    pub created_at: DateTime<Utc>,
    /// When the receiver accepted it (the `started_at` column, named before
    /// the public API's `started_at` became the creation time).
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Whole seconds from acceptance to end; 0 until a call has ended.
    pub duration_seconds: i64,
}

impl Call {
    pub fn is_participant(&self, user: UserId) -> bool {
        self.initiator_id == user || self.receiver_id == user
    }

    /// The other participant.
    pub fn peer_of(&self, user: UserId) -> UserId {
        if self.initiator_id == user {
            self.receiver_id
        } else {
            self.initiator_id
        }
    }

    /// `action` by `actor` (`None`: the system), if this call's status allows it.
    pub fn change(&self, action: CallAction, actor: Option<UserId>) -> Result<Change, InvalidTransition> {
        Ok(Change {
            action,
            to: action.apply(self.status)?,
            actor,
        })
    }

    /// The event announcing that the call reached its status (by `actor`,
    /// or by the system for `reason`).
    pub fn event(&self, actor: Option<UserId>, reason: Option<&str>) -> Event {
        let payload = CallPayload {
            call_id: self.id.to_string(),
            initiator_id: self.initiator_id.to_string(),
            receiver_id: self.receiver_id.to_string(),
            initiator_username: self.initiator_username.clone(),
            receiver_username: self.receiver_username.clone(),
            status: self.status.as_str().to_owned(),
            actor_id: actor.map(|a| a.to_string()),
            reason: reason.map(str::to_owned),
            call_token: Some(self.call_token.clone()),
            created_at: Some(self.created_at),
            answered_at: self.answered_at,
            ended_at: self.ended_at,
            duration_seconds: Some(self.duration_seconds),
        };
        Event::new(
            event_type(self.status),
            serde_json::to_value(payload).unwrap_or_default(),
        )
    }
}

/// The event type announcing that a call reached `status`.
pub fn event_type(status: CallStatus) -> &'static str {
    match status {
        CallStatus::Pending => CALL_INITIATED,
        CallStatus::Ongoing => CALL_ACCEPTED,
        CallStatus::Rejected => CALL_REJECTED,
        CallStatus::Missed => CALL_MISSED,
        CallStatus::Completed | CallStatus::Cancelled => CALL_ENDED,
    }
}

#[cfg(test)]
mod tests {
    use super::CallAction::*;
    use super::CallStatus::*;
    use super::*;

    /// Every (status, action) pair and where it leads; `None`: refused.
    const MACHINE: [(CallStatus, CallAction, Option<CallStatus>); 48] = [
        (Pending, Accept, Some(Ongoing)),
        (Pending, Reject, Some(Rejected)),
        (Pending, Cancel, Some(Cancelled)),
        (Pending, Hangup, None),
        (Pending, RingTimeout, Some(Missed)),
        (Pending, MaxDuration, None),
        (Pending, Abandon, None),
        (Pending, CloseAccount, Some(Cancelled)),
        (Ongoing, Accept, None),
        (Ongoing, Reject, None),
        (Ongoing, Cancel, None),
        (Ongoing, Hangup, Some(Completed)),
        (Ongoing, RingTimeout, None),
        (Ongoing, MaxDuration, Some(Completed)),
        (Ongoing, Abandon, Some(Completed)),
        (Ongoing, CloseAccount, Some(Completed)),
        (Completed, Accept, None),
        (Completed, Reject, None),
        (Completed, Cancel, None),
        (Completed, Hangup, None),
        (Completed, RingTimeout, None),
        (Completed, MaxDuration, None),
        (Completed, Abandon, None),
        (Completed, CloseAccount, None),
        (Rejected, Accept, None),
        (Rejected, Reject, None),
        (Rejected, Cancel, None),
        (Rejected, Hangup, None),
        (Rejected, RingTimeout, None),
        (Rejected, MaxDuration, None),
        (Rejected, Abandon, None),
        (Rejected, CloseAccount, None),
        (Missed, Accept, None),
        (Missed, Reject, None),
        (Missed, Cancel, None),
        (Missed, Hangup, None),
        (Missed, RingTimeout, None),
        (Missed, MaxDuration, None),
        (Missed, Abandon, None),
        (Missed, CloseAccount, None),
        (Cancelled, Accept, None),
        (Cancelled, Reject, None),
        (Cancelled, Cancel, None),
        (Cancelled, Hangup, None),
        (Cancelled, RingTimeout, None),
        (Cancelled, MaxDuration, None),
        (Cancelled, Abandon, None),
        (Cancelled, CloseAccount, None),
    ];

    #[test]
    fn the_table_covers_every_pair_once() {
        for status in CallStatus::ALL {
            for action in CallAction::ALL {
                let rows = MACHINE.iter().filter(|(s, a, _)| (*s, *a) == (status, action)).count();
                assert_eq!(rows, 1, "({status}, {action:?}) is in the table {rows} times");
            }
        }
    }

    #[test]
    fn every_transition_goes_where_the_table_says() {
        for (from, action, to) in MACHINE {
            let got = action.apply(from);
            match to {
                Some(to) => assert_eq!(got, Ok(to), "({from}, {action:?})"),
                None => assert_eq!(got, Err(InvalidTransition { from, action }), "({from}, {action:?})"),
            }
        }
    }

    #[test]
    fn sources_are_exactly_the_statuses_an_action_is_allowed_from() {
        for (from, action, to) in MACHINE {
            assert_eq!(action.sources().contains(&from), to.is_some(), "({from}, {action:?})");
        }
    }

    #[test]
    fn only_open_calls_change_and_every_change_leaves_the_status() {
        for (from, action, to) in MACHINE {
            if let Some(to) = to {
                assert!(from.is_open(), "({from}, {action:?}) starts from a final status");
                assert_ne!(from, to, "({from}, {action:?}) changes nothing");
            }
        }
    }

    #[test]
    fn system_actions_have_a_reason_and_participants_actions_none() {
        let by_system = [RingTimeout, MaxDuration, Abandon, CloseAccount];
        for action in CallAction::ALL {
            assert_eq!(action.reason().is_some(), by_system.contains(&action), "{action:?}");
        }
    }

    #[test]
    fn ending_a_call_depends_on_its_status_and_who_ends_it() {
        assert_eq!(CallAction::end_by(Pending, true), Cancel);
        assert_eq!(CallAction::end_by(Pending, false), Reject);
        for status in CallStatus::ALL.into_iter().filter(|s| *s != Pending) {
            for initiator in [true, false] {
                assert_eq!(CallAction::end_by(status, initiator), Hangup, "{status}");
            }
        }
    }

    #[test]
    fn each_status_is_announced_by_its_event() {
        let expected = [
            (Pending, CALL_INITIATED),
            (Ongoing, CALL_ACCEPTED),
            (Completed, CALL_ENDED),
            (Rejected, CALL_REJECTED),
            (Missed, CALL_MISSED),
            (Cancelled, CALL_ENDED),
        ];
        for (status, event) in expected {
            assert_eq!(event_type(status), event, "{status}");
        }
    }
}

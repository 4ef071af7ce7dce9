//! Push delivery: for each event of `events:signaling` ([`crate::worker`]
//! consumes it as group `notification`), tells the participants of a call what happened to it, on their presence
//! sockets.
//!
//! A push is a Redis `PUBLISH` on [`push_channel`] of each user in
//! [`CallEvent::to_notify`], typed as the wire protocol's
//! [`unilink_protocol::Push`]; the gateway replica holding that user's
//! `WS /calls/ws/{user_id}` subscribes to the channel and forwards the JSON
//! text verbatim as one WebSocket text frame.
//!
//! Pushes are ephemeral, unlike emails: a user with no open socket misses the
//! push and sees the state by polling (`/calls/pending`, `/calls/active`). So
//! nothing goes into the delivery ledger; a failed `PUBLISH` is retried by
//! the consumer loop (a participant may then get a push twice, which the
//! client tolerates: each carries the whole call). Old events are not pushed
//! at all: a ring older than a minute ([`STALE_RING`], or the ring timeout
//! when longer) is for a call no longer ringing, and any other call push
//! older than [`STALE_PUSH`] tells the participants what they have long seen
//! by polling. This matters when the outbox replays `events:signaling` after
//! Redis lost it: the replay carries every call event of the last 24 h.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use unilink_bus::Redis;
use unilink_domain::{CallId, UserId};
use unilink_events::Event;
use unilink_events::consumer::HandlerError;
use unilink_events::payload::{
    CALL_ACCEPTED, CALL_ENDED, CALL_INITIATED, CALL_MISSED, CALL_REJECTED, CallEvent, push_channel,
};
use unilink_protocol::{CallChange, CallView, Push as Wire};
use unilink_runtime::Resources;

/// A ring is not pushed once its event is this old (or older than the ring
/// timeout, when that is longer).
pub const STALE_RING: Duration = Duration::from_secs(60);

/// A push about a call's change (accepted, rejected, missed, ended) is not
/// sent once its event is this old: a `call_ended` from minutes ago (after an
/// outbox replay, or a long backlog) would only confuse the client.
pub const STALE_PUSH: Duration = Duration::from_secs(60);

/// Turns call events into pushes to the participants' presence sockets.
#[derive(Debug, Clone)]
pub struct PushDelivery {
    redis: Redis,
    /// Age past which a ring is not pushed.
    stale_ring: Duration,
}

impl PushDelivery {
    /// Rings are dropped once older than [`STALE_RING`] or the ring timeout,
    /// whichever is longer: a `CALL_RING_TIMEOUT` raised past a minute must
    /// not silence rings that are still ringing.
    pub fn new(resources: &Resources) -> PushDelivery {
        PushDelivery {
            redis: resources.redis.clone(),
            stale_ring: STALE_RING.max(resources.settings.calls.ring_timeout),
        }
    }

    /// Handles one event: pushes it to the participants who did not cause
    /// it; ignores event types that are not about calls.
    pub async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        if !event.event_type.starts_with("call.") {
            return Ok(());
        }
        let call: CallEvent = event
            .payload_as()
            .map_err(|e| HandlerError::Reject(format!("invalid payload: {e}")))?;
        let push = Push::of(&event.event_type, &call)?;
        if is_older_than(event.occurred_at, push.max_age(self.stale_ring), Utc::now()) {
            // Debug only: an outbox replay brings a day of these (the relay logs the replay).
            tracing::debug!(event_id = %event.id, call_id = %call.call_id, kind = push.kind(), occurred_at = %event.occurred_at, "call event too old to push; skipping it");
            return Ok(());
        }
        let text = push.body.to_text();
        for user in call.to_notify() {
            let sockets = self
                .redis
                .publish(&push_channel(user), &text)
                .await
                .map_err(|e| HandlerError::Retry(format!("publishing {} to {user}: {e}", push.kind())))?;
            metrics::counter!("notification_pushes_total", "type" => push.kind()).increment(1);
            tracing::debug!(event_id = %event.id, call_id = %call.call_id, user_id = user, kind = push.kind(), sockets, "pushed");
        }
        Ok(())
    }
}

/// One push: what is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub body: Wire,
}

impl Push {
    /// Its `type`.
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }

    /// How old its event may be for this push to be sent: `stale_ring` for a
    /// ring, [`STALE_PUSH`] for the rest.
    pub fn max_age(&self, stale_ring: Duration) -> Duration {
        if matches!(self.body, Wire::IncomingCall { .. }) {
            stale_ring
        } else {
            STALE_PUSH
        }
    }

    /// The push that tells about `event_type`; `Reject` for a call event type
    /// this service does not know, or ids that are not ids.
    pub fn of(event_type: &str, call: &CallEvent) -> Result<Push, HandlerError> {
        for (what, raw) in [("initiator_id", &call.initiator_id), ("receiver_id", &call.receiver_id)] {
            UserId::parse(raw).map_err(|e| HandlerError::Reject(format!("{what}: {e}")))?;
        }
        if let Some(actor) = &call.actor_id {
            UserId::parse(actor).map_err(|e| HandlerError::Reject(format!("actor_id: {e}")))?;
        }
        CallId::parse(&call.call_id).map_err(|e| HandlerError::Reject(format!("call_id: {e}")))?;
        let view = call_view(call);
        let change = || CallChange {
            call_id: call.call_id.clone(),
            user_id: call.actor_id.clone(),
            reason: call.reason.clone(),
            call: view.clone(),
        };
        let body = match event_type {
            CALL_INITIATED => Wire::IncomingCall {
                call_id: call.call_id.clone(),
                caller_id: call.initiator_id.clone(),
                caller_username: call.initiator_username.clone(),
                call: view.clone(),
            },
            CALL_ACCEPTED => Wire::CallAccepted(change()),
            CALL_REJECTED => Wire::CallRejected(change()),
            CALL_MISSED => Wire::CallMissed(change()),
            CALL_ENDED => Wire::CallEnded(change()),
            other => return Err(HandlerError::Reject(format!("unknown call event type {other:?}"))),
        };
        Ok(Push { body })
    }
}

/// The call as the public API shows it (`started_at` is when it was placed,
/// `duration_seconds` 0 until it ended). Events written before they carried
/// the token and the creation time give `""` and the acceptance time.
fn call_view(call: &CallEvent) -> CallView {
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true));
    CallView {
        id: call.call_id.clone(),
        initiator_id: call.initiator_id.clone(),
        receiver_id: call.receiver_id.clone(),
        initiator_username: call.initiator_username.clone(),
        receiver_username: call.receiver_username.clone(),
        status: call.status.clone(),
        call_token: call.call_token.clone().unwrap_or_default(),
        created_at: time(call.created_at),
        started_at: time(call.created_at.or(call.answered_at)),
        answered_at: time(call.answered_at),
        ended_at: time(call.ended_at),
        duration_seconds: call.duration_seconds.unwrap_or(0),
    }
}

/// Whether something that happened at `at` is more than `age` old at `now`
/// (a clock running behind the producer's makes nothing old).
fn is_older_than(at: DateTime<Utc>, age: Duration, now: DateTime<Utc>) -> bool {
    (now - at).to_std().is_ok_and(|elapsed| elapsed > age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(actor: Option<&str>) -> CallEvent {
        CallEvent {
            call_id: "6f1c1d3e-0a3b-4c5d-8e9f-000000000001".to_owned(),
            initiator_id: "6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1".to_owned(),
            receiver_id: "6f1c1d3e-0a3b-4c5d-8e9f-0000000000b2".to_owned(),
            initiator_username: "ana_k".to_owned(),
            receiver_username: "ben_o".to_owned(),
            status: "completed".to_owned(),
            actor_id: actor.map(str::to_owned),
            reason: None,
            call_token: Some("tok".to_owned()),
            created_at: Some("2026-11-28T09:59:50Z".parse().unwrap()),
            answered_at: Some("2026-11-28T10:00:00Z".parse().unwrap()),
            ended_at: Some("2026-11-28T10:01:30.5Z".parse().unwrap()),
            duration_seconds: Some(90),
        }
    }

    #[test]
    fn an_ended_call_says_who_ended_it_and_carries_the_call() {
        let c = call(Some("6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1"));
        let push = Push::of(CALL_ENDED, &c).unwrap();
        assert_eq!(push.kind(), "call_ended");
        assert_eq!(
            serde_json::to_value(&push.body).unwrap(),
            json!({
                "type": "call_ended",
                "call_id": c.call_id,
                "user_id": c.initiator_id,
                "reason": null,
                "call": {
                    "id": c.call_id,
                    "initiator_id": c.initiator_id,
                    "receiver_id": c.receiver_id,
                    "initiator_username": "ana_k",
                    "receiver_username": "ben_o",
                    "status": "completed",
                    "call_token": "tok",
                    "created_at": "2026-11-28T09:59:50.000000Z",
                    "started_at": "2026-11-28T09:59:50.000000Z",
                    "answered_at": "2026-11-28T10:00:00.000000Z",
                    "ended_at": "2026-11-28T10:01:30.500000Z",
                    "duration_seconds": 90,
                },
            })
        );
    }

    #[test]
    fn an_event_written_before_the_original_call_shape_still_gives_it() {
        // As signaling wrote `call.initiated` before: acceptance time under
        // `started_at`, no token, no creation time, a null duration.
        let old: CallEvent = serde_json::from_value(json!({
            "call_id": "6f1c1d3e-0a3b-4c5d-8e9f-000000000001",
            "initiator_id": "6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1",
            "receiver_id": "6f1c1d3e-0a3b-4c5d-8e9f-0000000000b2",
            "initiator_username": "ana_k",
            "receiver_username": "ben_o",
            "status": "pending",
            "actor_id": "6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1",
            "reason": null,
            "started_at": null,
            "ended_at": null,
            "duration_seconds": null,
        }))
        .unwrap();
        let call = &serde_json::to_value(Push::of(CALL_INITIATED, &old).unwrap().body).unwrap()["call"];
        assert_eq!(call["duration_seconds"], 0);
        assert_eq!(call["call_token"], "");
        assert!(call["started_at"].is_null());
    }

    #[test]
    fn unknown_call_types_and_bad_ids_are_rejected() {
        assert!(matches!(
            Push::of("call.teleported", &call(None)),
            Err(HandlerError::Reject(_))
        ));
        let mut c = call(None);
        c.receiver_id = "push:*".to_owned();
        assert!(matches!(Push::of(CALL_MISSED, &c), Err(HandlerError::Reject(_))));
    }

    #[test]
    fn old_call_events_are_not_pushed() {
        let c = call(Some("6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1"));
        let ring_timeout = Duration::from_secs(90);
        let ring = Push::of(CALL_INITIATED, &c).unwrap();
        assert_eq!(ring.max_age(ring_timeout), ring_timeout);
        for event_type in [CALL_ACCEPTED, CALL_REJECTED, CALL_MISSED, CALL_ENDED] {
            let push = Push::of(event_type, &c).unwrap();
            assert_eq!(push.max_age(ring_timeout), STALE_PUSH, "{event_type}");
        }
        // A replayed `call.ended` from five minutes ago is dropped; one from
        // a few seconds ago (lost by Redis before it was read) still goes out.
        let now: DateTime<Utc> = "2026-11-28T10:10:00Z".parse().unwrap();
        let ended = Push::of(CALL_ENDED, &c).unwrap();
        assert!(is_older_than(
            "2026-11-28T10:05:00Z".parse().unwrap(),
            ended.max_age(ring_timeout),
            now
        ));
        assert!(!is_older_than(
            "2026-11-28T10:09:55Z".parse().unwrap(),
            ended.max_age(ring_timeout),
            now
        ));
    }

    #[test]
    fn age_is_measured_against_the_envelope_time() {
        let now: DateTime<Utc> = "2026-11-28T10:02:00Z".parse().unwrap();
        let minute = Duration::from_secs(60);
        assert!(is_older_than("2026-11-28T10:00:59Z".parse().unwrap(), minute, now));
        assert!(!is_older_than("2026-11-28T10:01:00Z".parse().unwrap(), minute, now));
        assert!(
            !is_older_than("2026-11-28T10:05:00Z".parse().unwrap(), minute, now),
            "future"
        );
    }
}

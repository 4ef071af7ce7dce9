//! Call pushes end to end: call events appended to `events:signaling` exactly
//! as signaling's outbox relay does, the notification service consuming them,
//! and a Redis subscriber standing in for the signaling replica that holds the
//! participants' presence sockets.
//!
//! The service handles the stream in order and publishes each push before the
//! next event, so the order of the messages seen here is the order of the
//! events: "nothing arrived on a channel" is checked by what arrived next,
//! without sleeping.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::{Value, json};
use unilink_bus::{BusMessage, MessageStream, Redis, Subscriber};
use unilink_events::payload::{CALL_ENDED, CALL_INITIATED, CALL_MISSED, push_channel};
use unilink_events::{Event, stream_of};
use unilink_notification::Notification;
use unilink_test_support::service::{RunningService, spawn};
use unilink_test_support::{TestDatabase, eventually, settings, unique_prefix};

const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    service: Option<RunningService>,
    redis: Redis,
    subscriber: Subscriber,
    messages: MessageStream,
    ana: String,
    ben: String,
    // Declared last, so dropped after the service.
    db: TestDatabase,
}

impl Harness {
    /// The service running, and subscribed to the push channels of Ana
    /// (who calls) and Ben (who is called).
    async fn start() -> Harness {
        let db = TestDatabase::create().await;
        let settings = settings(&db, &unique_prefix(), &[]);
        let redis = Redis::connect(&settings.redis).await.expect("connect to Redis");
        let subscriber = Subscriber::connect(&redis).await.expect("connect the subscriber");
        let messages = subscriber.messages();
        let ana = uuid::Uuid::new_v4().to_string();
        let ben = uuid::Uuid::new_v4().to_string();
        for user in [&ana, &ben] {
            subscriber.subscribe(&push_channel(user)).await.expect("subscribe");
        }
        let service = spawn::<Notification>(settings).await;
        Harness {
            service: Some(service),
            redis,
            subscriber,
            messages,
            ana,
            ben,
            db,
        }
    }

    async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await.unwrap();
        }
        self.subscriber.close().await;
        self.redis.close().await;
    }

    /// Appends `event` to `events:signaling` as signaling's outbox relay does.
    async fn append(&self, event: &Event) {
        unilink_events::outbox::append(&self.redis, &stream_of("signaling"), event)
            .await
            .expect("append to events:signaling");
    }

    /// A `call.*` event of a call from Ana to Ben.
    fn call_event(&self, event_type: &str, call_id: &str, changes: Value) -> Event {
        let mut payload = json!({
            "call_id": call_id,
            "initiator_id": self.ana,
            "receiver_id": self.ben,
            "initiator_username": "ana_k",
            "receiver_username": "ben_o",
            "status": "pending",
            "actor_id": self.ana,
            "reason": null,
            "call_token": "tok-ana-ben",
            "created_at": "2026-12-02T10:00:00Z",
            "answered_at": null,
            "ended_at": null,
            "duration_seconds": 0,
        });
        for (key, value) in changes.as_object().expect("an object of changes") {
            payload[key] = value.clone();
        }
        Event::new(event_type, payload)
    }

    /// The next push seen on either channel: (whose channel, its JSON).
    async fn next_push(&mut self) -> (String, Value) {
        let BusMessage { channel, payload } = tokio::time::timeout(WAIT, self.messages.next())
            .await
            .expect("a push within the wait")
            .expect("the subscriber is open");
        let user = channel.strip_prefix("push:").expect("a push channel").to_owned();
        let body = serde_json::from_str(&payload).unwrap_or_else(|e| panic!("push is JSON ({e}): {payload}"));
        (user, body)
    }

    /// How many `events:signaling` entries the service has not acknowledged.
    async fn unacknowledged(&self) -> u64 {
        self.redis
            .unacknowledged(&stream_of("signaling"), "notification")
            .await
            .expect("XPENDING")
    }
}

fn new_call_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn call_events_are_pushed_to_the_participants_who_did_not_cause_them() {
    let mut h = Harness::start().await;
    let (ana, ben) = (h.ana.clone(), h.ben.clone());

    // Ana calls Ben, then cancels the ringing call.
    let cancelled = new_call_id();
    h.append(&h.call_event(CALL_INITIATED, &cancelled, json!({}))).await;
    // Pushes carry microseconds, as the public API does.
    let ended_at = Utc::now().trunc_subsecs(6);
    h.append(&h.call_event(
        CALL_ENDED,
        &cancelled,
        json!({"status": "cancelled", "ended_at": ended_at}),
    ))
    .await;
    // Ana calls again and Ben does not answer: the system marks it missed.
    let missed = new_call_id();
    h.append(&h.call_event(CALL_INITIATED, &missed, json!({}))).await;
    h.append(&h.call_event(
        CALL_MISSED,
        &missed,
        json!({"status": "missed", "actor_id": null, "reason": "ring_timeout", "ended_at": ended_at}),
    ))
    .await;

    // Only Ben hears the ring; Ana's channel stays silent until the miss.
    let (to, ring) = h.next_push().await;
    assert_eq!(to, ben, "the ring goes to the receiver only: {ring}");
    assert_eq!(
        ring,
        json!({
            "type": "incoming_call",
            "call_id": cancelled,
            "caller_id": ana,
            "caller_username": "ana_k",
            "call": {
                "id": cancelled,
                "initiator_id": ana,
                "receiver_id": ben,
                "initiator_username": "ana_k",
                "receiver_username": "ben_o",
                "status": "pending",
                "call_token": "tok-ana-ben",
                "created_at": "2026-12-02T10:00:00.000000Z",
                "started_at": "2026-12-02T10:00:00.000000Z",
                "answered_at": null,
                "ended_at": null,
                "duration_seconds": 0,
            },
        })
    );

    // Ana cancelled: Ben is told, Ana (who did it) is not.
    let (to, end) = h.next_push().await;
    assert_eq!(to, ben, "{end}");
    assert_eq!(end["type"], "call_ended");
    assert_eq!(end["call_id"], cancelled.as_str());
    assert_eq!(end["user_id"], ana.as_str());
    assert_eq!(end["reason"], Value::Null);
    assert_eq!(end["call"]["status"], "cancelled");
    let stamp = end["call"]["ended_at"].as_str().expect("ended_at is a string");
    assert!(stamp.ends_with('Z'), "RFC 3339 in UTC with Z: {stamp}");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(stamp).unwrap(),
        ended_at,
        "the event's time, to the microsecond"
    );
    assert_eq!(
        end["call"]["call_token"], "tok-ana-ben",
        "the call JSON as the original API shows it"
    );
    assert_eq!(end["call"]["duration_seconds"], 0);

    let (to, ring) = h.next_push().await;
    assert_eq!(
        (to.as_str(), &ring["type"], &ring["call_id"]),
        (ben.as_str(), &json!("incoming_call"), &json!(missed))
    );

    // Nobody caused the miss: both are told, caller first.
    for expected in [&ana, &ben] {
        let (to, push) = h.next_push().await;
        assert_eq!(&to, expected, "{push}");
        assert_eq!(push["type"], "call_missed");
        assert_eq!(push["call_id"], missed.as_str());
        assert_eq!(push["user_id"], Value::Null);
        assert_eq!(push["reason"], "ring_timeout");
        assert_eq!(push["call"]["status"], "missed");
    }

    // Pushes are ephemeral: nothing goes into the email delivery ledger.
    let ledger: i64 =
        h.db.client()
            .await
            .query_one("SELECT count(*) FROM notification.deliveries", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(ledger, 0);
    h.stop().await;
}

#[tokio::test]
async fn stale_call_events_and_events_that_cannot_be_pushed_are_acknowledged_without_a_push() {
    let mut h = Harness::start().await;
    let (ana, ben) = (h.ana.clone(), h.ben.clone());
    let call = new_call_id();

    // A ring from two minutes ago (the service was down, say): long timed out.
    let mut stale = h.call_event(CALL_INITIATED, &call, json!({}));
    stale.occurred_at = Utc::now() - chrono::Duration::minutes(2);
    h.append(&stale).await;
    // An earlier call's end, five minutes ago, as an outbox replay after Redis
    // lost the stream brings it back: the participants saw it long ago.
    let mut replayed = h.call_event(
        CALL_ENDED,
        &new_call_id(),
        json!({"status": "completed", "actor_id": ben, "ended_at": Utc::now() - chrono::Duration::minutes(5)}),
    );
    replayed.occurred_at = Utc::now() - chrono::Duration::minutes(5);
    h.append(&replayed).await;
    // A call event type this service does not know, and a payload that is not a call.
    h.append(&h.call_event("call.teleported", &call, json!({}))).await;
    h.append(&Event::new(CALL_ENDED, json!({"call_id": call}))).await;
    // Events of other kinds on the stream are none of the pushes' business.
    h.append(&Event::new("signaling.something_else", json!({}))).await;
    // A fresh event still gets through after all of them.
    h.append(&h.call_event(
        CALL_MISSED,
        &call,
        json!({"status": "missed", "actor_id": null, "reason": "ring_timeout"}),
    ))
    .await;

    for expected in [&ana, &ben] {
        let (to, push) = h.next_push().await;
        assert_eq!(&to, expected, "nothing but the miss is pushed: {push}");
        assert_eq!(push["type"], "call_missed");
    }
    // Every entry was acknowledged (the rejected ones too), none left to retry.
    eventually("every entry to be acknowledged", WAIT, || async {
        (h.unacknowledged().await == 0).then_some(())
    })
    .await;
    h.stop().await;
}

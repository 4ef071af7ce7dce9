//! The call state machine as the repository writes it: each change checked
//! against `domain`, with the timestamps, the freed participants and the
//! event it implies; the timers' SQL guards built from the machine.

use unilink_domain::{CallId, UserId};
use unilink_signaling::Signaling;
use unilink_signaling::domain::{Call, CallAction, CallStatus, Change};
use unilink_signaling::error::SignalingError;
use unilink_signaling::repo::{CallRepository, NewCall};
use unilink_test_support::service::spawn;
use unilink_test_support::{TestDatabase, settings, unique_prefix};

fn new_call(initiator: UserId, receiver: UserId) -> NewCall {
    NewCall {
        id: CallId::new(),
        initiator_id: initiator,
        receiver_id: receiver,
        initiator_username: "ana".to_owned(),
        receiver_username: "ben".to_owned(),
        call_token: "tok".to_owned(),
    }
}

/// What the service asks of `transition`: `action` by `actor`, if allowed.
fn by(action: CallAction, actor: UserId) -> impl FnOnce(&Call) -> Result<Change, SignalingError> {
    move |call| {
        call.change(action, Some(actor))
            .map_err(|e| SignalingError::WrongState(e.to_string()))
    }
}

/// One ring-timeout sweep that takes every pending call, however young.
async fn ring_out(calls: &CallRepository) -> Vec<(Call, Change)> {
    calls
        .close_due(
            CallAction::RingTimeout,
            "created_at < now() + make_interval(secs => $1) LIMIT $2",
            &[&1.0_f64, &10_i64],
        )
        .await
        .expect("sweep")
}

async fn events(db: &TestDatabase) -> Vec<String> {
    db.client()
        .await
        .query("SELECT event_type FROM signaling.outbox ORDER BY seq", &[])
        .await
        .expect("outbox")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn changes_follow_the_machine_and_set_what_they_imply() {
    let db = TestDatabase::create().await;
    let settings = settings(&db, &unique_prefix(), &[]);
    // Started once for its migrations.
    let service = spawn::<Signaling>(settings.clone()).await;
    let calls = CallRepository::new(unilink_db::connect(&settings.database, "signaling", "test").expect("pool"));
    let (ana, ben) = (UserId::new(), UserId::new());

    let pending = calls.create(&new_call(ana, ben)).await.expect("create");
    assert_eq!(pending.status, CallStatus::Pending);
    let busy = calls.create(&new_call(ben, ana)).await;
    assert!(matches!(busy, Err(SignalingError::Busy)), "{busy:?}");

    let (ongoing, change) = calls
        .transition(pending.id, by(CallAction::Accept, ben))
        .await
        .expect("accept");
    assert_eq!((ongoing.status, change.to), (CallStatus::Ongoing, CallStatus::Ongoing));
    assert!(ongoing.answered_at.is_some() && ongoing.ended_at.is_none());

    // A ring timeout never takes an ongoing call, whatever its age.
    let missed = ring_out(&calls).await;
    assert!(missed.is_empty(), "{missed:?}");

    let refused = calls.transition(ongoing.id, by(CallAction::Accept, ben)).await;
    assert!(matches!(refused, Err(SignalingError::WrongState(_))), "{refused:?}");

    let (completed, _) = calls
        .transition(ongoing.id, by(CallAction::end_by(CallStatus::Ongoing, false), ben))
        .await
        .expect("hang up");
    assert_eq!(completed.status, CallStatus::Completed);
    assert!(completed.ended_at.is_some() && completed.duration_seconds >= 0);

    // The participants are free again; this one rings out.
    let second = calls.create(&new_call(ben, ana)).await.expect("free again");
    let missed = ring_out(&calls).await;
    assert_eq!(missed.len(), 1);
    let (call, change) = &missed[0];
    assert_eq!((call.id, call.status), (second.id, CallStatus::Missed));
    assert_eq!(change.action.reason(), Some("ring_timeout"));
    assert!(call.ended_at.is_some() && call.answered_at.is_none() && call.duration_seconds == 0);
    calls
        .create(&new_call(ana, ben))
        .await
        .expect("free after the ring timeout");

    assert_eq!(
        events(&db).await,
        [
            "call.initiated",
            "call.accepted",
            "call.ended",
            "call.initiated",
            "call.missed",
            "call.initiated"
        ]
    );
    service.stop().await.unwrap();
}

//! The signaling service started on port 0 against a fresh database.

use std::time::Duration;

use unilink_proto::signaling::signaling_service_client::SignalingServiceClient;
use unilink_proto::signaling::{CallRequest, CallStatus};
use unilink_signaling::Signaling;
use unilink_test_support::service::{assert_stops_cleanly_on_sigterm, spawn};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

#[tokio::test]
async fn serves_calls_on_port_zero() {
    let db = TestDatabase::create().await;
    let service = spawn::<Signaling>(settings(&db, &unique_prefix(), &[])).await;
    let (id, a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    db.client()
        .await
        .execute(
            "INSERT INTO signaling.calls (id, initiator_id, receiver_id, status, call_token, started_at, ended_at, duration_seconds)
             VALUES ($1, $2, $3, 'completed', 'tok', now() - interval '90 seconds', now(), 90)",
            &[&id, &a, &b],
        )
        .await
        .unwrap();
    let mut client = SignalingServiceClient::connect(service.url()).await.unwrap();
    let call = client
        .get_call(CallRequest {
            user_id: a.to_string(),
            call_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(call.status(), CallStatus::Completed);
    assert_eq!(call.initiator_id, a.to_string());
    assert_eq!(call.duration_seconds, 90);
    assert!(call.created_at.is_some() && call.answered_at.is_some() && call.ended_at.is_some());

    let missing = client
        .get_call(CallRequest {
            user_id: a.to_string(),
            call_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let stranger = client
        .get_call(CallRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
            call_id: id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), tonic::Code::PermissionDenied);
    service.stop().await.unwrap();
}

/// The CHECK constraint that refused a write (and fails unless one did).
fn check_violated(result: Result<u64, tokio_postgres::Error>) -> String {
    let error = result.expect_err("the database refuses the row");
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("refused by the database, not the client: {error}"));
    assert_eq!(db.code(), &unilink_db::SqlState::CHECK_VIOLATION, "{db}");
    db.constraint().expect("a named constraint").to_owned()
}

#[tokio::test]
async fn the_database_refuses_calls_to_yourself_and_unknown_states() {
    let db = TestDatabase::create().await;
    let service = spawn::<Signaling>(settings(&db, &unique_prefix(), &[])).await;
    let client = db.client().await;
    let a = uuid::Uuid::new_v4();
    let selfcall = client
        .execute(
            "INSERT INTO signaling.calls (id, initiator_id, receiver_id, call_token) VALUES ($1, $2, $2, 't')",
            &[&uuid::Uuid::new_v4(), &a],
        )
        .await;
    // (PostgreSQL names a check on two columns after the table.)
    assert_eq!(check_violated(selfcall), "calls_check");
    let bad_state = client
        .execute(
            "INSERT INTO signaling.calls (id, initiator_id, receiver_id, status, call_token) VALUES ($1, $2, $3, 'ringing', 't')",
            &[&uuid::Uuid::new_v4(), &a, &uuid::Uuid::new_v4()],
        )
        .await;
    assert_eq!(check_violated(bad_state), "calls_status_check");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly() {
    let db = TestDatabase::create().await;
    assert_stops_cleanly_on_sigterm(
        env!("CARGO_BIN_EXE_unilink-signaling"),
        db.url(),
        Duration::from_secs(5),
    )
    .await;
}

//! The notification service started on port 0 against a fresh database.

use std::time::Duration;

use unilink_notification::Notification;
use unilink_proto::notification::notification_service_client::NotificationServiceClient;
use unilink_proto::notification::{DeliveryStatus, GetDeliveryRequest};
use unilink_test_support::service::{assert_stops_cleanly_on_sigterm, spawn};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

#[tokio::test]
async fn serves_deliveries_on_port_zero() {
    let db = TestDatabase::create().await;
    let service = spawn::<Notification>(settings(&db, &unique_prefix(), &[])).await;
    let id = uuid::Uuid::new_v4();
    db.client()
        .await
        .execute(
            "INSERT INTO notification.deliveries (event_id, event_type, channel, status, attempts, delivered_at)
             VALUES ($1, 'user.verification_requested', 'email', 'delivered', 2, now())",
            &[&id],
        )
        .await
        .unwrap();
    let mut client = NotificationServiceClient::connect(service.url()).await.unwrap();
    let delivery = client
        .get_delivery(GetDeliveryRequest {
            event_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delivery.status(), DeliveryStatus::Delivered);
    assert_eq!(delivery.attempts, 2);
    assert!(delivery.delivered_at.is_some());

    let missing = client
        .get_delivery(GetDeliveryRequest {
            event_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // A second insert of the same event is refused: the ledger is idempotent by event id.
    let again = db
        .client()
        .await
        .execute(
            "INSERT INTO notification.deliveries (event_id, event_type, channel) VALUES ($1, 'x', 'email')",
            &[&id],
        )
        .await;
    assert!(again.is_err());
    service.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly() {
    let db = TestDatabase::create().await;
    assert_stops_cleanly_on_sigterm(
        env!("CARGO_BIN_EXE_unilink-notification"),
        db.url(),
        Duration::from_secs(5),
    )
    .await;
}

//! The auth service started on port 0 against a fresh database.

use std::time::Duration;

use unilink_auth::Auth;
use unilink_proto::auth::GetAccountRequest;
use unilink_proto::auth::auth_service_client::AuthServiceClient;
use unilink_test_support::service::{assert_stops_cleanly_on_sigterm, spawn};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

#[tokio::test]
async fn serves_health_and_accounts_on_port_zero() {
    let db = TestDatabase::create().await;
    let service = spawn::<Auth>(settings(&db, &unique_prefix(), &[])).await;
    assert_ne!(service.grpc_addr.port(), 0);

    let id = uuid::Uuid::new_v4();
    db.client()
        .await
        .execute(
            "INSERT INTO auth.accounts (id, email, username, full_name, password_hash, is_verified)
             VALUES ($1, 'Ada@KIIT.ac.in', 'ada', 'Ada Lovelace', 'x', true)",
            &[&id],
        )
        .await
        .unwrap();

    let mut client = AuthServiceClient::connect(service.url()).await.unwrap();
    let account = client
        .get_account(GetAccountRequest {
            user_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.id, id.to_string());
    assert_eq!(account.username, "ada");
    assert_eq!(account.role, "user");
    assert!(account.is_verified && account.is_active);
    assert!(account.created_at.is_some());

    let missing = client
        .get_account(GetAccountRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let invalid = client
        .get_account(GetAccountRequest {
            user_id: "1 OR 1=1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(
        invalid.message().contains("user id must be a UUID"),
        "{}",
        invalid.message()
    );

    service.stop().await.unwrap();
}

#[tokio::test]
async fn exposes_prometheus_metrics_and_probes() {
    let db = TestDatabase::create().await;
    let service = spawn::<Auth>(settings(&db, &unique_prefix(), &[])).await;
    let mut client = AuthServiceClient::connect(service.url()).await.unwrap();
    let _ = client
        .get_account(GetAccountRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    let base = format!("http://127.0.0.1:{}", service.http_port);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"grpc_server_handled_total{grpc_method="/unilink.auth.v1.AuthService/GetAccount",grpc_code="NotFound"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("grpc_server_handling_seconds_bucket"), "{metrics}");
    assert_eq!(reqwest::get(format!("{base}/livez")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{base}/readyz")).await.unwrap().status(), 200);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly() {
    let db = TestDatabase::create().await;
    assert_stops_cleanly_on_sigterm(env!("CARGO_BIN_EXE_unilink-auth"), db.url(), Duration::from_secs(5)).await;
}

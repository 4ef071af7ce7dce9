//! The profile service started on port 0 against a fresh database.

use std::time::Duration;

use unilink_profile::Profiles;
use unilink_proto::profile::GetProfileRequest;
use unilink_proto::profile::profile_service_client::ProfileServiceClient;
use unilink_test_support::service::{assert_stops_cleanly_on_sigterm, spawn};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

#[tokio::test]
async fn serves_profiles_on_port_zero() {
    let db = TestDatabase::create().await;
    let service = spawn::<Profiles>(settings(&db, &unique_prefix(), &[])).await;
    let id = uuid::Uuid::new_v4();
    db.client()
        .await
        .execute(
            "INSERT INTO profile.profiles (user_id, username, full_name, bio) VALUES ($1, 'ada', 'Ada', '<script>x</script>')",
            &[&id],
        )
        .await
        .unwrap();
    let mut client = ProfileServiceClient::connect(service.url()).await.unwrap();
    let profile = client
        .get_profile(GetProfileRequest {
            user_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(profile.username, "ada");
    assert_eq!(
        profile.bio.as_deref(),
        Some("<script>x</script>"),
        "stored text comes back verbatim"
    );
    assert_eq!(profile.profile_picture, None);

    let missing = client
        .get_profile(GetProfileRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let invalid = client
        .get_profile(GetProfileRequest { user_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly() {
    let db = TestDatabase::create().await;
    assert_stops_cleanly_on_sigterm(env!("CARGO_BIN_EXE_unilink-profile"), db.url(), Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bios_left_empty_before_become_null() {
    use unilink_runtime::BackendService;
    let db = TestDatabase::create().await;
    let database = settings(&db, &unique_prefix(), &[]).database;
    // A database as the previous release left it: "" for an unset bio.
    unilink_db::migrate(&database, Profiles::SCHEMA, &Profiles::MIGRATIONS[..3])
        .await
        .unwrap();
    let (unset, written) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO profile.profiles (user_id, username, full_name, bio, profile_picture)
             VALUES ($1, 'ada', 'Ada', '', ''), ($2, 'bob', 'Bob', 'hello', 'https://x.io/b.png')",
            &[&unset, &written],
        )
        .await
        .unwrap();
    unilink_db::migrate(&database, Profiles::SCHEMA, Profiles::MIGRATIONS)
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT bio, profile_picture FROM profile.profiles WHERE user_id = ANY($1) ORDER BY username",
            &[&vec![unset, written]],
        )
        .await
        .unwrap();
    let read: Vec<(Option<String>, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        read,
        vec![
            (None, None),
            (Some("hello".to_owned()), Some("https://x.io/b.png".to_owned()))
        ]
    );
}

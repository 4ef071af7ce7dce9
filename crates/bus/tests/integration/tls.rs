//! Redis over TLS against a real `redis-server --tls-port` with a
//! certificate from a CA the test made: `rediss://` verifies the server
//! (`REDIS_CA_FILE`, else the system's roots), name included, and never
//! falls back to plaintext.

use std::time::Duration;

use unilink_bus::{BusError, Redis};
use unilink_config::{RedisSettings, Secret};
use unilink_test_support::faults::PrivateRedis;
use unilink_test_support::stores::{ServerCert, TestCa};
use unilink_test_support::unique_prefix;

async fn tls_redis(ca: &TestCa, server: &ServerCert) -> PrivateRedis {
    let path = |p: &std::path::Path| p.display().to_string();
    PrivateRedis::start_tls(vec![
        "--tls-cert-file".into(),
        path(&server.cert),
        "--tls-key-file".into(),
        path(&server.key),
        "--tls-ca-cert-file".into(),
        path(&ca.cert()),
        "--tls-auth-clients".into(),
        "no".into(),
    ])
    .await
}

fn settings(url: String, ca_file: Option<std::path::PathBuf>) -> RedisSettings {
    let mut settings = RedisSettings::new(Secret::new(url), unique_prefix());
    settings.ca_file = ca_file;
    settings
}

/// Whether a SET and GET round trip works within a few seconds.
async fn works(settings: &RedisSettings) -> Result<(), BusError> {
    let redis = Redis::connect(settings).await?;
    redis.ping(Duration::from_secs(3)).await?;
    redis.set_with_ttl("tls-probe", "yes", Duration::from_secs(30)).await?;
    assert_eq!(redis.get("tls-probe").await?.as_deref(), Some("yes"));
    redis.close().await;
    Ok(())
}

#[tokio::test]
async fn rediss_verifies_the_server_and_never_falls_back_to_plaintext() {
    let ca = TestCa::new();
    let server = ca.issue("redis", &["DNS:localhost", "IP:127.0.0.1"]);
    let redis = tls_redis(&ca, &server).await;
    let port = redis.port();

    // Our CA, by name and by IP: works.
    for host in ["localhost", "127.0.0.1"] {
        works(&settings(format!("rediss://{host}:{port}"), Some(ca.cert())))
            .await
            .unwrap_or_else(|e| panic!("rediss://{host}: {e}"));
    }
    // Another CA, or the system's roots (which never signed it): refused.
    let stranger = TestCa::new();
    assert!(
        works(&settings(format!("rediss://localhost:{port}"), Some(stranger.cert())))
            .await
            .is_err()
    );
    assert!(
        works(&settings(format!("rediss://localhost:{port}"), None))
            .await
            .is_err()
    );
    // Plaintext to the TLS port gets nowhere.
    assert!(
        works(&settings(format!("redis://127.0.0.1:{port}"), None))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = TestCa::new();
    let server = ca.issue("elsewhere", &["DNS:redis.elsewhere.example"]);
    let redis = tls_redis(&ca, &server).await;
    let url = format!("rediss://localhost:{}", redis.port());
    assert!(works(&settings(url, Some(ca.cert()))).await.is_err());
}

#[tokio::test]
async fn a_missing_ca_file_is_named_at_once() {
    let err = Redis::connect(&settings(
        "rediss://localhost:6380".to_owned(),
        Some("/nonexistent/redis-ca.pem".into()),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "redis TLS: REDIS_CA_FILE: cannot read the CA file /nonexistent/redis-ca.pem: No such file or directory (os error 2)"
    );
}

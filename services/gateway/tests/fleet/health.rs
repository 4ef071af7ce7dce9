//! `/health`, `/`, `/metrics` and error answers through a real gateway in
//! front of the real services.

use unilink_test_support::fleet as common;

use std::time::{Duration, Instant};

use common::Fleet;
use unilink_test_support::closed_port;
use unilink_test_support::service::{CHILD_STARTUP, ChildService};

#[tokio::test]
async fn health_is_healthy_when_everything_answers() {
    let fleet = Fleet::start().await;
    let gateway = fleet.gateway(&[]).await;
    let (status, body) = gateway.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database"], "connected");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["redis"], "connected");
    for service in ["auth", "profile", "signaling", "notification"] {
        assert_eq!(body["services"][service], "serving", "{body}");
    }
    assert!(body.get("down").is_none(), "{body}");
    gateway.stop().await;
}

#[tokio::test]
async fn health_is_degraded_naming_the_database_when_postgres_is_unreachable() {
    let fleet = Fleet::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/unilink", closed_port());
    let gateway = fleet.gateway(&[("DATABASE_URL", &url)]).await;
    let started = Instant::now();
    let (status, body) = gateway.get("/health").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["database"], "disconnected");
    assert_eq!(body["down"], serde_json::json!(["database"]));
    gateway.stop().await;
}

#[tokio::test]
async fn health_is_degraded_naming_a_service_that_is_unreachable() {
    let fleet = Fleet::start().await;
    let url = format!("http://127.0.0.1:{}", closed_port());
    let gateway = fleet.gateway(&[("AUTH_GRPC_URL", &url)]).await;
    let started = Instant::now();
    let (status, body) = gateway.get("/health").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["database"], "connected");
    assert_eq!(body["services"]["auth"], "unreachable");
    assert_eq!(body["services"]["profile"], "serving");
    assert_eq!(body["down"], serde_json::json!(["auth"]));
    gateway.stop().await;
}

#[tokio::test]
async fn health_follows_a_service_that_stops_and_a_redis_that_is_unreachable() {
    let fleet = Fleet::start().await;
    let redis = format!("redis://127.0.0.1:{}", closed_port());
    let gateway = fleet.gateway(&[("REDIS_URL", &redis)]).await;
    let Fleet { notification, .. } = fleet;
    notification.stop().await.unwrap();
    let (status, body) = gateway.get("/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["redis"], "disconnected");
    assert_eq!(body["services"]["notification"], "unreachable");
    assert_eq!(body["down"], serde_json::json!(["redis", "notification"]));
    gateway.stop().await;
}

#[tokio::test]
async fn index_metrics_and_unknown_routes() {
    let fleet = Fleet::start().await;
    let gateway = fleet.gateway(&[]).await;
    let (status, body) = gateway.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["health"], "/health");
    assert!(body["message"].as_str().unwrap().contains("UniLink"));

    let livez = gateway.http.get(gateway.url("/livez")).send().await.unwrap();
    assert_eq!(livez.status(), 200);

    let (status, body) = gateway.get("/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "no route for GET /no/such/route");

    let _ = gateway.get("/health").await;
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"http_requests_total{method="GET",route="/health",status="200"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"}"#),
        "{metrics}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn sigterm_stops_the_gateway_binary_cleanly() {
    let fleet = Fleet::start().await;
    let mut env = fleet.gateway_vars(&[]);
    env.extend(
        [
            ("ENVIRONMENT", "test".to_owned()),
            ("DATABASE_URL", fleet.db.url().to_owned()),
            ("REDIS_URL", unilink_test_support::redis_url()),
            ("REDIS_KEY_PREFIX", fleet.prefix.clone()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SHUTDOWN_GRACE_SECONDS", "5".to_owned()),
            ("LOG_LEVEL", "warn,unilink_gateway::startup=info".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut child = ChildService::start_logged(env!("CARGO_BIN_EXE_unilink-gateway"), &env);
    let addr = child.logged_addr("gateway listening", "addr", CHILD_STARTUP).await;
    let http = reqwest::Client::new();
    let health = format!("http://{addr}/health");
    unilink_test_support::eventually("gateway to answer /health", Duration::from_secs(30), || {
        let http = http.clone();
        let health = health.clone();
        async move {
            let response = http.get(&health).send().await.ok()?;
            (response.status() == 200).then_some(())
        }
    })
    .await;
    let started = Instant::now();
    let status = child.terminate(Duration::from_secs(5)).await;
    assert!(status.success(), "gateway exited with {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

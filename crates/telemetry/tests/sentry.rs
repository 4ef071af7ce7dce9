//! Sentry from `init`: panics and `error!` events arrive at the ingest API
//! (a local stand-in) with their request context and without secrets.

use std::time::Duration;

use unilink_config::Settings;
use unilink_test_support::eventually;
use unilink_test_support::sentry::SentrySink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_errors_reach_sentry_with_context_and_without_secrets() {
    let sink = SentrySink::start().await;
    let settings = Settings::from_vars([
        ("ENVIRONMENT".to_owned(), "test".to_owned()),
        ("LOG_LEVEL".to_owned(), "info".to_owned()),
        ("SENTRY_DSN".to_owned(), sink.dsn()),
    ])
    .unwrap();
    let guard = unilink_telemetry::init("telemetry-test", "1.2.3", &settings).unwrap();

    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEiLCJleHAiOjF9.c2lnbmF0dXJl";
    let panicked = std::thread::spawn(move || panic!("boom: password=hunter2 token {jwt}")).join();
    assert!(panicked.is_err());

    // What actix-http logs when a client sends a malformed request.
    tracing::error!(
        target: "actix_http::h1::dispatcher",
        "stream error: request parse error: a client's garbage is not reported"
    );
    // (Sent before the error below: the transport keeps their order, so it
    // would be at the sink by the time that one is.)
    let span = tracing::info_span!(
        "http.request",
        request_id = "req-42",
        http.route = "/users/me",
        trace_id = tracing::field::Empty,
    );
    unilink_telemetry::record_trace_id(&span);
    span.in_scope(|| {
        let inner = tracing::info_span!("get_profile", user_id = "u-1");
        inner.in_scope(|| tracing::error!(error = "db failed for Bearer abc123", "request failed"));
        tracing::warn!("a warning is not reported");
    });

    let events = eventually("two events at the sink", Duration::from_secs(10), || {
        let events = sink.events();
        async move { (events.len() >= 2).then_some(events) }
    })
    .await;
    let panic = events
        .iter()
        .find(|e| !e["exception"]["values"].is_null())
        .expect("the panic");
    let value = panic["exception"]["values"][0]["value"].as_str().unwrap();
    assert!(value.starts_with("boom: password=[Filtered]"), "{value}");
    let error = events
        .iter()
        .find(|e| e["tags"]["request_id"] == "req-42")
        .expect("the error event");
    assert_eq!(error["message"], "request failed: db failed for Bearer [Filtered]");
    assert_eq!(error["tags"]["http.route"], "/users/me");
    assert_eq!(error["tags"]["user_id"], "u-1");
    assert_eq!(error["tags"]["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(error["release"], "telemetry-test@1.2.3");
    assert_eq!(error["environment"], "test");
    assert!(
        error["breadcrumbs"]["values"].as_array().is_none_or(|b| b.is_empty()),
        "{error}"
    );

    let raw = sink.raw();
    for secret in [
        "hunter2",
        jwt,
        "abc123",
        "a warning is not reported",
        "a client's garbage is not reported",
    ] {
        assert!(!raw.contains(secret), "{secret:?} reached Sentry: {raw}");
    }
    drop(guard);
}

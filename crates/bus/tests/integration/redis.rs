//! The bus against a real Redis, each test under its own key prefix.

use std::time::Duration;

use unilink_bus::{BusMessage, Redis, StreamConsumer, Subscriber};
use unilink_config::{RedisSettings, Secret};
use unilink_test_support::{closed_port, redis_url, unique_prefix};

fn settings(prefix: &str) -> RedisSettings {
    RedisSettings::new(Secret::new(redis_url()), prefix.to_owned())
}

#[tokio::test]
async fn keys_are_prefixed_and_expire() {
    let prefix = unique_prefix();
    let redis = Redis::connect(&settings(&prefix)).await.unwrap();
    redis.ping(Duration::from_secs(1)).await.unwrap();
    redis
        .set_with_ttl("greeting", "hello", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(redis.get("greeting").await.unwrap().as_deref(), Some("hello"));

    // Another prefix does not see it.
    let other = Redis::connect(&settings(&unique_prefix())).await.unwrap();
    assert_eq!(other.get("greeting").await.unwrap(), None);
    assert_eq!(redis.key("greeting"), format!("{prefix}greeting"));
}

#[tokio::test]
async fn published_messages_reach_subscribers_of_the_same_prefix_only() {
    let prefix = unique_prefix();
    let redis = Redis::connect(&settings(&prefix)).await.unwrap();
    let subscriber = Subscriber::connect(&redis).await.unwrap();
    let mut messages = subscriber.messages();
    subscriber.subscribe("user:42").await.unwrap();

    let stranger = Redis::connect(&settings(&unique_prefix())).await.unwrap();
    assert_eq!(stranger.publish("user:42", "not for you").await.unwrap(), 0);

    let receivers = redis.publish("user:42", r#"{"type":"ping"}"#).await.unwrap();
    assert_eq!(receivers, 1);
    let got = tokio::time::timeout(Duration::from_secs(2), messages.next())
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(BusMessage {
            channel: "user:42".into(),
            payload: r#"{"type":"ping"}"#.into()
        })
    );

    subscriber.unsubscribe("user:42").await.unwrap();
    assert_eq!(redis.publish("user:42", "gone").await.unwrap(), 0);
    subscriber.close().await;
}

#[tokio::test]
async fn stream_entries_are_delivered_once_per_group_and_acknowledged() {
    let prefix = unique_prefix();
    let redis = Redis::connect(&settings(&prefix)).await.unwrap();
    let a = StreamConsumer::join(&redis, "events", "mailer", "a").await.unwrap();
    let b = StreamConsumer::join(&redis, "events", "mailer", "b").await.unwrap();

    for i in 0..10 {
        redis
            .append(
                "events",
                &[("event_id", &i.to_string()), ("type", "user.registered")],
                10_000,
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for consumer in [&a, &b, &a, &b] {
        for entry in consumer.read(4, Duration::from_millis(200)).await.unwrap() {
            seen.push(entry.fields["event_id"].clone());
            consumer.ack(&entry.id).await.unwrap();
        }
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(
        seen,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each entry exactly once"
    );
    assert_eq!(a.pending_count().await.unwrap(), 0);

    // A second group sees everything again.
    let audit = StreamConsumer::join(&redis, "events", "audit", "x").await.unwrap();
    assert_eq!(audit.read(100, Duration::from_millis(200)).await.unwrap().len(), 10);
}

#[tokio::test]
async fn entries_left_pending_by_a_dead_consumer_are_reclaimed() {
    let prefix = unique_prefix();
    let redis = Redis::connect(&settings(&prefix)).await.unwrap();
    let dead = StreamConsumer::join(&redis, "events", "mailer", "dead").await.unwrap();
    let alive = StreamConsumer::join(&redis, "events", "mailer", "alive").await.unwrap();
    redis.append("events", &[("event_id", "e1")], 1000).await.unwrap();

    let taken = dead.read(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(taken.len(), 1);
    dead.close().await; // dies without acknowledging

    assert!(alive.read(10, Duration::from_millis(100)).await.unwrap().is_empty());
    assert!(
        alive.claim_stale(Duration::from_secs(60), 10).await.unwrap().is_empty(),
        "not idle long enough yet"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reclaimed = alive.claim_stale(Duration::from_millis(100), 10).await.unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].fields["event_id"], "e1");
    alive.ack(&reclaimed[0].id).await.unwrap();
    assert_eq!(alive.pending_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_missing_group_is_recreated_after_redis_lost_it() {
    let prefix = unique_prefix();
    let redis = Redis::connect(&settings(&prefix)).await.unwrap();
    let consumer = StreamConsumer::join(&redis, "events", "mailer", "c").await.unwrap();
    // Simulate Redis losing its data: delete the stream (and with it the group).
    redis_del(&format!("{prefix}events")).await;
    assert!(consumer.read(10, Duration::from_millis(50)).await.unwrap().is_empty());
    redis.append("events", &[("event_id", "after")], 1000).await.unwrap();
    let got = consumer.read(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(got.len(), 1);
}

async fn redis_del(key: &str) {
    // Plain RESP over TCP: the test's own view of Redis, independent of the crate under test.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cmd = format!("*2\r\n$3\r\nDEL\r\n${}\r\n{key}\r\n", key.len());
    stream.write_all(cmd.as_bytes()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b":"),
        "DEL answered {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast_instead_of_hanging() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let started = std::time::Instant::now();
    let redis = Redis::connect(&RedisSettings::new(Secret::new(url), unique_prefix()))
        .await
        .expect("connect does not fail because Redis is down");
    let err = redis.ping(Duration::from_millis(500)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        unilink_errors::HasErrorCode::code(&err),
        unilink_errors::ErrorCode::Unavailable
    );
    redis.close().await;
}

#[tokio::test]
async fn a_group_reports_how_far_behind_it_is() {
    let redis = Redis::connect(&settings(&unique_prefix())).await.unwrap();
    for n in 0..5 {
        redis.append("events", &[("n", &n.to_string())], 1000).await.unwrap();
    }
    let group = StreamConsumer::join(&redis, "events", "lagging", "c1").await.unwrap();
    assert_eq!(group.lag().await.unwrap(), Some(5));
    let read = group.read(2, Duration::from_millis(100)).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(group.lag().await.unwrap(), Some(3));
}

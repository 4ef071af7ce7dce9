//! The relay against real Redis: order, exactly once, replay, and recovery
//! of messages a slow reader lost.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_domain::{CallId, UserId};
use unilink_signaling::relay::SignalRelay;
use unilink_test_support::{redis_url, unique_prefix};

async fn relay() -> (SignalRelay, CancellationToken) {
    let redis = Redis::connect(&unilink_config::RedisSettings {
        url: unilink_config::Secret::new(redis_url()),
        key_prefix: unique_prefix(),
    })
    .await
    .unwrap();
    let stop = CancellationToken::new();
    (SignalRelay::new(redis, stop.clone()), stop)
}

fn frame(n: u32) -> String {
    format!(r#"{{"type":"ice_candidate","candidate":{{"n":{n}}}}}"#)
}

fn n_of(text: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["candidate"]["n"].as_u64().unwrap()
}

#[tokio::test]
async fn a_reader_that_falls_behind_still_gets_every_frame_once_in_order() {
    let (relay, stop) = relay().await;
    let (call, user) = (CallId::new(), UserId::new());
    let mut mailbox = relay.open(call, user, 0).await.unwrap();
    // Far more than the reader's queue holds, sent before it reads anything.
    let sender = relay.clone();
    let sending = tokio::spawn(async move {
        for n in 0..3000 {
            sender.send(call, user, "peer", &frame(n), "").await.unwrap();
        }
    });
    for expected in 0..3000u64 {
        let got = tokio::time::timeout(Duration::from_secs(10), mailbox.next())
            .await
            .expect("frame within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(got.seq, expected + 1);
        assert_eq!(n_of(&got.text), expected);
        assert!(got.text.starts_with(&format!(r#"{{"seq":{},"type""#, expected + 1)));
        assert_eq!(got.sender, "peer");
    }
    sending.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), mailbox.next())
            .await
            .is_err(),
        "nothing twice"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_second_reader_resumes_after_what_it_saw() {
    let (relay, stop) = relay().await;
    let (call, user) = (CallId::new(), UserId::new());
    for n in 0..20 {
        relay.send(call, user, "peer", &frame(n), "").await.unwrap();
    }
    // First connection: reads 12 and goes away, recording what it delivered.
    let mut first = relay.open(call, user, 0).await.unwrap();
    for _ in 0..12 {
        first.next().await.unwrap().unwrap();
    }
    first.record_delivered().await.unwrap();
    drop(first);
    // A reconnect that does not say where it stopped continues from there…
    let mut second = relay.open(call, user, 0).await.unwrap();
    assert_eq!(n_of(&second.next().await.unwrap().unwrap().text), 12);
    // …and one that does, from exactly there.
    let mut third = relay.open(call, user, 5).await.unwrap();
    assert_eq!(third.next().await.unwrap().unwrap().seq, 6);
    stop.cancel();
}

#[tokio::test]
async fn a_lost_tail_is_found_by_catching_up() {
    let prefix = unique_prefix();
    let redis = Redis::connect(&unilink_config::RedisSettings {
        url: unilink_config::Secret::new(redis_url()),
        key_prefix: prefix,
    })
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let relay = SignalRelay::new(redis.clone(), stop.clone());
    let (call, user) = (CallId::new(), UserId::new());
    let mut mailbox = relay.open(call, user, 0).await.unwrap();
    relay.send(call, user, "peer", &frame(0), "").await.unwrap();
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, 1);
    mailbox.catch_up().await.unwrap();
    assert!(!mailbox.has_ready(), "nothing new");

    // Two frames reach the buffer but their publications are lost (the
    // subscriber was reconnecting): written the way the send script does,
    // without the PUBLISH.
    for seq in 2..4u64 {
        let text = format!(
            r#"{{"seq":{seq},"type":"ice_candidate","candidate":{{"n":{}}}}}"#,
            seq - 1
        );
        redis
            .script(
                "redis.call('INCR', KEYS[1]); redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]); return 1",
                vec![
                    redis.key(&format!("relay:{call}:{user}:seq")),
                    redis.key(&format!("relay:{call}:{user}:buf")),
                ],
                vec![seq.to_string(), format!("1|{seq}|peer|0||{text}")],
            )
            .await
            .unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), mailbox.next())
            .await
            .is_err(),
        "nothing was published"
    );
    mailbox.catch_up().await.unwrap();
    assert!(mailbox.has_ready());
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, 2);
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, 3);
    // The next live frame follows on.
    relay.send(call, user, "peer", &frame(3), "").await.unwrap();
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, 4);
    stop.cancel();
}

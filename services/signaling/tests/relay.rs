//! The relay against real Redis: order, exactly once, replay, and recovery
//! of messages a slow reader lost.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_domain::{CallId, UserId};
use unilink_signaling::relay::{RETIRED_TTL, SignalRelay};
use unilink_test_support::faults::PrivateRedis;
use unilink_test_support::{redis_url, unique_prefix};

/// Redis under a key prefix of the test's own.
async fn redis() -> Redis {
    Redis::connect(&unilink_config::RedisSettings {
        url: unilink_config::Secret::new(redis_url()),
        key_prefix: unique_prefix(),
    })
    .await
    .unwrap()
}

async fn relay() -> (SignalRelay, CancellationToken) {
    let stop = CancellationToken::new();
    (SignalRelay::new(redis().await, stop.clone()), stop)
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
    let mut base = 0;
    for expected in 0..3000u64 {
        let got = tokio::time::timeout(Duration::from_secs(10), mailbox.next())
            .await
            .expect("frame within 10 s")
            .unwrap()
            .unwrap();
        if expected == 0 {
            // A new mailbox counts from the clock (ms × 1000), so numbers
            // keep growing even if Redis loses the counter.
            base = got.seq;
            assert!(base > 1_700_000_000_000_000, "{base}");
        }
        assert_eq!(got.seq, base + expected);
        assert_eq!(n_of(&got.text), expected);
        assert!(got.text.starts_with(&format!(r#"{{"seq":{},"type""#, base + expected)));
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
    let base = first.next().await.unwrap().unwrap().seq;
    for _ in 1..12 {
        first.next().await.unwrap().unwrap();
    }
    first.record_delivered().await.unwrap();
    drop(first);
    // A reconnect that does not say where it stopped continues from there…
    let mut second = relay.open(call, user, 0).await.unwrap();
    assert_eq!(n_of(&second.next().await.unwrap().unwrap().text), 12);
    // …and one that does, from exactly there.
    let mut third = relay.open(call, user, base + 4).await.unwrap();
    let next = third.next().await.unwrap().unwrap();
    assert_eq!(next.seq, base + 5);
    assert_eq!(n_of(&next.text), 5);
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
    let base = relay.send(call, user, "peer", &frame(0), "").await.unwrap();
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, base);
    mailbox.catch_up().await.unwrap();
    assert!(!mailbox.has_ready(), "nothing new");

    // Two frames reach the buffer but their publications are lost (the
    // subscriber was reconnecting): written the way the send script does,
    // without the PUBLISH.
    for seq in base + 1..base + 3 {
        let text = format!(
            r#"{{"seq":{seq},"type":"ice_candidate","candidate":{{"n":{}}}}}"#,
            seq - base
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
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, base + 1);
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, base + 2);
    // The next live frame follows on.
    relay.send(call, user, "peer", &frame(3), "").await.unwrap();
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, base + 3);
    stop.cancel();
}

#[tokio::test]
async fn the_relay_survives_a_redis_restart_that_loses_everything() {
    let mut server = PrivateRedis::start().await;
    let redis = Redis::connect(&unilink_config::RedisSettings {
        url: unilink_config::Secret::new(server.url()),
        key_prefix: unique_prefix(),
    })
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let relay = SignalRelay::new(redis, stop.clone());
    let (call, user) = (CallId::new(), UserId::new());
    let mut mailbox = loop {
        if let Ok(m) = relay.open(call, user, 0).await {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut last = 0;
    for n in 0..5 {
        relay.send(call, user, "peer", &frame(n), "").await.unwrap();
        last = mailbox.next().await.unwrap().unwrap().seq;
    }

    // Redis dies and comes back empty (nothing on disk).
    server.restart().await;
    let restarted = std::time::Instant::now();
    // Senders retry until Redis answers; the reader's subscription comes back
    // by itself and frames flow again, numbered after the old ones.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut n = 100;
        loop {
            if relay.send(call, user, "peer", &frame(n), "").await.is_ok() {
                n += 1;
            }
            tokio::select! {
                frame = mailbox.next() => return frame.unwrap().unwrap(),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
    .await
    .expect("frames flow again within 10 s of the restart");
    assert!(got.seq > last, "{} after {last}", got.seq);
    assert!(n_of(&got.text) >= 100);
    eprintln!("relay flowing again {:?} after the restart", restarted.elapsed());
    // And on in order.
    let sent = relay.send(call, user, "peer", &frame(999), "").await.unwrap();
    loop {
        let next = mailbox.next().await.unwrap().unwrap();
        assert!(next.seq > last);
        last = next.seq;
        if n_of(&next.text) == 999 {
            assert_eq!(next.seq, sent);
            break;
        }
    }
    stop.cancel();
}

#[tokio::test]
async fn numbered_client_frames_are_relayed_once_and_in_order() {
    use unilink_signaling::relay::SendOutcome;
    let (relay, stop) = relay().await;
    let (call, user) = (CallId::new(), UserId::new());
    let mut mailbox = relay.open(call, user, 0).await.unwrap();
    let send = |cid: &'static str, n: u64| {
        let relay = relay.clone();
        async move {
            relay
                .send_once(call, user, "peer", &frame(n as u32), "", Some((cid, n)))
                .await
                .unwrap()
        }
    };
    assert!(matches!(send("page1", 1).await, SendOutcome::Relayed(_)));
    // Sent again (the client lost its connection before the ack): not relayed.
    assert_eq!(send("page1", 1).await, SendOutcome::Repeat);
    // Frame 2 was lost on the way: 3 is held back until 2 comes.
    assert_eq!(send("page1", 3).await, SendOutcome::OutOfOrder);
    assert!(matches!(send("page1", 2).await, SendOutcome::Relayed(_)));
    assert!(matches!(send("page1", 3).await, SendOutcome::Relayed(_)));
    // Another page of the same user numbers from 1 again.
    assert!(matches!(send("page2", 1).await, SendOutcome::Relayed(_)));
    let mut got = Vec::new();
    for _ in 0..4 {
        let frame = tokio::time::timeout(Duration::from_secs(5), mailbox.next())
            .await
            .expect("frame within 5 s")
            .unwrap()
            .unwrap();
        got.push(n_of(&frame.text));
    }
    assert_eq!(got, [1, 2, 3, 1]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), mailbox.next())
            .await
            .is_err(),
        "nothing more"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_retired_mailbox_expires_within_minutes_and_still_replays() {
    let redis = redis().await;
    let stop = CancellationToken::new();
    let relay = SignalRelay::new(redis.clone(), stop.clone());
    let (call, user) = (CallId::new(), UserId::new());
    for n in 0..3 {
        relay.send(call, user, "system", &frame(n), "").await.unwrap();
    }
    let ttl = |suffix: &'static str| {
        let key = redis.key(&format!("relay:{call}:{user}:{suffix}"));
        let redis = redis.clone();
        async move {
            let answer = redis
                .script("return redis.call('TTL', KEYS[1])", vec![key], vec![])
                .await
                .unwrap();
            answer[0].as_deref().unwrap().parse::<i64>().unwrap()
        }
    };
    assert!(ttl("buf").await > 3000, "an open call's mailbox keeps an hour");
    relay.retire(call, user).await.unwrap();
    for suffix in ["seq", "buf"] {
        let left = ttl(suffix).await;
        assert!(
            (1..=RETIRED_TTL.as_secs() as i64).contains(&left),
            "{suffix}: {left} s left"
        );
    }
    // A client reconnecting in the resume window still reads every frame.
    let mut mailbox = relay.open(call, user, 0).await.unwrap();
    for n in 0..3u64 {
        let got = tokio::time::timeout(Duration::from_secs(2), mailbox.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(n_of(&got.text), n);
    }
    stop.cancel();
}

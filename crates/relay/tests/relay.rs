//! The relay against real Redis: order, exactly once, replay, and recovery
//! of messages a slow reader lost.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_domain::{CallId, UserId};
use unilink_protocol::CallFrame;
use unilink_relay::{Mailbox, RETIRED_TTL, Relayed, SignalRelay};
use unilink_test_support::faults::PrivateRedis;
use unilink_test_support::{redis_url, unique_prefix};

/// Redis under a key prefix of the test's own.
async fn redis() -> Redis {
    Redis::connect(&unilink_config::RedisSettings::new(
        unilink_config::Secret::new(redis_url()),
        unique_prefix(),
    ))
    .await
    .unwrap()
}

async fn relay() -> (SignalRelay, CancellationToken) {
    let stop = CancellationToken::new();
    (SignalRelay::new(redis().await, stop.clone()), stop)
}

fn from() -> UserId {
    UserId::parse("6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1").unwrap()
}

fn frame(n: u32) -> CallFrame {
    CallFrame::IceCandidate {
        candidate: serde_json::json!({ "n": n }),
        from: from(),
    }
}

/// The mailbox's next frame, within `wait`.
async fn next_within(mailbox: &mut Mailbox, wait: Duration) -> Relayed {
    tokio::time::timeout(wait, mailbox.next())
        .await
        .unwrap_or_else(|_| panic!("frame within {wait:?}"))
        .unwrap()
        .unwrap()
}

/// Nothing arrives within `wait` (`what` says why nothing should).
async fn nothing_more(mailbox: &mut Mailbox, wait: Duration, what: &str) {
    assert!(tokio::time::timeout(wait, mailbox.next()).await.is_err(), "{what}");
}

fn n_of(relayed: &Relayed) -> u64 {
    match &relayed.envelope.frame {
        CallFrame::IceCandidate { candidate, .. } => candidate["n"].as_u64().unwrap(),
        other => panic!("not a test frame: {other:?}"),
    }
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
        let got = next_within(&mut mailbox, Duration::from_secs(10)).await;
        if expected == 0 {
            // A new mailbox counts from the clock (ms × 1000), so numbers
            // keep growing even if Redis loses the counter.
            base = got.seq;
            assert!(base > 1_700_000_000_000_000, "{base}");
        }
        assert_eq!(got.seq, base + expected);
        assert_eq!(n_of(&got), expected);
        assert!(
            got.client_text()
                .starts_with(&format!(r#"{{"seq":{},"type""#, base + expected))
        );
        assert_eq!(got.envelope.sender, "peer");
    }
    sending.await.unwrap();
    nothing_more(&mut mailbox, Duration::from_millis(300), "nothing twice").await;
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
    assert_eq!(n_of(&second.next().await.unwrap().unwrap()), 12);
    // …and one that does, from exactly there.
    let mut third = relay.open(call, user, base + 4).await.unwrap();
    let next = third.next().await.unwrap().unwrap();
    assert_eq!(next.seq, base + 5);
    assert_eq!(n_of(&next), 5);
    stop.cancel();
}

#[tokio::test]
async fn a_lost_tail_is_found_by_catching_up() {
    let prefix = unique_prefix();
    let redis = Redis::connect(&unilink_config::RedisSettings::new(
        unilink_config::Secret::new(redis_url()),
        prefix,
    ))
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
        let text = stored(seq, (seq - base) as u32);
        redis
            .script(
                "redis.call('INCR', KEYS[1]); redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]); return 1",
                vec![
                    redis.key(&format!("relay:{call}:{user}:seq")),
                    redis.key(&format!("relay:{call}:{user}:buf")),
                ],
                vec![seq.to_string(), text],
            )
            .await
            .unwrap();
    }
    nothing_more(&mut mailbox, Duration::from_millis(200), "nothing was published").await;
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
    let redis = Redis::connect(&unilink_config::RedisSettings::new(
        unilink_config::Secret::new(server.url()),
        unique_prefix(),
    ))
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
    assert!(n_of(&got) >= 100);
    eprintln!("relay flowing again {:?} after the restart", restarted.elapsed());
    // And on in order.
    let sent = relay.send(call, user, "peer", &frame(999), "").await.unwrap();
    loop {
        let next = mailbox.next().await.unwrap().unwrap();
        assert!(next.seq > last);
        last = next.seq;
        if n_of(&next) == 999 {
            assert_eq!(next.seq, sent);
            break;
        }
    }
    stop.cancel();
}

#[tokio::test]
async fn numbered_client_frames_are_relayed_once_and_in_order() {
    use unilink_relay::{FromClient, SendOutcome};
    let (relay, stop) = relay().await;
    let (call, user) = (CallId::new(), UserId::new());
    let mut mailbox = relay.open(call, user, 0).await.unwrap();
    let send = |cid: &'static str, n: u64| {
        let relay = relay.clone();
        async move {
            relay
                .send_once(
                    call,
                    user,
                    "peer",
                    &frame(n as u32),
                    "",
                    FromClient {
                        numbered: Some((cid, n)),
                        early: false,
                    },
                )
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
        let frame = next_within(&mut mailbox, Duration::from_secs(5)).await;
        got.push(n_of(&frame));
    }
    assert_eq!(got, [1, 2, 3, 1]);
    nothing_more(&mut mailbox, Duration::from_millis(300), "nothing more").await;
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
        let got = next_within(&mut mailbox, Duration::from_secs(2)).await;
        assert_eq!(n_of(&got), n);
    }
    stop.cancel();
}

/// The members of `user`'s buffer of `call`, oldest first, and its byte count.
async fn buffer_of(redis: &Redis, call: CallId, user: UserId) -> (Vec<String>, Option<u64>) {
    let members = redis
        .script(
            "return redis.call('ZRANGE', KEYS[1], 0, -1)",
            vec![redis.key(&format!("relay:{call}:{user}:buf"))],
            vec![],
        )
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    let bytes = redis
        .get(&format!("relay:{call}:{user}:bytes"))
        .await
        .unwrap()
        .map(|b| b.parse().unwrap());
    (members, bytes)
}

/// A frame as the send script stores it.
fn stored(seq: u64, n: u32) -> String {
    let envelope = unilink_protocol::Envelope {
        sender: "peer".into(),
        sent_us: 0,
        traceparent: String::new(),
        frame: frame(n),
    };
    format!("{}{seq}|{}", Relayed::PREFIX, envelope.to_json())
}

fn padded(n: u32, pad: usize) -> CallFrame {
    CallFrame::IceCandidate {
        candidate: serde_json::json!({ "n": n, "pad": "x".repeat(pad) }),
        from: from(),
    }
}

#[tokio::test]
async fn a_mailbox_keeps_the_newest_frames_within_its_byte_bound() {
    use unilink_relay::BUFFER_BYTES;
    let redis = redis().await;
    let stop = CancellationToken::new();
    let relay = SignalRelay::new(redis.clone(), stop.clone());
    let (call, user) = (CallId::new(), UserId::new());
    // 5 MiB of 16 KiB frames: far fewer frames than the count bound.
    let mut seqs = Vec::new();
    for n in 0..320 {
        seqs.push(relay.send(call, user, "peer", &padded(n, 16 * 1024), "").await.unwrap());
    }
    let (members, bytes) = buffer_of(&redis, call, user).await;
    let held: usize = members.iter().map(String::len).sum();
    assert!(held as u64 <= BUFFER_BYTES, "{held} bytes buffered");
    assert!(held as u64 > BUFFER_BYTES - 20 * 1024, "only the excess went: {held}");
    assert_eq!(bytes, Some(held as u64), "the byte count is what the buffer holds");
    let kept = members.len();
    assert!(kept < 320, "{kept} frames");

    // A resume from the start, or from a frame no longer buffered, gets the
    // oldest frame still there and everything after it, in order.
    for after in [Some(0), Some(seqs[3])] {
        let mut mailbox = relay.open_after(call, user, after).await.unwrap();
        for n in (320 - kept as u64)..320 {
            let got = next_within(&mut mailbox, Duration::from_secs(5)).await;
            assert_eq!(n_of(&got), n);
            assert_eq!(got.seq, seqs[n as usize]);
        }
    }
    stop.cancel();
}

#[tokio::test]
async fn the_byte_count_follows_the_buffer_when_redis_lost_either() {
    let redis = redis().await;
    let stop = CancellationToken::new();
    let relay = SignalRelay::new(redis.clone(), stop.clone());
    let (call, user) = (CallId::new(), UserId::new());
    for n in 0..10 {
        relay.send(call, user, "peer", &padded(n, 1000), "").await.unwrap();
    }
    let sum = |members: &[String]| members.iter().map(|m| m.len() as u64).sum::<u64>();
    // The count lost (or a buffer written before it existed): counted again.
    redis
        .script(
            "return redis.call('DEL', KEYS[1])",
            vec![redis.key(&format!("relay:{call}:{user}:bytes"))],
            vec![],
        )
        .await
        .unwrap();
    relay.send(call, user, "peer", &padded(10, 1000), "").await.unwrap();
    let (members, bytes) = buffer_of(&redis, call, user).await;
    assert_eq!(members.len(), 11);
    assert_eq!(bytes, Some(sum(&members)));
    // The buffer lost but a stale count left: an empty buffer counts from 0
    // (a stale count would trim every frame but the newest).
    redis
        .script(
            "redis.call('DEL', KEYS[1]); return redis.call('SET', KEYS[2], '999999999')",
            vec![
                redis.key(&format!("relay:{call}:{user}:buf")),
                redis.key(&format!("relay:{call}:{user}:bytes")),
            ],
            vec![],
        )
        .await
        .unwrap();
    for n in 11..14 {
        relay.send(call, user, "peer", &padded(n, 1000), "").await.unwrap();
    }
    let (members, bytes) = buffer_of(&redis, call, user).await;
    assert_eq!(members.len(), 3);
    assert_eq!(bytes, Some(sum(&members)));
    stop.cancel();
}

#[tokio::test]
async fn a_replay_from_the_start_is_read_a_page_at_a_time() {
    use unilink_relay::REPLAY_PAGE;
    let (relay, stop) = relay().await;
    let (call, user) = (CallId::new(), UserId::new());
    for n in 0..1000 {
        relay.send(call, user, "peer", &frame(n), "").await.unwrap();
    }
    let mut mailbox = relay.open_after(call, user, Some(0)).await.unwrap();
    assert!(mailbox.held() <= REPLAY_PAGE, "{} frames read at once", mailbox.held());
    for n in 0..1000u64 {
        let got = next_within(&mut mailbox, Duration::from_secs(5)).await;
        assert_eq!(n_of(&got), n);
        assert!(
            mailbox.held() <= REPLAY_PAGE,
            "{} frames held after {n}",
            mailbox.held()
        );
    }
    // Then live frames, as before.
    relay.send(call, user, "peer", &frame(1000), "").await.unwrap();
    let got = next_within(&mut mailbox, Duration::from_secs(5)).await;
    assert_eq!(n_of(&got), 1000);
    stop.cancel();
}

#[tokio::test]
async fn a_long_gap_is_filled_a_page_at_a_time() {
    use unilink_relay::REPLAY_PAGE;
    let redis = redis().await;
    let stop = CancellationToken::new();
    let relay = SignalRelay::new(redis.clone(), stop.clone());
    let (call, user) = (CallId::new(), UserId::new());
    let mut mailbox = relay.open(call, user, 0).await.unwrap();
    let base = relay.send(call, user, "peer", &frame(0), "").await.unwrap();
    assert_eq!(mailbox.next().await.unwrap().unwrap().seq, base);
    // 600 frames reach the buffer with their publications lost (written as
    // the send script does, without the PUBLISH), then a live one.
    let mut texts = Vec::new();
    for seq in base + 1..=base + 600 {
        let text = stored(seq, (seq - base) as u32);
        texts.push(seq.to_string());
        texts.push(text);
    }
    redis
        .script(
            "redis.call('SET', KEYS[1], ARGV[#ARGV - 1]); return redis.call('ZADD', KEYS[2], unpack(ARGV))",
            vec![
                redis.key(&format!("relay:{call}:{user}:seq")),
                redis.key(&format!("relay:{call}:{user}:buf")),
            ],
            texts,
        )
        .await
        .unwrap();
    relay.send(call, user, "peer", &frame(601), "").await.unwrap();
    for n in 1..=601u64 {
        let got = next_within(&mut mailbox, Duration::from_secs(5)).await;
        assert_eq!((got.seq, n_of(&got)), (base + n, n));
        assert!(
            mailbox.held() <= REPLAY_PAGE + 1,
            "{} frames held after {n}",
            mailbox.held()
        );
    }
    stop.cancel();
}

#[tokio::test]
async fn before_the_call_is_accepted_only_a_few_client_frames_enter_a_mailbox() {
    use unilink_relay::{EARLY_FRAMES, FromClient, SendOutcome};
    let (relay, stop) = relay().await;
    let (call, user) = (CallId::new(), UserId::new());
    let early = |cseq: u64| FromClient {
        numbered: Some(("page", cseq)),
        early: true,
    };
    for cseq in 1..=EARLY_FRAMES {
        let outcome = relay
            .send_once(call, user, "caller", &frame(cseq as u32), "", early(cseq))
            .await
            .unwrap();
        assert!(matches!(outcome, SendOutcome::Relayed(_)), "{cseq}: {outcome:?}");
    }
    let next = EARLY_FRAMES + 1;
    let send = |from: FromClient<'static>| {
        let relay = relay.clone();
        async move {
            relay
                .send_once(call, user, "caller", &frame(next as u32), "", from)
                .await
                .unwrap()
        }
    };
    assert_eq!(send(early(next)).await, SendOutcome::TooEarly);
    // From another socket (another client session) of the same sender too.
    let other_page = FromClient {
        numbered: Some(("other page", 1)),
        early: true,
    };
    assert_eq!(send(other_page).await, SendOutcome::TooEarly);
    // A frame sent again is still acknowledged as relayed, and the refused
    // one was not recorded: once the call is accepted it goes through.
    let repeat = relay
        .send_once(call, user, "caller", &frame(1), "", early(1))
        .await
        .unwrap();
    assert_eq!(repeat, SendOutcome::Repeat);
    let accepted = FromClient {
        numbered: Some(("page", next)),
        early: false,
    };
    assert!(matches!(send(accepted).await, SendOutcome::Relayed(_)));
    // The service's own frames are never held back.
    relay.send(call, user, "system", &frame(0), "").await.unwrap();
    let mut mailbox = relay.open_after(call, user, Some(0)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..=EARLY_FRAMES + 1 {
        let frame = next_within(&mut mailbox, Duration::from_secs(5)).await;
        got.push(n_of(&frame));
    }
    let expected: Vec<u64> = (1..=next).chain([0]).collect();
    assert_eq!(got, expected);
    stop.cancel();
}

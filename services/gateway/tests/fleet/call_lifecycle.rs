//! How calls end without a hang-up (maximum duration, abandoned, account
//! closed), the peer-left notice, ICE servers and the admin view of sockets.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Gateway, Received, Socket};
use serde_json::{Value, json};
use unilink_test_support::eventually;

async fn online(gw: &Gateway, id: &str, token: &str) -> Socket {
    let mut socket = gw.socket(&format!("/calls/ws/{id}"), token).await;
    socket.send_text("ping").await;
    assert!(matches!(socket.next().await, Received::Text(t) if t == "pong"));
    socket
}

/// An accepted call between the two: its id.
async fn ongoing_call(gw: &Gateway, caller: &str, receiver_id: &str, receiver: &str) -> String {
    let (status, call) = gw
        .post_bearer("/calls/initiate", caller, json!({"receiver_id": receiver_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let id = call["id"].as_str().unwrap().to_owned();
    let (status, _) = gw
        .post_bearer(&format!("/calls/accept/{id}"), receiver, json!({}))
        .await;
    assert_eq!(status, 200);
    id
}

async fn call_status(fleet: &Fleet, id: &str) -> (String, Option<String>) {
    let row = fleet
        .db
        .client()
        .await
        .query_one(
            "SELECT status, end_reason FROM signaling.calls WHERE id = $1",
            &[&uuid::Uuid::parse_str(id).unwrap()],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn calls_end_at_the_maximum_duration_and_when_abandoned() {
    let fleet = Fleet::start_with(&[("CALL_DISCONNECT_GRACE", "5")]).await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let mut ada_presence = online(&gw, &ada_id, &ada).await;
    let _bob_presence = online(&gw, &bob_id, &bob).await;

    // Maximum duration: the call "started" 16 minutes ago (default limit 15).
    let long = ongoing_call(&gw, &ada, &bob_id, &bob).await;
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{long}"), &ada).await;
    fleet
        .db
        .client()
        .await
        .execute(
            "UPDATE signaling.calls SET started_at = now() - interval '16 minutes' WHERE id = $1",
            &[&uuid::Uuid::parse_str(&long).unwrap()],
        )
        .await
        .unwrap();
    let ended = ada_call.expect("call_ended").await;
    assert_eq!(ended["status"], "completed");
    assert!(ended["message"].as_str().unwrap().contains("maximum duration"));
    assert_eq!(ada_call.closed().await.0, 1000);
    // Its relay mailboxes now expire within minutes, not the hour an open call's keep.
    let redis = unilink_bus::Redis::connect(&unilink_config::RedisSettings::new(
        unilink_config::Secret::new(unilink_test_support::redis_url()),
        fleet.prefix.clone(),
    ))
    .await
    .unwrap();
    for user in [&ada_id, &bob_id] {
        let key = redis.key(&format!("relay:{long}:{user}:buf"));
        eventually("the ended call's mailbox to be retired", Duration::from_secs(5), || {
            let (redis, key) = (redis.clone(), key.clone());
            async move {
                let ttl = redis
                    .script("return redis.call('TTL', KEYS[1])", vec![key], vec![])
                    .await
                    .ok()?;
                let ttl: i64 = ttl.first()?.as_deref()?.parse().ok()?;
                (1..=120).contains(&ttl).then_some(())
            }
        })
        .await;
    }
    let pushed = ada_presence.expect("call_ended").await;
    assert_eq!(pushed["call_id"], long);
    assert_eq!(
        call_status(&fleet, &long).await,
        ("completed".into(), Some("max_duration".into()))
    );
    let (_, fetched) = gw.get_bearer(&format!("/calls/by-id/{long}"), &bob).await;
    assert!(fetched["duration_seconds"].as_i64().unwrap() >= 16 * 60, "{fetched}");

    // Abandoned: accepted, both sockets come and go, nobody for the grace period.
    let left = ongoing_call(&gw, &ada, &bob_id, &bob).await;
    let ada_call = gw.socket(&format!("/ws/webrtc/{left}"), &ada).await;
    let mut bob_call = gw.socket(&format!("/ws/webrtc/{left}"), &bob).await;
    // Ada leaves: after the notice delay Bob is told (and the call goes on).
    ada_call.close().await;
    let gone = bob_call.expect("user_disconnected").await;
    assert_eq!(gone["user_id"], ada_id);
    assert_eq!(call_status(&fleet, &left).await.0, "ongoing");
    bob_call.close().await;
    let db = fleet.db.client().await;
    let left_uuid = uuid::Uuid::parse_str(&left).unwrap();
    eventually("the abandoned call ends", Duration::from_secs(30), || {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT status, end_reason FROM signaling.calls WHERE id = $1",
                    &[&left_uuid],
                )
                .await
                .unwrap();
            (row.get::<_, String>(0) == "completed").then(|| row.get::<_, Option<String>>(1))
        }
    })
    .await
    .filter(|r| r == "abandoned")
    .expect("ended as abandoned");
}

#[tokio::test]
async fn a_deactivated_user_is_cut_off_mid_call() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (_, boss) = fleet.admin(&gw, "boss").await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let mut ada_presence = online(&gw, &ada_id, &ada).await;
    let _bob_presence = online(&gw, &bob_id, &bob).await;
    let call = ongoing_call(&gw, &ada, &bob_id, &bob).await;
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{call}"), &ada).await;
    let mut bob_call = gw.socket(&format!("/ws/webrtc/{call}"), &bob).await;
    ada_call.expect("connection_ready").await;

    // The admin view of sockets, cluster-wide.
    let (status, sockets) = gw.get_bearer("/ws/webrtc/active-connections", &boss).await;
    assert_eq!(status, 200, "{sockets}");
    assert_eq!(sockets["total_connections"], 2);
    assert_eq!(sockets["calls"][0]["call_id"], call);
    assert_eq!(sockets["calls"][0]["user_count"], 2);

    let (status, _) = gw
        .post_bearer(&format!("/admin/users/{ada_id}/deactivate"), &boss, json!({}))
        .await;
    assert_eq!(status, 200);
    for socket in [&mut ada_call, &mut bob_call] {
        let ended = socket.expect("call_ended").await;
        assert_eq!(ended["user_id"], Value::Null);
        assert_eq!(socket.closed().await.0, 1000);
    }
    assert_eq!(
        call_status(&fleet, &call).await,
        ("completed".into(), Some("account_closed".into()))
    );
    let (code, _) = ada_presence.closed().await;
    assert_eq!(code, 1008, "the deactivated user's presence socket is closed");
    // Her token no longer opens sockets.
    assert_eq!(
        gw.try_socket(&format!("/calls/ws/{ada_id}"), &ada).await.err(),
        Some(401)
    );
    // And she is offline for everyone.
    let (_, available) = gw.get_bearer("/calls/available", &bob).await;
    assert!(!available.as_array().unwrap().iter().any(|u| u["id"] == ada_id));
}

#[tokio::test]
async fn presence_follows_sockets_and_ice_servers_carry_turn_credentials() {
    let fleet = Fleet::start_with(&[
        ("TURN_URLS", "turn:turn.example.com:3478?transport=udp"),
        ("TURN_SECRET", "north"),
        ("TURN_TTL", "600"),
    ])
    .await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (_, bob) = fleet.user(&gw, "bob").await;

    let (status, ice) = gw.get_bearer("/calls/ice-servers", &ada).await;
    assert_eq!(status, 200, "{ice}");
    assert_eq!(ice["ttl"], 600);
    let turn = &ice["ice_servers"][1];
    assert_eq!(turn["urls"][0], "turn:turn.example.com:3478?transport=udp");
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, ada_id);
    let now = chrono::Utc::now().timestamp();
    assert!((expiry.parse::<i64>().unwrap() - (now + 600)).abs() <= 5);
    assert_eq!(turn["credential"].as_str().unwrap().len(), 28, "base64 of a SHA-1 HMAC");
    assert!(ice["ice_servers"][0]["username"].is_null(), "STUN needs no credentials");

    // Two devices: online until both leave.
    let available = |who: &str| {
        let (gw, token, who) = (&gw, bob.clone(), who.to_owned());
        async move {
            let (_, list) = gw.get_bearer("/calls/available", &token).await;
            list.as_array().unwrap().iter().any(|u| u["id"] == who)
        }
    };
    assert!(!available(&ada_id).await);
    let phone = online(&gw, &ada_id, &ada).await;
    let laptop = online(&gw, &ada_id, &ada).await;
    assert!(available(&ada_id).await);
    phone.close().await;
    // The gateway has finished with the phone's socket (its presence entry
    // is gone) before the question is asked.
    eventually("the phone's socket closed", Duration::from_secs(5), || async {
        let open =
            unilink_test_support::cluster::metric_sum(&gw.metrics().await, "websocket_connections{kind=\"presence\"}");
        (open == 1.0).then_some(())
    })
    .await;
    assert!(available(&ada_id).await, "still on the laptop");
    laptop.close().await;
    eventually("ada offline", Duration::from_secs(5), || async {
        (!available(&ada_id).await).then_some(())
    })
    .await;
}

/// A gateway renews the presence of all its sockets in batches: for 10,000
/// presence sockets one round is a handful of script calls (one per 500
/// sockets, pipelined), not 10,000 heartbeats. Counted on a Redis of the
/// test's own.
#[tokio::test]
async fn presence_of_ten_thousand_sockets_is_renewed_in_batches() {
    use unilink_test_support::faults::{PrivateRedis, command};
    const SOCKETS: usize = 10_000;
    let server = PrivateRedis::start().await;
    let redis = unilink_bus::Redis::connect(&unilink_config::RedisSettings::new(
        unilink_config::Secret::new(server.url()),
        "batches:".to_owned(),
    ))
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = unilink_relay::SignalRelay::connect(redis.clone(), stop.clone())
        .await
        .unwrap();
    let hub = unilink_gateway::ws::presence::PresenceHub::new(redis.clone(), relay);
    let users: Vec<unilink_domain::UserId> = (0..SOCKETS).map(|_| unilink_domain::UserId::new()).collect();
    let mut sessions = Vec::with_capacity(SOCKETS);
    for chunk in users.chunks(500) {
        let opening = chunk.iter().map(|u| hub.open(*u, "family".to_owned()));
        for session in futures_util::future::join_all(opening).await {
            sessions.push(session.unwrap());
        }
    }
    assert_eq!(hub.len(), SOCKETS);
    let score = |user: unilink_domain::UserId| {
        let port = server.port();
        async move {
            let reply = command(port, &["ZSCORE", "batches:presence:online", &user.to_string()])
                .await
                .unwrap();
            reply.lines().nth(1).unwrap().parse::<f64>().unwrap()
        }
    };
    let sample = [users[0], users[SOCKETS / 2], users[SOCKETS - 1]];
    let mut before = Vec::new();
    for u in sample {
        before.push(score(u).await);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The first round loads the script; the second is the steady state.
    assert_eq!(hub.renew().await, SOCKETS, "every socket renewed");
    command(server.port(), &["CONFIG", "RESETSTAT"]).await.unwrap();
    assert_eq!(hub.renew().await, SOCKETS, "every socket renewed");
    let stats = command(server.port(), &["INFO", "commandstats"]).await.unwrap();
    let calls: Vec<(String, u64)> = stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info" && name != "config|resetstat")
        .collect();
    // What clients sent (scripts); the writes inside the scripts are
    // counted by Redis too, and are the same three per socket as before.
    let sent: u64 = calls
        .iter()
        .filter(|(name, _)| name.starts_with("eval") || name.starts_with("script"))
        .map(|(_, n)| n)
        .sum();
    eprintln!("one renewal round of {SOCKETS} sockets: {sent} commands sent; in all {calls:?}");
    assert_eq!(
        sent,
        SOCKETS.div_ceil(unilink_presence::BEAT_BATCH) as u64,
        "one script call per batch: {calls:?}"
    );
    let writes: u64 = calls
        .iter()
        .filter(|(name, _)| ["hset", "pexpire", "zadd"].contains(&name.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(writes, 3 * SOCKETS as u64, "{calls:?}");
    for (u, old) in sample.into_iter().zip(before) {
        assert!(score(u).await > old, "{u} renewed");
    }
    // Closing the sockets takes them out of the rounds.
    for session in sessions.drain(..SOCKETS / 2) {
        drop(session);
    }
    assert_eq!(hub.len(), SOCKETS / 2);
    stop.cancel();
}

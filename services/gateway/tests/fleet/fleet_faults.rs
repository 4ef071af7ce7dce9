//! What the fleet survives, proved on real processes: two replicas of every
//! service behind nginx (see `cluster/mod.rs`), with PostgreSQL cut away,
//! Redis killed and restarted empty, replicas killed, drained and restarted,
//! and the SMTP server down. Each test is bounded in time (outages last
//! [`OUTAGE`]) and stops everything it started.
//!
//! Needs the service binaries (`cargo nextest run --workspace` builds them),
//! `redis-server` and nginx (scripts/test.sh installs both when missing).

use unilink_test_support::cluster;
use unilink_test_support::fleet as common;

use std::time::{Duration, Instant};

use cluster::{Cluster, Kind, ResumingClient, assert_all_live, call_in_progress, metric_sum};
use common::Gateway;
use serde_json::{Value, json};
use unilink_test_support::eventually;

/// How long a data store stays away (the 30 s).
const OUTAGE: Duration = Duration::from_secs(30);
/// The longest any request may take while a dependency is down: the gRPC
/// deadline (3 s here) plus the gateway's own work.
const FAIL_FAST: Duration = Duration::from_secs(5);
/// How long the fleet may take to notice a dependency came back.
const RECOVERY: Duration = Duration::from_secs(20);

/// One request and how long it took.
async fn timed(request: impl std::future::Future<Output = (u16, Value)>) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = request.await;
    (status, body, started.elapsed())
}

/// `/readyz` of a backend replica (200 ready, 503 not).
async fn readyz(cluster: &Cluster, kind: Kind) -> Vec<u16> {
    let mut statuses = Vec::new();
    for (k, replica) in &cluster.replicas {
        if *k != kind || !replica.is_running() {
            continue;
        }
        let status = reqwest::Client::new()
            .get(format!("http://{}/readyz", replica.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        statuses.push(status);
    }
    statuses
}

async fn health(gw: &Gateway) -> (u16, Value) {
    gw.get("/health").await
}

/// `PUT /users/me` with a new bio.
async fn put_bio(gw: &Gateway, token: &str, bio: &str) -> (u16, Value) {
    gw.send(
        gw.http
            .put(gw.url("/users/me"))
            .bearer_auth(token)
            .json(&json!({ "bio": bio })),
    )
    .await
}

#[tokio::test]
async fn a_postgres_outage_fails_fast_with_503_and_heals_itself_losing_no_acknowledged_write() {
    let cluster = Cluster::start(&[]).await;
    let gw = &cluster.client;
    let (_, ada) = cluster.user("ada").await;
    let (bob_id, bob) = cluster.user("bob").await;
    let (status, body) = put_bio(gw, &ada, "before").await;
    assert_eq!(status, 200, "{body}");

    cluster.pg.cut().await;
    let cut_at = Instant::now();
    // Readiness says so within a probe round, through the balancer.
    eventually("/health to report the database down", RECOVERY, || async {
        let (status, body) = health(gw).await;
        (status == 503 && body["status"] == "degraded" && body["database"] == "disconnected").then_some(())
    })
    .await;
    eventually("every backend to be not ready", RECOVERY, || async {
        for kind in [Kind::Auth, Kind::Profile, Kind::Signaling, Kind::Notification] {
            if readyz(&cluster, kind).await.iter().any(|s| *s != 503) {
                return None;
            }
        }
        Some(())
    })
    .await;

    // Through the outage: every kind of request fails fast with 503 and a
    // clear detail (or succeeds where no database is needed) — never a 500,
    // never a hang; liveness holds.
    let mut acknowledged = Vec::new();
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    let mut round = 0;
    while cut_at.elapsed() < OUTAGE {
        round += 1;
        let bio = format!("during {round}");
        let requests: Vec<(&str, (u16, Value, Duration))> = vec![
            ("GET /users/me", timed(gw.get_bearer("/users/me", &ada)).await),
            ("PUT /users/me", timed(put_bio(gw, &ada, &bio)).await),
            (
                "GET /users/{id}",
                timed(gw.get_bearer(&format!("/users/{bob_id}"), &ada)).await,
            ),
            ("GET /calls/history", timed(gw.get_bearer("/calls/history", &bob)).await),
            (
                "POST /auth/login",
                timed(gw.post(
                    "/auth/login",
                    json!({"email": "ada@kiit.ac.in", "password": "correct horse battery"}),
                ))
                .await,
            ),
            (
                "POST /auth/register",
                timed(gw.post(
                    "/auth/register",
                    json!({"email": format!("new{round}@kiit.ac.in"), "username": format!("new{round}"),
                           "full_name": "New", "password": "correct horse battery"}),
                ))
                .await,
            ),
        ];
        for (what, (status, body, took)) in requests {
            assert!(took <= FAIL_FAST, "{what} took {took:?} during the outage");
            assert!(status != 500, "{what} answered 500 during the outage: {body}");
            if status == 503 {
                let detail = body["detail"].as_str().unwrap_or_default();
                assert!(!detail.is_empty(), "{what}: a 503 without a detail: {body}");
            } else if what == "PUT /users/me" && status == 200 {
                acknowledged.push(bio.clone());
            }
            *answers.entry(format!("{what} {status}")).or_default() += 1;
        }
        assert_all_live(&cluster).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("answers during the {OUTAGE:?} outage: {answers:?}");
    assert!(
        answers.get("GET /users/me 503").copied().unwrap_or(0) > 0,
        "requests that need the database fail with 503: {answers:?}"
    );

    cluster.pg.restore().await;
    let restored_at = Instant::now();
    eventually("/health to be healthy again", RECOVERY, || async {
        (health(gw).await.0 == 200).then_some(())
    })
    .await;
    let healed = restored_at.elapsed();
    // Every acknowledged write is there; new ones work; sign-in works again.
    let (status, me) = gw.get_bearer("/users/me", &ada).await;
    assert_eq!(status, 200, "{me}");
    let expected = acknowledged.last().map_or("before", String::as_str);
    assert_eq!(me["bio"], expected, "the last acknowledged write survives");
    let (status, body) = put_bio(gw, &ada, "after").await;
    assert_eq!(status, 200, "{body}");
    let (_, carol) = cluster.user("carol").await;
    assert_eq!(gw.get_bearer("/users/me", &carol).await.0, 200);
    eprintln!("healthy again {healed:?} after PostgreSQL came back");
}

#[tokio::test]
async fn a_redis_outage_and_empty_restart_heal_by_themselves_and_lose_no_event() {
    let mut cluster = Cluster::start(&[("SIGNALING_FRAME_RATE", "1000")]).await;
    let (ada_id, ada) = cluster.user("ada").await;
    let (bob_id, bob) = cluster.user("bob").await;
    let (call_id, mut bob_presence, mut ada_call, mut bob_call) =
        call_in_progress(&cluster, (&ada_id, &ada), (&bob_id, &bob)).await;

    // An event that reaches the stream but no consumer before Redis dies:
    // both notification replicas are down while Dan signs up.
    cluster.replica(Kind::Notification, 1).kill();
    cluster.replica(Kind::Notification, 2).kill();
    let (status, body) = cluster
        .client
        .post(
            "/auth/register",
            json!({"email": "dan@kiit.ac.in", "username": "dan", "full_name": "Dan", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("Dan's event on the stream", RECOVERY, || async {
        let published: i64 = cluster
            .db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM auth.outbox WHERE published_at IS NOT NULL AND event_type = 'user.registered'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (published >= 3).then_some(())
    })
    .await;

    cluster.redis.as_mut().expect("a single redis").kill();
    let killed_at = Instant::now();
    let gw = &Gateway::at(cluster.lb.base());
    eventually("/health to report Redis down", RECOVERY, || async {
        let (status, body) = health(gw).await;
        (status == 503 && body["redis"] == "disconnected").then_some(())
    })
    .await;
    // Requests keep answering (or fail fast with a reason), the rate limiter
    // decides locally, liveness holds; Carol signs up in the meantime.
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    let mut carol_registered = false;
    while killed_at.elapsed() < OUTAGE {
        let requests: Vec<(&str, (u16, Value, Duration))> = vec![
            ("GET /users/me", timed(gw.get_bearer("/users/me", &ada)).await),
            ("GET /calls/active", timed(gw.get_bearer("/calls/active", &ada)).await),
            (
                "GET /calls/available",
                timed(gw.get_bearer("/calls/available", &ada)).await,
            ),
        ];
        for (what, (status, body, took)) in requests {
            assert!(took <= FAIL_FAST, "{what} took {took:?} during the outage");
            assert!(status != 500, "{what} answered 500 during the outage: {body}");
            if status >= 400 {
                assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {body}");
            }
            *answers.entry(format!("{what} {status}")).or_default() += 1;
        }
        if !carol_registered {
            let (status, body, took) = timed(gw.post(
                "/auth/register",
                json!({"email": "carol@kiit.ac.in", "username": "carol", "full_name": "Carol", "password": "correct horse battery"}),
            ))
            .await;
            assert!(
                took <= FAIL_FAST && status != 500,
                "register: {status} {body} in {took:?}"
            );
            carol_registered = status == 200;
        }
        assert_all_live(&cluster).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("answers during the {OUTAGE:?} Redis outage: {answers:?}");
    // Signing up needs PostgreSQL only (the outbox keeps the event).
    assert!(
        carol_registered,
        "Carol could not sign up while Redis was down: {answers:?}"
    );
    let fallback: f64 = metric_sum(&cluster.direct(1).metrics().await, "rate_limit_fallback_total")
        + metric_sum(&cluster.direct(2).metrics().await, "rate_limit_fallback_total");
    assert!(fallback > 0.0, "the rate limiter fell back to local counting");

    // Redis comes back with nothing in it.
    cluster.redis.as_mut().expect("a single redis").restart().await;
    let restarted_at = Instant::now();
    // The relay is subscribed again: Ada's frames reach Bob on the same sockets.
    let mut n = 0;
    let relayed_after = loop {
        n += 1;
        ada_call
            .send_json(json!({"type": "ice_candidate", "candidate": {"n": n}}))
            .await;
        if let Some(common::Received::Text(text)) = bob_call.next_within(Duration::from_millis(100)).await
            && text.contains("ice_candidate")
        {
            break restarted_at.elapsed();
        }
        assert!(
            restarted_at.elapsed() < RECOVERY,
            "no frame relayed {RECOVERY:?} after Redis came back"
        );
    };
    eprintln!("relay flowing {relayed_after:?} after Redis came back");
    assert!(
        relayed_after <= Duration::from_secs(2),
        "relay back after {relayed_after:?}"
    );
    // (The notification replicas are still down: /health stays degraded for them.)
    eventually("/health to see Redis again", RECOVERY, || async {
        (health(gw).await.1["redis"] == "connected").then_some(())
    })
    .await;
    // Presence is rebuilt by the sockets' heartbeats: Bob is online again.
    eventually("Bob online again", RECOVERY, || async {
        let (status, bob_seen) = gw.get_bearer(&format!("/users/{bob_id}"), &ada).await;
        (status == 200 && bob_seen["is_online"] == true).then_some(())
    })
    .await;
    eprintln!("Bob online again {:?} after Redis came back", restarted_at.elapsed());
    bob_presence.send_text("ping").await;
    bob_presence.expect_text("pong").await;
    // The call is still ongoing, not ended for lack of live sockets.
    let (status, call) = gw.get_bearer(&format!("/calls/by-id/{call_id}"), &ada).await;
    assert_eq!((status, call["status"].as_str()), (200, Some("ongoing")), "{call}");

    // No event is lost: Carol's (written while Redis was down) and Dan's
    // (on the stream Redis lost) mails arrive once the notification
    // replicas are back, each exactly once.
    cluster.replica(Kind::Notification, 1).restart().await;
    cluster.replica(Kind::Notification, 2).restart().await;
    let expected = ["dan@kiit.ac.in", "carol@kiit.ac.in"];
    eventually("/health to be healthy again", RECOVERY, || async {
        (health(gw).await.0 == 200).then_some(())
    })
    .await;
    let waiting = Instant::now();
    while !expected.iter().all(|a| !cluster.smtp.messages_to(a).is_empty()) {
        if waiting.elapsed() > Duration::from_secs(60) {
            let outbox: Vec<String> = cluster
                .db
                .client()
                .await
                .query(
                    "SELECT seq, event_type, published_at IS NOT NULL FROM auth.outbox ORDER BY seq",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{} {} published={}",
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1),
                        r.get::<_, bool>(2)
                    )
                })
                .collect();
            for (kind, replica) in &cluster.replicas {
                if matches!(kind, Kind::Auth | Kind::Notification) {
                    eprintln!("--- {} log:\n{}", replica.name, replica.logs());
                }
            }
            panic!(
                "mails to {expected:?} missing 60 s after the notification replicas came back; auth outbox: {outbox:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "mails delivered {:?} after the notification replicas came back",
        waiting.elapsed()
    );
    // Every sign-up event read and acknowledged: none can be mailed again.
    cluster
        .wait_settled("auth", "notification", Duration::from_secs(20))
        .await;
    for address in &expected {
        assert_eq!(
            cluster.smtp.messages_to(address).len(),
            1,
            "exactly one mail to {address}"
        );
    }
    assert_eq!(
        cluster.smtp.messages_to("ada@kiit.ac.in").len(),
        2,
        "no old mail sent again"
    );
}

/// Call sockets open on each gateway (its `websocket_connections{kind="call"}`).
async fn call_sockets(cluster: &Cluster, n: usize) -> f64 {
    metric_sum(
        &cluster.direct(n).metrics().await,
        "websocket_connections{kind=\"call\"}",
    )
}

#[tokio::test]
async fn a_gateway_killed_mid_call_loses_no_frame_and_its_users_fall_offline_by_themselves() {
    let mut cluster = Cluster::start(&[("SIGNALING_FRAME_RATE", "1000"), ("CALL_DISCONNECT_GRACE", "5")]).await;
    let lb = Gateway::at(cluster.lb.base());
    let (ada_id, ada) = cluster.user("ada").await;
    let (bob_id, bob) = cluster.user("bob").await;
    let (carol_id, carol) = cluster.user("carol").await;
    let (_, dan) = cluster.user("dan").await;
    let (erin_id, erin) = cluster.user("erin").await;
    let (call_id, _bob_presence, ada_call, bob_call) =
        call_in_progress(&cluster, (&ada_id, &ada), (&bob_id, &bob)).await;
    // Which gateway holds Ada's call socket: that one dies. Bob must be on
    // the other one (the balancer may have put them together; if so, Bob
    // moves over directly).
    drop(ada_call);
    // Counted once the gateway has let go of the old socket: only Bob's is open.
    eventually("Ada's old call socket to be gone", RECOVERY, || async {
        (call_sockets(&cluster, 1).await + call_sockets(&cluster, 2).await == 1.0).then_some(())
    })
    .await;
    let before = [call_sockets(&cluster, 1).await, call_sockets(&cluster, 2).await];
    let path = format!("/ws/webrtc/{call_id}");
    let ada_socket = lb.socket(&path, &ada).await;
    // The gauge moves when the gateway's bridge task starts: wait for it.
    let doomed = eventually("Ada's socket to be counted", RECOVERY, || async {
        let after = [call_sockets(&cluster, 1).await, call_sockets(&cluster, 2).await];
        (after[0] > before[0])
            .then_some(1)
            .or((after[1] > before[1]).then_some(2))
    })
    .await;
    let survivor = 3 - doomed;
    drop(bob_call);
    let mut bob_call = cluster.direct(survivor).socket(&path, &bob).await;
    let mut ada = ResumingClient::new(path.clone(), ada.clone(), ada_socket);
    // Carol is online through the doomed gateway only; Dan and Erin talk on
    // it and never come back.
    let mut carol_presence = cluster
        .direct(doomed)
        .socket(&format!("/calls/ws/{carol_id}"), &carol)
        .await;
    carol_presence.send_text("ping").await;
    carol_presence.expect_text("pong").await;
    let doomed_gw = cluster.direct(doomed);
    let mut erin_presence = doomed_gw.socket(&format!("/calls/ws/{erin_id}"), &erin).await;
    let (status, call) = doomed_gw
        .post_bearer("/calls/initiate", &dan, json!({"receiver_id": erin_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let stranded = call["id"].as_str().unwrap().to_owned();
    erin_presence.expect("incoming_call").await;
    let (status, _) = doomed_gw
        .post_bearer(&format!("/calls/accept/{stranded}"), &erin, json!({}))
        .await;
    assert_eq!(status, 200);
    let _dan_call = doomed_gw.socket(&format!("/ws/webrtc/{stranded}"), &dan).await;
    let _erin_call = doomed_gw.socket(&format!("/ws/webrtc/{stranded}"), &erin).await;

    // Bob sends 300 frames at 200/s; Ada's gateway is killed after the 50th.
    let sender = tokio::spawn(async move {
        for n in 0..300 {
            bob_call
                .send_json(json!({"type": "ice_candidate", "candidate": {"n": n}}))
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bob_call
    });
    let mut got = Vec::new();
    while got.len() < 300 {
        let frame = ada.next(&lb).await;
        if frame["type"] == "ice_candidate" {
            got.push(frame["candidate"]["n"].as_u64().unwrap());
            if got.len() == 50 {
                cluster.replica(Kind::Gateway, doomed).kill();
            }
        }
    }
    assert_eq!(got, (0..300).collect::<Vec<u64>>(), "every frame once, in order");
    assert_eq!(ada.reconnects, 1, "one reconnect, through the balancer");
    let mut bob_call = sender.await.unwrap();
    // Ada was back well within the resume window: Bob was not told she left.
    while let Some(common::Received::Text(text)) = bob_call.next_within(Duration::from_millis(300)).await {
        assert!(!text.contains("user_disconnected"), "{text}");
    }

    // Carol, whose only socket died with the gateway, falls offline by herself.
    let killed_at = Instant::now();
    eventually("Carol offline", Duration::from_secs(35), || async {
        let (status, seen) = lb.get_bearer(&format!("/users/{carol_id}"), &bob).await;
        (status == 200 && seen["is_online"] == false).then_some(())
    })
    .await;
    eprintln!("Carol offline {:?} after her gateway died", killed_at.elapsed());
    // The call whose both sockets died ends after the disconnect grace.
    eventually("the stranded call to end", Duration::from_secs(30), || async {
        let (status, call) = lb.get_bearer(&format!("/calls/by-id/{stranded}"), &dan).await;
        (status == 200 && call["status"] == "completed").then_some(())
    })
    .await;
    eprintln!(
        "stranded call completed {:?} after its gateway died",
        killed_at.elapsed()
    );
    // The surviving path keeps working; the dead gateway is out of rotation.
    for _ in 0..10 {
        assert_eq!(lb.get_bearer("/users/me", &dan).await.0, 200);
    }
}

#[tokio::test]
async fn a_draining_gateway_closes_a_thousand_sockets_with_1012_and_they_land_on_the_other() {
    const SOCKETS: usize = 1000;
    let mut cluster = Cluster::start(&[("MAX_SOCKETS_PER_USER", "2000"), ("SHUTDOWN_GRACE_SECONDS", "10")]).await;
    let lb = Gateway::at(cluster.lb.base());
    let (ada_id, ada) = cluster.user("ada").await;
    let first = cluster.direct(1);
    let path = format!("/calls/ws/{ada_id}");
    let mut sockets = Vec::with_capacity(SOCKETS);
    let opened = Instant::now();
    for batch in 0..SOCKETS / 50 {
        let opening = (0..50).map(|_| first.socket(&path, &ada));
        sockets.extend(futures_util::future::join_all(opening).await);
        assert_eq!(sockets.len(), (batch + 1) * 50);
    }
    eprintln!("{SOCKETS} presence sockets open on gateway 1 in {:?}", opened.elapsed());

    // SIGTERM: every socket is told to reconnect (1012) and the process exits
    // within its grace.
    let draining = tokio::spawn(async move {
        let took = cluster
            .replica(Kind::Gateway, 1)
            .terminate(Duration::from_secs(15))
            .await;
        (cluster, took)
    });
    let closes = futures_util::future::join_all(sockets.iter_mut().map(|s| async {
        let started = Instant::now();
        (s.closed().await, started.elapsed())
    }))
    .await;
    let (cluster, took) = draining.await.unwrap();
    let slowest = closes.iter().map(|(_, t)| *t).max().unwrap();
    for ((code, reason), _) in &closes {
        assert_eq!(*code, 1012, "{reason}");
    }
    eprintln!("{SOCKETS} sockets closed with 1012 within {slowest:?}; the gateway exited after {took:?}");
    assert!(took <= Duration::from_secs(10), "exit within the grace: {took:?}");
    // Told to reconnect, Ada has not yet: she stays online meanwhile (her
    // presence would expire with its TTL if she did not come back).
    let (status, me) = lb.get_bearer("/users/me", &ada).await;
    assert_eq!((status, &me["is_online"]), (200, &json!(true)), "{me}");

    // Each client reconnects through the balancer and lands on gateway 2.
    let reopened = Instant::now();
    let mut again = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS / 50 {
        let opening = (0..50).map(|_| lb.socket(&path, &ada));
        again.extend(futures_util::future::join_all(opening).await);
    }
    eprintln!(
        "{SOCKETS} sockets reopened through the balancer in {:?}",
        reopened.elapsed()
    );
    let on_second = metric_sum(
        &cluster.direct(2).metrics().await,
        "websocket_connections{kind=\"presence\"}",
    );
    assert_eq!(on_second as usize, SOCKETS, "all on the surviving gateway");
    let socket = again.last_mut().unwrap();
    socket.send_text("ping").await;
    socket.expect_text("pong").await;
}

#[tokio::test]
async fn sign_ups_while_the_smtp_server_and_a_notification_replica_are_down_get_every_mail_once() {
    const USERS: usize = 12;
    // A dead consumer's entries are taken over after 3 s idle, and a failed
    // mail is tried again within 2 s (30 s each in production).
    let mut cluster = Cluster::start(&[
        ("EVENTS_RECLAIM_IDLE_SECONDS", "3"),
        ("EVENTS_MAX_BACKOFF_SECONDS", "2"),
    ])
    .await;
    let lb = Gateway::at(cluster.lb.base());
    cluster.smtp.stop().await;
    let register = |n: usize| {
        let lb = &lb;
        async move {
            let (status, body) = lb
                .post(
                    "/auth/register",
                    json!({"email": format!("user{n}@kiit.ac.in"), "username": format!("user{n}"),
                           "full_name": "User", "password": "correct horse battery"}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    futures_util::future::join_all((0..USERS / 2).map(register)).await;
    // One notification replica dies with mails in its hands; the other
    // replica takes them over.
    cluster.replica(Kind::Notification, 1).kill();
    futures_util::future::join_all((USERS / 2..USERS).map(register)).await;
    // The surviving replica has tried the mails and failed: they wait.
    eventually("a failed mail", Duration::from_secs(20), || {
        let replica = cluster.replica_ref(Kind::Notification, 2);
        async move { (metric_sum(&replica.metrics().await, "emails_failed_total") > 0.0).then_some(()) }
    })
    .await;
    assert!(cluster.smtp.messages().is_empty());

    cluster.smtp.restart().await;
    let back = Instant::now();
    // The dead replica's unacknowledged mails are taken over once idle for
    // 3 s; retries back off up to 2 s.
    let smtp = &cluster.smtp;
    eventually("every verification mail", Duration::from_secs(30), || async move {
        (0..USERS)
            .all(|n| !smtp.messages_to(&format!("user{n}@kiit.ac.in")).is_empty())
            .then_some(())
    })
    .await;
    eprintln!(
        "{USERS} mails delivered {:?} after the SMTP server came back",
        back.elapsed()
    );
    cluster.replica(Kind::Notification, 1).restart().await;
    // Every sign-up event read and acknowledged: none can be mailed again.
    cluster
        .wait_settled("auth", "notification", Duration::from_secs(20))
        .await;
    for n in 0..USERS {
        let mails = cluster.smtp.messages_to(&format!("user{n}@kiit.ac.in"));
        assert_eq!(mails.len(), 1, "exactly one verification mail to user{n}");
        assert!(mails[0].token_after("verify?token=").is_some());
    }
}

/// The web client's retry policy (services/gateway/web/api.js, app.js): a
/// request the server asks to repeat (502/503/504) or that got no answer is
/// tried again after 250 ms, 500 ms, 1 s and 2 s. Returns the final answer
/// and how many attempts it took.
async fn with_retry(
    http: &reqwest::Client,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) -> (u16, Value, usize) {
    let waits = [250, 500, 1000, 2000];
    let mut attempt = 0;
    loop {
        let (status, body) = match request(http).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        };
        if ![0, 502, 503, 504].contains(&status) || attempt == waits.len() {
            return (status, body, attempt + 1);
        }
        tokio::time::sleep(Duration::from_millis(waits[attempt])).await;
        attempt += 1;
    }
}

/// What the simulated users did and saw.
#[derive(Default, Debug)]
struct Tally {
    requests: usize,
    retried: usize,
    failed: Vec<String>,
    logins: usize,
    calls: usize,
    frames_sent: usize,
    frames_received: usize,
    socket_reconnects: usize,
    frames_resent: usize,
    rings_missed: usize,
    offline_answers: usize,
}

/// What one side of a call sent and received.
struct Conversation {
    client: ResumingClient,
    sent: u64,
    received: u64,
}

/// One side of a call: sends `frames` numbered frames, one every `every`
/// (`Duration::ZERO`: all at once), and reads until it has every one of the
/// other side's, once and in order, and all its own are acknowledged
/// (within 30 s).
async fn converse(
    mut me: ResumingClient,
    lb: &Gateway,
    (mine, theirs): (&str, &str),
    frames: u64,
    every: Duration,
) -> Conversation {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut sent, mut expected) = (0, 0);
    let mut next_send = Instant::now();
    while expected < frames || sent < frames || !me.unacked.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{mine} on {}: {expected} of {frames} frames, {} unacknowledged, {} reconnects",
            me.path,
            me.unacked.len(),
            me.reconnects
        );
        if sent < frames && Instant::now() >= next_send {
            me.send(json!({"type": "ice_candidate", "candidate": {"n": sent, "from": mine}}))
                .await;
            sent += 1;
            next_send += every;
            continue;
        }
        let wait = if sent < frames { every } else { Duration::from_secs(1) };
        let Some(frame) = me.poll_for(lb, wait).await else {
            continue;
        };
        if frame["type"] != "ice_candidate" {
            continue;
        }
        assert_eq!(frame["candidate"]["from"], theirs);
        assert_eq!(
            frame["candidate"]["n"], expected,
            "{mine}: frame lost, repeated or out of order: {frame}"
        );
        expected += 1;
    }
    Conversation {
        client: me,
        sent,
        received: expected,
    }
}

type Shared = std::sync::Arc<std::sync::Mutex<Tally>>;

struct SimUser {
    id: String,
    email: String,
    token: String,
}

/// A presence socket through the balancer that answered a ping (a socket
/// that a draining replica closes meanwhile is opened again).
async fn online(lb: &Gateway, user: &SimUser) -> common::Socket {
    eventually("a presence socket", Duration::from_secs(15), || {
        let (path, token) = (format!("/calls/ws/{}", user.id), user.token.clone());
        async move {
            let mut socket = lb.try_socket(&path, &token).await.ok()?;
            if !socket.try_send_text("ping").await {
                return None;
            }
            match socket.next_within(Duration::from_secs(2)).await? {
                common::Received::Text(t) if t == "pong" => Some(socket),
                _ => None,
            }
        }
    })
    .await
}

/// One request with the client's retry policy, tallied; `ok` lists the
/// statuses that count as success.
async fn act(
    tally: &Shared,
    http: &reqwest::Client,
    what: &str,
    ok: &[u16],
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let (status, body, attempts) = with_retry(http, request).await;
    let mut t = tally.lock().unwrap();
    t.requests += 1;
    t.retried += usize::from(attempts > 1);
    if !ok.contains(&status) {
        t.failed.push(format!("{what}: {status} {body}"));
    }
    (status, body)
}

/// Frames each side of a simulated call sends.
const FRAMES_PER_CALL: u64 = 20;

/// A pair of users calling each other in rounds until `stop`: the caller
/// signs in again (password + emailed code), calls, both exchange frames on
/// their call sockets (resuming through the balancer when one breaks), and
/// the caller hangs up.
#[allow(clippy::too_many_arguments)]
async fn pair_loop(
    base: String,
    smtp: std::sync::Arc<unilink_test_support::smtp::SmtpSink>,
    caller: SimUser,
    callee: SimUser,
    tally: Shared,
    stop: tokio_util::sync::CancellationToken,
) -> (String, usize) {
    const FRAMES: u64 = FRAMES_PER_CALL;
    let lb = Gateway::at(base.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |path: &str| format!("{base}{path}");
    let mut presence: Option<common::Socket> = None;
    let mut round = 0;
    let mut logins = 0;
    while !stop.is_cancelled() {
        round += 1;
        // Sign in again: one code mail per login.
        let (status, _) = act(&tally, &http, "login", &[202], |h| {
            h.post(url("/auth/login"))
                .json(&json!({"email": caller.email, "password": "correct horse battery"}))
        })
        .await;
        if status != 202 {
            // `act` recorded the failure (the test fails on it); this pair
            // stops rather than count mails for a login that did not happen.
            break;
        }
        let code = eventually("the login code", Duration::from_secs(60), || {
            let smtp = smtp.clone();
            let email = caller.email.clone();
            async move {
                let mails = smtp.messages_to(&email);
                // The verification link, the first login's code, then one
                // code per login here.
                (mails.len() > round + 1).then(|| mails[mails.len() - 1].digits(6).expect("a code"))
            }
        })
        .await;
        act(&tally, &http, "verify-otp", &[200], |h| {
            h.post(url("/auth/login/verify-otp"))
                .json(&json!({"email": caller.email, "otp": code}))
        })
        .await;
        tally.lock().unwrap().logins += 1;
        logins += 1;
        // The callee is online (its presence socket reconnects when it breaks).
        // Like the web client, the callee notices a closed presence socket
        // (a draining replica) and opens another at once.
        let mut socket = match presence.take() {
            Some(mut socket) => {
                let mut open = true;
                while let Some(received) = socket.next_within(Duration::from_millis(1)).await {
                    if let common::Received::Closed(..) = received {
                        open = false;
                        break;
                    }
                }
                if open { socket } else { online(&lb, &callee).await }
            }
            None => online(&lb, &callee).await,
        };
        // Call; a 409 on a retry means the first attempt went through.
        let (status, call) = act(&tally, &http, "initiate", &[200, 409, 400], |h| {
            h.post(url("/calls/initiate"))
                .bearer_auth(&caller.token)
                .json(&json!({"receiver_id": callee.id}))
        })
        .await;
        if status == 400 {
            // Counted, and checked at the end: with the presence handover a
            // drained user stays online, so this must not happen.
            assert_eq!(call["detail"], "user is offline", "{call}");
            tally.lock().unwrap().offline_answers += 1;
            presence = None;
            continue;
        }
        let call_id = if status == 200 {
            call["id"].as_str().unwrap().to_owned()
        } else {
            let (_, pending) = act(&tally, &http, "pending", &[200], |h| {
                h.get(url("/calls/pending")).bearer_auth(&callee.token)
            })
            .await;
            match pending["id"].as_str() {
                Some(id) => id.to_owned(),
                None => continue,
            }
        };
        // The ring, or (if the presence socket was moving) the pending call.
        let mut rung = false;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match socket.next_within(Duration::from_millis(200)).await {
                Some(common::Received::Text(t)) if t.contains("incoming_call") && t.contains(&call_id) => {
                    rung = true;
                    break;
                }
                Some(common::Received::Closed(..)) => break,
                _ => {}
            }
        }
        if !rung {
            tally.lock().unwrap().rings_missed += 1;
            socket = online(&lb, &callee).await;
        }
        presence = Some(socket);
        act(&tally, &http, "accept", &[200, 409], |h| {
            h.post(url(&format!("/calls/accept/{call_id}")))
                .bearer_auth(&callee.token)
        })
        .await;
        // Both sockets; each side sends FRAMES and must get the other's all,
        // once, in order.
        let path = format!("/ws/webrtc/{call_id}");
        let open = |token: String| {
            let (lb, path) = (&lb, path.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                let socket = loop {
                    match lb.try_socket(&path, &token).await {
                        Ok(socket) => break socket,
                        Err(status) => assert!(
                            Instant::now() < deadline,
                            "call socket {path} refused with {status} for 10 s"
                        ),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                ResumingClient::new(path, token, socket)
            }
        };
        let (a, b) = tokio::join!(open(caller.token.clone()), open(callee.token.clone()));
        let (a, b) = tokio::join!(
            converse(a, &lb, ("a", "b"), FRAMES, Duration::ZERO),
            converse(b, &lb, ("b", "a"), FRAMES, Duration::ZERO)
        );
        {
            let mut t = tally.lock().unwrap();
            t.frames_sent += usize::try_from(a.sent + b.sent).unwrap();
            t.frames_received += usize::try_from(a.received + b.received).unwrap();
            t.socket_reconnects += a.client.reconnects + b.client.reconnects;
            t.frames_resent += a.client.resent + b.client.resent;
            t.calls += 1;
        }
        // Hang up; on a retry, "not ongoing any more" is the success.
        act(&tally, &http, "end", &[200, 409], |h| {
            h.post(url(&format!("/calls/end/{call_id}"))).bearer_auth(&caller.token)
        })
        .await;
    }
    (caller.email, logins)
}

#[tokio::test]
async fn a_rolling_restart_of_every_service_under_50_users_fails_no_request_and_loses_nothing() {
    const PAIRS: usize = 25;
    let mut cluster = Cluster::start(&[("SIGNALING_FRAME_RATE", "1000"), ("SHUTDOWN_GRACE_SECONDS", "5")]).await;
    let base = cluster.lb.base();
    // 50 users, signed up through the balancer ten at a time.
    let mut users = Vec::new();
    for batch in 0..(2 * PAIRS) / 10 {
        let made = futures_util::future::join_all((0..10).map(|i| {
            let cluster = &cluster;
            async move {
                let name = format!("user{}", batch * 10 + i);
                let (id, token) = cluster.user(&name).await;
                SimUser {
                    id,
                    email: format!("{name}@kiit.ac.in"),
                    token,
                }
            }
        }))
        .await;
        users.extend(made);
    }
    let smtp = cluster.smtp.clone();
    let tally = Shared::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    while users.len() >= 2 {
        let callee = users.pop().unwrap();
        let caller = users.pop().unwrap();
        workers.push(tokio::spawn(pair_loop(
            base.clone(),
            smtp.clone(),
            caller,
            callee,
            tally.clone(),
            stop.clone(),
        )));
    }
    // Every pair is calling before the first replica goes.
    let calls_done = || tally.lock().unwrap().calls;
    eventually("a call of every pair", Duration::from_secs(30), || async {
        (calls_done() >= PAIRS).then_some(())
    })
    .await;

    // Every service, one replica at a time: SIGTERM, wait for the exit,
    // start it again on its ports, wait until it serves.
    let rolling = Instant::now();
    for kind in [
        Kind::Auth,
        Kind::Profile,
        Kind::Notification,
        Kind::Signaling,
        Kind::Gateway,
    ] {
        for n in 1..=2 {
            // A gateway leaves the balancer before its SIGTERM, as a pod
            // leaves its Service's endpoints (readiness, preStop).
            let http = cluster.replica(kind, n).http;
            if kind == Kind::Gateway {
                cluster.lb.set_down(Some(http)).await;
            }
            let replica = cluster.replica(kind, n);
            let took = replica.terminate(Duration::from_secs(15)).await;
            replica.restart().await;
            eprintln!("{} restarted (stopped in {took:?})", replica.name);
            if kind == Kind::Gateway {
                cluster.lb.set_down(None).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let rolled = rolling.elapsed();
    // The restarted fleet carries calls too.
    let after_rolling = calls_done();
    eventually("calls after the restart", Duration::from_secs(30), || async {
        (calls_done() >= after_rolling + PAIRS).then_some(())
    })
    .await;
    stop.cancel();
    let mut logins = std::collections::HashMap::new();
    for worker in workers {
        let (email, n) = tokio::time::timeout(Duration::from_secs(90), worker)
            .await
            .expect("a simulated user finishes its round")
            .expect("a simulated user saw a lost or repeated frame");
        logins.insert(email, n);
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "rolling restart of 10 replicas in {rolled:?} under {} users: {t:?}",
        2 * PAIRS
    );
    if !t.failed.is_empty() {
        // What the replicas said about it.
        for (_, replica) in &cluster.replicas {
            for line in replica.logs().lines().filter(|l| l.contains("\"ERROR\"")) {
                eprintln!("{}: {line}", replica.name);
            }
        }
    }
    assert!(
        t.failed.is_empty(),
        "requests failed beyond the client's retry: {:?}",
        t.failed
    );
    // Each call carried FRAMES each way, every one of them received.
    assert_eq!(t.frames_sent, t.calls * 2 * FRAMES_PER_CALL as usize, "{t:?}");
    assert_eq!(t.frames_received, t.frames_sent, "{t:?}");
    assert_eq!(t.offline_answers, 0, "a drained user stays online (presence handover)");
    assert!(t.calls >= 2 * PAIRS, "every pair completed calls: {t:?}");
    // Every mail once: the verification link and the first login's code,
    // then one code per login during the restart.
    cluster
        .wait_settled("auth", "notification", Duration::from_secs(20))
        .await;
    for n in 0..2 * PAIRS {
        let email = format!("user{n}@kiit.ac.in");
        let expected = 2 + logins.get(&email).copied().unwrap_or(0);
        assert_eq!(smtp.messages_to(&email).len(), expected, "mails to {email}");
    }
}

#[tokio::test]
async fn a_signaling_replica_killed_mid_call_behind_the_balancer_loses_no_frame_either_way() {
    let mut cluster = Cluster::start(&[("SIGNALING_FRAME_RATE", "1000")]).await;
    let lb = Gateway::at(cluster.lb.base());
    let (ada_id, ada) = cluster.user("ada").await;
    let (bob_id, bob) = cluster.user("bob").await;
    let (call_id, _bob_presence, ada_call, bob_call) =
        call_in_progress(&cluster, (&ada_id, &ada), (&bob_id, &bob)).await;
    drop((ada_call, bob_call));
    // Frames do not pass through signaling: whichever replica dies, the
    // sockets carry on. Replica 1 dies (the balancer spreads the JoinCalls
    // and the REST calls over both).
    let doomed = 1;
    let path = format!("/ws/webrtc/{call_id}");
    let ada_socket = lb.socket(&path, &ada).await;
    let bob_socket = lb.socket(&path, &bob).await;
    let a = ResumingClient::new(path.clone(), ada.clone(), ada_socket);
    let b = ResumingClient::new(path.clone(), bob.clone(), bob_socket);

    // Both talk (200 frames each, acknowledged and resent when needed) while
    // a signaling replica is killed.
    const FRAMES: u64 = 200;
    let kill = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cluster.replica(Kind::Signaling, doomed).kill();
    };
    let talk = async {
        tokio::join!(
            converse(a, &lb, ("a", "b"), FRAMES, Duration::from_millis(5)),
            converse(b, &lb, ("b", "a"), FRAMES, Duration::from_millis(5))
        )
    };
    let ((a, b), ()) = tokio::join!(talk, kill);
    assert_eq!(
        (a.sent, a.received, b.sent, b.received),
        (FRAMES, FRAMES, FRAMES, FRAMES)
    );
    let (a, b) = (a.client, b.client);
    eprintln!(
        "replica {doomed} killed: {FRAMES} frames each way arrived once in order; \
         socket reconnects {} / {}, frames sent again {} / {}",
        a.reconnects, b.reconnects, a.resent, b.resent
    );
    // No socket was interrupted, nothing had to be sent again, the call
    // carries on and nobody was told the other left.
    assert_eq!((a.reconnects, b.reconnects), (0, 0), "no socket reconnected");
    assert_eq!((a.resent, b.resent), (0, 0), "no frame sent again");
    for (who, client) in [("a", &a), ("b", &b)] {
        assert!(
            client.told_disconnected.is_none(),
            "{who} was told: {:?}",
            client.told_disconnected
        );
    }
    let (status, call) = lb.get_bearer(&format!("/calls/by-id/{call_id}"), &ada).await;
    assert_eq!((status, call["status"].as_str()), (200, Some("ongoing")), "{call}");
}

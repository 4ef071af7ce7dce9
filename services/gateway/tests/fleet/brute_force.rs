//! Brute force across two gateway replicas sharing Redis: the guesses at one
//! account (login, code, resend) are one budget for both (and a forged
//! `X-Forwarded-For` does not reset it), a login code locks after five
//! wrong tries wherever they are sent, and one user's WebSockets are capped
//! fleet-wide (`MAX_SOCKETS_PER_USER`), concurrent floods included.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Received};
use serde_json::json;
use unilink_test_support::eventually;

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn guesses_at_one_account_share_one_budget_across_both_gateways() {
    let fleet = Fleet::start().await;
    unilink_test_support::away_from_a_rate_window_boundary().await;
    let a = fleet.gateway(&[("RATE_LIMIT_AUTH", "5")]).await;
    let b = fleet.gateway(&[("RATE_LIMIT_AUTH", "5")]).await;

    // Three password guesses on A, two code guesses on B: Ada's budget of 5
    // (per email and client address) is spent.
    for _ in 0..3 {
        let (status, body) = a
            .post("/auth/login", json!({"email": "ada@kiit.ac.in", "password": "guess"}))
            .await;
        assert_eq!(status, 401, "{body}");
    }
    for _ in 0..2 {
        let (status, body) = b
            .post(
                "/auth/login/verify-otp",
                json!({"email": "ada@kiit.ac.in", "otp": "123456"}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
    }
    // The sixth, on either replica, on any route aimed at her, however her
    // address is spelled and whatever address the client claims.
    let attempts = [
        (
            &b,
            "/auth/login",
            json!({"email": "ada@kiit.ac.in", "password": "guess"}),
        ),
        (
            &a,
            "/auth/login",
            json!({"email": " ADA@kiit.ac.in ", "password": "guess"}),
        ),
        (
            &a,
            "/auth/login/verify-otp",
            json!({"email": "ada@kiit.ac.in", "otp": "123456"}),
        ),
        (&b, "/auth/resend-verification", json!({"email": "ada@kiit.ac.in"})),
    ];
    for (gw, path, body) in attempts {
        for forwarded in [None, Some("203.0.113.9")] {
            let mut request = gw.http.post(gw.url(path)).json(&body);
            if let Some(ip) = forwarded {
                request = request.header("X-Forwarded-For", ip).header("X-Real-IP", ip);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 429, "{path} (forwarded: {forwarded:?})");
            assert!(response.headers().contains_key("retry-after"));
            let detail: serde_json::Value = response.json().await.unwrap();
            assert!(detail["detail"].is_string());
        }
    }
    // Another account from the same address still gets its answers, and
    // sign-ups count only against the address's budget.
    let (status, body) = b
        .post("/auth/login", json!({"email": "bob@kiit.ac.in", "password": "guess"}))
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = a
        .post(
            "/auth/register",
            json!({"email": "one@kiit.ac.in", "username": "one", "full_name": "N", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.get("/health").await.0, 200);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_login_code_locks_after_five_wrong_tries_spread_over_both_gateways() {
    let fleet = Fleet::start().await;
    let a = fleet.gateway(&[]).await;
    let b = fleet.gateway(&[]).await;
    a.sign_up_and_log_in(&fleet.smtp, "ada@kiit.ac.in", "ada").await;
    let (status, _) = b
        .post("/auth/login", json!({"email": "ada@kiit.ac.in", "password": PASSWORD}))
        .await;
    assert_eq!(status, 202);
    let code = fleet.mail("ada@kiit.ac.in", 3).await.digits(6).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for gw in [&a, &b, &a, &b, &a] {
        let (status, _) = gw
            .post(
                "/auth/login/verify-otp",
                json!({"email": "ada@kiit.ac.in", "otp": wrong}),
            )
            .await;
        assert_eq!(status, 400);
    }
    for gw in [&a, &b] {
        let (status, body) = gw
            .post(
                "/auth/login/verify-otp",
                json!({"email": "ada@kiit.ac.in", "otp": code}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("too many wrong codes"),
            "{body}"
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn one_users_sockets_are_capped_across_both_gateways() {
    let fleet = Fleet::start().await;
    let a = fleet.gateway(&[("MAX_SOCKETS_PER_USER", "3")]).await;
    let b = fleet.gateway(&[("MAX_SOCKETS_PER_USER", "3")]).await;
    let (ada_id, ada) = fleet.user(&a, "ada").await;
    let (bob_id, bob) = fleet.user(&a, "bob").await;
    let presence = format!("/calls/ws/{ada_id}");

    // Two presence sockets on A and a call socket on B: the cap of 3.
    let mut first = a.socket(&presence, &ada).await;
    let second = a.socket(&presence, &ada).await;
    let mut bob_presence = b.socket(&format!("/calls/ws/{bob_id}"), &bob).await;
    bob_presence.send_text("ping").await;
    assert!(matches!(bob_presence.next().await, Received::Text(t) if t == "pong"));
    let (status, call) = a
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let call_socket = b
        .socket(&format!("/ws/webrtc/{}", call["id"].as_str().unwrap()), &ada)
        .await;
    for gw in [&a, &b] {
        assert_eq!(gw.try_socket(&presence, &ada).await.err(), Some(429));
    }
    // The refusal says why; the open sockets keep working; others are not affected.
    let (status, body) = a.upgrade_answer(&presence, &ada).await;
    assert_eq!(status, 429);
    assert!(body["detail"].as_str().unwrap().contains("at most 3"), "{body}");
    first.send_text("ping").await;
    assert!(matches!(first.next().await, Received::Text(t) if t == "pong"));
    let bob_second = a.socket(&format!("/calls/ws/{bob_id}"), &bob).await;

    // Closing one frees its place (released in the background).
    second.close().await;
    let third = eventually("a place to free up", Duration::from_secs(10), || async {
        b.try_socket(&presence, &ada).await.ok()
    })
    .await;
    assert_eq!(b.try_socket(&presence, &ada).await.err(), Some(429));

    // A concurrent flood on both replicas with every place taken: none gets
    // through; with all closed, exactly three of twenty do.
    let flood = |n: usize| {
        let (a, b, presence, ada) = (&a, &b, presence.clone(), ada.clone());
        async move {
            let attempts = (0..n).map(|i| {
                let gw = if i % 2 == 0 { a } else { b };
                let (presence, ada) = (presence.clone(), ada.clone());
                async move { gw.try_socket(&presence, &ada).await }
            });
            futures_util::future::join_all(attempts).await
        }
    };
    let results = flood(20).await;
    assert!(results.iter().all(|r| matches!(r, Err(429))));
    for socket in [first, third, call_socket] {
        socket.close().await;
    }
    eventually("every place freed", Duration::from_secs(10), || async {
        match b.try_socket(&presence, &ada).await {
            Ok(socket) => {
                socket.close().await;
                Some(())
            }
            Err(_) => None,
        }
    })
    .await;
    // Freed again after the probe above.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = flood(20).await;
    let opened = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        opened,
        3,
        "{:?}",
        results.iter().map(|r| r.as_ref().err()).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(429))));
    drop(results);
    bob_second.close().await;
    bob_presence.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn leases_are_renewed_while_held_and_freed_when_dropped() {
    use unilink_gateway::ws::cap::SocketCap;
    let redis = unilink_bus::Redis::connect(&unilink_config::RedisSettings::new(
        unilink_config::Secret::new(unilink_test_support::redis_url()),
        unilink_test_support::unique_prefix(),
    ))
    .await
    .expect("connect to Redis");
    // Two caps share Redis as two gateways do; leases of 600 ms, renewed
    // every 200 ms by each cap's one renewal task.
    let lease = Duration::from_millis(600);
    let a = SocketCap::with_lease(redis.clone(), 2, 100, lease);
    let b = SocketCap::with_lease(redis.clone(), 2, 100, lease);
    let first = a.acquire("ada").await.expect("a first socket");
    let second = b.acquire("ada").await.expect("a second socket");
    // Five lease lengths later both places are still taken: renewed.
    tokio::time::sleep(lease * 5).await;
    let refused = a.acquire("ada").await.expect_err("a third socket over the cap");
    assert_eq!(refused.code, unilink_errors::ErrorCode::RateLimited);
    // The cap is per user.
    let other = b.acquire("bob").await.expect("another user's socket");
    // A dropped lease frees its place at once, in Redis too.
    drop(second);
    eventually("the dropped place to be free", Duration::from_secs(2), || async {
        a.acquire("ada").await.ok()
    })
    .await;
    drop((first, other));
    redis.close().await;
}

#[tokio::test]
async fn a_replica_holds_at_most_max_sockets_and_sends_the_rest_elsewhere() {
    let fleet = Fleet::start().await;
    let a = fleet.gateway(&[("MAX_SOCKETS", "2")]).await;
    let b = fleet.gateway(&[("MAX_SOCKETS", "2")]).await;
    let (ada_id, ada) = fleet.user(&a, "ada").await;
    let (bob_id, bob) = fleet.user(&a, "bob").await;
    let ada_presence = format!("/calls/ws/{ada_id}");
    let bob_presence = format!("/calls/ws/{bob_id}");

    // Two users' sockets fill replica A; a third, whoever's, is refused
    // there with 503 and the reason, and taken by B.
    let mut first = a.socket(&ada_presence, &ada).await;
    let second = a.socket(&bob_presence, &bob).await;
    assert_eq!(a.try_socket(&bob_presence, &bob).await.err(), Some(503));
    let (status, body) = a.upgrade_answer(&bob_presence, &bob).await;
    assert_eq!(status, 503);
    assert!(body["detail"].as_str().unwrap().contains("reconnect"), "{body}");
    let elsewhere = b.socket(&bob_presence, &bob).await;
    // The sockets A holds keep working.
    first.send_text("ping").await;
    assert!(matches!(first.next().await, Received::Text(t) if t == "pong"));

    // A closed socket frees its place on A.
    second.close().await;
    let again = eventually("a place on A", Duration::from_secs(10), || async {
        a.try_socket(&bob_presence, &bob).await.ok()
    })
    .await;
    assert_eq!(a.try_socket(&ada_presence, &ada).await.err(), Some(503));
    for socket in [first, again, elsewhere] {
        socket.close().await;
    }
    a.stop().await;
    b.stop().await;
}

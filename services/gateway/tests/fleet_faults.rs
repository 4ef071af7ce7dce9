//! What the fleet survives, proved on real processes: two replicas of every
//! service behind nginx (see `cluster/mod.rs`), with PostgreSQL cut away,
//! Redis killed and restarted empty, replicas killed, drained and restarted,
//! and the SMTP server down. Each test is bounded in time (outages last
//! [`OUTAGE`]) and stops everything it started.
//!
//! Needs the service binaries (`cargo nextest run --workspace` builds them),
//! `redis-server` and nginx (scripts/test.sh installs both when missing).

mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::{Cluster, Kind};
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

/// `/livez` of every process that is running: liveness must never fail
/// because a dependency is down (a failing liveness probe restarts pods,
/// which would turn an outage into a crash loop).
async fn assert_all_live(cluster: &Cluster) {
    for (kind, replica) in &cluster.replicas {
        if !replica.is_running() {
            continue;
        }
        let response = reqwest::Client::new()
            .get(format!("http://{}/livez", replica.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} ({kind:?}) /livez: {e}", replica.name));
        assert_eq!(response.status(), 200, "{} /livez", replica.name);
    }
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

#[tokio::test]
async fn a_postgres_outage_fails_fast_with_503_and_heals_itself_losing_no_acknowledged_write() {
    let cluster = Cluster::start(&[]).await;
    let gw = &cluster.client;
    let (_, ada) = cluster.user("ada").await;
    let (bob_id, bob) = cluster.user("bob").await;
    let (status, body) = gw
        .send(
            gw.http
                .put(gw.url("/users/me"))
                .bearer_auth(&ada)
                .json(&json!({"bio": "before"})),
        )
        .await;
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
            (
                "PUT /users/me",
                timed(
                    gw.send(
                        gw.http
                            .put(gw.url("/users/me"))
                            .bearer_auth(&ada)
                            .json(&json!({"bio": bio})),
                    ),
                )
                .await,
            ),
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
    let (status, body) = gw
        .send(
            gw.http
                .put(gw.url("/users/me"))
                .bearer_auth(&ada)
                .json(&json!({"bio": "after"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, carol) = cluster.user("carol").await;
    assert_eq!(gw.get_bearer("/users/me", &carol).await.0, 200);
    eprintln!("healthy again {healed:?} after PostgreSQL came back");
}

//! Operating the fleet in production, proved on real processes behind the
//! real nginx of the fleet tests (`cluster/mod.rs`: two replicas of every
//! service, nginx setting `X-Forwarded-For`, the gateways trusting it with
//! `TRUSTED_PROXIES=127.0.0.1`):
//!
//! * client addresses behind the proxy — clients at different addresses
//!   (loopback aliases 127.0.0.2, 127.0.0.3, …) have their own budgets under
//!   the production limits, a forged `X-Forwarded-For` changes nothing, and
//!   one email being refused leaves the other emails of an address their
//!   answers up to the address's cap;
//! * probes — a gateway stays ready while PostgreSQL is cut, and answers
//!   `/readyz` 503 once it drains;
//! * drain — the worst drain (sockets that never answer the close, a request
//!   still in flight) ends within `SHUTDOWN_GRACE_SECONDS`.
//!
//! Needs the service binaries (`cargo build --workspace --bins`),
//! `redis-server` and nginx (scripts/test.sh installs both when missing).

use unilink_test_support::cluster;
use unilink_test_support::fleet as common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use cluster::{Cluster, Kind, metric_sum};
use common::Gateway;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unilink_test_support::eventually;

/// The production overlay's limits (k8s/overlays/production/configmap-patch.yaml)
/// and the default per-address cap, instead of the fleet tests' 100000.
const PRODUCTION_LIMITS: [(&str, &str); 3] = [
    ("RATE_LIMIT_AUTH", "5"),
    ("RATE_LIMIT_API", "30"),
    ("RATE_LIMIT_AUTH_ADDRESS", "300"),
];

/// A client of `base` whose connections come from `address` (a loopback
/// alias: the proxy sees it as the client's address).
fn client_from(base: &str, address: &str) -> Gateway {
    let mut gateway = Gateway::at(base.to_owned());
    gateway.http = reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().expect("an address"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    gateway
}

/// The status of `POST /auth/login` guessing `email`'s password, with a
/// forged `X-Forwarded-For` when `forged` is given.
async fn guess(client: &Gateway, email: &str, forged: Option<&str>) -> u16 {
    let mut request = client
        .http
        .post(client.url("/auth/login"))
        .json(&json!({"email": email, "password": "a guess"}));
    if let Some(address) = forged {
        request = request.header("X-Forwarded-For", address);
    }
    request.send().await.expect("a login answer").status().as_u16()
}

#[tokio::test]
async fn clients_behind_the_proxy_have_their_own_budgets_and_a_forged_forwarded_for_changes_nothing() {
    let cluster = Cluster::start(&PRODUCTION_LIMITS).await;
    let lb = cluster.lb.base();
    let (a, b) = (client_from(&lb, "127.0.0.2"), client_from(&lb, "127.0.0.3"));
    unilink_test_support::away_from_a_rate_window_boundary().await;

    // Five guesses at Ada's password from A are answered, the sixth refused.
    for _ in 0..5 {
        assert_eq!(guess(&a, "ada@kiit.ac.in", None).await, 401);
    }
    assert_eq!(guess(&a, "ada@kiit.ac.in", None).await, 429);
    // B, at another address behind the same proxy, has a budget of its own.
    for _ in 0..5 {
        assert_eq!(guess(&b, "ada@kiit.ac.in", None).await, 401, "B shares A's budget");
    }
    assert_eq!(guess(&b, "ada@kiit.ac.in", None).await, 429);

    // A forged X-Forwarded-For changes nothing: nginx replaces it…
    for forged in ["198.51.100.20", "127.0.0.9"] {
        assert_eq!(guess(&a, "ada@kiit.ac.in", Some(forged)).await, 429, "{forged}");
    }
    // …and a gateway reached directly ignores it from a peer it does not
    // trust (A is still A there), counting what it ignored.
    let direct = cluster.direct(1);
    let direct_a = client_from(&direct.base, "127.0.0.2");
    let before = metric_sum(&direct.metrics().await, "untrusted_forwarded_for_total");
    for forged in ["198.51.100.20", "127.0.0.9", "127.0.0.1"] {
        assert_eq!(
            guess(&direct_a, "ada@kiit.ac.in", Some(forged)).await,
            429,
            "straight to a gateway claiming {forged}"
        );
    }
    let after = metric_sum(&direct.metrics().await, "untrusted_forwarded_for_total");
    assert_eq!(after - before, 3.0, "every ignored X-Forwarded-For is counted");
    // A client without a budget problem is not caught by any of this.
    let c = client_from(&lb, "127.0.0.4");
    assert_eq!(guess(&c, "ada@kiit.ac.in", None).await, 401);
}

#[tokio::test]
async fn one_email_refused_leaves_the_others_at_that_address_their_answers_up_to_its_cap() {
    let cluster = Cluster::start(&PRODUCTION_LIMITS).await;
    let campus = client_from(&cluster.lb.base(), "127.0.0.5");
    unilink_test_support::away_from_a_rate_window_boundary().await;

    // Someone behind the campus NAT hammers Ada's account: five guesses are
    // answered, the rest refused…
    for _ in 0..5 {
        assert_eq!(guess(&campus, "ada@kiit.ac.in", None).await, 401);
    }
    for _ in 0..5 {
        assert_eq!(guess(&campus, "ada@kiit.ac.in", None).await, 429);
    }
    // …while Bob, behind the same NAT, still logs in (his guess is answered).
    assert_eq!(guess(&campus, "bob@kiit.ac.in", None).await, 401);

    // The address as a whole has a cap (RATE_LIMIT_AUTH_ADDRESS, 300 a
    // minute) across emails; the refused guesses did not spend it: of 400
    // students' code checks, exactly 300 - 6 are answered.
    let statuses: Vec<u16> = futures_util::stream::iter(0..400)
        .map(|i| {
            let campus = &campus;
            async move {
                let response = campus
                    .http
                    .post(campus.url("/auth/login/verify-otp"))
                    .json(&json!({"email": format!("student{i}@kiit.ac.in"), "otp": "000000"}))
                    .send()
                    .await
                    .expect("an answer");
                if response.status() == 429 {
                    assert_eq!(response.headers()["x-ratelimit-limit"], "300");
                }
                response.status().as_u16()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let answered = statuses.iter().filter(|s| **s != 429).count();
    assert!(statuses.iter().all(|s| [400, 429].contains(s)), "{statuses:?}");
    eprintln!(
        "one address, 400 emails: {answered} answered, {} refused",
        400 - answered
    );
    assert_eq!(answered, 300 - 6);
    // Another address is not affected by this one's cap.
    let elsewhere = client_from(&cluster.lb.base(), "127.0.0.6");
    assert_eq!(guess(&elsewhere, "carol@kiit.ac.in", None).await, 401);
}

/// `/readyz` of gateway `n` (0 when it does not answer).
async fn readyz(cluster: &Cluster, n: usize) -> u16 {
    readyz_at(&cluster.direct(n).url("/readyz")).await
}

async fn readyz_at(url: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test]
async fn a_gateway_stays_ready_while_postgres_is_cut_and_turns_unready_when_it_drains() {
    let mut cluster = Cluster::start(&[]).await;
    let (ada_id, ada) = cluster.user("ada").await;
    for n in [1, 2] {
        assert_eq!(readyz(&cluster, n).await, 200);
    }

    cluster.pg.cut().await;
    eventually(
        "/health to report the database down",
        Duration::from_secs(20),
        || async {
            let (status, body) = cluster.client.get("/health").await;
            (status == 503 && body["database"] == "disconnected").then_some(())
        },
    )
    .await;
    // Three of the Kubernetes probe's periods (5 s): both gateways stay in
    // the balancer, answering (degraded) through it.
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_secs(15) {
        for n in [1, 2] {
            assert_eq!(
                readyz(&cluster, n).await,
                200,
                "gateway {n} unready while PostgreSQL is cut"
            );
        }
        let (status, body) = cluster.client.get_bearer("/users/me", &ada).await;
        assert!(status == 503 && body["detail"].is_string(), "{status} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.pg.restore().await;

    // Draining: a socket whose client never answers the close keeps the
    // gateway draining (about two seconds) after SIGTERM.
    let gateway = cluster.direct(1);
    let _silent = gateway.socket(&format!("/calls/ws/{ada_id}"), &ada).await;
    let url = gateway.url("/readyz");
    let mut seen = Vec::new();
    let polling = async {
        loop {
            let status = readyz_at(&url).await;
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if status == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (took, ()) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster
                .replica(Kind::Gateway, 1)
                .terminate(Duration::from_secs(25))
                .await
        },
        polling
    );
    eprintln!("gateway 1 /readyz after SIGTERM: {seen:?}; exited after {took:?}");
    assert_eq!(seen, vec![200, 503, 0], "ready, then draining (503), then gone");
    // The other one is ready all along.
    assert_eq!(readyz(&cluster, 2).await, 200);
}

/// Opens `POST /auth/register` on `addr` and sends its body one byte every
/// 200 ms: a request the gateway has in flight until the client finishes.
async fn slow_upload(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<Duration> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = "POST /auth/register HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
                Content-Length: 4096\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.expect("send the head");
    tokio::spawn(async move {
        let started = Instant::now();
        // Until the gateway closes the connection (the body never completes).
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            let mut byte = [0_u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await {
                break;
            }
        }
        started.elapsed()
    })
}

#[tokio::test]
async fn the_worst_drain_ends_within_the_shutdown_grace() {
    const GRACE: Duration = Duration::from_secs(20);
    const SOCKETS: usize = 50;
    let mut cluster = Cluster::start(&[("SHUTDOWN_GRACE_SECONDS", "20"), ("MAX_SOCKETS_PER_USER", "100")]).await;
    let (ada_id, ada) = cluster.user("ada").await;
    let gateway = cluster.direct(1);
    let addr = cluster.replica(Kind::Gateway, 1).http;

    // Sockets whose clients never answer the close frame (each waits its
    // linger), one that does, and an upload that never finishes.
    let path = format!("/calls/ws/{ada_id}");
    let silent: Vec<_> = futures_util::future::join_all((0..SOCKETS).map(|_| gateway.socket(&path, &ada))).await;
    let mut listening = gateway.socket(&path, &ada).await;
    let upload = slow_upload(addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (took, closed) = tokio::join!(cluster.replica(Kind::Gateway, 1).terminate(GRACE * 2), async {
        let started = Instant::now();
        (listening.next().await, started.elapsed())
    });
    let upload_cut_after = upload.await.expect("the upload task");
    drop(silent);
    eprintln!(
        "worst drain: SHUTDOWN_GRACE_SECONDS {} s, {SOCKETS} silent sockets + 1 listening + an upload in flight: \
         1012 after {:?}, upload cut after {upload_cut_after:?}, exit after {took:?}",
        GRACE.as_secs(),
        closed.1
    );
    assert!(matches!(closed.0, common::Received::Closed(1012, _)), "{:?}", closed.0);
    assert!(closed.1 < Duration::from_secs(2), "the 1012 comes at once");
    // In-flight work gets the whole grace, and not a moment more.
    assert!(
        upload_cut_after >= GRACE - Duration::from_secs(1),
        "{upload_cut_after:?}"
    );
    assert!(took <= GRACE + Duration::from_secs(1), "exit {took:?} after SIGTERM");
}

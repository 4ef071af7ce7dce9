//! Sockets move to a gateway replica that joins the fleet (a scale-up).
//!
//! The fleet as processes (two replicas of every service, nginx balancing
//! the gateways round robin): gateway B is stopped and out of the balancer
//! while 60 presence sockets open, so all of them land on gateway A. Then B
//! starts and joins the balancer, as a pod the autoscaler added does.
//!
//! Asserted: A asks sockets to reconnect (1012, "rebalancing") until both
//! hold their share within the margin; every round asks at most
//! `WS_REBALANCE_MAX_PERCENT` of A's sockets and never takes A below the
//! average; B asks nothing; clients that reconnect through the balancer
//! land on B (and some back on A: round robin), their sockets answer again,
//! and no socket is closed any other way; once within the margin, nothing
//! more moves. Printed: every round, where the clients landed, the time to
//! balance.

use unilink_test_support::cluster;
use unilink_test_support::fleet as common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, Kind, metric_sum};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SOCKETS: usize = 60;
const USERS: usize = 6;
const INTERVAL: Duration = Duration::from_secs(1);
const MARGIN_PERCENT: usize = 20;
const MAX_PERCENT: usize = 10;
/// From B joining to both gateways within the margin.
const BALANCE_BOUND: Duration = Duration::from_secs(90);
const PRESENCE: &str = "websocket_connections{kind=\"presence\"}";

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    /// (client, gateway address nginx used) per connection that answered.
    landed: Vec<(usize, String)>,
    /// Clients asked to reconnect with 1012 and this reason.
    asked: Vec<(usize, String)>,
    /// Anything else: refusals, other closes, broken sockets.
    unexpected: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn seen(shared: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One presence client: connects through the balancer, checks the socket
/// answers (`ping` → `pong`), and reconnects at once when asked to (1012),
/// as the web client does after its 500 ms backoff.
async fn presence_client(n: usize, url: String, shared: Shared, stop: CancellationToken) {
    loop {
        let (mut ws, response) = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(connected) => connected,
            Err(e) => {
                seen(&shared)
                    .unexpected
                    .push(format!("client {n}: upgrade failed: {e}"));
                return;
            }
        };
        let upstream = response
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        if ws.send(Message::text("ping")).await.is_err() {
            seen(&shared).unexpected.push(format!("client {n}: send failed"));
            return;
        }
        let mut answered = false;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return;
                }
                message = ws.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) if text.as_str() == "pong" && !answered => {
                    answered = true;
                    seen(&shared).landed.push((n, upstream.clone()));
                }
                Some(Ok(Message::Close(Some(frame)))) if u16::from(frame.code) == 1012 => {
                    seen(&shared).asked.push((n, frame.reason.to_string()));
                    break;
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                other => {
                    seen(&shared).unexpected.push(format!("client {n}: {other:?}"));
                    return;
                }
            }
        }
    }
}

/// Presence sockets on a gateway, from its own `/metrics`.
async fn presence_on(gateway: &common::Gateway) -> usize {
    metric_sum(&gateway.metrics().await, PRESENCE) as usize
}

/// A round of the rebalancer, from a gateway's log.
#[derive(Debug)]
struct Round {
    at: String,
    sockets: usize,
    average: usize,
    asked: usize,
    presence: usize,
}

fn rounds(log: &str) -> Vec<Round> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["message"] == "sockets asked to reconnect elsewhere")
        .map(|v| {
            let n = |key: &str| v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as usize;
            Round {
                at: v["timestamp"].as_str().unwrap_or_default().to_owned(),
                sockets: n("sockets"),
                average: n("average"),
                asked: n("asked"),
                presence: n("presence"),
            }
        })
        .collect()
}

#[tokio::test]
async fn sockets_move_to_a_gateway_that_joins_until_each_holds_its_share() {
    let interval = INTERVAL.as_secs().to_string();
    let margin = MARGIN_PERCENT.to_string();
    let max = MAX_PERCENT.to_string();
    let mut cluster = Cluster::start(&[
        ("WS_REBALANCE_INTERVAL_SECONDS", interval.as_str()),
        ("WS_REBALANCE_MARGIN_PERCENT", margin.as_str()),
        ("WS_REBALANCE_MAX_PERCENT", max.as_str()),
        // Ten sockets per user, reconnecting before the old socket's lease
        // is released (the web client waits 500 ms): room for both.
        ("MAX_SOCKETS_PER_USER", "20"),
        (
            "LOG_LEVEL",
            "warn,unilink_grpc::server=info,unilink_gateway::startup=info,unilink_gateway::ws::rebalance=info",
        ),
    ])
    .await;
    let a_addr = cluster.replica(Kind::Gateway, 1).http;
    let b_addr = cluster.replica(Kind::Gateway, 2).http;
    let (a, b) = (cluster.direct(1), cluster.direct(2));

    // Before the scale-up: B is out of the balancer and stopped.
    cluster.lb.set_down(Some(b_addr)).await;
    cluster
        .replica(Kind::Gateway, 2)
        .terminate(Duration::from_secs(30))
        .await;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(cluster.user(&format!("rebalance{i}")).await);
    }
    let ws_base = cluster.lb.base().replace("http://", "ws://");
    let shared = Shared::default();
    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..SOCKETS)
        .map(|n| {
            let (id, token) = &users[n % USERS];
            // These clients reconnect when asked to move (`reconnects=1`).
            let url = format!("{ws_base}/calls/ws/{id}?token={token}&reconnects=1");
            tokio::spawn(presence_client(n, url, shared.clone(), stop.clone()))
        })
        .collect();
    common_eventually("every socket answered", Duration::from_secs(30), || {
        (seen(&shared).landed.len() == SOCKETS).then_some(())
    })
    .await;
    assert_eq!(presence_on(&a).await, SOCKETS);
    {
        let seen = seen(&shared);
        assert!(
            seen.landed.iter().all(|(_, up)| up == &a_addr.to_string()),
            "every socket on A first: {:?}",
            seen.landed
        );
    }
    eprintln!("[rebalance] {SOCKETS} presence sockets of {USERS} users on gateway A ({a_addr}); B stopped");

    // The scale-up: B starts and joins the balancer.
    cluster.replica(Kind::Gateway, 2).restart().await;
    cluster.lb.set_down(None).await;
    let joined = Instant::now();
    eprintln!("[rebalance] gateway B ({b_addr}) started and in the balancer");

    // Balanced: all 60 answering, A within the margin above the average.
    let within = |on_a: usize| on_a * 2 * 100 <= SOCKETS * (100 + MARGIN_PERCENT);
    let (on_a, on_b) = unilink_test_support::eventually("A within the margin", BALANCE_BOUND, || {
        let (a, b, shared) = (&a, &b, &shared);
        async move {
            let (on_a, on_b) = (presence_on(a).await, presence_on(b).await);
            let settled = {
                let seen = seen(shared);
                seen.landed.len() == SOCKETS + seen.asked.len()
            };
            (settled && on_a + on_b == SOCKETS && within(on_a)).then_some((on_a, on_b))
        }
    })
    .await;
    let balanced_after = joined.elapsed();

    // Nothing moves once within the margin (the next rounds find nothing to do).
    let asked_then = seen(&shared).asked.len();
    tokio::time::sleep(INTERVAL * 4).await;
    let asked_later = seen(&shared).asked.len();
    let (still_a, still_b) = (presence_on(&a).await, presence_on(&b).await);

    stop.cancel();
    for client in clients {
        client.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen(&shared));
    let a_rounds = rounds(&cluster.replica(Kind::Gateway, 1).logs());
    let b_rounds = rounds(&cluster.replica(Kind::Gateway, 2).logs());
    let a_metrics = a.metrics().await;

    eprintln!("[rebalance] rounds on A (interval {INTERVAL:?}, margin {MARGIN_PERCENT}%, at most {MAX_PERCENT}%):");
    for r in &a_rounds {
        eprintln!(
            "[rebalance]   {}  {} sockets, fleet average {}, asked {} ({} presence)",
            r.at, r.sockets, r.average, r.asked, r.presence
        );
    }
    let after_join = &seen.landed[SOCKETS..];
    let on_b_landings = after_join.iter().filter(|(_, up)| up == &b_addr.to_string()).count();
    eprintln!(
        "[rebalance] {} asked to reconnect: {} landed on B, {} back on A; balanced after {:.1} s: A {on_a}, B {on_b}; \
         {:?} later: A {still_a}, B {still_b}",
        seen.asked.len(),
        on_b_landings,
        after_join.len() - on_b_landings,
        balanced_after.as_secs_f64(),
        INTERVAL * 4,
    );

    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    assert!(
        seen.asked.iter().all(|(_, reason)| reason == "rebalancing; reconnect"),
        "{:?}",
        seen.asked
    );
    assert!(!a_rounds.is_empty(), "A never asked a socket to move");
    assert!(
        b_rounds.is_empty(),
        "B, below the average, asked sockets to move: {b_rounds:?}"
    );
    for r in &a_rounds {
        assert!(
            r.asked <= (r.sockets * MAX_PERCENT).div_ceil(100),
            "a round asked more than {MAX_PERCENT}% of {} sockets: {r:?}",
            r.sockets
        );
        assert!(
            r.sockets - r.asked >= r.average,
            "a round took A below the average: {r:?}"
        );
        assert_eq!(r.presence, r.asked, "only presence sockets were open: {r:?}");
    }
    let asked_by_a: usize = a_rounds.iter().map(|r| r.asked).sum();
    assert_eq!(
        seen.asked.len(),
        asked_by_a,
        "every socket A asked, and only those, reconnected"
    );
    assert_eq!(
        metric_sum(&a_metrics, "websocket_rebalanced_total{kind=\"presence\"}") as usize,
        asked_by_a
    );
    assert_eq!(
        seen.landed.len(),
        SOCKETS + asked_by_a,
        "every reconnected socket answered again"
    );
    assert!(on_b_landings > 0, "no reconnecting client landed on B");
    assert_eq!(on_b, on_b_landings, "B holds exactly the sockets that moved there");
    assert_eq!(asked_later, asked_then, "sockets kept moving once within the margin");
    assert_eq!((still_a, still_b), (on_a, on_b));
}

/// [`unilink_test_support::eventually`] for a synchronous check.
async fn common_eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<()>) {
    unilink_test_support::eventually(what, timeout, || std::future::ready(check())).await;
}

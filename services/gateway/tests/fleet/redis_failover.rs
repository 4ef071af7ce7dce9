//! Redis high availability with real parts: a master, a replica and three
//! `redis-sentinel` processes on loopback, the fleet (two replicas of every
//! service as real processes, nginx in front) pointed at the Sentinels.
//! During a live cross-replica call, with presence sockets open and users
//! signing up, the master is killed (`kill -9`). Then it comes back, as a
//! replica, and the new master is killed in turn.
//!
//! Asserted each time: no liveness probe fails; every sign-up's mail
//! arrives exactly once; the call's frames go on with none lost or repeated
//! as the clients see them; presence is right again within 30 s. Printed:
//! the time to a new master, to the first frame relayed on it, to presence.

use unilink_test_support::cluster;
use unilink_test_support::fleet as common;

use std::time::{Duration, Instant};

use cluster::{Cluster, ResumingClient, call_in_progress};
use common::Gateway;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long frames keep flowing after the kill.
const AFTER_KILL: Duration = Duration::from_secs(20);
const PRESENCE_BOUND: Duration = Duration::from_secs(30);

/// Polls `/livez` of every process until stopped; returns the failures.
fn watch_liveness(cluster: &Cluster, stop: CancellationToken) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let targets: Vec<(String, std::net::SocketAddr)> =
        cluster.replicas.iter().map(|(_, r)| (r.name.clone(), r.http)).collect();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let (mut probes, mut failures) = (0, Vec::new());
        while !stop.is_cancelled() {
            for (name, addr) in &targets {
                probes += 1;
                let answer = http
                    .get(format!("http://{addr}/livez"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("{name}: {}", r.status())),
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (probes, failures)
    })
}

/// Signs users up through the balancer every 300 ms until stopped; returns
/// the addresses that were answered 200, and every other answer.
fn sign_ups(
    lb: String,
    tag: &'static str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let gw = Gateway::at(lb);
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        let mut n = 0;
        while !stop.is_cancelled() {
            n += 1;
            let email = format!("{tag}{n}@kiit.ac.in");
            let (status, body) = gw
                .post(
                    "/auth/register",
                    json!({"email": email, "username": format!("{tag}{n}"), "full_name": "Sign Up", "password": "correct horse battery"}),
                )
                .await;
            assert_ne!(status, 500, "{body}");
            if status == 200 {
                accepted.push(email);
            } else {
                refused.push(format!("{status} {body}"));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (accepted, refused)
    })
}

struct Call {
    ada: ResumingClient,
    bob: ResumingClient,
    /// Next frame number Ada sends.
    next: u64,
    /// Frame numbers Bob received, in order.
    received: Vec<u64>,
    errors: usize,
}

impl Call {
    /// Ada sends frame `next`; both sides read for a moment.
    async fn step(&mut self, lb: &Gateway) {
        self.ada
            .send(json!({"type": "ice_candidate", "candidate": {"n": self.next}}))
            .await;
        self.next += 1;
        self.read(lb, Duration::from_millis(20)).await;
    }

    async fn read(&mut self, lb: &Gateway, wait: Duration) {
        if let Some(frame) = self.ada.poll_for(lb, wait).await
            && frame["type"] == "error"
        {
            self.errors += 1;
        }
        while let Some(frame) = self.bob.poll_for(lb, Duration::from_millis(5)).await {
            if frame["type"] == "ice_candidate" {
                self.received.push(frame["candidate"]["n"].as_u64().unwrap());
            }
        }
    }
}

/// Ada's and Bob's presence as the other sees it.
async fn both_online(lb: &Gateway, (ada_id, ada): (&str, &str), (bob_id, bob): (&str, &str)) -> bool {
    let (s1, seen_bob) = lb.get_bearer(&format!("/users/{bob_id}"), ada).await;
    let (s2, seen_ada) = lb.get_bearer(&format!("/users/{ada_id}"), bob).await;
    s1 == 200 && s2 == 200 && seen_bob["is_online"] == true && seen_ada["is_online"] == true
}

struct Figures {
    new_master: Duration,
    first_frame: Duration,
    presence: Duration,
    frames: u64,
    resent: usize,
    errors: usize,
    sign_ups: usize,
    refused: usize,
    probes: usize,
}

#[allow(clippy::too_many_arguments)]
async fn fail_over(
    cluster: &mut Cluster,
    lb: &Gateway,
    call: &mut Call,
    ada: (&str, &str),
    bob: (&str, &str),
    presence: &mut [common::Socket; 2],
    tag: &'static str,
) -> Figures {
    let stop = CancellationToken::new();
    let liveness = watch_liveness(cluster, stop.clone());
    let signing = sign_ups(lb.base.clone(), tag, stop.clone());
    let resent_before = call.ada.resent;
    let errors_before = call.errors;
    let first = call.next;

    // A few seconds of normal traffic.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(3) {
        call.step(lb).await;
    }
    let sentinel = cluster.sentinel.as_mut().expect("a Sentinel topology");
    let old = sentinel.master().await;
    let old_port = old.port();
    old.kill();
    let killed = Instant::now();
    let last_before_kill = call.next - 1;

    let (mut new_master, mut first_frame, mut presence_back) = (None, None, None);
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let mut last_ping = Instant::now();
    while killed.elapsed() < AFTER_KILL || presence_back.is_none() {
        call.step(lb).await;
        if first_frame.is_none() && call.received.iter().any(|n| *n > last_before_kill) {
            first_frame = Some(killed.elapsed());
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            let sentinel = cluster.sentinel.as_ref().unwrap();
            if new_master.is_none()
                && let Some(port) = sentinel.master_port().await
                && port != old_port
            {
                new_master = Some(killed.elapsed());
            }
            if new_master.is_some() && presence_back.is_none() && both_online(lb, ada, bob).await {
                presence_back = Some(killed.elapsed());
            }
        }
        // Presence sockets: kept alive, and opened again if closed (as the
        // original client does).
        let ping = last_ping.elapsed() >= Duration::from_secs(1);
        if ping {
            last_ping = Instant::now();
        }
        for (socket, (id, token)) in presence.iter_mut().zip([ada, bob]) {
            if ping {
                let _ = socket.try_send_text("ping").await;
            }
            while let Some(received) = socket.next_within(Duration::from_millis(1)).await {
                if let common::Received::Closed(code, reason) = received {
                    eprintln!("[redis failover] presence socket closed {code} {reason}; reconnecting");
                    *socket = lb.socket(&format!("/calls/ws/{id}"), token).await;
                    break;
                }
            }
        }
        assert!(
            killed.elapsed() < PRESENCE_BOUND + Duration::from_secs(5) || presence_back.is_some(),
            "presence not right again {PRESENCE_BOUND:?} after the kill"
        );
    }
    let new_master = new_master.expect("Sentinel promoted the replica");
    let presence_back = presence_back.unwrap();
    assert!(
        presence_back <= PRESENCE_BOUND,
        "presence right again after {presence_back:?}"
    );
    let Some(first_frame) = first_frame else {
        for (kind, replica) in &cluster.replicas {
            if matches!(kind, cluster::Kind::Signaling | cluster::Kind::Gateway) {
                eprintln!("--- {} log:\n{}", replica.name, replica.logs());
            }
        }
        panic!(
            "no frame relayed after the kill: Ada sent up to {}, Bob's last {:?}, {} unacked, {} errors, {} resent",
            call.next - 1,
            call.received.last(),
            call.ada.unacked.len(),
            call.errors,
            call.ada.resent
        );
    };

    // Every frame Ada sent reaches Bob once, in order (resends fill the gaps).
    let sent_last = call.next - 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (call.received.last().copied().unwrap_or(0) < sent_last || !call.ada.unacked.is_empty())
        && Instant::now() < deadline
    {
        call.read(lb, Duration::from_millis(100)).await;
    }
    let tail: Vec<u64> = call.received.iter().copied().filter(|n| *n >= first).collect();
    let expected: Vec<u64> = (first..=sent_last).collect();
    assert_eq!(tail, expected, "Bob saw every frame of Ada's once, in order");

    stop.cancel();
    let (accepted, refused) = signing.await.unwrap();
    let (probes, failures) = liveness.await.unwrap();
    assert!(failures.is_empty(), "liveness probes failed: {failures:?}");
    assert!(!accepted.is_empty());
    // Every accepted sign-up's verification mail, exactly once.
    let waiting = Instant::now();
    while !accepted.iter().all(|a| !cluster.smtp.messages_to(a).is_empty()) {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "mails missing: {:?}",
            accepted
                .iter()
                .filter(|a| cluster.smtp.messages_to(a).is_empty())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for address in &accepted {
        assert_eq!(cluster.smtp.messages_to(address).len(), 1, "one mail to {address}");
    }
    Figures {
        new_master,
        first_frame,
        presence: presence_back,
        frames: sent_last + 1 - first,
        resent: call.ada.resent - resent_before,
        errors: call.errors - errors_before,
        sign_ups: accepted.len(),
        refused: refused.len(),
        probes,
    }
}

fn report(round: &str, f: &Figures) {
    eprintln!(
        "[redis failover: {round}] new master after {:?}; first frame relayed after the kill at {:?}; \
         presence right after {:?}; {} frames, none lost or repeated ({} resent, {} 'try again' errors); \
         {} sign-ups, each mailed once ({} refused); {} liveness probes, none failed",
        f.new_master, f.first_frame, f.presence, f.frames, f.resent, f.errors, f.sign_ups, f.refused, f.probes
    );
}

#[tokio::test]
async fn killing_the_redis_master_fails_over_and_loses_nothing_twice() {
    // Rebalancing off: with four sockets its moves are noise here, and a
    // call socket asked to move while Redis fails over is another test's
    // subject (see the closing note of issue 18).
    let mut cluster =
        Cluster::start_with_sentinels(&[("SIGNALING_FRAME_RATE", "1000"), ("WS_REBALANCE_INTERVAL_SECONDS", "0")])
            .await;
    eprintln!("[redis failover] fleet started on the Sentinels");
    let lb = Gateway::at(cluster.lb.base());
    let (ada_id, ada) = cluster.user("ada").await;
    let (bob_id, bob) = cluster.user("bob").await;
    eprintln!("[redis failover] users signed up");
    let (call_id, bob_presence, ada_call, bob_call) =
        call_in_progress(&cluster, (&ada_id, &ada), (&bob_id, &bob)).await;
    let mut ada_presence = lb.socket(&format!("/calls/ws/{ada_id}"), &ada).await;
    ada_presence.send_text("ping").await;
    ada_presence.expect_text("pong").await;
    let path = format!("/ws/webrtc/{call_id}");
    let mut call = Call {
        ada: ResumingClient::new(path.clone(), ada.clone(), ada_call),
        bob: ResumingClient::new(path, bob.clone(), bob_call),
        next: 1,
        received: Vec::new(),
        errors: 0,
    };
    let mut presence = [ada_presence, bob_presence];
    let (ada_pair, bob_pair) = ((ada_id.as_str(), ada.as_str()), (bob_id.as_str(), bob.as_str()));

    let first = fail_over(&mut cluster, &lb, &mut call, ada_pair, bob_pair, &mut presence, "first").await;
    report("the master is killed", &first);

    // The old master comes back (empty, as after a crash): Sentinel makes it
    // a replica of the new one. Then the new master is killed in turn.
    let sentinel = cluster.sentinel.as_mut().unwrap();
    let master_now = sentinel.master_port().await.unwrap();
    let old = sentinel
        .nodes
        .iter_mut()
        .find(|n| n.port() != master_now)
        .expect("the killed node");
    old.restart().await;
    let old_port = old.port();
    cluster
        .sentinel
        .as_ref()
        .unwrap()
        .wait_until_replica(old_port, Duration::from_secs(30))
        .await;
    let second = fail_over(
        &mut cluster,
        &lb,
        &mut call,
        ada_pair,
        bob_pair,
        &mut presence,
        "second",
    )
    .await;
    report("the old master, back as a replica, takes over again", &second);
    assert_eq!(
        cluster.sentinel.as_ref().unwrap().master_port().await,
        Some(old_port),
        "the first master is master again"
    );

    // The call is still on, and nobody was told the other left.
    let (status, body): (u16, Value) = lb.get_bearer(&format!("/calls/by-id/{call_id}"), &ada).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ongoing")), "{body}");
    assert!(call.bob.told_disconnected.is_none() && call.ada.told_disconnected.is_none());
}

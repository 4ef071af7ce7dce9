//! A signaling replica holding a live call is killed (`kill -9`): the
//! gateway resumes the caller's stream on the surviving replica and the
//! caller receives every frame sent meanwhile, once and in order, on the
//! same socket. Real processes for the two signaling replicas.

mod common;

use std::time::Duration;

use common::{Fleet, Gateway};
use serde_json::json;
use unilink_test_support::service::{ServingChild, child_env, workspace_binary};

struct Replica(ServingChild);

impl Replica {
    async fn start(fleet: &Fleet) -> Replica {
        let mut env = child_env(fleet.db.url(), &fleet.prefix);
        env.push(("PROFILE_GRPC_URL".into(), fleet.profile.url()));
        env.push(("SIGNALING_FRAME_RATE".into(), "100000".into()));
        Replica(ServingChild::start(&workspace_binary("unilink-signaling"), &env).await)
    }

    fn url(&self) -> String {
        self.0.url()
    }

    /// Call streams this process holds (its own metrics).
    async fn call_streams(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.0.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(r#"signaling_streams{kind="call"} "#))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

async fn post(gw: &Gateway, path: &str, token: &str) -> u16 {
    gw.post_bearer(path, token, json!({})).await.0
}

#[tokio::test]
async fn killing_the_callers_signaling_replica_loses_no_frame() {
    let fleet = Fleet::start().await;
    let replicas = [Replica::start(&fleet).await, Replica::start(&fleet).await];
    let both = format!("{},{}", replicas[0].url(), replicas[1].url());
    let ga = fleet.gateway(&[("SIGNALING_GRPC_URL", both.as_str())]).await;
    let gb = fleet.gateway(&[("SIGNALING_GRPC_URL", both.as_str())]).await;
    let (ada_id, ada) = fleet.user(&ga, "ada").await;
    let (bob_id, bob) = fleet.user(&gb, "bob").await;
    let mut bob_presence = gb.socket(&format!("/calls/ws/{bob_id}"), &bob).await;
    bob_presence.send_text("ping").await;
    bob_presence.next().await;
    let (status, call) = ga
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let call_id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(post(&gb, &format!("/calls/accept/{call_id}"), &bob).await, 200);

    // Which replica holds Ada's stream: the one whose count went up.
    let before = [replicas[0].call_streams().await, replicas[1].call_streams().await];
    let mut ada_call = ga.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let after = [replicas[0].call_streams().await, replicas[1].call_streams().await];
    let doomed = if after[0] > before[0] { 0 } else { 1 };
    assert!(
        after[doomed] > before[doomed],
        "ada's stream is on a replica: {before:?} {after:?}"
    );
    // Bob on the other one (the balancer picks at random: retry).
    let mut bob_call = loop {
        let before = replicas[1 - doomed].call_streams().await;
        let socket = gb.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
        if replicas[1 - doomed].call_streams().await > before {
            break socket;
        }
        socket.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ada_call.expect("connection_ready").await;

    for i in 0..50 {
        bob_call
            .send_json(json!({"type": "ice_candidate", "candidate": {"n": i}}))
            .await;
    }
    for i in 0..50 {
        assert_eq!(ada_call.expect("ice_candidate").await["candidate"]["n"], i);
    }

    // kill -9 Ada's replica; Bob keeps talking meanwhile.
    let [first, second] = replicas;
    let (doomed, survivor) = if doomed == 0 { (first, second) } else { (second, first) };
    drop(doomed.0.process);
    for i in 50..150 {
        bob_call
            .send_json(json!({"type": "ice_candidate", "candidate": {"n": i}}))
            .await;
    }
    // Same socket, resumed by the gateway on the survivor: every frame, in order, once.
    for i in 50..150 {
        let frame = ada_call.expect("ice_candidate").await;
        assert_eq!(frame["candidate"]["n"], i, "{frame}");
        assert_eq!(frame["from"], bob_id);
    }
    assert!(
        ada_call.next_within(Duration::from_millis(500)).await.is_none(),
        "no duplicates"
    );
    assert!(survivor.call_streams().await >= 2.0, "both streams on the survivor now");
    // And Ada can still talk; Bob was never told she left.
    ada_call
        .send_json(json!({"type": "chat_message", "text": "still here"}))
        .await;
    let chat = bob_call.expect("chat_message").await;
    assert_eq!(chat["from"], ada_id);
    assert_eq!(chat["text"], "still here");
    assert!(!format!("{:?}", bob_call.next_within(Duration::from_millis(200)).await).contains("user_disconnected"));
    // Plain requests stop reaching the dead replica: the balancer drops it
    // at the first failed connect (tonic alone keeps picking it).
    for (gw, token) in [(&ga, &ada), (&gb, &bob)] {
        let mut failures = 0;
        for _ in 0..40 {
            if gw.get_bearer("/calls/history", token).await.0 != 200 {
                failures += 1;
            }
        }
        assert!(failures <= 2, "{failures} of 40 history requests failed after the kill");
    }
    drop(survivor);
}

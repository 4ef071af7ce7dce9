//! Signaling replicas are killed (`kill -9`) during a call with frames
//! flowing: frames do not pass through signaling, so they keep arriving on
//! the same sockets, once, in order and with no gap in their numbering,
//! whichever replica dies and even with none left; only a state change
//! (`end_call`) waits for a replica. Real processes for the two replicas.

use unilink_test_support::fleet as common;

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
}

async fn post(gw: &Gateway, path: &str, token: &str) -> u16 {
    gw.post_bearer(path, token, json!({})).await.0
}

/// Bob sends candidates numbered `range`, one every 2 ms, while `during`
/// runs; Ada gets each once, in order, with sequence numbers following
/// `last_seq` without a gap. Returns the last one and the longest wait
/// between two frames.
async fn stream_through(
    bob_call: &mut common::Socket,
    ada_call: &mut common::Socket,
    range: std::ops::Range<u32>,
    mut last_seq: u64,
    during: impl std::future::Future<Output = ()>,
) -> (u64, Duration) {
    let sending = async {
        for i in range.clone() {
            bob_call
                .send_json(json!({"type": "ice_candidate", "candidate": {"n": i}}))
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let receiving = async {
        let mut longest = Duration::ZERO;
        let mut at = tokio::time::Instant::now();
        for i in range.clone() {
            let frame = ada_call.expect("ice_candidate").await;
            assert_eq!(frame["candidate"]["n"], i, "{frame}");
            let seq = frame["seq"].as_u64().unwrap();
            assert!(last_seq == 0 || seq == last_seq + 1, "gap: {seq} after {last_seq}");
            last_seq = seq;
            longest = longest.max(at.elapsed());
            at = tokio::time::Instant::now();
        }
        longest
    };
    let ((), longest, ()) = tokio::join!(sending, receiving, during);
    (last_seq, longest)
}

#[tokio::test]
async fn killing_signaling_replicas_mid_call_interrupts_no_frame() {
    let fleet = Fleet::start().await;
    let replicas = [Replica::start(&fleet).await, Replica::start(&fleet).await];
    let both = format!("{},{}", replicas[0].url(), replicas[1].url());
    let ga = fleet
        .gateway(&[
            ("SIGNALING_GRPC_URL", both.as_str()),
            ("SIGNALING_FRAME_RATE", "100000"),
        ])
        .await;
    let gb = fleet
        .gateway(&[
            ("SIGNALING_GRPC_URL", both.as_str()),
            ("SIGNALING_FRAME_RATE", "100000"),
        ])
        .await;
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
    let mut ada_call = ga.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let mut bob_call = gb.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    ada_call.expect("connection_ready").await;

    let (last_seq, _) = stream_through(&mut bob_call, &mut ada_call, 0..50, 0, async {}).await;
    // kill -9 one replica while Bob sends the next 300 frames.
    let [first, second] = replicas;
    let kill_first = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first.0.process);
    };
    let (last_seq, longest) = stream_through(&mut bob_call, &mut ada_call, 50..350, last_seq, kill_first).await;
    eprintln!("first replica killed: 300 frames, longest wait between two {longest:?}");
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
    // And the second: no signaling replica is left, frames still flow.
    let kill_second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(second.0.process);
    };
    let (_, longest) = stream_through(&mut bob_call, &mut ada_call, 350..650, last_seq, kill_second).await;
    eprintln!("second replica killed: 300 frames, longest wait between two {longest:?}");
    assert!(
        ada_call.next_within(Duration::from_millis(300)).await.is_none(),
        "no duplicates"
    );
    ada_call
        .send_json(json!({"type": "chat_message", "text": "still here"}))
        .await;
    let chat = bob_call.expect("chat_message").await;
    assert_eq!(
        (chat["from"].as_str(), chat["text"].as_str()),
        (Some(ada_id.as_str()), Some("still here"))
    );
    // Only a state change needs a replica: ending the call must wait.
    bob_call.send_json(json!({"type": "end_call"})).await;
    let refused = loop {
        let frame = bob_call.next().await;
        if let common::Received::Text(text) = &frame
            && text.contains(r#""type":"error""#)
        {
            break text.clone();
        }
        assert!(matches!(frame, common::Received::Text(_)), "{frame:?}");
    };
    assert!(refused.contains("could not end the call; try again"), "{refused}");
    // Nobody was told the other left.
    assert!(!format!("{:?}", ada_call.next_within(Duration::from_millis(200)).await).contains("user_disconnected"));
}

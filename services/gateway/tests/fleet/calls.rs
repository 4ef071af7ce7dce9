//! Calls end to end: two gateways, two signaling replicas, presence sockets,
//! pushes, the signaling socket relayed across replicas, history.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Gateway, Socket, go_online, two_sides};
use serde_json::{Value, json};

async fn post(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    gw.post_bearer(path, token, json!({})).await
}

#[tokio::test]
async fn a_full_call_between_two_replicas() {
    let sides = two_sides(&[]).await;
    let (fleet, ga, gb) = (&sides.fleet, &sides.a, &sides.b);
    let (ada_id, ada) = fleet.user(ga, "ada").await;
    let (bob_id, bob) = fleet.user(gb, "bob").await;

    let mut ada_presence = go_online(ga, &ada_id, &ada).await;
    let mut bob_presence = go_online(gb, &bob_id, &bob).await;

    // Bob is available to Ada, and online.
    let (status, available) = ga.get_bearer("/calls/available", &ada).await;
    assert_eq!(status, 200, "{available}");
    assert!(
        available
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == bob_id && u["is_online"] == true)
    );

    // Ada calls; Bob's presence socket rings.
    let (status, call) = ga
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["status"], "pending");
    assert_eq!(call["initiator_id"], ada_id);
    assert_eq!(call["receiver_id"], bob_id);
    assert!(call["call_token"].as_str().is_some_and(|t| t.len() >= 32));
    // As the original: placed at `started_at`, duration 0 until it ends.
    let placed = call["started_at"]
        .as_str()
        .expect("started_at is the creation time")
        .to_owned();
    assert!(placed.ends_with('Z'), "{call}");
    assert!(call["answered_at"].is_null() && call["ended_at"].is_null(), "{call}");
    assert_eq!(call["duration_seconds"], 0, "{call}");
    let call_id = call["id"].as_str().unwrap().to_owned();
    let ring = bob_presence.expect("incoming_call").await;
    assert_eq!(ring["call_id"], call_id);
    assert_eq!(ring["caller_id"], ada_id);
    assert_eq!(ring["caller_username"], "ada");

    // Only Bob, its receiver, sees it pending; only Bob may accept.
    let (_, pending) = gb.get_bearer("/calls/pending", &bob).await;
    assert_eq!(pending["id"], call_id);
    assert_eq!(pending["call_token"], call["call_token"]);
    let (status, own) = ga.get_bearer("/calls/pending", &ada).await;
    assert_eq!(status, 200);
    assert!(own.is_null(), "the caller is not offered her own call: {own}");
    let (status, _) = post(ga, &format!("/calls/accept/{call_id}"), &ada).await;
    assert_eq!(status, 403);
    let (status, accepted) = post(gb, &format!("/calls/accept/{call_id}"), &bob).await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["status"], "ongoing");
    assert_eq!(
        accepted["started_at"],
        placed.as_str(),
        "started_at stays the creation time"
    );
    assert!(
        accepted["answered_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && *t >= *placed)
    );
    assert_eq!(accepted["duration_seconds"], 0);
    let pushed = ada_presence.expect("call_accepted").await;
    assert_eq!(pushed["call_id"], call_id);
    let (status, _) = post(gb, &format!("/calls/accept/{call_id}"), &bob).await;
    assert_eq!(status, 409, "accepting twice is a state conflict");
    let (_, active) = ga.get_bearer("/calls/active", &ada).await;
    assert_eq!(active["id"], call_id);

    // Signaling sockets on different replicas; Ada is told when Bob joins.
    let mut ada_call = ga.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let (status, state) = ga
        .get_bearer(&format!("/ws/webrtc/connection-state/{call_id}"), &ada)
        .await;
    assert_eq!(status, 200, "{state}");
    let mut bob_call = gb.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    let ready = ada_call.expect("connection_ready").await;
    assert_eq!(ready["user_id"], bob_id);

    ada_call
        .send_json(json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0 ada"}}))
        .await;
    let offer = bob_call.json().await;
    assert_eq!(offer["type"], "offer");
    assert_eq!(offer["from"], ada_id);
    assert_eq!(offer["offer"]["sdp"], "v=0 ada");
    bob_call
        .send_json(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0 bob"}}))
        .await;
    let answer = ada_call.expect("answer").await;
    assert_eq!(answer["from"], bob_id);
    assert_eq!(answer["answer"]["sdp"], "v=0 bob");
    let candidate =
        json!({"type": "ice_candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}});
    ada_call.send_json(candidate.clone()).await;
    let ice = bob_call.expect("ice_candidate").await;
    assert_eq!(ice["from"], ada_id);
    assert!(
        ice["candidate"]["candidate"]
            .as_str()
            .unwrap()
            .starts_with("candidate:1")
    );
    bob_call.send_json(candidate).await;
    assert_eq!(ada_call.expect("ice_candidate").await["from"], bob_id);
    bob_call
        .send_json(json!({"type": "connection_state", "state": "connected"}))
        .await;
    let state = ada_call.expect("connection_state").await;
    assert_eq!(state["user_id"], bob_id);
    assert_eq!(state["state"], "connected");
    ada_call.send_json(json!({"type": "ping"})).await;
    assert_eq!(ada_call.expect("pong").await["type"], "pong");

    // Chat goes to both, the sender included.
    ada_call
        .send_json(json!({"type": "chat_message", "text": "hello <b>bob</b> '; DROP TABLE calls;--", "timestamp": "2026-11-28T10:00:00Z"}))
        .await;
    for socket in [&mut ada_call, &mut bob_call] {
        let chat = socket.expect("chat_message").await;
        assert_eq!(chat["from"], ada_id);
        assert_eq!(chat["text"], "hello <b>bob</b> '; DROP TABLE calls;--");
        assert_eq!(chat["timestamp"], "2026-11-28T10:00:00Z");
    }

    // Cluster-wide socket state while both are connected.
    let (_, state) = gb
        .get_bearer(&format!("/ws/webrtc/connection-state/{call_id}"), &bob)
        .await;
    assert_eq!(state["user_count"], 2, "{state}");

    // Ada hangs up: both sockets get call_ended and are closed; Bob's presence is told.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ada_call.send_json(json!({"type": "end_call"})).await;
    for socket in [&mut ada_call, &mut bob_call] {
        let ended = socket.expect("call_ended").await;
        assert_eq!(ended["user_id"], ada_id);
        let (code, _) = socket.closed().await;
        assert_eq!(code, 1000);
    }
    let pushed = bob_presence.expect("call_ended").await;
    assert_eq!(pushed["call_id"], call_id);

    // History on both sides, newest first, with both names.
    for (gw, token) in [(ga, &ada), (gb, &bob)] {
        let (status, history) = gw.get_bearer("/calls/history", token).await;
        assert_eq!(status, 200, "{history}");
        let entry = &history[0];
        assert_eq!(entry["id"], call_id);
        assert_eq!(entry["status"], "completed");
        assert_eq!(entry["initiator_username"], "ada");
        assert_eq!(entry["receiver_username"], "bob");
        assert!(entry["duration_seconds"].as_i64().unwrap() >= 1, "{entry}");
        assert!(entry["ended_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(entry["started_at"], placed.as_str(), "{entry}");
        assert!(entry["ended_at"].as_str().unwrap() > placed.as_str(), "{entry}");
        assert_eq!(entry["call_token"], call["call_token"], "ended calls keep their token");
    }
    let (_, active) = ga.get_bearer("/calls/active", &ada).await;
    assert!(active.is_null());
    let (status, _) = post(ga, &format!("/calls/end/{call_id}"), &ada).await;
    assert_eq!(status, 409, "ending an ended call");

    // The personal-data export carries the call.
    let (_, export) = gb.get_bearer("/users/me/export", &bob).await;
    assert_eq!(export["calls"][0]["id"], call_id, "{export}");

    ada_presence.close().await;
    bob_presence.close().await;
    sides.second_signaling.stop().await.unwrap();
}

#[tokio::test]
async fn a_thousand_frames_cross_replicas_in_order_and_once() {
    let sides = two_sides(&[("SIGNALING_FRAME_RATE", "100000")]).await;
    let (fleet, ga, gb) = (&sides.fleet, &sides.a, &sides.b);
    let (ada_id, ada) = fleet.user(ga, "ada").await;
    let (bob_id, bob) = fleet.user(gb, "bob").await;
    let _bob_presence = go_online(gb, &bob_id, &bob).await;
    let (_, call) = ga
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    let (status, _) = post(gb, &format!("/calls/accept/{call_id}"), &bob).await;
    assert_eq!(status, 200);
    let mut bob_call = gb.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    let mut ada_call = ga.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    bob_call.expect("connection_ready").await;

    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            ada_call
                .send_json(json!({"type": "ice_candidate", "candidate": {"n": i}}))
                .await;
        }
        ada_call
    });
    let mut last_seq = 0;
    for i in 0..1000 {
        let frame = bob_call.expect("ice_candidate").await;
        assert_eq!(frame["candidate"]["n"], i, "frame {i} out of order: {frame}");
        assert_eq!(frame["from"], ada_id);
        let seq = frame["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "sequence numbers increase");
        last_seq = seq;
    }
    assert!(
        bob_call.next_within(Duration::from_millis(300)).await.is_none(),
        "no duplicates"
    );
    let _ = sender.await.unwrap();
    sides.second_signaling.stop().await.unwrap();
}

#[tokio::test]
async fn outsiders_are_refused_and_call_rules_hold() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let (cyd_id, cyd) = fleet.user(&gw, "cyd").await;

    // Offline, yourself, unknown, malformed.
    let (status, body) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!((status, body["detail"].as_str().unwrap()), (400, "user is offline"));
    let _bob_presence = go_online(&gw, &bob_id, &bob).await;
    let _cyd_presence = go_online(&gw, &cyd_id, &cyd).await;
    let (status, _) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": ada_id}))
        .await;
    assert_eq!(status, 400);
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, _) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": unknown}))
        .await;
    assert_eq!(status, 404);
    let (status, body) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": 42}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = gw
        .post_bearer("/calls/initiate", "not-a-token", json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 401);

    // Blocked either way.
    let (status, _) = post(&gw, &format!("/users/block/{ada_id}"), &cyd).await;
    assert_eq!(status, 200);
    let (status, _) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": cyd_id}))
        .await;
    assert_eq!(status, 403);

    // A call between Ada and Bob; Cyd can see nothing of it.
    let (status, call) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let call_id = call["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/calls/by-id/{call_id}"),
        format!("/ws/webrtc/connection-state/{call_id}"),
    ] {
        let (status, _) = gw.get_bearer(&path, &cyd).await;
        assert_eq!(status, 403, "{path}");
    }
    for action in ["accept", "reject", "end"] {
        let (status, _) = post(&gw, &format!("/calls/{action}/{call_id}"), &cyd).await;
        assert_eq!(status, 403, "{action}");
    }
    let (status, _) = gw.get_bearer("/ws/webrtc/active-connections", &ada).await;
    assert_eq!(status, 403, "admins only");
    let mut intruder = gw.socket(&format!("/ws/webrtc/{call_id}"), &cyd).await;
    let (code, reason) = intruder.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("not a participant"), "{reason}");
    // A presence socket for someone else's id is refused at the upgrade.
    assert_eq!(
        gw.try_socket(&format!("/calls/ws/{bob_id}"), &ada).await.err(),
        Some(403)
    );
    assert_eq!(
        gw.try_socket(&format!("/calls/ws/{ada_id}"), "forged").await.err(),
        Some(401)
    );

    // Either side busy: 409.
    let (status, _) = gw
        .post_bearer("/calls/initiate", &cyd, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 409);

    // The caller cancels a ringing call; the receiver is told.
    let (status, ended) = post(&gw, &format!("/calls/end/{call_id}"), &ada).await;
    assert_eq!(status, 200);
    assert_eq!(ended["status"], "cancelled");
    let mut late = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let (code, _) = late.closed().await;
    assert_eq!(code, 1008, "no socket on a closed call");

    // Rejecting: the receiver only.
    let (_, call) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    let (status, _) = post(&gw, &format!("/calls/reject/{call_id}"), &ada).await;
    assert_eq!(status, 403);
    let (status, rejected) = post(&gw, &format!("/calls/reject/{call_id}"), &bob).await;
    assert_eq!((status, rejected["status"].as_str().unwrap()), (200, "rejected"));
    let (status, _) = post(&gw, &format!("/calls/accept/{call_id}"), &bob).await;
    assert_eq!(status, 409);

    // History pages with a cursor.
    let (status, page) = gw
        .send(gw.http.get(gw.url("/calls/history?limit=1")).bearer_auth(&ada))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["id"], call_id, "newest first");
    let response = gw
        .http
        .get(gw.url("/calls/history?limit=1"))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    let cursor = response.headers()["x-next-cursor"].to_str().unwrap().to_owned();
    let (_, next) = gw
        .get_bearer(&format!("/calls/history?limit=1&cursor={cursor}"), &ada)
        .await;
    assert_eq!(next[0]["status"], "cancelled");
    let (status, _) = gw.get_bearer("/calls/history?limit=0", &ada).await;
    assert_eq!(status, 400);
    let (status, _) = gw.get_bearer("/calls/history?cursor=garbage", &ada).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn racing_initiates_let_exactly_one_through() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (_, ada) = fleet.user(&gw, "ada").await;
    let (_, bob) = fleet.user(&gw, "bob").await;
    let (cyd_id, cyd) = fleet.user(&gw, "cyd").await;
    let _cyd_presence = go_online(&gw, &cyd_id, &cyd).await;
    for _round in 0..3 {
        let (first, second) = tokio::join!(
            gw.post_bearer("/calls/initiate", &ada, json!({"receiver_id": cyd_id})),
            gw.post_bearer("/calls/initiate", &bob, json!({"receiver_id": cyd_id})),
        );
        let mut statuses = [first.0, second.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "{first:?} {second:?}");
        let winner = if first.0 == 200 {
            (&first.1, &ada)
        } else {
            (&second.1, &bob)
        };
        let id = winner.0["id"].as_str().unwrap();
        let (status, _) = post(&gw, &format!("/calls/end/{id}"), winner.1).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn an_unanswered_call_is_missed_after_the_ring_timeout() {
    let fleet = Fleet::start_with(&[("CALL_RING_TIMEOUT", "1")]).await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let mut ada_presence = go_online(&gw, &ada_id, &ada).await;
    let mut bob_presence = go_online(&gw, &bob_id, &bob).await;
    let (_, call) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    for socket in [&mut ada_presence, &mut bob_presence] {
        let missed = socket.expect("call_missed").await;
        assert_eq!(missed["call_id"], call_id);
    }
    assert_eq!(ada_call.expect("call_ended").await["status"], "missed");
    let (_, fetched) = gw.get_bearer(&format!("/calls/by-id/{call_id}"), &bob).await;
    assert_eq!(fetched["status"], "missed");
    assert_eq!(fetched["duration_seconds"], 0);
    // Both are free again.
    let (status, _) = gw
        .post_bearer("/calls/initiate", &bob, json!({"receiver_id": ada_id}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_frames_get_errors() {
    let fleet = Fleet::start_with(&[("SIGNALING_FRAME_RATE", "20")]).await;
    let gw = fleet.gateway(&[]).await;
    let (_, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let _bob_presence = go_online(&gw, &bob_id, &bob).await;
    let call_id = common::ring(&gw, &ada, &bob_id).await;
    let mut socket = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;

    for (frame, expected) in [
        ("{not json".to_owned(), "not JSON"),
        (r#"{"type":"teleport"}"#.to_owned(), "unknown message type"),
        (r#"{"type":"offer"}"#.to_owned(), "needs a \"offer\" field"),
        (r#"{"kind":"offer"}"#.to_owned(), "\"type\" is required"),
        (
            format!(r#"{{"type":"offer","offer":"{}"}}"#, "x".repeat(70 * 1024)),
            "too large",
        ),
    ] {
        socket.send_text(&frame).await;
        let error = socket.expect("error").await;
        assert!(error["message"].as_str().unwrap().contains(expected), "{error}");
    }
    socket.send_json(json!({"type": "ping"})).await;
    socket.expect("pong").await;
    // Floods are slowed and, when sustained, closed: original_client.rs.
}

/// `from` sends candidates numbered `range`; `to` gets each once, in
/// order, with sequence numbers following `last_seq` without a gap (any
/// first one when it is 0). Returns the last one.
async fn relay_candidates(
    from: &mut Socket,
    to: &mut Socket,
    from_id: &str,
    range: std::ops::Range<u32>,
    mut last_seq: u64,
) -> u64 {
    for i in range.clone() {
        from.send_json(json!({"type": "ice_candidate", "candidate": {"n": i}}))
            .await;
    }
    for i in range {
        let frame = to.expect("ice_candidate").await;
        assert_eq!(frame["candidate"]["n"], i, "{frame}");
        assert_eq!(frame["from"], from_id);
        let seq = frame["seq"].as_u64().unwrap();
        assert!(last_seq == 0 || seq == last_seq + 1, "no gap: {seq} after {last_seq}");
        last_seq = seq;
    }
    last_seq
}

#[tokio::test]
async fn frames_keep_flowing_while_the_signaling_replica_stops_and_only_state_changes_wait() {
    let fleet = Fleet::start_with(&[("SIGNALING_FRAME_RATE", "100000")]).await;
    let spare = fleet.signaling_replica(&[("SIGNALING_FRAME_RATE", "100000")]).await;
    let first = fleet.signaling.url();
    // Ada's gateway knows only the first replica; Bob's only the spare.
    let ga = fleet.gateway(&[("SIGNALING_GRPC_URL", first.as_str())]).await;
    let gb = fleet.gateway(&[("SIGNALING_GRPC_URL", spare.url().as_str())]).await;
    let (ada_id, ada) = fleet.user(&ga, "ada").await;
    let (bob_id, bob) = fleet.user(&gb, "bob").await;
    let _bob_presence = go_online(&gb, &bob_id, &bob).await;
    let (_, call) = ga
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    post(&gb, &format!("/calls/accept/{call_id}"), &bob).await;
    let mut ada_call = ga.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let mut bob_call = gb.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    ada_call.expect("connection_ready").await;

    // Bob sends 100 frames; halfway, the only replica Ada's gateway knows
    // stops (SIGTERM). Frames do not pass through it: her socket stays open
    // and gets every frame once, in order.
    let last_seq = relay_candidates(&mut bob_call, &mut ada_call, &bob_id, 0..50, 0).await;
    // The replica stops while Bob sends the rest: its drain waits for nothing here.
    let stopping = tokio::spawn(fleet.signaling.stop());
    relay_candidates(&mut bob_call, &mut ada_call, &bob_id, 50..100, last_seq).await;
    stopping.await.unwrap().unwrap();
    assert!(
        ada_call.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing twice"
    );
    // Ada's frames reach Bob as well, with her replica gone.
    ada_call
        .send_json(json!({"type": "chat_message", "text": "still here"}))
        .await;
    assert_eq!(bob_call.expect("chat_message").await["text"], "still here");
    assert_eq!(ada_call.expect("chat_message").await["from"], ada_id);
    // A state change waits for a replica: Ada's gateway has none.
    ada_call.send_json(json!({"type": "end_call"})).await;
    assert_eq!(
        ada_call.expect("error").await["message"],
        "could not end the call; try again"
    );
    // Bob's has one: the call ends, and both sockets close, on both gateways.
    bob_call.send_json(json!({"type": "end_call"})).await;
    for socket in [&mut ada_call, &mut bob_call] {
        let ended = socket.expect("call_ended").await;
        assert_eq!(ended["user_id"], bob_id);
        assert_eq!(socket.closed().await.0, 1000);
    }
    spare.stop().await.unwrap();
}

#[tokio::test]
async fn a_draining_gateway_tells_its_sockets_to_reconnect() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let other = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&other, "bob").await;
    let mut ada_presence = go_online(&gw, &ada_id, &ada).await;
    let _bob_presence = go_online(&other, &bob_id, &bob).await;
    let (_, call) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(gw.stop());
    for socket in [&mut ada_presence, &mut ada_call] {
        let (code, reason) = socket.closed().await;
        assert_eq!(code, 1012, "{reason}");
    }
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The client lands on the other gateway and carries on.
    let mut again = other.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    again.send_json(json!({"type": "ping"})).await;
    again.expect("pong").await;
}

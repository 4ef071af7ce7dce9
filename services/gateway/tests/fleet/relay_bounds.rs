//! What one participant can make the fleet hold for the other, seen by
//! clients: relayed payloads are capped (SDP and ICE at 16 KiB, chat at
//! 4,000 characters), a mailbox keeps at most 4 MiB (a resume older than
//! that gets what is left, in order), a resume from `last_seq=0` is served
//! whole, and before the callee accepts the caller relays at most 64 frames.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Gateway, Socket, answered_call, go_online, ring};
use serde_json::{Value, json};

/// A fleet whose sockets are not slowed (the tests send hundreds of frames).
async fn fleet() -> (Fleet, Gateway) {
    let fleet = Fleet::start_with(&[("SIGNALING_FRAME_RATE", "100000")]).await;
    let gw = fleet.gateway(&[]).await;
    (fleet, gw)
}

/// Ada and Bob (online), their ids and tokens.
async fn ada_and_bob(fleet: &Fleet, gw: &Gateway) -> ((String, String), (String, String), Socket) {
    let ada = fleet.user(gw, "ada").await;
    let (bob_id, bob) = fleet.user(gw, "bob").await;
    let presence = go_online(gw, &bob_id, &bob).await;
    (ada, (bob_id, bob), presence)
}

/// The next `ack` or `error` frame (others skipped).
async fn ack_or_error(socket: &mut Socket) -> Value {
    loop {
        let frame = socket.json().await;
        if frame["type"] == "ack" || frame["type"] == "error" {
            return frame;
        }
    }
}

/// Sends one frame numbered `cseq` of client session `cid`: the server's
/// `ack` or `error`.
async fn send_numbered(socket: &mut Socket, mut frame: Value, cid: &str, cseq: u64) -> Value {
    frame["cid"] = json!(cid);
    frame["cseq"] = json!(cseq);
    socket.send_json(frame).await;
    ack_or_error(socket).await
}

/// [`send_numbered`], which must be acknowledged: every frame sent before
/// it was handled too.
async fn send_acked(socket: &mut Socket, frame: Value, cid: &str, cseq: u64) {
    let reply = send_numbered(socket, frame, cid, cseq).await;
    assert_eq!(reply, json!({"type": "ack", "cseq": cseq}));
}

fn candidate(n: u64, pad: usize) -> Value {
    json!({"type": "ice_candidate", "candidate": {"n": n, "candidate": "x".repeat(pad)}})
}

#[tokio::test]
async fn sdp_and_candidates_over_16_kib_get_an_error_and_are_not_relayed() {
    let (fleet, gw) = fleet().await;
    let ((ada_id, ada), (bob_id, bob), _presence) = ada_and_bob(&fleet, &gw).await;
    let call_id = answered_call(&gw, &ada, &gw, &bob_id, &bob).await;
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let mut bob_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    ada_call.expect("connection_ready").await;

    // 17 KiB of SDP: under the 64 KiB frame limit, over the payload cap.
    let sdp = |size: usize| json!({"type": "offer", "sdp": format!("v=0\r\n{}", "a".repeat(size))});
    let oversized = [
        (
            true,
            json!({"type": "offer", "offer": sdp(17 * 1024)}),
            "offer too large (at most 16 KiB)",
        ),
        (
            true,
            candidate(0, 17 * 1024),
            "ice_candidate too large (at most 16 KiB)",
        ),
        (
            false,
            json!({"type": "answer", "answer": sdp(17 * 1024)}),
            "answer too large (at most 16 KiB)",
        ),
    ];
    for (from_ada, frame, message) in oversized {
        let socket = if from_ada { &mut ada_call } else { &mut bob_call };
        socket.send_json(frame).await;
        let error = socket.expect("error").await;
        assert_eq!(error["message"], message, "{error}");
        // The socket stays open.
        socket.send_json(json!({"type": "ping"})).await;
        socket.expect("pong").await;
    }
    // Just under the cap: relayed. The peers' next frames are these, so the
    // oversized ones never reached them.
    let offer = sdp(15 * 1024);
    ada_call.send_json(json!({"type": "offer", "offer": offer})).await;
    let got = bob_call.expect("offer").await;
    assert_eq!((&got["offer"], &got["from"]), (&offer, &json!(ada_id)));
    ada_call.send_json(candidate(1, 15 * 1024)).await;
    assert_eq!(bob_call.expect("ice_candidate").await["candidate"]["n"], 1);
    bob_call
        .send_json(json!({"type": "answer", "answer": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await;
    assert_eq!(ada_call.expect("answer").await["from"], bob_id);
}

#[tokio::test]
async fn chat_longer_than_4000_characters_gets_an_error_and_is_not_relayed() {
    let (fleet, gw) = fleet().await;
    let ((ada_id, ada), (bob_id, bob), _presence) = ada_and_bob(&fleet, &gw).await;
    let call_id = answered_call(&gw, &ada, &gw, &bob_id, &bob).await;
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let mut bob_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    ada_call.expect("connection_ready").await;

    // Counted in characters, not bytes: 4,000 two-byte characters pass.
    let longest = "é".repeat(4000);
    ada_call
        .send_json(json!({"type": "chat_message", "text": longest}))
        .await;
    for socket in [&mut ada_call, &mut bob_call] {
        let chat = socket.expect("chat_message").await;
        assert_eq!((&chat["text"], &chat["from"]), (&json!(longest), &json!(ada_id)));
    }
    ada_call
        .send_json(json!({"type": "chat_message", "text": "x".repeat(4001)}))
        .await;
    let error = ada_call.expect("error").await;
    assert_eq!(error["message"], "chat message too long (at most 4000 characters)");
    ada_call
        .send_json(json!({"type": "chat_message", "text": "short"}))
        .await;
    // Bob's next chat, and Ada's own copy, are the short one.
    for socket in [&mut ada_call, &mut bob_call] {
        assert_eq!(socket.expect("chat_message").await["text"], "short");
    }
}

#[tokio::test]
async fn before_the_callee_accepts_the_caller_relays_at_most_64_frames() {
    let (fleet, gw) = fleet().await;
    let ((_, ada), (bob_id, bob), _presence) = ada_and_bob(&fleet, &gw).await;
    let call_id = ring(&gw, &ada, &bob_id).await;
    let path = format!("/ws/webrtc/{call_id}");
    let mut ada_call = gw.socket(&path, &ada).await;

    // An offer and 63 candidates while it rings: relayed (acknowledged).
    send_acked(
        &mut ada_call,
        json!({"type": "offer", "offer": {"sdp": "v=0"}}),
        "page",
        1,
    )
    .await;
    for cseq in 2..=64 {
        send_acked(&mut ada_call, candidate(cseq, 0), "page", cseq).await;
    }
    // The 65th is refused with an error, and not acknowledged…
    let refusal = json!({
        "type": "error",
        "message": "the call has not been accepted yet: at most 64 messages are relayed before"
    });
    let reply = send_numbered(&mut ada_call, candidate(65, 0), "page", 65).await;
    assert_eq!(reply, refusal);
    // …whatever its type, and from a new socket too.
    let chat = json!({"type": "chat_message", "text": "hello?"});
    assert_eq!(send_numbered(&mut ada_call, chat, "page", 65).await, refusal);
    ada_call.close().await;
    let mut ada_call = gw.socket(&path, &ada).await;
    assert_eq!(
        send_numbered(&mut ada_call, candidate(65, 0), "page", 65).await,
        refusal
    );

    // Bob accepts: the frame goes through when sent again (the server looks
    // the call up again at most once a second).
    let (status, body) = gw
        .post_bearer(&format!("/calls/accept/{call_id}"), &bob, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send_numbered(&mut ada_call, candidate(65, 0), "page", 65).await;
        if reply == json!({"type": "ack", "cseq": 65}) {
            break;
        }
        assert_eq!(reply, refusal);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused 5 s after the accept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And then without a bound.
    for cseq in 66..=200 {
        send_acked(&mut ada_call, candidate(cseq, 0), "page", cseq).await;
    }

    // Bob reads all of it, in order, each once.
    let mut bob_call = gw.socket(&format!("{path}?last_seq=0"), &bob).await;
    assert_eq!(bob_call.expect("offer").await["offer"]["sdp"], "v=0");
    for n in 2..=200 {
        let frame = bob_call.expect("ice_candidate").await;
        assert_eq!(frame["candidate"]["n"], n, "{frame}");
    }
}

#[tokio::test]
async fn a_resume_from_last_seq_0_gets_every_buffered_frame_in_order() {
    let (fleet, gw) = fleet().await;
    let ((_, ada), (bob_id, bob), _presence) = ada_and_bob(&fleet, &gw).await;
    let call_id = answered_call(&gw, &ada, &gw, &bob_id, &bob).await;
    let path = format!("/ws/webrtc/{call_id}");
    let mut ada_call = gw.socket(&path, &ada).await;
    // More than three pages of replay.
    for n in 0..800 {
        ada_call.send_json(candidate(n, 0)).await;
    }
    send_acked(&mut ada_call, json!({"type": "ping"}), "page", 1).await;

    let mut bob_call = gw.socket(&format!("{path}?last_seq=0"), &bob).await;
    let mut last_seq = 0;
    for n in 0..800 {
        let frame = bob_call.expect("ice_candidate").await;
        assert_eq!(frame["candidate"]["n"], n, "{frame}");
        let seq = frame["seq"].as_u64().unwrap();
        assert!(last_seq == 0 || seq == last_seq + 1, "{seq} after {last_seq}");
        last_seq = seq;
    }
    // Live frames follow on.
    ada_call.send_json(candidate(800, 0)).await;
    let frame = bob_call.expect("ice_candidate").await;
    assert_eq!(
        (frame["candidate"]["n"].as_u64(), frame["seq"].as_u64()),
        (Some(800), Some(last_seq + 1))
    );
}

#[tokio::test]
async fn a_mailbox_holds_at_most_4_mib_and_a_resume_from_before_gets_the_rest() {
    let (fleet, gw) = fleet().await;
    let ((_, ada), (bob_id, bob), _presence) = ada_and_bob(&fleet, &gw).await;
    let call_id = answered_call(&gw, &ada, &gw, &bob_id, &bob).await;
    let path = format!("/ws/webrtc/{call_id}");
    let mut ada_call = gw.socket(&path, &ada).await;
    // 5 MiB of the largest candidates for a Bob who is not there.
    for n in 0..330 {
        ada_call.send_json(candidate(n, 15 * 1024)).await;
    }
    send_acked(&mut ada_call, json!({"type": "ping"}), "page", 1).await;

    // The fleet's Redis, under its prefix.
    let settings = unilink_test_support::settings(&fleet.db, &fleet.prefix, &[]);
    let redis = unilink_bus::Redis::connect(&settings.redis).await.unwrap();
    let buffered = redis
        .script(
            "local n = 0 for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do n = n + #m end return n",
            vec![redis.key(&format!("relay:{call_id}:{bob_id}:buf"))],
            vec![],
        )
        .await
        .unwrap()[0]
        .as_deref()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(buffered <= 4 * 1024 * 1024, "{buffered} bytes buffered for Bob");

    // Bob, back from the start: the oldest frames are gone, the rest come
    // in order up to the newest.
    let mut bob_call = gw.socket(&format!("{path}?last_seq=0"), &bob).await;
    let first = bob_call.expect("ice_candidate").await["candidate"]["n"]
        .as_u64()
        .unwrap();
    assert!((1..100).contains(&first), "the first frame still buffered is #{first}");
    for n in first + 1..330 {
        let frame = bob_call.expect("ice_candidate").await;
        assert_eq!(frame["candidate"]["n"], n);
    }
}

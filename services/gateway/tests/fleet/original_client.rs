//! The original UniLink web client, replayed request by request: what it
//! sends and what it reads, as it does against the gateway, unchanged (its
//! habits are the contract: ARCHITECTURE.md, "Public API"). Then what real
//! clients bring that our own never did: a burst of ICE candidates, a flood,
//! a full logout with sockets open, and a frozen phone.

use unilink_test_support::fleet as common;

use std::time::{Duration, Instant};

use common::{Gateway, Received, Socket, USER_FIELDS, answered_call, go_online, ring, two_sides, two_sides_with};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Where the original client's dev server runs, and so its pages' origin.
const ORIGIN: &str = "http://localhost:3000";
const PASSWORD: &str = "correct horse battery";

/// The original client in one browser: the token it keeps in localStorage,
/// and its page origin on every request.
struct Browser<'a> {
    gw: &'a Gateway,
    token: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(gw: &'a Gateway) -> Browser<'a> {
        Browser { gw, token: None }
    }

    fn token(&self) -> &str {
        self.token.as_deref().expect("logged in")
    }

    /// A `fetch` from the page: JSON body when there is one, the bearer
    /// token once it has one; its answer must be readable cross-origin.
    async fn fetch(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.gw.http.request(method, self.gw.url(path)).header("Origin", ORIGIN);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            response
                .headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some(ORIGIN),
            "{path}: the page could not read this answer"
        );
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        };
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.fetch(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.fetch(reqwest::Method::POST, path, body).await
    }

    /// A full page load: on unload `POST /auth/logout` (keepalive, bearer,
    /// no body); the next page goes on with the same token and first asks
    /// who is logged in.
    async fn reload(&self) {
        let (status, body) = self.post("/auth/logout", None).await;
        assert_eq!(status, 200, "logout on unload: {body}");
        let (status, me) = self.get("/users/me").await;
        assert_eq!(status, 200, "the same token after the reload: {me}");
        assert_user(&me);
    }

    /// The presence socket: `?token=<jwt>`, then the text `ping` (every 30 s).
    async fn presence(&self, user_id: &str) -> Socket {
        let mut socket = self
            .gw
            .browser_socket(&format!("/calls/ws/{user_id}?token={}", self.token()), ORIGIN)
            .await;
        socket.send_text("ping").await;
        socket.expect_text("pong").await;
        socket
    }

    /// The call socket: `?token=Bearer%20<jwt>`.
    async fn call_socket(&self, call_id: &str) -> Socket {
        self.gw
            .browser_socket(&format!("/ws/webrtc/{call_id}?token=Bearer%20{}", self.token()), ORIGIN)
            .await
    }

    /// Sign-up, verification from the mail, and the OTP login.
    async fn sign_up_and_log_in(&mut self, fleet: &common::Fleet, email: &str, username: &str) -> Value {
        let (status, user) = self
            .post(
                "/auth/register",
                Some(json!({"email": email, "username": username, "full_name": "Test User", "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "{user}");
        assert_user(&user);
        assert!(user["bio"].is_null() && user["profile_picture"].is_null(), "{user}");
        let mail = fleet.mail(email, 1).await;
        assert!(
            mail.text().contains(&format!("{ORIGIN}/verify?token=")),
            "the link opens the client: {}",
            mail.text()
        );
        let token = mail.token_after("verify?token=").expect("a verification link");
        let (status, verified) = self.post("/auth/verify-email", Some(json!({"token": token}))).await;
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["token_type"], "bearer");
        assert!(verified["access_token"].is_string());
        assert_user(&verified["user"]);

        let (status, ack) = self
            .post("/auth/login", Some(json!({"email": email, "password": PASSWORD})))
            .await;
        assert_eq!(status, 202, "{ack}");
        assert_eq!(ack["otp_required"], true);
        assert!(ack["message"].is_string());
        let otp = fleet.mail(email, 2).await.digits(6).expect("a code in the mail");
        let (status, session) = self
            .post("/auth/login/verify-otp", Some(json!({"email": email, "otp": otp})))
            .await;
        assert_eq!(status, 200, "{session}");
        assert_eq!(session["token_type"], "bearer");
        assert_user(&session["user"]);
        self.token = Some(session["access_token"].as_str().unwrap().to_owned());
        // Off to the dashboard: a full page load.
        self.reload().await;
        session["user"].clone()
    }

    /// Polls `GET /calls/pending` (every 5 s in the client; faster here) until
    /// a call shows up.
    async fn incoming_call(&self) -> Value {
        unilink_test_support::eventually("an incoming call", Duration::from_secs(20), || async {
            let (status, pending) = self.get("/calls/pending").await;
            assert_eq!(status, 200, "{pending}");
            (!pending.is_null()).then_some(pending)
        })
        .await
    }
}

/// The socket at `from` and the other one.
fn pair(sockets: &mut [Socket; 2], from: usize) -> (&mut Socket, &mut Socket) {
    let (first, second) = sockets.split_at_mut(1);
    if from == 0 {
        (&mut first[0], &mut second[0])
    } else {
        (&mut second[0], &mut first[0])
    }
}

/// The user JSON the client reads.
fn assert_user(user: &Value) {
    for field in USER_FIELDS {
        assert!(user.get(field).is_some(), "user JSON lacks {field}: {user}");
    }
    for field in ["bio", "profile_picture"] {
        assert!(
            user[field].is_null() || user[field].as_str().is_some_and(|s| !s.is_empty()),
            "{user}"
        );
    }
}

/// The call JSON the client reads: `started_at` the creation time and never
/// null, `duration_seconds` an integer (0 until it ended), `call_token`.
fn assert_call(call: &Value) {
    for field in [
        "id",
        "initiator_id",
        "receiver_id",
        "status",
        "call_token",
        "started_at",
    ] {
        assert!(call[field].as_str().is_some_and(|s| !s.is_empty()), "{field}: {call}");
    }
    let started = call["started_at"].as_str().unwrap();
    assert!(started.ends_with('Z'), "{call}");
    let duration = call["duration_seconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("integer duration: {call}"));
    assert!(duration >= 0);
    match call["status"].as_str().unwrap() {
        "pending" | "ongoing" => {
            assert!(call["ended_at"].is_null(), "{call}");
            assert_eq!(duration, 0, "{call}");
        }
        _ => {
            let ended = call["ended_at"].as_str().unwrap_or_else(|| panic!("ended_at: {call}"));
            assert!(started <= ended, "started after it ended: {call}");
        }
    }
}

#[tokio::test]
async fn the_original_client_works_unchanged_across_two_replicas() {
    let sides = two_sides(&[("FRONTEND_URL", ORIGIN)]).await;
    let (fleet, ga, gb) = (&sides.fleet, &sides.a, &sides.b);
    let mut ada = Browser::new(ga);
    let mut bob = Browser::new(gb);
    let ada_user = ada.sign_up_and_log_in(fleet, "ada@kiit.ac.in", "ada").await;
    let bob_user = bob.sign_up_and_log_in(fleet, "bob@kiit.ac.in", "bob").await;
    let (ada_id, bob_id) = (ada_user["id"].as_str().unwrap(), bob_user["id"].as_str().unwrap());
    common::wait_verified_profile(&fleet.db, ada_id, Duration::from_secs(20)).await;
    common::wait_verified_profile(&fleet.db, bob_id, Duration::from_secs(20)).await;

    // The dashboard: presence sockets, and Bob in Ada's online list.
    let ada_presence = ada.presence(ada_id).await;
    let mut bob_presence = bob.presence(bob_id).await;
    let available = unilink_test_support::eventually("bob online for ada", Duration::from_secs(10), || async {
        let (status, list) = ada.get("/calls/available").await;
        assert_eq!(status, 200, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == bob_id && u["is_online"] == true)
            .cloned()
    })
    .await;
    for field in ["id", "username", "full_name", "profile_picture", "bio", "is_online"] {
        assert!(available.get(field).is_some(), "{field}: {available}");
    }
    assert!(available["bio"].is_null() && available["profile_picture"].is_null());
    let (status, seen) = ada.get(&format!("/users/{bob_id}")).await;
    assert_eq!(status, 200);
    assert_user(&seen);
    assert_eq!(seen["is_online"], true);

    // Ada rings Bob; only Bob's poll of /calls/pending offers it.
    let (status, call) = ada.post("/calls/initiate", Some(json!({"receiver_id": bob_id}))).await;
    assert_eq!(status, 200, "{call}");
    assert_call(&call);
    assert_eq!(call["status"], "pending");
    let call_id = call["id"].as_str().unwrap().to_owned();
    let pending = bob.incoming_call().await;
    assert_call(&pending);
    assert_eq!(pending["id"], call_id.as_str());
    let (status, own) = ada.get("/calls/pending").await;
    assert_eq!(status, 200);
    assert!(own.is_null(), "the caller is not offered her own call: {own}");
    let (status, accepted) = bob.post(&format!("/calls/accept/{call_id}"), None).await;
    assert_eq!(status, 200, "{accepted}");
    assert_call(&accepted);
    assert_eq!(accepted["status"], "ongoing");
    assert_eq!(
        accepted["started_at"], call["started_at"],
        "started_at is when it was placed"
    );
    let (status, by_id) = ada.get(&format!("/calls/by-id/{call_id}")).await;
    assert_eq!(status, 200);
    assert_call(&by_id);

    // Signaling, each on its own gateway and signaling replica.
    let mut ada_call = ada.call_socket(&call_id).await;
    let mut bob_call = bob.call_socket(&call_id).await;
    let ready = ada_call.expect("connection_ready").await;
    assert_eq!(ready["user_id"], bob_id);
    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"});
    ada_call.send_json(json!({"type": "offer", "offer": offer})).await;
    let got = bob_call.expect("offer").await;
    assert_eq!((&got["offer"], &got["from"]), (&offer, &json!(ada_id)));
    let answer = json!({"type": "answer", "sdp": "v=0\r\n"});
    bob_call.send_json(json!({"type": "answer", "answer": answer})).await;
    let got = ada_call.expect("answer").await;
    assert_eq!((&got["answer"], &got["from"]), (&answer, &json!(bob_id)));
    let mut call_sockets = [ada_call, bob_call];
    let ids = [ada_id, bob_id];
    for from in [0, 1] {
        let (sender, peer) = pair(&mut call_sockets, from);
        for n in 0..3 {
            let candidate = json!({"candidate": format!("candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host", 50000 + n), "sdpMid": "0", "sdpMLineIndex": 0});
            sender
                .send_json(json!({"type": "ice_candidate", "candidate": candidate}))
                .await;
            let got = peer.expect("ice_candidate").await;
            assert_eq!((&got["candidate"], &got["from"]), (&candidate, &json!(ids[from])));
        }
    }
    // Chat both ways; the sender gets its own message back too.
    for (from, text) in [(0, "hi bob"), (1, "hi ada")] {
        let timestamp = "2026-12-02T18:00:00.000Z";
        let (sender, peer) = pair(&mut call_sockets, from);
        sender
            .send_json(json!({"type": "chat_message", "text": text, "timestamp": timestamp}))
            .await;
        for socket in [sender, peer] {
            let chat = socket.expect("chat_message").await;
            assert_eq!(
                (&chat["from"], &chat["text"]),
                (&json!(ids[from]), &json!(text)),
                "{chat}"
            );
            assert_eq!(chat["timestamp"], timestamp);
        }
    }
    let [mut ada_call, mut bob_call] = call_sockets;

    // Hang-up: `end_call`, then `POST /calls/end` too (a 409 is fine).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ada_call.send_json(json!({"type": "end_call"})).await;
    let (status, ended) = ada.post(&format!("/calls/end/{call_id}"), None).await;
    assert!(status == 409 || status == 200, "{status} {ended}");
    for socket in [&mut ada_call, &mut bob_call] {
        let ended = socket.expect("call_ended").await;
        assert_eq!(ended["user_id"], ada_id);
        assert_eq!(socket.closed().await.0, 1000);
    }
    let pushed = bob_presence.expect("call_ended").await;
    assert_eq!(pushed["call_id"], call_id.as_str());
    assert_call(&pushed["call"]);
    // Back to the dashboard (a full page load), then the history.
    ada_presence.close().await;
    bob_presence.close().await;
    for browser in [&ada, &bob] {
        browser.reload().await;
        let (status, history) = browser.get("/calls/history").await;
        assert_eq!(status, 200, "{history}");
        let entry = &history[0];
        assert_call(entry);
        assert_eq!(entry["id"], call_id.as_str());
        assert_eq!(entry["status"], "completed");
        assert_eq!(entry["started_at"], call["started_at"]);
        assert_eq!(entry["call_token"], call["call_token"]);
        assert!(entry["duration_seconds"].as_i64().unwrap() >= 1, "{entry}");
        assert_eq!(
            (&entry["initiator_username"], &entry["receiver_username"]),
            (&json!("ada"), &json!("bob"))
        );
    }
    // After all those unloads, both are still themselves and can go online again.
    let _ada_presence = ada.presence(ada_id).await;
    let (status, me) = ada.get("/users/me").await;
    assert_eq!((status, &me["id"]), (200, &json!(ada_id)));
}

#[tokio::test]
async fn a_full_logout_closes_that_sessions_sockets_on_every_replica_and_no_others() {
    let sides = two_sides(&[]).await;
    let (fleet, ga, gb) = (&sides.fleet, &sides.a, &sides.b);
    let first = fleet.session(ga, "ada").await;
    let ada_id = first["user"]["id"].as_str().unwrap().to_owned();
    let phone = first["access_token"].as_str().unwrap().to_owned();
    // A second login (another device): another session.
    let (status, _) = gb
        .post("/auth/login", json!({"email": "ada@kiit.ac.in", "password": PASSWORD}))
        .await;
    assert_eq!(status, 202);
    let otp = fleet.mail("ada@kiit.ac.in", 3).await.digits(6).unwrap();
    let (status, second) = gb
        .post("/auth/login/verify-otp", json!({"email": "ada@kiit.ac.in", "otp": otp}))
        .await;
    assert_eq!(status, 200, "{second}");
    let laptop = second["access_token"].as_str().unwrap().to_owned();
    let (bob_id, bob) = fleet.user(gb, "bob").await;

    let mut phone_presence = go_online(ga, &ada_id, &phone).await;
    let mut laptop_presence = go_online(gb, &ada_id, &laptop).await;
    let _bob_presence = go_online(gb, &bob_id, &bob).await;
    let call_id = answered_call(ga, &phone, gb, &bob_id, &bob).await;
    let mut phone_call = ga.socket(&format!("/ws/webrtc/{call_id}"), &phone).await;
    let mut bob_call = gb.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    phone_call.expect("connection_ready").await;

    // The phone logs out in full, through the other gateway.
    let (status, body) = gb
        .post_bearer("/auth/logout", &phone, json!({"refresh_token": first["refresh_token"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    for (name, socket) in [("presence", &mut phone_presence), ("call", &mut phone_call)] {
        let (code, reason) = socket.closed().await;
        assert_eq!(
            (code, reason.as_str()),
            (1008, "logged out"),
            "the phone's {name} socket"
        );
    }
    assert_eq!(ga.get_bearer("/users/me", &phone).await.0, 401);
    // The laptop's session is untouched: its socket answers, its token works.
    laptop_presence.send_text("ping").await;
    laptop_presence.expect_text("pong").await;
    assert_eq!(ga.get_bearer("/users/me", &laptop).await.0, 200);
    // Bob learns that the phone left the call (after the reconnect grace).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match bob_call
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Received::Text(t)) if t.contains("user_disconnected") => {
                assert!(t.contains(&ada_id), "{t}");
                break;
            }
            Some(Received::Text(_)) => {}
            other => panic!("bob was not told that the phone left: {other:?}"),
        }
    }
}

/// Sends `count` ICE candidates back to back on `from`; they must all reach
/// `to`, in order, and the sender is never answered with an error.
async fn burst(from: Socket, to: &mut Socket, count: usize) -> Duration {
    let (mut sink, mut replies) = from.into_inner().split();
    let started = Instant::now();
    let sending = async {
        for n in 0..count {
            let frame = json!({"type": "ice_candidate", "candidate": {"candidate": format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"), "sdpMid": "0"}});
            sink.send(Message::text(frame.to_string())).await.expect("send");
        }
    };
    let receiving = async {
        for n in 0..count {
            let got = to.expect("ice_candidate").await;
            let text = got["candidate"]["candidate"].as_str().unwrap().to_owned();
            assert!(
                text.starts_with(&format!("candidate:{n} ")),
                "frame {n} arrived as {text}"
            );
        }
        started.elapsed()
    };
    let (_, took) = tokio::join!(sending, receiving);
    // Nothing came back to the sender: no error, no refusal.
    // (The gateway's WebSocket pings are not answers.)
    if let Ok(Some(Ok(message @ Message::Text(_)))) =
        tokio::time::timeout(Duration::from_millis(300), replies.next()).await
    {
        panic!("the sender was answered: {message:?}");
    }
    took
}

#[tokio::test]
async fn bursts_of_ice_candidates_are_slowed_never_dropped_on_one_replica_and_across() {
    // The default frame rate (50/s): 500 candidates take seconds, none is lost.
    let sides = two_sides(&[]).await;
    let (fleet, ga, gb) = (&sides.fleet, &sides.a, &sides.b);
    let mut calls = Vec::new();
    for (caller, callee, caller_gw, callee_gw) in [("ada", "bob", ga, gb), ("cyd", "dan", ga, ga)] {
        let (_, caller_token) = fleet.user(caller_gw, caller).await;
        let (callee_id, callee_token) = fleet.user(callee_gw, callee).await;
        let _presence = go_online(callee_gw, &callee_id, &callee_token).await;
        let id = answered_call(caller_gw, &caller_token, callee_gw, &callee_id, &callee_token).await;
        let mut from = caller_gw.socket(&format!("/ws/webrtc/{id}"), &caller_token).await;
        let to = callee_gw.socket(&format!("/ws/webrtc/{id}"), &callee_token).await;
        from.expect("connection_ready").await;
        calls.push((from, to));
    }
    let (across, same) = (calls.remove(0), calls.remove(0));
    let (mut across_to, mut same_to) = (across.1, same.1);
    let (took_across, took_same) = tokio::join!(burst(across.0, &mut across_to, 500), burst(same.0, &mut same_to, 500));
    eprintln!("500 candidates: across replicas {took_across:?}, on one replica {took_same:?}");
    // Slowed to the frame rate after the burst allowance, not dropped.
    assert!(took_across >= Duration::from_secs(4), "{took_across:?}");
}

#[tokio::test]
async fn a_sustained_flood_is_held_back_by_tcp_and_then_closed() {
    let fleet = common::Fleet::start_with(&[("SIGNALING_FRAME_RATE", "20")]).await;
    let gw = fleet.gateway(&[]).await;
    let (_, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let _bob_presence = go_online(&gw, &bob_id, &bob).await;
    let call_id = ring(&gw, &ada, &bob_id).await;
    let socket = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let (mut sink, mut replies) = socket.into_inner().split();

    // 8 KiB pings, as fast as the socket takes them, up to 64 MiB.
    let frame = json!({"type": "ping", "pad": "x".repeat(8 * 1024)}).to_string();
    let started = Instant::now();
    let flooding = tokio::spawn(async move {
        let (mut sent, mut stalled) = (0usize, false);
        while sent < 64 * 1024 * 1024 && started.elapsed() < Duration::from_secs(40) {
            match tokio::time::timeout(Duration::from_secs(1), sink.send(Message::text(frame.clone()))).await {
                Ok(Ok(())) => sent += frame.len(),
                // The server stopped reading: TCP pushes back.
                Err(_) => {
                    stalled = true;
                    break;
                }
                Ok(Err(_)) => break,
            }
        }
        (sent, stalled, sink)
    });
    let mut pongs = 0;
    let (code, reason) = loop {
        match tokio::time::timeout(Duration::from_secs(40), replies.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                assert!(t.contains(r#""pong""#), "a ping was answered with {t}");
                pongs += 1;
            }
            Ok(Some(Ok(Message::Close(Some(close))))) => break (u16::from(close.code), close.reason.to_string()),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close after the flood: {other:?}"),
        }
    };
    let closed_after = started.elapsed();
    let (sent, stalled, _sink) = flooding.await.unwrap();
    eprintln!("flood: {sent} bytes taken before the stall, {pongs} pings answered, closed after {closed_after:?}");
    assert!(stalled, "the socket kept taking frames: {sent} bytes");
    assert!(
        sent < 24 * 1024 * 1024,
        "the fleet buffered {sent} bytes for one socket"
    );
    assert!(pongs >= 80, "the burst and the slowed frames are answered: {pongs}");
    assert_eq!((code, reason.as_str()), (1008, "too many messages"));
    assert!(
        closed_after >= Duration::from_secs(9),
        "closed only once sustained: {closed_after:?}"
    );
}

/// A client whose process froze: its WebSocket handshake is done, then it
/// neither reads nor writes (its kernel still ACKs, so TCP stays up).
async fn frozen_socket(gw: &Gateway, path_and_query: &str) -> tokio::net::TcpStream {
    let host = gw.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

#[tokio::test]
async fn a_frozen_client_goes_offline_and_its_peer_is_told() {
    let sides = two_sides_with(
        &[],
        &[("WS_PING_INTERVAL_SECONDS", "1"), ("WS_IDLE_TIMEOUT_SECONDS", "3")],
    )
    .await;
    let (fleet, ga, gb) = (&sides.fleet, &sides.a, &sides.b);
    let (ada_id, ada) = fleet.user(ga, "ada").await;
    let (bob_id, bob) = fleet.user(gb, "bob").await;
    let mut ada_presence = go_online(ga, &ada_id, &ada).await;
    let _bob_presence = frozen_socket(gb, &format!("/calls/ws/{bob_id}?token={bob}")).await;
    let bob_online = || async {
        let (status, seen) = ga.get_bearer(&format!("/users/{bob_id}"), &ada).await;
        assert_eq!(status, 200, "{seen}");
        seen["is_online"] == true
    };
    unilink_test_support::eventually("bob online", Duration::from_secs(10), || async {
        bob_online().await.then_some(())
    })
    .await;
    let call_id = answered_call(ga, &ada, gb, &bob_id, &bob).await;
    let mut ada_call = ga.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let _bob_call = frozen_socket(gb, &format!("/ws/webrtc/{call_id}?token=Bearer%20{bob}")).await;
    ada_call.expect("connection_ready").await;
    let frozen_at = Instant::now();

    // Ada's sockets stay silent too, but they answer pings (as browsers do):
    // read them while waiting, so the client library sends its pongs.
    let mut told = false;
    let mut offline = false;
    while !(told && offline) {
        assert!(
            frozen_at.elapsed() < Duration::from_secs(30),
            "told {told}, offline {offline}"
        );
        if let Some(received) = ada_presence.next_within(Duration::from_millis(200)).await {
            assert!(
                !matches!(received, Received::Closed(..)),
                "a live client was closed: {received:?}"
            );
        }
        match ada_call.next_within(Duration::from_millis(200)).await {
            Some(Received::Text(t)) if t.contains("user_disconnected") => {
                let frame: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(frame["user_id"], bob_id.as_str());
                told = true;
            }
            Some(Received::Closed(code, reason)) => panic!("ada's call socket closed: {code} {reason}"),
            _ => {}
        }
        if !offline && !bob_online().await {
            let (_, list) = ga.get_bearer("/calls/available", &ada).await;
            assert!(
                !list
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|u| u["id"] == bob_id.as_str() && u["is_online"] == true),
                "{list}"
            );
            offline = true;
            eprintln!("frozen bob offline after {:?}", frozen_at.elapsed());
        }
    }
    eprintln!(
        "frozen bob gone (offline and his peer told) after {:?}",
        frozen_at.elapsed()
    );
    // Ada's silent but live sockets outlived the idle timeout.
    assert!(frozen_at.elapsed() > Duration::from_secs(3));
    ada_presence.send_text("ping").await;
    ada_presence.expect_text("pong").await;
}

#[tokio::test]
async fn presence_frames_are_slowed_and_never_touch_redis_per_frame() {
    let fleet = common::Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let mut presence = go_online(&gw, &ada_id, &ada).await;
    let beats = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("presence_heartbeats_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = beats(&gw.metrics().await);
    let started = Instant::now();
    for _ in 0..100 {
        presence.send_text("ping").await;
    }
    for n in 0..100 {
        match presence.next_within(Duration::from_secs(20)).await {
            Some(Received::Text(t)) if t == "pong" => {}
            other => panic!("pong {n} of 100: {other:?}"),
        }
    }
    let took = started.elapsed();
    let after = beats(&gw.metrics().await);
    eprintln!(
        "100 presence pings answered in {took:?}; {} heartbeats meanwhile",
        after - before
    );
    // Ten a second after a burst of forty: slowed, none dropped.
    assert!(took >= Duration::from_secs(5), "{took:?}");
    // Heartbeats stay on their 10 s timer, whatever the client sends.
    assert!(after - before <= 1.0, "{before} -> {after}");
}

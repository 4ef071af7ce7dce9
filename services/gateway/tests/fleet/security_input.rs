//! Hostile input: malformed, deeply nested, wrongly typed, huge, non-UTF-8
//! and oversized bodies at every route that reads one; odd paths, queries
//! and headers; SQL and script injection in every stored text field (kept
//! and returned verbatim); oversized WebSocket frames; slowloris clients.
//! Always a clear 4xx with `{"detail"}` or a closed socket — never a 500,
//! a hang or a crash.

use unilink_test_support::fleet as common;

use std::time::{Duration, Instant};

use common::{Fleet, Gateway, Received, Socket};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery";

/// Strings that break naive SQL, HTML, template and shell handling.
const INJECTIONS: &[&str] = &[
    "Robert'); DROP TABLE accounts;--",
    "' OR '1'='1' --",
    "1; SELECT pg_sleep(10); --",
    "\\'; DELETE FROM profile.profiles; --",
    "<script>alert(document.cookie)</script>",
    "\"><img src=x onerror=alert(1)>",
    "javascript:alert(1)//",
    "{{7*7}} ${7*7} #{7*7}",
    "${jndi:ldap://127.0.0.1/a}",
    "$(rm -rf /) `id`",
    "../../../../etc/passwd",
    "%00%27%22 \\u0000",
    "Ünïcødé 💥 \u{202e}gnp.exe",
];

/// Asserts a clear client error: the status (or any 4xx) and a detail.
fn assert_client_error(what: &str, status: u16, body: &Value, expected: Option<u16>) {
    match expected {
        Some(code) => assert_eq!(status, code, "{what}: {body}"),
        None => assert!((400..500).contains(&status), "{what}: {status} {body}"),
    }
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {status} {body}"
    );
}

async fn raw(gw: &Gateway, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = gw
        .http
        .request(method.parse().unwrap(), gw.url(path))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    gw.send(request).await
}

/// A body with `value` (raw JSON bytes) in every string field any route reads.
fn every_string_field(value: &[u8]) -> Vec<u8> {
    let fields = [
        "email",
        "username",
        "full_name",
        "password",
        "token",
        "otp",
        "refresh_token",
        "bio",
        "reason",
        "receiver_id",
        "message",
    ];
    let mut body = b"{".to_vec();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!("\"{field}\":").as_bytes());
        body.extend_from_slice(value);
    }
    body.push(b'}');
    body
}

/// Sends `body` with `Transfer-Encoding: chunked` (no length known in
/// advance) over a raw connection; the status and the JSON answer.
async fn chunked(gw: &Gateway, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            write.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            write.write_all(chunk).await?;
            write.write_all(b"\r\n").await?;
        }
        write.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    // The server may answer and close before it has read everything.
    let _ = writer.await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let json = text
        .find("\r\n\r\n")
        .and_then(|start| serde_json::from_str(text[start..].trim()).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn malformed_nested_mistyped_huge_and_oversized_bodies_get_a_clear_4xx() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (_, boss) = fleet.admin(&gw, "boss").await;

    // Every route that reads a body (DELETE /users/me only with bodies that
    // cannot delete).
    let report = format!("/users/report/{ada_id}");
    let routes: Vec<(&str, &str, Option<&str>)> = vec![
        ("POST", "/auth/register", None),
        ("POST", "/auth/verify-email", None),
        ("POST", "/auth/resend-verification", None),
        ("POST", "/auth/login", None),
        ("POST", "/auth/login/verify-otp", None),
        ("POST", "/auth/refresh", None),
        ("PUT", "/users/me", Some(boss.as_str())),
        ("DELETE", "/users/me", Some(boss.as_str())),
        ("POST", report.as_str(), Some(boss.as_str())),
        ("POST", "/calls/initiate", Some(boss.as_str())),
        ("POST", "/client-errors", None),
    ];
    let depth = 100_000;
    let nested_arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let nested_objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let unclosed = "[".repeat(depth);
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"{\"email\": ".to_vec()),
        ("trailing garbage", b"{} xyz".to_vec()),
        ("single quotes", b"{'email': 'a'}".to_vec()),
        ("nested arrays", nested_arrays.into_bytes()),
        ("nested objects", nested_objects.into_bytes()),
        ("unclosed nesting", unclosed.into_bytes()),
        ("array", b"[]".to_vec()),
        ("string", b"\"hello\"".to_vec()),
        ("number", b"1e999999".to_vec()),
        ("null", b"null".to_vec()),
        ("empty", Vec::new()),
        ("invalid UTF-8", every_string_field(b"\"\xff\xfe\xfd\xc3\x28\"")),
        ("lone surrogate", every_string_field(b"\"\\ud800\"")),
        ("NUL byte", b"{\"email\":\0\"a\"}".to_vec()),
    ];
    for (method, path, token) in &routes {
        for (name, body) in &malformed {
            let (status, answer) = raw(&gw, method, path, *token, body.clone()).await;
            if *name == "nested objects" && *method == "PUT" {
                // Every field of a profile update is optional and unknown
                // keys are ignored: 100,000 levels under "a" change nothing.
                assert_eq!(status, 200, "{method} {path}: {name}: {answer}");
                continue;
            }
            // The error-report route reads at most 16 KiB.
            let expected = if *path == "/client-errors" && body.len() > 16 * 1024 {
                413
            } else {
                400
            };
            assert_client_error(&format!("{method} {path}: {name}"), status, &answer, Some(expected));
        }
        // Wrong types for every field the routes know.
        let wrong = json!({
            "email": 42, "username": [], "full_name": {"a": 1}, "password": true, "token": 1.5,
            "otp": 123456, "refresh_token": null, "bio": 7, "profile_picture": 3, "reason": [],
            "description": {}, "receiver_id": 42, "message": ["x"], "level": 1, "user_id": 9
        });
        let (status, answer) = raw(&gw, method, path, *token, wrong.to_string().into_bytes()).await;
        assert_client_error(&format!("{method} {path}: wrong types"), status, &answer, Some(400));
        // Over 1 MiB: 413 (the error-report route caps at 16 KiB), with
        // Content-Length and streamed without one.
        let huge = json!({"email": "a@kiit.ac.in", "password": "x".repeat(1_100_000)}).to_string();
        let (status, answer) = raw(&gw, method, path, *token, huge.clone().into_bytes()).await;
        assert_client_error(&format!("{method} {path}: 1.1 MB"), status, &answer, Some(413));
        let (status, answer) = chunked(&gw, method, path, *token, huge.as_bytes()).await;
        assert_client_error(&format!("{method} {path}: 1.1 MB chunked"), status, &answer, Some(413));
    }

    // Huge strings inside the limit: refused by validation, not by a crash.
    let big = "x".repeat(900_000);
    let cases: Vec<(&str, &str, Option<&str>, Value)> = vec![
        (
            "POST",
            "/auth/register",
            None,
            json!({"email": "x@kiit.ac.in", "username": "xyz", "full_name": big, "password": PASSWORD}),
        ),
        (
            "POST",
            "/auth/register",
            None,
            json!({"email": "x@kiit.ac.in", "username": "xyz", "full_name": "x", "password": big}),
        ),
        (
            "POST",
            "/auth/register",
            None,
            json!({"email": "x@kiit.ac.in", "username": big, "full_name": "x", "password": PASSWORD}),
        ),
        (
            "POST",
            "/auth/register",
            None,
            json!({"email": format!("{big}@kiit.ac.in"), "username": "xyz", "full_name": "x", "password": PASSWORD}),
        ),
        (
            "POST",
            "/auth/login",
            None,
            json!({"email": "ada@kiit.ac.in", "password": big}),
        ),
        (
            "POST",
            "/auth/login",
            None,
            json!({"email": format!("{big}@kiit.ac.in"), "password": PASSWORD}),
        ),
        ("POST", "/auth/verify-email", None, json!({ "token": big })),
        ("POST", "/auth/resend-verification", None, json!({ "email": big })),
        (
            "POST",
            "/auth/login/verify-otp",
            None,
            json!({"email": "ada@kiit.ac.in", "otp": big}),
        ),
        ("POST", "/auth/refresh", None, json!({ "refresh_token": big })),
        ("PUT", "/users/me", Some(&boss), json!({ "full_name": big })),
        ("PUT", "/users/me", Some(&boss), json!({ "bio": big })),
        (
            "PUT",
            "/users/me",
            Some(&boss),
            json!({ "profile_picture": format!("https://{big}") }),
        ),
        ("DELETE", "/users/me", Some(&boss), json!({ "password": big })),
        ("POST", &report, Some(&boss), json!({ "reason": big })),
        (
            "POST",
            &report,
            Some(&boss),
            json!({"reason": "spam", "description": big}),
        ),
        ("POST", "/calls/initiate", Some(&boss), json!({ "receiver_id": big })),
    ];
    for (method, path, token, body) in cases {
        let field = body.as_object().unwrap().keys().cloned().collect::<Vec<_>>().join(",");
        let started = Instant::now();
        let (status, answer) = raw(&gw, method, path, token, body.to_string().into_bytes()).await;
        let what = format!("{method} {path} with a 900 kB {field}");
        if path == "/auth/resend-verification" {
            // Same answer whether or not such an account exists.
            assert_eq!(status, 202, "{what}: {answer}");
        } else {
            assert!(
                status == 400 || status == 401 || status == 403,
                "{what}: {status} {answer}"
            );
            assert_client_error(&what, status, &answer, None);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    // A NUL inside a JSON string reaches the services' validation, never PostgreSQL.
    for (path, body) in [
        ("/users/me", json!({"full_name": "a\u{0}b"})),
        ("/users/me", json!({"bio": "a\u{0}b"})),
    ] {
        let (status, answer) = raw(&gw, "PUT", path, Some(&boss), body.to_string().into_bytes()).await;
        assert_client_error(&format!("PUT {path} {body}"), status, &answer, Some(400));
    }
    for body in [
        json!({"reason": "a\u{0}b"}),
        json!({"reason": "spam", "description": "a\u{0}b"}),
    ] {
        let (status, answer) = raw(&gw, "POST", &report, Some(&boss), body.to_string().into_bytes()).await;
        assert_client_error(&format!("report {body}"), status, &answer, Some(400));
    }
    for (path, body) in [
        (
            "/auth/login",
            json!({"email": "ada\u{0}@kiit.ac.in", "password": PASSWORD}),
        ),
        ("/auth/resend-verification", json!({"email": "ada\u{0}@kiit.ac.in"})),
        ("/auth/verify-email", json!({"token": "a\u{0}b"})),
        ("/auth/refresh", json!({"refresh_token": "a\u{0}b"})),
        (
            "/auth/login/verify-otp",
            json!({"email": "ada\u{0}@kiit.ac.in", "otp": "123456"}),
        ),
        (
            "/auth/register",
            json!({"email": "nul\u{0}@kiit.ac.in", "username": "nul", "full_name": "N", "password": PASSWORD}),
        ),
    ] {
        let (status, answer) = raw(&gw, "POST", path, None, body.to_string().into_bytes()).await;
        if path == "/auth/resend-verification" {
            assert_eq!(status, 202, "{body}: {answer}");
            continue;
        }
        assert_client_error(&format!("POST {path} {body}"), status, &answer, None);
    }

    // Odd paths and queries.
    let long = "a".repeat(4000);
    let odd: Vec<(&str, String, &str)> = vec![
        ("GET", "/users/%FF%FE".to_owned(), &boss),
        ("GET", "/users/%00".to_owned(), &boss),
        ("GET", "/users/'%20OR%201=1--".to_owned(), &boss),
        ("GET", format!("/users/{long}"), &boss),
        ("GET", "/calls/by-id/..%2F..%2Fadmin".to_owned(), &boss),
        ("POST", "/calls/end/%F0%9F%92%A5".to_owned(), &boss),
        (
            "POST",
            "/users/block/00000000-0000-0000-0000-00000000000g".to_owned(),
            &boss,
        ),
        ("POST", "/admin/reports/not-a-uuid/resolve".to_owned(), &boss),
        ("POST", format!("/admin/reports/{long}/resolve"), &boss),
        ("POST", "/admin/reports/%FF/resolve".to_owned(), &boss),
        ("POST", "/admin/users/not-a-uuid/deactivate".to_owned(), &boss),
        ("POST", "/admin/users/%00/deactivate".to_owned(), &boss),
        ("GET", "/ws/webrtc/connection-state/%FF".to_owned(), &boss),
        ("GET", "/calls/history?limit=abc".to_owned(), &boss),
        ("GET", "/calls/history?limit=-1".to_owned(), &boss),
        ("GET", "/calls/history?limit=99999999999999999999".to_owned(), &boss),
        ("GET", format!("/calls/history?cursor={long}"), &boss),
        ("GET", "/calls/history?cursor=%FF%00".to_owned(), &boss),
        ("GET", "/calls/available?limit=%00".to_owned(), &boss),
        ("GET", "/admin/reports?offset=99999999999".to_owned(), &boss),
        ("GET", "/admin/reports?status=%27%20OR%201=1".to_owned(), &boss),
        ("GET", "/admin/reports?limit=1&limit=2".to_owned(), &boss),
        ("GET", "/calls/ws/not-a-uuid".to_owned(), &boss),
        ("GET", "/ws/webrtc/not-a-uuid?last_seq=-5".to_owned(), &boss),
    ];
    for (method, path, token) in odd {
        let (status, answer) = raw(&gw, method, &path, Some(token), b"{}".to_vec()).await;
        let shown: String = path.chars().take(80).collect();
        assert_client_error(&format!("{method} {shown}"), status, &answer, None);
    }
    // Odd headers: a huge bearer token, a non-ASCII one, a huge request id.
    for (name, value) in [
        ("Authorization", format!("Bearer {}", "a".repeat(16 * 1024))),
        ("Authorization", format!("Bearer {}", "é".repeat(10))),
        ("Authorization", "Basic YWRhOnNlY3JldA==".to_owned()),
        ("X-Request-Id", "r".repeat(8 * 1024)),
    ] {
        let response = gw
            .http
            .get(gw.url("/users/me"))
            .header(name, value.as_bytes())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{name}: {status}");
    }
    // Still serving.
    assert_eq!(gw.get_bearer("/users/me", &ada).await.0, 200);
    gw.stop().await;
}

#[tokio::test]
async fn injection_strings_are_stored_and_returned_verbatim_in_every_text_field() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let (_, boss) = fleet.admin(&gw, "boss").await;

    // Sign-up: the full name.
    let (status, user) = gw
        .post(
            "/auth/register",
            json!({"email": "inj@kiit.ac.in", "username": "inj", "full_name": INJECTIONS[0], "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["full_name"], INJECTIONS[0]);

    // Profile: full name and bio, read back by the owner, by others, in discovery.
    let mut bob_presence = gw.socket(&format!("/calls/ws/{bob_id}"), &bob).await;
    bob_presence.send_text("ping").await;
    assert!(matches!(bob_presence.next().await, Received::Text(t) if t == "pong"));
    for text in INJECTIONS {
        let (status, me) = gw
            .send(
                gw.http
                    .put(gw.url("/users/me"))
                    .bearer_auth(&bob)
                    .json(&json!({"full_name": text, "bio": format!("{text}\n{text}")})),
            )
            .await;
        assert_eq!(status, 200, "{text}: {me}");
        assert_eq!(me["full_name"], *text);
        let response = gw
            .http
            .get(gw.url(&format!("/users/{bob_id}")))
            .bearer_auth(&ada)
            .send()
            .await
            .unwrap();
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["full_name"], *text);
        assert_eq!(seen["bio"], format!("{text}\n{text}"));
        let (_, available) = gw.get_bearer("/calls/available", &ada).await;
        let listed = available
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == bob_id.as_str())
            .unwrap_or_else(|| panic!("bob is available: {available}"));
        assert_eq!(listed["full_name"], *text);
    }
    // The accounts table is still there.
    assert_eq!(gw.get_bearer("/users/me", &ada).await.0, 200);

    // Reports: reason and description, as the admin reads them.
    for text in INJECTIONS {
        let (status, body) = gw
            .post_bearer(
                &format!("/users/report/{bob_id}"),
                &ada,
                json!({"reason": text, "description": format!("{text}\r\n\t{text}")}),
            )
            .await;
        assert_eq!(status, 200, "{text}: {body}");
        let (_, page) = gw.get_bearer("/admin/reports?status=open", &boss).await;
        let report = &page["reports"][0];
        assert_eq!(report["reason"], *text);
        assert_eq!(report["description"], format!("{text}\r\n\t{text}"));
        let id = report["id"].as_str().unwrap();
        let (status, _) = gw
            .post_bearer(&format!("/admin/reports/{id}/resolve"), &boss, json!({}))
            .await;
        assert_eq!(status, 200);
    }

    // Chat: relayed to both participants verbatim.
    let (_, call) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    let (status, _) = gw
        .post_bearer(&format!("/calls/accept/{call_id}"), &bob, json!({}))
        .await;
    assert_eq!(status, 200);
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let mut bob_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &bob).await;
    for text in INJECTIONS {
        ada_call
            .send_json(json!({"type": "chat_message", "text": text, "timestamp": "</script>"}))
            .await;
        for socket in [&mut ada_call, &mut bob_call] {
            let chat = socket.expect("chat_message").await;
            assert_eq!(chat["text"], *text);
            assert_eq!(chat["from"], ada_id.as_str());
            assert_eq!(chat["timestamp"], "</script>");
        }
    }
    // Frames that try to break out of the relay's JSON are errors.
    for frame in [
        r#"{"type":"chat_message","text":"a\"}, {\"type\":\"end_call"}"#,
        r#"{"type":"chat_message","text":{"$ne":1}}"#,
        r#"{"type":"chat_message\"}","text":"x"}"#,
    ] {
        ada_call.send_text(frame).await;
        let reply = ada_call.json().await;
        assert!(
            reply["type"] == "error" || (reply["type"] == "chat_message" && reply["text"].is_string()),
            "{frame}: {reply}"
        );
    }
    let (_, fetched) = gw.get_bearer(&format!("/calls/by-id/{call_id}"), &ada).await;
    assert_eq!(fetched["status"], "ongoing", "no frame ended the call");

    // Error reports from the frontend: accepted, whatever they say.
    for text in INJECTIONS {
        let (status, _) = gw
            .post("/client-errors", json!({"message": text, "stack": text, "url": text}))
            .await;
        assert_eq!(status, 202, "{text}");
    }
    bob_presence.close().await;
    gw.stop().await;
}

/// Reads until a text frame of `type` or a close; the frame or the close code.
async fn frame_or_close(socket: &mut Socket, kind: &str) -> Result<Value, u16> {
    loop {
        match socket.next().await {
            Received::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::String(t));
                if v["type"] == kind || (kind == "pong" && v == "pong") {
                    return Ok(v);
                }
            }
            Received::Closed(code, _) => return Err(code),
        }
    }
}

#[tokio::test]
async fn oversized_websocket_frames_get_an_error_then_a_1009_close() {
    let fleet = Fleet::start_with(&[("SIGNALING_FRAME_RATE", "1000")]).await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let mut bob_presence = gw.socket(&format!("/calls/ws/{bob_id}"), &bob).await;
    bob_presence.send_text("ping").await;
    assert!(matches!(bob_presence.next().await, Received::Text(t) if t == "pong"));
    let (_, call) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();

    for path in [format!("/ws/webrtc/{call_id}"), format!("/calls/ws/{ada_id}")] {
        let presence = path.starts_with("/calls/ws/");
        let ping = if presence {
            "ping".to_owned()
        } else {
            json!({"type": "ping"}).to_string()
        };
        let mut socket = gw.socket(&path, &ada).await;
        // Over 64 KiB, up to 1 MiB: an error frame, and the socket stays.
        for size in [64 * 1024 + 1, 512 * 1024, 1024 * 1024 - 64] {
            let frame = format!(r#"{{"type":"offer","offer":"{}"}}"#, "x".repeat(size - 24));
            socket.send_text(&frame).await;
            let error = frame_or_close(&mut socket, "error").await.unwrap();
            assert!(
                error["message"].as_str().unwrap().contains("too large"),
                "{path}: {error}"
            );
            socket.send_text(&ping).await;
            frame_or_close(&mut socket, "pong").await.unwrap();
        }
        // Beyond 1 MiB: closed with 1009.
        socket.send_text(&"y".repeat(1024 * 1024 + 1024)).await;
        assert_eq!(frame_or_close(&mut socket, "never").await.err(), Some(1009), "{path}");
    }
    // The gateway carries on.
    let mut again = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    again.send_json(json!({"type": "ping"})).await;
    again.expect("pong").await;
    bob_presence.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn slowloris_clients_are_timed_out_while_others_are_served() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let addr = gw.base.trim_start_matches("http://").to_owned();

    // 50 clients each send a request head one byte a second, forever.
    let mut slow = Vec::new();
    for i in 0..50 {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let started = Instant::now();
            let head = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ");
            let writer = tokio::spawn(async move {
                for byte in head.bytes().chain(std::iter::repeat(b'a')) {
                    if write.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut answer)).await;
            writer.abort();
            (
                started.elapsed(),
                read.is_ok(),
                String::from_utf8_lossy(&answer).into_owned(),
            )
        }));
    }
    // Meanwhile everyone else is served promptly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let started = Instant::now();
        let (status, _) = gw.get("/health").await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Each slow client is cut off after the request-head timeout (5 s).
    for task in slow {
        let (took, closed, answer) = task.await.unwrap();
        assert!(closed, "a slow client was never disconnected");
        assert!(took < Duration::from_secs(12), "cut off after {took:?}");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    gw.stop().await;
}

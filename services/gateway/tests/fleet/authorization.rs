//! Every route that takes an id, tried with someone else's ids: no access.
//!
//! Ada calls Bob (the call rings), Ada has reported Bob, Bob has blocked
//! Eve. Eve (a plain user), Ada (the caller, where only the receiver may
//! act) and Boss (an administrator, who is no participant of anyone's call)
//! then try every id-taking route with those ids — REST and both sockets —
//! and each attempt is refused with the documented status; afterwards
//! nothing has changed. Ids sent in bodies or query strings are ignored:
//! the acting user is always the token's.

use unilink_test_support::fleet as common;

use common::{Fleet, Gateway, Received};
use serde_json::{Value, json};

async fn call(gw: &Gateway, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = gw
        .http
        .request(method.parse().unwrap(), gw.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    gw.send(request).await
}

#[tokio::test]
async fn nobody_reaches_another_users_calls_profiles_reports_or_admin_routes() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let (eve_id, eve) = fleet.user(&gw, "eve").await;
    let (_, boss) = fleet.admin(&gw, "boss").await;

    // Bob is online; Ada rings him.
    let mut bob_presence = gw.socket(&format!("/calls/ws/{bob_id}"), &bob).await;
    bob_presence.send_text("ping").await;
    assert!(matches!(bob_presence.next().await, Received::Text(t) if t == "pong"));
    let (status, ringing) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 200, "{ringing}");
    let call_id = ringing["id"].as_str().unwrap().to_owned();
    // Ada reports Bob; Bob blocks Eve.
    let (status, _) = gw
        .post_bearer(&format!("/users/report/{bob_id}"), &ada, json!({"reason": "spam"}))
        .await;
    assert_eq!(status, 200);
    let (_, page) = gw.get_bearer("/admin/reports?status=open", &boss).await;
    let report_id = page["reports"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = gw.post_bearer(&format!("/users/block/{eve_id}"), &bob, json!({})).await;
    assert_eq!(status, 200);

    let call_routes = |who: &'static str, token: &str| {
        vec![
            (who, "GET", format!("/calls/by-id/{call_id}"), token.to_owned(), 403),
            (who, "POST", format!("/calls/accept/{call_id}"), token.to_owned(), 403),
            (who, "POST", format!("/calls/reject/{call_id}"), token.to_owned(), 403),
            (who, "POST", format!("/calls/end/{call_id}"), token.to_owned(), 403),
            (
                who,
                "GET",
                format!("/ws/webrtc/connection-state/{call_id}"),
                token.to_owned(),
                403,
            ),
        ]
    };
    let admin_routes = |who: &'static str, token: &str| {
        vec![
            (who, "GET", "/admin/reports".to_owned(), token.to_owned(), 403),
            (
                who,
                "GET",
                "/admin/reports?status=open".to_owned(),
                token.to_owned(),
                403,
            ),
            (
                who,
                "POST",
                format!("/admin/reports/{report_id}/resolve"),
                token.to_owned(),
                403,
            ),
            (
                who,
                "POST",
                format!("/admin/users/{bob_id}/deactivate"),
                token.to_owned(),
                403,
            ),
            (
                who,
                "POST",
                format!("/admin/users/{who_id}/deactivate", who_id = ada_id),
                token.to_owned(),
                403,
            ),
            (
                who,
                "GET",
                "/ws/webrtc/active-connections".to_owned(),
                token.to_owned(),
                403,
            ),
        ]
    };
    let mut table = Vec::new();
    // Eve: a stranger to the call, blocked by Bob, no admin.
    table.extend(call_routes("eve", &eve));
    table.extend(admin_routes("eve", &eve));
    table.push(("eve", "GET", format!("/users/{bob_id}"), eve.clone(), 403));
    // Eve cannot lift Bob's block of her: she never blocked Bob.
    table.push(("eve", "POST", format!("/users/unblock/{bob_id}"), eve.clone(), 404));
    // Boss: an administrator is still no participant of anyone's call.
    table.extend(call_routes("boss", &boss));
    // Ada: the caller may not answer her own call, and is no admin.
    table.push(("ada", "POST", format!("/calls/accept/{call_id}"), ada.clone(), 403));
    table.push(("ada", "POST", format!("/calls/reject/{call_id}"), ada.clone(), 403));
    table.extend(admin_routes("ada", &ada));

    for (who, method, path, token, expected) in &table {
        let (status, body) = call(&gw, method, path, token, Some(json!({}))).await;
        assert_eq!(status, *expected, "{who}: {method} {path} -> {body}");
        assert!(body["detail"].is_string(), "{who}: {method} {path} -> {body}");
    }

    // Sockets: a presence socket is only for the token's own user (refused
    // at the upgrade); a call's socket only for its participants (closed
    // with 1008, the reason given).
    for (who, token) in [("eve", &eve), ("boss", &boss), ("ada", &ada)] {
        for target in [&bob_id, &eve_id] {
            if (who == "eve" && target == &eve_id) || (who == "ada" && target == &ada_id) {
                continue;
            }
            assert_eq!(
                gw.try_socket(&format!("/calls/ws/{target}"), token).await.err(),
                Some(403),
                "{who}: presence socket of {target}"
            );
        }
    }
    for (who, token) in [("eve", &eve), ("boss", &boss)] {
        let mut socket = gw.socket(&format!("/ws/webrtc/{call_id}"), token).await;
        let (code, reason) = socket.closed().await;
        assert_eq!(code, 1008, "{who}");
        assert!(reason.contains("not a participant"), "{who}: {reason}");
    }

    // Ids in bodies and query strings are ignored: the caller is the token's.
    let (status, me) = call(
        &gw,
        "PUT",
        "/users/me",
        &eve,
        Some(json!({
            "id": bob_id, "user_id": bob_id, "email": "bob@kiit.ac.in", "username": "bob",
            "is_verified": false, "role": "admin", "full_name": "Eve Renamed", "bio": "mine"
        })),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["id"].as_str(), me["username"].as_str()),
        (Some(eve_id.as_str()), Some("eve"))
    );
    assert_eq!(me["full_name"], "Eve Renamed");
    let (_, bob_me) = gw.get_bearer("/users/me", &bob).await;
    assert_eq!(
        (bob_me["full_name"].as_str(), &bob_me["bio"]),
        (Some("Test User"), &serde_json::Value::Null)
    );
    let (_, export) = gw.get_bearer(&format!("/users/me/export?user_id={bob_id}"), &eve).await;
    assert_eq!(export["account"]["id"], eve_id.as_str());
    assert_eq!(export["calls"], json!([]));
    for path in ["/calls/history", "/calls/active", "/calls/pending"] {
        let (status, answer) = gw.get_bearer(&format!("{path}?user_id={bob_id}"), &eve).await;
        assert_eq!(status, 200, "{path}");
        assert!(answer.is_null() || answer == json!([]), "{path}: {answer}");
    }
    let (status, _) = gw
        .post_bearer(
            &format!("/users/report/{ada_id}"),
            &eve,
            json!({"reason": "spam", "reporter_id": bob_id, "user_id": bob_id}),
        )
        .await;
    assert_eq!(status, 400, "a user_id in the body must match the URL");
    let (status, _) = gw
        .post_bearer(
            &format!("/users/report/{ada_id}"),
            &eve,
            json!({"reason": "spam", "reporter_id": bob_id}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, page) = gw.get_bearer("/admin/reports?status=open", &boss).await;
    let eve_report = page["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reported_id"] == ada_id.as_str())
        .unwrap();
    assert_eq!(eve_report["reporter_id"], eve_id.as_str());

    // Nothing changed: the call still rings, the report is open, Bob is
    // active and his block holds.
    let (status, fetched) = gw.get_bearer(&format!("/calls/by-id/{call_id}"), &bob).await;
    assert_eq!((status, fetched["status"].as_str()), (200, Some("pending")));
    let (_, page) = gw.get_bearer("/admin/reports?status=open", &boss).await;
    assert!(
        page["reports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == report_id.as_str()),
        "{page}"
    );
    assert_eq!(gw.get_bearer("/users/me", &bob).await.0, 200);
    assert_eq!(gw.get_bearer("/users/me", &ada).await.0, 200);
    assert_eq!(gw.get_bearer(&format!("/users/{bob_id}"), &eve).await.0, 403);

    // Deleting "me" with someone else's id in the body deletes only me.
    let (status, body) = call(
        &gw,
        "DELETE",
        "/users/me",
        &eve,
        Some(json!({"password": "correct horse battery", "user_id": bob_id})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.get_bearer("/users/me", &eve).await.0, 401);
    assert_eq!(gw.get_bearer("/users/me", &bob).await.0, 200);
    bob_presence.close().await;
    gw.stop().await;
}

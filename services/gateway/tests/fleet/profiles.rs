//! Profiles, blocks, reports and discovery through a real gateway.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Gateway};
use serde_json::{Value, json};
use unilink_domain::UserId;
use unilink_test_support::eventually;

async fn get(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    gw.send(gw.http.get(gw.url(path)).bearer_auth(token)).await
}

async fn put(gw: &Gateway, path: &str, token: &str, body: Value) -> (u16, Value) {
    gw.send(gw.http.put(gw.url(path)).bearer_auth(token).json(&body)).await
}

#[tokio::test]
async fn profiles_are_created_from_sign_up_and_updated_by_their_owner_only() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;

    let (status, me) = get(&gw, "/users/me", &ada).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], ada_id);
    assert!(
        me["bio"].is_null() && me["profile_picture"].is_null(),
        "unset is null, as the original: {me}"
    );
    assert_eq!(me["is_verified"], true);
    assert_eq!(me["is_online"], false);
    for field in common::USER_FIELDS {
        assert!(me.get(field).is_some(), "user JSON lacks {field}: {me}");
    }

    // Partial update; unknown fields (including an attempt to name another id) are ignored.
    let (status, updated) = put(
        &gw,
        "/users/me",
        &ada,
        json!({"bio": "Hi <b>there</b>'; DROP TABLE profiles;--", "profile_picture": "https://cdn.example.com/ada.png", "id": bob_id, "is_verified": false}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["id"], ada_id);
    assert_eq!(updated["bio"], "Hi <b>there</b>'; DROP TABLE profiles;--");
    assert_eq!(updated["profile_picture"], "https://cdn.example.com/ada.png");
    assert_eq!(updated["full_name"], "Test User", "untouched fields stay");
    assert_eq!(updated["is_verified"], true);
    let (_, bob_view) = get(&gw, "/users/me", &bob).await;
    assert!(bob_view["bio"].is_null(), "bob's profile is untouched");

    let (status, cleared) = put(&gw, "/users/me", &ada, json!({"profile_picture": null})).await;
    assert_eq!(status, 200);
    assert!(cleared["profile_picture"].is_null());
    assert_eq!(cleared["bio"], "Hi <b>there</b>'; DROP TABLE profiles;--");
    // An empty bio unsets it: null again, as the original showed an unset one.
    let (status, unset) = put(&gw, "/users/me", &ada, json!({"bio": ""})).await;
    assert_eq!(status, 200, "{unset}");
    assert!(unset["bio"].is_null(), "{unset}");
    let (_, available) = get(&gw, &format!("/users/{ada_id}"), &bob).await;
    assert!(available["bio"].is_null(), "{available}");

    for (body, expected) in [
        (json!({"bio": "x".repeat(501)}), "bio must be at most 500"),
        (json!({"profile_picture": "http://cdn.example.com/a.png"}), "https://"),
        (
            json!({"profile_picture": format!("https://x.io/{}", "a".repeat(2050))}),
            "2048",
        ),
        (json!({"full_name": ""}), "full name is required"),
        (json!({"bio": 7}), "invalid type"),
    ] {
        let (status, answer) = put(&gw, "/users/me", &ada, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(expected), "{answer}");
    }
    let response = gw
        .http
        .put(gw.url("/users/me"))
        .json(&json!({"bio": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    gw.stop().await;
}

#[tokio::test]
async fn blocks_act_both_ways_and_viewing_follows_them() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    let stranger = UserId::new().to_string();

    let (status, view) = get(&gw, &format!("/users/{bob_id}"), &ada).await;
    assert_eq!(status, 200);
    assert_eq!(view["username"], "bob");
    assert_eq!(get(&gw, &format!("/users/{stranger}"), &ada).await.0, 404);
    assert_eq!(get(&gw, "/users/not-a-uuid", &ada).await.0, 400);

    assert_eq!(
        gw.post_bearer(&format!("/users/block/{ada_id}"), &ada, json!({}))
            .await
            .0,
        400
    );
    assert_eq!(
        gw.post_bearer(&format!("/users/block/{stranger}"), &ada, json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        gw.post_bearer(&format!("/users/unblock/{bob_id}"), &ada, json!({}))
            .await
            .0,
        404
    );

    // Bob blocks Ada (twice: idempotent).
    for _ in 0..2 {
        let (status, body) = gw.post_bearer(&format!("/users/block/{ada_id}"), &bob, json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = get(&gw, &format!("/users/{bob_id}"), &ada).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["detail"], "this user has blocked you");
    // Bob still sees Ada's profile (he blocked her, not the other way round).
    assert_eq!(get(&gw, &format!("/users/{ada_id}"), &bob).await.0, 200);

    // Discovery: neither sees the other while the block stands, both ways.
    let presence = fleet.presence().await;
    for id in [&ada_id, &bob_id] {
        presence.connect(UserId::parse(id).unwrap(), "test").await.unwrap();
    }
    let (_, list) = get(&gw, "/calls/available", &ada).await;
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    let (_, list) = get(&gw, "/calls/available", &bob).await;
    assert!(list.as_array().unwrap().is_empty(), "{list}");

    let (status, _) = gw
        .post_bearer(&format!("/users/unblock/{ada_id}"), &bob, json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, list) = get(&gw, "/calls/available", &ada).await;
    assert_eq!(list[0]["id"], bob_id, "{list}");
    assert_eq!(list[0]["is_online"], true);
    gw.stop().await;
}

#[tokio::test]
async fn reports_are_limited_to_one_open_report_per_pair() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, _bob) = fleet.user(&gw, "bob").await;
    let path = format!("/users/report/{bob_id}");

    let (status, body) = gw
        .post_bearer(
            &path,
            &ada,
            json!({"reason": "harassment", "description": "rude in chat", "user_id": bob_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["message"].is_string());
    let (status, body) = gw.post_bearer(&path, &ada, json!({"reason": "spam"})).await;
    assert_eq!(status, 409, "{body}");

    let cases = [
        (format!("/users/report/{ada_id}"), json!({"reason": "spam"}), 400),
        (
            format!("/users/report/{}", UserId::new()),
            json!({"reason": "spam"}),
            404,
        ),
        (path.clone(), json!({"reason": ""}), 400),
        (path.clone(), json!({"reason": "r".repeat(101)}), 400),
        (
            path.clone(),
            json!({"reason": "spam", "description": "d".repeat(2001)}),
            400,
        ),
        (path.clone(), json!({"reason": "spam", "user_id": ada_id}), 400),
        (path.clone(), json!({"description": "no reason"}), 400),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = gw.post_bearer(&path, &ada, body.clone()).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
        assert!(answer["detail"].is_string());
    }
    let stored: i64 = fleet
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM profile.reports", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    gw.stop().await;
}

#[tokio::test]
async fn available_users_are_online_verified_newest_first_and_bounded() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (me_id, me) = fleet.user(&gw, "caller").await;
    let mut others = Vec::new();
    for name in ["u_one", "u_two", "u_three"] {
        others.push(fleet.user(&gw, name).await.0);
    }
    // An unverified account that is "online" must not be listed.
    let (status, pending) = gw
        .post("/auth/register", json!({"email": "pending@kiit.ac.in", "username": "pending", "full_name": "P", "password": "correct horse battery"}))
        .await;
    assert_eq!(status, 200);

    let presence = fleet.presence().await;
    presence.connect(UserId::parse(&me_id).unwrap(), "c").await.unwrap();
    presence
        .connect(UserId::parse(pending["id"].as_str().unwrap()).unwrap(), "c")
        .await
        .unwrap();
    for id in &others {
        tokio::time::sleep(Duration::from_millis(5)).await;
        presence.connect(UserId::parse(id).unwrap(), "c").await.unwrap();
    }
    let (status, list) = get(&gw, "/calls/available", &me).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![others[2].as_str(), others[1].as_str(), others[0].as_str()],
        "newest first, no caller, no unverified"
    );
    for entry in list.as_array().unwrap() {
        for field in ["id", "username", "full_name", "profile_picture", "bio", "is_online"] {
            assert!(entry.get(field).is_some(), "{field} missing in {entry}");
        }
    }
    let (_, list) = get(&gw, "/calls/available?limit=2", &me).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    for bad in ["0", "51", "many"] {
        let (status, body) = get(&gw, &format!("/calls/available?limit={bad}"), &me).await;
        assert_eq!(status, 400, "limit={bad}: {body}");
    }
    // Someone going offline disappears.
    presence
        .disconnect(UserId::parse(&others[2]).unwrap(), "c")
        .await
        .unwrap();
    let (_, list) = get(&gw, "/calls/available", &me).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, me_view) = get(&gw, "/users/me", &me).await;
    assert_eq!(me_view["is_online"], true, "is_online is live presence");
    gw.stop().await;
}

#[tokio::test]
async fn every_account_gets_its_profile_even_if_profile_was_down_at_sign_up() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let Fleet {
        profile,
        db,
        prefix,
        smtp,
        ..
    } = fleet;
    let profile_addr = profile.grpc_addr.to_string();
    profile.stop().await.unwrap();

    let (status, user) = gw
        .post("/auth/register", json!({"email": "late@kiit.ac.in", "username": "late", "full_name": "Late", "password": "correct horse battery"}))
        .await;
    assert_eq!(status, 200);
    let mail = eventually("the verification mail", Duration::from_secs(20), || {
        let mails = smtp.messages_to("late@kiit.ac.in");
        async move { mails.first().cloned() }
    })
    .await;
    let token = mail.token_after("verify?token=").unwrap();
    let (status, _) = gw.post("/auth/verify-email", json!({ "token": token })).await;
    assert_eq!(status, 200);

    let client = db.client().await;
    let uid = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM profile.profiles WHERE user_id = $1", &[&uid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "nobody could have created it yet");

    let settings = unilink_test_support::settings(&db, &prefix, &[("GRPC_ADDR", profile_addr.as_str())]);
    let profile = unilink_test_support::service::spawn::<unilink_profile::Profiles>(settings).await;
    eventually("the profile to catch up", Duration::from_secs(20), || {
        let client = &client;
        async move {
            let row = client
                .query_opt(
                    "SELECT is_verified, username FROM profile.profiles WHERE user_id = $1",
                    &[&uid],
                )
                .await
                .unwrap()?;
            (row.get::<_, bool>(0) && row.get::<_, String>(1) == "late").then_some(())
        }
    })
    .await;
    profile.stop().await.unwrap();
    gw.stop().await;
}

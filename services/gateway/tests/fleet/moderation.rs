//! Moderation through a real gateway: the first admin made with the
//! documented command, reports listed and resolved, a user deactivated.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Gateway};
use serde_json::{Value, json};
use unilink_domain::UserId;
use unilink_test_support::eventually;

async fn get(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    gw.send(gw.http.get(gw.url(path)).bearer_auth(token)).await
}

#[tokio::test]
async fn admins_review_reports_and_deactivate_users() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let boss = gw.sign_up_and_log_in(&fleet.smtp, "boss@kiit.ac.in", "boss").await;
    let ada = gw.sign_up_and_log_in(&fleet.smtp, "ada@kiit.ac.in", "ada").await;
    let bob = gw.sign_up_and_log_in(&fleet.smtp, "bob@kiit.ac.in", "bob").await;
    let (ada_token, bob_token) = (
        ada["access_token"].as_str().unwrap(),
        bob["access_token"].as_str().unwrap(),
    );
    let bob_id = bob["user"]["id"].as_str().unwrap().to_owned();

    // Not an admin yet: 403 everywhere under /admin.
    let boss_user_token = boss["access_token"].as_str().unwrap();
    assert_eq!(get(&gw, "/admin/reports", boss_user_token).await.0, 403);
    assert_eq!(
        gw.post_bearer(&format!("/admin/users/{bob_id}/deactivate"), ada_token, json!({}))
            .await
            .0,
        403
    );

    fleet.make_admin("BOSS@kiit.ac.in");
    // The role travels in the token: log in again.
    let (status, _) = gw
        .post(
            "/auth/login",
            json!({"email": "boss@kiit.ac.in", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(status, 202);
    let otp = fleet.mail("boss@kiit.ac.in", 3).await.digits(6).unwrap();
    let (status, session) = gw
        .post(
            "/auth/login/verify-otp",
            json!({"email": "boss@kiit.ac.in", "otp": otp}),
        )
        .await;
    assert_eq!(status, 200);
    let boss_token = session["access_token"].as_str().unwrap();

    // Ada waits for her profile, then reports Bob.
    eventually("bob's profile", Duration::from_secs(20), || async {
        (get(&gw, &format!("/users/{bob_id}"), ada_token).await.0 == 200).then_some(())
    })
    .await;
    let (status, _) = gw
        .post_bearer(&format!("/users/report/{bob_id}"), ada_token, json!({"reason": "spam"}))
        .await;
    assert_eq!(status, 200);

    let (status, page) = get(&gw, "/admin/reports?status=open&limit=10", boss_token).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 1);
    let report = &page["reports"][0];
    assert_eq!(report["reported_id"], bob_id);
    assert_eq!(report["reason"], "spam");
    assert_eq!(report["status"], "open");
    assert_eq!(get(&gw, "/admin/reports?limit=0", boss_token).await.0, 400);
    assert_eq!(get(&gw, "/admin/reports?status=maybe", boss_token).await.0, 400);

    let report_id = report["id"].as_str().unwrap();
    let (status, resolved) = gw
        .post_bearer(&format!("/admin/reports/{report_id}/resolve"), boss_token, json!({}))
        .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolved_by"], session["user"]["id"]);
    let (_, open) = get(&gw, "/admin/reports?status=open", boss_token).await;
    assert_eq!(open["total"], 0);
    let (_, done) = get(&gw, "/admin/reports?status=resolved", boss_token).await;
    assert_eq!(done["total"], 1);
    let missing = uuid::Uuid::new_v4();
    assert_eq!(
        gw.post_bearer(&format!("/admin/reports/{missing}/resolve"), boss_token, json!({}))
            .await
            .0,
        404
    );
    // Once resolved, Ada may report Bob again.
    let (status, _) = gw
        .post_bearer(
            &format!("/users/report/{bob_id}"),
            ada_token,
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(status, 200);

    // Deactivation: Bob is online with a valid token…
    let presence = fleet.presence().await;
    let bob_uid = UserId::parse(&bob_id).unwrap();
    presence.connect(bob_uid, "phone").await.unwrap();
    assert_eq!(get(&gw, "/users/me", bob_token).await.0, 200);
    let (status, body) = gw
        .post_bearer(&format!("/admin/users/{bob_id}/deactivate"), boss_token, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // …his token stops working at once, he is offline and cannot log in.
    let (status, body) = get(&gw, "/users/me", bob_token).await;
    assert_eq!(status, 401, "{body}");
    assert!(!presence.is_online(bob_uid).await.unwrap());
    let (status, _) = gw
        .post(
            "/auth/login",
            json!({"email": "bob@kiit.ac.in", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = gw
        .post("/auth/refresh", json!({"refresh_token": bob["refresh_token"]}))
        .await;
    assert_eq!(status, 401);
    // …and he disappears from profiles and discovery once the event is in.
    presence.connect(bob_uid, "phone").await.unwrap();
    eventually("bob's profile to disappear", Duration::from_secs(20), || async {
        (get(&gw, &format!("/users/{bob_id}"), ada_token).await.0 == 404).then_some(())
    })
    .await;
    let (_, list) = get(&gw, "/calls/available", ada_token).await;
    assert!(
        list.as_array().unwrap().iter().all(|u| u["id"] != bob_id.as_str()),
        "{list}"
    );

    let unknown = UserId::new();
    assert_eq!(
        gw.post_bearer(&format!("/admin/users/{unknown}/deactivate"), boss_token, json!({}))
            .await
            .0,
        404
    );

    // Demoted (in auth's own table): the still-valid admin token is refused
    // at the next admin request.
    fleet
        .db
        .client()
        .await
        .execute(
            "UPDATE auth.accounts SET role = 'user' WHERE lower(email) = 'boss@kiit.ac.in'",
            &[],
        )
        .await
        .unwrap();
    let (status, body) = get(&gw, "/admin/reports", boss_token).await;
    assert_eq!(status, 403, "a demoted admin's token still passed: {body}");
    assert_eq!(get(&gw, "/ws/webrtc/active-connections", boss_token).await.0, 403);
    gw.stop().await;
}

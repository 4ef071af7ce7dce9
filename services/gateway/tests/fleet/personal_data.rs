//! Personal data across services: export everything, delete everything.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Gateway};
use serde_json::{Value, json};
use unilink_test_support::eventually;

async fn get(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    gw.send(gw.http.get(gw.url(path)).bearer_auth(token)).await
}

#[tokio::test]
async fn a_user_exports_and_then_deletes_their_data_everywhere() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let ada = gw.sign_up_and_log_in(&fleet.smtp, "ada@kiit.ac.in", "ada").await;
    let bob = gw.sign_up_and_log_in(&fleet.smtp, "bob@kiit.ac.in", "bob").await;
    let (ada_token, bob_token) = (
        ada["access_token"].as_str().unwrap(),
        bob["access_token"].as_str().unwrap(),
    );
    let (ada_id, bob_id) = (ada["user"]["id"].as_str().unwrap(), bob["user"]["id"].as_str().unwrap());
    eventually("profiles", Duration::from_secs(20), || async {
        (get(&gw, &format!("/users/{ada_id}"), bob_token).await.0 == 200
            && get(&gw, &format!("/users/{bob_id}"), ada_token).await.0 == 200)
            .then_some(())
    })
    .await;

    // Ada blocks and reports Bob; Bob blocks Ada.
    assert_eq!(
        gw.post_bearer(&format!("/users/block/{bob_id}"), ada_token, json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        gw.post_bearer(&format!("/users/report/{bob_id}"), ada_token, json!({"reason": "spam"}))
            .await
            .0,
        200
    );
    assert_eq!(
        gw.post_bearer(&format!("/users/block/{ada_id}"), bob_token, json!({}))
            .await
            .0,
        200
    );
    let response = gw
        .http
        .put(gw.url("/users/me"))
        .bearer_auth(ada_token)
        .json(&json!({"bio": "export me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A call between Ada and Cyd, rejected: it is in both histories.
    let (cyd_id, cyd_token) = fleet.user(&gw, "cyd").await;
    let mut cyd_presence = gw.socket(&format!("/calls/ws/{cyd_id}"), &cyd_token).await;
    cyd_presence.send_text("ping").await;
    cyd_presence.next().await;
    let (status, call) = gw
        .post_bearer("/calls/initiate", ada_token, json!({"receiver_id": cyd_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let call_id = call["id"].as_str().unwrap().to_owned();
    let (status, _) = gw
        .post_bearer(&format!("/calls/reject/{call_id}"), &cyd_token, json!({}))
        .await;
    assert_eq!(status, 200);

    let (status, export) = get(&gw, "/users/me/export", ada_token).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["account"]["id"], ada_id);
    assert_eq!(export["account"]["email"], "ada@kiit.ac.in");
    assert_eq!(export["account"]["role"], "user");
    assert_eq!(export["profile"]["bio"], "export me");
    assert_eq!(export["blocks"].as_array().unwrap().len(), 1);
    assert_eq!(export["blocks"][0]["blocked_id"], bob_id);
    assert_eq!(export["reports"][0]["reported_id"], bob_id);
    assert_eq!(export["calls"][0]["id"], call_id);
    assert_eq!(export["calls"][0]["status"], "rejected");
    assert!(
        export.to_string().find("password").is_none(),
        "no secrets in the export"
    );

    // Her open presence socket must not outlive the account.
    let mut ada_presence = gw.socket(&format!("/calls/ws/{ada_id}"), ada_token).await;
    ada_presence.send_text("ping").await;
    ada_presence.next().await;

    // Deletion needs the password.
    let delete = |password: &str| {
        gw.http
            .delete(gw.url("/users/me"))
            .bearer_auth(ada_token)
            .json(&json!({ "password": password }))
    };
    let (status, body) = gw.send(delete("wrong password")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["detail"], "incorrect password");
    let (status, body) = gw.send(delete("correct horse battery")).await;
    assert_eq!(status, 200, "{body}");
    let (code, reason) = tokio::time::timeout(Duration::from_secs(10), ada_presence.closed())
        .await
        .expect("the deleted user's presence socket closes within seconds");
    assert_eq!((code, reason.as_str()), (1008, "account closed"));

    // Gone at once for auth…
    assert_eq!(get(&gw, "/users/me", ada_token).await.0, 401);
    let (status, _) = gw
        .post(
            "/auth/login",
            json!({"email": "ada@kiit.ac.in", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(status, 401);
    // …and, through the durable event, from profiles, blocks and reports.
    eventually("ada's profile to be erased", Duration::from_secs(20), || async {
        (get(&gw, &format!("/users/{ada_id}"), bob_token).await.0 == 404).then_some(())
    })
    .await;
    let db = fleet.db.client().await;
    let uid = uuid::Uuid::parse_str(ada_id).unwrap();
    for table in [
        "profile.blocks WHERE blocker_id = $1 OR blocked_id = $1",
        "profile.reports WHERE reporter_id = $1 OR reported_id = $1",
        "profile.profiles WHERE user_id = $1",
        "auth.accounts WHERE id = $1",
    ] {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[&uid])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}");
    }
    eventually("the mail log to forget her address", Duration::from_secs(20), || {
        let db = &db;
        async move {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM notification.deliveries WHERE recipient = 'ada@kiit.ac.in'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        }
    })
    .await;
    // Cyd keeps the call in her history, without Ada's name.
    eventually("ada's name to leave call history", Duration::from_secs(20), || async {
        let (_, history) = get(&gw, "/calls/history", &cyd_token).await;
        (history[0]["id"] == call_id.as_str() && history[0]["initiator_username"] == "").then_some(())
    })
    .await;
    // Her address can sign up again as a new account.
    let (status, _) = gw
        .post("/auth/register", json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "Ada", "password": "correct horse battery"}))
        .await;
    assert_eq!(status, 200);
    gw.stop().await;
}

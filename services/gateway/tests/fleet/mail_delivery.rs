//! Nothing is lost on the way from sign-up to inbox: auth's outbox, the
//! Redis stream and the notification service survive the notification service
//! or the SMTP server being down.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::Fleet;
use serde_json::json;
use unilink_test_support::eventually;
use unilink_test_support::service::spawn;

fn register(email: &str, username: &str) -> serde_json::Value {
    json!({"email": email, "username": username, "full_name": "Mail Test", "password": "correct horse battery"})
}

#[tokio::test]
async fn a_sign_up_while_notification_is_down_gets_exactly_one_mail_when_it_returns() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let Fleet {
        notification,
        db,
        prefix,
        smtp,
        ..
    } = fleet;
    notification.stop().await.unwrap();

    let (status, body) = gw.post("/auth/register", register("down@kiit.ac.in", "down")).await;
    assert_eq!(status, 200, "{body}");
    // The sign-up event waits in the stream, unread.
    let redis = common::connect_redis(&unilink_test_support::redis_url(), &prefix).await;
    eventually("the sign-up event in the stream", Duration::from_secs(10), || async {
        (redis.backlog("events:auth", "notification").await.ok()?? > 0).then_some(())
    })
    .await;
    assert!(smtp.messages_to("down@kiit.ac.in").is_empty());

    let port = smtp.port().to_string();
    let settings = unilink_test_support::settings(
        &db,
        &prefix,
        &[("SMTP_SERVER", "127.0.0.1"), ("SMTP_PORT", port.as_str())],
    );
    let notification = spawn::<unilink_notification::Notification>(settings).await;
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0].token_after("verify?token=").is_some());
    // Every event handled and acknowledged: no duplicate can follow.
    common::wait_settled(&redis, "auth", "notification", Duration::from_secs(20)).await;
    assert_eq!(smtp.messages_to("down@kiit.ac.in").len(), 1, "exactly one mail");
    notification.stop().await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn a_sign_up_while_the_smtp_server_is_down_is_mailed_once_it_is_back() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    fleet.smtp.stop().await;
    let (status, body) = gw.post("/auth/register", register("smtp@kiit.ac.in", "smtpdown")).await;
    assert_eq!(status, 200, "{body}");
    // Notification has the event and could not send it.
    let redis = fleet.redis().await;
    common::wait_unacknowledged(&redis, "auth", "notification", Duration::from_secs(10)).await;
    fleet.smtp.restart().await;
    let mail = fleet.mail("smtp@kiit.ac.in", 1).await;
    let token = mail.token_after("verify?token=").unwrap();
    common::wait_settled(&redis, "auth", "notification", Duration::from_secs(20)).await;
    assert_eq!(fleet.smtp.messages_to("smtp@kiit.ac.in").len(), 1, "exactly one mail");
    // And the link in it works.
    let (status, _) = gw.post("/auth/verify-email", json!({ "token": token })).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

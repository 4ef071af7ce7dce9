//! Email delivery end to end: events appended to `events:auth` exactly as
//! auth's outbox relay does, the notification service consuming them, and a
//! real SMTP server (the test-support sink) receiving the mails. Tokens and
//! codes are read out of the delivered mail, never from the database.

use crate::common;

use std::time::Duration;

use common::{Harness, Ledger, random_token, verification_event};

use chrono::Utc;
use unilink_events::Event;
use unilink_events::payload::{USER_LOGIN_OTP_REQUESTED, USER_REGISTERED, USER_VERIFICATION_REQUESTED};
use unilink_test_support::eventually;
use unilink_test_support::smtp::{ReceivedMail, SmtpSink};

const FRONTEND_URL: &str = "https://app.unilink.test";
const WAIT: Duration = Duration::from_secs(10);

impl Harness {
    async fn ledger_delivered(&self, event: &Event) -> Ledger {
        eventually("the ledger to say delivered", WAIT, || async {
            self.ledger(event).await.filter(|l| l.status == "delivered")
        })
        .await
    }
}

fn otp_event(email: &str, otp: &str) -> Event {
    Event::new(
        USER_LOGIN_OTP_REQUESTED,
        serde_json::json!({
            "user_id": uuid::Uuid::new_v4().to_string(),
            "email": email,
            "username": "ana_k",
            "otp": otp,
            "expires_at": (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339(),
        }),
    )
}

fn mails_to(mails: &[ReceivedMail], address: &str) -> usize {
    mails
        .iter()
        .filter(|m| m.recipients.iter().any(|r| r == address))
        .count()
}

#[tokio::test]
async fn verification_event_sends_one_mail_with_link_and_token() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let service = h.start(Some(&sink), &[]).await;

    let token = random_token();
    let event = verification_event("ana@kiit.ac.in", &token);
    h.append(&event).await;

    let mails = sink.wait_for(1, WAIT).await;
    let mail = &mails[0];
    assert_eq!(mail.recipients, vec!["ana@kiit.ac.in".to_owned()]);
    assert_eq!(mail.to(), vec!["ana@kiit.ac.in".to_owned()]);
    assert_eq!(mail.from, "noreply@unilink.test");
    assert_eq!(mail.part_types(), vec!["text/plain", "text/html"]);
    assert!(mail.subject().unwrap().contains("Verify"));
    let text = mail.text();
    assert!(text.contains(&format!("{FRONTEND_URL}/verify?token={token}")), "{text}");
    assert_eq!(mail.token_after("verify?token=").as_deref(), Some(token.as_str()));
    assert!(
        text.lines().any(|l| l.trim() == token),
        "the token itself is in the body: {text}"
    );
    let html = mail.html().unwrap();
    assert!(html.contains(&format!("href=\"{FRONTEND_URL}/verify?token={token}\"")));
    assert!(
        html.contains("Ana &lt;b&gt;Kumar&lt;/b&gt;"),
        "user-provided names are escaped"
    );

    let ledger = h.ledger_delivered(&event).await;
    assert_eq!(ledger.attempts, 1);
    assert!(ledger.has_delivered_at);
    assert_eq!(ledger.last_error, None);
    assert_eq!(ledger.recipient.as_deref(), Some("ana@kiit.ac.in"));

    let mails = h.flush(&sink).await;
    assert_eq!(mails_to(&mails, "ana@kiit.ac.in"), 1);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_redelivered_event_is_not_sent_twice() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let service = h.start(Some(&sink), &[]).await;

    let event = verification_event("dup@kiit.ac.in", &random_token());
    // Twice back to back, and once more after it was delivered.
    h.append(&event).await;
    h.append(&event).await;
    sink.wait_for(1, WAIT).await;
    h.ledger_delivered(&event).await;
    h.append(&event).await;

    let mails = h.flush(&sink).await;
    assert_eq!(mails_to(&mails, "dup@kiit.ac.in"), 1, "{mails:#?}");
    assert_eq!(mails.len(), 2);
    assert_eq!(h.ledger(&event).await.unwrap().attempts, 1);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn login_otp_event_sends_the_code_with_credentials() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let service = h
        .start(
            Some(&sink),
            &[("SMTP_USER", "mailer"), ("SMTP_PASSWORD", "smtp-secret")],
        )
        .await;

    let event = otp_event("otp@kiit.ac.in", "042917");
    h.append(&event).await;

    let mails = sink.wait_for(1, WAIT).await;
    let mail = &mails[0];
    assert_eq!(mail.to(), vec!["otp@kiit.ac.in".to_owned()]);
    assert_eq!(mail.digits(6).as_deref(), Some("042917"));
    assert!(mail.text().contains("10 minutes"), "{}", mail.text());
    assert!(mail.html().unwrap().contains("042917"));
    assert!(
        !mail.subject().unwrap().contains("042917"),
        "the code is not in the subject"
    );
    assert_eq!(mail.auth_user.as_deref(), Some("mailer"));
    h.ledger_delivered(&event).await;
    service.stop().await.unwrap();
}

#[tokio::test]
async fn events_appended_while_the_service_is_down_are_delivered_once_on_restart() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let service = h.start(Some(&sink), &[]).await;
    service.stop().await.unwrap();

    let token = random_token();
    let event = verification_event("late@kiit.ac.in", &token);
    h.append(&event).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.messages().is_empty(), "nothing is sent while the service is down");

    let service = h.start(Some(&sink), &[]).await;
    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails[0].token_after("verify?token=").as_deref(), Some(token.as_str()));
    h.ledger_delivered(&event).await;
    let mails = h.flush(&sink).await;
    assert_eq!(mails_to(&mails, "late@kiit.ac.in"), 1);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn mail_is_delivered_once_the_smtp_server_is_back() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let service = h.start(Some(&sink), &[]).await;
    sink.stop().await;

    let event = otp_event("retry@kiit.ac.in", "314159");
    h.append(&event).await;
    let failed = eventually("a failed attempt in the ledger", WAIT, || async {
        h.ledger(&event).await.filter(|l| l.attempts >= 1)
    })
    .await;
    assert_eq!(failed.status, "pending");
    assert!(!failed.has_delivered_at);
    let error = failed.last_error.expect("the failure is recorded");
    assert!(!error.contains("314159"), "no secrets in last_error: {error}");
    assert!(sink.messages().is_empty());

    sink.restart().await;
    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails[0].digits(6).as_deref(), Some("314159"));
    let ledger = h.ledger_delivered(&event).await;
    assert!(ledger.attempts >= 2, "{ledger:?}");
    assert_eq!(ledger.last_error, None);
    let mails = h.flush(&sink).await;
    assert_eq!(mails_to(&mails, "retry@kiit.ac.in"), 1);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn without_smtp_server_mails_are_written_to_the_outbox_folder() {
    let h = Harness::new().await;
    let dir = std::env::temp_dir().join(format!("unilink-outbox-{}", uuid::Uuid::new_v4().simple()));
    let dir_text = dir.to_str().unwrap().to_owned();
    let service = h.start(None, &[("EMAIL_OUTBOX_DIR", &dir_text)]).await;

    let token = random_token();
    let event = verification_event("dev@kiit.ac.in", &token);
    h.append(&event).await;

    let file = dir.join(format!("{}.eml", event.id));
    let data = eventually("the .eml file", WAIT, || {
        let file = file.clone();
        async move { std::fs::read_to_string(&file).ok() }
    })
    .await;
    let mail = ReceivedMail {
        from: String::new(),
        recipients: Vec::new(),
        data,
        auth_user: None,
    };
    assert_eq!(mail.to(), vec!["dev@kiit.ac.in".to_owned()]);
    assert_eq!(mail.token_after("verify?token=").as_deref(), Some(token.as_str()));
    assert!(mail.html().is_some());
    let ledger = h.ledger_delivered(&event).await;
    assert_eq!(ledger.attempts, 1);
    service.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn other_events_are_ignored_and_malformed_ones_do_not_block_the_stream() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let service = h.start(Some(&sink), &[]).await;

    let registered = Event::new(
        USER_REGISTERED,
        serde_json::json!({"user_id": "u", "email": "r@kiit.ac.in", "username": "r", "full_name": "R"}),
    );
    let malformed = Event::new(
        USER_VERIFICATION_REQUESTED,
        serde_json::json!({"email": "m@kiit.ac.in", "token": 12345}),
    );
    let bad_address = verification_event("not an address", &random_token());
    h.append(&registered).await;
    h.append(&malformed).await;
    h.append(&bad_address).await;

    let mails = h.flush(&sink).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(
        h.ledger(&registered).await.is_none(),
        "other events are not in the ledger"
    );
    let failed = h.ledger(&malformed).await.expect("malformed event recorded");
    assert_eq!(failed.status, "failed");
    assert!(failed.last_error.unwrap().contains("payload"));
    let failed = h.ledger(&bad_address).await.expect("bad address recorded");
    assert_eq!(failed.status, "failed");
    assert_eq!(failed.recipient.as_deref(), Some("not an address"));
    service.stop().await.unwrap();
}

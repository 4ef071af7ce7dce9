//! Mails that cannot or must not be sent: refused for good, failing past
//! `EMAIL_MAX_ATTEMPTS`, expired before they could go, sealed with a key
//! notification does not hold. Each is recorded `failed`, told to the
//! dead-letter stream once, and never blocks the mails behind it. Also: codes
//! arrive sealed and are opened, and production mail refuses a server
//! without TLS.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::{Harness, random_token, verification_event};
use unilink_bus::{StreamConsumer, StreamEntry};
use unilink_config::{Environment, Settings, SmtpTls};
use unilink_events::Event;
use unilink_events::payload::USER_LOGIN_OTP_REQUESTED;
use unilink_events::seal::{self, SealKeys};
use unilink_notification::worker::DEAD_LETTERS;
use unilink_test_support::eventually;
use unilink_test_support::smtp::SmtpSink;

const WAIT: Duration = Duration::from_secs(15);

impl Harness {
    /// Every entry of the dead-letter stream, oldest first (read through a
    /// group of its own, from the start).
    async fn dead_letters(&self) -> Vec<StreamEntry> {
        let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
        let reader = StreamConsumer::join(&self.redis, DEAD_LETTERS, &group, "test")
            .await
            .expect("join the dead-letter stream");
        let entries = reader.read(1000, Duration::from_millis(50)).await.expect("read");
        reader.close().await;
        entries
    }

    async fn dead_letter_of(&self, event: &Event) -> StreamEntry {
        let id = event.id.to_string();
        eventually("the event in the dead letters", WAIT, || async {
            self.dead_letters()
                .await
                .into_iter()
                .find(|e| e.fields.get("event_id") == Some(&id))
        })
        .await
    }
}

fn otp_event(email: &str, otp: serde_json::Value, expires_in: chrono::Duration) -> Event {
    let user_id = uuid::Uuid::new_v4().to_string();
    Event::new(
        USER_LOGIN_OTP_REQUESTED,
        serde_json::json!({
            "user_id": user_id,
            "email": email,
            "username": "ana_k",
            "otp": otp,
            "expires_at": (Utc::now() + expires_in).to_rfc3339(),
        }),
    )
}

/// A login-code event whose code is sealed with `keys`, as auth writes it.
fn sealed_otp_event(email: &str, code: &str, keys: &SealKeys) -> Event {
    let mut event = otp_event(email, serde_json::Value::Null, chrono::Duration::minutes(10));
    let user_id = event.payload["user_id"].as_str().unwrap().to_owned();
    let sealed = keys
        .seal(code, &seal::context(USER_LOGIN_OTP_REQUESTED, &user_id))
        .unwrap();
    event.payload["otp"] = serde_json::to_value(sealed).unwrap();
    event
}

#[tokio::test]
async fn a_mail_refused_for_good_is_dead_lettered_at_once_and_the_stream_goes_on() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    sink.refuse("bounce", "550 5.1.1 No such user here");
    let service = h.start(Some(&sink), &[]).await;

    let code = "271828";
    let event = otp_event(
        "bounce@kiit.ac.in",
        serde_json::json!(code),
        chrono::Duration::minutes(10),
    );
    h.append(&event).await;
    h.flush(&sink).await;

    let letter = h.dead_letter_of(&event).await;
    assert_eq!(letter.fields["event_type"], USER_LOGIN_OTP_REQUESTED);
    assert_eq!(letter.fields["kind"], "login_otp");
    assert_eq!(letter.fields["attempts"], "1", "a permanent refusal is not retried");
    assert!(letter.fields["reason"].contains("550"), "{:?}", letter.fields);
    let everything = format!("{:?}", letter.fields);
    assert!(!everything.contains(code), "no code in the dead letters: {everything}");
    assert!(!everything.contains("bounce@"), "no address in the dead letters");
    let ledger = h.ledger(&event).await.unwrap();
    assert_eq!((ledger.status.as_str(), ledger.attempts), ("failed", 1));
    assert!(ledger.last_error.unwrap().contains("No such user"));
    assert!(sink.messages_to("bounce@kiit.ac.in").is_empty());

    // Redelivered (e.g. taken over from a dead replica): not tried again.
    h.append(&event).await;
    h.flush(&sink).await;
    assert_eq!(h.ledger(&event).await.unwrap().attempts, 1);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn temporary_failures_give_up_after_email_max_attempts() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    sink.refuse("busy", "451 4.3.0 Mailbox busy, try later");
    let service = h.start(Some(&sink), &[("EMAIL_MAX_ATTEMPTS", "3")]).await;

    let event = verification_event("busy@kiit.ac.in", &random_token());
    h.append(&event).await;
    let letter = h.dead_letter_of(&event).await;
    assert_eq!(letter.fields["attempts"], "3");
    assert!(letter.fields["reason"].contains("451"), "{:?}", letter.fields);
    let ledger = h.ledger(&event).await.unwrap();
    assert_eq!((ledger.status.as_str(), ledger.attempts), ("failed", 3));
    // It is not retried any more.
    h.flush(&sink).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.ledger(&event).await.unwrap().attempts, 3);
    let count = h
        .dead_letters()
        .await
        .iter()
        .filter(|e| e.fields["event_id"] == event.id.to_string())
        .count();
    assert_eq!(count, 1, "told to the dead letters once");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_code_that_expired_before_it_could_go_is_not_sent() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let service = h.start(Some(&sink), &[]).await;

    let event = otp_event(
        "late@kiit.ac.in",
        serde_json::json!("161803"),
        chrono::Duration::seconds(-5),
    );
    h.append(&event).await;
    h.flush(&sink).await;
    assert!(
        sink.messages_to("late@kiit.ac.in").is_empty(),
        "a dead code is not mailed"
    );
    let letter = h.dead_letter_of(&event).await;
    assert!(letter.fields["reason"].contains("expired"), "{:?}", letter.fields);
    assert_eq!(h.ledger(&event).await.unwrap().status, "failed");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn sealed_codes_are_opened_and_codes_sealed_with_another_key_are_refused() {
    let h = Harness::new().await;
    let sink = SmtpSink::start().await;
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let service = h.start(Some(&sink), &[("EVENT_SEAL_KEYS", key)]).await;

    let ours = SealKeys::from_base64(&[key]).unwrap();
    let event = sealed_otp_event("sealed@kiit.ac.in", "314159", &ours);
    assert!(!event.payload.to_string().contains("314159"));
    h.append(&event).await;
    let mail = eventually("the sealed code's mail", WAIT, || async {
        sink.messages_to("sealed@kiit.ac.in").into_iter().next()
    })
    .await;
    assert_eq!(mail.digits(6).as_deref(), Some("314159"));

    // Sealed with the development key, which this service does not hold.
    let foreign = SealKeys::from_base64(&[unilink_config::DEV_EVENT_SEAL_KEY]).unwrap();
    let event = sealed_otp_event("foreign@kiit.ac.in", "999999", &foreign);
    h.append(&event).await;
    let letter = h.dead_letter_of(&event).await;
    assert!(letter.fields["reason"].contains("does not hold"), "{:?}", letter.fields);
    assert!(sink.messages_to("foreign@kiit.ac.in").is_empty());
    service.stop().await.unwrap();
}

#[tokio::test]
async fn production_mail_refuses_a_server_without_starttls() {
    use unilink_notification::email;
    use unilink_notification::mailer::{Mailer, from_mailbox};

    // The sink does not offer STARTTLS.
    let sink = SmtpSink::start().await;
    let port = sink.port().to_string();
    let smtp = |tls: &str| {
        Settings::from_vars([
            ("SMTP_SERVER", sink.host()),
            ("SMTP_PORT", port.as_str()),
            ("SMTP_TLS", tls),
            ("SMTP_TIMEOUT_SECONDS", "2"),
        ])
        .unwrap()
        .smtp
    };
    let send = |mailer: Mailer, settings: unilink_config::SmtpSettings| async move {
        let payload: unilink_events::payload::LoginOtpRequested = serde_json::from_value(
            otp_event("tls@kiit.ac.in", serde_json::json!("x"), chrono::Duration::minutes(5)).payload,
        )
        .unwrap();
        let mail = email::login_otp_email(&payload, "123456", Utc::now());
        let id = unilink_domain::EventId::new();
        let message = mail.to_message(&from_mailbox(&settings).unwrap(), id).unwrap();
        mailer.send(id, &mail, message).await
    };

    let required = smtp("required");
    assert_eq!(required.tls, SmtpTls::Required);
    let err = send(
        Mailer::from_settings(&required, Environment::Production).unwrap(),
        required,
    )
    .await
    .expect_err("no plaintext fallback");
    assert!(err.to_string().to_lowercase().contains("tls"), "{err}");
    assert!(sink.messages().is_empty(), "nothing went out in plaintext");

    // Production refuses the opportunistic mode outright.
    let opportunistic = smtp("opportunistic");
    assert!(Mailer::from_settings(&opportunistic, Environment::Production).is_err());
    // Development still delivers to such a server (the same sink).
    send(
        Mailer::from_settings(&opportunistic, Environment::Development).unwrap(),
        opportunistic,
    )
    .await
    .expect("development falls back to plaintext");
    assert_eq!(sink.messages().len(), 1);
}

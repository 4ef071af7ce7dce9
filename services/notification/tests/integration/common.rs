//! Events the notification tests append, as auth's outbox relay writes them.

use chrono::Utc;
use unilink_bus::Redis;
use unilink_config::Settings;
use unilink_events::payload::USER_VERIFICATION_REQUESTED;
use unilink_events::{Event, stream_of};
use unilink_notification::Notification;
use unilink_test_support::service::{RunningService, spawn};
use unilink_test_support::smtp::{ReceivedMail, SmtpSink};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

/// A `user.verification_requested` event for `email` with `token` (the full
/// name carries markup, which the mail must escape).
pub fn verification_event(email: &str, token: &str) -> Event {
    Event::new(
        USER_VERIFICATION_REQUESTED,
        serde_json::json!({
            "user_id": uuid::Uuid::new_v4().to_string(),
            "email": email,
            "username": "ana_k",
            "full_name": "Ana <b>Kumar</b>",
            "token": token,
            "expires_at": (Utc::now() + chrono::Duration::hours(24)).to_rfc3339(),
        }),
    )
}

/// A token like auth's: base64url, at least 128 bits.
pub fn random_token() -> String {
    format!("{}-{}_x", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A database, a Redis prefix and a connection, for one test; the service
/// started on them, and events appended as auth's outbox relay does.
pub struct Harness {
    pub db: TestDatabase,
    pub prefix: String,
    pub redis: Redis,
}

impl Harness {
    /// The event's row in the delivery ledger.
    pub async fn ledger(&self, event: &Event) -> Option<Ledger> {
        let row = self
            .db
            .client()
            .await
            .query_opt(
                "SELECT status, attempts, last_error, delivered_at IS NOT NULL AS has_delivered_at, recipient
                 FROM notification.deliveries WHERE event_id = $1",
                &[&event.id.as_uuid()],
            )
            .await
            .expect("query the ledger")?;
        Some(Ledger {
            status: row.get("status"),
            attempts: row.get("attempts"),
            last_error: row.get("last_error"),
            has_delivered_at: row.get("has_delivered_at"),
            recipient: row.get("recipient"),
        })
    }

    pub async fn new() -> Harness {
        let db = TestDatabase::create().await;
        let prefix = unique_prefix();
        let redis = Redis::connect(&settings(&db, &prefix, &[]).redis)
            .await
            .expect("connect to Redis");
        Harness { db, prefix, redis }
    }

    /// Settings that send to `sink`, plus `extra`.
    pub fn settings_for(&self, sink: Option<&SmtpSink>, extra: &[(&str, &str)]) -> Settings {
        let port = sink.map(|s| s.port().to_string());
        let mut vars: Vec<(&str, &str)> = vec![
            ("FRONTEND_URL", "https://app.unilink.test"),
            ("EMAIL_FROM", "noreply@unilink.test"),
            ("SMTP_TIMEOUT_SECONDS", "2"),
        ];
        if let (Some(sink), Some(port)) = (sink, port.as_deref()) {
            vars.push(("SMTP_SERVER", sink.host()));
            vars.push(("SMTP_PORT", port));
        }
        vars.extend_from_slice(extra);
        settings(&self.db, &self.prefix, &vars)
    }

    pub async fn start(&self, sink: Option<&SmtpSink>, extra: &[(&str, &str)]) -> RunningService {
        spawn::<Notification>(self.settings_for(sink, extra)).await
    }

    /// Appends `event` to `events:auth` as auth's outbox relay does.
    pub async fn append(&self, event: &Event) {
        unilink_events::outbox::append(&self.redis, &stream_of("auth"), event)
            .await
            .expect("append to events:auth");
    }

    /// Appends a marker event for another address and waits for its mail
    /// (the consumer handles a stream in order, so everything before it
    /// was handled); returns every mail so far.
    pub async fn flush(&self, sink: &SmtpSink) -> Vec<ReceivedMail> {
        let before = sink.messages().len();
        let marker = format!("marker-{}@kiit.ac.in", uuid::Uuid::new_v4().simple());
        self.append(&verification_event(&marker, &random_token())).await;
        let mails = sink.wait_for(before + 1, std::time::Duration::from_secs(15)).await;
        assert_eq!(sink.messages_to(&marker).len(), 1);
        mails
    }
}

/// A row of notification's delivery ledger.
#[derive(Debug)]
pub struct Ledger {
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub has_delivered_at: bool,
    pub recipient: Option<String>,
}

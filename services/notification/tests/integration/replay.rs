//! Emails survive a Redis that restarts empty: auth's outbox (a real outbox
//! table and relay, in an `auth` schema of the test database) replays what
//! the stream lost, and the delivery ledger keeps a mail that was already
//! sent from going out twice.

use crate::common;

use std::time::Duration;

use common::{random_token, verification_event};

use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_config::Settings;
use unilink_db::{Migration, PgPool};
use unilink_events::outbox::{self, OutboxRelay};
use unilink_events::{Event, stream_of};
use unilink_notification::Notification;
use unilink_test_support::faults::PrivateRedis;
use unilink_test_support::service::spawn;
use unilink_test_support::smtp::{ReceivedMail, SmtpSink};
use unilink_test_support::{TestDatabase, eventually, settings, unique_prefix};

const WAIT: Duration = Duration::from_secs(20);

fn mails_to(mails: &[ReceivedMail], address: &str) -> usize {
    mails
        .iter()
        .filter(|m| m.recipients.iter().any(|r| r == address))
        .count()
}

/// Commits `event` to the outbox, as auth does with its change.
async fn enqueue(pool: &PgPool, event: &Event) {
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    outbox::enqueue(&tx, event).await.expect("enqueue");
    tx.commit().await.expect("commit");
}

async fn wait_published(db: &TestDatabase, event: &Event) {
    eventually("the event to be published", WAIT, || async {
        let row = db
            .client()
            .await
            .query_one(
                "SELECT published_at IS NOT NULL FROM auth.outbox WHERE id = $1",
                &[&event.id.as_uuid()],
            )
            .await
            .expect("outbox row");
        row.get::<_, bool>(0).then_some(())
    })
    .await;
}

fn notification_settings(db: &TestDatabase, prefix: &str, redis: &PrivateRedis, sink: &SmtpSink) -> Settings {
    let port = sink.port().to_string();
    settings(
        db,
        prefix,
        &[
            ("REDIS_URL", &redis.url()),
            ("FRONTEND_URL", "https://app.unilink.test"),
            ("EMAIL_FROM", "noreply@unilink.test"),
            ("SMTP_TIMEOUT_SECONDS", "2"),
            ("SMTP_SERVER", sink.host()),
            ("SMTP_PORT", &port),
        ],
    )
}

#[tokio::test]
async fn a_mail_redis_lost_is_sent_after_the_restart_and_a_sent_one_is_not_sent_again() {
    let db = TestDatabase::create().await;
    let mut redis = PrivateRedis::start().await;
    let sink = SmtpSink::start().await;
    let prefix = unique_prefix();
    let settings = notification_settings(&db, &prefix, &redis, &sink);

    // auth's side: its outbox and relay.
    let migrations = [Migration {
        version: 1,
        name: "outbox",
        sql: outbox::MIGRATION_SQL,
    }];
    unilink_db::migrate(&settings.database, "auth", &migrations)
        .await
        .expect("create auth's outbox");
    let pool = unilink_db::connect(&settings.database, "auth", "auth-test").expect("pool");
    let relay = OutboxRelay {
        db: pool.clone(),
        redis: Redis::connect(&settings.redis).await.expect("connect to Redis"),
        stream: stream_of("auth"),
        database: settings.database.clone(),
        schema: "auth",
    };
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(relay.run(stop_relay.clone()));

    // A first mail is sent while everything runs.
    let service = spawn::<Notification>(settings.clone()).await;
    let sent = verification_event("sent@kiit.ac.in", &random_token());
    enqueue(&pool, &sent).await;
    sink.wait_for(1, WAIT).await;
    service.stop().await.unwrap();

    // The service is down; a second event is published but nobody reads it,
    // and then Redis restarts with nothing.
    let lost = verification_event("lost@kiit.ac.in", &random_token());
    enqueue(&pool, &lost).await;
    wait_published(&db, &lost).await;
    redis.restart().await;

    // The service comes back: the lost mail goes out, the sent one does not
    // go out again (the relay replays both), and a later one follows them.
    let service = spawn::<Notification>(settings.clone()).await;
    let later = verification_event("later@kiit.ac.in", &random_token());
    enqueue(&pool, &later).await;
    let mails = sink.wait_for(3, WAIT).await;
    assert_eq!(mails_to(&mails, "lost@kiit.ac.in"), 1, "{mails:#?}");
    assert_eq!(mails_to(&mails, "later@kiit.ac.in"), 1, "{mails:#?}");
    // The stream is handled in order: the replayed copy of the first event
    // came before the later one, and found its ledger row `delivered`.
    assert_eq!(mails_to(&mails, "sent@kiit.ac.in"), 1, "{mails:#?}");
    assert_eq!(sink.messages().len(), 3);
    let attempts: i32 = db
        .client()
        .await
        .query_one(
            "SELECT attempts FROM notification.deliveries WHERE event_id = $1",
            &[&sent.id.as_uuid()],
        )
        .await
        .expect("ledger row")
        .get(0);
    assert_eq!(attempts, 1);

    service.stop().await.unwrap();
    stop_relay.cancel();
    relay.await.unwrap();
}

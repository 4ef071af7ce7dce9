//! The outbox refills a stream that Redis lost: real PostgreSQL, and a
//! private `redis-server` that the tests kill and restart empty.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::SubsecRound;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_config::Settings;
use unilink_db::{Migration, PgPool};
use unilink_events::Event;
use unilink_events::consumer::{self, Subscription};
use unilink_events::outbox::{self, OutboxRelay, RelayError, StreamCheck};
use unilink_test_support::faults::PrivateRedis;
use unilink_test_support::{TestDatabase, eventually, settings, unique_prefix};

/// The producer's schema and stream in these tests.
const SCHEMA: &str = "producer";
const STREAM: &str = "events:producer";
const WAIT: Duration = Duration::from_secs(20);

struct Harness {
    server: PrivateRedis,
    settings: Settings,
    pool: PgPool,
    redis: Redis,
    // Declared last, so dropped after the pool.
    db: TestDatabase,
}

impl Harness {
    /// A database with an outbox in [`SCHEMA`], and a private Redis.
    async fn start() -> Harness {
        let db = TestDatabase::create().await;
        let server = PrivateRedis::start().await;
        let settings = settings(&db, &unique_prefix(), &[("REDIS_URL", &server.url())]);
        let migrations = [Migration {
            version: 1,
            name: "outbox",
            sql: outbox::MIGRATION_SQL,
        }];
        unilink_db::migrate(&settings.database, SCHEMA, &migrations)
            .await
            .expect("create the outbox");
        let pool = unilink_db::connect(&settings.database, SCHEMA, "events-test").expect("pool");
        let redis = Redis::connect(&settings.redis).await.expect("connect to Redis");
        Harness {
            server,
            settings,
            pool,
            redis,
            db,
        }
    }

    /// A relay as a producer replica runs it (its own Redis connection).
    async fn relay(&self) -> OutboxRelay {
        OutboxRelay {
            db: self.pool.clone(),
            redis: Redis::connect(&self.settings.redis).await.expect("connect to Redis"),
            stream: STREAM.to_owned(),
            database: self.settings.database.clone(),
            schema: SCHEMA,
        }
    }

    async fn spawn_relay(&self) -> Running {
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.relay().await.run(stop.clone()));
        Running { stop, task }
    }

    /// Commits `n` events, one transaction each, as a producer does.
    async fn enqueue(&self, n: usize) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..n {
            let event = Event::new("thing.happened", serde_json::json!({ "n": i }));
            let mut client = self.pool.get().await.expect("connection");
            let tx = client.transaction().await.expect("begin");
            outbox::enqueue(&tx, &event).await.expect("enqueue");
            tx.commit().await.expect("commit");
            events.push(event);
        }
        events
    }

    async fn count(&self, condition: &str) -> i64 {
        self.db
            .client()
            .await
            .query_one(&format!("SELECT count(*) FROM {SCHEMA}.outbox WHERE {condition}"), &[])
            .await
            .expect("count outbox rows")
            .get(0)
    }

    async fn wait_published(&self, n: i64, condition: &str) {
        let condition = format!("published_at IS NOT NULL AND {condition}");
        eventually(&format!("{n} rows with {condition}"), WAIT, || async {
            (self.count(&condition).await == n).then_some(())
        })
        .await;
    }

    /// A consumer group created now, recording every event its handler gets.
    fn consume(&self, group: &str) -> (Arc<Mutex<Vec<Event>>>, Running) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscription = Subscription {
            stream: STREAM.to_owned(),
            group: group.to_owned(),
            consumer: format!("{group}-1"),
        };
        let record = seen.clone();
        let handler = move |event: Event| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(event);
                Ok(())
            }
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(consumer::run(self.redis.clone(), subscription, handler, stop.clone()));
        (seen, Running { stop, task })
    }
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("task ends cleanly");
    }
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

/// Waits until `seen` holds `n` events, then long enough for two more marker
/// checks, and returns them: a second replay would show up as extra events.
async fn settled(seen: &Mutex<Vec<Event>>, n: usize) -> Vec<Event> {
    eventually(&format!("{n} events read"), WAIT, || async {
        (seen.lock().unwrap().len() >= n).then_some(())
    })
    .await;
    tokio::time::sleep(outbox::MARKER_CHECK_EVERY * 2 + Duration::from_millis(500)).await;
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn events_redis_lost_before_anyone_read_them_are_republished_in_order_and_read_once() {
    let mut h = Harness::start().await;
    let relay = h.spawn_relay().await;

    // Published, and read by nobody.
    let mut expected = h.enqueue(5).await;
    h.wait_published(5, "true").await;

    // Redis dies; events committed meanwhile cannot be published.
    h.server.kill();
    expected.extend(h.enqueue(3).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(h.count("published_at IS NULL").await, 3);

    // It comes back empty: the relay finds the marker gone and republishes
    // everything it still holds, after the restart.
    h.server.restart().await;
    let restarted: chrono::DateTime<chrono::Utc> =
        h.db.client()
            .await
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .unwrap()
            .get(0);
    let after = format!("published_at > '{}'", restarted.to_rfc3339());
    h.wait_published(8, &after).await;

    // A group created only now reads every event once, in commit order.
    let (seen, reader) = h.consume("readers");
    let read = settled(&seen, expected.len()).await;
    assert_eq!(ids(&read), ids(&expected));
    // As stored: PostgreSQL keeps microseconds.
    for e in &mut expected {
        e.occurred_at = e.occurred_at.trunc_subsecs(6);
    }
    assert_eq!(read, expected, "the events arrive intact");
    assert_eq!(h.count("published_at IS NULL").await, 0);

    reader.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_stream_redis_kept_is_not_replayed() {
    let h = Harness::start().await;
    let relay = h.relay().await;

    // A Redis that never had the stream: marked, nothing to replay.
    assert_eq!(relay.check_stream().await.unwrap(), StreamCheck::Replayed { rows: 0 });
    let expected = h.enqueue(3).await;
    assert_eq!(relay.publish_batch(200).await.unwrap(), 3);
    assert_eq!(relay.check_stream().await.unwrap(), StreamCheck::Intact);

    // Another replica starting (and checking every second) finds the marker.
    assert_eq!(h.relay().await.check_stream().await.unwrap(), StreamCheck::Intact);
    let running = h.spawn_relay().await;
    let (seen, reader) = h.consume("readers");
    let read = settled(&seen, 3).await;
    assert_eq!(ids(&read), ids(&expected), "each event is in the stream once");
    assert_eq!(h.count("published_at IS NULL").await, 0);

    reader.stop().await;
    running.stop().await;
}

#[tokio::test]
async fn of_two_replicas_that_find_the_marker_missing_only_one_replays() {
    let mut h = Harness::start().await;
    let (a, b) = (h.relay().await, h.relay().await);
    a.check_stream().await.unwrap();
    h.enqueue(4).await;
    assert_eq!(a.publish_batch(200).await.unwrap(), 4);

    h.server.restart().await;
    // Both relays' connections come back to the new server first.
    for relay in [&a, &b] {
        eventually("the relay to reach Redis again", WAIT, || async {
            relay.redis.ping(Duration::from_secs(1)).await.ok()
        })
        .await;
    }
    let (first, second) = tokio::join!(a.check_stream(), b.check_stream());
    let outcomes = [first.unwrap(), second.unwrap()];
    let replays = outcomes
        .iter()
        .filter(|o| matches!(o, StreamCheck::Replayed { .. }))
        .count();
    assert_eq!(replays, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            StreamCheck::Replayed { rows: 4 } | StreamCheck::Intact | StreamCheck::ReplayingElsewhere
        )),
        "{outcomes:?}"
    );
    assert_eq!(h.count("published_at IS NULL").await, 4);
    assert_eq!(a.check_stream().await.unwrap(), StreamCheck::Intact);
}

#[tokio::test]
async fn a_replay_another_replica_claimed_is_left_to_it_until_the_claim_goes() {
    let h = Harness::start().await;
    let relay = h.relay().await;
    relay.check_stream().await.unwrap();
    h.enqueue(2).await;
    assert_eq!(relay.publish_batch(200).await.unwrap(), 2);

    // The marker is gone and another replica has claimed the replay.
    h.redis.delete(&[outbox::marker_key(STREAM)]).await.unwrap();
    let claim = outbox::replay_claim_key(STREAM);
    h.redis
        .set_with_ttl(&claim, "another-replica", outbox::REPLAY_CLAIM_TTL)
        .await
        .unwrap();
    assert!(matches!(relay.publish_batch(200).await, Ok(0)), "nothing to publish");
    h.enqueue(1).await;
    assert!(
        matches!(relay.publish_batch(200).await, Err(RelayError::NotMarked)),
        "nothing is appended to an unmarked stream"
    );
    assert_eq!(h.count("published_at IS NULL").await, 1);
    assert_eq!(relay.check_stream().await.unwrap(), StreamCheck::ReplayingElsewhere);
    assert_eq!(h.count("published_at IS NULL").await, 1, "rows left alone");

    // That replica died half way: once its claim is gone, this one replays.
    h.redis.delete(&[claim]).await.unwrap();
    assert_eq!(relay.check_stream().await.unwrap(), StreamCheck::Replayed { rows: 2 });
    assert_eq!(h.count("published_at IS NULL").await, 3);
    assert_eq!(relay.check_stream().await.unwrap(), StreamCheck::Intact);
    assert_eq!(relay.publish_batch(200).await.unwrap(), 3);
}

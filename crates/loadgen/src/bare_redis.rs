//! The floor under the relay: Redis `PUBLISH` → `SUBSCRIBE` alone, at the
//! same rate and with payloads like the relay's, to set the fleet's relay
//! latency against.
//!
//! It mirrors the relay's shape: one subscriber connection holding one
//! channel per pair (a signaling replica has one pub/sub connection for all
//! its mailboxes), and per pair a publisher that waits for each `PUBLISH`
//! answer before the next (signaling runs one script per frame, in order).
//! It talks to Redis through the `redis` crate (tokio, RESP2 pub/sub, no TLS,
//! no cluster): a dedicated pub/sub connection for the subscriber and a
//! connection of its own per publisher. The fleet itself uses `fred`; this
//! client is the load generator's only.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Msg, RedisResult};
use tokio::sync::watch;

use unilink_domain::UserId;
use unilink_protocol::{CallFrame, Envelope, Relayed};

use crate::Fail;
use crate::pacing::{Arrivals, Pacer, Progress, Tally, candidate, stamp};

/// The channels of a run are `{PREFIX}:{run}:{pair}`.
const PREFIX: &str = "unilink-load:bare";

/// Longest wait for a connection, its `AUTH` and `SELECT` included.
const CONNECT: Duration = Duration::from_secs(5);

/// Longest wait for the answer to a command (`SUBSCRIBE`, `PUBLISH`).
const ANSWER: Duration = Duration::from_secs(5);

/// A client for `redis://[user:password@]host:port[/db]`, its sockets
/// without Nagle's delay (small frames, one at a time).
fn client(url: &str) -> Result<Client, Fail> {
    if !url.starts_with("redis://") {
        return Err("--bare-redis must be a redis:// URL".into());
    }
    let info = url
        .into_connection_info()
        .map_err(|e| format!("--bare-redis: {e}"))?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    Ok(Client::open(info)?)
}

/// `call`, or an error naming `what` if it fails or takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, call: impl Future<Output = RedisResult<T>>) -> Result<T, Fail> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("bare Redis: {what}: {e}").into()),
        Err(_) => Err(format!("bare Redis: {what}: no answer within {}s", limit.as_secs()).into()),
    }
}

/// A pub/sub connection subscribed to all of `channels` (one `SUBSCRIBE`).
async fn subscriber(client: &Client, channels: &[String]) -> Result<(PubSubSink, PubSubStream), Fail> {
    let pubsub = within(CONNECT, "connecting the subscriber", client.get_async_pubsub()).await?;
    // The sink stays with the stream for the whole run: the connection's
    // task is meant to be driven by both.
    let (mut sink, stream) = pubsub.split();
    within(ANSWER, "SUBSCRIBE", sink.subscribe(channels)).await?;
    Ok((sink, stream))
}

/// A publisher's connection: the crate bounds both the connecting and each
/// answer (`PUBLISH` fails after [`ANSWER`]).
async fn publisher(client: &Client) -> Result<MultiplexedConnection, Fail> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT))
        .set_response_timeout(Some(ANSWER));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("bare Redis: connecting a publisher: {e}").into())
}

/// A message shaped like the relay's (`2|seq|envelope`, the envelope as
/// the gateways write it), so the sizes match.
fn payload(seq: u64, from: UserId, t: u64) -> String {
    let envelope = Envelope {
        sender: from.to_string(),
        sent_us: 1_795_000_000_000_000,
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        frame: CallFrame::IceCandidate {
            candidate: candidate(t, seq),
            from,
        },
    };
    format!("{}{seq}|{}", Relayed::PREFIX, envelope.to_json())
}

/// The part of an envelope the subscriber reads: the stamp.
#[derive(serde::Deserialize)]
struct Enveloped {
    frame: Frame,
}

#[derive(serde::Deserialize)]
struct Frame {
    candidate: Stamp,
}

#[derive(serde::Deserialize)]
struct Stamp {
    t: u64,
    n: u64,
}

/// `(pair, t, n)` of a pub/sub message on a channel `{prefix}{pair}`.
fn parse_message(message: &Msg, prefix: &str) -> Option<(usize, u64, u64)> {
    let index = message.get_channel_name().strip_prefix(prefix)?.parse().ok()?;
    let text = std::str::from_utf8(message.get_payload_bytes()).ok()?;
    let (_, json) = text.strip_prefix(Relayed::PREFIX)?.split_once('|')?;
    let envelope: Enveloped = serde_json::from_str(json).ok()?;
    Some((index, envelope.frame.candidate.t, envelope.frame.candidate.n))
}

/// Publishes from `senders.len()` pairs at `rate` frames/s in all (0 = each
/// as fast as Redis answers, at most `window` in flight) for `seconds`,
/// drains for up to `drain`.
pub async fn measure(
    url: &str,
    senders: &[UserId],
    (rate, window): (u64, u64),
    seconds: u64,
    drain: Duration,
) -> Result<Tally, Fail> {
    measure_on(PREFIX, url, senders, (rate, window), seconds, drain).await
}

/// [`measure`] on channels `{prefix}:{run}:{pair}`.
async fn measure_on(
    prefix: &str,
    url: &str,
    senders: &[UserId],
    (rate, window): (u64, u64),
    seconds: u64,
    drain: Duration,
) -> Result<Tally, Fail> {
    let pairs = senders.len();
    let run = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let prefix = format!("{prefix}:{run}:");

    let client = client(url)?;
    let names: Vec<String> = (0..pairs).map(|i| format!("{prefix}{i}")).collect();
    let (sink, mut messages) = subscriber(&client, &names).await?;
    let mut publishers = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        publishers.push(publisher(&client).await?);
    }

    let origin = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let progress: Vec<Arc<Progress>> = (0..pairs).map(|_| Arc::default()).collect();
    let counters = progress.clone();
    let reader = tokio::spawn(async move {
        let _sink = sink;
        let mut arrivals: Vec<Arrivals> = (0..pairs).map(|_| Arrivals::default()).collect();
        let mut stopped = stopped;
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                message = messages.next() => match message {
                    Some(message) => {
                        if let Some((i, t, n)) = parse_message(&message, &prefix)
                            && let Some(a) = arrivals.get_mut(i)
                            && a.record(origin, t, n)
                        {
                            counters[i].arrive();
                        }
                    }
                    None => {
                        eprintln!("unilink-load: bare Redis subscriber: the connection closed");
                        break;
                    }
                },
            }
        }
        arrivals
    });

    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(pairs);
    for (index, (mut publisher, from)) in publishers.into_iter().zip(senders.iter().copied()).enumerate() {
        let channel = names[index].clone();
        let mut pacer = Pacer::new((rate, window), (pairs, index), (start, until), progress[index].clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while pacer.wait().await {
                let message = payload(sent + 1, from, stamp(origin));
                match redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&message)
                    .query_async::<i64>(&mut publisher)
                    .await
                {
                    Ok(1..) => sent += 1,
                    Ok(receivers) => {
                        eprintln!("unilink-load: bare Redis PUBLISH reached {receivers} subscribers (no subscriber?)");
                        break;
                    }
                    Err(e) => {
                        eprintln!("unilink-load: bare Redis publisher: {e}");
                        break;
                    }
                }
            }
            pacer.finish(sent)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add_sent(task.await?, start);
    }
    crate::pacing::drain(&progress, tally.sent, drain).await;
    let _ = stop.send(true);
    for arrivals in reader.await? {
        tally.add(arrivals, start);
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_yield_their_pair_and_stamp() {
        let from = UserId::parse("6f1c1d3e-0a3b-4c5d-8e9f-000000000001").unwrap();
        let text = payload(7, from, 123_456);
        let value = redis::Value::Array(vec![
            redis::Value::BulkString(b"message".to_vec()),
            redis::Value::BulkString(b"unilink-load:bare:r:3".to_vec()),
            redis::Value::BulkString(text.into_bytes()),
        ]);
        let message = Msg::from_owned_value(value).unwrap();
        assert_eq!(parse_message(&message, "unilink-load:bare:r:"), Some((3, 123_456, 7)));
        assert_eq!(parse_message(&message, "unilink-load:other:"), None);
    }

    #[test]
    fn only_redis_urls_are_taken() {
        assert!(client("redis://:secret@127.0.0.1:6379/0").is_ok());
        assert!(client("rediss://127.0.0.1:6379").is_err());
        assert!(client("http://127.0.0.1:6379").is_err());
    }

    /// Two seconds of the baseline against the real Redis (`TEST_REDIS_URL`,
    /// default `redis://127.0.0.1:6379`) at a low rate, on channels of its
    /// own: every frame arrives, once, in order, in a sane time.
    #[tokio::test(flavor = "multi_thread")]
    async fn measures_against_a_real_redis() {
        let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let senders: Vec<UserId> = (1..=2)
            .map(|i| UserId::parse(&format!("6f1c1d3e-0a3b-4c5d-8e9f-{i:012}")).unwrap())
            .collect();
        let run = measure_on(
            "unilink-load:bare-test",
            &url,
            &senders,
            (100, 32),
            2,
            Duration::from_secs(2),
        );
        let mut tally = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the measurement stops by itself")
            .expect("the measurement runs");
        let s = tally.samples.summary();
        eprintln!(
            "bare Redis, 2 pairs, 100 frames/s, 2 s: sent {} received {} p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
            tally.sent, tally.received, s.p50, s.p99, s.max
        );
        assert!((190..=200).contains(&tally.sent), "sent {}", tally.sent);
        assert_eq!(tally.received, tally.sent, "every frame arrives");
        assert_eq!((tally.duplicates, tally.out_of_order), (0, 0));
        assert_eq!(s.count as u64, tally.received);
        assert!(s.p50 > 0.0 && s.p50 < 50.0, "p50 {} ms", s.p50);
        assert!(s.max < 1000.0, "max {} ms", s.max);
    }
}

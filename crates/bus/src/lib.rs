//! Redis, the fleet's shared bus. The only crate that talks to Redis.
//!
//! * [`Redis`] — a command connection that reconnects by itself, with every key
//!   and channel name prefixed by `REDIS_KEY_PREFIX` (tests use a unique
//!   prefix each). [`Redis::ping`] is the readiness probe.
//! * [`Subscriber`] — a dedicated pub/sub connection whose subscriptions are
//!   restored after Redis comes back; used by the cross-replica relay.
//! * Streams ([`Redis::append`], [`Redis::append_if_exists`],
//!   [`StreamConsumer`]) — durable events read through consumer groups:
//!   `XREADGROUP`, `XACK`, and `XAUTOCLAIM` to take over entries a dead
//!   consumer left pending. A consumer blocks on its own connection so it
//!   never stalls other commands.
//!
//! Redis keeps only what may be lost or rebuilt (see ARCHITECTURE.md): the
//! durable copy of every event is the producing service's outbox table.

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{
    ClientLike, EventInterface, KeysInterface, LuaInterface, PubsubInterface, ServerInterface, StreamsInterface,
};
use fred::types::config::{Config, ReconnectPolicy, ServerConfig, TlsConnector};
use fred::types::streams::XID;
use fred::types::{Builder, Expiration};
use futures_util::FutureExt;
use tokio::sync::broadcast;
use unilink_config::RedisSettings;
use unilink_errors::{ErrorCode, HasErrorCode};

/// Failures talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid REDIS_URL: {0}")]
    Config(String),
    #[error("redis TLS: {0}")]
    Tls(String),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A script answered in a shape its caller does not expect (a bug, or
    /// another version of the script under the same keys).
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl HasErrorCode for BusError {
    fn code(&self) -> ErrorCode {
        match self {
            BusError::Config(_) | BusError::Tls(_) | BusError::Reply(_) => ErrorCode::Internal,
            BusError::Redis(_) | BusError::Timeout(_) => ErrorCode::Unavailable,
        }
    }
}

/// How long a command may wait, including while reconnecting.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Redis::connect`] waits for the first connection before going on
/// without one (the client keeps retrying in the background).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// The client configuration `settings` describe: `REDIS_URL`; over TLS
/// (`rediss://`) the server's certificate is verified against
/// `REDIS_CA_FILE` (else the system's roots), name included; with
/// `REDIS_SENTINELS` the master is whichever node the Sentinels name for
/// `REDIS_SENTINEL_MASTER`, asked again at every reconnection (so a
/// failover is followed without a restart).
fn builder(settings: &RedisSettings) -> Result<Builder, BusError> {
    let url = settings.url.expose();
    let mut config = Config::from_url(url).map_err(|e| BusError::Config(e.to_string()))?;
    if url.starts_with("rediss://") {
        let roots = match &settings.ca_file {
            Some(path) => unilink_tls::Roots::File(path.clone()),
            None => unilink_tls::Roots::System,
        };
        let tls = unilink_tls::client_config(&roots, unilink_tls::Verify::Full)
            .map_err(|e| BusError::Tls(format!("REDIS_CA_FILE: {e}")))?;
        config.tls = Some(TlsConnector::from((*tls).clone()).into());
    }
    if let (false, Some(master)) = (settings.sentinels.is_empty(), &settings.sentinel_master) {
        config.server = ServerConfig::new_sentinel(settings.sentinels.clone(), master.clone());
    }
    // Keep retrying the first connection too: a service must start (not ready)
    // while Redis is down and become ready when it returns.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 2;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
        })
        // At most 1 s between attempts: since relay v2 a frame needs both
        // the sending gateway's client and the receiving gateway's
        // subscription back, each on its own timer, and the relay is
        // promised back within 2 s of Redis (README, "What a replica serves").
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
    Ok(builder)
}

async fn start<C: ClientLike>(client: &C, what: &str) {
    client.connect();
    match tokio::time::timeout(FIRST_CONNECT_WAIT, client.wait_for_connect()).await {
        Ok(Ok(())) => tracing::debug!(what, "redis connected"),
        Ok(Err(e)) => {
            tracing::warn!(what, error = %e, "redis not reachable yet; retrying in the background")
        }
        Err(_) => tracing::warn!(what, "redis not reachable yet; retrying in the background"),
    }
}

/// A prefixed Redis command connection. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    settings: std::sync::Arc<RedisSettings>,
    /// Under Sentinel: how many replicas the master had, and when that was
    /// asked (see [`Redis::wait_replicated`]).
    replicas: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, i64)>>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.settings.key_prefix)
            .finish()
    }
}

impl Redis {
    /// Connects (waiting briefly for the first connection; never failing
    /// because Redis is down, only on a malformed URL).
    pub async fn connect(settings: &RedisSettings) -> Result<Redis, BusError> {
        let client = builder(settings)?.build()?;
        start(&client, "commands").await;
        Ok(Redis {
            client,
            settings: std::sync::Arc::new(settings.clone()),
            replicas: Default::default(),
        })
    }

    /// Like [`Redis::connect`], without waiting for the first connection:
    /// the connection task is spawned on the current runtime (a per-thread
    /// client, e.g. one per HTTP worker, keeps its I/O on that thread).
    pub fn connect_background(settings: &RedisSettings) -> Result<Redis, BusError> {
        let client = builder(settings)?.build()?;
        client.connect();
        Ok(Redis {
            client,
            settings: std::sync::Arc::new(settings.clone()),
            replicas: Default::default(),
        })
    }

    /// Under Sentinel, waits (up to `timeout`) until the master's replicas
    /// hold every write this client made so far, so that what was just
    /// acknowledged survives a failover; returns how many replicas did.
    /// Without Sentinel, or with no replica connected (asked at most once a
    /// second), returns 0 at once. An error means the master may be gone:
    /// the write may be lost, and the caller should not acknowledge it.
    pub async fn wait_replicated(&self, timeout: Duration) -> Result<i64, BusError> {
        if self.settings.sentinels.is_empty() {
            return Ok(0);
        }
        let known = *self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        let replicas = match known {
            Some((at, n)) if at.elapsed() < Duration::from_secs(1) => n,
            _ => {
                let n = self
                    .info_field(fred::types::InfoKind::Replication, "connected_slaves")
                    .await?
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                *self.replicas.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), n));
                n
            }
        };
        if replicas == 0 {
            return Ok(0);
        }
        let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let acked: i64 = tokio::time::timeout(timeout + COMMAND_TIMEOUT, self.client.wait(replicas, millis))
            .await
            .map_err(|_| BusError::Timeout(timeout + COMMAND_TIMEOUT))??;
        Ok(acked)
    }

    /// The run id of the Redis server this client talks to now: it changes
    /// when the server restarts or another one takes over (a failover).
    pub async fn server_id(&self) -> Result<String, BusError> {
        self.info_field(fred::types::InfoKind::Server, "run_id")
            .await?
            .ok_or_else(|| BusError::Reply("INFO server has no run_id".to_owned()))
    }

    /// The value of one `field:value` line of an `INFO` section.
    async fn info_field(&self, section: fred::types::InfoKind, field: &str) -> Result<Option<String>, BusError> {
        let info: String = tokio::time::timeout(COMMAND_TIMEOUT, self.client.info(Some(section)))
            .await
            .map_err(|_| BusError::Timeout(COMMAND_TIMEOUT))??;
        Ok(info.lines().find_map(|line| {
            line.strip_prefix(field)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|value| value.trim().to_owned())
        }))
    }

    /// `name` with this deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.settings.key_prefix)
    }

    /// How many entries of `stream` the consumer group `group` has been
    /// given but not acknowledged, without joining it.
    pub async fn unacknowledged(&self, stream: &str, group: &str) -> Result<u64, BusError> {
        pending_of(&self.client, &self.key(stream), group).await
    }

    /// How many entries of `stream` the consumer group `group` has not
    /// finished with: given but not acknowledged, plus not read yet. `None`
    /// when Redis cannot tell how many are unread (after deletions).
    pub async fn backlog(&self, stream: &str, group: &str) -> Result<Option<u64>, BusError> {
        let stream = self.key(stream);
        let pending = pending_of(&self.client, &stream, group).await?;
        Ok(lag_of(&self.client, &stream, group).await?.map(|lag| lag + pending))
    }

    /// `PING` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), BusError> {
        let probe = self.client.ping::<String>(None);
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(BusError::Timeout(timeout)),
        }
    }

    /// Publishes `payload` on the prefixed `channel`; returns how many
    /// subscribers received it.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<u64, BusError> {
        Ok(self.client.publish(self.key(channel), payload).await?)
    }

    /// Sets a prefixed key with a time to live.
    pub async fn set_with_ttl(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BusError> {
        let secs = ttl.as_secs().max(1) as i64;
        self.client
            .set::<(), _, _>(self.key(key), value, Some(Expiration::EX(secs)), None, false)
            .await?;
        Ok(())
    }

    /// Counts one hit in a fixed window — `INCR` the prefixed key and give it
    /// `ttl` when it is new — and, in the same round trip, tells whether any
    /// of `flags` (prefixed keys) exists. Returns (count so far, any flag set).
    pub async fn incr_window(
        &self,
        key: &str,
        ttl: Duration,
        flags: &[String],
        timeout: Duration,
    ) -> Result<(i64, bool), BusError> {
        let key = self.key(key);
        let flags: Vec<String> = flags.iter().map(|k| self.key(k)).collect();
        let pipeline = self.client.pipeline();
        let work = async {
            let _: () = pipeline.incr(&key).await?;
            let _: () = pipeline
                .expire(&key, ttl.as_secs().max(1) as i64, Some(fred::types::ExpireOptions::NX))
                .await?;
            if flags.is_empty() {
                let (count, _): (i64, i64) = pipeline.all().await?;
                Ok::<_, fred::error::Error>((count, false))
            } else {
                let _: () = pipeline.exists(flags).await?;
                let (count, _, set): (i64, i64, i64) = pipeline.all().await?;
                Ok((count, set > 0))
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(BusError::Timeout(timeout)),
        }
    }

    /// Runs a Lua script atomically (`EVAL`; keys are used as given, so
    /// prefix them with [`Redis::key`]). The answer is flattened to strings:
    /// one entry per array element (or one for a scalar), `None` for nil.
    pub async fn script(
        &self,
        lua: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Option<String>>, BusError> {
        let run = self.client.eval::<fred::types::Value, _, _, _>(lua, keys, args);
        let value = match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
            Ok(result) => result?,
            Err(_) => return Err(BusError::Timeout(COMMAND_TIMEOUT)),
        };
        let mut out = Vec::new();
        flatten_value(value, &mut out);
        Ok(out)
    }

    /// Runs a [`LuaScript`] by its SHA (`EVALSHA`), loading it first when
    /// this process has not yet, or again when Redis lost its script cache
    /// (a restart). Same answer shape as [`Redis::script`].
    pub async fn run(
        &self,
        script: &LuaScript,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Option<String>>, BusError> {
        let work = async {
            for attempt in 0..2 {
                let sha = match script.sha.get() {
                    Some(sha) => sha.clone(),
                    None => {
                        let sha: String = self.client.script_load(script.lua).await?;
                        let _ = script.sha.set(sha.clone());
                        sha
                    }
                };
                match self
                    .client
                    .evalsha::<fred::types::Value, _, _, _>(sha.as_str(), keys.clone(), args.clone())
                    .await
                {
                    Ok(value) => return Ok(value),
                    Err(e) if attempt == 0 && e.details().starts_with("NOSCRIPT") => {
                        let sha: String = self.client.script_load(script.lua).await?;
                        tracing::info!(sha = %sha, "lua script reloaded into redis");
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                "script could not be loaded",
            ))
        }
        .boxed();
        // `work` is boxed in its own statement: the client's command future
        // is large, and a task that keeps a script call among its await
        // points (a presence session, which every idle socket holds) would
        // otherwise be sized for it for life. Boxed inside the awaited
        // expression instead, rustc still kept room for the unboxed future
        // in this function's state.
        let value = match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
            Ok(result) => result?,
            Err(_) => return Err(BusError::Timeout(COMMAND_TIMEOUT)),
        };
        let mut out = Vec::new();
        flatten_value(value, &mut out);
        Ok(out)
    }

    /// Reads several prefixed keys in one round trip.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, BusError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let work = self.client.mget::<fred::types::Value, _>(keys);
        let value = match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
            Ok(result) => result?,
            Err(_) => return Err(BusError::Timeout(COMMAND_TIMEOUT)),
        };
        let mut out = Vec::new();
        flatten_value(value, &mut out);
        Ok(out)
    }

    /// Deletes prefixed keys.
    pub async fn delete(&self, keys: &[String]) -> Result<(), BusError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let _: i64 = self.client.del(keys).await?;
        Ok(())
    }

    /// Prefixed keys matching a glob (`SCAN`; for rare administrative reads,
    /// never on a hot path). Returned without the prefix.
    pub async fn scan_keys(&self, pattern: &str, limit: usize) -> Result<Vec<String>, BusError> {
        use futures_util::TryStreamExt;
        let mut found = Vec::new();
        let mut pages = self.client.scan_buffered(self.key(pattern), Some(500), None);
        while let Some(key) = pages.try_next().await? {
            if let Some(name) = key.as_str().and_then(|k| k.strip_prefix(&self.settings.key_prefix)) {
                found.push(name.to_owned());
            }
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }

    /// Reads a prefixed key.
    pub async fn get(&self, key: &str) -> Result<Option<String>, BusError> {
        Ok(self.client.get(self.key(key)).await?)
    }

    /// Appends an event to the prefixed `stream`, trimming it to about
    /// `max_len` entries; returns the entry id.
    pub async fn append(&self, stream: &str, fields: &[(&str, &str)], max_len: u64) -> Result<String, BusError> {
        let pairs: Vec<(String, String)> = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let cap = ("MAXLEN", "~", max_len as i64);
        Ok(self.client.xadd(self.key(stream), false, cap, "*", pairs).await?)
    }

    /// Like [`Redis::append`], but only while the prefixed `marker` key
    /// exists (one script, so one round trip): `None`, and nothing appended,
    /// when it does not. The outbox relay uses it so that nothing is published
    /// into a stream Redis lost before the relay has refilled it.
    pub async fn append_if_exists(
        &self,
        marker: &str,
        stream: &str,
        fields: &[(&str, &str)],
        max_len: u64,
    ) -> Result<Option<String>, BusError> {
        let mut args = Vec::with_capacity(1 + 2 * fields.len());
        args.push(max_len.to_string());
        for (k, v) in fields {
            args.push((*k).to_owned());
            args.push((*v).to_owned());
        }
        let answer = self
            .run(&APPEND_IF_EXISTS, vec![self.key(marker), self.key(stream)], args)
            .await?;
        Ok(answer.into_iter().next().flatten())
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.client.quit().await;
    }

    /// The settings this client was made from.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }
}

/// KEYS: marker, stream. ARGV: max length, then field, value, field, value…
static APPEND_IF_EXISTS: LuaScript = LuaScript::new(
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
"#,
);

/// Flattens a Redis answer to strings: one entry per array element (or one
/// for a scalar), `None` for nil.
fn flatten_value(value: fred::types::Value, out: &mut Vec<Option<String>>) {
    match value {
        fred::types::Value::Array(items) => items.into_iter().for_each(|v| flatten_value(v, out)),
        fred::types::Value::Null => out.push(None),
        other => out.push(other.as_string()),
    }
}

/// A Lua script run by SHA (see [`Redis::run`]); declare it once as a
/// `static`.
#[derive(Debug)]
pub struct LuaScript {
    lua: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl LuaScript {
    pub const fn new(lua: &'static str) -> LuaScript {
        LuaScript {
            lua,
            sha: std::sync::OnceLock::new(),
        }
    }
}

/// Pub/sub messages buffered per subscriber connection.
pub const SUBSCRIBER_BUFFER: usize = 16_384;

/// One message received on a subscribed channel (prefix removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub channel: String,
    pub payload: String,
}

/// A pub/sub connection. Subscriptions survive reconnects.
#[derive(Clone)]
pub struct Subscriber {
    client: SubscriberClient,
    prefix: String,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("prefix", &self.prefix).finish()
    }
}

impl Subscriber {
    /// Opens the pub/sub connection and starts the task that re-subscribes
    /// after a reconnect; the task ends when [`Subscriber::close`] is called.
    pub async fn connect(redis: &Redis) -> Result<Subscriber, BusError> {
        let mut builder = builder(redis.settings())?;
        // Messages wait here between the socket and the readers; a reader
        // that falls further behind than this loses the oldest ones (and
        // learns it: `MessageStream::next_or_lag`).
        builder.with_performance_config(|p| p.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let client = builder.build_subscriber_client()?;
        start(&client, "subscriber").await;
        let _resubscriber = client.manage_subscriptions();
        Ok(Subscriber {
            client,
            prefix: redis.settings().key_prefix.clone(),
        })
    }

    /// Subscribes to the prefixed `channel`.
    pub async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        self.client.subscribe(format!("{}{channel}", self.prefix)).await?;
        Ok(())
    }

    /// Unsubscribes from the prefixed `channel`.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        self.client.unsubscribe(format!("{}{channel}", self.prefix)).await?;
        Ok(())
    }

    /// Messages of every channel this connection subscribes to. Receivers that
    /// fall behind lose the oldest messages (`RecvError::Lagged`).
    pub fn messages(&self) -> MessageStream {
        MessageStream {
            rx: self.client.message_rx(),
            prefix: self.prefix.clone(),
        }
    }

    pub async fn close(&self) {
        let _ = self.client.quit().await;
    }
}

/// See [`Subscriber::messages`].
#[derive(Debug)]
pub struct MessageStream {
    rx: broadcast::Receiver<fred::types::Message>,
    prefix: String,
}

impl MessageStream {
    /// The next message, or `Err(n)` when this reader fell behind and `n`
    /// messages were lost; `None` once the connection is closed for good.
    pub async fn next_or_lag(&mut self) -> Option<Result<BusMessage, u64>> {
        loop {
            match self.rx.recv().await {
                Ok(message) => {
                    let channel = message.channel.to_string();
                    let Some(channel) = channel.strip_prefix(&self.prefix) else {
                        continue;
                    };
                    let payload = message.value.as_string().unwrap_or_default();
                    return Some(Ok(BusMessage {
                        channel: channel.to_owned(),
                        payload,
                    }));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "pub/sub receiver fell behind");
                    metrics::counter!("bus_messages_lagged_total").increment(n);
                    return Some(Err(n));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next message; `None` once the connection is closed for good.
    pub async fn next(&mut self) -> Option<BusMessage> {
        loop {
            match self.rx.recv().await {
                Ok(message) => {
                    let channel = message.channel.to_string();
                    let Some(channel) = channel.strip_prefix(&self.prefix) else {
                        continue;
                    };
                    let payload = message.value.as_string().unwrap_or_default();
                    return Some(BusMessage {
                        channel: channel.to_owned(),
                        payload,
                    });
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "pub/sub receiver fell behind");
                    metrics::counter!("bus_messages_lagged_total").increment(n);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// One stream entry delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Redis's id of the entry, used to acknowledge it.
    pub id: String,
    pub fields: HashMap<String, String>,
}

/// A member of a consumer group on one stream, on its own connection (its
/// blocking reads never hold up other commands).
#[derive(Clone)]
pub struct StreamConsumer {
    client: Client,
    stream: String,
    group: String,
    consumer: String,
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .finish()
    }
}

/// One entry as fred returns it: (id, fields).
type RawEntry = (String, HashMap<String, String>);
type Entries = HashMap<String, Vec<RawEntry>>;

impl StreamConsumer {
    /// Joins `group` on the prefixed `stream` as `consumer`, creating the
    /// stream and the group (reading from the start) when missing.
    pub async fn join(redis: &Redis, stream: &str, group: &str, consumer: &str) -> Result<StreamConsumer, BusError> {
        let client = builder(redis.settings())?.build()?;
        start(&client, "stream consumer").await;
        let this = StreamConsumer {
            client,
            stream: redis.key(stream),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        };
        this.ensure_group().await?;
        Ok(this)
    }

    /// Creates the group if it does not exist (also after Redis lost it).
    pub async fn ensure_group(&self) -> Result<(), BusError> {
        match self
            .client
            .xgroup_create::<(), _, _, _>(&self.stream, &self.group, XID::Manual("0".into()), true)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// New entries for this consumer, waiting up to `block` for some.
    pub async fn read(&self, count: u64, block: Duration) -> Result<Vec<StreamEntry>, BusError> {
        let read = self.client.xreadgroup::<fred::types::Value, _, _, _, _>(
            &self.group,
            &self.consumer,
            Some(count),
            Some(block.as_millis() as u64),
            false,
            &self.stream,
            XID::NewInGroup,
        );
        // The blocking read may legitimately take `block`; allow that plus the command timeout.
        // A read that times out answers nil rather than an empty map.
        let entries: Entries = match tokio::time::timeout(block + COMMAND_TIMEOUT, read).await {
            Ok(Ok(value)) if value.is_null() => return Ok(Vec::new()),
            Ok(Ok(value)) => value.into_xread_response()?,
            Ok(Err(e)) if e.details().contains("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(BusError::Timeout(block + COMMAND_TIMEOUT)),
        };
        Ok(flatten(entries))
    }

    /// Entries already delivered to this consumer but not acknowledged (to retry them).
    pub async fn read_own_pending(&self, count: u64) -> Result<Vec<StreamEntry>, BusError> {
        let value: fred::types::Value = self
            .client
            .xreadgroup(
                &self.group,
                &self.consumer,
                Some(count),
                None,
                false,
                &self.stream,
                XID::Manual("0".into()),
            )
            .await?;
        if value.is_null() {
            return Ok(Vec::new());
        }
        let entries: Entries = value.into_xread_response()?;
        // Entries deleted from the stream come back with no fields; they cannot be retried.
        Ok(flatten(entries).into_iter().filter(|e| !e.fields.is_empty()).collect())
    }

    /// Takes over entries pending for longer than `min_idle` (their consumer
    /// died or hung); they are delivered to this consumer.
    pub async fn claim_stale(&self, min_idle: Duration, count: u64) -> Result<Vec<StreamEntry>, BusError> {
        let (_next, values): (String, Vec<RawEntry>) = self
            .client
            .xautoclaim_values(
                &self.stream,
                &self.group,
                &self.consumer,
                min_idle.as_millis() as u64,
                "0-0",
                Some(count),
                false,
            )
            .await?;
        Ok(values
            .into_iter()
            .map(|(id, fields)| StreamEntry { id, fields })
            .collect())
    }

    /// Acknowledges a processed entry.
    pub async fn ack(&self, id: &str) -> Result<(), BusError> {
        self.client.xack::<i64, _, _, _>(&self.stream, &self.group, id).await?;
        Ok(())
    }

    /// How many entries are delivered but not yet acknowledged in the group.
    pub async fn pending_count(&self) -> Result<u64, BusError> {
        pending_of(&self.client, &self.stream, &self.group).await
    }

    /// Entries of the stream the group has not read yet (`XINFO GROUPS`
    /// `lag`; `None` when Redis cannot tell, e.g. after deletions).
    pub async fn lag(&self) -> Result<Option<u64>, BusError> {
        lag_of(&self.client, &self.stream, &self.group).await
    }

    pub async fn close(&self) {
        let _ = self.client.quit().await;
    }
}

fn flatten(entries: Entries) -> Vec<StreamEntry> {
    entries
        .into_values()
        .flatten()
        .map(|(id, fields)| StreamEntry { id, fields })
        .collect()
}

/// `XPENDING` summary: the number of entries delivered to `group` and not
/// acknowledged (`stream` already prefixed).
async fn lag_of(client: &Client, stream: &str, group: &str) -> Result<Option<u64>, BusError> {
    let groups: Vec<HashMap<String, fred::types::Value>> = client.xinfo_groups(stream).await?;
    Ok(groups
        .iter()
        .find(|g| g.get("name").and_then(|n| n.as_string()).as_deref() == Some(group))
        .and_then(|g| g.get("lag"))
        .and_then(|lag| lag.as_u64()))
}

async fn pending_of(client: &Client, stream: &str, group: &str) -> Result<u64, BusError> {
    let summary: fred::types::Value = client.xpending(stream, group, ()).await?;
    Ok(match summary {
        fred::types::Value::Array(items) => items.first().and_then(|v| v.as_u64()).unwrap_or(0),
        _ => 0,
    })
}

//! Presence: who is online, shared by every replica through Redis.
//!
//! A user is online while at least one of their connections (a presence
//! WebSocket, one per device) has sent a heartbeat within the TTL. Nothing
//! has to clean up after a crashed node: its connections stop beating and
//! their users fall offline by themselves within the TTL.
//!
//! Data (under the deployment's key prefix):
//!
//! * `presence:conns:<user>` — hash: connection id → expiry (ms since epoch);
//! * `presence:online` — sorted set: user → time of the latest heartbeat (ms).
//!   Online means a score newer than now − TTL, so reading is one `ZMSCORE`
//!   for a page of users, never a round trip per user. The profile service's
//!   read cache lists the most recently online users from the same set
//!   ([`PresenceRegistry::online_key`]), and drops its stale members.
//!
//! Every change is one Lua script, so two devices connecting and leaving at
//! once cannot leave the sets inconsistent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use unilink_bus::{BusError, LuaScript, Redis};
use unilink_domain::UserId;

/// Default time a connection stays online without a heartbeat.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// How often a connection holder should beat (a third of the TTL).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

const ONLINE: &str = "presence:online";

fn conns_key(user: &UserId) -> String {
    format!("presence:conns:{user}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// KEYS: conns, online. ARGV: conn, now, ttl_ms, user.
static BEAT: LuaScript = LuaScript::new(
    r#"
redis.call('HSET', KEYS[1], ARGV[1], tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[4])
return 1
"#,
);

/// KEYS: online, then the conns hash of each connection. ARGV: now, ttl_ms,
/// then connection id and user of each connection, in the order of KEYS.
/// Renews a batch of connections in one round trip.
static BEAT_MANY: LuaScript = LuaScript::new(
    r#"
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 2, #KEYS do
  local conn, user = ARGV[2 * i - 1], ARGV[2 * i]
  redis.call('HSET', KEYS[i], conn, now + ttl)
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
  redis.call('ZADD', KEYS[1], 'GT', now, user)
end
return #KEYS - 1
"#,
);

/// Connections renewed per script call by [`PresenceRegistry::heartbeat_many`].
pub const BEAT_BATCH: usize = 500;

/// KEYS: conns, online. ARGV: conn, now, user. Returns 1 while other live
/// connections remain.
static LEAVE: LuaScript = LuaScript::new(
    r#"
redis.call('HDEL', KEYS[1], ARGV[1])
local now = tonumber(ARGV[2])
local fields = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #fields, 2 do
  if tonumber(fields[i + 1]) > now then
    live = live + 1
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if live == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 0
end
return 1
"#,
);

/// KEYS: conns, online. ARGV: user.
static LEAVE_ALL: LuaScript = LuaScript::new(
    r#"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#,
);

/// KEYS: online. ARGV: user ids. Scores (or nil) in order.
static SCORES: LuaScript = LuaScript::new(r#"return redis.call('ZMSCORE', KEYS[1], unpack(ARGV))"#);

/// Users asked about per script call (Lua's argument limit is ~8000).
const CHUNK: usize = 1000;

/// The presence registry.
#[derive(Debug, Clone)]
pub struct PresenceRegistry {
    redis: Redis,
    ttl: Duration,
}

impl PresenceRegistry {
    pub fn new(redis: Redis, ttl: Duration) -> PresenceRegistry {
        PresenceRegistry { redis, ttl }
    }

    fn keys(&self, user: &UserId) -> Vec<String> {
        vec![self.redis.key(&conns_key(user)), self.redis.key(ONLINE)]
    }

    /// A connection of `user` opened (or beat): the user is online for another TTL.
    pub async fn heartbeat(&self, user: UserId, connection: &str) -> Result<(), BusError> {
        let args = vec![
            connection.to_owned(),
            now_ms().to_string(),
            (self.ttl.as_millis() as i64).to_string(),
            user.to_string(),
        ];
        self.redis.run(&BEAT, self.keys(&user), args).await?;
        Ok(())
    }

    /// Renews many connections: one script call per [`BEAT_BATCH`] of them,
    /// all sent at once (one round trip, pipelined). Returns how many were
    /// renewed; a failed batch is reported and the rest still renewed.
    pub async fn heartbeat_many(&self, connections: &[(UserId, String)]) -> Result<usize, BusError> {
        let now = now_ms().to_string();
        let ttl = (self.ttl.as_millis() as i64).to_string();
        let batches = connections.chunks(BEAT_BATCH).map(|batch| {
            let mut keys = Vec::with_capacity(batch.len() + 1);
            keys.push(self.redis.key(ONLINE));
            let mut args = Vec::with_capacity(2 * batch.len() + 2);
            args.push(now.clone());
            args.push(ttl.clone());
            for (user, connection) in batch {
                keys.push(self.redis.key(&conns_key(user)));
                args.push(connection.clone());
                args.push(user.to_string());
            }
            let redis = self.redis.clone();
            async move { redis.run(&BEAT_MANY, keys, args).await.map(|_| batch.len()) }
        });
        let mut renewed = 0;
        let mut failure = None;
        for outcome in futures_util::future::join_all(batches).await {
            match outcome {
                Ok(n) => renewed += n,
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if renewed == 0 => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, renewed, "some presence heartbeats failed");
                Ok(renewed)
            }
            None => Ok(renewed),
        }
    }

    /// Marks a new connection online (same as a heartbeat).
    pub async fn connect(&self, user: UserId, connection: &str) -> Result<(), BusError> {
        self.heartbeat(user, connection).await
    }

    /// A connection closed; returns whether the user is still online on another one.
    pub async fn disconnect(&self, user: UserId, connection: &str) -> Result<bool, BusError> {
        let args = vec![connection.to_owned(), now_ms().to_string(), user.to_string()];
        let answer = self.redis.run(&LEAVE, self.keys(&user), args).await?;
        Ok(answer.first().cloned().flatten().as_deref() == Some("1"))
    }

    /// Every connection of `user` is gone (logout, deactivation, deletion).
    pub async fn disconnect_all(&self, user: UserId) -> Result<(), BusError> {
        self.redis
            .run(&LEAVE_ALL, self.keys(&user), vec![user.to_string()])
            .await?;
        Ok(())
    }

    /// The oldest heartbeat time (ms) that still counts as online.
    pub fn oldest_live(&self) -> i64 {
        now_ms() - self.ttl.as_millis() as i64
    }

    /// The (prefixed) sorted set of online users, for a caller that reads
    /// presence inside its own script together with data of its own: a
    /// member with a score of at least [`oldest_live`](Self::oldest_live) is
    /// online. Stale members may be dropped by such a script
    /// (`ZREMRANGEBYSCORE`); nothing else may be written there.
    pub fn online_key(&self) -> String {
        self.redis.key(ONLINE)
    }

    /// Whether `user` is online now.
    pub async fn is_online(&self, user: UserId) -> Result<bool, BusError> {
        Ok(self.online_among(&[user]).await?[0])
    }

    /// For each user, whether they are online (one round trip per 1,000 users).
    pub async fn online_among(&self, users: &[UserId]) -> Result<Vec<bool>, BusError> {
        let oldest = self.oldest_live();
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(CHUNK) {
            let args = chunk.iter().map(ToString::to_string).collect();
            let scores = self.redis.run(&SCORES, vec![self.redis.key(ONLINE)], args).await?;
            out.extend(chunk.iter().enumerate().map(|(i, _)| {
                scores
                    .get(i)
                    .cloned()
                    .flatten()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_some_and(|score| score as i64 >= oldest)
            }));
        }
        Ok(out)
    }
}

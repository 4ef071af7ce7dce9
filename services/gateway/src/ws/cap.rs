//! At most `MAX_SOCKETS_PER_USER` WebSockets (presence and call together)
//! per user across every gateway replica, so one token cannot flood the
//! fleet with sockets and the signaling streams behind them.
//!
//! Each open socket holds a [`Lease`]: a member of the Redis sorted set
//! `sockets:<user>` scored with its expiry. Taking one is one Lua script
//! (drop lapsed leases, count, add); the lease is renewed while the socket
//! lives and removed when it is dropped, and the leases of a gateway that
//! died lapse by themselves after [`LEASE`]. One task per gateway renews all
//! of its leases, a few hundred per script (a renewal task per socket cost
//! each idle socket ~5.5 KiB). Each replica also counts its
//! own sockets, which alone decides while Redis is unreachable (the cap then
//! holds per replica rather than fleet-wide).
//!
//! A replica also holds at most `MAX_SOCKETS` sockets in all (503 beyond, so
//! the client reconnects, through the load balancer, to another one): its
//! WebSockets run outside the HTTP server's connection limit, and each costs
//! memory and a file descriptor here and a stream on a signaling replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use unilink_bus::{LuaScript, Redis};
use unilink_errors::ErrorCode;

use crate::error::ApiError;

/// How long a lease lives without renewal.
pub const LEASE: Duration = Duration::from_secs(60);
/// Deadline of the Redis count at an upgrade; beyond it this replica's
/// count decides (like the rate limiter's).
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

/// KEYS[1] the user's set; ARGV now (ms), max, lease (ms), socket id.
/// Answers 1 when the lease was taken, 0 when the user is at the cap.
static ACQUIRE: LuaScript = LuaScript::new(
    r"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
",
);

/// KEYS the users' sets; ARGV now (ms), lease (ms), then one socket id per
/// key. Renews the leases that still exist (a lapsed one stays gone).
static RENEW: LuaScript = LuaScript::new(
    r"
local lease = tonumber(ARGV[2])
local expiry = tonumber(ARGV[1]) + lease
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', expiry, ARGV[i + 2]) == 1 then
    redis.call('PEXPIRE', key, lease)
  end
end
return #KEYS
",
);
/// Leases renewed per script.
const RENEW_BATCH: usize = 500;

/// KEYS[1] the user's set; ARGV socket id.
static RELEASE: LuaScript = LuaScript::new("redis.call('ZREM', KEYS[1], ARGV[1]) return 1");

fn now_ms() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

/// Leases this gateway holds in Redis: lease id → user.
type Held = Mutex<HashMap<String, String>>;

/// This replica's sockets: per user, and in all.
#[derive(Debug, Default)]
struct Local {
    per_user: HashMap<String, u32>,
    /// The sum of `per_user`, kept as it changes: summing tens of
    /// thousands of entries under the lock at every upgrade would not do.
    total: usize,
}

/// The per-user socket cap, and this replica's limit.
#[derive(Debug, Clone)]
pub struct SocketCap {
    redis: Redis,
    max: u32,
    replica_max: usize,
    local: Arc<Mutex<Local>>,
    held: Arc<Held>,
    lease: Duration,
}

impl SocketCap {
    /// Also starts the task renewing this gateway's leases; it ends once the
    /// cap and every lease taken from it are dropped.
    /// `max` sockets per user fleet-wide, `replica_max` on this replica.
    pub fn new(redis: Redis, max: u32, replica_max: usize) -> SocketCap {
        SocketCap::with_lease(redis, max, replica_max, LEASE)
    }

    /// With leases of `lease` instead of [`LEASE`], renewed every third of it.
    pub fn with_lease(redis: Redis, max: u32, replica_max: usize, lease: Duration) -> SocketCap {
        let cap = SocketCap {
            redis,
            max,
            replica_max,
            local: Arc::default(),
            held: Arc::default(),
            lease,
        };
        tokio::spawn(renew_leases(cap.redis.clone(), Arc::downgrade(&cap.held), lease));
        cap
    }

    fn too_many(&self) -> ApiError {
        ApiError::new(
            ErrorCode::RateLimited,
            format!("too many open connections (at most {} per user)", self.max),
        )
    }

    /// A lease for one more socket of `user`: 429 at the user's cap, 503
    /// when this replica holds `MAX_SOCKETS` already.
    pub async fn acquire(&self, user: &str) -> Result<Lease, ApiError> {
        {
            let mut local = lock(&self.local);
            if local.total >= self.replica_max {
                metrics::counter!("websocket_refused_total", "reason" => "replica_full").increment(1);
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "this server holds as many connections as it can; reconnect",
                ));
            }
            let count = local.per_user.entry(user.to_owned()).or_insert(0);
            if *count >= self.max {
                return Err(self.too_many());
            }
            *count += 1;
            local.total += 1;
        }
        let mut lease = Lease {
            cap: self.clone(),
            user: user.to_owned(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            release: false,
        };
        let key = self.redis.key(&format!("sockets:{user}"));
        let args = vec![
            now_ms(),
            self.max.to_string(),
            self.lease.as_millis().to_string(),
            lease.id.clone(),
        ];
        let taken = tokio::time::timeout(REDIS_TIMEOUT, self.redis.run(&ACQUIRE, vec![key.clone()], args))
            .await
            .unwrap_or(Err(unilink_bus::BusError::Timeout(REDIS_TIMEOUT)));
        match taken.as_deref() {
            Ok([Some(answer)]) if answer == "0" => return Err(self.too_many()),
            Ok(_) => {
                lease.release = true;
                lock(&self.held).insert(lease.id.clone(), user.to_owned());
            }
            Err(e) => {
                // The script may still have run: remove the lease at the end anyway.
                lease.release = true;
                // This replica's own count still caps the user.
                tracing::debug!(error = %e, "socket cap falls back to this replica's count");
                metrics::counter!("socket_cap_fallback_total").increment(1);
            }
        }
        Ok(lease)
    }
}

/// One socket's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub struct Lease {
    cap: SocketCap,
    user: String,
    id: String,
    /// Whether the lease may be in Redis.
    release: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut local = lock(&self.cap.local);
            if let Some(count) = local.per_user.get_mut(&self.user) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    local.per_user.remove(&self.user);
                }
                local.total = local.total.saturating_sub(1);
            }
        }
        lock(&self.cap.held).remove(&self.id);
        if !self.release {
            return;
        }
        let redis = self.cap.redis.clone();
        let key = redis.key(&format!("sockets:{}", self.user));
        let id = std::mem::take(&mut self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = redis.run(&RELEASE, vec![key], vec![id]).await {
                    // The lease lapses by itself.
                    tracing::debug!(error = %e, "socket lease not released");
                }
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every third of `lease`, renews the leases in `held`, [`RENEW_BATCH`] per
/// script; returns once `held` is gone (the cap and its leases dropped).
async fn renew_leases(redis: Redis, held: Weak<Held>, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        let Some(leases) = held.upgrade() else { return };
        let leases: Vec<(String, String)> = lock(&leases)
            .iter()
            .map(|(id, user)| (id.clone(), user.clone()))
            .collect();
        for batch in leases.chunks(RENEW_BATCH) {
            let keys = batch
                .iter()
                .map(|(_, user)| redis.key(&format!("sockets:{user}")))
                .collect();
            let mut args = Vec::with_capacity(batch.len() + 2);
            args.push(now_ms());
            args.push(lease.as_millis().to_string());
            args.extend(batch.iter().map(|(id, _)| id.clone()));
            if let Err(e) = redis.run(&RENEW, keys, args).await {
                tracing::debug!(error = %e, leases = batch.len(), "socket leases not renewed");
            }
        }
    }
}

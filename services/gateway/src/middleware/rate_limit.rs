//! Fixed-window rate limits kept in Redis, so they hold across gateway
//! replicas; a per-process window takes over while Redis is unreachable
//! (counted in `rate_limit_fallback_total`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unilink_bus::Redis;

/// Deadline of the Redis count; beyond it the local window decides.
const REDIS_TIMEOUT: Duration = Duration::from_millis(200);

/// Whether the caller's token is on the deny-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Not revoked (or there was no token to check).
    Clear,
    Revoked,
    /// Redis could not be asked.
    Unknown,
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: u64,
}

#[derive(Debug)]
pub struct RateLimiter {
    redis: Redis,
    /// Length of a window (`RATE_LIMIT_WINDOW_SECONDS`), at least 1 s.
    window: Duration,
    /// The fallback windows: one per process, shared by every worker's
    /// limiter ([`RateLimiter::with_redis`]), so the replica limits as one.
    local: Arc<Mutex<HashMap<String, (u64, u32)>>>,
}

fn now_secs() -> u64 {
    unilink_tokens::now()
}

impl RateLimiter {
    pub fn new(redis: Redis, window: Duration) -> RateLimiter {
        RateLimiter {
            redis,
            window: window.max(Duration::from_secs(1)),
            local: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A limiter on another Redis client (a worker's own) that falls back to
    /// the same per-process windows as this one.
    pub fn with_redis(&self, redis: Redis) -> RateLimiter {
        RateLimiter {
            redis,
            window: self.window,
            local: Arc::clone(&self.local),
        }
    }

    /// Counts a hit of `who` in `scope` against `limit` per window and, in
    /// the same Redis round trip, checks whether any of `flags` is set (the
    /// token deny-list). A Redis failure falls back to this replica's window
    /// and reports the flags [`Revocation::Unknown`]: the edge keeps reads
    /// available and refuses what changes state.
    pub async fn hit(&self, scope: &'static str, who: &str, limit: u32, flags: &[String]) -> (Decision, Revocation) {
        let now = now_secs();
        let length = self.window.as_secs();
        let window = now / length;
        let reset = (window + 1) * length - now;
        let key = format!("rl:{scope}:{who}:{window}");
        let (count, revocation) = match self
            .redis
            .incr_window(&key, self.window + Duration::from_secs(5), flags, REDIS_TIMEOUT)
            .await
        {
            Ok((count, flagged)) => (
                u64::try_from(count).unwrap_or(u64::MAX),
                if flagged {
                    Revocation::Revoked
                } else {
                    Revocation::Clear
                },
            ),
            Err(e) => {
                tracing::debug!(error = %e, "rate limit falls back to this replica's window");
                metrics::counter!("rate_limit_fallback_total", "scope" => scope).increment(1);
                let revocation = if flags.is_empty() {
                    Revocation::Clear
                } else {
                    metrics::counter!("token_revocation_check_failed_total").increment(1);
                    Revocation::Unknown
                };
                (self.local_hit(&key, window), revocation)
            }
        };
        let allowed = count <= u64::from(limit);
        if !allowed {
            metrics::counter!("rate_limit_hits_total", "scope" => scope).increment(1);
        }
        let decision = Decision {
            allowed,
            limit,
            remaining: u32::try_from(u64::from(limit).saturating_sub(count)).unwrap_or(0),
            reset,
        };
        (decision, revocation)
    }

    fn local_hit(&self, key: &str, window: u64) -> u64 {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.len() > 100_000 {
            local.retain(|_, (w, _)| *w == window);
        }
        let entry = local.entry(key.to_owned()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        u64::from(entry.1)
    }
}

//! The read cache: profiles and block lists kept in each replica's memory,
//! checked against version tokens in Redis on every read, so a hot read
//! (`/users/me`, a profile, `/calls/available`, call eligibility) costs one
//! Redis script and no PostgreSQL query.
//!
//! Data (under the deployment's key prefix):
//!
//! * `profile:versions` — hash: user → token of their profile's latest write;
//! * `blocks:versions` — hash: user → token of the latest change to a block
//!   made by or against them.
//!
//! A token is random and never reused. Every write commits in PostgreSQL
//! first and then sets a new token ([`Versions`]); a read fetches presence
//! and the tokens in one script ([`ReadCache::look`]) and uses a cached
//! entry only when its token is the current one. A reader that filled an
//! entry from a row older than a concurrent write stored it under the token
//! it read before the write, which the write has since replaced, so the
//! entry is never used. Redis may lose the hashes (a restart): a read that
//! finds no token sets a fresh one, and every entry cached under an older
//! token is refetched. Entries are filled from the primary, never from a
//! replica that may lag behind a write whose token is already visible.
//!
//! The one gap: a write whose token could not be set (Redis failed right
//! after the commit). Event handlers retry until it is set; a write made
//! through the API logs, counts `profile_cache_bump_failures_total` and is
//! seen everywhere after at most [`ENTRY_TTL`], the age at which any entry is
//! refetched.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use unilink_bus::{BusError, LuaScript, Redis};
use unilink_db::Uuid;
use unilink_domain::UserId;
use unilink_presence::PresenceRegistry;

use crate::error::ProfileError;
use crate::repo::{Profile, ProfileRepository};

/// The longest an entry is used before it is read again from PostgreSQL.
pub const ENTRY_TTL: Duration = Duration::from_secs(10);
/// Entries kept per kind (profiles, block lists) per replica.
pub const CAPACITY: usize = 50_000;

const PROFILE_VERSIONS: &str = "profile:versions";
const BLOCK_VERSIONS: &str = "blocks:versions";

fn fresh_token() -> String {
    Uuid::new_v4().simple().to_string()
}

/// KEYS: online, profile versions, block versions. ARGV: fresh token,
/// viewer (or ""), oldest live score, count, ids... With a count above 0,
/// drops stale members and reads up to count users, most recently online
/// first; else reads the given ids and their heartbeat scores. Returns the
/// viewer's block token (or ""), the ids, their profile tokens, and (for
/// given ids) their scores. Missing tokens are set to the fresh one.
/// Replies are passed back as Redis gave them: building new Lua tables
/// cost more than the commands themselves.
static LOOK: LuaScript = LuaScript::new(
    r#"
-- A command over many members, 1,000 at a time (unpack has a limit).
local function chunked(command, key, members)
  if #members <= 1000 then
    if #members == 0 then return {} end
    return redis.call(command, key, unpack(members))
  end
  local out = {}
  for first = 1, #members, 1000 do
    local part = redis.call(command, key, unpack(members, first, math.min(first + 999, #members)))
    for i = 1, #part do out[first + i - 1] = part[i] end
  end
  return out
end
local token = ARGV[1]
local ids, scores
if tonumber(ARGV[4]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
  scores = {}
else
  ids = {}
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
  scores = chunked('ZMSCORE', KEYS[1], ids)
end
local blocks = ''
if ARGV[2] ~= '' then
  blocks = redis.call('HGET', KEYS[3], ARGV[2])
  if not blocks then
    redis.call('HSET', KEYS[3], ARGV[2], token)
    blocks = token
  end
end
local versions = chunked('HMGET', KEYS[2], ids)
for i = 1, #ids do
  if not versions[i] then
    redis.call('HSET', KEYS[2], ids[i], token)
    versions[i] = token
  end
end
return {blocks, ids, versions, scores}
"#,
);

/// KEYS: a versions hash. ARGV: token, ids... Gives each id the token.
static BUMP: LuaScript = LuaScript::new(
    r#"
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
return #ARGV - 1
"#,
);

/// Sets new tokens after writes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Versions {
    redis: Redis,
}

impl Versions {
    pub fn new(redis: Redis) -> Self {
        Versions { redis }
    }

    async fn bump(&self, hash: &str, users: &[UserId]) -> Result<(), BusError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut args = Vec::with_capacity(users.len() + 1);
        args.push(fresh_token());
        args.extend(users.iter().map(ToString::to_string));
        self.redis.run(&BUMP, vec![self.redis.key(hash)], args).await?;
        Ok(())
    }

    /// `user`'s profile row changed (or is gone).
    pub async fn profile_changed(&self, user: UserId) -> Result<(), BusError> {
        self.bump(PROFILE_VERSIONS, &[user]).await
    }

    /// A block made by or against each of `users` changed.
    pub async fn blocks_changed(&self, users: &[UserId]) -> Result<(), BusError> {
        self.bump(BLOCK_VERSIONS, users).await
    }

    /// After a write made through the API: a failure is logged and counted,
    /// not returned (the write is committed; caches see it within [`ENTRY_TTL`]).
    pub fn after_write(&self, bumped: Result<(), BusError>) {
        if let Err(e) = bumped {
            tracing::warn!(error = %e, "could not publish a profile change to the read caches");
            metrics::counter!("profile_cache_bump_failures_total").increment(1);
        }
    }
}

/// Blocks involving one user.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Blocks {
    /// Users this user has blocked.
    pub made: HashSet<UserId>,
    /// Users who have blocked this user.
    pub received: HashSet<UserId>,
}

impl Blocks {
    /// A block exists between this user and `other`, in either direction.
    pub fn either_way(&self, other: &UserId) -> bool {
        self.made.contains(other) || self.received.contains(other)
    }
}

/// One user as a [`ReadCache::look`] saw them.
#[derive(Debug, Clone)]
pub struct Seen {
    pub user: UserId,
    /// Whether a heartbeat of theirs is recent enough.
    pub online: bool,
    version: String,
}

/// Presence and tokens, read in one round trip.
#[derive(Debug)]
pub struct Look {
    /// The viewer's block-list token, when a viewer was given.
    blocks_version: Option<String>,
    pub seen: Vec<Seen>,
}

/// Which users a [`ReadCache::look`] is about.
#[derive(Debug, Clone, Copy)]
pub enum Among<'a> {
    /// These users.
    Users(&'a [UserId]),
    /// Up to this many online users, most recently online first.
    RecentlyOnline(usize),
}

struct Entry<T> {
    version: String,
    filled: Instant,
    value: T,
}

/// A bounded map of versioned entries.
struct Shelf<K, T> {
    entries: Mutex<HashMap<K, Entry<T>>>,
}

impl<K: Hash + Eq + Copy, T: Clone> Shelf<K, T> {
    fn new() -> Self {
        Shelf {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<T>>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &K, version: &str) -> Option<T> {
        current(&self.lock(), key, version)
    }

    /// [`Shelf::get`] of each, under one lock.
    fn get_many<'a>(&self, wanted: impl Iterator<Item = (&'a K, &'a str)>) -> Vec<Option<T>>
    where
        K: 'a,
    {
        let entries = self.lock();
        wanted.map(|(key, version)| current(&entries, key, version)).collect()
    }

    fn put(&self, key: K, version: String, value: T) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, e| e.filled.elapsed() < ENTRY_TTL);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Entry {
                version,
                filled: Instant::now(),
                value,
            },
        );
    }
}

/// The value under `key` if it was filled under `version` less than [`ENTRY_TTL`] ago.
fn current<K: Hash + Eq, T: Clone>(entries: &HashMap<K, Entry<T>>, key: &K, version: &str) -> Option<T> {
    let entry = entries.get(key)?;
    (entry.version == version && entry.filled.elapsed() < ENTRY_TTL).then(|| entry.value.clone())
}

/// The read cache of one replica.
pub struct ReadCache {
    redis: Redis,
    presence: PresenceRegistry,
    profiles: Shelf<UserId, Arc<Profile>>,
    blocks: Shelf<UserId, Arc<Blocks>>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").finish_non_exhaustive()
    }
}

impl ReadCache {
    pub fn new(redis: Redis, presence: PresenceRegistry) -> Self {
        ReadCache {
            redis,
            presence,
            profiles: Shelf::new(),
            blocks: Shelf::new(),
        }
    }

    /// Presence of `among` and the tokens of their profiles (and of
    /// `viewer`'s block list), in one script.
    pub async fn look(&self, viewer: Option<UserId>, among: Among<'_>) -> Result<Look, BusError> {
        let (count, ids) = match among {
            Among::Users(users) => (0, users),
            Among::RecentlyOnline(n) => (n.max(1), &[][..]),
        };
        let oldest = self.presence.oldest_live();
        let mut args = Vec::with_capacity(4 + ids.len());
        args.push(fresh_token());
        args.push(viewer.map(|v| v.to_string()).unwrap_or_default());
        args.push(oldest.to_string());
        args.push(count.to_string());
        args.extend(ids.iter().map(ToString::to_string));
        let keys = vec![
            self.presence.online_key(),
            self.redis.key(PROFILE_VERSIONS),
            self.redis.key(BLOCK_VERSIONS),
        ];
        let mut flat = self.redis.run(&LOOK, keys, args).await?.into_iter();
        let blocks_version = flat.next().flatten().filter(|v| !v.is_empty());
        // Then n ids, n tokens and, for given ids, n scores.
        let rest: Vec<Option<String>> = flat.collect();
        let n = if count > 0 { rest.len() / 2 } else { ids.len() };
        if rest.len() != if count > 0 { 2 * n } else { 3 * n } {
            return Err(BusError::Reply(format!(
                "read-cache script answered {} values for {n} users",
                rest.len()
            )));
        }
        let mut seen = Vec::with_capacity(n);
        for i in 0..n {
            // Ids come from our own writes; anything else is skipped.
            let Some(Ok(user)) = rest[i].as_deref().map(UserId::parse) else {
                continue;
            };
            let online = if count > 0 {
                true
            } else {
                rest[2 * n + i]
                    .as_deref()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_some_and(|score| score as i64 >= oldest)
            };
            seen.push(Seen {
                user,
                online,
                version: rest[n + i].clone().unwrap_or_default(),
            });
        }
        Ok(Look { blocks_version, seen })
    }

    /// The profiles of `seen`, in order (`None` where there is none), from
    /// memory where the token matches and from PostgreSQL (one query) for
    /// the rest.
    pub async fn profiles(
        &self,
        repo: &ProfileRepository,
        seen: &[Seen],
    ) -> Result<Vec<Option<Arc<Profile>>>, ProfileError> {
        let mut out = self
            .profiles
            .get_many(seen.iter().map(|s| (&s.user, s.version.as_str())));
        let missing: Vec<Uuid> = seen
            .iter()
            .zip(&out)
            .filter(|(_, hit)| hit.is_none())
            .map(|(s, _)| s.user.as_uuid())
            .collect();
        metrics::counter!("profile_cache_hits_total").increment((seen.len() - missing.len()) as u64);
        if missing.is_empty() {
            return Ok(out);
        }
        metrics::counter!("profile_cache_misses_total").increment(missing.len() as u64);
        let mut found: HashMap<UserId, Arc<Profile>> = repo
            .find_many(&missing)
            .await?
            .into_iter()
            .map(|p| (p.user_id, Arc::new(p)))
            .collect();
        for (s, slot) in seen.iter().zip(out.iter_mut()) {
            if slot.is_none()
                && let Some(profile) = found.remove(&s.user)
            {
                self.profiles.put(s.user, s.version.clone(), profile.clone());
                *slot = Some(profile);
            }
        }
        Ok(out)
    }

    /// The block list of the viewer of `look` (empty when it named none).
    pub async fn blocks(
        &self,
        repo: &ProfileRepository,
        viewer: UserId,
        look: &Look,
    ) -> Result<Arc<Blocks>, ProfileError> {
        let Some(version) = &look.blocks_version else {
            return Ok(Arc::default());
        };
        if let Some(hit) = self.blocks.get(&viewer, version) {
            return Ok(hit);
        }
        let (made, received) = repo.blocks_of(viewer).await?;
        let blocks = Arc::new(Blocks {
            made: made.into_iter().map(UserId::from).collect(),
            received: received.into_iter().map(UserId::from).collect(),
        });
        self.blocks.put(viewer, version.clone(), blocks.clone());
        Ok(blocks)
    }
}

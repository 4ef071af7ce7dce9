//! Moving WebSockets off a gateway replica that holds more than its share.
//!
//! A WebSocket stays on the replica it first reached for as long as it
//! lives (hours, for a presence socket). When the fleet grows, the new
//! replicas get only new connections, and the old ones keep the load the
//! autoscaler added replicas for. So each replica, every
//! `WS_REBALANCE_INTERVAL_SECONDS`:
//!
//! 1. writes its socket count to Redis and reads every replica's
//!    ([`REPORT`]: one hash, `gateway:load`, a field per replica with its
//!    count and when Redis wrote it; a field not written for three
//!    intervals is dropped, so a replica that died leaves the average, and
//!    a draining replica removes its own);
//! 2. when it holds more than the fleet's average by more than
//!    `WS_REBALANCE_MARGIN_PERCENT`, asks some of its sockets to reconnect
//!    ([`to_move`]): at most `WS_REBALANCE_MAX_PERCENT` of them in one
//!    interval, and never so many that it would fall below the average.
//!
//! Asking is what a drain does to every socket: close 1012 ("service
//! restart"), after which clients reconnect through the load balancer —
//! a presence socket's user is left online (its presence is not cleared:
//! the new socket, or the TTL, takes over); a call socket's client resumes with
//! `&last_seq=`, so no frame is lost. Presence sockets are asked first (the
//! oldest first); call sockets only once no presence socket is left, since
//! they live as long as a call and moving them costs a resume.
//!
//! The balancer sends a reconnecting client wherever it sends new ones
//! (round robin, for nginx and most Ingresses), so some come back; the next
//! rounds ask again until the replica is within the margin. A replica acts
//! only on counts the others wrote after its last move settled, so clients
//! still on their way are not counted twice (which could push it below the
//! average). `websocket_rebalanced_total{kind}` counts the sockets asked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use unilink_bus::{LuaScript, Redis};
use unilink_config::RebalanceSettings;

use super::Kind;

/// The Redis hash of every replica's count (prefixed).
const LOAD_KEY: &str = "gateway:load";
/// A replica's count is dropped when it was not written for this many intervals.
const LAPSE_INTERVALS: u32 = 3;
/// How long after a move the others' counts must have been written before
/// this replica acts again: the clients it asked reconnect within this (the
/// web client waits 500 ms, then one handshake). A client slower than that
/// is missing from the average for a round, which can move a few sockets
/// too many, never more than a round's bound.
const SETTLE: Duration = Duration::from_secs(2);

/// KEYS[1] the hash; ARGV replica id, its count, lapse (ms). Writes the
/// count with Redis's clock, drops lapsed fields and answers
/// `now, id1, count1, at1, id2, …` for the live ones (this one included).
static REPORT: LuaScript = LuaScript::new(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapse = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], lapse)
local out = {string.format('%d', now)}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local count, at = string.match(all[i + 1], '^(%d+):(%d+)$')
  if at == nil or tonumber(at) + lapse < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i])
    table.insert(out, count)
    table.insert(out, at)
  end
end
return out
",
);

/// How many of `mine` sockets to ask to reconnect, given the counts of
/// every live replica (`fleet`, this one's included): none unless `mine` is
/// above the average by more than `margin_percent`; then at most
/// `max_percent` of `mine` (at least one), and never more than would take
/// this replica below the average.
pub fn to_move(mine: usize, fleet: &[usize], margin_percent: u32, max_percent: u32) -> usize {
    if fleet.len() < 2 || mine == 0 {
        return 0;
    }
    let total: usize = fleet.iter().sum();
    let replicas = fleet.len();
    // mine > average × (1 + margin), in integers: mine × n × 100 > total × (100 + margin).
    let above = mine as u128 * replicas as u128 * 100 > total as u128 * (100 + u128::from(margin_percent));
    if !above {
        return 0;
    }
    // mine − k ≥ total / n  ⇔  k ≤ (mine × n − total) / n.
    let excess = (mine * replicas).saturating_sub(total) / replicas;
    let bound = (mine * max_percent as usize).div_ceil(100);
    excess.min(bound)
}

/// The sockets running on this replica, oldest first, each with the token
/// that asks it to leave.
#[derive(Debug, Clone, Default)]
pub struct LocalSockets {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    /// `None`: a socket whose client does not reconnect (counted, never moved).
    open: BTreeMap<u64, (Kind, Option<CancellationToken>)>,
}

/// What [`LocalSockets::ask_to_move`] asked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    pub presence: usize,
    pub call: usize,
}

impl LocalSockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a running socket until the registration is dropped; `leave`
    /// is cancelled to ask it to reconnect elsewhere (`None`: its client
    /// would not reconnect, so it is never asked).
    pub(super) fn register(&self, kind: Kind, leave: Option<CancellationToken>) -> Registration {
        let mut registry = self.lock();
        let id = registry.next;
        registry.next += 1;
        registry.open.insert(id, (kind, leave));
        Registration {
            sockets: self.clone(),
            id,
        }
    }

    /// Sockets running here that were not asked to leave.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks up to `n` sockets to reconnect elsewhere: presence sockets
    /// first, then call sockets, the oldest first. They stop being counted
    /// here at once.
    pub fn ask_to_move(&self, n: usize) -> Asked {
        let mut asked = Asked::default();
        let leaving: Vec<(Kind, CancellationToken)> = {
            let mut registry = self.lock();
            let presence = registry
                .open
                .iter()
                .filter(|(_, (kind, leave))| matches!(kind, Kind::Presence) && leave.is_some())
                .map(|(id, _)| *id);
            let calls = registry
                .open
                .iter()
                .filter(|(_, (kind, leave))| matches!(kind, Kind::Call) && leave.is_some())
                .map(|(id, _)| *id);
            let chosen: Vec<u64> = presence.chain(calls).take(n).collect();
            chosen
                .iter()
                .filter_map(|id| registry.open.remove(id))
                .filter_map(|(kind, leave)| Some((kind, leave?)))
                .collect()
        };
        for (kind, leave) in leaving {
            match kind {
                Kind::Presence => asked.presence += 1,
                Kind::Call => asked.call += 1,
            }
            metrics::counter!("websocket_rebalanced_total", "kind" => kind.label()).increment(1);
            leave.cancel();
        }
        asked
    }
}

/// A running socket's place in [`LocalSockets`].
#[derive(Debug)]
pub struct Registration {
    sockets: LocalSockets,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sockets.lock().open.remove(&self.id);
    }
}

/// One replica's last written count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Load {
    replica: String,
    sockets: usize,
    /// When Redis wrote it (ms since the epoch, Redis's clock).
    at: u64,
}

/// This replica's side of the rebalancing: reports its count and asks
/// sockets to move (see the module docs).
#[derive(Debug)]
pub struct Rebalancer {
    redis: Redis,
    sockets: LocalSockets,
    settings: RebalanceSettings,
    /// This replica's field in the hash.
    replica: String,
}

impl Rebalancer {
    pub fn new(redis: Redis, sockets: LocalSockets, settings: RebalanceSettings) -> Rebalancer {
        Rebalancer {
            redis,
            sockets,
            settings,
            replica: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Writes this replica's count; answers Redis's time and every live count.
    async fn report(&self, count: usize) -> Result<(u64, Vec<Load>), unilink_bus::BusError> {
        let lapse = self.settings.interval * LAPSE_INTERVALS;
        let answer = self
            .redis
            .run(
                &REPORT,
                vec![self.redis.key(LOAD_KEY)],
                vec![self.replica.clone(), count.to_string(), lapse.as_millis().to_string()],
            )
            .await?;
        let number = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let now = answer.first().map_or(0, number);
        let loads = answer
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(3)
            .map(|field| Load {
                replica: field[0].clone().unwrap_or_default(),
                sockets: usize::try_from(number(&field[1])).unwrap_or(usize::MAX),
                at: number(&field[2]),
            })
            .collect();
        Ok((now, loads))
    }

    /// Runs until `draining` is cancelled, then removes this replica's count.
    pub async fn run(self, draining: CancellationToken) {
        let interval = self.settings.interval;
        if interval.is_zero() {
            return;
        }
        let settle = u64::try_from(SETTLE.as_millis()).unwrap_or(u64::MAX);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Redis's time of the last move.
        let mut moved_at: Option<u64> = None;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = draining.cancelled() => break,
            }
            let mine = self.sockets.len();
            let (now, loads) = match self.report(mine).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!(error = %e, "socket count not reported");
                    continue;
                }
            };
            let others = loads.iter().filter(|l| l.replica != self.replica);
            // Clients asked last time may still be reconnecting: wait for
            // counts written after they had time to land.
            if let Some(at) = moved_at
                && others.clone().any(|l| l.at < at + settle)
            {
                continue;
            }
            let mut fleet: Vec<usize> = others.map(|l| l.sockets).collect();
            fleet.push(mine);
            let n = to_move(mine, &fleet, self.settings.margin_percent, self.settings.max_percent);
            if n == 0 {
                continue;
            }
            let asked = self.sockets.ask_to_move(n);
            moved_at = Some(now);
            let total: usize = fleet.iter().sum();
            tracing::info!(
                sockets = mine,
                replicas = fleet.len(),
                average = total / fleet.len(),
                asked = asked.presence + asked.call,
                presence = asked.presence,
                call = asked.call,
                "sockets asked to reconnect elsewhere"
            );
        }
        // A draining replica's sockets are all leaving: it leaves the average.
        let hdel = self
            .redis
            .script(
                "return redis.call('HDEL', KEYS[1], ARGV[1])",
                vec![self.redis.key(LOAD_KEY)],
                vec![self.replica.clone()],
            )
            .await;
        if let Err(e) = hdel {
            tracing::debug!(error = %e, "socket count not removed; it lapses");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_above_the_average_moves_a_bounded_share_and_never_goes_below_it() {
        // 60 on a replica, a new one with none: 30 is the average; 10 % of
        // 60 is at most 6 per interval.
        assert_eq!(to_move(60, &[60, 0], 20, 10), 6);
        // Without the bound it would stop at the average, not below.
        assert_eq!(to_move(60, &[60, 0], 20, 100), 30);
        assert_eq!(to_move(61, &[61, 0], 20, 100), 30);
        // Three replicas, 90 of 120 here: the average is 40, 50 to spare.
        assert_eq!(to_move(90, &[90, 20, 10], 20, 100), 50);
        assert_eq!(to_move(90, &[90, 20, 10], 20, 5), 5);
        // The bound is at least one socket.
        assert_eq!(to_move(3, &[3, 0], 20, 1), 1);
    }

    #[test]
    fn a_replica_within_the_margin_or_alone_moves_nothing() {
        // 36 is 20 % above an average of 30: within the margin.
        assert_eq!(to_move(36, &[36, 24], 20, 10), 0);
        assert_eq!(to_move(37, &[37, 23], 20, 10), 4);
        // At or below the average.
        assert_eq!(to_move(30, &[30, 30], 1, 100), 0);
        assert_eq!(to_move(10, &[10, 50], 1, 100), 0);
        // Alone, or empty.
        assert_eq!(to_move(1_000, &[1_000], 1, 100), 0);
        assert_eq!(to_move(0, &[0, 0], 1, 100), 0);
    }

    #[test]
    fn presence_sockets_are_asked_first_then_calls_oldest_first() {
        let sockets = LocalSockets::default();
        let tokens: Vec<(Kind, CancellationToken)> = [Kind::Call, Kind::Presence, Kind::Call, Kind::Presence]
            .into_iter()
            .map(|kind| (kind, CancellationToken::new()))
            .collect();
        let registrations: Vec<Registration> = tokens
            .iter()
            .map(|(kind, token)| sockets.register(*kind, Some(token.clone())))
            .collect();
        assert_eq!(sockets.len(), 4);

        let asked = sockets.ask_to_move(3);
        assert_eq!(asked, Asked { presence: 2, call: 1 });
        let cancelled: Vec<bool> = tokens.iter().map(|(_, t)| t.is_cancelled()).collect();
        // Both presence sockets, then the oldest call.
        assert_eq!(cancelled, [true, true, false, true]);
        // Asked sockets stop counting at once, and are never asked twice.
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets.ask_to_move(5), Asked { presence: 0, call: 1 });
        assert!(tokens[2].1.is_cancelled());

        drop(registrations);
        assert!(sockets.is_empty());
        let late = sockets.register(Kind::Presence, Some(CancellationToken::new()));
        assert_eq!(sockets.len(), 1);
        drop(late);
        assert!(sockets.is_empty());
    }

    #[test]
    fn a_socket_whose_client_does_not_reconnect_is_counted_but_never_asked() {
        let sockets = LocalSockets::default();
        let legacy = sockets.register(Kind::Presence, None);
        let token = CancellationToken::new();
        let movable = sockets.register(Kind::Presence, Some(token.clone()));
        assert_eq!(sockets.len(), 2);
        assert_eq!(sockets.ask_to_move(5), Asked { presence: 1, call: 0 });
        assert!(token.is_cancelled());
        // The original client's presence socket stays, and counts.
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets.ask_to_move(5), Asked::default());
        drop((legacy, movable));
        assert!(sockets.is_empty());
    }
}

//! Who is connected to which call's signaling socket, cluster-wide, in Redis:
//!
//! * `callconn:<call>:<user>` — the connection id holding the user's socket,
//!   refreshed every [`BEAT`] by the replica holding it and expiring after
//!   [`CONN_TTL`], so the sockets of a crashed replica vanish by themselves;
//! * `calllive:<call>` — refreshed by every beat with the disconnect grace as
//!   its lifetime: when it is gone, nobody has been connected for that long
//!   and the call is abandoned;
//! * `callstate:<call>:<user>` — the last WebRTC `connection_state` the user
//!   reported.

use std::time::Duration;

use unilink_bus::{BusError, LuaScript, Redis};
use unilink_domain::{CallId, UserId};

/// How often a replica refreshes the sockets it holds.
pub const BEAT: Duration = Duration::from_secs(3);
/// A socket not refreshed for this long counts as gone.
pub const CONN_TTL: Duration = Duration::from_secs(10);
/// Reported WebRTC states are kept this long.
const STATE_TTL: Duration = Duration::from_secs(3600);

fn conn_key(call: CallId, user: UserId) -> String {
    format!("callconn:{call}:{user}")
}

fn live_key(call: CallId) -> String {
    format!("calllive:{call}")
}

fn state_key(call: CallId, user: UserId) -> String {
    format!("callstate:{call}:{user}")
}

/// KEYS: own conn, live, peer conn. ARGV: connection id, conn ttl ms, grace ms.
/// Refreshes the own socket and returns whether the peer's is there.
static BEAT_SCRIPT: LuaScript = LuaScript::new(
    r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return redis.call('EXISTS', KEYS[3])
"#,
);

/// KEYS: own conn. ARGV: connection id. Deletes the key only if this
/// connection still holds it (a newer socket of the same user may).
static LEAVE_SCRIPT: LuaScript = LuaScript::new(
    r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
);

/// What a call's sockets look like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSockets {
    pub call_id: CallId,
    pub users: Vec<UserId>,
    /// `waiting` (fewer than two sockets), `connecting`, `connected` (both
    /// peers report a connected WebRTC session) or `failed`.
    pub connection_state: String,
}

#[derive(Debug, Clone)]
pub struct CallConnections {
    redis: Redis,
    grace: Duration,
}

impl CallConnections {
    pub fn new(redis: Redis, grace: Duration) -> CallConnections {
        CallConnections { redis, grace }
    }

    /// Marks `user`'s socket on `call` alive for another [`CONN_TTL`];
    /// returns whether `peer` has a socket.
    pub async fn beat(&self, call: CallId, user: UserId, peer: UserId, connection: &str) -> Result<bool, BusError> {
        let keys = vec![
            self.redis.key(&conn_key(call, user)),
            self.redis.key(&live_key(call)),
            self.redis.key(&conn_key(call, peer)),
        ];
        let args = vec![
            connection.to_owned(),
            CONN_TTL.as_millis().to_string(),
            self.grace.as_millis().to_string(),
        ];
        let answer = self.redis.run(&BEAT_SCRIPT, keys, args).await?;
        Ok(answer.first().cloned().flatten().as_deref() == Some("1"))
    }

    /// The socket closed.
    pub async fn leave(&self, call: CallId, user: UserId, connection: &str) -> Result<(), BusError> {
        self.redis
            .run(
                &LEAVE_SCRIPT,
                vec![self.redis.key(&conn_key(call, user))],
                vec![connection.to_owned()],
            )
            .await?;
        Ok(())
    }

    /// Records the WebRTC state `user` reported.
    pub async fn report_state(&self, call: CallId, user: UserId, state: &str) -> Result<(), BusError> {
        self.redis.set_with_ttl(&state_key(call, user), state, STATE_TTL).await
    }

    /// Whether anyone had a socket on `call` within the grace period.
    pub async fn recently_live(&self, calls: &[CallId]) -> Result<Vec<bool>, BusError> {
        let keys: Vec<String> = calls.iter().map(|c| live_key(*c)).collect();
        Ok(self
            .redis
            .get_many(&keys)
            .await?
            .into_iter()
            .map(|v| v.is_some())
            .collect())
    }

    /// The sockets of one call (its two participants).
    pub async fn sockets(&self, call: CallId, participants: [UserId; 2]) -> Result<CallSockets, BusError> {
        let keys = vec![
            conn_key(call, participants[0]),
            conn_key(call, participants[1]),
            state_key(call, participants[0]),
            state_key(call, participants[1]),
        ];
        let values = self.redis.get_many(&keys).await?;
        let users: Vec<UserId> = participants
            .iter()
            .zip(&values[..2])
            .filter(|(_, v)| v.is_some())
            .map(|(u, _)| *u)
            .collect();
        let states: Vec<&str> = values[2..].iter().map(|v| v.as_deref().unwrap_or("new")).collect();
        Ok(CallSockets {
            call_id: call,
            connection_state: overall_state(users.len(), &states),
            users,
        })
    }

    /// Every call with a socket anywhere in the fleet (an administrative
    /// read: it scans keys).
    pub async fn all(&self) -> Result<Vec<CallSockets>, BusError> {
        let keys = self.redis.scan_keys("callconn:*", 100_000).await?;
        let mut by_call: std::collections::BTreeMap<CallId, Vec<UserId>> = Default::default();
        for key in keys {
            let mut parts = key.split(':').skip(1);
            if let (Some(Ok(call)), Some(Ok(user))) = (parts.next().map(CallId::parse), parts.next().map(UserId::parse))
            {
                by_call.entry(call).or_default().push(user);
            }
        }
        Ok(by_call
            .into_iter()
            .map(|(call_id, users)| CallSockets {
                call_id,
                connection_state: overall_state(users.len(), &[]),
                users,
            })
            .collect())
    }
}

fn overall_state(sockets: usize, reported: &[&str]) -> String {
    let state = if sockets < 2 {
        "waiting"
    } else if reported.contains(&"failed") {
        "failed"
    } else if !reported.is_empty() && reported.iter().all(|s| *s == "connected" || *s == "completed") {
        "connected"
    } else {
        "connecting"
    };
    state.to_owned()
}

#[cfg(test)]
mod tests {
    use super::overall_state;

    #[test]
    fn overall_state_needs_both_peers() {
        assert_eq!(overall_state(1, &["connected", "connected"]), "waiting");
        assert_eq!(overall_state(2, &["connected", "new"]), "connecting");
        assert_eq!(overall_state(2, &["connected", "completed"]), "connected");
        assert_eq!(overall_state(2, &["failed", "connected"]), "failed");
    }
}

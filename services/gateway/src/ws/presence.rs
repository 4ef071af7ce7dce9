//! Presence sockets, held by the gateway alone.
//!
//! A user is online while one of their presence sockets is open on some
//! gateway. The gateway registers a socket when it opens, renews all of its
//! sockets together ([`PresenceHub::run`]: one pipelined batch of scripts
//! per interval, not one heartbeat per socket) and clears it when it closes.
//! A gateway that dies renews nothing more, and its users fall offline when
//! their TTL runs out.
//!
//! Pushes for a user (`incoming_call`, …, published by the notification
//! service on `push:<user>`) reach the socket through the gateway's one
//! multiplexed subscription; so do control messages ([`Control`]: a logout
//! or a closed account closes the socket).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use unilink_bus::{BusError, Redis};
use unilink_domain::UserId;
use unilink_events::payload::push_channel;
use unilink_presence::PresenceRegistry;
use unilink_protocol::{CallFrame, Control, PresenceFrame};
use unilink_relay::{Listener, SignalRelay};

use crate::ws::bucket::{Admit, TokenBucket};
use crate::ws::socket::WebSocket;
use crate::ws::{End, Step, close_reason};

/// Frames per second a presence socket may send (the original client sends
/// one `ping` every 30 s).
const PRESENCE_FRAME_RATE: u32 = 10;

/// The presence sockets of this gateway replica: registers them and keeps
/// them online. Cheap to clone; every HTTP worker holds one sharing the
/// same table.
#[derive(Clone)]
pub struct PresenceHub(Arc<Hub>);

struct Hub {
    registry: PresenceRegistry,
    relay: SignalRelay,
    /// Connection id → user, for every presence socket open here.
    local: Arc<Mutex<HashMap<String, UserId>>>,
}

impl std::fmt::Debug for PresenceHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceHub")
            .field("sockets", &self.len())
            .finish_non_exhaustive()
    }
}

impl PresenceHub {
    pub fn new(redis: Redis, relay: SignalRelay) -> PresenceHub {
        PresenceHub(Arc::new(Hub {
            registry: PresenceRegistry::new(redis, unilink_presence::DEFAULT_TTL),
            relay,
            local: Arc::default(),
        }))
    }

    /// The same hub, sending its commands over `redis` (a worker's own client).
    pub fn with_redis(&self, redis: Redis, relay: SignalRelay) -> PresenceHub {
        PresenceHub(Arc::new(Hub {
            registry: PresenceRegistry::new(redis, unilink_presence::DEFAULT_TTL),
            relay,
            local: self.0.local.clone(),
        }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserId>> {
        self.0.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many presence sockets are open here.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renews every socket of this replica each `every` (a third of the
    /// presence TTL), until `stop`.
    pub async fn run(self, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            self.renew().await;
        }
    }

    /// One round of renewals: every socket open here, in batches.
    pub async fn renew(&self) -> usize {
        let sockets: Vec<(UserId, String)> = self.table().iter().map(|(c, u)| (*u, c.clone())).collect();
        if sockets.is_empty() {
            return 0;
        }
        let renewing = tokio::time::timeout(RENEW_TIMEOUT, self.0.registry.heartbeat_many(&sockets));
        match renewing.await {
            Ok(Ok(renewed)) => {
                metrics::counter!("presence_heartbeats_total").increment(renewed as u64);
                renewed
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, sockets = sockets.len(), "presence renewal failed; retried next round");
                0
            }
            Err(_) => {
                tracing::warn!(
                    sockets = sockets.len(),
                    "presence renewal timed out; retried next round"
                );
                0
            }
        }
    }

    /// Opens a presence socket of `user` in session `family`: online at
    /// once, and subscribed to the user's channel.
    pub async fn open(&self, user: UserId, family: String) -> Result<PresenceSession, BusError> {
        let connection = uuid::Uuid::new_v4().simple().to_string();
        // Subscribed first: a push sent once the user shows online is not missed.
        let listener = self.0.relay.listen(&push_channel(&user.to_string())).await?;
        self.0.registry.connect(user, &connection).await?;
        self.table().insert(connection.clone(), user);
        Ok(PresenceSession {
            entry: Entry {
                hub: self.clone(),
                connection,
            },
            user,
            family,
            listener,
            bucket: TokenBucket::new(PRESENCE_FRAME_RATE, Instant::now()),
        })
    }
}

/// How long one round of renewals may take (well inside the TTL).
const RENEW_TIMEOUT: Duration = Duration::from_secs(5);

/// A socket's row in the hub's table, removed when the socket's task ends
/// however it ends.
struct Entry {
    hub: PresenceHub,
    connection: String,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.hub.table().remove(&self.connection);
    }
}

/// One presence socket.
pub struct PresenceSession {
    entry: Entry,
    user: UserId,
    /// The session (token family) it was opened with.
    family: String,
    listener: Listener,
    bucket: TokenBucket,
}

impl std::fmt::Debug for PresenceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceSession")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PresenceSession {
    pub(crate) fn admit(&mut self) -> Admit {
        self.bucket.admit()
    }

    /// The next push or control message for this user (`None`: the relay stopped).
    pub(crate) async fn next_push(&mut self) -> Option<String> {
        self.listener.next().await
    }

    pub(crate) async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Step {
        let answer = match PresenceFrame::parse(text) {
            PresenceFrame::TextPing => "pong".to_owned(),
            PresenceFrame::JsonPing => CallFrame::Pong.to_text(),
            PresenceFrame::Other => return Step::Go,
        };
        match socket.send_text(&answer).await {
            Ok(()) => Step::Go,
            Err(_) => Step::End(End::Gone),
        }
    }

    pub(crate) async fn on_push(&mut self, socket: &mut WebSocket, push: Option<String>) -> Step {
        let Some(push) = push else {
            return Step::End(End::Close(close_reason(1012, "server restarting; reconnect")));
        };
        if let Some(control) = Control::parse(&push) {
            if control.applies_to(&self.family) {
                return Step::End(End::Close(close_reason(control.code, &control.reason)));
            }
            return Step::Go;
        }
        match socket.send_text(&push).await {
            Ok(()) => Step::Go,
            Err(_) => Step::End(End::Gone),
        }
    }

    /// The socket closed. Its client was told to reconnect elsewhere
    /// (`handover`: a drain or a rebalance): the user stays online for the
    /// next socket, or until the TTL runs out. Otherwise the connection is
    /// cleared (the user is offline unless another one is open).
    pub(crate) async fn finish(self, handover: bool) {
        let PresenceSession { entry, user, .. } = self;
        let hub = entry.hub.clone();
        let connection = entry.connection.clone();
        drop(entry);
        if handover {
            metrics::counter!("presence_handovers_total").increment(1);
            return;
        }
        let leaving = tokio::time::timeout(RENEW_TIMEOUT, hub.0.registry.disconnect(user, &connection));
        match leaving.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(user_id = %user, error = %e, "presence not cleared; it expires with its TTL"),
            Err(_) => tracing::warn!(user_id = %user, "presence not cleared in time; it expires with its TTL"),
        }
    }
}

//! `SignalRelay`: frames for one participant of one call, carried between
//! gateway replicas over Redis pub/sub — in order, exactly once, and
//! replayable for a client that reconnects.
//!
//! Each (call, recipient) pair has a mailbox: a sequence counter, a buffer of
//! the last frames (a sorted set scored by sequence number, at most
//! [`BUFFER_LEN`] frames and [`BUFFER_BYTES`] bytes, the oldest out first)
//! and a pub/sub channel. [`SignalRelay::send`] is one Lua script: it takes
//! the next sequence number, writes `"seq"` into the frame, buffers it,
//! trims the buffer and publishes the frame — atomically, so publication
//! order is sequence order and no mailbox outgrows its bounds, whoever
//! sends.
//!
//! The replica holding the recipient's stream subscribes to the channel
//! ([`SignalRelay::open`]) and reads through a [`Mailbox`], which drops
//! frames it has already delivered (duplicates after a resume) and fills gaps
//! from the buffer (messages a lagging or reconnecting subscriber missed).
//! Subscriptions survive Redis reconnects (the bus re-subscribes); whatever
//! was published meanwhile is recovered as a gap. The buffer is read
//! [`REPLAY_PAGE`] frames at a time, the next page only once the reader has
//! taken the last one: a resume from the start of a full buffer holds one
//! page in a replica's memory, not the buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// futures-channel queues: an idle one holds no slots (a tokio channel's
// first block and cache-padded header were ~0.8 KiB per socket).
use futures_channel::mpsc;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use unilink_bus::{BusError, LuaScript, Redis, Subscriber};
use unilink_domain::{CallId, UserId};
use unilink_protocol::{CallFrame, Envelope, Relayed};

/// How long a relayed frame waits for a replica to hold it (Sentinel only).
const REPLICATION_WAIT: Duration = Duration::from_millis(100);

/// Frames kept per mailbox for replay (a resume within 30 s needs far fewer).
pub const BUFFER_LEN: u64 = 4096;
/// Bytes kept per mailbox for replay (the relay messages as stored): what
/// one sender can make Redis hold for one recipient. About two hundred
/// frames of the largest a session relays (16 KiB of SDP, 4,000 characters
/// of chat); ICE candidates meet the count bound first.
pub const BUFFER_BYTES: u64 = 4 * 1024 * 1024;
/// Frames read from a buffer at once: by a resume, a gap, a catch-up.
pub const REPLAY_PAGE: usize = 256;
/// Frames from a participant that may enter the other's mailbox before the
/// call was accepted: an offer and its ICE candidates, with room to spare.
pub const EARLY_FRAMES: u64 = 64;
/// Mailboxes expire this long after their last frame.
const MAILBOX_TTL: Duration = Duration::from_secs(3600);
/// How long a closed call's mailboxes stay after [`SignalRelay::retire`]:
/// long enough for a client reconnecting within the 30 s resume window to
/// read its last frames (`call_ended`), not the hour an open call's keep.
pub const RETIRED_TTL: Duration = Duration::from_secs(120);

/// KEYS: keys of a mailbox. ARGV: seconds. Shortens their expiry (never
/// lengthens it; missing keys stay missing).
static RETIRE: LuaScript = LuaScript::new(
    r"
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[1], 'LT') end
return #KEYS
",
);
/// Undelivered live messages queued per subscriber before the dispatcher
/// drops them (they are then fetched from the buffer as a gap).
const INBOX_CAPACITY: usize = 1024;

/// What the dispatcher hands a reader.
#[derive(Debug)]
enum Delivery {
    Message(String),
    /// The pub/sub connection lost messages (which, unknown): re-read the buffer.
    Resync,
}

/// KEYS: seq, buffer, channel, the buffer's byte count, the count of frames
/// relayed before the call was accepted, and (numbered frames only) the last
/// client sequence number accepted from this sender's client session.
/// ARGV: the envelope JSON, the message prefix ([`Relayed::PREFIX`]),
/// buffer length, ttl seconds,
/// now in ms, the frame's client sequence number (`cseq`, or empty), buffer
/// bytes, and the frames allowed before the call is accepted (empty once it
/// is, and for frames not from a client).
/// Returns the sequence number; with a `cseq`, 0 when it is not above the
/// last one accepted (a frame the client sent again because its connection
/// broke before the `ack`: relayed once already) and -1 when it is not the
/// next one (an earlier frame was lost on the way: the client sends every
/// unacknowledged frame again, in order); -2 when the call is not accepted
/// and the frames allowed before are used up (nothing recorded: the client
/// may send it again once the call is accepted). The message is
/// `2|<seq>|<envelope>`: the sequence number is the script's, the envelope
/// the sender's, untouched.
///
/// A new mailbox (or one Redis lost, e.g. in a restart) starts counting at
/// `now_ms × 1000`, so sequence numbers keep growing across Redis restarts:
/// readers and resuming clients never mistake new frames for old ones.
///
/// The buffer keeps the newest frames within both bounds: the oldest go
/// first. The byte count is kept next to it by this script alone; an empty
/// buffer starts it again and a missing one is counted from the buffer, so
/// it cannot drift from what the buffer holds (expiry, a Redis that lost
/// one key but not the other).
static SEND: LuaScript = LuaScript::new(
    r#"
if ARGV[6] ~= '' then
  local last = tonumber(redis.call('GET', KEYS[6]) or '0')
  local cseq = tonumber(ARGV[6])
  if cseq <= last then
    return 0
  end
  if cseq > last + 1 then
    return -1
  end
end
if ARGV[8] ~= '' and tonumber(redis.call('GET', KEYS[5]) or '0') >= tonumber(ARGV[8]) then
  return -2
end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[6], ARGV[6], 'EX', ARGV[4])
end
if ARGV[8] ~= '' then
  redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[4])
end
local seq = redis.call('INCR', KEYS[1])
-- Lua prints numbers this large with an exponent unless told otherwise.
if seq == 1 then
  seq = tonumber(ARGV[5]) * 1000 + 1
  redis.call('SET', KEYS[1], string.format('%d', seq))
end
local digits = string.format('%d', seq)
local message = ARGV[2] .. digits .. '|' .. ARGV[1]
local kept = redis.call('ZCARD', KEYS[2])
local bytes = 0
if kept > 0 then
  bytes = tonumber(redis.call('GET', KEYS[4]) or '-1')
  if bytes < 0 then
    -- In slices: a buffer from before the byte bound may be large.
    bytes = 0
    local from = 0
    repeat
      local slice = redis.call('ZRANGE', KEYS[2], from, from + 255)
      for _, old in ipairs(slice) do
        bytes = bytes + #old
      end
      from = from + 256
    until #slice < 256
  end
end
redis.call('ZADD', KEYS[2], digits, message)
kept = kept + 1
bytes = bytes + #message
while kept > 1 and (kept > tonumber(ARGV[3]) or bytes > tonumber(ARGV[7])) do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  bytes = bytes - #oldest[1]
  kept = kept - 1
end
redis.call('SET', KEYS[4], bytes, 'EX', ARGV[4])
if seq % 64 == 0 or redis.call('TTL', KEYS[1]) < 0 or redis.call('TTL', KEYS[2]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', KEYS[3], message)
return seq
"#,
);

/// KEYS: buffer. ARGV: `(after` and the highest score (or `+inf`), page
/// size. The first frames of the range, at most a page.
static PAGE: LuaScript = LuaScript::new(
    r"
return redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
",
);

/// What became of a frame given to [`SignalRelay::send_once`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Relayed with this sequence number.
    Relayed(u64),
    /// Relayed before (the client sent it again): acknowledge, do not relay.
    Repeat,
    /// An earlier frame of this client is missing: not relayed and not
    /// acknowledged; the client sends all unacknowledged frames again.
    OutOfOrder,
    /// The call is not accepted yet and [`EARLY_FRAMES`] frames of this
    /// sender are in the mailbox already: not relayed, not acknowledged.
    TooEarly,
}

/// How [`SignalRelay::send_once`] takes a frame a participant's client sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromClient<'a> {
    /// The client's numbering: its session id (`cid`) and the frame's
    /// number in it (`cseq`, from 1).
    pub numbered: Option<(&'a str, u64)>,
    /// The call is not accepted yet (as far as the sender's session
    /// knows): refused beyond [`EARLY_FRAMES`] such frames.
    pub early: bool,
}

/// Gaps this large are a mailbox that started again (after Redis lost it),
/// not lost frames.
const RESTART_GAP: u64 = 1_000_000;

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The Redis names of one mailbox (before the deployment prefix).
fn channel(call: CallId, user: UserId) -> String {
    format!("relay:{call}:{user}")
}

fn seq_key(call: CallId, user: UserId) -> String {
    format!("relay:{call}:{user}:seq")
}

fn buffer_key(call: CallId, user: UserId) -> String {
    format!("relay:{call}:{user}:buf")
}

fn delivered_key(call: CallId, user: UserId) -> String {
    format!("relay:{call}:{user}:delivered")
}

fn bytes_key(call: CallId, user: UserId) -> String {
    format!("relay:{call}:{user}:bytes")
}

fn early_key(call: CallId, user: UserId) -> String {
    format!("relay:{call}:{user}:early")
}

/// Channel → the streams of this replica reading it.
type RouteTable = HashMap<String, Vec<(u64, mpsc::Sender<Delivery>)>>;
type Routes = Mutex<RouteTable>;

/// The relay of one replica (a gateway): one pub/sub connection shared by all
/// its streams, opened on first use. Cheap to clone.
#[derive(Clone)]
pub struct SignalRelay {
    redis: Redis,
    inner: Arc<Inner>,
}

struct Inner {
    subscriber: tokio::sync::OnceCell<Subscriber>,
    routes: Routes,
    next_id: std::sync::atomic::AtomicU64,
    stop: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SignalRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalRelay").finish_non_exhaustive()
    }
}

impl SignalRelay {
    /// A relay over `redis`; its pub/sub connection and dispatcher start on
    /// first use and stop when `stop` is cancelled.
    pub fn new(redis: Redis, stop: CancellationToken) -> SignalRelay {
        SignalRelay {
            redis,
            inner: Arc::new(Inner {
                subscriber: tokio::sync::OnceCell::new(),
                routes: Mutex::default(),
                next_id: std::sync::atomic::AtomicU64::new(0),
                stop,
            }),
        }
    }

    /// A relay whose pub/sub connection is open already (a replica that
    /// holds sockets: the first socket does not wait for it).
    pub async fn connect(redis: Redis, stop: CancellationToken) -> Result<SignalRelay, BusError> {
        let relay = SignalRelay::new(redis, stop);
        relay.subscriber().await?;
        Ok(relay)
    }

    /// The same relay (its subscription and routes), sending its commands
    /// over `redis`: a worker thread's own client.
    pub fn with_redis(&self, redis: Redis) -> SignalRelay {
        SignalRelay {
            redis,
            inner: self.inner.clone(),
        }
    }

    /// The client commands go over.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    async fn subscriber(&self) -> Result<&Subscriber, BusError> {
        self.inner
            .subscriber
            .get_or_try_init(|| async {
                let subscriber = Subscriber::connect(&self.redis).await?;
                tokio::spawn(dispatch(subscriber.clone(), self.inner.clone()));
                Ok(subscriber)
            })
            .await
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.inner.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The call is closed and its last frame sent: `user`'s mailbox of it
    /// expires after [`RETIRED_TTL`].
    pub async fn retire(&self, call: CallId, user: UserId) -> Result<(), BusError> {
        let keys = [
            seq_key(call, user),
            buffer_key(call, user),
            delivered_key(call, user),
            bytes_key(call, user),
            early_key(call, user),
        ]
        .iter()
        .map(|k| self.redis.key(k))
        .collect();
        self.redis
            .run(&RETIRE, keys, vec![RETIRED_TTL.as_secs().to_string()])
            .await?;
        Ok(())
    }

    /// Sends one frame to `user`'s mailbox of `call`; returns its sequence
    /// number. `sender` is the participant who sent it, or `system`.
    pub async fn send(
        &self,
        call: CallId,
        user: UserId,
        sender: &str,
        frame: &CallFrame,
        traceparent: &str,
    ) -> Result<u64, BusError> {
        match self
            .send_once(call, user, sender, frame, traceparent, FromClient::default())
            .await?
        {
            SendOutcome::Relayed(seq) => Ok(seq),
            SendOutcome::Repeat | SendOutcome::OutOfOrder | SendOutcome::TooEarly => {
                unreachable!("only client frames are refused")
            }
        }
    }

    /// [`SignalRelay::send`] of a frame from a participant's client: when
    /// numbered, `cseq` counts 1, 2, 3… per client session `client` (an id
    /// the client picks per page load); when `early`, at most
    /// [`EARLY_FRAMES`] such frames enter the mailbox, across the sender's
    /// sockets and replicas. Atomic with the relay itself, so two replicas
    /// racing with the same frame relay it once; see [`SendOutcome`].
    pub async fn send_once(
        &self,
        call: CallId,
        user: UserId,
        sender: &str,
        frame: &CallFrame,
        traceparent: &str,
        from: FromClient<'_>,
    ) -> Result<SendOutcome, BusError> {
        let envelope = Envelope {
            sender: sender.to_owned(),
            sent_us: now_us(),
            traceparent: traceparent.to_owned(),
            frame,
        };
        let mut keys = vec![
            self.redis.key(&seq_key(call, user)),
            self.redis.key(&buffer_key(call, user)),
            self.redis.key(&channel(call, user)),
            self.redis.key(&bytes_key(call, user)),
            self.redis.key(&early_key(call, user)),
        ];
        // The client-numbering key only for numbered frames (the script
        // reads it only then).
        if let Some((client, _)) = from.numbered {
            keys.push(self.redis.key(&format!("relay:cseq:{call}:{user}:{sender}:{client}")));
        }
        let args = vec![
            envelope.to_json(),
            Relayed::PREFIX.to_owned(),
            BUFFER_LEN.to_string(),
            MAILBOX_TTL.as_secs().to_string(),
            (now_us() / 1000).to_string(),
            from.numbered.map(|(_, cseq)| cseq.to_string()).unwrap_or_default(),
            BUFFER_BYTES.to_string(),
            if from.early {
                EARLY_FRAMES.to_string()
            } else {
                String::new()
            },
        ];
        let answer = self.redis.run(&SEND, keys, args).await?;
        let seq: i64 = answer
            .first()
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let outcome = match seq {
            0 => SendOutcome::Repeat,
            -1 => SendOutcome::OutOfOrder,
            s if s < 0 => SendOutcome::TooEarly,
            s => SendOutcome::Relayed(s as u64),
        };
        let direction = match outcome {
            SendOutcome::Relayed(_) => "sent",
            SendOutcome::Repeat => "repeated",
            SendOutcome::OutOfOrder => "out_of_order",
            SendOutcome::TooEarly => "too_early",
        };
        metrics::counter!("signaling_relay_frames_total", "direction" => direction).increment(1);
        if let SendOutcome::Relayed(_) = outcome {
            // Under Sentinel: acknowledged only once a replica holds it, so a
            // failover cannot take back a frame (and its sequence number)
            // the client was told is relayed. If the master dies meanwhile,
            // the error makes the client send it again; the new master then
            // relays it once (its `cseq` was either replicated or not).
            self.redis.wait_replicated(REPLICATION_WAIT).await?;
        }
        Ok(outcome)
    }

    /// Routes messages of `name` to a new receiver, subscribing to the
    /// channel when this replica was not yet.
    async fn attach(&self, name: &str) -> Result<(u64, mpsc::Receiver<Delivery>), BusError> {
        let subscriber = self.subscriber().await?;
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let id = self.inner.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first = {
            let mut routes = self.routes();
            let list = routes.entry(name.to_owned()).or_default();
            list.push((id, tx));
            list.len() == 1
        };
        if first && let Err(e) = subscriber.subscribe(name).await {
            detach(&self.inner, name, id);
            return Err(e);
        }
        Ok((id, rx))
    }

    /// Subscribes to `user`'s mailbox of `call` and returns it positioned
    /// after `resume_after` (0 = from what was last recorded as delivered).
    /// Frames still buffered after that point come first, then live ones.
    pub async fn open(&self, call: CallId, user: UserId, resume_after: u64) -> Result<Mailbox, BusError> {
        self.open_after(call, user, (resume_after > 0).then_some(resume_after))
            .await
    }

    /// [`SignalRelay::open`]: after `resume_after` when given (0: the whole
    /// buffer), else after the last frame delivered to `user`.
    pub async fn open_after(&self, call: CallId, user: UserId, resume_after: Option<u64>) -> Result<Mailbox, BusError> {
        let name = channel(call, user);
        let (id, rx) = self.attach(&name).await?;
        let mut mailbox = Mailbox {
            relay: self.clone(),
            call,
            user,
            channel: name,
            id,
            rx,
            last: 0,
            ready: std::collections::VecDeque::new(),
            resync: false,
            gap_checked: false,
            more: false,
        };
        mailbox.last = match resume_after {
            Some(after) => after,
            None => self
                .redis
                .get(&delivered_key(call, user))
                .await?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        let backlog = mailbox.fetch_after(mailbox.last, None).await?;
        mailbox.insert_page(backlog);
        Ok(mailbox)
    }

    /// Plain (unsequenced) messages of a channel, such as a user's pushes.
    pub async fn listen(&self, channel: &str) -> Result<Listener, BusError> {
        let (id, rx) = self.attach(channel).await?;
        Ok(Listener {
            inner: self.inner.clone(),
            channel: channel.to_owned(),
            id,
            rx,
        })
    }

    /// How many channels this replica is subscribed to.
    pub fn subscriptions(&self) -> usize {
        self.routes().len()
    }
}

/// Removes reader `id` from channel `name`; the last one out unsubscribes.
fn detach(inner: &Arc<Inner>, name: &str, id: u64) {
    let now_empty = {
        let mut routes = inner.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = routes.get_mut(name) else { return };
        list.retain(|(i, _)| *i != id);
        let empty = list.is_empty();
        if empty {
            routes.remove(name);
        }
        empty
    };
    let Some(subscriber) = inner.subscriber.get().cloned() else {
        return;
    };
    if now_empty {
        let inner = inner.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let reopened = || {
                inner
                    .routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&name)
            };
            if reopened() {
                return;
            }
            let _ = subscriber.unsubscribe(&name).await;
            // Opened again while the unsubscribe was on its way: subscribe
            // again (subscribing twice is harmless).
            if reopened() {
                let _ = subscriber.subscribe(&name).await;
            }
        });
    }
}

/// Hands each pub/sub message to the streams of its channel on this replica.
async fn dispatch(subscriber: Subscriber, inner: Arc<Inner>) {
    let mut messages = subscriber.messages();
    loop {
        let message = tokio::select! {
            message = messages.next_or_lag() => message,
            () = inner.stop.cancelled() => break,
        };
        let message = match message {
            None => break,
            Some(Ok(message)) => message,
            Some(Err(_lost)) => {
                // Which channels lost messages is unknown: every mailbox
                // re-reads its buffer.
                let mut routes = inner.routes.lock().unwrap_or_else(|p| p.into_inner());
                for (_, tx) in routes.values_mut().flatten() {
                    let _ = tx.try_send(Delivery::Resync);
                }
                continue;
            }
        };
        // Sent under the lock, with the senders the routes own: a
        // futures-channel sender cloned per message would get a slot of its
        // own each time, and a full queue would never refuse. `try_send`
        // does not wait.
        let mut routes = inner.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = routes.get_mut(&message.channel) else {
            continue;
        };
        for (_, tx) in list.iter_mut() {
            if tx.try_send(Delivery::Message(message.payload.clone())).is_err() {
                metrics::counter!("signaling_relay_dropped_total").increment(1);
            }
        }
    }
    subscriber.close().await;
}

/// One participant's view of a call's frames on this replica: yields each
/// sequence number once, in order. Unsubscribes when dropped.
#[derive(Debug)]
pub struct Mailbox {
    relay: SignalRelay,
    call: CallId,
    user: UserId,
    channel: String,
    id: u64,
    rx: mpsc::Receiver<Delivery>,
    last: u64,
    /// Frames received, in sequence order, not yet handed out.
    ready: std::collections::VecDeque<Relayed>,
    /// The pub/sub connection lost messages: re-read the buffer.
    resync: bool,
    /// The gap before the first ready frame was looked up once already.
    gap_checked: bool,
    /// The last page read from the buffer was full: more frames may follow
    /// it there. Read once the ready frames are handed out.
    more: bool,
}

impl Mailbox {
    /// The last sequence number handed out.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next frame in sequence. `None` when the relay stopped.
    ///
    /// Cancel-safe (it runs in a `select!`): every await happens before any
    /// state changes.
    pub async fn next(&mut self) -> Result<Option<Relayed>, BusError> {
        loop {
            if self.resync {
                self.catch_up().await?;
                self.resync = false;
            }
            if self.more && self.ready.is_empty() {
                // The rest of a long replay, a page each time the reader
                // has taken the last one (the session hands each frame to
                // its bounded outbound queue before asking for the next).
                let page = self.fetch_after(self.last, None).await?;
                self.more = page.len() >= REPLAY_PAGE;
                self.insert(page);
                continue;
            }
            if let Some(front) = self.ready.front() {
                if front.seq <= self.last {
                    self.ready.pop_front();
                    continue;
                }
                if front.seq > self.last + 1 && !self.gap_checked {
                    // Missed messages (slow reader, Redis reconnect): the buffer has them.
                    metrics::counter!("signaling_relay_gaps_total").increment(1);
                    // A page of it: the rest is the next gap, once these
                    // are handed out.
                    let missing = self.fetch_after(self.last, Some(front.seq - 1)).await?;
                    self.insert_page(missing);
                    self.gap_checked = true;
                    continue;
                }
                let gap = front.seq - self.last - 1;
                if gap > 0 && self.last > 0 && gap < RESTART_GAP {
                    // Not in the buffer either (trimmed or expired): lost for good.
                    metrics::counter!("signaling_relay_lost_total").increment(gap);
                    tracing::warn!(channel = %self.channel, from = self.last, to = front.seq, "relay frames lost");
                } else if gap >= RESTART_GAP && self.last > 0 {
                    tracing::warn!(channel = %self.channel, "relay mailbox started again (Redis lost it)");
                }
                let frame = self.ready.pop_front().expect("front exists");
                self.gap_checked = false;
                self.last = frame.seq;
                metrics::counter!("signaling_relay_frames_total", "direction" => "delivered").increment(1);
                let latency = (now_us() - frame.envelope.sent_us).max(0) as f64 / 1e6;
                metrics::histogram!("signaling_relay_latency_seconds").record(latency);
                return Ok(Some(frame));
            }
            let Some(message) = self.rx.next().await else {
                return Ok(None);
            };
            let message = match message {
                Delivery::Resync => {
                    self.resync = true;
                    continue;
                }
                Delivery::Message(message) => message,
            };
            match Relayed::parse(&message) {
                Some(frame) => self.insert(vec![frame]),
                None => tracing::warn!(channel = %self.channel, "malformed relay message dropped"),
            }
        }
    }

    /// [`Mailbox::insert`] of a page read from the buffer; a full one means
    /// the buffer may hold more after it.
    fn insert_page(&mut self, page: Vec<Relayed>) {
        if page.len() >= REPLAY_PAGE {
            self.more = true;
        }
        self.insert(page);
    }

    /// Adds frames to the queue, kept in sequence order without duplicates.
    fn insert(&mut self, frames: Vec<Relayed>) {
        for frame in frames {
            if frame.seq <= self.last {
                continue;
            }
            match self.ready.back() {
                None => self.ready.push_back(frame),
                Some(back) if back.seq < frame.seq => self.ready.push_back(frame),
                Some(_) => {
                    if let Err(at) = self.ready.binary_search_by_key(&frame.seq, |f| f.seq) {
                        self.ready.insert(at, frame);
                    }
                }
            }
        }
    }

    /// Reads whatever the buffer holds beyond the frames known here: after
    /// lost pub/sub messages, and now and then by the session, so a lost
    /// tail of a burst does not wait for the next frame.
    pub async fn catch_up(&mut self) -> Result<(), BusError> {
        let sent: u64 = self
            .relay
            .redis
            .get(&seq_key(self.call, self.user))
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let known = self.ready.back().map_or(self.last, |f| f.seq.max(self.last));
        if sent > known {
            metrics::counter!("signaling_relay_gaps_total").increment(1);
            let missing = self.fetch_after(known, Some(sent)).await?;
            self.insert_page(missing);
        }
        Ok(())
    }

    /// Whether frames are waiting to be handed out.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// How many frames this mailbox holds in memory, read but not yet
    /// handed out: a page of replay and the live frame that showed a gap,
    /// however long the buffer.
    pub fn held(&self) -> usize {
        self.ready.len()
    }

    /// Buffered frames with `after < seq <= upto`, in order: the first
    /// [`REPLAY_PAGE`] of them.
    async fn fetch_after(&self, after: u64, upto: Option<u64>) -> Result<Vec<Relayed>, BusError> {
        let key = self.relay.redis.key(&buffer_key(self.call, self.user));
        let max = upto.map_or_else(|| "+inf".to_owned(), |u| u.to_string());
        let answer = self
            .relay
            .redis
            .run(
                &PAGE,
                vec![key],
                vec![format!("({after}"), max, REPLAY_PAGE.to_string()],
            )
            .await?;
        Ok(answer
            .into_iter()
            .flatten()
            .filter_map(|m| Relayed::parse(&m))
            .collect())
    }

    /// Records what was handed to the client, so a reconnect that does not
    /// say where it stopped resumes from here.
    pub async fn record_delivered(&self) -> Result<(), BusError> {
        self.relay
            .redis
            .set_with_ttl(
                &delivered_key(self.call, self.user),
                &self.last.to_string(),
                MAILBOX_TTL,
            )
            .await
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        detach(&self.relay.inner, &self.channel, self.id);
    }
}

/// The messages of one channel on this replica. Unsubscribes when dropped.
#[derive(Debug)]
pub struct Listener {
    /// Only the shared part of the relay: an idle socket holds this.
    inner: Arc<Inner>,
    channel: String,
    id: u64,
    rx: mpsc::Receiver<Delivery>,
}

impl Listener {
    /// The next message; `None` when the relay stopped.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Delivery::Message(message) = self.rx.next().await? {
                return Some(message);
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        detach(&self.inner, &self.channel, self.id);
    }
}

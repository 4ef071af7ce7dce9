//! Client sockets, each carried from a gateway as one gRPC stream.
//!
//! * **Presence** (`WS /calls/ws/{user_id}`): the user is online while the
//!   stream lives (heartbeats into the presence registry); the user's pushes
//!   (`push:<user>`, published by the notification service) are forwarded;
//!   text `ping` gets `pong`.
//! * **Call** (`WS /ws/webrtc/{call_id}`): only the two participants of a
//!   pending or ongoing call. Frames from the client are checked, rate
//!   limited and relayed to the peer's mailbox ([`crate::relay`]); frames for
//!   this participant arrive in sequence from its own mailbox, wherever the
//!   peer sits. The peer is told `connection_ready` when this side joins,
//!   and this side is told `user_disconnected` when the peer's socket has
//!   been gone for [`DISCONNECT_NOTICE`] (a quick reconnect goes unnoticed).
//!   What one participant can make the fleet hold for the other is bounded:
//!   each relayed payload ([`MAX_SIGNAL_BYTES`], [`MAX_CHAT_CHARS`]), the
//!   mailbox ([`crate::relay::BUFFER_BYTES`]) and, before the call is
//!   accepted, the number of frames ([`EARLY_FRAMES`]).
//!
//! When the replica drains (SIGTERM), every stream is closed with 1012 so
//! the gateway resumes it on another replica.

use std::time::{Duration, Instant};

use futures_channel::mpsc;
use futures_util::SinkExt;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use unilink_domain::{CallId, UserId};
use unilink_events::payload::{CLOSE_POLICY, push_channel};
use unilink_presence::PresenceRegistry;
use unilink_proto::signaling::{ClientFrame, Close, Open, ServerFrame, SocketKind, client_frame, server_frame};

use crate::connections::BEAT;
use crate::error::SignalingError;
use crate::relay::{EARLY_FRAMES, FromClient, Mailbox, SendOutcome};
use crate::repo::{Call, CallStatus};
use crate::service::CallService;

/// Largest client frame accepted (an `error` frame answers larger ones).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// The peer's socket must be gone this long before `user_disconnected`.
pub const DISCONNECT_NOTICE: Duration = Duration::from_secs(5);
/// The first message of a stream must arrive within this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 4000;
/// Largest `offer`, `answer` or `candidate` payload relayed, as JSON text: a
/// browser's SDP for audio, video and data is a few KiB, a candidate a few
/// hundred bytes.
pub const MAX_SIGNAL_BYTES: usize = 16 * 1024;
/// While the call is pending, the database is asked whether it was accepted
/// at most this often (only once [`EARLY_FRAMES`] were relayed).
const ACCEPT_RECHECK: Duration = Duration::from_secs(1);
/// Frames per second a presence socket may send (the original client sends
/// one `ping` every 30 s).
const PRESENCE_FRAME_RATE: u32 = 10;
/// Frames queued towards the gateway per stream.
const OUTBOUND_QUEUE: usize = 256;

/// Frames for the gateway. A futures-channel queue: idle, it holds no
/// slots (a tokio channel's first block of 32 frames and its cache-padded
/// header were ~1.3 KiB per socket).
pub type Outbound = mpsc::Receiver<ServerFrame>;

/// A push that is a control message (pushes for the client never carry a
/// top-level `control` key; see [`unilink_events::payload::close_control`]).
fn as_control(push: &str) -> Option<serde_json::Value> {
    if !push.contains(r#""control""#) {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(push)
        .ok()
        .filter(|v| v.get("control").is_some())
}

/// The close a control message asks of a socket of session `family`: every
/// socket of the user, or only those of the session it names.
fn close_asked(control: &serde_json::Value, family: &str) -> Option<ServerFrame> {
    if control
        .get("family")
        .and_then(|f| f.as_str())
        .is_some_and(|f| f != family)
    {
        return None;
    }
    let code = control["code"].as_u64().unwrap_or(u64::from(CLOSE_POLICY)) as u32;
    let reason = control["reason"].as_str().unwrap_or("closed");
    Some(close(code, reason))
}

#[derive(Debug, Clone)]
pub struct Sessions {
    core: CallService,
    presence: PresenceRegistry,
    draining: CancellationToken,
}

fn text(text: String, seq: u64) -> ServerFrame {
    ServerFrame {
        kind: Some(server_frame::Kind::Text(text)),
        seq,
    }
}

fn close(code: u32, reason: &str) -> ServerFrame {
    ServerFrame {
        kind: Some(server_frame::Kind::Close(Close {
            code,
            reason: reason.to_owned(),
        })),
        seq: 0,
    }
}

fn error_frame(message: &str) -> String {
    format!(r#"{{"type":"error","message":{}}}"#, json_string(message))
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl Sessions {
    pub fn new(core: CallService, presence: PresenceRegistry, draining: CancellationToken) -> Sessions {
        Sessions {
            core,
            presence,
            draining,
        }
    }

    /// Reads the `open` message, checks it and starts the session; the
    /// answer is refused with a status before any frame flows.
    pub async fn open(&self, mut inbound: Streaming<ClientFrame>) -> Result<Outbound, SignalingError> {
        if self.draining.is_cancelled() {
            return Err(SignalingError::Draining);
        }
        let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SignalingError::BadRequest("no open message"))?
            .map_err(|_| SignalingError::BadRequest("stream failed before open"))?;
        let Some(ClientFrame {
            kind: Some(client_frame::Kind::Open(open)),
        }) = first
        else {
            return Err(SignalingError::BadRequest("the first message must be open"));
        };
        let user = UserId::parse(&open.user_id)?;
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        match open.kind() {
            SocketKind::Presence => {
                let connection = connection_id(&open);
                self.presence.connect(user, &connection).await?;
                let listener = self.core.relay.listen(&push_channel(&user.to_string())).await?;
                let session = PresenceSession {
                    bucket: TokenBucket::new(PRESENCE_FRAME_RATE, Instant::now()),
                    sessions: self.clone(),
                    user,
                    family: open.family_id.clone(),
                    connection,
                    inbound,
                    tx,
                    listener,
                };
                metrics::gauge!("signaling_streams", "kind" => "presence").increment(1.0);
                tokio::spawn(session.run());
            }
            SocketKind::Call => {
                let call_id = CallId::parse(&open.call_id)?;
                let call = self.core.call_for(user, call_id).await?;
                if !call.status.is_open() {
                    return Err(SignalingError::WrongState(format!("call is {}", call.status.as_str())));
                }
                // A client that says where it was (even "nothing yet", 0)
                // gets everything after that; otherwise it starts after what
                // the fleet last delivered to this user.
                let resume_after = (open.resume || open.resume_after > 0).then_some(open.resume_after);
                let mailbox = self.core.relay.open_after(call_id, user, resume_after).await?;
                let connection = connection_id(&open);
                let peer = call.peer_of(user);
                // Registered before the stream is answered: whoever joins
                // after this sees this side (and tells it).
                let peer_here = self.core.connections.beat(call_id, user, peer, &connection).await?;
                // Control messages for this user (a logout or a closed
                // account closes this socket too).
                let controls = self.core.relay.listen(&push_channel(&user.to_string())).await?;
                let session = CallSession {
                    accepted: call.status == CallStatus::Ongoing,
                    accept_checked: None,
                    family: open.family_id.clone(),
                    controls,
                    core: self.core.clone(),
                    draining: self.draining.clone(),
                    peer,
                    call,
                    user,
                    connection,
                    peer_here,
                    resume: open.resume || open.resume_after > 0,
                    inbound,
                    tx,
                    mailbox,
                    bucket: TokenBucket::new(self.core.settings.frame_rate, Instant::now()),
                };
                metrics::gauge!("signaling_streams", "kind" => "call").increment(1.0);
                tokio::spawn(session.run());
            }
            SocketKind::Unspecified => return Err(SignalingError::BadRequest("unknown socket kind")),
        }
        Ok(rx)
    }
}

fn connection_id(open: &Open) -> String {
    if open.connection_id.is_empty() {
        uuid::Uuid::new_v4().simple().to_string()
    } else {
        open.connection_id.chars().take(64).collect()
    }
}

struct PresenceSession {
    sessions: Sessions,
    user: UserId,
    /// The session (token family) it was opened with.
    family: String,
    connection: String,
    inbound: Streaming<ClientFrame>,
    tx: mpsc::Sender<ServerFrame>,
    listener: crate::relay::Listener,
    bucket: TokenBucket,
}

impl PresenceSession {
    /// Lives as long as the socket, so it must stay small: the Redis calls
    /// it awaits box their command futures (`Redis::run`).
    async fn run(mut self) {
        let mut beat = tokio::time::interval(unilink_presence::DEFAULT_TTL / 3);
        beat.tick().await;
        // Whether the client was told to reconnect elsewhere (this replica or
        // its gateway drains): then its presence is left to the next socket,
        // or to its TTL, instead of flickering offline in between.
        let mut handover = false;
        loop {
            tokio::select! {
                message = self.inbound.message() => match message {
                    Ok(Some(ClientFrame { kind: Some(client_frame::Kind::Text(t)) })) => {
                        let answer = match t.trim() {
                            "ping" => Some("pong".to_owned()),
                            other if other.contains("\"ping\"") => Some(r#"{"type":"pong"}"#.to_owned()),
                            _ => None,
                        };
                        // Slowed like a call socket's frames; the presence
                        // heartbeat stays on its timer whatever the client
                        // sends (the gateway closes sockets that fall silent).
                        if !self.bucket.admit().await {
                            let _ = self.tx.send(close(CLOSE_POLICY, "too many messages")).await;
                            break;
                        }
                        if let Some(answer) = answer
                            && self.tx.send(text(answer, 0)).await.is_err()
                        {
                            break;
                        }
                    }
                    Ok(Some(ClientFrame { kind: Some(client_frame::Kind::Handover(_)) })) => {
                        handover = true;
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                push = self.listener.next() => {
                    let Some(push) = push else { break };
                    if let Some(control) = as_control(&push) {
                        if let Some(frame) = close_asked(&control, &self.family) {
                            let _ = self.tx.send(frame).await;
                            break;
                        }
                        continue;
                    }
                    if self.tx.send(text(push, 0)).await.is_err() {
                        break;
                    }
                }
                _ = beat.tick() => {
                    metrics::counter!("presence_heartbeats_total").increment(1);
                    if let Err(e) = self.sessions.presence.heartbeat(self.user, &self.connection).await {
                        tracing::warn!(user_id = %self.user, error = %e, "presence heartbeat failed");
                    }
                }
                () = self.sessions.draining.cancelled() => {
                    let _ = self.tx.send(close(1012, "server restarting; reconnect")).await;
                    handover = true;
                    break;
                }
            }
        }
        if handover {
            metrics::counter!("presence_handovers_total").increment(1);
        } else if let Err(e) = self.sessions.presence.disconnect(self.user, &self.connection).await {
            tracing::warn!(user_id = %self.user, error = %e, "presence not cleared; it expires with its TTL");
        }
        metrics::gauge!("signaling_streams", "kind" => "presence").decrement(1.0);
    }
}

/// Frames per second, with a burst of [`BURST_SECONDS`] seconds' worth.
/// A frame beyond it is not refused: the socket waits until the bucket has a
/// token for it (the bucket goes into debt, and the session sleeps the debt
/// off before reading on), so the client is slowed by backpressure. Only a
/// client that keeps the bucket empty for [`FLOOD_LIMIT`] is disconnected.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// Since when every frame has had to wait.
    empty_since: Option<Instant>,
}

/// The burst a bucket allows, in seconds of its rate: a WebRTC client's
/// trickle of ICE candidates after an offer comes in one burst.
const BURST_SECONDS: f64 = 4.0;
/// A socket whose every frame has had to wait this long is flooding.
const FLOOD_LIMIT: Duration = Duration::from_secs(10);

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(rate);
        TokenBucket {
            rate,
            burst: rate * BURST_SECONDS,
            tokens: rate * BURST_SECONDS,
            at: now,
            empty_since: None,
        }
    }

    /// Takes a token for a frame arriving at `now`: how long the frame must
    /// wait for it (zero when one was there).
    fn take(&mut self, now: Instant) -> Duration {
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            self.empty_since = None;
            return Duration::ZERO;
        }
        self.empty_since.get_or_insert(now);
        Duration::from_secs_f64(-self.tokens / self.rate)
    }

    /// Whether the bucket has been kept empty for [`FLOOD_LIMIT`] at `now`.
    fn flooded(&self, now: Instant) -> bool {
        self.empty_since
            .is_some_and(|since| now.saturating_duration_since(since) >= FLOOD_LIMIT)
    }

    /// Waits until the frame just read may be handled: nothing more is read
    /// from the socket meanwhile, so the gRPC stream's window and the
    /// gateway's queue fill and the gateway stops reading the client (TCP
    /// pushes back). `false` for a sustained flood: close the socket.
    async fn admit(&mut self) -> bool {
        let now = Instant::now();
        let wait = self.take(now);
        if wait.is_zero() {
            return true;
        }
        if self.flooded(now) {
            return false;
        }
        metrics::counter!("signaling_frames_throttled_total").increment(1);
        // Boxed: the sessions' futures stay small while idle.
        let sleeping = Box::pin(tokio::time::sleep(wait));
        sleeping.await;
        true
    }
}

struct CallSession {
    core: CallService,
    draining: CancellationToken,
    /// The session (token family) it was opened with.
    family: String,
    /// The user's push channel, read for control messages only.
    controls: crate::relay::Listener,
    call: Call,
    /// The call was accepted (when the socket opened, or since): the
    /// peer's mailbox takes this client's frames without the early bound.
    accepted: bool,
    /// When the database was last asked whether the call was accepted.
    accept_checked: Option<Instant>,
    user: UserId,
    peer: UserId,
    connection: String,
    /// The peer had a socket when this one registered.
    peer_here: bool,
    resume: bool,
    inbound: Streaming<ClientFrame>,
    tx: mpsc::Sender<ServerFrame>,
    mailbox: Mailbox,
    bucket: TokenBucket,
}

/// What to do after a client frame.
enum Next {
    Continue,
    Close(u32, &'static str),
}

impl CallSession {
    async fn run(mut self) {
        let call = self.call.id;
        let mut peer_seen = self.peer_here;
        let mut peer_missing_since: Option<Instant> = None;
        if self.peer_here && !self.resume {
            let frame = format!(
                r#"{{"type":"connection_ready","user_id":"{}","message":"peer connected"}}"#,
                self.user
            );
            self.relay_to(self.peer, &frame, FromClient::default()).await;
        }
        let mut beat = tokio::time::interval(BEAT);
        beat.tick().await;
        let mut delivered_recorded = self.mailbox.last();
        loop {
            tokio::select! {
                message = self.inbound.message() => match message {
                    Ok(Some(ClientFrame { kind: Some(client_frame::Kind::Text(t)) })) => {
                        match self.on_client_frame(&t).await {
                            Next::Continue => {}
                            Next::Close(code, reason) => {
                                let _ = self.tx.send(close(code, reason)).await;
                                break;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                frame = self.mailbox.next() => match frame {
                    Ok(Some(frame)) => {
                        let ended = is_call_ended(&frame.text);
                        if self.tx.send(text(frame.text, frame.seq)).await.is_err() {
                            break;
                        }
                        if ended {
                            let _ = self.tx.send(close(1000, "call ended")).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(call_id = %call, error = %e, "relay read failed");
                        let _ = self.tx.send(close(1011, "relay unavailable; reconnect")).await;
                        break;
                    }
                },
                _ = beat.tick() => {
                    match self.core.connections.beat(call, self.user, self.peer, &self.connection).await {
                        Ok(true) => {
                            peer_seen = true;
                            peer_missing_since = None;
                        }
                        Ok(false) if peer_seen => {
                            let since = *peer_missing_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= DISCONNECT_NOTICE {
                                peer_seen = false;
                                peer_missing_since = None;
                                let frame = format!(r#"{{"type":"user_disconnected","user_id":"{}"}}"#, self.peer);
                                if self.tx.send(text(frame, 0)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(call_id = %call, error = %e, "call socket beat failed"),
                    }
                    // A burst whose tail was lost does not wait for the next frame.
                    if !self.mailbox.has_ready() && let Err(e) = self.mailbox.catch_up().await {
                        tracing::warn!(call_id = %call, error = %e, "relay catch-up failed");
                    }
                    if self.mailbox.last() != delivered_recorded {
                        delivered_recorded = self.mailbox.last();
                        let _ = self.mailbox.record_delivered().await;
                    }
                }
                push = self.controls.next() => {
                    let Some(push) = push else { break };
                    if let Some(frame) = as_control(&push).and_then(|c| close_asked(&c, &self.family)) {
                        let _ = self.tx.send(frame).await;
                        break;
                    }
                }
                () = self.draining.cancelled() => {
                    let _ = self.tx.send(close(1012, "server restarting; reconnect")).await;
                    break;
                }
            }
        }
        let _ = self.mailbox.record_delivered().await;
        let _ = self.core.connections.leave(call, self.user, &self.connection).await;
        metrics::gauge!("signaling_streams", "kind" => "call").decrement(1.0);
    }

    /// Relays `frame` to `user`'s mailbox. With the client's numbering, a
    /// repeat is not relayed again and a frame after a gap is held back.
    /// `None` if it could not (the client was told).
    async fn relay_to(&mut self, user: UserId, frame: &str, from: FromClient<'_>) -> Option<SendOutcome> {
        let traceparent = unilink_telemetry::inject().remove("traceparent").unwrap_or_default();
        let sender = self.user.to_string();
        match self
            .core
            .relay
            .send_once(self.call.id, user, &sender, frame, &traceparent, from)
            .await
        {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::warn!(call_id = %self.call.id, error = %e, "relay send failed");
                let _ = self
                    .tx
                    .send(text(error_frame("message not delivered; try again"), 0))
                    .await;
                None
            }
        }
    }

    /// Relays a numbered (or unnumbered) client frame to the peer and
    /// acknowledges it once it is relayed, now or before. Before the call
    /// is accepted, frames beyond [`EARLY_FRAMES`] are refused with an
    /// `error` (and not acknowledged: a numbering client sends them again).
    async fn relay_and_ack(&mut self, frame: &str, numbered: Option<(&str, u64)>) -> Option<SendOutcome> {
        let mut from = FromClient {
            numbered,
            early: !self.accepted,
        };
        let mut outcome = self.relay_to(self.peer, frame, from).await;
        if outcome == Some(SendOutcome::TooEarly) && self.accepted_since().await {
            from.early = false;
            outcome = self.relay_to(self.peer, frame, from).await;
        }
        match outcome {
            Some(SendOutcome::Relayed(_) | SendOutcome::Repeat) => self.ack(numbered).await,
            Some(SendOutcome::TooEarly) => {
                metrics::counter!("signaling_frames_refused_total", "reason" => "not_accepted").increment(1);
                let message =
                    format!("the call has not been accepted yet: at most {EARLY_FRAMES} messages are relayed before");
                self.reply_error(&message).await;
            }
            Some(SendOutcome::OutOfOrder) | None => {}
        }
        outcome
    }

    /// Whether the call has been accepted since this socket opened (the
    /// early bound was reached: the database says, asked at most once per
    /// [`ACCEPT_RECHECK`]).
    async fn accepted_since(&mut self) -> bool {
        let now = Instant::now();
        if self
            .accept_checked
            .is_some_and(|at| now.saturating_duration_since(at) < ACCEPT_RECHECK)
        {
            return false;
        }
        self.accept_checked = Some(now);
        match self.core.call_for(self.user, self.call.id).await {
            Ok(call) => {
                self.accepted = call.status == CallStatus::Ongoing;
                self.accepted
            }
            Err(e) => {
                tracing::warn!(call_id = %self.call.id, error = %e, "call state not read");
                false
            }
        }
    }

    /// `{"type":"ack","cseq":n}`: the frame numbered `n` by the client is
    /// relayed (or handled) and need not be sent again.
    async fn ack(&mut self, numbered: Option<(&str, u64)>) {
        if let Some((_, cseq)) = numbered {
            let _ = self
                .tx
                .send(text(format!(r#"{{"type":"ack","cseq":{cseq}}}"#), 0))
                .await;
        }
    }

    async fn reply_error(&mut self, message: &str) -> Next {
        let _ = self.tx.send(text(error_frame(message), 0)).await;
        Next::Continue
    }

    async fn on_client_frame(&mut self, raw: &str) -> Next {
        if !self.bucket.admit().await {
            return Next::Close(CLOSE_POLICY, "too many messages");
        }
        if raw.len() > MAX_FRAME_BYTES {
            return self.reply_error("message too large (at most 64 KiB)").await;
        }
        let value: serde_json::Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(_) => return self.reply_error("invalid message: not JSON").await,
        };
        let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
            return self.reply_error("invalid message: a string \"type\" is required").await;
        };
        let me = self.user;
        let field = |name: &str| value.get(name).filter(|v| !v.is_null());
        // The client's numbering, when it asks for acknowledgements: its
        // session id (`cid`) and the frame's number in it (`cseq`, from 1).
        let cid = field("cid")
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty() && c.len() <= 64);
        let cseq = cid.zip(field("cseq").and_then(serde_json::Value::as_u64).filter(|c| *c > 0));
        match kind {
            "ping" => {
                let _ = self.tx.send(text(r#"{"type":"pong"}"#.to_owned(), 0)).await;
                self.ack(cseq).await;
            }
            "offer" | "answer" | "ice_candidate" => {
                let name = if kind == "ice_candidate" { "candidate" } else { kind };
                let Some(payload) = field(name) else {
                    return self.reply_error(&format!("{kind} needs a \"{name}\" field")).await;
                };
                let payload = payload.to_string();
                if payload.len() > MAX_SIGNAL_BYTES {
                    return self.reply_error(&format!("{kind} too large (at most 16 KiB)")).await;
                }
                let frame = format!(r#"{{"type":"{kind}","{name}":{payload},"from":"{me}"}}"#);
                self.relay_and_ack(&frame, cseq).await;
            }
            "connection_state" => {
                let Some(state) = field("state").and_then(|s| s.as_str()) else {
                    return self.reply_error("connection_state needs a string \"state\"").await;
                };
                let state: String = state.chars().take(32).collect();
                if state == "failed" {
                    metrics::counter!("webrtc_connection_failures_total").increment(1);
                }
                let _ = self.core.connections.report_state(self.call.id, me, &state).await;
                let frame = format!(
                    r#"{{"type":"connection_state","user_id":"{me}","state":{}}}"#,
                    json_string(&state)
                );
                self.relay_and_ack(&frame, cseq).await;
            }
            "chat_message" => {
                let Some(body) = field("text").and_then(|s| s.as_str()) else {
                    return self.reply_error("chat_message needs a string \"text\"").await;
                };
                if body.chars().count() > MAX_CHAT_CHARS {
                    return self
                        .reply_error("chat message too long (at most 4000 characters)")
                        .await;
                }
                let timestamp = match field("timestamp") {
                    Some(t) => t.to_string(),
                    None => json_string(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                };
                let frame = format!(
                    r#"{{"type":"chat_message","from":"{me}","text":{},"timestamp":{timestamp}}}"#,
                    json_string(body)
                );
                // Both sides, through their mailboxes, so each sees one order;
                // the sender's copy only when the peer's was relayed just now.
                if let Some(SendOutcome::Relayed(_)) = self.relay_and_ack(&frame, cseq).await {
                    self.relay_to(me, &frame, FromClient::default()).await;
                }
            }
            "end_call" => match self.core.end(me, self.call.id).await {
                Ok(_) => self.ack(cseq).await,
                Err(SignalingError::WrongState(m)) => return self.reply_error(&m).await,
                Err(e) => {
                    tracing::warn!(call_id = %self.call.id, error = %e, "end_call failed");
                    return self.reply_error("could not end the call; try again").await;
                }
            },
            other => {
                let shown: String = other.chars().take(40).collect();
                return self.reply_error(&format!("unknown message type: {shown}")).await;
            }
        }
        Next::Continue
    }
}

/// Whether a relayed text is the `call_ended` frame (built by this service
/// with `type` right after `seq`).
fn is_call_ended(text: &str) -> bool {
    text.split_once(',')
        .is_some_and(|(_, rest)| rest.starts_with(r#""type":"call_ended""#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ended_is_recognised_only_at_the_top_level() {
        assert!(is_call_ended(r#"{"seq":4,"type":"call_ended","user_id":null}"#));
        assert!(!is_call_ended(
            r#"{"seq":5,"type":"offer","offer":{"type":"call_ended"},"from":"x"}"#
        ));
    }

    #[test]
    fn control_messages_are_told_apart_from_pushes() {
        let close = unilink_events::payload::close_control(1008, "account closed", None);
        assert_eq!(as_control(&close).unwrap()["code"], 1008);
        assert!(as_control(r#"{"type":"incoming_call","caller_username":"control"}"#).is_none());
        assert!(as_control(r#"{"type":"x","call":{"control":1}}"#).is_none());
    }

    #[test]
    fn the_bucket_slows_beyond_the_burst_and_gives_up_only_on_a_sustained_flood() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, start);
        // The burst passes at once.
        assert!((0..40).all(|_| bucket.take(start).is_zero()));
        // The next frames wait a tenth of a second more each.
        assert_eq!(bucket.take(start), Duration::from_millis(100));
        assert_eq!(bucket.take(start), Duration::from_millis(200));
        assert!(!bucket.flooded(start));
        // A short pause refills it; the count starts again.
        let at = start + Duration::from_secs(1);
        assert!(bucket.take(at).is_zero());
        assert!(!bucket.flooded(at));
        // Kept empty (every frame waits) for the flood limit: flooding.
        let flood_start = at + Duration::from_millis(1);
        let mut t = flood_start;
        while t < flood_start + FLOOD_LIMIT {
            for _ in 0..20 {
                bucket.take(t);
            }
            t += Duration::from_millis(500);
        }
        assert!(bucket.flooded(t));
    }

    #[test]
    fn five_hundred_candidates_back_to_back_are_slowed_within_the_flood_limit() {
        // Read as fast as the session may: each frame after its wait.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(50, start);
        let mut now = start;
        for _ in 0..500 {
            now += bucket.take(now);
            assert!(!bucket.flooded(now));
        }
        let took = now - start;
        assert!(took > Duration::from_secs(5) && took < FLOOD_LIMIT, "{took:?}");
    }
}

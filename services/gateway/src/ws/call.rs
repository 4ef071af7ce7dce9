//! Call sockets: the data plane of a call, in the gateway that holds the socket.
//!
//! Opening one asks signaling once (`JoinCall`) whether this user may join
//! this call now; signaling registers the socket and answers with the call
//! and the peer. From then on frames never pass through signaling: each
//! client frame is checked ([`ClientFrame::parse`]), slowed to the frame
//! rate ([`TokenBucket`]) and appended to the peer's mailbox in one script
//! ([`SignalRelay::send_once`]), and frames for this participant arrive in
//! sequence from its own mailbox, wherever the peer sits. Only frames that
//! change state go to signaling: `end_call` (`End`) and `connection_state`
//! (`ReportConnectionState`); signaling ends calls by putting `call_ended`
//! in both mailboxes, which closes the sockets wherever they are.
//!
//! The peer is told `connection_ready` when this side joins, and this side
//! `user_disconnected` when the peer's socket has been gone for
//! [`DISCONNECT_NOTICE`] (a quick reconnect goes unnoticed). What one
//! participant can make the fleet hold for the other is bounded: each
//! relayed payload (`MAX_SIGNAL_BYTES`, `MAX_CHAT_CHARS`), the mailbox
//! ([`unilink_relay::BUFFER_BYTES`]) and, before the call is accepted, the
//! number of frames ([`EARLY_FRAMES`]).

use std::time::{Duration, Instant};

use unilink_domain::{CallId, UserId};
use unilink_events::payload::push_channel;
use unilink_grpc::GrpcChannel;
use unilink_proto::signaling::signaling_service_client::SignalingServiceClient;
use unilink_proto::signaling::{CallRequest, CallStatus, ConnectionStateReport, JoinCallRequest};
use unilink_protocol::{CallFrame, ClientFrame, ClientMessage, Control, Relayed};
use unilink_relay::{BEAT, CallConnections, EARLY_FRAMES, FromClient, Listener, Mailbox, SendOutcome, SignalRelay};

use crate::ws::bucket::{Admit, TokenBucket};
use crate::ws::socket::WebSocket;
use crate::ws::{End, Step, close_reason};

/// The peer's socket must be gone this long before `user_disconnected`.
pub const DISCONNECT_NOTICE: Duration = Duration::from_secs(5);
/// While the call is pending, signaling is asked whether it was accepted
/// at most this often (only once [`EARLY_FRAMES`] were relayed).
const ACCEPT_RECHECK: Duration = Duration::from_secs(1);

/// What a call socket needs from the gateway replica.
#[derive(Clone)]
pub struct CallPlane {
    pub relay: SignalRelay,
    pub connections: CallConnections,
    pub signaling: GrpcChannel,
    /// Frames per second a call socket may send.
    pub frame_rate: u32,
}

impl std::fmt::Debug for CallPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPlane")
            .field("frame_rate", &self.frame_rate)
            .finish_non_exhaustive()
    }
}

/// Why a call socket could not open.
#[derive(Debug)]
pub enum Refused {
    /// Signaling's answer (not a participant, call over, unavailable).
    Signaling(tonic::Status),
    /// Redis could not be reached.
    Relay(unilink_bus::BusError),
}

/// How a socket opens: who, which call, and where it resumes.
#[derive(Debug, Clone)]
pub struct Join {
    pub user: UserId,
    pub call: CallId,
    /// The access token's session (`fid`): a logout of it closes the socket.
    pub family: String,
    /// The `seq` of the last frame the client saw, when it said.
    pub last_seq: Option<u64>,
}

/// One participant's call socket.
pub struct CallSession {
    plane: CallPlane,
    call: CallId,
    user: UserId,
    peer: UserId,
    family: String,
    connection: String,
    /// The call was accepted (when the socket opened, or since): the
    /// peer's mailbox takes this client's frames without the early bound.
    accepted: bool,
    /// When signaling was last asked whether the call was accepted.
    accept_checked: Option<Instant>,
    peer_seen: bool,
    peer_missing_since: Option<Instant>,
    mailbox: Mailbox,
    /// The user's channel, read for control messages only.
    controls: Listener,
    beat: tokio::time::Interval,
    delivered_recorded: u64,
    bucket: TokenBucket,
}

impl std::fmt::Debug for CallSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSession")
            .field("call", &self.call)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What woke a call socket.
pub(crate) enum CallEvent {
    Relayed(Result<Option<Relayed>, unilink_bus::BusError>),
    Control(Option<String>),
    Beat,
}

impl CallPlane {
    /// Joins the call (signaling says whether this user may) and opens the
    /// mailbox after where the client was. A client that says where it was
    /// (even "nothing yet", 0) gets everything after that; otherwise it
    /// starts after what the fleet last delivered to this user.
    pub async fn open(&self, join: Join, connection: String) -> Result<CallSession, Refused> {
        let joined = SignalingServiceClient::new(self.signaling.clone())
            .join_call(JoinCallRequest {
                user_id: join.user.to_string(),
                call_id: join.call.to_string(),
                connection_id: connection.clone(),
            })
            .await
            .map_err(Refused::Signaling)?
            .into_inner();
        let malformed = |what: &str| Refused::Signaling(tonic::Status::internal(format!("JoinCall answered {what}")));
        let call = joined.call.ok_or_else(|| malformed("no call"))?;
        let peer = UserId::parse(&joined.peer_id).map_err(|_| malformed("no peer"))?;
        let mailbox = self
            .relay
            .open_after(join.call, join.user, join.last_seq)
            .await
            .map_err(Refused::Relay)?;
        // Control messages for this user (a logout or a closed account
        // closes this socket too).
        let controls = self
            .relay
            .listen(&push_channel(&join.user.to_string()))
            .await
            .map_err(Refused::Relay)?;
        let mut beat = tokio::time::interval(BEAT);
        beat.reset();
        let session = CallSession {
            plane: self.clone(),
            call: join.call,
            user: join.user,
            peer,
            family: join.family,
            connection,
            accepted: call.status() == CallStatus::Ongoing,
            accept_checked: None,
            peer_seen: joined.peer_here,
            peer_missing_since: None,
            delivered_recorded: mailbox.last(),
            mailbox,
            controls,
            beat,
            bucket: TokenBucket::new(self.frame_rate, Instant::now()),
        };
        // A socket that was open a moment ago (resuming) is not announced again.
        if joined.peer_here && join.last_seq.is_none() {
            let ready = CallFrame::ConnectionReady {
                user_id: join.user,
                message: "peer connected".to_owned(),
            };
            if let Err(e) = session.send(session.peer, &ready, FromClient::default()).await {
                tracing::warn!(call_id = %join.call, error = %e, "connection_ready not relayed");
            }
        }
        Ok(session)
    }
}

impl CallSession {
    pub(crate) fn admit(&mut self) -> Admit {
        self.bucket.admit()
    }

    /// The next thing to do: a frame for the client, a control message, a beat.
    pub(crate) async fn next_event(&mut self) -> CallEvent {
        tokio::select! {
            frame = self.mailbox.next() => CallEvent::Relayed(frame),
            control = self.controls.next() => CallEvent::Control(control),
            _ = self.beat.tick() => CallEvent::Beat,
        }
    }

    pub(crate) async fn on_event(&mut self, socket: &mut WebSocket, event: CallEvent) -> Step {
        match event {
            CallEvent::Relayed(Ok(Some(frame))) => {
                if socket.send_text(&frame.client_text()).await.is_err() {
                    return Step::End(End::Gone);
                }
                if matches!(frame.envelope.frame, CallFrame::CallEnded { .. }) {
                    return Step::End(End::Close(close_reason(1000, "call ended")));
                }
                Step::Go
            }
            CallEvent::Relayed(Ok(None)) => Step::End(End::Close(close_reason(1012, "server restarting; reconnect"))),
            CallEvent::Relayed(Err(e)) => {
                tracing::warn!(call_id = %self.call, error = %e, "relay read failed");
                Step::End(End::Close(close_reason(1011, "relay unavailable; reconnect")))
            }
            CallEvent::Control(None) => Step::Go,
            CallEvent::Control(Some(message)) => match Control::parse(&message) {
                Some(control) if control.applies_to(&self.family) => {
                    Step::End(End::Close(close_reason(control.code, &control.reason)))
                }
                _ => Step::Go,
            },
            CallEvent::Beat => self.on_beat(socket).await,
        }
    }

    /// Every [`BEAT`]: keeps this socket registered, notices a peer that is
    /// gone, picks up a lost tail of frames and records what was delivered.
    async fn on_beat(&mut self, socket: &mut WebSocket) -> Step {
        match self
            .plane
            .connections
            .beat(self.call, self.user, self.peer, &self.connection)
            .await
        {
            Ok(true) => {
                self.peer_seen = true;
                self.peer_missing_since = None;
            }
            Ok(false) if self.peer_seen => {
                let since = *self.peer_missing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= DISCONNECT_NOTICE {
                    self.peer_seen = false;
                    self.peer_missing_since = None;
                    let gone = CallFrame::UserDisconnected { user_id: self.peer };
                    if socket.send_text(&gone.to_text()).await.is_err() {
                        return Step::End(End::Gone);
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(call_id = %self.call, error = %e, "call socket beat failed"),
        }
        // A burst whose tail was lost does not wait for the next frame.
        if !self.mailbox.has_ready()
            && let Err(e) = self.mailbox.catch_up().await
        {
            tracing::warn!(call_id = %self.call, error = %e, "relay catch-up failed");
        }
        self.record_delivered().await;
        Step::Go
    }

    async fn record_delivered(&mut self) {
        if self.mailbox.last() != self.delivered_recorded {
            self.delivered_recorded = self.mailbox.last();
            if let Err(e) = self.mailbox.record_delivered().await {
                tracing::debug!(call_id = %self.call, error = %e, "delivery point not recorded");
            }
        }
    }

    /// The socket closed: what was delivered is recorded, and the socket
    /// leaves the call's registry.
    pub(crate) async fn finish(mut self) {
        self.record_delivered().await;
        if let Err(e) = self
            .plane
            .connections
            .leave(self.call, self.user, &self.connection)
            .await
        {
            tracing::debug!(call_id = %self.call, error = %e, "socket left by expiry");
        }
    }

    async fn send(
        &self,
        to: UserId,
        frame: &CallFrame,
        from: FromClient<'_>,
    ) -> Result<SendOutcome, unilink_bus::BusError> {
        let traceparent = unilink_telemetry::inject().remove("traceparent").unwrap_or_default();
        self.plane
            .relay
            .send_once(self.call, to, &self.user.to_string(), frame, &traceparent, from)
            .await
    }

    /// Relays `frame` to `to`'s mailbox; `None` if it could not (the client
    /// was told to try again).
    async fn relay_to(
        &self,
        socket: &mut WebSocket,
        to: UserId,
        frame: &CallFrame,
        from: FromClient<'_>,
    ) -> Result<Option<SendOutcome>, End> {
        match self.send(to, frame, from).await {
            Ok(outcome) => Ok(Some(outcome)),
            Err(e) => {
                tracing::warn!(call_id = %self.call, error = %e, "relay send failed");
                reply(socket, &CallFrame::error("message not delivered; try again")).await?;
                Ok(None)
            }
        }
    }

    /// Relays a client frame to the peer and acknowledges it once it is
    /// relayed, now or before. Before the call is accepted, frames beyond
    /// [`EARLY_FRAMES`] are refused with an `error` (and not acknowledged: a
    /// numbering client sends them again).
    async fn relay_and_ack(
        &mut self,
        socket: &mut WebSocket,
        frame: &CallFrame,
        numbered: Option<(&str, u64)>,
    ) -> Result<Option<SendOutcome>, End> {
        let mut from = FromClient {
            numbered,
            early: !self.accepted,
        };
        let mut outcome = self.relay_to(socket, self.peer, frame, from).await?;
        if outcome == Some(SendOutcome::TooEarly) && self.accepted_since().await {
            from.early = false;
            outcome = self.relay_to(socket, self.peer, frame, from).await?;
        }
        match outcome {
            Some(SendOutcome::Relayed(_) | SendOutcome::Repeat) => ack(socket, numbered).await?,
            Some(SendOutcome::TooEarly) => {
                metrics::counter!("signaling_frames_refused_total", "reason" => "not_accepted").increment(1);
                let message =
                    format!("the call has not been accepted yet: at most {EARLY_FRAMES} messages are relayed before");
                reply(socket, &CallFrame::error(message)).await?;
            }
            Some(SendOutcome::OutOfOrder) | None => {}
        }
        Ok(outcome)
    }

    /// Whether the call has been accepted since this socket opened (the
    /// early bound was reached: signaling says, asked at most once per
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
        match SignalingServiceClient::new(self.plane.signaling.clone())
            .get_call(self.call_request())
            .await
        {
            Ok(call) => {
                self.accepted = call.get_ref().status() == CallStatus::Ongoing;
                self.accepted
            }
            Err(status) => {
                tracing::warn!(call_id = %self.call, error = %status, "call state not read");
                false
            }
        }
    }

    fn call_request(&self) -> CallRequest {
        CallRequest {
            user_id: self.user.to_string(),
            call_id: self.call.to_string(),
        }
    }

    /// A text frame from the client.
    pub(crate) async fn on_text(&mut self, socket: &mut WebSocket, raw: &str) -> Step {
        match self.handle(socket, raw).await {
            Ok(()) => Step::Go,
            Err(end) => Step::End(end),
        }
    }

    async fn handle(&mut self, socket: &mut WebSocket, raw: &str) -> Result<(), End> {
        let mut frame = match ClientFrame::parse(raw) {
            Ok(frame) => frame,
            Err(e) => return reply(socket, &CallFrame::error(e.to_string())).await,
        };
        // The message is taken out (a unit variant left behind) so the
        // numbering can borrow the frame's `cid` without a copy.
        let message = std::mem::replace(&mut frame.message, ClientMessage::Ping);
        let numbered = frame.numbered();
        let me = self.user;
        match message {
            ClientMessage::Ping => {
                reply(socket, &CallFrame::Pong).await?;
                ack(socket, numbered).await?;
            }
            ClientMessage::Offer { offer } => {
                self.relay_and_ack(socket, &CallFrame::Offer { offer, from: me }, numbered)
                    .await?;
            }
            ClientMessage::Answer { answer } => {
                self.relay_and_ack(socket, &CallFrame::Answer { answer, from: me }, numbered)
                    .await?;
            }
            ClientMessage::IceCandidate { candidate } => {
                self.relay_and_ack(socket, &CallFrame::IceCandidate { candidate, from: me }, numbered)
                    .await?;
            }
            ClientMessage::ConnectionState { state } => {
                // Recorded by signaling; the peer hears of it either way.
                let report = ConnectionStateReport {
                    user_id: me.to_string(),
                    call_id: self.call.to_string(),
                    state: state.clone(),
                };
                if let Err(status) = SignalingServiceClient::new(self.plane.signaling.clone())
                    .report_connection_state(report)
                    .await
                {
                    tracing::warn!(call_id = %self.call, error = %status, "connection state not recorded");
                }
                let frame = CallFrame::ConnectionState { user_id: me, state };
                self.relay_and_ack(socket, &frame, numbered).await?;
            }
            ClientMessage::ChatMessage { text, timestamp } => {
                let timestamp = timestamp.unwrap_or_else(|| {
                    chrono::Utc::now()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        .into()
                });
                let frame = CallFrame::ChatMessage {
                    from: me,
                    text,
                    timestamp,
                };
                // Both sides, through their mailboxes, so each sees one
                // order; the sender's copy only when the peer's was
                // relayed just now.
                if let Some(SendOutcome::Relayed(_)) = self.relay_and_ack(socket, &frame, numbered).await? {
                    self.relay_to(socket, me, &frame, FromClient::default()).await?;
                }
            }
            ClientMessage::EndCall => {
                match SignalingServiceClient::new(self.plane.signaling.clone())
                    .end(self.call_request())
                    .await
                {
                    Ok(_) => ack(socket, numbered).await?,
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                        reply(socket, &CallFrame::error(status.message())).await?;
                    }
                    Err(status) => {
                        tracing::warn!(call_id = %self.call, error = %status, "end_call failed");
                        reply(socket, &CallFrame::error("could not end the call; try again")).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sends a local answer to the client.
async fn reply(socket: &mut WebSocket, frame: &CallFrame) -> Result<(), End> {
    socket.send_text(&frame.to_text()).await.map_err(|_| End::Gone)
}

/// `{"type":"ack","cseq":n}`: the frame numbered `n` by the client is
/// relayed (or handled) and need not be sent again.
async fn ack(socket: &mut WebSocket, numbered: Option<(&str, u64)>) -> Result<(), End> {
    match numbered {
        Some((_, cseq)) => reply(socket, &CallFrame::Ack { cseq }).await,
        None => Ok(()),
    }
}

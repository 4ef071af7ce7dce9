//! The two WebSockets of the public API, run by the gateway replica that
//! holds them (the wire protocol is [`unilink_protocol`]):
//!
//! * `WS /calls/ws/{user_id}?token=` — presence and call pushes ([`presence`]);
//! * `WS /ws/webrtc/{call_id}?token=` — the signaling of one call ([`call`]).
//!
//! The token is checked at the upgrade (401 without a valid one, 403 when
//! `user_id` is not the token's subject); what signaling refuses (not a
//! participant, call over) is answered by closing with 1008 and the reason.
//!
//! Frames travel between gateways over Redis ([`unilink_relay`]): a call's
//! frames never pass through signaling, which keeps the calls' state and is
//! asked only when a socket joins and when a frame changes state. A
//! signaling replica that dies therefore interrupts no frame. When the
//! gateway itself drains, clients are closed with 1012 and reconnect
//! elsewhere, resuming after the last `seq` they saw.
//!
//! A user holds at most `MAX_SOCKETS_PER_USER` sockets across the fleet
//! ([`cap`]); beyond that the upgrade is refused with 429. A replica holding
//! more than its share of the fleet's sockets asks some to reconnect, with
//! the same 1012 a drain sends ([`rebalance`]).
//!
//! The routes below only decide whether to accept; the accepted socket runs
//! on the bare TCP stream once the 101 is written ([`takeover`], [`socket`]).

mod bucket;
pub mod call;
pub mod cap;
#[cfg(test)]
mod fuzz_tests;
pub mod presence;
pub mod rebalance;
pub mod socket;
pub mod takeover;

use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use unilink_domain::{CallId, UserId};
use unilink_errors::ErrorCode;
use unilink_protocol::CallFrame;

use crate::error::ApiError;
use crate::identity::Authenticated;
use crate::ws::bucket::Admit;
use crate::ws::call::{CallEvent, CallPlane, CallSession, Join, Refused};
use crate::ws::cap::{Lease, SocketCap};
use crate::ws::presence::{PresenceHub, PresenceSession};
use crate::ws::rebalance::{LocalSockets, Registration};
use crate::ws::socket::{Fault, Incoming, WebSocket};
use crate::ws::takeover::Takeover;

/// Text frames larger than this get an `error` frame (the socket stays open).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames larger than this close the socket (protocol limit).
pub(crate) const MAX_WIRE_FRAME_BYTES: usize = 1024 * 1024;
/// How long opening a call socket keeps trying to reach a signaling replica
/// (one that just died may still be in the balancer for a moment).
const JOIN_WINDOW: Duration = Duration::from_secs(5);

/// What the sockets of one HTTP worker use: the call data plane and the
/// presence hub, over the worker's own Redis and gRPC clients.
#[derive(Debug, Clone)]
pub struct Planes {
    pub call: CallPlane,
    pub presence: PresenceHub,
}

/// Cancelled when the gateway begins to shut down; the tracker holds every
/// running socket, so shutdown can wait for their close frames.
#[derive(Debug, Clone, Default)]
pub struct Draining(pub CancellationToken, pub TaskTracker);

/// How the gateway tells a live client from a silent one: every socket is
/// pinged each `ping_every`; one from which nothing at all (a frame, a pong)
/// arrived for `silent_after` is closed. A frozen phone keeps its TCP
/// connection open (its kernel still ACKs), so only this finds it.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub ping_every: Duration,
    pub silent_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            ping_every: Duration::from_secs(20),
            silent_after: Duration::from_secs(45),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Presence,
    Call,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Presence => "presence",
            Kind::Call => "call",
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct PresenceQuery {
    /// `1` (or `true`): this client opens its presence socket again when it
    /// closes, so the gateway may ask it to move (rebalancing). The original
    /// web client does not reconnect its presence socket, so without this a
    /// presence socket is never moved.
    reconnects: Option<String>,
}

/// `WS /calls/ws/{user_id}?token=[&reconnects=1]`.
pub async fn presence(
    req: HttpRequest,
    caller: Authenticated,
    path: web::Path<String>,
    query: web::Query<PresenceQuery>,
    planes: web::Data<Planes>,
    draining: web::Data<Draining>,
) -> Result<HttpResponse, ApiError> {
    let user = UserId::parse(&path).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    if user != caller.0.user_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the token does not belong to this user",
        ));
    }
    let movable = matches!(query.reconnects.as_deref(), Some("1" | "true"));
    let family = caller.0.claims.fid.clone();
    let hub = planes.presence.clone();
    let opening = async move {
        hub.open(user, family).await.map(Session::Presence).map_err(|e| {
            tracing::warn!(user_id = %user, error = %e, "presence socket not opened");
            close_reason(1013, "presence is unavailable; try again")
        })
    };
    accept(&req, user, opening.boxed_local(), Kind::Presence, movable, &draining).await
}

#[derive(Debug, serde::Deserialize)]
pub struct ResumeQuery {
    /// The `seq` of the last relayed frame the client saw (it resumes after it).
    last_seq: Option<u64>,
}

/// `WS /ws/webrtc/{call_id}?token=[&last_seq=]`.
pub async fn signaling(
    req: HttpRequest,
    caller: Authenticated,
    path: web::Path<String>,
    query: web::Query<ResumeQuery>,
    planes: web::Data<Planes>,
    draining: web::Data<Draining>,
) -> Result<HttpResponse, ApiError> {
    let call = CallId::parse(&path).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let join = Join {
        user: caller.0.user_id,
        call,
        family: caller.0.claims.fid.clone(),
        last_seq: query.last_seq,
    };
    let plane = planes.call.clone();
    let opening = async move { join_call(&plane, join).await.map(|s| Session::Call(Box::new(s))) };
    // Call clients (the original one included) reconnect a call socket that closes.
    accept(
        &req,
        caller.0.user_id,
        opening.boxed_local(),
        Kind::Call,
        true,
        &draining,
    )
    .await
}

/// Joins the call, trying again for up to [`JOIN_WINDOW`] while no
/// signaling replica answers; a refusal is final.
async fn join_call(plane: &CallPlane, join: Join) -> Result<CallSession, CloseReason> {
    let connection = uuid::Uuid::new_v4().simple().to_string();
    let deadline = tokio::time::Instant::now() + JOIN_WINDOW;
    let mut wait = Duration::from_millis(50);
    loop {
        match plane.open(join.clone(), connection.clone()).await {
            Ok(session) => return Ok(session),
            Err(Refused::Signaling(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unknown
                        | tonic::Code::Cancelled
                ) && tokio::time::Instant::now() + wait < deadline =>
            {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(Refused::Signaling(status)) => return Err(refusal(&status)),
            Err(Refused::Relay(e)) => {
                tracing::warn!(call_id = %join.call, error = %e, "call socket not opened");
                return Err(close_reason(1013, "the relay is unavailable; try again"));
            }
        }
    }
}

/// A delay in `0..period` that differs from socket to socket (the clock's
/// nanoseconds are as good as a random number here).
fn spread(period: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    period.mul_f64(f64::from(nanos % 1_000_000) / 1_000_000.0)
}

pub(crate) fn close_reason(code: u16, reason: &str) -> CloseReason {
    // A close reason may be at most 123 bytes.
    let mut description: String = String::new();
    for c in reason.chars() {
        if description.len() + c.len_utf8() > 123 {
            break;
        }
        description.push(c);
    }
    CloseReason {
        code: CloseCode::from(code),
        description: Some(description),
    }
}

/// The close a socket signaling refused gets.
fn refusal(status: &tonic::Status) -> CloseReason {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            close_reason(1013, "signaling is unavailable; try again")
        }
        tonic::Code::Internal | tonic::Code::Unknown => close_reason(1011, "internal error"),
        _ => close_reason(1008, status.message()),
    }
}

/// A socket's session, as its kind runs it.
enum Session {
    Presence(PresenceSession),
    Call(Box<CallSession>),
}

/// What woke a session.
enum Event {
    Push(Option<String>),
    Call(CallEvent),
}

/// What a socket does after a frame or an event.
pub(crate) enum Step {
    Go,
    End(End),
}

impl Session {
    fn admit(&mut self) -> Admit {
        match self {
            Session::Presence(s) => s.admit(),
            Session::Call(s) => s.admit(),
        }
    }

    /// Boxed per kind: an idle presence socket holds this future all the
    /// time, and must not carry room for a call socket's (which may read
    /// a page of frames from Redis).
    fn next_event(&mut self) -> futures_util::future::LocalBoxFuture<'_, Event> {
        match self {
            Session::Presence(s) => async move { Event::Push(s.next_push().await) }.boxed_local(),
            Session::Call(s) => async move { Event::Call(s.next_event().await) }.boxed_local(),
        }
    }

    async fn on_event(&mut self, socket: &mut WebSocket, event: Event) -> Step {
        match (self, event) {
            (Session::Presence(s), Event::Push(push)) => s.on_push(socket, push).await,
            (Session::Call(s), Event::Call(event)) => s.on_event(socket, event).await,
            // Never: `next_event` wakes a session with its own kind's event.
            (Session::Presence(_), Event::Call(_)) | (Session::Call(_), Event::Push(_)) => Step::Go,
        }
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Step {
        match self {
            Session::Presence(s) => s.on_text(socket, text).await,
            Session::Call(s) => s.on_text(socket, text).await,
        }
    }

    async fn finish(self, handover: bool) {
        match self {
            Session::Presence(s) => s.finish(handover).await,
            Session::Call(s) => s.finish().await,
        }
    }
}

type Opening = futures_util::future::LocalBoxFuture<'static, Result<Session, CloseReason>>;

/// `movable`: the client reconnects when this socket closes, so
/// rebalancing may ask it to (it is registered in [`LocalSockets`]).
async fn accept(
    req: &HttpRequest,
    user: UserId,
    opening: Opening,
    kind: Kind,
    movable: bool,
    draining: &web::Data<Draining>,
) -> Result<HttpResponse, ApiError> {
    if draining.0.is_cancelled() {
        return Err(ApiError::new(ErrorCode::Unavailable, "server is restarting; reconnect"));
    }
    // Not an upgrade (or not one this connection can be taken over for):
    // refused before anything is opened or counted.
    let mut handshake =
        actix_http::ws::handshake(req.head()).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    if req.extensions().get::<Takeover>().is_none() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "WebSocket upgrades need HTTP/1.1 with Connection: Upgrade",
        ));
    }
    let lease = match req.app_data::<web::Data<SocketCap>>() {
        Some(cap) => Some(cap.acquire(&user.to_string()).await?),
        None => None,
    };
    // The session opens before the upgrade is answered, so a client whose
    // socket is open is already known to the fleet (its peer joining next
    // is announced to it).
    let opened = opening.await;
    let liveness = req
        .app_data::<web::Data<Liveness>>()
        .map(|l| *l.get_ref())
        .unwrap_or_default();
    let mut response = HttpResponse::from(handshake.finish().map_into_boxed_body());
    response.extensions_mut().insert(Accepted {
        kind,
        opened,
        liveness,
        _lease: lease,
        draining: draining.get_ref().clone(),
        local: req.app_data::<web::Data<LocalSockets>>().map(|l| l.get_ref().clone()),
        movable,
    });
    Ok(response)
}

/// A socket the route accepted, run by [`takeover`] once the 101 is out.
pub struct Accepted {
    kind: Kind,
    opened: Result<Session, CloseReason>,
    liveness: Liveness,
    /// Held while the socket lives.
    _lease: Option<Lease>,
    draining: Draining,
    /// Where the socket is counted for rebalancing.
    local: Option<LocalSockets>,
    /// Whether its client reconnects, so rebalancing may move it.
    movable: bool,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Accepted {
    /// Runs the socket as a task of its own, so the HTTP connection's task
    /// (and everything it held for the handshake) ends here; the gateway's
    /// shutdown waits for these tasks through the tracker.
    pub fn spawn(self, socket: WebSocket) {
        let Accepted {
            kind,
            opened,
            liveness,
            _lease,
            draining: Draining(draining, sockets),
            local,
            movable,
        } = self;
        match opened {
            Ok(session) => {
                // Cancelled by the drain, or to move this one socket.
                let leave = draining.child_token();
                let registration = local.map(|l| l.register(kind, movable.then(|| leave.clone())));
                let held = (_lease, registration);
                let pump = run(socket, session, kind, liveness, (draining, leave), held);
                actix_web::rt::spawn(sockets.track_future(pump));
            }
            Err(reason) => {
                actix_web::rt::spawn(sockets.track_future(socket.close(Some(reason))));
            }
        }
    }
}

/// How a socket's pump ended.
pub(crate) enum End {
    /// Close the client socket with this.
    Close(CloseReason),
    /// The client closed (with this reason): answer its close frame.
    Closed(Option<CloseReason>),
    /// The connection is gone.
    Gone,
}

/// Runs one socket: client frames into its session, the session's frames
/// out. Every idle socket holds this future for its whole life, so whatever
/// is large and rare (a Redis or gRPC call) is boxed, in a `let` of its own:
/// `Box::pin(f(..))` inside an awaited expression still reserves room for
/// the unboxed future here (rustc keeps a temporary until the end of its
/// statement, awaits included).
///
/// Backpressure: a frame beyond the socket's rate is held until its time
/// comes and the socket is not read meanwhile, so the client's TCP window
/// closes, while frames for the client keep flowing.
async fn run(
    mut socket: WebSocket,
    mut session: Session,
    kind: Kind,
    liveness: Liveness,
    (draining, leave): (CancellationToken, CancellationToken),
    _held: (Option<Lease>, Option<Registration>),
) {
    metrics::gauge!("websocket_connections", "kind" => kind.label()).increment(1.0);
    // A client frame waiting for its turn, and when it comes.
    let mut held: Option<String> = None;
    let mut held_until = tokio::time::Instant::now();
    let mut last_heard = tokio::time::Instant::now();
    // Sockets opened together are not pinged together.
    let first_ping = tokio::time::Instant::now() + spread(liveness.ping_every);
    let mut pings = tokio::time::interval_at(first_ping, liveness.ping_every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handover = false;
    let end = loop {
        let text = tokio::select! {
            () = tokio::time::sleep_until(held_until), if held.is_some() => held.take(),
            message = socket.next(), if held.is_none() => {
                last_heard = tokio::time::Instant::now();
                match message {
                    Ok(Incoming::Text(text)) => {
                        if text.len() > MAX_FRAME_BYTES {
                            let too_large = CallFrame::error("message too large (at most 64 KiB)").to_text();
                            if socket.send_text(&too_large).await.is_err() {
                                break End::Gone;
                            }
                            continue;
                        }
                        match session.admit() {
                            Admit::Now => Some(text),
                            Admit::At(at) => {
                                held = Some(text);
                                held_until = at;
                                None
                            }
                            Admit::Flood => break End::Close(close_reason(1008, "too many messages")),
                        }
                    }
                    Ok(Incoming::Ping(bytes)) => {
                        if socket.pong(&bytes).await.is_err() {
                            break End::Gone;
                        }
                        None
                    }
                    Ok(Incoming::Binary) => {
                        let refused = CallFrame::error("binary frames are not supported").to_text();
                        if socket.send_text(&refused).await.is_err() {
                            break End::Gone;
                        }
                        None
                    }
                    Ok(Incoming::Pong) => None,
                    Ok(Incoming::Close(theirs)) => break End::Closed(theirs),
                    Err(Fault::Gone) => break End::Gone,
                    Err(Fault::Protocol(reason)) => break End::Close(reason),
                }
            },
            _ = pings.tick() => {
                // A held frame means the client is talking faster than it may.
                if held.is_none() && last_heard.elapsed() >= liveness.silent_after {
                    metrics::counter!("websocket_silent_closed_total", "kind" => kind.label()).increment(1);
                    break End::Close(close_reason(1001, "no answer to pings"));
                }
                if socket.ping().await.is_err() {
                    break End::Gone;
                }
                None
            }
            event = session.next_event() => {
                let handling = session.on_event(&mut socket, event).boxed_local();
                if let Step::End(end) = handling.await {
                    break end;
                }
                None
            },
            () = leave.cancelled() => {
                // The drain, or this replica holds more than its share.
                handover = true;
                let reason = if draining.is_cancelled() {
                    "server restarting; reconnect"
                } else {
                    "rebalancing; reconnect"
                };
                break End::Close(close_reason(1012, reason));
            }
        };
        if let Some(text) = text {
            let handling = session.on_text(&mut socket, &text).boxed_local();
            if let Step::End(end) = handling.await {
                break end;
            }
        }
    };
    let finishing = session.finish(handover).boxed_local();
    finishing.await;
    metrics::gauge!("websocket_connections", "kind" => kind.label()).decrement(1.0);
    let closing = match end {
        End::Close(reason) => socket.close(Some(reason)).boxed_local(),
        End::Closed(theirs) => socket.close(socket::echo(theirs)).boxed_local(),
        End::Gone => return,
    };
    closing.await;
}

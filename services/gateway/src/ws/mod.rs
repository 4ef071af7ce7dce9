//! The two WebSockets of the public API, each carried as one gRPC
//! bidirectional stream (`SignalingService.Session`) to a signaling replica
//! chosen by the client-side load balancer:
//!
//! * `WS /calls/ws/{user_id}?token=` — presence and call pushes;
//! * `WS /ws/webrtc/{call_id}?token=` — the signaling of one call.
//!
//! The token is checked at the upgrade (401 without a valid one, 403 when
//! `user_id` is not the token's subject); what signaling refuses (not a
//! participant, call over) is answered by closing with 1008 and the reason.
//!
//! The bridge remembers the sequence number of the last relayed frame it
//! handed to the client. When the signaling replica goes away (its stream
//! breaks, or it drains and asks for 1012), the bridge opens a new stream —
//! on another replica — resuming after that number, so the client sees
//! every frame once and in order and keeps its socket. When the gateway
//! itself drains, clients are closed with 1012 and reconnect elsewhere.
//!
//! A user holds at most `MAX_SOCKETS_PER_USER` sockets across the fleet
//! ([`cap`]); beyond that the upgrade is refused with 429. A replica holding
//! more than its share of the fleet's sockets asks some to reconnect, with
//! the same 1012 a drain sends ([`rebalance`]).
//!
//! The routes below only decide whether to accept; the accepted socket runs
//! on the bare TCP stream once the 101 is written ([`takeover`], [`socket`]).

pub mod cap;
#[cfg(test)]
mod fuzz_tests;
pub mod rebalance;
pub mod socket;
pub mod takeover;

use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_channel::mpsc;
use futures_util::FutureExt;
use futures_util::SinkExt;
use futures_util::future::poll_fn;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use unilink_domain::{CallId, UserId};
use unilink_errors::ErrorCode;
use unilink_proto::signaling::signaling_service_client::SignalingServiceClient;
use unilink_proto::signaling::{ClientFrame, Handover, Open, ServerFrame, SocketKind, client_frame, server_frame};

use crate::clients::Upstreams;
use crate::error::ApiError;
use crate::identity::Authenticated;
use crate::ws::cap::{Lease, SocketCap};
use crate::ws::rebalance::{LocalSockets, Registration};
use crate::ws::socket::{Fault, Incoming, WebSocket};
use crate::ws::takeover::Takeover;

/// Text frames larger than this get an `error` frame (the socket stays open).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames larger than this close the socket (protocol limit).
pub(crate) const MAX_WIRE_FRAME_BYTES: usize = 1024 * 1024;
/// How long the bridge keeps trying to reach another signaling replica.
const RESUME_WINDOW: Duration = Duration::from_secs(5);
/// How long a draining gateway waits for signaling to take a presence handover.
const HANDOVER_WAIT: Duration = Duration::from_millis(500);
/// Client frames queued towards signaling per socket.
const UPSTREAM_QUEUE: usize = 64;

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
    upstreams: web::Data<Upstreams>,
    draining: web::Data<Draining>,
) -> Result<HttpResponse, ApiError> {
    let user = UserId::parse(&path).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    if user != caller.0.user_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the token does not belong to this user",
        ));
    }
    let open = Open {
        kind: SocketKind::Presence as i32,
        user_id: user.to_string(),
        family_id: caller.0.claims.fid.clone(),
        ..Open::default()
    };
    let movable = matches!(query.reconnects.as_deref(), Some("1" | "true"));
    bridge(&req, open, Kind::Presence, movable, &upstreams, &draining).await
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
    upstreams: web::Data<Upstreams>,
    draining: web::Data<Draining>,
) -> Result<HttpResponse, ApiError> {
    let call = CallId::parse(&path).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let open = Open {
        kind: SocketKind::Call as i32,
        user_id: caller.0.user_id.to_string(),
        call_id: call.to_string(),
        resume_after: query.last_seq.unwrap_or(0),
        resume: query.last_seq.is_some(),
        connection_id: String::new(),
        family_id: caller.0.claims.fid.clone(),
    };
    // Call clients (the original one included) reconnect a call socket that closes.
    bridge(&req, open, Kind::Call, true, &upstreams, &draining).await
}

/// A live stream to a signaling replica.
struct Upstream {
    /// Client text frames, or `None` for the handover before a drain; the
    /// stream wraps them (a channel of `Option<String>`, as small as one of
    /// `String`s, keeps the per-socket buffer small).
    tx: mpsc::Sender<Option<String>>,
    rx: tonic::Streaming<ServerFrame>,
}

/// Opens a `Session` stream with `open` as its first message.
async fn connect(upstreams: &Upstreams, open: Open) -> Result<Upstream, tonic::Status> {
    use tokio_stream::StreamExt;
    let (tx, rx) = mpsc::channel::<Option<String>>(UPSTREAM_QUEUE);
    let first = ClientFrame {
        kind: Some(client_frame::Kind::Open(open)),
    };
    let frames = tokio_stream::once(first).chain(rx.map(|text| ClientFrame {
        kind: Some(match text {
            Some(text) => client_frame::Kind::Text(text),
            None => client_frame::Kind::Handover(Handover {}),
        }),
    }));
    let response = SignalingServiceClient::new(upstreams.signaling.clone())
        .max_decoding_message_size(4 * MAX_WIRE_FRAME_BYTES)
        .session(frames)
        .await?;
    Ok(Upstream {
        tx,
        rx: response.into_inner(),
    })
}

/// Tells signaling that this presence socket's client is about to be asked
/// to reconnect elsewhere, so the user stays online in between, and waits
/// (briefly) until signaling has it and ends the stream: dropping the stream
/// at once would cancel it before the message goes out.
async fn handover(upstream: &mut Upstream) {
    if upstream.tx.send(None).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(HANDOVER_WAIT, async {
        while let Ok(Some(_)) = upstream.rx.message().await {}
    })
    .await;
}

/// Keeps trying to open the stream again on a live replica, for up to
/// [`RESUME_WINDOW`]; refusals (the call ended meanwhile) end the attempt.
async fn reconnect(upstreams: &Upstreams, open: &Open) -> Result<Upstream, tonic::Status> {
    let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
    let mut wait = Duration::from_millis(50);
    loop {
        match connect(upstreams, open.clone()).await {
            Ok(upstream) => return Ok(upstream),
            Err(status)
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
            Err(status) => return Err(status),
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

fn close_reason(code: u16, reason: &str) -> CloseReason {
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

/// The close a socket gets when its stream could not be resumed: a refusal
/// (the call ended meanwhile) is final; otherwise the client should
/// reconnect, through the load balancer, to another gateway.
fn resume_failed(status: &tonic::Status) -> CloseReason {
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::NotFound | tonic::Code::FailedPrecondition => {
            close_reason(1008, status.message())
        }
        _ => close_reason(1012, "signaling moved; reconnect"),
    }
}

/// The close a refused stream gets.
fn refusal(status: &tonic::Status) -> CloseReason {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            close_reason(1013, "signaling is unavailable; try again")
        }
        tonic::Code::Internal | tonic::Code::Unknown => close_reason(1011, "internal error"),
        _ => close_reason(1008, status.message()),
    }
}

/// `movable`: the client reconnects when this socket closes, so
/// rebalancing may ask it to (it is registered in [`LocalSockets`]).
async fn bridge(
    req: &HttpRequest,
    open: Open,
    kind: Kind,
    movable: bool,
    upstreams: &web::Data<Upstreams>,
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
        Some(cap) => Some(cap.acquire(&open.user_id).await?),
        None => None,
    };
    // The stream is opened before the upgrade is answered, so a client whose
    // socket is open is already known to the fleet (its peer joining next is
    // announced to it).
    let upstreams = upstreams.clone();
    // Retried like a resume: a replica that just died may still be in the
    // balancer for a moment.
    let opened = reconnect(&upstreams, &open).await;
    let liveness = req
        .app_data::<web::Data<Liveness>>()
        .map(|l| *l.get_ref())
        .unwrap_or_default();
    let mut response = HttpResponse::from(handshake.finish().map_into_boxed_body());
    response.extensions_mut().insert(Accepted {
        open,
        kind,
        opened,
        liveness,
        _lease: lease,
        upstreams,
        draining: draining.get_ref().clone(),
        local: req.app_data::<web::Data<LocalSockets>>().map(|l| l.get_ref().clone()),
        movable,
    });
    Ok(response)
}

/// A socket the route accepted, run by [`takeover`] once the 101 is out.
pub struct Accepted {
    open: Open,
    kind: Kind,
    opened: Result<Upstream, tonic::Status>,
    liveness: Liveness,
    /// Held while the socket lives.
    _lease: Option<Lease>,
    upstreams: web::Data<Upstreams>,
    draining: Draining,
    /// Where the socket is counted for rebalancing.
    local: Option<LocalSockets>,
    /// Whether its client reconnects, so rebalancing may move it.
    movable: bool,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("open", &self.open)
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
            open,
            kind,
            opened,
            liveness,
            _lease,
            upstreams,
            draining: Draining(draining, sockets),
            local,
            movable,
        } = self;
        match opened {
            Ok(upstream) => {
                // Cancelled by the drain, or to move this one socket.
                let leave = draining.child_token();
                let registration = local.map(|l| l.register(kind, movable.then(|| leave.clone())));
                let held = (_lease, registration);
                let pump = run(
                    socket,
                    upstream,
                    open,
                    kind,
                    liveness,
                    upstreams,
                    (draining, leave),
                    held,
                );
                actix_web::rt::spawn(sockets.track_future(pump));
            }
            Err(status) => {
                actix_web::rt::spawn(sockets.track_future(socket.close(Some(refusal(&status)))));
            }
        }
    }
}

/// How a socket's pump ended.
enum End {
    /// Close the client socket with this.
    Close(CloseReason),
    /// The client closed (with this reason): answer its close frame.
    Closed(Option<CloseReason>),
    /// The connection is gone.
    Gone,
}

/// Runs one socket: client frames up the stream, the stream's frames down.
/// Every idle socket holds this future for its whole life, so whatever is
/// large and rare (opening a stream, a handover, lingering at close) is
/// boxed, in a `let` of its own: `Box::pin(f(..))` inside an awaited
/// expression still reserves room for the unboxed future here (rustc keeps
/// a temporary until the end of its statement, awaits included).
///
/// Backpressure: when the queue towards signaling is full (signaling slows
/// a client sending faster than its frame rate), the frame read last is
/// held and the socket is not read again until the queue takes it, so the
/// client's TCP window closes, while the stream's frames keep flowing down.
#[allow(clippy::too_many_arguments)]
async fn run(
    mut socket: WebSocket,
    mut upstream: Upstream,
    mut open: Open,
    kind: Kind,
    liveness: Liveness,
    upstreams: web::Data<Upstreams>,
    (draining, leave): (CancellationToken, CancellationToken),
    _held: (Option<Lease>, Option<Registration>),
) {
    metrics::gauge!("websocket_connections", "kind" => kind.label()).increment(1.0);
    let mut last_seq = open.resume_after;
    // A client frame waiting for room in the queue towards signaling.
    let mut held: Option<String> = None;
    let mut last_heard = tokio::time::Instant::now();
    // Sockets opened together are not pinged together.
    let first_ping = tokio::time::Instant::now() + spread(liveness.ping_every);
    let mut pings = tokio::time::interval_at(first_ping, liveness.ping_every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            ready = poll_fn(|cx| upstream.tx.poll_ready(cx)), if held.is_some() && !upstream.tx.is_closed() => {
                if ready.is_ok() && let Some(text) = held.take() {
                    // Cannot fail: the queue has room, and this task is its only sender.
                    let _ = upstream.tx.start_send(Some(text));
                }
            }
            message = socket.next(), if held.is_none() => {
                last_heard = tokio::time::Instant::now();
                match message {
                    Ok(Incoming::Text(text)) => {
                        if text.len() > MAX_FRAME_BYTES {
                            if socket.send_text(r#"{"type":"error","message":"message too large (at most 64 KiB)"}"#).await.is_err() {
                                break End::Gone;
                            }
                            continue;
                        }
                        match upstream.tx.try_send(Some(text)) {
                            Ok(()) => {}
                            // Full (slowed down), or the stream is gone: the
                            // frame waits for the queue, or for the stream
                            // that the next read of `upstream.rx` opens.
                            Err(e) => held = e.into_inner(),
                        }
                    }
                    Ok(Incoming::Ping(bytes)) => {
                        if socket.pong(&bytes).await.is_err() {
                            break End::Gone;
                        }
                    }
                    Ok(Incoming::Binary) => {
                        if socket.send_text(r#"{"type":"error","message":"binary frames are not supported"}"#).await.is_err() {
                            break End::Gone;
                        }
                    }
                    Ok(Incoming::Pong) => {}
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
            }
            frame = upstream.rx.message() => {
                let resume = match frame {
                    Ok(Some(ServerFrame { kind: Some(server_frame::Kind::Text(text)), seq })) => {
                        if seq > 0 {
                            last_seq = seq;
                        }
                        if socket.send_text(&text).await.is_err() {
                            break End::Gone;
                        }
                        false
                    }
                    Ok(Some(ServerFrame { kind: Some(server_frame::Kind::Close(close)), .. })) => {
                        // 1012: that replica is draining; anything else is final.
                        if close.code != 1012 || draining.is_cancelled() {
                            break End::Close(close_reason(close.code as u16, &close.reason));
                        }
                        true
                    }
                    Ok(Some(_)) => false,
                    Ok(None) | Err(_) => true,
                };
                if resume {
                    metrics::counter!("signaling_reconnects_total", "kind" => kind.label()).increment(1);
                    // After the last frame this socket passed on; a socket
                    // that has passed none and was opened without `last_seq`
                    // starts where the fleet last delivered, as at first.
                    open.resume = open.resume || last_seq > 0;
                    open.resume_after = last_seq;
                    // Boxed: a stream being opened (a gRPC call in flight) is
                    // many times larger than the rest of this task.
                    let reconnecting = reconnect(&upstreams, &open).boxed_local();
                    match reconnecting.await {
                        Ok(fresh) => upstream = fresh,
                        Err(status) => break End::Close(resume_failed(&status)),
                    }
                }
            },
            () = leave.cancelled() => {
                if matches!(kind, Kind::Presence) {
                    let handing_over = handover(&mut upstream).boxed_local();
                    handing_over.await;
                }
                // The drain, or this replica holds more than its share.
                let reason = if draining.is_cancelled() {
                    "server restarting; reconnect"
                } else {
                    "rebalancing; reconnect"
                };
                break End::Close(close_reason(1012, reason));
            }
        }
    };
    // Dropping the upstream ends the stream: signaling cleans up.
    drop(upstream);
    metrics::gauge!("websocket_connections", "kind" => kind.label()).decrement(1.0);
    let closing = match end {
        End::Close(reason) => socket.close(Some(reason)).boxed_local(),
        End::Closed(theirs) => socket.close(socket::echo(theirs)).boxed_local(),
        End::Gone => return,
    };
    closing.await;
}

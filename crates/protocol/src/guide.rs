//! # The WebSocket protocol, for client authors
//!
//! UniLink has two WebSockets, both served by the gateway (any replica) and
//! both carrying JSON in text frames. This page is the contract a client
//! needs: the URLs and how the token travels, every frame in both
//! directions with an example, the numbering (`seq`, `cid`/`cseq`, `ack`),
//! resuming after a reconnect, the frame rate, and every close code. The
//! types it names are the ones the gateway parses and writes, so the
//! examples here are what goes over the wire.
//!
//! | socket | URL | for |
//! |---|---|---|
//! | presence | `GET /calls/ws/{user_id}?token=<jwt>[&reconnects=1]` | being online; call pushes ([`Push`]) |
//! | call | `GET /ws/webrtc/{call_id}?token=<jwt>[&last_seq=<n>]` | the signaling of one call: [`ClientFrame`] up, [`CallFrame`] down |
//!
//! ## Opening a socket: URL, token, refusals
//!
//! Browsers cannot set headers on a WebSocket, so the access token (the JWT
//! from `POST /auth/login/verify-otp` or `/auth/refresh`) goes in the query:
//! `?token=<jwt>` or `?token=Bearer%20<jwt>`. An `Authorization: Bearer
//! <jwt>` header works too and wins when both are present. Only upgrade
//! requests may carry a token in the URL. The token is checked once, at the
//! upgrade; a token that expires later does not cut an open socket (a call
//! must not drop), but every reconnect needs a valid one.
//!
//! The upgrade is an ordinary request to the gateway (same rate limit,
//! CORS, metrics) and is answered before any frame:
//!
//! | answer | when |
//! |---|---|
//! | `101` | accepted: frames may flow |
//! | `400` | `{user_id}` or `{call_id}` is not a UUID |
//! | `401` | no token, or a token that is invalid, expired, revoked (logout, deactivation, deletion) |
//! | `403` | presence: `{user_id}` is not the token's user |
//! | `429` | the user already holds `MAX_SOCKETS_PER_USER` sockets (both kinds, fleet-wide; default 10), or the per-user request rate limit |
//! | `503` | this replica holds `MAX_SOCKETS` (default 50,000): reconnect, the balancer picks another replica |
//!
//! A call socket is then joined: signaling is asked once whether this user
//! may join this call now (a participant, the call `pending` or
//! `ongoing`). A refusal closes the accepted socket at once with 1008 and
//! signaling's reason (`you are not a participant of this call`, `call not
//! found`, `call is completed`, …); no signaling replica answering within 5 s
//! closes it with 1013 (try again).
//!
//! Both sockets: frames are text, JSON, at most 64 KiB (a larger text frame
//! gets an `error` frame and the socket stays open; a message over 1 MiB
//! closes it with 1009); a binary frame gets an `error` frame ("binary
//! frames are not supported"). The gateway sends a WebSocket ping every
//! `WS_PING_INTERVAL_SECONDS` (20 s); any frame or pong from the client
//! counts as a sign of life, and a socket silent for
//! `WS_IDLE_TIMEOUT_SECONDS` (45 s) is closed with 1001. Browsers answer
//! pings by themselves.
//!
//! ## The presence socket
//!
//! The user is online while one of their presence sockets is open on any
//! gateway (the gateway renews presence in Redis for all its sockets in one
//! batch every 10 s; a gateway that dies lets its users expire within 30 s).
//! `reconnects=1` (or `true`) says this client opens its presence socket
//! again when it closes, so a busy gateway may ask it to move (1012); the
//! original web client does not reconnect its presence socket, so without
//! it a presence socket is never moved.
//!
//! **Client → server** ([`PresenceFrame`]): a keep-alive in one of two
//! forms; anything else is ignored.
//!
//! | client sends | server answers |
//! |---|---|
//! | `ping` (plain text) | `pong` (plain text) |
//! | `{"type":"ping"}` | `{"type":"pong"}` |
//!
//! **Server → client** ([`Push`]): what happened to the user's calls, sent
//! by the notification service on the user's channel (`push:<user>`) and
//! written to every presence socket of the user as it is. The `call` object
//! is a [`CallView`], the REST API's call object.
//!
//! ```json
//! {"type": "incoming_call", "call_id": "…", "caller_id": "…", "caller_username": "ada",
//!  "call": {"id": "…", "initiator_id": "…", "receiver_id": "…",
//!           "initiator_username": "ada", "receiver_username": "bob",
//!           "status": "pending", "call_token": "…",
//!           "created_at": "2026-12-03T12:00:00Z", "started_at": "2026-12-03T12:00:00Z",
//!           "answered_at": null, "ended_at": null, "duration_seconds": 0}}
//! {"type": "call_accepted", "call_id": "…", "user_id": "…", "reason": null, "call": {…}}
//! {"type": "call_rejected", "call_id": "…", "user_id": "…", "reason": null, "call": {…}}
//! {"type": "call_missed",   "call_id": "…", "user_id": null, "reason": "ring_timeout", "call": {…}}
//! {"type": "call_ended",    "call_id": "…", "user_id": null, "reason": "max_duration", "call": {…}}
//! ```
//!
//! `incoming_call` goes to the receiver; the others ([`CallChange`]) to the
//! participant who did not make the change: `user_id` is who made it,
//! `null` with a `reason` when the system did (`ring_timeout`,
//! `max_duration`, an abandoned or closed account's call, …). Pushes are
//! not numbered and not replayed: a client that was away asks
//! `GET /calls/pending` and `GET /calls/active`.
//!
//! ## The call socket
//!
//! Each participant of a pending or ongoing call opens one; the two may sit
//! on different gateway replicas. Frames never pass through signaling: the
//! gateway holding the sender's socket checks each frame
//! ([`ClientFrame::parse`]) and appends it to the peer's mailbox in Redis;
//! the gateway holding the peer's socket delivers it. Only `end_call` and
//! `connection_state` also go to signaling, which keeps the call's state.
//!
//! ### Client → server
//!
//! A [`ClientMessage`] by its `type`, optionally numbered (`cid`, `cseq`:
//! see [acks](#numbering-your-frames-cid-cseq-and-ack)). Unknown fields are
//! ignored and `null` counts as absent.
//!
//! | `type` | fields | what the server does |
//! |---|---|---|
//! | `ping` | – | answers `pong` |
//! | `offer` | `offer`: the browser's `RTCSessionDescription`, as it is | relays `offer` to the peer |
//! | `answer` | `answer` | relays `answer` |
//! | `ice_candidate` | `candidate` | relays `ice_candidate` |
//! | `connection_state` | `state`: the browser's `RTCPeerConnection.connectionState` (`connected`, `failed`, …; any string, cut to 32 characters) | records it in signaling and relays `connection_state` |
//! | `chat_message` | `text` (≤ [`MAX_CHAT_CHARS`] characters), optional `timestamp` (the server's time, RFC 3339, when absent) | relays `chat_message` to both participants, through their mailboxes, so both see one order |
//! | `end_call` | – | asks signaling to end the call (the caller cancels a ringing call, the receiver rejects it); both sockets then get `call_ended` |
//!
//! ```json
//! {"type": "offer", "offer": {"type": "offer", "sdp": "v=0…"}, "cid": "tab-7f3a", "cseq": 1}
//! {"type": "ice_candidate", "candidate": {"candidate": "candidate:1 1 udp …", "sdpMid": "0", "sdpMLineIndex": 0}}
//! {"type": "connection_state", "state": "connected"}
//! {"type": "chat_message", "text": "can you hear me?"}
//! {"type": "end_call"}
//! ```
//!
//! An `offer`, `answer` or `candidate` over [`MAX_SIGNAL_BYTES`] (16 KiB as
//! JSON), a chat text over 4,000 characters, malformed JSON, a missing or
//! unknown `type` and a missing payload are refused with an `error` frame
//! whose `message` is the [`FrameError`] text; nothing is relayed and the
//! socket stays open.
//!
//! ```
//! use unilink_protocol::{ClientFrame, ClientMessage};
//!
//! let frame = ClientFrame::parse(r#"{"type":"chat_message","text":"hi","cid":"tab-7f3a","cseq":4}"#).unwrap();
//! assert!(matches!(frame.message, ClientMessage::ChatMessage { .. }));
//! assert_eq!(frame.numbered(), Some(("tab-7f3a", 4)));
//! let refused = ClientFrame::parse(r#"{"type":"offer"}"#).unwrap_err();
//! assert_eq!(refused.to_string(), r#"offer needs a "offer" field"#);
//! ```
//!
//! ### Server → client
//!
//! A [`CallFrame`] by its `type`. Frames that came through the relay carry
//! `"seq"` as their first field ([`Sequenced`]); the gateway's own answers
//! (`pong`, `ack`, `error`) and `user_disconnected` do not.
//!
//! | `type` | fields | numbered | meaning |
//! |---|---|---|---|
//! | `pong` | – | no | answer to `ping` |
//! | `ack` | `cseq` | no | your frame `cseq` is relayed (or handled); do not send it again |
//! | `error` | `message` | no | your last frame was refused (see above), could not be relayed now ("message not delivered; try again"), or came too early (below) |
//! | `connection_ready` | `user_id`, `message` | yes | the peer (`user_id`) joined the call's signaling; sent to the participant already there, not again after a resume |
//! | `offer`, `answer`, `ice_candidate` | the payload, `from` | yes | the peer's frame, payload as the peer sent it |
//! | `connection_state` | `user_id`, `state` | yes | the peer's WebRTC state |
//! | `chat_message` | `from`, `text`, `timestamp` | yes | a chat line; your own come back too, in the one order |
//! | `user_disconnected` | `user_id` | no | the peer's socket has been gone for 5 s (a quicker reconnect goes unnoticed) |
//! | `call_ended` | `user_id` (who ended it, `null`: the system), `status`, `message` | yes | the call is over; the socket closes with 1000 right after |
//!
//! ```json
//! {"seq": 1, "type": "connection_ready", "user_id": "…", "message": "peer connected"}
//! {"seq": 2, "type": "offer", "offer": {"type": "offer", "sdp": "v=0…"}, "from": "…"}
//! {"type": "ack", "cseq": 1}
//! {"seq": 9, "type": "chat_message", "from": "…", "text": "can you hear me?", "timestamp": "2026-12-03T12:00:05.120Z"}
//! {"type": "error", "message": "chat message too long (at most 4000 characters)"}
//! {"type": "user_disconnected", "user_id": "…"}
//! {"seq": 31, "type": "call_ended", "user_id": "…", "status": "completed", "message": "…"}
//! ```
//!
//! ```
//! use unilink_protocol::{CallFrame, Sequenced};
//!
//! assert_eq!(CallFrame::Ack { cseq: 3 }.to_text(), r#"{"type":"ack","cseq":3}"#);
//! let relayed: Sequenced<CallFrame> =
//!     serde_json::from_str(r#"{"seq":31,"type":"call_ended","user_id":null,"status":"missed","message":"no answer"}"#)
//!         .unwrap();
//! assert_eq!(relayed.seq, 31);
//! assert!(matches!(relayed.frame, CallFrame::CallEnded { user_id: None, .. }));
//! ```
//!
//! **Before the call is accepted** only a participant's first 64 relayed
//! frames (an offer and its ICE candidates, with room to spare) reach the
//! other's mailbox, counted per call in Redis so a new socket does not
//! start again. Later ones get an `error` ("the call has not been accepted
//! yet: at most 64 messages are relayed before") and no `ack`; a numbering
//! client sends them again once the call is accepted and they are relayed
//! then.
//!
//! ## Sequence numbers: `seq`
//!
//! Each participant of a call has a mailbox in Redis: a counter, a buffer of
//! the last frames (at most 4,096 frames and 4 MiB, the oldest dropped
//! first) and a channel. One script per frame takes the next number, stores
//! the frame and publishes it, so `seq` starts at 1 per (call, recipient),
//! grows by one per frame, and publication order is `seq` order. The
//! gateway holding the socket delivers each `seq` exactly once and in
//! order: it drops what it already delivered and fetches gaps (a Redis
//! reconnect, a slow subscriber) from the buffer. A client keeps the
//! highest `seq` it has seen; it needs it to [resume](#resuming-after-a-reconnect-last_seq).
//!
//! ## Numbering your frames: `cid`, `cseq` and `ack`
//!
//! Opt-in; clients that ignore it work as before. A client that must not
//! lose its own frames over a reconnect numbers them: `cid` is an id it
//! picks per page load (1–64 characters), `cseq` counts its frames within
//! that `cid` from 1. Both must be present (and `cseq` > 0), or the frame
//! counts as unnumbered. The server answers `{"type":"ack","cseq":n}` once
//! frame `n` is relayed (for `ping` and `end_call`: handled). The relay's
//! script remembers the last `cseq` per (call, recipient, sender, `cid`)
//! atomically with the relay:
//!
//! * a repeat (`cseq` ≤ the last one relayed) is acknowledged again and
//!   not relayed twice;
//! * a frame after a missing one (`cseq` > last + 1) is neither relayed nor
//!   acknowledged: the client's resend fills the gap first.
//!
//! So the client keeps every unacknowledged frame and sends them again, in
//! order, after a reconnect or after a second without their `ack`.
//!
//! ## Resuming after a reconnect: `last_seq`
//!
//! A call socket that closes with 1012, 1013, 1011 or without a close frame
//! (1006) is opened again by the client, with `&last_seq=<n>`, the highest
//! `seq` it saw (`last_seq=0`: nothing yet). The gateway then sends every
//! buffered frame after `n`, in order, then the live ones; the buffer is
//! read 256 frames at a time, the next page once the socket has taken the
//! last. Without `last_seq` the socket starts after what the fleet last
//! delivered to this user. A `last_seq` older than the oldest buffered frame
//! gets that frame and everything after it: `seq` jumps, the frames between
//! are gone. Mailboxes live an hour after their last frame, and two minutes
//! after the call closed (enough to read `call_ended` after a reconnect).
//!
//! A resuming socket is not announced to the peer again (no
//! `connection_ready`), and the peer hears `user_disconnected` only if the
//! socket stayed away 5 s. A signaling replica that dies or drains changes
//! nothing for open sockets: frames do not pass through it.
//!
//! ## Frame rate
//!
//! Each socket has a token bucket: a call socket `SIGNALING_FRAME_RATE`
//! frames per second (default 50), a presence socket 10; bursts of four
//! seconds' worth pass at once (the ICE candidates after an offer). A
//! faster client is slowed, never answered by dropping frames: the server
//! stops reading its socket until the bucket refills (frames *to* the
//! client keep flowing), so TCP pushes back on the client. Only a client
//! that keeps the bucket empty for 10 s is closed with 1008 "too many
//! messages".
//!
//! ## Close codes
//!
//! | code | reason (text sent) | when | reconnect? |
//! |---|---|---|---|
//! | 1000 | `call ended` | after `call_ended` (call socket) | no |
//! | 1001 | `no answer to pings` | silent for `WS_IDLE_TIMEOUT_SECONDS`; the user goes offline, the peer is told `user_disconnected` | yes, if the client is still there |
//! | 1002 | `malformed frame`, `unknown opcode`, … | the client broke RFC 6455 framing | fix the client |
//! | 1007 | `text frame is not valid UTF-8`, … | invalid UTF-8 in a text frame or a close reason | fix the client |
//! | 1008 | `logged out` | a full logout of this session (`POST /auth/logout` with its refresh token) | no |
//! | 1008 | `session revoked` | this session's refresh token was replayed: the whole session is revoked | no |
//! | 1008 | `account closed` | the account was deactivated or deleted | no |
//! | 1008 | `too many messages` | the frame bucket stayed empty for 10 s | no |
//! | 1008 | signaling's reason (`you are not a participant of this call`, `call is completed`, …) | a call socket refused at the join | no |
//! | 1009 | `message too large` | a message over 1 MiB | fix the client |
//! | 1011 | `internal error`, `relay unavailable; reconnect` | the join failed inside the fleet, or the socket's Redis relay failed | yes, with `last_seq` |
//! | 1012 | `server restarting; reconnect` | the gateway drains (SIGTERM, a rolling deploy) | yes, at once, with `last_seq` |
//! | 1012 | `rebalancing; reconnect` | this gateway holds more than its share of the fleet's sockets (`WS_REBALANCE_*`); only call sockets and presence sockets opened with `reconnects=1` | yes, at once, with `last_seq` |
//! | 1013 | `presence is unavailable; try again`, `the relay is unavailable; try again`, `signaling is unavailable; try again` | Redis or signaling could not be reached when the socket opened | yes, after a short backoff |
//!
//! A close the client starts is answered with the same code. The 1008
//! closes of a session (`logged out`, `session revoked`, `account closed`)
//! reach every socket of that session (or account) on every gateway at
//! once; other sessions of the same user stay open.
//!
//! ## Between gateways (not seen by clients)
//!
//! A relayed frame travels over Redis as a [`Relayed`] message,
//! `2|<seq>|<envelope JSON>`: the sequence number is the relay script's,
//! the [`Envelope`] (sender, send time, trace context, the typed frame) the
//! sender's; the recipient's gateway writes it to the client as
//! [`Relayed::client_text`]. The earlier `1|…` format is still read, so a
//! rolling deploy loses no buffered frame. A user's channel carries the
//! pushes and [`Control`] messages, told apart by their shape:
//! `{"control":"close","code":1008,"reason":"logged out","family":"<fid>"}`
//! closes the user's sockets of that session (all of them without
//! `family`).
//!
//! [`ClientFrame`]: crate::ClientFrame
//! [`ClientFrame::parse`]: crate::ClientFrame::parse
//! [`ClientMessage`]: crate::ClientMessage
//! [`FrameError`]: crate::FrameError
//! [`PresenceFrame`]: crate::PresenceFrame
//! [`MAX_SIGNAL_BYTES`]: crate::MAX_SIGNAL_BYTES
//! [`MAX_CHAT_CHARS`]: crate::MAX_CHAT_CHARS
//! [`CallFrame`]: crate::CallFrame
//! [`Sequenced`]: crate::Sequenced
//! [`Push`]: crate::Push
//! [`CallView`]: crate::CallView
//! [`CallChange`]: crate::CallChange
//! [`Control`]: crate::Control
//! [`Relayed`]: crate::Relayed
//! [`Relayed::client_text`]: crate::Relayed::client_text
//! [`Envelope`]: crate::Envelope

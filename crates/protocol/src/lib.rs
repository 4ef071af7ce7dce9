//! The WebSocket wire protocol of UniLink, as types.
//!
//! Two sockets, both JSON text frames:
//!
//! * `WS /calls/ws/{user_id}?token=` — presence: the user is online while it
//!   is open; the server pushes call events ([`Push`]); the client may send
//!   `ping` (text) or `{"type":"ping"}` and gets `pong` / `{"type":"pong"}`.
//! * `WS /ws/webrtc/{call_id}?token=[&last_seq=]` — the signaling of one
//!   call, for its two participants: [`ClientFrame`] up, [`CallFrame`] down.
//!
//! Frames relayed from the peer carry `"seq"` (a number that grows over the
//! call); a client that reconnects with `last_seq` gets every frame after it
//! once, in order. A client that numbers its frames (`cid`, `cseq`) gets an
//! `ack` for each once it is relayed, and sends unacknowledged ones again
//! after a reconnect; a repeat is relayed once.
//!
//! Close codes: 1000 the call ended; 1001 the socket fell silent (no answer
//! to pings); 1008 refused or closed by policy (not a participant, logged
//! out, account closed, too many messages); 1011 internal error; 1012 the
//! server restarts or rebalances: reconnect; 1013 try again later.
//!
//! Between gateways a relayed frame travels over Redis as a [`Relayed`]
//! message (an [`Envelope`] with its sequence number); user channels carry
//! pushes and [`Control`] messages.
//!
//! The whole protocol for client authors — URLs and tokens, every frame with
//! an example, `seq`/`cid`/`cseq`/`ack`, resume, frame rate, close codes —
//! is the [`guide`] (`cargo doc -p unilink-protocol --open`).

mod client;
pub mod guide;
mod relay;
mod server;

pub use client::{ClientFrame, ClientMessage, FrameError, MAX_CHAT_CHARS, MAX_SIGNAL_BYTES, PresenceFrame};
pub use relay::{Envelope, Relayed};
pub use server::{CLOSE_POLICY, CallChange, CallFrame, CallView, Control, ControlKind, Push, Sequenced};

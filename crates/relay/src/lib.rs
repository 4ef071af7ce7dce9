//! The data plane of calls, shared by the gateway replicas that hold the
//! sockets and the signaling replicas that own the calls:
//!
//! * [`SignalRelay`] — per-participant mailboxes in Redis: sequenced,
//!   exactly once, replayable after a reconnect; and, on the same single
//!   pub/sub connection per replica, the user channels that carry pushes and
//!   control messages ([`SignalRelay::listen`]);
//! * [`CallConnections`] — who holds a call's signaling sockets, cluster-wide.

mod connections;
mod mailbox;

pub use connections::{BEAT, CONN_TTL, CallConnections, CallSockets};
pub use mailbox::{
    BUFFER_BYTES, BUFFER_LEN, EARLY_FRAMES, FromClient, Listener, Mailbox, REPLAY_PAGE, RETIRED_TTL, SendOutcome,
    SignalRelay,
};
pub use unilink_protocol::Relayed;

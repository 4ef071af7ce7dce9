//! Frames the server sends, and the control messages on a user's channel.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use unilink_domain::UserId;

/// A frame on a call socket: local answers (`pong`, `ack`, `error`), frames
/// relayed from the peer, and what the fleet tells about the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallFrame {
    Pong,
    /// The client's frame numbered `cseq` is relayed (or handled) and need
    /// not be sent again.
    Ack {
        cseq: u64,
    },
    Error {
        message: String,
    },
    Offer {
        offer: Value,
        from: UserId,
    },
    Answer {
        answer: Value,
        from: UserId,
    },
    IceCandidate {
        candidate: Value,
        from: UserId,
    },
    ConnectionState {
        user_id: UserId,
        state: String,
    },
    ChatMessage {
        from: UserId,
        text: String,
        timestamp: Value,
    },
    /// The peer joined the call's signaling.
    ConnectionReady {
        user_id: UserId,
        message: String,
    },
    /// The peer's socket has been gone for a few seconds.
    UserDisconnected {
        user_id: UserId,
    },
    /// The call is over (the socket closes with 1000 after it). `user_id` is
    /// who ended it; `None` when the system did.
    CallEnded {
        user_id: Option<UserId>,
        status: String,
        message: String,
    },
}

impl CallFrame {
    pub fn error(message: impl Into<String>) -> CallFrame {
        CallFrame::Error {
            message: message.into(),
        }
    }

    /// The JSON text sent to the client.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("call frames serialize")
    }
}

/// A relayed frame as the client gets it: its sequence number, then the frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced<F> {
    pub seq: u64,
    #[serde(flatten)]
    pub frame: F,
}

impl Sequenced<&CallFrame> {
    /// The JSON text sent to the client.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("call frames serialize")
    }
}

/// A call as pushes show it (the public API's call object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallView {
    pub id: String,
    pub initiator_id: String,
    pub receiver_id: String,
    pub initiator_username: String,
    pub receiver_username: String,
    pub status: String,
    pub call_token: String,
    /// When the call was placed (RFC 3339).
    pub created_at: Option<String>,
    /// The original API's name for `created_at`.
    pub started_at: Option<String>,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    /// Whole seconds from acceptance to end; 0 until the call ended.
    pub duration_seconds: i64,
}

/// A change to a call, pushed to the participants who did not make it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallChange {
    pub call_id: String,
    /// Who made the change; `None` when the system did.
    pub user_id: Option<String>,
    /// Why the system did (`ring_timeout`, `max_duration`, …).
    pub reason: Option<String>,
    pub call: CallView,
}

/// A push on a presence socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push {
    IncomingCall {
        call_id: String,
        caller_id: String,
        caller_username: String,
        call: CallView,
    },
    CallAccepted(CallChange),
    CallRejected(CallChange),
    CallMissed(CallChange),
    CallEnded(CallChange),
}

impl Push {
    /// Its `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Push::IncomingCall { .. } => "incoming_call",
            Push::CallAccepted(_) => "call_accepted",
            Push::CallRejected(_) => "call_rejected",
            Push::CallMissed(_) => "call_missed",
            Push::CallEnded(_) => "call_ended",
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("pushes serialize")
    }
}

/// The WebSocket close code for a session that ended by policy (logged out,
/// account closed, refused).
pub const CLOSE_POLICY: u16 = 1008;

/// What a control message asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    /// Close the sockets.
    Close,
}

/// A control message on a user's channel: close their sockets (presence
/// and call), or only those of one session (`family`, the token's `fid`).
/// Told apart from pushes by its type: pushes never carry `control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub control: ControlKind,
    pub code: u16,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

impl Control {
    pub fn close(code: u16, reason: &str, family: Option<&str>) -> Control {
        Control {
            control: ControlKind::Close,
            code,
            reason: reason.to_owned(),
            family: family.map(str::to_owned),
        }
    }

    /// The message as published.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("controls serialize")
    }

    /// A message from a user's channel, when it is a control message (a
    /// push is not).
    pub fn parse(message: &str) -> Option<Control> {
        serde_json::from_str(message).ok()
    }

    /// Whether it applies to a socket opened in session `family`.
    pub fn applies_to(&self, family: &str) -> bool {
        self.family.as_deref().is_none_or(|f| f == family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::parse("6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1").unwrap()
    }

    #[test]
    fn relayed_frames_carry_their_sequence_number_first() {
        let frame = CallFrame::IceCandidate {
            candidate: serde_json::json!({"candidate": "c"}),
            from: user(),
        };
        let text = Sequenced { seq: 7, frame: &frame }.to_text();
        assert_eq!(
            text,
            format!(
                r#"{{"seq":7,"type":"ice_candidate","candidate":{{"candidate":"c"}},"from":"{}"}}"#,
                user()
            )
        );
        let back: Sequenced<CallFrame> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.seq, 7);
        assert_eq!(back.frame, frame);
    }

    #[test]
    fn call_ended_is_a_type_not_a_prefix() {
        let ended: CallFrame =
            serde_json::from_str(r#"{"type":"call_ended","user_id":null,"status":"completed","message":"m"}"#).unwrap();
        assert!(matches!(ended, CallFrame::CallEnded { user_id: None, .. }));
        // An offer whose SDP object says `call_ended` is still an offer.
        let offer: CallFrame = serde_json::from_str(&format!(
            r#"{{"type":"offer","offer":{{"type":"call_ended"}},"from":"{}"}}"#,
            user()
        ))
        .unwrap();
        assert!(matches!(offer, CallFrame::Offer { .. }));
    }

    #[test]
    fn control_messages_are_told_apart_from_pushes() {
        let close = Control::close(1008, "account closed", None).to_text();
        assert_eq!(close, r#"{"control":"close","code":1008,"reason":"account closed"}"#);
        assert_eq!(Control::parse(&close).unwrap().code, 1008);
        assert!(Control::parse(r#"{"type":"incoming_call","caller_username":"control"}"#).is_none());
        assert!(Control::parse(r#"{"type":"x","call":{"control":"close"}}"#).is_none());
        let family = Control::close(1008, "logged out", Some("f1"));
        assert!(family.applies_to("f1") && !family.applies_to("f2"));
        assert!(Control::close(1008, "x", None).applies_to("any"));
    }
}

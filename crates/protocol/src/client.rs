//! Frames clients send.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest `offer`, `answer` or `candidate` payload relayed, as JSON text: a
/// browser's SDP for audio, video and data is a few KiB, a candidate a few
/// hundred bytes.
pub const MAX_SIGNAL_BYTES: usize = 16 * 1024;
/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 4000;
/// Longest client session id (`cid`) taken.
const MAX_CID_CHARS: usize = 64;
/// Longest reported WebRTC state kept, in characters.
const MAX_STATE_CHARS: usize = 32;

/// What a call socket's client asks for, by its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Answered with `pong`.
    Ping,
    /// Relayed to the peer; the payloads are the browser's, passed on as they are.
    Offer {
        offer: Value,
    },
    Answer {
        answer: Value,
    },
    IceCandidate {
        candidate: Value,
    },
    /// The client's WebRTC connection state (`connected`, `failed`, …):
    /// recorded by signaling and relayed to the peer.
    ConnectionState {
        state: String,
    },
    /// Relayed to both participants, in one order.
    ChatMessage {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<Value>,
    },
    /// Ends the call (signaling does; both sockets get `call_ended`).
    EndCall,
}

/// A call socket's client frame: the message and, when the client asks for
/// acknowledgements, its numbering: its session id (`cid`, one per page
/// load) and the frame's number in it (`cseq`, from 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    #[serde(flatten)]
    pub message: ClientMessage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cseq: Option<u64>,
}

/// Why a client frame was refused; the text is the `error` frame's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message: not JSON")]
    NotJson,
    #[error("invalid message: a string \"type\" is required")]
    NoType,
    #[error("{kind} needs a \"{field}\" field")]
    MissingPayload { kind: &'static str, field: &'static str },
    #[error("{kind} too large (at most 16 KiB)")]
    PayloadTooLarge { kind: &'static str },
    #[error("connection_state needs a string \"state\"")]
    NoState,
    #[error("chat_message needs a string \"text\"")]
    NoText,
    #[error("chat message too long (at most 4000 characters)")]
    ChatTooLong,
    #[error("unknown message type: {0}")]
    UnknownType(String),
}

impl ClientFrame {
    /// Reads a client's text frame into a typed one, leniently where the
    /// clients in the field are (unknown fields are ignored, `null` counts as
    /// absent, a numbering that is not one is no numbering) and strictly on
    /// what is relayed (payload sizes, chat length).
    pub fn parse(raw: &str) -> Result<ClientFrame, FrameError> {
        let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(raw) else {
            return Err(FrameError::NotJson);
        };
        let mut take = |name: &str| fields.remove(name).filter(|v| !v.is_null());
        let Some(Value::String(kind)) = take("type") else {
            return Err(FrameError::NoType);
        };
        let cid = match take("cid") {
            Some(Value::String(c)) if !c.is_empty() && c.chars().count() <= MAX_CID_CHARS => Some(c),
            _ => None,
        };
        let cseq = take("cseq").and_then(|c| c.as_u64()).filter(|c| *c > 0);
        let payload = |kind: &'static str, field: &'static str, value: Option<Value>| {
            let value = value.ok_or(FrameError::MissingPayload { kind, field })?;
            // Written out again, a value is never longer than its text was
            // (serde_json escapes no more than JSON requires), so a short
            // frame needs no second look.
            if raw.len() > MAX_SIGNAL_BYTES
                && serde_json::to_string(&value).map_or(usize::MAX, |s| s.len()) > MAX_SIGNAL_BYTES
            {
                return Err(FrameError::PayloadTooLarge { kind });
            }
            Ok(value)
        };
        let message = match kind.as_str() {
            "ping" => ClientMessage::Ping,
            "offer" => ClientMessage::Offer {
                offer: payload("offer", "offer", take("offer"))?,
            },
            "answer" => ClientMessage::Answer {
                answer: payload("answer", "answer", take("answer"))?,
            },
            "ice_candidate" => ClientMessage::IceCandidate {
                candidate: payload("ice_candidate", "candidate", take("candidate"))?,
            },
            "connection_state" => match take("state") {
                Some(Value::String(state)) => ClientMessage::ConnectionState {
                    state: state.chars().take(MAX_STATE_CHARS).collect(),
                },
                _ => return Err(FrameError::NoState),
            },
            "chat_message" => match take("text") {
                Some(Value::String(text)) if text.chars().count() > MAX_CHAT_CHARS => {
                    return Err(FrameError::ChatTooLong);
                }
                Some(Value::String(text)) => ClientMessage::ChatMessage {
                    text,
                    timestamp: take("timestamp"),
                },
                _ => return Err(FrameError::NoText),
            },
            "end_call" => ClientMessage::EndCall,
            other => return Err(FrameError::UnknownType(other.chars().take(40).collect())),
        };
        Ok(ClientFrame {
            message,
            cseq: cid.as_ref().and(cseq),
            cid,
        })
    }

    /// The client's numbering of this frame, when it gave one.
    pub fn numbered(&self) -> Option<(&str, u64)> {
        self.cid.as_deref().zip(self.cseq)
    }
}

/// What a presence socket's client may send: a keep-alive, in one of the
/// two forms clients use. Anything else is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceFrame {
    /// `ping`: answered with the text `pong`.
    TextPing,
    /// `{"type":"ping"}`: answered with `{"type":"pong"}`.
    JsonPing,
    Other,
}

impl PresenceFrame {
    pub fn parse(raw: &str) -> PresenceFrame {
        #[derive(Deserialize)]
        struct Typed<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<std::borrow::Cow<'a, str>>,
        }
        let raw = raw.trim();
        if raw == "ping" {
            return PresenceFrame::TextPing;
        }
        match serde_json::from_str::<Typed<'_>>(raw) {
            Ok(Typed { kind: Some(kind) }) if kind == "ping" => PresenceFrame::JsonPing,
            _ => PresenceFrame::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_into_their_types_with_the_numbering() {
        let frame = ClientFrame::parse(r#"{"type":"offer","offer":{"sdp":"v=0"},"cid":"c1","cseq":3,"x":1}"#).unwrap();
        assert_eq!(
            frame.message,
            ClientMessage::Offer {
                offer: serde_json::json!({"sdp":"v=0"})
            }
        );
        assert_eq!(frame.numbered(), Some(("c1", 3)));
        // A number without a session, or a session without a number, is no numbering.
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","cseq":3}"#).unwrap().numbered(),
            None
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","cid":"c"}"#).unwrap().numbered(),
            None
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","cid":"c","cseq":0}"#)
                .unwrap()
                .numbered(),
            None
        );
        // What a typed client writes, the parser reads back.
        let written = serde_json::to_string(&ClientFrame {
            message: ClientMessage::ChatMessage {
                text: "hi".into(),
                timestamp: None,
            },
            cid: Some("c".into()),
            cseq: Some(9),
        })
        .unwrap();
        assert_eq!(ClientFrame::parse(&written).unwrap().numbered(), Some(("c", 9)));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let err = |raw: &str| ClientFrame::parse(raw).unwrap_err().to_string();
        assert_eq!(err("nope"), "invalid message: not JSON");
        assert_eq!(err("[1]"), "invalid message: not JSON");
        assert_eq!(err(r#"{"type":1}"#), "invalid message: a string \"type\" is required");
        assert_eq!(err(r#"{"type":"offer"}"#), "offer needs a \"offer\" field");
        assert_eq!(
            err(r#"{"type":"ice_candidate","candidate":null}"#),
            "ice_candidate needs a \"candidate\" field"
        );
        let big = format!(r#"{{"type":"answer","answer":"{}"}}"#, "a".repeat(MAX_SIGNAL_BYTES));
        assert_eq!(err(&big), "answer too large (at most 16 KiB)");
        assert_eq!(
            err(r#"{"type":"connection_state","state":3}"#),
            "connection_state needs a string \"state\""
        );
        assert_eq!(
            err(r#"{"type":"chat_message"}"#),
            "chat_message needs a string \"text\""
        );
        let long = format!(
            r#"{{"type":"chat_message","text":"{}"}}"#,
            "é".repeat(MAX_CHAT_CHARS + 1)
        );
        assert_eq!(err(&long), "chat message too long (at most 4000 characters)");
        assert_eq!(err(r#"{"type":"dance"}"#), "unknown message type: dance");
    }

    #[test]
    fn presence_pings_in_both_forms() {
        assert_eq!(PresenceFrame::parse(" ping\n"), PresenceFrame::TextPing);
        assert_eq!(PresenceFrame::parse(r#"{"type":"ping"}"#), PresenceFrame::JsonPing);
        assert_eq!(PresenceFrame::parse(r#"{"type":"pingx"}"#), PresenceFrame::Other);
        assert_eq!(PresenceFrame::parse(r#"{"kind":"ping"}"#), PresenceFrame::Other);
    }
}

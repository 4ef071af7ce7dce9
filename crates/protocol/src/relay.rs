//! Relayed frames as they travel between gateways over Redis.

use serde::{Deserialize, Serialize};

use crate::server::{CallFrame, Sequenced};

/// [`Relayed`] messages are `2|<seq>|<envelope JSON>`. The earlier format: `1|<seq>|<sender>|<sent µs>|<traceparent>|<frame
/// with "seq">`, still read so a rolling deploy loses no buffered frame.
const FORMAT_V1: &str = "1";

/// A frame for one participant with where it came from (`F` is a
/// reference to the frame when one is written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<F = CallFrame> {
    /// The participant who sent it, or `system`.
    pub sender: String,
    /// When it was sent, unix microseconds (relay latency).
    pub sent_us: i64,
    /// The sender's trace context (W3C `traceparent`), or empty.
    #[serde(default)]
    pub traceparent: String,
    pub frame: F,
}

impl<F: Serialize> Envelope<F> {
    /// The JSON the relay script stores after the sequence number it assigns.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelopes serialize")
    }
}

/// One relayed frame: its sequence number in the recipient's mailbox and
/// its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Relayed {
    pub seq: u64,
    pub envelope: Envelope,
}

impl Relayed {
    /// What the relay script writes before the sequence number (then `|`
    /// and the envelope).
    pub const PREFIX: &'static str = "2|";

    /// Reads a message of the relay's Redis buffer or channel.
    pub fn parse(message: &str) -> Option<Relayed> {
        let (version, rest) = message.split_once('|')?;
        match version {
            _ if Relayed::PREFIX.strip_suffix('|') == Some(version) => {
                let (seq, envelope) = rest.split_once('|')?;
                Some(Relayed {
                    seq: seq.parse().ok()?,
                    envelope: serde_json::from_str(envelope).ok()?,
                })
            }
            FORMAT_V1 => {
                let mut parts = rest.splitn(5, '|');
                let seq = parts.next()?.parse().ok()?;
                let sender = parts.next()?.to_owned();
                let sent_us = parts.next()?.parse().ok()?;
                let traceparent = parts.next()?.to_owned();
                let text: Sequenced<CallFrame> = serde_json::from_str(parts.next()?).ok()?;
                Some(Relayed {
                    seq,
                    envelope: Envelope {
                        sender,
                        sent_us,
                        traceparent,
                        frame: text.frame,
                    },
                })
            }
            _ => None,
        }
    }

    /// The text the client gets.
    pub fn client_text(&self) -> String {
        Sequenced {
            seq: self.seq,
            frame: &self.envelope.frame,
        }
        .to_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_messages_parse_in_both_formats() {
        let user = "6f1c1d3e-0a3b-4c5d-8e9f-0000000000a1";
        let envelope = Envelope {
            sender: user.into(),
            sent_us: 1_700_000_000_000_000,
            traceparent: "00-abc-def-01".into(),
            frame: CallFrame::ChatMessage {
                from: unilink_domain::UserId::parse(user).unwrap(),
                text: "a|b".into(),
                timestamp: serde_json::json!("t"),
            },
        };
        let message = format!("{}7|{}", Relayed::PREFIX, envelope.to_json());
        let relayed = Relayed::parse(&message).unwrap();
        assert_eq!(relayed.seq, 7);
        assert_eq!(relayed.envelope, envelope);
        assert!(relayed.client_text().starts_with(r#"{"seq":7,"type":"chat_message","#));

        let v1 = format!(r#"1|7|{user}|1700000000000000|00-abc-def-01|{{"seq":7,"type":"pong"}}"#);
        let old = Relayed::parse(&v1).unwrap();
        assert_eq!(old.seq, 7);
        assert_eq!(old.envelope.frame, CallFrame::Pong);
        assert_eq!(old.envelope.traceparent, "00-abc-def-01");

        assert!(Relayed::parse("3|7|{}").is_none(), "unknown format version");
        assert!(Relayed::parse("2|x|{}").is_none());
        assert!(Relayed::parse("nothing").is_none());
    }
}
